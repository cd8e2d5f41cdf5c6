"""Wall time of the data flow on the bundled Beauty data, cold and cached.

    python benchmarks/data_flow.py --config configs/tiny.yaml

Cold: a fresh artifact root and work dir (nothing to reuse, embeddings included). Cached: the
same command again. Each run is a fresh ``dgr2 data`` process, as a user would type it, so the
times include Python start-up, imports and Prefect's ephemeral API server. A third run repeats the
cached one against a running ``prefect server`` (PREFECT_API_URL), which is what a team's stack
provides. Results are appended to benchmarks/results/data_flow.md with the machine and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from cli_run import append_record, run_dgr2

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "data_flow.md"


def _run(config: str, scratch: Path, api_url: str | None = None) -> tuple[float, dict]:
    overrides = [f"storage.artifact_root={scratch / 'artifacts'}", f"storage.work_dir={scratch / 'work'}"]
    env = {"PREFECT_HOME": str(scratch / "prefect")}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return run_dgr2("data", config, overrides, env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cached_with_server(config: str, scratch: Path) -> float:
    """Cached run against a ``prefect server`` started here on 127.0.0.1 and stopped afterwards."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{api_url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("prefect server did not become healthy")
                time.sleep(1)
        _run(config, scratch, api_url)  # the server's first run of this flow registers it
        seconds, _ = _run(config, scratch, api_url)
        return seconds
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dgr2-bench-"))
    try:
        cold_s, summary = _run(args.config, scratch)
        cached_s, again = _run(args.config, scratch)
        server_s = _cached_with_server(args.config, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert all(again["cached"].values()), again["cached"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stages = ", ".join(f"{k} {v}s" for k, v in summary["stage_seconds"].items())
    append_record(
        RESULTS,
        "# Data flow wall time (bundled Beauty, `dgr2 data`)\n\n"
        "Command: `python benchmarks/data_flow.py --config configs/tiny.yaml`. Targets: cold <= 300 s, cached <= 15 s.\n\n"
        "| date | machine | dataset version | cold s | cached s | cached s, running Prefect server | cold stages |\n"
        "|---|---|---|---|---|---|---|\n",
        f"| {date} | {machine} | {summary['dataset_version']} | {cold_s:.1f} | {cached_s:.1f} | {server_s:.1f} | {stages} |\n",
    )
    print(f"cold {cold_s:.1f} s, cached {cached_s:.1f} s, cached with a server {server_s:.1f} s -> {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
