"""``dgr2 data`` end to end, through the real CLI and the real Prefect flow, on a slice of Beauty."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.e2e.conftest import dgr2 as _dgr2


def test_data_command_json_then_cached_rerun(beauty_slice: Path, tmp_path: Path):
    overrides = [
        "--set", f"data.source_uri={beauty_slice}",
        "--set", f"storage.artifact_root={tmp_path / 'artifacts'}",
        "--set", f"storage.work_dir={tmp_path / 'work'}",
        "--set", "candidates.test_sample_size=100",
        "--set", "semantic_ids.codebook_size=32",
    ]
    first = _dgr2(["data", "--config", "configs/tiny.yaml", *overrides, "--json"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # stdout holds exactly one JSON object
    assert summary["dataset"]["users"] == 300
    assert summary["semantic_ids"]["unique_rate"] == 1.0
    assert summary["examples"]["test"] == 300
    assert summary["floors"]["test_sample"]["n"] == 100
    assert set(summary["floors"]) == {"train", "valid", "test", "test_sample"}
    assert Path(summary["outputs"]["data_docs_path"]).is_file()
    assert not any(summary["cached"].values())

    second = _dgr2(["data", "--config", "configs/tiny.yaml", *overrides, "--json"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["dataset_version"] == summary["dataset_version"]
    assert again["outputs"] == summary["outputs"]
    assert all(again["cached"].values()), again["cached"]


def test_bad_override_names_the_field(tmp_path: Path):
    result = _dgr2(["data", "--set", "candidates.num_candidates=zero", "--json"], tmp_path)
    assert result.returncode == 2
    assert "candidates.num_candidates" in result.stderr
    assert result.stdout == ""


def test_missing_source_is_a_clear_error(tmp_path: Path):
    result = _dgr2(
        [
            "data",
            "--set", f"data.source_uri={tmp_path / 'nowhere'}",
            "--set", f"storage.artifact_root={tmp_path / 'artifacts'}",
            "--set", f"storage.work_dir={tmp_path / 'work'}",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "artifacts" / "datasets").exists()


def test_failed_validation_stops_the_flow_and_points_at_data_docs(beauty_slice: Path, tmp_path: Path):
    """A user with 3 interactions breaks the 5-core expectation: the flow stops before semantic IDs."""
    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    interactions = pd.read_csv(beauty_slice / "interactions.tsv.gz", sep="\t")
    first_user = interactions["user_id"].min()
    keep = (interactions["user_id"] != first_user) | (interactions["position"] < 3)
    interactions[keep].to_csv(corrupted / "interactions.tsv.gz", sep="\t", index=False)
    (corrupted / "items.jsonl").write_text((beauty_slice / "items.jsonl").read_text())
    result = _dgr2(
        [
            "data",
            "--set", f"data.source_uri={corrupted}",
            "--set", f"storage.artifact_root={tmp_path / 'artifacts'}",
            "--set", f"storage.work_dir={tmp_path / 'work'}",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "expect_column_values_to_be_between on n" in result.stderr
    # The CLI's own message ends with the report's path on a line of its own.
    docs = [line.removeprefix("Data Docs: ") for line in result.stderr.splitlines() if line.startswith("Data Docs: ")]
    assert docs and Path(docs[-1]).is_file()
    assert (tmp_path / "artifacts" / "datasets").is_dir()  # ingest ran
    assert not (tmp_path / "artifacts" / "semantic_ids").exists()  # nothing after validation did
