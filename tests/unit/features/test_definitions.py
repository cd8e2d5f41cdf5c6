"""The feature_repo directory as the Feast CLI sees it: `feast plan` over its definitions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from feature_repo.store import build_feature_tables

REPO_DIR = Path(__file__).resolve().parents[3] / "feature_repo"


def test_feast_plan_accepts_the_repository(tmp_path, interactions, items, sids):
    # A copy, so the CLI's sqlite registry lands under tmp_path rather than in the source tree.
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO_DIR, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (repo / "data").mkdir()
    build_feature_tables(interactions, items, sids, tmp_path / "tables")
    feast = Path(sys.executable).with_name("feast")

    result = subprocess.run(
        [str(feast), "plan"],
        cwd=repo,
        env={**os.environ, "DGR2_FEATURE_DATA_DIR": str(tmp_path / "tables")},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    for line in (
        "Created entity user",
        "Created feature view user_history_view",
        "Created on demand feature view user_history_items_view",
        "Created feature service reranker_v1",
    ):
        assert line in result.stdout
