"""Registry and promotion on a real MLflow store (SQLite in tmp_path): lineage tags, idempotent
registration, and a champion alias that moves only when the challenger passes every gate."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from components.config import PromotionConfig
from components.tracking.promotion import CHALLENGER, CHAMPION, GateMetrics, decide, promote
from components.tracking.registry import find_version, register, version_by_alias
from components.tracking.runs import RecipeRuns, client
from components.training.diffusion import DIFFUSION_RL_STAGE
from tests.unit.tiny_lm import chat_prompts, publish_checkpoint, tiny_tokenizer

GOOD = GateMetrics(valid_rate=1.0, recall_at_1=0.30, ndcg_at_3=0.45, decode_tokens_per_s=1000.0, examples=1615)


def _report(metrics: GateMetrics) -> dict:
    """An evaluation report shaped like ``evaluate_model``'s, holding ``metrics``."""
    return {
        "test": {
            "test_sample": {
                "n": metrics.examples,
                "valid_rate": metrics.valid_rate,
                "recall_at_1": {"mean": metrics.recall_at_1},
                "ndcg_at_3": {"mean": metrics.ndcg_at_3},
            },
            "decode": {"decode_tokens_per_s": metrics.decode_tokens_per_s},
        }
    }


def test_gate_metrics_read_the_fixed_test_sample() -> None:
    assert GateMetrics.from_evaluation(_report(GOOD)) == GOOD


@pytest.mark.parametrize(
    "change, passes",
    [
        ({}, True),
        ({"recall_at_1": 0.31, "ndcg_at_3": 0.46}, True),
        ({"valid_rate": 0.999}, False),
        ({"recall_at_1": 0.2999}, False),
        ({"ndcg_at_3": 0.449}, False),
        ({"decode_tokens_per_s": 899.0}, False),
        ({"decode_tokens_per_s": 901.0}, True),
        ({"examples": 1614}, False),
    ],
)
def test_gates(change: dict, passes: bool) -> None:
    challenger = GateMetrics(**(GOOD.__dict__ | change))
    decision = decide(challenger, GOOD, PromotionConfig(throughput_tolerance=0.1))
    assert decision.promote is passes
    assert len(decision.checks) == (5 if change.get("examples") else 4)
    assert all(check.startswith(("pass: ", "FAIL: ")) for check in decision.checks)


def test_tolerances_are_read_from_config() -> None:
    slightly_worse = GateMetrics(**(GOOD.__dict__ | {"recall_at_1": 0.295}))
    assert not decide(slightly_worse, GOOD, PromotionConfig()).promote
    assert decide(slightly_worse, GOOD, PromotionConfig(recall_at_1_tolerance=0.01)).promote


def test_first_version_needs_only_the_validity_gate() -> None:
    assert decide(GOOD, None, PromotionConfig()).promote
    assert not decide(GateMetrics(**(GOOD.__dict__ | {"valid_rate": 0.5})), None, PromotionConfig()).promote


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

    worse_metrics = GateMetrics(**(GOOD.__dict__ | {"recall_at_1": 0.25}))
    decision = promote(cfg, worse, worse_metrics, GOOD)
    assert not decision.promote and decision.champion_version == "1"
    assert str(version_by_alias(cfg, "diffusion-gr2", CHAMPION).version) == "1"
    assert str(version_by_alias(cfg, "diffusion-gr2", CHALLENGER).version) == "2"
    rejected = client(cfg).get_model_version("diffusion-gr2", "2")
    assert rejected.tags["promotion.decision"] == "rejected"
    assert any(check.startswith("FAIL: recall_at_1") for check in json.loads(rejected.tags["promotion.checks"]))

    # A champion that cannot be re-scored is never replaced on the validity gate alone.
    assert not promote(cfg, better, GOOD, None).promote
    better_metrics = GateMetrics(**(GOOD.__dict__ | {"recall_at_1": 0.32}))
    assert promote(cfg, better, better_metrics, GOOD).promote
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


def test_the_promotion_artifact_shows_the_verdict_and_every_check() -> None:
    from components.reporting import promotion_markdown

    decision = decide(GateMetrics(**(GOOD.__dict__ | {"ndcg_at_3": 0.40})), GOOD, PromotionConfig()).to_dict() | {"champion_version": "1"}
    markdown = promotion_markdown({"name": "diffusion-gr2", "version": "2"}, decision)
    assert "`diffusion-gr2` version 2 stays challenger" in markdown and "champion version 1" in markdown
    assert all(f"- {check}" in markdown for check in decision["checks"])
    assert "FAIL: ndcg_at_3 0.4000 >= champion 0.4500 - 0.0" in markdown
