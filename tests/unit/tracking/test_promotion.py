"""Registry and promotion on a real MLflow store (SQLite in tmp_path): lineage tags, idempotent
registration, and a champion alias that moves only when the challenger passes every gate."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

import numpy as np

from components.config import EvaluationConfig, PromotionConfig
from components.evaluation.runner import floor_comparison
from components.rank_metrics import ranking_metrics
from components.tracking.promotion import CHALLENGER, CHAMPION, GateMetrics, decide, promote, reason
from components.tracking.registry import find_version, register, version_by_alias
from components.tracking.runs import RecipeRuns, client
from components.training.diffusion import DIFFUSION_RL_STAGE
from tests.unit.tiny_lm import chat_prompts, publish_checkpoint, tiny_tokenizer

EVAL = EvaluationConfig(bootstrap_samples=200)
N = 600
# The pre-rank floor: the target at a seeded rank among 10 candidates, one per valid example.
PRE_RANKS = np.random.default_rng(0).integers(1, 11, size=N)


def moved_to_top(share: float, seed: int = 1) -> np.ndarray:
    """Ranks of a re-ranker that puts the target first on a seeded ``share`` of the examples."""
    ranks = PRE_RANKS.copy()
    ranks[np.random.default_rng(seed).random(N) < share] = 1
    return ranks


def _report(ranks: np.ndarray, valid_rate: float = 1.0, tokens_per_s: float = 1000.0, digest: str = "same-examples") -> dict:
    """A gate-scope evaluation report shaped like ``evaluate_model``'s (the valid split)."""
    scored = ranking_metrics(ranks, EVAL) | floor_comparison(ranks, PRE_RANKS, ranks == PRE_RANKS, EVAL)
    return {"valid": {"all": scored | {"valid_rate": valid_rate, "examples_digest": digest}, "decode": {"decode_tokens_per_s": tokens_per_s}}}


def gate(ranks: np.ndarray, catalog: str = "amazon-beauty", **report: float | str) -> GateMetrics:
    return GateMetrics.from_evaluation(_report(ranks, **report), catalog)


COPY = gate(PRE_RANKS.copy())
GOOD = gate(moved_to_top(0.3))


def test_gate_metrics_read_the_valid_split_and_refuse_a_test_report() -> None:
    assert GOOD.examples == N and GOOD.valid_rate == 1.0 and GOOD.target_ranks == moved_to_top(0.3).tolist()
    assert GOOD.recall_at_1 == pytest.approx(float((moved_to_top(0.3) == 1).mean()))
    with pytest.raises(ValueError, match="valid split"):
        GateMetrics.from_evaluation({"test": _report(PRE_RANKS)["valid"]})


def test_a_model_that_copies_its_input_is_refused_even_when_fully_valid() -> None:
    decision = decide(COPY, None, PromotionConfig(), EVAL)
    assert not decision.promote
    assert any(c.startswith("FAIL: recall_at_1 - floor +0.0000") for c in decision.checks)
    assert {g["gate"]: g["passed"] for g in decision.gates} == {"validity": True, "beats floor recall_at_1": False, "beats floor ndcg_at_3": False}
    assert all(g["split"] == "valid" and g["examples"] == N for g in decision.gates)
    assert "recall_at_1 - floor" in reason(decision)


def test_a_model_that_beats_the_floor_on_valid_is_promoted_when_there_is_no_champion() -> None:
    decision = decide(GOOD, None, PromotionConfig(), EVAL)
    assert decision.promote, decision.checks
    floor_gate = next(g for g in decision.gates if g["gate"] == "beats floor recall_at_1")
    assert floor_gate["ci_low"] > 0 and floor_gate["mean"] == pytest.approx(GOOD.recall_at_1 - float((PRE_RANKS == 1).mean()))
    assert reason(decision) == "passed every gate"
    # Below the validity gate it is refused all the same.
    assert not decide(gate(moved_to_top(0.3), valid_rate=0.9), None, PromotionConfig(), EVAL).promote


@pytest.mark.parametrize(
    "challenger, passes",
    [
        (gate(moved_to_top(0.5, seed=2)), True),  # clearly better
        (gate(moved_to_top(0.1, seed=3)), False),  # clearly worse: beats the floor, not the champion
        (GOOD, False),  # the same answers: a tie keeps the champion
        (gate(moved_to_top(0.5, seed=2), tokens_per_s=899.0), False),  # better but too slow
        (gate(moved_to_top(0.5, seed=2), digest="other-examples"), False),  # not comparable
        (gate(moved_to_top(0.5, seed=2), catalog="amazon-toys"), False),  # another catalogue
    ],
)
def test_a_challenger_replaces_the_champion_only_when_ahead(challenger: GateMetrics, passes: bool) -> None:
    decision = decide(challenger, GOOD, PromotionConfig(throughput_tolerance=0.1), EVAL)
    assert decision.promote is passes, decision.checks
    assert all(check.startswith(("pass: ", "FAIL: ")) for check in decision.checks)


