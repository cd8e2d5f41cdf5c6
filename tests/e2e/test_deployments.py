"""The lifecycle deployments: served by ``python -m flows.serve`` against a real Prefect API server,
triggered through that API, run to completion on the tiny profile; and ``deploy/prefect.yaml``
declares the same deployments the laptop scheduler serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tests.servers import served_bento
from tests.conftest import REPO_ROOT
from tests.e2e.test_recipe_command import _recipe_overrides


def _send_drifted_traffic(url: str, beauty_slice: Path) -> None:
    """Requests unlike the slice's users: full histories of its rarest items, and candidate lists
    that name items the catalogue never had (refused, and recorded as such)."""
    counts = pd.read_csv(beauty_slice / "interactions.tsv.gz", sep="\t")["item_id"].astype(str).value_counts(ascending=True)
    rarest = counts.index.tolist()
    answered = [{"history": rarest[k : k + 20], "candidates": rarest[k + 20 : k + 30]} for k in range(40)]
    refused = [{"history": rarest[k : k + 20], "candidates": [*rarest[k + 20 : k + 25], *(f"unseen-{k}-{j}" for j in range(5))]} for k in range(80)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda body: httpx.post(f"{url}/rerank", json=body, timeout=300).status_code, answered + refused))
    assert statuses == [200] * len(answered) + [422] * len(refused)


def _wait_for_flow_run(flow_run_id: str, timeout_s: float) -> object:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while not (run := client.read_flow_run(flow_run_id)).state.is_final():
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.state.name} after {timeout_s} s"
            time.sleep(2)
    return run


def test_prefect_yaml_declares_the_served_deployments() -> None:
    from flows.serve import DRIFT_CRON, EVALUATE_CRON, RETRAIN_CRON, deployments

    declared = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "deploy" / "prefect.yaml").read_text())["deployments"]}
    served = {d.name: d for d in deployments("configs/tiny.yaml", [])}
    assert set(declared) == set(served) == {"recipe", "retrain", "evaluate-champion", "check-drift"}
    for name, deployment in declared.items():
        path, function = deployment["entrypoint"].split(":")
        module = __import__(path.removesuffix(".py").replace("/", "."), fromlist=[function])
        assert getattr(module, function).name == served[name].flow_name
        assert set(deployment["parameters"]) <= set(getattr(module, function).parameters.properties)
    assert [s["cron"] for s in declared["retrain"]["schedules"]] == [RETRAIN_CRON]
    assert [s["cron"] for s in declared["evaluate-champion"]["schedules"]] == [EVALUATE_CRON]
    assert [s["cron"] for s in declared["check-drift"]["schedules"]] == [DRIFT_CRON]
    assert "schedules" not in declared["recipe"]
    # The worker in the scaled-out stack serves the pool the deployments name.
    compose = yaml.safe_load((REPO_ROOT / "infra" / "compose.yaml").read_text())
    worker = next(s["command"] for s in compose["services"].values() if s.get("command", [])[:3] == ["prefect", "worker", "start"])
    assert {d["work_pool"]["name"] for d in declared.values()} == {worker[worker.index("--pool") + 1]}


@pytest.mark.integration
def test_served_deployments_train_evaluate_and_retrain_through_the_gates(beauty_slice: Path, tmp_path: Path) -> None:
    """The four deployments, served and triggered through a real Prefect API: the recipe makes a
    champion; evaluate-champion re-scores it and flags a drop past monitoring.max_metric_drop; the
    served champion sees drifted traffic, check-drift triggers retrain, and that retrain's worse
    model is refused by the gates and the champion stays."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # The slice's briefly trained student cannot pass the tiny profile's gates, so the served
    # deployments relax the validity and floor gates: the first student becomes the champion.
    served_overrides = [*_recipe_overrides(beauty_slice, tmp_path), "--set", "promotion.min_valid_rate=0", "--set", "promotion.require_beats_floor=false"]
    parameters = [arg for arg in served_overrides if arg != "--set"]
    with prefect_test_harness(server_startup_timeout=180):
        api = PREFECT_API_URL.value()
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")}
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--config", "configs/tiny.yaml", *served_overrides],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),
        )
        log = lambda: (tmp_path / "serve.log").read_text()[-3000:]  # noqa: E731 - the failure message
        try:
            with get_client(sync_client=True) as client:
                # The serving process imports torch, transformers, MLflow and Prefect before it
                # registers anything: minutes on a loaded 2-core machine.
                deadline = time.monotonic() + 400
                expected = {"recipe", "retrain", "evaluate-champion", "check-drift"}
                # serve() registers the deployments one by one.
                while {d.name for d in client.read_deployments()} != expected and time.monotonic() < deadline:
                    assert served.poll() is None, log()
                    time.sleep(1)
                names = {d.name for d in client.read_deployments()}
            assert names == expected
            recipe_run = run_deployment("recipe/recipe", timeout=900)
            assert recipe_run.state.is_completed(), log()

            report = json.loads((tmp_path / "artifacts" / "reports" / "latest.json").read_text())
            mlflow = MlflowClient(report["tracking"]["tracking_uri"])
            # The MLflow recipe run is tagged with the Prefect flow run that made it.
            assert mlflow.get_run(report["tracking"]["parent_run_id"]).data.tags["prefect_flow_run_id"] == str(recipe_run.id)
            champion = mlflow.get_model_version_by_alias("diffusion-gr2", "champion")
            assert str(champion.version) == report["registry"]["diffusion-gr2"]["version"] == "1"

            # Say the champion was promoted with a Recall@1 0.5 above what it scores now: the
            # scheduled evaluation must flag that drop.
            promoted = json.loads(champion.tags["promotion.metrics"])
            promoted["challenger"]["recall_at_1"] += 0.5
            mlflow.set_model_version_tag("diffusion-gr2", "1", "promotion.metrics", json.dumps(promoted))
            evaluation_run = run_deployment("evaluate-champion/evaluate-champion", timeout=600)
            assert evaluation_run.state.is_completed(), log()
            evaluation = json.loads(mlflow.get_model_version("diffusion-gr2", "1").tags["last_evaluation"])
            assert evaluation["flagged"] is True and set(evaluation["dropped"]) == {"recall_at_1"}
            assert evaluation["dropped"]["recall_at_1"] == pytest.approx(-0.5)
            assert evaluation["metrics"]["examples"] == 30  # the gate's valid sample

            # The champion served as `make serve` serves it sees traffic unlike its data: the
            # check-drift deployment finds the drift and triggers the retrain deployment with its
            # own parameters. That retrain's student learned nothing useful (CFT at a rate that
            # scrambles the weights) and meets the tiny profile's validity gate: registered,
            # refused, champion kept.
            bentoml_env = {**env, "BENTOML_HOME": str(tmp_path / "bentoml")}
            packaged = subprocess.run(
                [sys.executable, "-m", "flows.package", "--config", "configs/tiny.yaml", *served_overrides],
                cwd=REPO_ROOT, env=bentoml_env, capture_output=True, text=True, timeout=600,
            )
            assert packaged.returncode == 0, packaged.stderr[-3000:]
            bento_tag = json.loads(packaged.stdout.strip().splitlines()[-1])["bento_tag"]
            worse = [*parameters, "cft.learning_rate=0.5", "promotion.min_valid_rate=0.95"]
            (tmp_path / "bento").mkdir()
            with served_bento(bento_tag, bentoml_env, tmp_path / "bento") as served_champion:
                _send_drifted_traffic(served_champion.url, beauty_slice)
                drift_run = run_deployment(
                    "check-drift/check-drift", parameters={"overrides": [*worse, f"monitoring.service_url={served_champion.url}"]}, timeout=600
                )
            assert drift_run.state.is_completed(), log()
            check = json.loads(mlflow.get_model_version("diffusion-gr2", "1").tags["last_drift_check"])
            assert check["requests"] == 120 and check["drifted"] is True, check
            drifted = {column for column, test in check["columns"].items() if test["drifted"]}
            assert {"history_length", "unknown_item_rate", "history_popularity"} <= drifted, check
            retrain_run = _wait_for_flow_run(check["retrain_flow_run_id"], 900)
            assert retrain_run.state.is_completed(), log()
        finally:
            served.terminate()
            served.wait(timeout=60)

    retrained = mlflow.get_model_version("diffusion-gr2", "2")
    assert retrained.tags["promotion.decision"] == "rejected" and retrained.tags["promotion.compared_with"] == "1"
    assert str(mlflow.get_model_version_by_alias("diffusion-gr2", "champion").version) == "1"
