"""What the benchmarks share: running a ``dgr2`` command the way a user types it (its JSON summary),
the commit a record was measured at, and appending a section to a results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_dgr2(command: str, config: str, overrides: list[str], env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """``dgr2 <command> --config <config> --json`` with ``--set`` overrides, from the repository root.

    Args:
        command: a ``dgr2`` subcommand (``data``, ``train-teacher``, ...).
        config: the profile YAML.
        overrides: ``section.key=value`` strings.
        env: extra environment variables for the process.

    Returns:
        ``(wall seconds, the command's JSON summary)``; exits with the command's stderr tail if it fails.
    """
    argv = [sys.executable, "-m", "cli", command, "--config", config, "--json"]
    argv += [arg for item in overrides for arg in ("--set", item)]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"dgr2 {command} failed:\n{result.stderr[-4000:]}")
    return seconds, json.loads(result.stdout)


def current_commit() -> str:
    """The checkout's short commit hash, for a results section ("" outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()


def append_record(path: Path, header: str, text: str) -> None:
    """Append ``text`` to the results file at ``path``, starting the file with ``header`` if new."""
    if not path.exists():
        path.write_text(header)
    with path.open("a") as results:
        results.write(text)