def test_tolerances_are_read_from_config() -> None:
    # Slightly behind on average and not significantly: the tie rule keeps the champion either way,
    # but the tolerance decides whether the "not worse" checks pass.
    slightly_worse = gate(moved_to_top(0.27, seed=1))
    strict = {g["gate"]: g["passed"] for g in decide(slightly_worse, GOOD, PromotionConfig(), EVAL).gates}
    loose = {g["gate"]: g["passed"] for g in decide(slightly_worse, GOOD, PromotionConfig(recall_at_1_tolerance=0.5, ndcg_at_3_tolerance=0.5), EVAL).gates}
    assert not strict["not worse than champion recall_at_1"]
    assert loose["not worse than champion recall_at_1"] and not loose["ahead of champion"]
    # The floor gate can be switched off (a profile whose pre-ranker is the model to beat elsewhere).
    assert decide(COPY, None, PromotionConfig(require_beats_floor=False), EVAL).promote


@pytest.fixture
def tracked(make_config, tmp_path: Path):
    cfg = make_config(f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "evaluation.max_new_tokens=8")

    def checkpoint(seed: int) -> str:
        # A content-addressed output in the artifact root, as a training stage publishes it.
        return publish_checkpoint(str(tmp_path / "artifacts" / "diffusion_rl" / f"model{seed}"), cfg.storage.work_dir, seed)

    return cfg, checkpoint


def registered_three_versions(cfg, checkpoint) -> list:
    """Three checkpoints, each logged in a stage run of one recipe run and registered as diffusion-gr2."""
    runs = RecipeRuns.start(cfg, "recipe test", {"dataset_version": "d1"})
    versions = []
    for seed in range(3):
        uri = checkpoint(seed)
        run_id = runs.log_stage(f"diffusion_rl {seed}", DIFFUSION_RL_STAGE, {"outputs": {"model_uri": uri}, "metrics": {"final_loss": 1.5}, "seconds": 1.0})
        versions.append(register(cfg, "diffusion-gr2", uri, run_id, "diffusion_rl", "d1", "gr2-ar/1"))
    return versions


def check_alias_moves_only_on_improvement(cfg, versions) -> None:
    first, worse, better = versions
    assert [v.version for v in versions] == ["1", "2", "3"]

    assert promote(cfg, first, GOOD, None).promote
    assert str(version_by_alias(cfg, "diffusion-gr2", CHAMPION).version) == "1"

    decision = promote(cfg, worse, gate(moved_to_top(0.1, seed=3)), GOOD)
    assert not decision.promote and decision.champion_version == "1"
    assert str(version_by_alias(cfg, "diffusion-gr2", CHAMPION).version) == "1"
    assert str(version_by_alias(cfg, "diffusion-gr2", CHALLENGER).version) == "2"
    rejected = client(cfg).get_model_version("diffusion-gr2", "2")
    assert rejected.tags["promotion.decision"] == "rejected"
    assert any(check.startswith("FAIL: recall_at_1 - champion") for check in json.loads(rejected.tags["promotion.checks"]))

    # A champion that cannot be re-scored is never replaced on the validity gate alone.
    assert not promote(cfg, better, GOOD, None).promote
    assert promote(cfg, better, gate(moved_to_top(0.5, seed=2)), GOOD).promote
    assert str(version_by_alias(cfg, "diffusion-gr2", CHAMPION).version) == "3"
    promoted = client(cfg).get_model_version("diffusion-gr2", "3")
    assert promoted.tags["promotion.decision"] == "champion"
    assert json.loads(promoted.tags["promotion.metrics"])["champion"]["recall_at_1"] == GOOD.recall_at_1


def test_alias_moves_only_on_improvement(tracked) -> None:
    cfg, checkpoint = tracked
    check_alias_moves_only_on_improvement(cfg, registered_three_versions(cfg, checkpoint))


