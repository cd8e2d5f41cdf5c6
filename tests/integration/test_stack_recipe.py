"""The tiny recipe against the local stack: with the env file `make stack-up` writes, the same
`dgr2` command logs to the stack's MLflow server (artifacts proxied into its S3 bucket), registers
both models there and runs its flow on the stack's Prefect server. No code or config change."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.test_recipe_command import _recipe_overrides
from tests.integration.test_stack import Stack, make_stack  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def test_the_recipe_uses_the_stack(make_stack: Callable[..., Stack], beauty_slice: Path, tmp_path: Path) -> None:
    stack = make_stack()
    urls = stack.up()
    env = {**stack.env, **stack.exports(), "PREFECT_HOME": str(tmp_path / "prefect-client")}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "train-cft", "--config", "configs/tiny.yaml", *_recipe_overrides(beauty_slice, tmp_path), "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["tracking"]["tracking_uri"] == urls["mlflow"]

    # Checkpoints and the registered pyfunc models are objects in the stack's bucket.
    keys = [
        obj["Key"]
        for page in stack.s3.client().get_paginator("list_objects_v2").paginate(Bucket="mlflow", Prefix="artifacts/")
        for obj in page.get("Contents", [])
    ]
    assert sum(key.endswith("/checkpoint/model.safetensors") for key in keys) >= 4  # midtrain, sft, rl, cft at least
    assert sum(key.endswith("/MLmodel") for key in keys) == 2  # gr2-ar and diffusion-gr2

    from mlflow import MlflowClient

    registry = MlflowClient(urls["mlflow"])
    for name in ("gr2-ar", "diffusion-gr2"):
        versions = registry.search_model_versions(f"name = '{name}'")
        # A server answers versions as strings, a database store as ints.
        assert [str(v.version) for v in versions] == [summary["registry"][name]["version"]]
        assert versions[0].tags["model_uri"] == summary["registry"][name]["model_uri"]
    assert str(registry.get_model_version_by_alias("diffusion-gr2", "challenger").version) == summary["registry"]["diffusion-gr2"]["version"]

    request = urllib.request.Request(f"{urls['prefect']}/api/flow_runs/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        flow_runs = json.loads(response.read())
    recipe_runs = [run for run in flow_runs if run["state_type"] == "COMPLETED" and run["parameters"].get("until") == "cft"]
    assert len(recipe_runs) == 1
    assert registry.get_run(summary["tracking"]["parent_run_id"]).data.tags["prefect_flow_run_id"] == recipe_runs[0]["id"]
