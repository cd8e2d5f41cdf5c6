"""Wall time of the data flow on the bundled Beauty data, cold and cached.

    python benchmarks/data_flow.py --config configs/tiny.yaml

Cold: a fresh artifact root and work dir (nothing to reuse, embeddings included). Cached: the
same command again. Each run is a fresh ``dgr2 data`` process, as a user would type it, so the
times include Python start-up, imports and the Prefect ephemeral server. Results are appended to
benchmarks/results/data_flow.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "data_flow.md"


def _run(config: str, scratch: Path) -> tuple[float, dict]:
    command = [
        sys.executable, "-m", "components.cli", "data", "--config", config, "--json",
        "--set", f"storage.artifact_root={scratch / 'artifacts'}",
        "--set", f"storage.work_dir={scratch / 'work'}",
    ]
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect")}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"dgr2 data failed:\n{result.stderr[-4000:]}")
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dgr2-bench-"))
    try:
        cold_s, summary = _run(args.config, scratch)
        cached_s, again = _run(args.config, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert all(again["cached"].values()), again["cached"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stages = ", ".join(f"{k} {v}s" for k, v in summary["stage_seconds"].items())
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Data flow wall time (bundled Beauty, `dgr2 data`)\n\n"
            "Command: `python benchmarks/data_flow.py --config configs/tiny.yaml`. Targets: cold <= 300 s, cached <= 15 s.\n\n"
            "| date | machine | dataset version | cold s | cached s | cold stages |\n|---|---|---|---|---|---|\n"
        )
    with RESULTS.open("a") as handle:
        handle.write(f"| {date} | {machine} | {summary['dataset_version']} | {cold_s:.1f} | {cached_s:.1f} | {stages} |\n")
    print(f"cold {cold_s:.1f} s, cached {cached_s:.1f} s  ->  {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
