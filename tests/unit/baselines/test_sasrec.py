"""SASRec: the model learns a sequential pattern, attends causally, and its stage reports like an evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components import storage
from components.baselines import stage as sasrec_stage
from components.baselines.stage import SCORES_FILE, evaluation_report, run_sasrec, target_ranks
from components.candidates.build import build_candidate_lists
from components.candidates.examples import sequence_histories
from components.candidates.sasrec import SASRec, left_padded, next_item_states, score_candidates, train_sasrec
from components.config import CandidatesConfig, ConfigError, SasrecConfig, load_config
from components.evaluation.runner import FLOOR_COMPARISON_METRICS
from components.reporting import teacher_summary_markdown
from components.recipe.run import run_teacher

SMALL = SasrecConfig(hidden_size=16, layers=1, max_len=8, dropout=0.0, epochs=20, batch_size=32, learning_rate=1e-2)


def _cycles(users: int, items: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Every user walks item i -> i + 1 (mod items) from a random start."""
    starts = np.random.default_rng(seed).integers(0, items, size=users)
    return [(start + np.arange(length)) % items for start in starts]


def test_a_few_epochs_learn_to_rank_the_next_item_first():
    model, facts = train_sasrec(_cycles(users=200, items=20, length=6), 20, SMALL)
    assert facts["epochs"] == 20 and facts["final_loss"] < facts["loss_by_epoch"][0]
    histories = [[3, 4, 5], [17, 18], [19]]
    candidates = np.array([[1, 9, 6, 12], [2, 19, 7, 0], [5, 0, 11, 3]])
    scores = score_candidates(model, histories, candidates, batch_size=2)
    assert scores.shape == (3, 4)
    assert np.argmax(scores, axis=1).tolist() == [2, 1, 1]  # 6 after 5, 19 after 18, 0 after 19


def test_a_state_sees_only_earlier_items_and_ignores_padding():
    torch.manual_seed(0)
    model = SASRec(30, SasrecConfig(hidden_size=16, layers=2, heads=2, max_len=10)).eval()
    with torch.no_grad():
        states = model(left_padded([[1, 2, 3, 4]], 10))
        changed_tail = model(left_padded([[1, 2, 3, 9]], 10))
    torch.testing.assert_close(states[:, :-1], changed_tail[:, :-1])
    assert not torch.allclose(states[:, -1], changed_tail[:, -1])
    # The same history alone or batched with a longer one (so more left padding) gives the same state.
    alone = next_item_states(model, [[5, 6]], batch_size=8)
    batched = next_item_states(model, [[1, 2, 3, 4, 7, 8, 9], [5, 6]], batch_size=8)
    torch.testing.assert_close(alone[0], batched[1])


def test_ties_keep_the_pre_rank_order():
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0]])
    ranks, copied = target_ranks(scores, np.array([3, 2]))
    assert ranks.tolist() == [2, 2] and copied.tolist() == [False, True]


@pytest.mark.parametrize(
    ("override", "field"),
    [("sasrec.hidden_size=big", "sasrec.hidden_size"), ("sasrec.epoch=3", "sasrec.epoch"), ("sasrec.dropout=1.5", "sasrec.dropout")],
)
def test_a_bad_setting_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_heads_must_divide_the_hidden_size():
    with pytest.raises(ConfigError, match=r"sasrec\.hidden_size 64 must be a multiple of sasrec\.heads 3"):
        load_config(None, ["sasrec.heads=3"])


def _publish_data(root: Path) -> tuple[str, str]:
    """A dataset version and its examples for 120 users walking a 30-item cycle (mostly)."""
    rng = np.random.default_rng(1)
    rows = []
    for user, walk in enumerate(_cycles(users=120, items=30, length=8)):
        for position, item in enumerate(walk if rng.random() < 0.8 else rng.permutation(30)[:8]):
            rows.append((f"u{user:03d}", f"i{item:02d}", 1_000_000_000 + 86400 * position, position))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"]).astype({"timestamp": "Int64"})
    item_ids = np.array([f"i{i:02d}" for i in range(30)])
    staging = {name: root / "staging" / name for name in ("dataset", "examples")}
    for directory in staging.values():
        directory.mkdir(parents=True)
    interactions.to_parquet(staging["dataset"] / "interactions.parquet", index=False)
    items = pd.DataFrame({"item_id": item_ids, "title": "", "brand": None, "categories": [["Beauty"]] * 30})
    items.to_parquet(staging["dataset"] / "items.parquet", index=False)
    lists = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=40))
    histories, _ = sequence_histories(interactions, lists, history_max=20)
    lists.assign(history=histories).to_parquet(staging["examples"] / "examples.parquet", index=False)
    return storage.publish_dir(staging["dataset"], str(root / "dataset")), storage.publish_dir(staging["examples"], str(root / "examples"))


SETTINGS = [
    "sasrec.hidden_size=16",
    "sasrec.layers=1",
    "sasrec.max_len=8",
    "sasrec.epochs=15",
    "sasrec.batch_size=32",
    "sasrec.learning_rate=0.01",
    "evaluation.bootstrap_samples=50",
    "evaluation.valid_examples=30",
]


