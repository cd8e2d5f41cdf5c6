"""The stage launcher: a real training stage (CFT, through ``run_cft`` and ``train_stage``) run by
``python -m components.recipe.launch`` on 2 CPU ranks under torchrun publishes the model that one
process publishes, at the URI the flow's task would look for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from components import storage
from components.config import ModelConfig, PromptConfig, load_config
from components.modeling.block_diffusion import convert_to_block_diffusion
from components.modeling.factory import build_model, load_model, save_model
from components.modeling.tokenizer import build_tokenizer
from components.prompts import CatalogItem, ItemCatalog, render_answer, render_messages
from components.semantic_ids.format import all_sid_tokens, sid_string
from components.training.diffusion import CFT_STAGE
from components.recipe.launch import main, stage_inputs
from components.training.teacher import training_inputs

REPO_ROOT = Path(__file__).resolve().parents[3]
SID_SIZES = [4, 4]
CATEGORIES = [("Makeup", "Nails", "Nail Polish"), ("Skin Care", "Face", "Creams"), ("Hair Care", "Shampoos")]
# One reasoning text for every trace, and rankings of equal length, so every example carries the
# same total loss weight. DDP averages the ranks' weighted means, which equals the one-process
# weighted mean over the whole batch only when the ranks' weight sums are equal: with reasoning of
# three different lengths, these 3 steps leave the two runs' weights up to 3.5e-3 apart.
REASONING = "History is mostly nail polish bought again and again so the polish candidate comes first"
OVERRIDES = [
    "cft.max_steps=3",
    "cft.batch_size=4",
    "cft.learning_rate=1e-3",
    "cft.warmup_steps=0",
    "training.checkpoint_every=2",
    "training.log_every=1",
]


def _items(count: int = 12) -> list[CatalogItem]:
    return [CatalogItem(f"i{k}", sid_string([k % 4, k // 4]), f"Item {k}", None, CATEGORIES[k % len(CATEGORIES)]) for k in range(count)]


def _traces(count: int = 8) -> pd.DataFrame:
    """Accepted traces: a 3-item history, 4 candidates, the reversed candidates as the ranking."""
    rows = []
    for start in range(count):
        ids = [f"i{(start + k) % 12}" for k in range(7)]
        rows.append({"history": ids[:3], "candidates": ids[3:], "reasoning": REASONING, "ranking": ids[3:][::-1]})
    return pd.DataFrame(rows)


def _publish(frames: dict[str, pd.DataFrame], uri: str) -> str:
    with tempfile.TemporaryDirectory() as local:
        for name, frame in frames.items():
            frame.to_parquet(Path(local) / name)
        return storage.publish_dir(local, uri)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Published stage inputs: a dataset version, its SIDs, traces and a converted tiny model."""
    root = tmp_path_factory.mktemp("inputs")
    listed, traces = _items(), _traces()
    catalog = ItemCatalog(listed)
    items = pd.DataFrame(
        {
            "item_id": [i.item_id for i in listed],
            "title": [i.title for i in listed],
            "brand": None,
            "categories": [list(i.categories) for i in listed],
        }
    )
    interactions = pd.DataFrame({"user_id": "u0", "item_id": items["item_id"], "timestamp": None, "position": range(len(items))})
    sids = pd.DataFrame({"item_id": items["item_id"], "codes": [[k % 4, k // 4] for k in range(len(items))], "sid": [i.sid for i in listed]})
    texts = []
    for row in traces.itertuples():
        texts += [m["content"] for m in render_messages(row.history, row.candidates, catalog, PromptConfig())]
        texts.append(render_answer(row.reasoning, catalog.sids(row.ranking)))
    tokenizer = build_tokenizer(texts, all_sid_tokens(len(SID_SIZES), SID_SIZES), vocab_size=400)
    model = convert_to_block_diffusion(build_model(ModelConfig(preset="tiny", max_length=512), tokenizer), tokenizer, 4)
    save_model(model, tokenizer, root / "model_local", {"stage": "convert"})
    return {
        "model": storage.publish_dir(root / "model_local", str(root / "model")),
        "dataset": _publish({"items.parquet": items, "interactions.parquet": interactions}, str(root / "dataset")),
        "sid": _publish({"sids.parquet": sids}, str(root / "sids")),
        "traces": _publish({"traces.parquet": traces}, str(root / "traces")),
    }


def _arguments(inputs: dict[str, str], out_dir: Path) -> list[str]:
    overrides = OVERRIDES + [f"storage.artifact_root={out_dir / 'artifacts'}", f"storage.work_dir={out_dir / 'work'}"]
    return ["cft", *(f"--set={o}" for o in overrides), *(f"--input={name}={inputs[name]}" for name in stage_inputs("cft"))]


def test_inputs_are_the_stage_functions_uri_arguments() -> None:
    assert stage_inputs("cft") == ["model", "dataset", "sid", "traces"]
    assert stage_inputs("opd") == ["model", "teacher", "dataset", "sid", "examples"]


def test_a_missing_input_is_named(inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = [a for a in _arguments(inputs, tmp_path) if not a.startswith("--input=traces=")]
    assert main(arguments) == 2
    assert "missing ['traces']" in capsys.readouterr().err


def test_a_batch_the_ranks_cannot_split_is_refused_before_training(
    inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(_arguments(inputs, tmp_path)) == 2
    assert "cft.batch_size 4 is not a multiple of the 3 processes" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_cft_on_two_ranks_publishes_what_one_process_publishes(inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # gloo on the CPU, fp32 as in the one-process run; one thread per rank on a 2-core machine.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    # The test may itself run under a launcher; the ranks must see only torchrun's variables.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "components.recipe.launch", *_arguments(inputs, tmp_path / "ddp"),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Rank 0 alone prints the result: one JSON line.
    (line,) = completed.stdout.strip().splitlines()
    ddp = json.loads(line)
    assert ddp["metrics"]["steps"] == 3 and not ddp["cached"]
    assert "world size 2" in completed.stderr

    assert main(_arguments(inputs, tmp_path / "single")) == 0
    single = json.loads(capsys.readouterr().out)

    # Same stage key under each artifact root: the URI the flow's CFT task computes for these inputs.
    cfg = load_config(None, [*OVERRIDES, f"storage.artifact_root={tmp_path / 'single' / 'artifacts'}"])
    expected = CFT_STAGE.output_uri(cfg, training_inputs(inputs["model"], inputs["dataset"], inputs["sid"], inputs["traces"]))
    assert single["outputs"]["model_uri"] == expected
    assert Path(ddp["outputs"]["model_uri"]).name == Path(expected).name
    assert ddp["metrics"]["final_loss"] == pytest.approx(single["metrics"]["final_loss"], abs=1e-5)
    ddp_model, _, ddp_meta = load_model(ddp["outputs"]["model_uri"])
    single_model, _, _ = load_model(single["outputs"]["model_uri"])
    assert ddp_meta["stage"] == "cft" and ddp_model.config.bd_block_size == 4
    start, _, _ = load_model(inputs["model"])
    single_weights, start_weights = single_model.state_dict(), start.state_dict()
    for key, value in ddp_model.state_dict().items():
        torch.testing.assert_close(value, single_weights[key], rtol=0.0, atol=1e-5, msg=key)
    # The comparison means something only if training moved the weights well beyond that tolerance.
    assert max((single_weights[k] - start_weights[k]).abs().max().item() for k in start_weights) > 1e-3
    # The checkpoints go once the model is published.
    assert not any((tmp_path / "ddp" / "work" / "checkpoints" / "cft").iterdir())
