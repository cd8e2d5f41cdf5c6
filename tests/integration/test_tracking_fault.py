"""A fault on purpose: the MLflow tracking server dies in the middle of a recipe run.

The run must stop with one clear error line that names the server and says a rerun resumes; once
the server is back (same store, same port), the same command finishes, replaying from cache every
stage that finished before the fault, and registers its model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.test_train_teacher_command import _overrides
from tests.servers import free_port, served

pytestmark = pytest.mark.integration

# Every stage's child run but the data flow's, which is logged before any stage runs.
TRAINED_STAGES = "tags.stage != 'data'"


def _mlflow_server(home: Path, port: int):
    # One worker and no server-side jobs: the store is all this test needs.
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "artifacts"), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return served(command, "/health", env, home, port=port, log_name=f"mlflow-{time.monotonic_ns()}.log")


def _logged_stages(url: str) -> set[str]:
    """The stages (by their names in the summary) whose child runs the server holds."""
    from mlflow import MlflowClient

    registry = MlflowClient(url)
    experiments = [experiment.experiment_id for experiment in registry.search_experiments()]
    return {run.info.run_name for run in registry.search_runs(experiments, filter_string=TRAINED_STAGES)}


@pytest.mark.timeout(1500)
def test_the_tracking_server_dies_mid_run_and_the_rerun_resumes(beauty_slice: Path, tmp_path: Path) -> None:
    home = tmp_path / "mlflow-home"
    home.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "cli", "convert", "--config", "configs/tiny.yaml", *_overrides(beauty_slice, tmp_path), "--json"]
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        # The client's own retries back off for minutes by default; one quick retry bounds the test.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }

    with _mlflow_server(home, port) as server:
        run = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The fault: SIGKILL to the server once the first stage is logged.
        deadline = time.monotonic() + 900
        while not (logged := _logged_stages(server.url)):
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no stage was logged"
            time.sleep(0.5)
        server.kill()
        stdout, stderr = run.communicate(timeout=600)

    assert run.returncode == 2, stderr[-3000:]
    assert stdout == ""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert f"MLflow tracking store http://127.0.0.1:{port} did not answer" in errors[0]
    assert "run the same command again" in errors[0]

    with _mlflow_server(home, port) as server:
        rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        summary = json.loads(rerun.stdout)
        cached = {name for name, stage in summary["stages"].items() if stage["cached"]}
        # What finished before the fault is replayed, not trained again; the rest ran now.
        assert logged <= cached, (logged, summary["stages"])
        assert not set(summary["stages"]) <= cached

        from mlflow import MlflowClient

        registry = MlflowClient(server.url)
        parent = registry.get_run(summary["tracking"]["parent_run_id"])
        assert parent.info.status == "FINISHED"
        version = summary["registry"]["gr2-ar"]["version"]
        assert registry.get_model_version("gr2-ar", version).run_id == summary["registry"]["gr2-ar"]["run_id"]
