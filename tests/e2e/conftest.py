"""Shared pieces of the end-to-end tests: the real CLI in a subprocess (the Beauty slice is in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def dgr2(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect")}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
