"""Test-wide settings: no network, no telemetry, every artifact under the test's tmp_path."""

from __future__ import annotations

import os

# Set before any library is imported by a test module: they read these at import time.
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "BENTOML_DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

# A developer's `make stack-up` exports these; tests pick their own stores.
for _variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
    os.environ.pop(_variable, None)

import gzip  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from components.config import Config, load_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO_ROOT / "data" / "amazon-beauty"


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a Config whose artifact root and work dir live under tmp_path, plus overrides."""

    def _make(*overrides: str) -> Config:
        return load_config(
            None,
            [f"storage.artifact_root={tmp_path / 'artifacts'}", f"storage.work_dir={tmp_path / 'work'}", *overrides],
        )

    return _make


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
