"""Shared pieces of the end-to-end tests: a slice of Beauty and the real CLI in a subprocess."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import BUNDLED_DATA, REPO_ROOT


@pytest.fixture(scope="session")
def beauty_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 users of the bundled data and the items they touched, in the bundled layout."""
    directory = tmp_path_factory.mktemp("beauty-slice")
    interactions = pd.read_csv(BUNDLED_DATA / "interactions.tsv.gz", sep="\t")
    interactions = interactions[interactions["user_id"] <= 300]
    interactions.to_csv(directory / "interactions.tsv.gz", sep="\t", index=False)
    wanted = set(interactions["item_id"])
    with gzip.open(BUNDLED_DATA / "items.jsonl.gz", "rt") as source, open(directory / "items.jsonl", "w") as target:
        target.writelines(line for line in source if json.loads(line)["item_id"] in wanted)
    return directory


def dgr2(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect")}
    return subprocess.run(
        [sys.executable, "-m", "components.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
