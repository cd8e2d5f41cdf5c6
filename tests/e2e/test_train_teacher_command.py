"""``dgr2 train-teacher`` end to end on a slice of Beauty: every stage runs, publishes and caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import dgr2

TEACHER_STAGES = ("sasrec", "traces", "base_model", "midtrain", "sft", "rl", "evaluate SFT", "evaluate SFT+RL")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact root for this module: the second test reuses the first one's data flow and models."""
    return tmp_path_factory.mktemp("teacher")


def _overrides(beauty_slice: Path, tmp_path: Path) -> list[str]:
    # Few steps and short decodes: this checks the wiring, not the accuracy (benchmarks/ does that).
    settings = {
        "data.source_uri": beauty_slice,
        "storage.artifact_root": tmp_path / "artifacts",
        "storage.work_dir": tmp_path / "work",
        "candidates.test_sample_size": 100,
        "semantic_ids.codebook_size": 32,
        "traces.max_examples": 120,
        # The tiny profile skips mid-training; the wiring test still runs it.
        "midtrain.enabled": "true",
        "midtrain.max_steps": 3,
        "midtrain.max_next_item_examples": 200,
        "sft.max_steps": 4,
        "rl.max_steps": 2,
        "rl.batch_size": 2,
        "rl.group_size": 2,
        "rl.max_new_tokens": 16,
        "evaluation.test_users": "all",
        # Every one of the slice's 300 test users for the teacher; SFT before RL on the quick scope.
        "evaluation.max_test_examples": 0,
        "evaluation.quick_test_examples": 50,
        "evaluation.valid_examples": 30,
        "evaluation.max_new_tokens": 16,
        "evaluation.bootstrap_samples": 50,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def test_train_teacher_json_then_cached_then_one_stage_changed(beauty_slice: Path, workspace: Path):
    tmp_path = workspace
    overrides = _overrides(beauty_slice, tmp_path)
    first = dgr2(["train-teacher", "--config", "configs/tiny.yaml", *overrides, "--json"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert tuple(summary["stages"]) == TEACHER_STAGES
    assert not any(stage["cached"] for stage in summary["stages"].values())

    traces = summary["stage_metrics"]["traces"]
    assert traces["examples"] == 120 and 0 < traces["acceptance_rate"] <= 1
    assert summary["stage_metrics"]["sft"]["steps"] == 4
    assert summary["stage_metrics"]["rl"]["steps"] == 2
    for name, uri in summary["models"].items():
        model_dir = Path(uri)
        assert (model_dir / "dgr2_model.json").is_file() and (model_dir / "history.json").is_file(), name
        assert json.loads((model_dir / "dgr2_model.json").read_text())["stage"] == {"SFT": "sft", "SFT+RL": "rl"}[name]
    for name, report in summary["evaluations"].items():
        # The teacher (SFT+RL) and SASRec on every test user, SFT on a seeded 50 of them; valid is the gates'.
        assert report["test"]["all"]["n"] == (50 if name == "SFT" else 300), name
        assert "valid" not in report
        assert 0.0 <= report["test"]["all"]["valid_rate"] <= 1.0
        # An invalid answer scores as the pre-rank order: with no valid answer the model is the floor.
        if report["test"]["all"]["valid_rate"] == 0.0:
            assert report["test"]["all"]["recall_at_1"] == report["test"]["all"]["floor"]["recall_at_1"]
    # Checkpoints are removed once a stage's model is published.
    assert not any((tmp_path / "work" / "checkpoints").rglob("state.pt"))

    again = dgr2(["train-teacher", "--config", "configs/tiny.yaml", *overrides, "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    cached = json.loads(again.stdout)
    assert cached["models"] == summary["models"]
    assert all(stage["cached"] for stage in cached["stages"].values()), cached["stages"]

    # Changing only RL's config re-runs RL and its evaluation, nothing before it.
    changed = dgr2(["train-teacher", "--config", "configs/tiny.yaml", *overrides, "--set", "rl.clip_high=0.3", "--json"], tmp_path)
    assert changed.returncode == 0, changed.stderr[-3000:]
    rerun = {name for name, stage in json.loads(changed.stdout)["stages"].items() if not stage["cached"]}
    assert rerun == {"rl", "evaluate SFT+RL"}


def test_readable_summary_shows_the_comparison_table(beauty_slice: Path, workspace: Path):
    overrides = [*_overrides(beauty_slice, workspace), "--set", "rl.enabled=false"]
    result = dgr2(["train-teacher", "--config", "configs/tiny.yaml", *overrides], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AR teacher (GR2)" in result.stdout
    assert "floor" in result.stdout and "SFT" in result.stdout and "SFT+RL" not in result.stdout
    assert "recall_at_1" in result.stdout and "valid rate" in result.stdout