def test_versions_carry_lineage_and_load_as_pyfunc(tracked) -> None:
    cfg, checkpoint = tracked
    runs = RecipeRuns.start(cfg, "recipe test", {"dataset_version": "d1"})
    uri = checkpoint(0)
    run_id = runs.log_stage("diffusion_rl", DIFFUSION_RL_STAGE, {"outputs": {"model_uri": uri}, "metrics": {"final_loss": 1.5}, "seconds": 1.0})
    version = register(cfg, "diffusion-gr2", uri, run_id, "diffusion_rl", "d1", "gr2-ar/4")
    # Registering the same checkpoint again (an unchanged recipe re-run) adds no version.
    assert register(cfg, "diffusion-gr2", uri, run_id, "diffusion_rl", "d1", "gr2-ar/4") == version
    assert find_version(cfg, "diffusion-gr2", uri) == version

    tags = client(cfg).get_model_version("diffusion-gr2", version.version).tags
    assert tags["dataset_version"] == "d1" and tags["stage"] == "diffusion_rl" and tags["parent_model_version"] == "gr2-ar/4"
    assert tags["model_uri"] == uri and len(tags["config_hash"]) == 16 and tags["git_commit"]

    run = client(cfg).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == runs.parent_run_id
    assert run.data.params["diffusion_rl.group_size"] == str(cfg.diffusion_rl.group_size)
    assert [m.value for m in client(cfg).get_metric_history(run_id, "loss")] == [2.0, 1.5]
    assert "checkpoint/model.safetensors" in {a.path for a in client(cfg).list_artifacts(run_id, "checkpoint")}

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/diffusion-gr2/{version.version}")
    answers = model.predict(chat_prompts(tiny_tokenizer()), params={"threshold": 0.5})
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_warm_start_finds_the_champion_and_its_teacher_even_when_the_artifact_root_is_gone(tracked, tmp_path: Path) -> None:
    import shutil

    from flows.recipe import _champion_start
    from flows.retrain import metric_drift

    cfg, checkpoint = tracked
    assert _champion_start(cfg) == {}
    runs = RecipeRuns.start(cfg, "recipe test", {"dataset_version": "d1"})
    teacher_uri = publish_checkpoint(str(tmp_path / "artifacts" / "rl" / "teacher"), cfg.storage.work_dir, 7, block_size=None)
    teacher_run = runs.log_stage("rl", DIFFUSION_RL_STAGE, {"outputs": {"model_uri": teacher_uri}, "metrics": {}, "seconds": 1.0})
    teacher = register(cfg, "gr2-ar", teacher_uri, teacher_run, "rl", "d1", "preset:tiny")
    student_uri = checkpoint(0)
    student_run = runs.log_stage("diffusion_rl", DIFFUSION_RL_STAGE, {"outputs": {"model_uri": student_uri}, "metrics": {}, "seconds": 1.0})
    student = register(cfg, "diffusion-gr2", student_uri, student_run, "diffusion_rl", "d1", teacher.ref)
    assert promote(cfg, student, GOOD, None).promote

    assert _champion_start(cfg) == {"student": student_uri, "teacher": teacher_uri}
    # Someone cleaned the artifact root: the checkpoints logged with the versions serve instead.
    shutil.rmtree(tmp_path / "artifacts")
    start = _champion_start(cfg)
    assert set(start) == {"student", "teacher"}
    for role, seed in (("student", 0), ("teacher", 7)):
        assert (Path(start[role]) / "model.safetensors").read_bytes() == (
            Path(publish_checkpoint(str(tmp_path / "again" / role), cfg.storage.work_dir, seed, block_size=4 if role == "student" else None))
            / "model.safetensors"
        ).read_bytes()

    assert metric_drift({"recall_at_1": 0.30, "valid_rate": 1.0}, {"recall_at_1": 0.28, "valid_rate": 1.0, "examples": 9}) == pytest.approx(
        {"recall_at_1": -0.02, "valid_rate": 0.0}
    )


def test_only_a_quality_metric_that_fell_past_the_threshold_is_flagged() -> None:
    from flows.retrain import dropped_metrics

    drift = {"recall_at_1": -0.05, "ndcg_at_3": -0.01, "valid_rate": 0.02, "decode_tokens_per_s": -500.0}
    # Throughput depends on the machine, so a slower host never flags; a rise never flags.
    assert dropped_metrics(drift, 0.02) == {"recall_at_1": -0.05}
    assert dropped_metrics(drift, 0.0) == {"recall_at_1": -0.05, "ndcg_at_3": -0.01}
    assert dropped_metrics(drift, 0.05) == {}


def test_the_promotion_artifact_shows_the_verdict_and_every_check() -> None:
    from components.reporting import promotion_markdown

    worse = decide(gate(moved_to_top(0.1, seed=3)), GOOD, PromotionConfig(), EVAL)
    decision = worse.to_dict() | {"champion_version": "1", "reason": reason(worse)}
    markdown = promotion_markdown({"name": "diffusion-gr2", "version": "2"}, decision)
    assert "`diffusion-gr2` version 2 stays challenger" in markdown and "champion version 1" in markdown
    assert all(f"- {check}" in markdown for check in decision["checks"])
    assert "FAIL: recall_at_1 - champion -0.1" in markdown and "- decision: failed: recall_at_1 - champion" in markdown
