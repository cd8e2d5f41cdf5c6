"""The recipe's commands end to end on a slice of Beauty: ``dgr2 convert``, then ``dgr2 train-rl``
(CFT, OPD, RL, the tau sweep and the speed comparison) reusing everything before, ``dgr2 report``,
and a CFT change that re-runs CFT and everything after it, nothing before."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from components.config import load_config
from components.reporting import sweep_table
from tests.browser import rendered_dom
from tests.e2e.conftest import dgr2
from tests.e2e.test_train_teacher_command import TEACHER_STAGES, _overrides

THRESHOLDS = (1.0, 0.5)
# The final model is scored and timed at the thresholds and at the serving tau (0.9).
DECODING_TAUS = (*THRESHOLDS, 0.9)
MODELS = ("CFT", "CFT+OPD", "CFT+OPD+RL")
AFTER_CONVERSION = (
    "cft",
    "evaluate CFT (tau=1.0)",
    "opd",
    "evaluate CFT+OPD (tau=1.0)",
    "diffusion_rl",
    "evaluate CFT+OPD+RL (tau=1.0)",
    # The serving tau (0.9) on every test user, though not among the thresholds; the others quick.
    "evaluate CFT+OPD+RL (tau=0.9)",
    "evaluate CFT+OPD+RL (tau=0.5)",
    "speed",
    # The promotion gates score the valid split at the serving tau (0.9).
    "gate CFT+OPD+RL (tau=0.9)",
)
# The teacher is registered and gated by every run, `dgr2 convert` included.
TEACHER_GATE = "gate AR teacher"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe")


def _recipe_overrides(beauty_slice: Path, workspace: Path) -> list[str]:
    settings = {
        "diffusion.block_size": 4,
        "cft.max_steps": 3,
        "cft.batch_size": 4,
        # Folded decoding end to end: CFT trains whole blocks, and OPD, RL and evaluation fold.
        "cft.whole_block_rate": 0.5,
        "opd.max_steps": 2,
        "opd.batch_size": 2,
        "opd.samples_per_prompt": 2,
        "opd.max_new_tokens": 16,
        "diffusion_rl.max_steps": 2,
        "diffusion_rl.batch_size": 2,
        "diffusion_rl.group_size": 2,
        "diffusion_rl.max_new_tokens": 16,
        "evaluation.thresholds": f"[{', '.join(map(str, THRESHOLDS))}]",
        "evaluation.speed_prompts_batch1": 2,
        "evaluation.speed_prompts_batch16": 16,
    }
    return [*_overrides(beauty_slice, workspace), *(arg for k, v in settings.items() for arg in ("--set", f"{k}={v}"))]


def test_convert_then_the_whole_recipe_then_report_then_only_cft_onwards_reruns(beauty_slice: Path, workspace: Path):
    overrides = _recipe_overrides(beauty_slice, workspace)
    converted = dgr2(["convert", "--config", "configs/tiny.yaml", *overrides, "--json"], workspace)
    assert converted.returncode == 0, converted.stderr[-3000:]
    first = json.loads(converted.stdout)
    assert tuple(first["stages"]) == (*TEACHER_STAGES, "convert", "evaluate naive conversion (tau=1.0)", TEACHER_GATE)
    config = json.loads((Path(first["models"]["naive conversion"]) / "config.json").read_text())
    assert config["bd_block_size"] == 4 and config["bd_token_shift"] is True
    naive = first["evaluations"]["naive conversion"]["test"]
    # An intermediate model: the quick scope's 50 users.
    assert naive["all"]["n"] == 50 and 0.0 <= naive["all"]["valid_rate"] <= 1.0
    # One token per step at tau = 1: a block of 4 takes 3 steps and a commit forward.
    assert naive["decode"]["tokens_per_forward"] <= 1.0
    assert first["sweep"] == {} and first["speed"] == {}

    full = dgr2(["train-rl", "--config", "configs/tiny.yaml", *overrides, "--json"], workspace)
    assert full.returncode == 0, full.stderr[-3000:]
    summary = json.loads(full.stdout)
    before = first["stages"]
    assert tuple(summary["stages"]) == (*list(before)[:-1], *AFTER_CONVERSION[:-1], TEACHER_GATE, AFTER_CONVERSION[-1])
    assert {name for name, stage in summary["stages"].items() if not stage["cached"]} == set(AFTER_CONVERSION)
    assert summary["final"] == "CFT+OPD+RL"
    parents = {"CFT": "naive conversion", "CFT+OPD": "CFT", "CFT+OPD+RL": "CFT+OPD"}
    for label, stage in zip(MODELS, ("cft", "opd", "diffusion_rl")):
        meta = json.loads((Path(summary["models"][label]) / "dgr2_model.json").read_text())
        assert meta["stage"] == stage and meta["parent_model_uri"] == summary["models"][parents[label]]
        # Every model at tau = 1 on the quick scope.
        assert summary["evaluations"][label]["test"]["all"]["n"] == 50
    # The final model at the serving tau on every test user (the sample is 100 of them), in table 1 too.
    served = summary["evaluations"]["CFT+OPD+RL (tau=0.9)"]
    assert served == summary["sweep"]["0.9"] and served["test"]["all"]["n"] == 300 and served["test"]["test_sample"]["n"] == 100
    assert summary["sweep"]["1.0"] == summary["evaluations"]["CFT+OPD+RL"]
    assert summary["sweep"]["0.5"]["test"]["all"]["n"] == 50
    # Only the models scored on the teacher's users are paired with it: the final one at the
    # serving tau (tau = 1, the sweep's 0.5 and the intermediate models are on the quick scope).
    assert summary["teacher_label"] == "SFT+RL" and set(summary["vs_teacher"]) == {"CFT+OPD+RL (tau=0.9)"}
    versus = summary["vs_teacher"]["CFT+OPD+RL (tau=0.9)"]
    assert versus["n"] == 100 and versus["recall_at_1"]["ci_low"] <= versus["recall_at_1"]["mean"] <= versus["recall_at_1"]["ci_high"]
    assert summary["stage_metrics"]["opd"]["steps"] == 2 and summary["stage_metrics"]["diffusion_rl"]["steps"] == 2
    assert set(summary["sweep"]) == {str(t) for t in DECODING_TAUS}
    # CFT trained whole-block masks (cft.whole_block_rate), so the student is marked for folded decoding.
    assert json.loads((Path(summary["models"]["CFT"]) / "config.json").read_text())["bd_fold_commits"] is True
    for batch in ("batch_1", "batch_16"):
        entries = summary["speed"][batch]
        assert set(entries) == {"ar", "speculative", *(f"tau={t}" for t in DECODING_TAUS)}
        assert entries["ar"]["tokens_per_forward"] == 1.0
        assert all(entries[f"tau={t}"]["speedup"] > 0 for t in DECODING_TAUS)
        # The speculative decoder returns the teacher's output, whatever the student drafts.
        assert entries["speculative"]["same_output_as_ar"] == 1.0 and entries["speculative"]["mean_accepted_length"] >= 0

    _check_tracking(summary, first)

    report = dgr2(["report", "--config", "configs/tiny.yaml", *overrides, "--json"], workspace)
    assert report.returncode == 0, report.stderr[-3000:]
    latest = json.loads(report.stdout)
    assert latest["models"] == summary["models"] and latest["dataset_version"] == summary["dataset_version"]
    # Kept in run order: the tables' columns and the stage list read as the recipe ran.
    assert list(latest["evaluations"]) == list(summary["evaluations"]) and list(latest["stages"]) == list(summary["stages"])
    readable = dgr2(["report", "--config", "configs/tiny.yaml", *overrides], workspace)
    assert "Threshold sweep of CFT+OPD+RL" in readable.stdout and "speedup vs AR" in readable.stdout
    assert "CFT+OPD+RL (tau=0.9) - teacher (n=100)" in readable.stdout
    # Rich draws the tables with box characters, so the row is checked in the markdown it renders.
    assert "The speculative row decodes" in readable.stdout and "| speculative (AR GR2's output) |" in sweep_table(latest)

    changed = dgr2(["train-rl", "--config", "configs/tiny.yaml", *overrides, "--set", "cft.mask_eps=0.01", "--json"], workspace)
    assert changed.returncode == 0, changed.stderr[-3000:]
    again = json.loads(changed.stdout)
    rerun = {name for name, stage in again["stages"].items() if not stage["cached"]}
    assert rerun == set(AFTER_CONVERSION)
    # The unchanged teacher keeps its version; the new student is a new version, compared with the
    # champion if there is one.
    assert again["registry"]["gr2-ar"]["version"] == summary["registry"]["gr2-ar"]["version"]
    assert int(again["registry"]["diffusion-gr2"]["version"]) == int(summary["registry"]["diffusion-gr2"]["version"]) + 1

    # A checkpoint damaged in the artifact store: the next stage that reads it (RL, after a change
    # to rl.*) stops the run, exit 2, and the CLI says so in one line that names the file (besides
    # Prefect's own log of the failed task).
    weights = Path(again["models"]["SFT"]) / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    damaged = dgr2(["train-teacher", "--config", "configs/tiny.yaml", *overrides, "--set", "rl.learning_rate=1e-5", "--json"], workspace)
    assert damaged.returncode == 2, damaged.stderr[-3000:]
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: checkpoint file {weights} is unreadable"), damaged.stderr[-3000:]


def _check_tracking(summary: dict, converted: dict) -> None:
    """One MLflow parent run per recipe run with a child run per stage; both models registered
    with lineage; the promotion decision follows the validity gate."""
    from mlflow import MlflowClient

    tracking = summary["tracking"]
    mlflow = MlflowClient(tracking["tracking_uri"])
    children = mlflow.search_runs([tracking["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{tracking['parent_run_id']}'")
    assert {run.info.run_name for run in children} == {"data", *summary["stages"]}
    cft = next(run for run in children if run.info.run_name == "cft")
    assert cft.data.params["cft.max_steps"] == "3" and cft.data.tags["output.model_uri"] == summary["models"]["CFT"]
    # The loop logs every training.log_every (10) steps and after the last one.
    assert [m.step for m in mlflow.get_metric_history(cft.info.run_id, "loss")] == [3]
    assert converted["tracking"]["parent_run_id"] != tracking["parent_run_id"]

    teacher, student = summary["registry"]["gr2-ar"], summary["registry"]["diffusion-gr2"]
    assert teacher["model_uri"] == summary["teacher_model_uri"] and student["model_uri"] == summary["models"]["CFT+OPD+RL"]
    tags = mlflow.get_model_version("diffusion-gr2", student["version"]).tags
    assert tags["parent_model_version"] == f"gr2-ar/{teacher['version']}" and tags["dataset_version"] == summary["dataset_version"]
    assert tags["stage"] == "diffusion_rl"
    # Every gate decides on the valid split; the decision is all of them, recorded on the version.
    for key, name in (("promotion", "diffusion-gr2"), ("teacher_promotion", "gr2-ar")):
        decision = summary[key]
        gates = {gate["gate"]: gate for gate in decision["gates"]}
        assert {"validity", "beats floor recall_at_1", "beats floor ndcg_at_3"} <= set(gates)
        assert all(gate["split"] == "valid" and gate["examples"] == 30 for gate in gates.values())
        assert gates["validity"]["passed"] == (decision["challenger"]["valid_rate"] >= load_config("configs/tiny.yaml").promotion.min_valid_rate)
        assert decision["promote"] == all(gate["passed"] for gate in gates.values())
        assert decision["reason"]
        version = mlflow.get_model_version(name, decision["version"])
        assert (version.tags["promotion.decision"] == "champion") == decision["promote"]
        assert version.tags["catalog"]  # the slice's directory name: models of another catalogue never replace it
        # A model card per registered version, logged once the gates decided.
        assert {"model_card.md", "model_card.html"} <= {a.path for a in mlflow.list_artifacts(version.run_id)}

    # One page per run, opened in a real browser: the tables and the plot are there.
    [page] = [a.path for a in mlflow.list_artifacts(tracking["parent_run_id"], "report")]
    with tempfile.TemporaryDirectory() as scratch:
        dom = rendered_dom(Path(mlflow.download_artifacts(tracking["parent_run_id"], page, scratch)))
    assert "<h2>Threshold sweep of CFT+OPD+RL (test)</h2>" in dom and dom.count("<table>") >= 3
    assert re.search(r'<img alt="[^"]*frontier" src="data:image/png;base64,', dom)


def test_report_before_any_run_names_the_missing_run(tmp_path: Path):
    result = dgr2(["report", "--set", f"storage.artifact_root={tmp_path / 'artifacts'}", "--set", f"storage.work_dir={tmp_path / 'work'}"], tmp_path)
    assert result.returncode == 2
    assert "no recipe run has finished" in result.stderr
