"""The shared training loop: learning, schedule, accumulation, exact resume, atomic checkpoints, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from components.config import TrainingConfig
from components.modeling.factory import CheckpointError
from components.training import batch_indices, latest_checkpoint, load_checkpoint, lr_multiplier, train
from tests.unit.training.toy import NUM_EXAMPLES, make_batches, make_model, mse_loss, weighted_mse_loss

REPO_ROOT = Path(__file__).resolve().parents[3]


def _config(**overrides: object) -> TrainingConfig:
    base = dict(learning_rate=1e-2, warmup_steps=2, max_steps=8, batch_size=8, checkpoint_every=3, log_every=1)
    return TrainingConfig(**{**base, **overrides})


def _assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0.0, atol=atol, msg=key)


def test_loss_falls_and_metrics_are_reported(tmp_path: Path) -> None:
    cfg = _config(max_steps=60, warmup_steps=5, checkpoint_every=60)
    seen: list[tuple[int, dict[str, float]]] = []
    record = lambda step, metrics: seen.append((step, metrics))  # noqa: E731
    result = train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path, on_metrics=record)

    assert [step for step, _ in seen] == list(range(1, 61))
    assert seen[0][1].keys() == {"loss", "lr", "grad_norm", "tokens_per_s", "prediction_abs_mean"}
    assert result.final_loss == seen[-1][1]["loss"] < 0.2 * seen[0][1]["loss"]
    assert result.steps == 60 and result.resumed_from_step is None
    assert result.tokens_per_s > 0 and result.wall_time_s > 0
    # Tokens come from the batch's num_tokens (3 per example), not from the row count.
    assert load_checkpoint(result.checkpoint_path)["train_state"].tokens_seen == 60 * 8 * 3


def test_weight_decay_skips_biases_and_norms(tmp_path: Path) -> None:
    cfg = _config(max_steps=1, weight_decay=0.1)
    result = train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path)
    groups = load_checkpoint(result.checkpoint_path)["optimizer"]["param_groups"]
    # Two Linear weights are decayed; two Linear biases plus LayerNorm weight and bias are not.
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [(0.1, 2), (0.0, 4)]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # warmup_steps=4, max_steps=14: warmup reaches 1 at step 3, decay runs over steps 4..14.
        ("cosine", {0: 0.25, 3: 1.0, 4: 1.0, 9: 0.5, 11: 0.5 * (1 + math.cos(0.7 * math.pi))}),
        ("linear", {0: 0.25, 1: 0.5, 4: 1.0, 9: 0.5, 13: 0.1}),
        ("constant", {0: 0.25, 4: 1.0, 13: 1.0}),
        # decay_fraction=5/14: the last 5 steps decay, a fifth of the rate per step.
        ("wsd", {0: 0.25, 4: 1.0, 9: 1.0, 10: 0.8, 13: 0.2}),
    ],
)
def test_schedule_values(schedule: str, expected: dict[int, float]) -> None:
    cfg = _config(schedule=schedule, warmup_steps=4, max_steps=14, decay_fraction=5 / 14)
    for step, multiplier in expected.items():
        assert lr_multiplier(step, cfg) == pytest.approx(multiplier), step


def test_optimizer_uses_the_schedule(tmp_path: Path) -> None:
    cfg = _config(schedule="linear", warmup_steps=4, max_steps=14, checkpoint_every=14)
    lrs: list[float] = []
    train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path, on_metrics=lambda s, m: lrs.append(m["lr"]))
    assert lrs == pytest.approx([cfg.learning_rate * lr_multiplier(step, cfg) for step in range(14)])


def test_batch_indices_cover_each_epoch_once_and_are_reproducible() -> None:
    # 64 examples in batches of 24: batch 2 straddles the first epoch boundary.
    first_epochs = torch.cat([batch_indices(NUM_EXAMPLES, 24, index, seed=7) for index in range(16)])
    for epoch in range(6):
        assert sorted(first_epochs[epoch * 64 : (epoch + 1) * 64].tolist()) == list(range(64))
    assert torch.equal(batch_indices(NUM_EXAMPLES, 24, 5, seed=7), first_epochs[120:144])
    assert not torch.equal(batch_indices(NUM_EXAMPLES, 24, 0, seed=8), first_epochs[:24])


@pytest.mark.parametrize("weighted", [False, True], ids=["rows-equal", "rows-weighted"])
def test_grad_accumulation_equals_one_big_batch(tmp_path: Path, weighted: bool) -> None:
    # Weighted rows: a mean of the micro-batches' weighted means would differ from the big batch's.
    loss = weighted_mse_loss if weighted else mse_loss
    big = _config(batch_size=8, grad_accum_steps=1, max_steps=5)
    accumulated = _config(batch_size=2, grad_accum_steps=4, max_steps=5)
    big_batches = make_batches(big, weighted)

    def quarter_batches(index: int) -> dict[str, torch.Tensor]:
        # Micro-batch index = step * 4 + micro: quarter `micro` of the big batch of that step.
        step, micro = divmod(index, 4)
        return {key: value[micro * 2 : (micro + 1) * 2] for key, value in big_batches(step).items()}

    model_big, model_accumulated = make_model(), make_model()
    result_big = train(model_big, big_batches, loss, big, tmp_path / "big")
    result_accumulated = train(model_accumulated, quarter_batches, loss, accumulated, tmp_path / "accumulated")

    assert result_accumulated.final_loss == pytest.approx(result_big.final_loss, abs=1e-6)
    _assert_same_weights(model_accumulated.state_dict(), model_big.state_dict(), atol=1e-6)


class _Killed(RuntimeError):
    pass


def test_resume_after_a_crash_is_exact(tmp_path: Path) -> None:
    # Dropout makes the test sensitive to the RNG state as well as to data order and optimizer state.
    cfg = _config(max_steps=8, checkpoint_every=3, grad_accum_steps=2)
    uninterrupted = make_model(dropout=0.3)
    expected = train(uninterrupted, make_batches(cfg), mse_loss, cfg, tmp_path / "uninterrupted")

    def crash_at_step_5(step: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        train(make_model(dropout=0.3), make_batches(cfg), mse_loss, cfg, tmp_path / "crashed", crash_at_step_5)
    assert latest_checkpoint(tmp_path / "crashed").name == "step_00000003"

    # A fresh process would build the model from a different init; the checkpoint must win.
    resumed = make_model(seed=99, dropout=0.3)
    result = train(resumed, make_batches(cfg), mse_loss, cfg, tmp_path / "crashed")

    assert result.resumed_from_step == 3 and result.steps == 8
    assert result.final_loss == pytest.approx(expected.final_loss, abs=1e-6)
    _assert_same_weights(resumed.state_dict(), uninterrupted.state_dict(), atol=1e-6)

    # A finished run resumes to a no-op that still reports its loss.
    again = train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path / "crashed")
    assert (again.steps, again.final_loss, again.tokens_per_s) == (8, result.final_loss, 0.0)


def test_checkpoint_is_self_describing(tmp_path: Path) -> None:
    cfg = _config(max_steps=3)
    result = train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path, metadata={"preset": "toy"})
    checkpoint = load_checkpoint(result.checkpoint_path)
    assert checkpoint["config"] == cfg
    assert checkpoint["train_state"].step == 3 and checkpoint["world_size"] == 1
    assert checkpoint["metadata"] == {"preset": "toy"}
    assert {"model", "optimizer", "scheduler"} <= checkpoint.keys()
    # Only the latest checkpoint is kept.
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]


def test_failed_checkpoint_write_leaves_no_partial_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(max_steps=6, checkpoint_every=2)
    real_save = torch.save
    calls = {"n": 0}

    def save_that_dies_on_the_second_checkpoint(obj: object, file: BinaryIO) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            file.write(b"half a checkpoint")
            raise OSError("disk full")
        real_save(obj, file)

    monkeypatch.setattr(torch, "save", save_that_dies_on_the_second_checkpoint)
    with pytest.raises(OSError, match="disk full"):
        train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path)

    # The step-2 checkpoint survives intact and nothing of the step-4 write is visible.
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["train_state"].step == 2


def test_a_truncated_training_state_is_named(tmp_path: Path) -> None:
    cfg = _config(max_steps=2, checkpoint_every=2)
    train(make_model(), make_batches(cfg), mse_loss, cfg, tmp_path)
    state = latest_checkpoint(tmp_path) / "state.pt"
    with open(state, "r+b") as handle:
        handle.truncate(state.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=f"{state} is unreadable"):
        train(make_model(), make_batches(_config(max_steps=4, checkpoint_every=2)), mse_loss, _config(max_steps=4, checkpoint_every=2), tmp_path)


def test_ddp_two_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    cfg = _config(max_steps=6, grad_accum_steps=2, checkpoint_every=4)
    # No GPUs (gloo, fp32, as in the single-process run); one thread per rank on a 2-core machine.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # The test may itself run under a launcher; the script must see only torchrun's variables.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_run.py")), str(tmp_path), cfg.model_dump_json(),
    ]  # fmt: skip
    # --standalone runs a local rendezvous on a free port, so parallel test runs do not collide.
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _assert_same_weights(rank1, rank0, atol=0.0)
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert (checkpoint["train_state"].step, checkpoint["world_size"]) == (6, 2)
    assert checkpoint["train_state"].tokens_seen == 6 * 2 * 8 * 3
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Each rank's loss saw its half of every global micro-batch: 6 steps x 2 micro-batches x 8 rows / 2.
    assert [summary["rows_seen"] for summary in summaries] == [48, 48]

    # The ranks' shards weigh differently (weighted rows): the step still equals one process's.
    single = make_model()
    result = train(single, make_batches(cfg, weighted=True), weighted_mse_loss, cfg, tmp_path / "single")
    _assert_same_weights(rank0, single.state_dict(), atol=1e-5)
    assert summaries[0]["final_loss"] == pytest.approx(result.final_loss, abs=1e-5)