def test_the_stage_reports_like_an_evaluation_and_is_cached(tmp_path, make_config, monkeypatch):
    dataset_uri, examples_uri = _publish_data(tmp_path / "data")
    cfg = make_config(*SETTINGS)
    result = run_sasrec(cfg, dataset_uri, examples_uri)
    assert not result.cached
    metrics = result.metrics
    report = evaluation_report(metrics)
    # Whatever splits the evaluation stage scores, each with every test user and the fixed sample.
    assert "test" in report
    test = report["test"]
    assert test["all"]["n"] == 120 and test["test_sample"]["n"] == 40
    for part in ("all", "test_sample"):
        scored = test[part]
        assert scored["valid_rate"] == 1.0 and scored["invalid_count"] == 0
        assert set(scored["floor"]) >= {"n", "recall_at_1", "ndcg_at_3"}
        for metric in FLOOR_COMPARISON_METRICS:
            assert set(scored["vs_floor"][metric]) == {"mean", "ci_low", "ci_high"}
            assert scored["vs_floor"][metric]["ci_low"] <= scored["vs_floor"][metric]["mean"] <= scored["vs_floor"][metric]["ci_high"]
        assert 0.0 <= scored["recall_at_1"]["mean"] <= 1.0
    assert test["decode"]["examples"] == 120
    # On a walk the transition pre-ranker cannot see past the last item either, but both must beat chance.
    assert test["all"]["recall_at_1"]["mean"] > 0.3
    assert metrics["epochs"] == 15 and metrics["train_seconds"] > 0 and metrics["settings"]["hidden_size"] == 16

    scores = pd.read_parquet(Path(result.outputs["evaluation_uri"]) / SCORES_FILE)
    test_rows = scores[scores["split"] == "test"]
    assert len(test_rows) == 120 and (test_rows["rank"].between(1, 10)).all()
    assert (test_rows["rank"] == 1).mean() == pytest.approx(test["all"]["recall_at_1"]["mean"])
    assert (Path(result.outputs["weights_uri"]) / "sasrec.pt").is_file()

    again = run_sasrec(cfg, dataset_uri, examples_uri)
    assert again.cached and again.metrics == metrics and again.outputs == result.outputs

    # Other bootstrap settings re-score the same weights; nothing is trained again.
    monkeypatch.setattr(sasrec_stage, "train_sasrec", lambda *args, **kwargs: pytest.fail("SASRec was trained again"))
    rescored = run_sasrec(make_config(*SETTINGS, "evaluation.bootstrap_samples=60"), dataset_uri, examples_uri)
    assert not rescored.cached and rescored.outputs["weights_uri"] == result.outputs["weights_uri"]
    assert rescored.metrics["test"]["all"]["recall_at_1"]["mean"] == test["all"]["recall_at_1"]["mean"]


def test_run_teacher_puts_sasrec_first_in_the_table_and_never_among_the_models(tmp_path, make_config):
    dataset_uri, examples_uri = _publish_data(tmp_path / "data")
    sasrec = run_sasrec(make_config(*SETTINGS), dataset_uri, examples_uri).to_dict()
    model_report = evaluation_report(sasrec["metrics"])
    calls = []

    def run(label: str, stage: str, *inputs: str) -> dict:
        calls.append(label)
        if stage == "sasrec":
            return sasrec | {"seconds": 1.0}
        outputs = {"traces": {"traces_uri": "t"}}.get(stage, {"model_uri": f"{stage}-model", "evaluation_uri": "e"})
        return {"outputs": outputs, "metrics": model_report if stage == "evaluate" else {}, "seconds": 1.0}

    summary = run_teacher(make_config(*SETTINGS), dataset_uri, "sids", examples_uri, run)
    assert calls[0] == "sasrec"
    assert list(summary["evaluations"])[0] == "SASRec" and "SASRec" not in summary["models"]
    assert set(summary["evaluations"]["SASRec"]) == set(model_report)
    assert summary["stages"]["sasrec"]["facts"]["epochs"] == 15
    table = teacher_summary_markdown(summary | {"dataset_version": "v", "seconds": 1.0})
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert header.split("|")[2:4] == [" floor ", " SASRec "]
    assert "| valid rate | - | 100.00% |" in table

    calls.clear()
    off = run_teacher(make_config(*SETTINGS, "sasrec.enabled=false"), dataset_uri, "sids", examples_uri, run)
    assert "sasrec" not in calls and "SASRec" not in off["evaluations"]


def test_the_sasrec_pre_ranker_orders_the_same_lists_by_models_fitted_on_other_folds():
    rows = [
        (f"u{user:03d}", f"i{item:02d}", 1_000_000_000 + 86400 * position, position)
        for user, walk in enumerate(_cycles(users=150, items=30, length=7))
        for position, item in enumerate(walk)
    ]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"]).astype({"timestamp": "Int64"})
    item_ids = np.array([f"i{i:02d}" for i in range(30)])
    transition = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=40, pre_ranker_folds=2))
    by_sasrec = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=40, pre_ranker="sasrec", pre_ranker_folds=2), SMALL)
    # The same targets and negatives, only their order differs.
    assert (by_sasrec["target"] == transition["target"]).all()
    assert all(set(a) == set(b) for a, b in zip(by_sasrec["candidates"], transition["candidates"]))
    assert all(c[rank - 1] == t for c, rank, t in zip(by_sasrec["candidates"], by_sasrec["target_pre_rank"], by_sasrec["target"]))
    # Every user's next item follows the cycle; models fitted on the other folds learned it.
    assert (by_sasrec["target_pre_rank"] == 1).mean() > 0.9


def test_sasrec_settings_name_the_candidate_lists_only_when_sasrec_pre_ranks():
    from components.candidates.build import CANDIDATES_STAGE

    def uri(*overrides: str) -> str:
        return CANDIDATES_STAGE.output_uri(load_config(None, list(overrides)), {"dataset": "d"})

    assert uri("sasrec.epochs=5") == uri() != uri("candidates.pre_ranker=sasrec")
    assert uri("candidates.pre_ranker=sasrec", "sasrec.epochs=5") != uri("candidates.pre_ranker=sasrec")
    assert uri("candidates.pre_ranker=sasrec", "sasrec.enabled=false") == uri("candidates.pre_ranker=sasrec")
