"""The lifecycle deployments: served by ``python -m flows.serve`` against a real Prefect API server,
triggered through that API, run to completion on the tiny profile; and ``deploy/prefect.yaml``
declares the same deployments the laptop scheduler serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.test_train_teacher_command import _overrides


def test_prefect_yaml_declares_the_served_deployments() -> None:
    from flows.serve import EVALUATE_CRON, RETRAIN_CRON, deployments

    declared = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "deploy" / "prefect.yaml").read_text())["deployments"]}
    served = {d.name: d for d in deployments("configs/tiny.yaml", [])}
    assert set(declared) == set(served) == {"recipe", "retrain", "evaluate-champion"}
    for name, deployment in declared.items():
        path, function = deployment["entrypoint"].split(":")
        module = __import__(path.removesuffix(".py").replace("/", "."), fromlist=[function])
        assert getattr(module, function).name == served[name].flow_name
        assert set(deployment["parameters"]) <= set(getattr(module, function).parameters.properties)
    assert [s["cron"] for s in declared["retrain"]["schedules"]] == [RETRAIN_CRON]
    assert [s["cron"] for s in declared["evaluate-champion"]["schedules"]] == [EVALUATE_CRON]
    assert "schedules" not in declared["recipe"]
    # The worker in the scaled-out stack serves the pool the deployments name.
    compose = yaml.safe_load((REPO_ROOT / "infra" / "compose.yaml").read_text())
    worker = next(s["command"] for s in compose["services"].values() if s.get("command", [])[:3] == ["prefect", "worker", "start"])
    assert {d["work_pool"]["name"] for d in declared.values()} == {worker[worker.index("--pool") + 1]}


@pytest.mark.integration
def test_a_served_deployment_run_completes(beauty_slice: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    overrides = _overrides(beauty_slice, tmp_path)
    with prefect_test_harness(server_startup_timeout=180):
        api = PREFECT_API_URL.value()
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")}
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--config", "configs/tiny.yaml", *overrides],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),
        )
        try:
            with get_client(sync_client=True) as client:
                # The serving process imports torch, transformers, MLflow and Prefect before it
                # registers anything: minutes on a loaded 2-core machine.
                deadline = time.monotonic() + 400
                expected = {"recipe", "retrain", "evaluate-champion"}
                # serve() registers the deployments one by one.
                while {d.name for d in client.read_deployments()} != expected and time.monotonic() < deadline:
                    assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(1)
                names = {d.name for d in client.read_deployments()}
            assert names == expected
            flow_run = run_deployment("recipe/recipe", parameters={"until": "convert"}, timeout=900)
            assert flow_run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            served.terminate()
            served.wait(timeout=60)

    report = json.loads((tmp_path / "artifacts" / "reports" / "latest.json").read_text())
    assert report["until"] == "convert" and "naive conversion" in report["models"]
    # The MLflow recipe run is tagged with the Prefect flow run that made it.
    from mlflow import MlflowClient

    mlflow = MlflowClient(report["tracking"]["tracking_uri"])
    parent = mlflow.get_run(report["tracking"]["parent_run_id"])
    assert parent.data.tags["prefect_flow_run_id"] == str(flow_run.id)
    assert report["registry"]["gr2-ar"]["version"] == "1"
