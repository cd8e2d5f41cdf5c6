"""``dgr2 convert`` and ``dgr2 train-cft`` end to end on a slice of Beauty: the teacher is trained
(or reused), converted, evaluated naive, fine-tuned, evaluated per tau and timed against AR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import dgr2
from tests.e2e.test_train_teacher_command import TEACHER_STAGES, _overrides

THRESHOLDS = (1.0, 0.5)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe")


def _recipe_overrides(beauty_slice: Path, workspace: Path) -> list[str]:
    settings = {
        "diffusion.block_size": 4,
        "cft.max_steps": 3,
        "cft.batch_size": 4,
        "evaluation.thresholds": f"[{', '.join(map(str, THRESHOLDS))}]",
        "evaluation.speed_prompts_batch1": 2,
        "evaluation.speed_prompts_batch16": 16,
    }
    return [*_overrides(beauty_slice, workspace), *(arg for k, v in settings.items() for arg in ("--set", f"{k}={v}"))]


def test_convert_then_train_cft_then_only_cft_reruns(beauty_slice: Path, workspace: Path):
    overrides = _recipe_overrides(beauty_slice, workspace)
    converted = dgr2(["convert", "--config", "configs/tiny.yaml", *overrides, "--json"], workspace)
    assert converted.returncode == 0, converted.stderr[-3000:]
    first = json.loads(converted.stdout)
    assert tuple(first["stages"]) == (*TEACHER_STAGES, "convert", "evaluate naive")
    naive_dir = Path(first["models"]["naive conversion"])
    config = json.loads((naive_dir / "config.json").read_text())
    assert config["bd_block_size"] == 4 and config["bd_token_shift"] is True
    naive = first["evaluations"]["naive conversion (tau=1.0)"]["test"]
    assert naive["all"]["n"] == 300 and 0.0 <= naive["all"]["valid_rate"] <= 1.0
    # One token per step at tau = 1: a block of 4 takes 3 steps and a commit forward.
    assert naive["decode"]["tokens_per_forward"] <= 1.0

    full = dgr2(["train-cft", "--config", "configs/tiny.yaml", *overrides, "--json"], workspace)
    assert full.returncode == 0, full.stderr[-3000:]
    summary = json.loads(full.stdout)
    labels = [f"CFT (tau={t})" for t in THRESHOLDS]
    assert tuple(summary["stages"]) == (
        *TEACHER_STAGES, "convert", "evaluate naive", "cft", *(f"evaluate {label}" for label in labels), "speed"
    )
    rerun = {name for name, stage in summary["stages"].items() if not stage["cached"]}
    assert rerun == {"cft", "speed", *(f"evaluate {label}" for label in labels)}
    assert summary["stage_metrics"]["cft"]["steps"] == 3
    cft_meta = json.loads((Path(summary["models"]["CFT"]) / "dgr2_model.json").read_text())
    assert cft_meta["stage"] == "cft" and cft_meta["parent_model_uri"] == summary["models"]["naive conversion"]
    for label in labels:
        assert summary["evaluations"][label]["test"]["test_sample"]["n"] == 100
    for batch in ("batch_1", "batch_16"):
        entries = summary["speed"][batch]
        assert set(entries) == {"ar", *(f"tau={t}" for t in THRESHOLDS)}
        assert entries["ar"]["tokens_per_forward"] == 1.0
        assert all(entries[f"tau={t}"]["speedup"] > 0 for t in THRESHOLDS)

    changed = dgr2(["train-cft", "--config", "configs/tiny.yaml", *overrides, "--set", "cft.mask_eps=0.01", "--json"], workspace)
    assert changed.returncode == 0, changed.stderr[-3000:]
    rerun = {name for name, stage in json.loads(changed.stdout)["stages"].items() if not stage["cached"]}
    assert rerun == {"cft", "speed", *(f"evaluate {label}" for label in labels)}
