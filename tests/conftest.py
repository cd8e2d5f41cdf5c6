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

from pathlib import Path  # noqa: E402

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
