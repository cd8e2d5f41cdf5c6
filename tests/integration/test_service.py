"""The re-ranking service over HTTP: a real ``bentoml serve`` of a Bento built by the packaging step.

Once per module: a tiny catalog in a materialized Feast store, a random tiny student and its AR
teacher registered in MLflow (the student as ``diffusion-gr2@champion`` with the teacher in its
lineage), ``python -m flows.package`` importing both into a BentoML model store and
building the Bento, and ``bentoml serve`` of that Bento on 127.0.0.1 with an API key. Untrained
models never write a valid answer, so every ranking is the fallback.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import schemathesis

from components.config import load_config
from flows.package import PackagingError, package_service
from components.tracking.registry import register
from components.tracking.runs import RecipeRuns, client
from components.training.diffusion import DIFFUSION_RL_STAGE
from components.training.teacher import RL_STAGE
from tests.servers import served_bento
from tests.conftest import REPO_ROOT
from tests.unit.serving.tiny_service import HISTORIES, ITEM_IDS, build_store
from tests.unit.tiny_lm import publish_checkpoint

pytestmark = pytest.mark.integration

RERANK_PATH = "/rerank"
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CANDIDATES = ITEM_IDS[4:14]


def _register_models(overrides: list[str], root: Path) -> None:
    cfg = load_config(None, overrides)
    runs = RecipeRuns.start(cfg, "service test", {"dataset_version": "tiny"})
    versions = {}
    for name, stage, block_size, parent in (("gr2-ar", RL_STAGE, None, "base"), ("diffusion-gr2", DIFFUSION_RL_STAGE, 4, "gr2-ar/1")):
        checkpoint = publish_checkpoint(str(root / "artifacts" / stage.name / name), cfg.storage.work_dir, block_size=block_size)
        run_id = runs.log_stage(name, stage, {"outputs": {"model_uri": checkpoint}, "metrics": {}, "seconds": 1.0})
        versions[name] = register(cfg, name, checkpoint, run_id, stage.name, "tiny", parent)
    client(cfg).set_registered_model_alias("diffusion-gr2", "champion", versions["diffusion-gr2"].version)


def _register_student(overrides: list[str], root: Path, label: str, parent: str = "gr2-ar/1", alias: str = "") -> str:
    """Register another tiny diffusion-gr2 version with the given lineage; returns its number."""
    cfg = load_config(None, overrides)
    runs = RecipeRuns.start(cfg, f"service test {label}", {"dataset_version": "tiny"})
    checkpoint = publish_checkpoint(str(root / "artifacts" / label), cfg.storage.work_dir, block_size=4)
    run_id = runs.log_stage(label, DIFFUSION_RL_STAGE, {"outputs": {"model_uri": checkpoint}, "metrics": {}, "seconds": 1.0})
    version = register(cfg, "diffusion-gr2", checkpoint, run_id, DIFFUSION_RL_STAGE.name, "tiny", parent)
    if alias:
        client(cfg).set_registered_model_alias("diffusion-gr2", alias, version.version)
    return str(version.version)


@dataclass(frozen=True)
class Packaged:
    root: Path
    env: dict[str, str]
    overrides: list[str]
    args: list[str]  # the packaging command line
    tags: dict[str, str]


def _package(args: list[str], env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    root = tmp_path_factory.mktemp("service")
    overrides = [
        f"storage.artifact_root={root / 'artifacts'}",
        f"storage.work_dir={root / 'work'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "evaluation.max_new_tokens=8",
        "serving.max_batch_wait_ms=50",
        # Every champion request is decoded by the challenger too (shadow traffic).
        "serving.shadow_fraction=1.0",
    ]
    store_dir = build_store(load_config(None, overrides), root / "feast")
    _register_models(overrides, root)
    _register_student(overrides, root, "challenger", alias="challenger")
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    sets = [arg for override in overrides for arg in ("--set", override)]
    args = [sys.executable, "-m", "flows.package", *sets, "--feature-store", str(store_dir)]
    tags = _package(args, env)
    assert tags["student"] == "diffusion-gr2/1" and tags["teacher"] == "gr2-ar/1" and tags["bento_tag"]
    assert tags["shadow"] == "diffusion-gr2/2"
    # A later packaging (the challenger's own) puts a newer bundle in the store; the champion's
    # Bento must still serve its own (the tests below check the version that answers).
    newer = _package([*args, "--alias", "challenger", "--no-build"], env)
    assert newer["shadow"] is None  # a challenger is never its own shadow
    assert newer["student"] == "diffusion-gr2/2" and newer["model_tag"] != tags["model_tag"]
    return Packaged(root, env, overrides, args, tags)


@pytest.fixture(scope="module")
def server(packaged: Packaged) -> Iterator[str]:
    with served_bento(packaged.tags["bento_tag"], {**packaged.env, "DGR2_API_KEY": API_KEY}, packaged.root) as served:
        yield served.url


def _rerank(url: str, payload: object, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{url}/rerank", json=payload, headers=headers, timeout=120)


def test_probes(server: str) -> None:
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{server}{probe}").status_code == 200


def test_good_request_by_user_falls_back_with_an_untrained_model(server: str) -> None:
    response = _rerank(server, {"user_id": "u0", "candidates": CANDIDATES, "return_reasoning": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["ranking"] == CANDIDATES
    assert (answer["valid"], answer["fallback"], answer["fallback_reason"], answer["reasoning"]) == (False, True, "invalid_answer", None)
    # Version 1 is the champion this Bento was built with, though a newer bundle is in the store.
    assert answer["model"] == {"name": "diffusion-gr2", "version": "1", "alias": "champion"}
    assert re.fullmatch(r"[0-9a-f]{16}", answer["request_id"])
    assert answer["decode"]["forward_passes"] >= 1 and 1 <= answer["decode"]["output_tokens"] <= 8 and answer["decode"]["ms"] > 0


def test_explicit_history_with_the_ar_decoder(server: str) -> None:
    response = _rerank(server, {"history": HISTORIES["u1"], "candidates": CANDIDATES, "decoder": "ar"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["ranking"] == CANDIDATES and answer["fallback"] and "reasoning" not in answer
    assert answer["model"] == {"name": "gr2-ar", "version": "1", "alias": None}


def test_speculative_decoder_answers_as_the_ar_teacher(server: str) -> None:
    payload = {"history": HISTORIES["u1"], "candidates": CANDIDATES, "return_reasoning": True}
    ar, speculative = (_rerank(server, payload | {"decoder": decoder}) for decoder in ("ar", "speculative"))
    assert speculative.status_code == 200, speculative.text
    assert speculative.json()["ranking"] == ar.json()["ranking"]
    assert speculative.json()["model"] == ar.json()["model"] == {"name": "gr2-ar", "version": "1", "alias": None}
    assert speculative.json()["decode"]["output_tokens"] == ar.json()["decode"]["output_tokens"]


def test_concurrent_requests_are_decoded_together(server: str) -> None:
    payloads = [{"user_id": f"u{k}", "candidates": CANDIDATES, "threshold": 0.7} for k in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(lambda p: _rerank(server, p), payloads))
    assert [r.status_code for r in responses] == [200] * len(payloads)
    assert max(r.json()["decode"]["batch_size"] for r in responses) > 1


@pytest.mark.parametrize(
    "payload, status, field, detail",
    [
        ({"user_id": "u0", "candidates": [*CANDIDATES[:8], "nope", "gone"]}, 422, "candidates", {"unknown_items": ["nope", "gone"]}),
        ({"user_id": "u0", "candidates": [*CANDIDATES[:9], CANDIDATES[0]]}, 422, "candidates", {"duplicates": [CANDIDATES[0]]}),
        ({"user_id": "u0", "candidates": CANDIDATES[:9]}, 422, "candidates", {}),
        ({"user_id": "u0", "candidates": CANDIDATES, "threshold": 0.1}, 422, "threshold", {}),
        ({"user_id": "stranger", "candidates": CANDIDATES}, 404, "user_id", {}),
        ([1, 2, 3], 422, "body", {}),
    ],
)
def test_bad_input_is_answered_with_the_field_and_why(server: str, payload: object, status: int, field: str, detail: dict) -> None:
    response = _rerank(server, payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and body["reason"] and body["error"].startswith(f"{field}: ")
    assert detail.items() <= body.items()


def test_malformed_json_and_oversized_bodies(server: str) -> None:
    malformed = httpx.post(f"{server}/rerank", content=b'{"user_id": "u0", "candidates": [', headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    assert "not valid JSON" in malformed.json()["reason"]
    oversized = _rerank(server, {"user_id": "u0", "candidates": CANDIDATES, "history": ["p00"] * 20_000})
    assert oversized.status_code == 413 and oversized.json()["field"] == "body"


def test_api_key(server: str) -> None:
    payload = {"user_id": "u0", "candidates": CANDIDATES}
    missing = _rerank(server, payload, headers={})
    wrong = _rerank(server, payload, headers={"X-API-Key": "guess"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["field"] == "authorization" and "missing" in missing.json()["reason"]
    assert "wrong" in wrong.json()["reason"]


def test_the_worker_survives_bad_input_and_metrics_count_it(server: str) -> None:
    assert _rerank(server, {"user_id": "u2", "candidates": ["p99", *CANDIDATES[1:]]}).status_code == 422
    assert _rerank(server, {"user_id": "u2", "candidates": CANDIDATES}, headers={"X-API-Key": API_KEY}).status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    # The gauge carries a pid label too (BentoML's multiprocess metrics).
    assert re.search(r'dgr2_rerank_fallback_rate\{decoder="diffusion"[^}]*\} 1\.0', metrics)
    assert 'dgr2_rerank_responses_total{decoder="diffusion",fallback="true"}' in metrics
    assert 'dgr2_rerank_fallbacks_total{decoder="diffusion",reason="invalid_answer"}' in metrics
    assert "dgr2_rerank_forward_passes_bucket" in metrics and "dgr2_rerank_batch_size_bucket" in metrics
    assert 'dgr2_rerank_rejected_total{field="candidates",status="422"}' in metrics
    assert "bentoml_service_request_duration_seconds" in metrics


def test_traffic_records_each_request_and_how_it_ended_behind_the_key(server: str) -> None:
    assert httpx.get(f"{server}/traffic").status_code == 401
    before = httpx.get(f"{server}/traffic", headers=AUTH).json()["recorded"]
    history = HISTORIES["u1"]
    assert _rerank(server, {"history": history, "candidates": CANDIDATES}).status_code == 200
    assert _rerank(server, {"history": [*history, "p99"], "candidates": CANDIDATES}).status_code == 422
    page = httpx.get(f"{server}/traffic", headers=AUTH).json()
    assert page["recorded"] == before + 2
    answered, refused = page["requests"][-2:]
    # The untrained model's answer is the pre-rank order; the refused request got no answer.
    assert (answered["history"], answered["candidates"], answered["fallback"]) == (history, CANDIDATES, True)
    assert (refused["history"], refused["fallback"]) == ([*history, "p99"], None)


def test_the_challenger_shadows_champion_requests_off_the_response_path(server: str) -> None:
    from components.serving.shadow import shadow_summary

    before = shadow_summary(httpx.get(f"{server}/metrics").text).get("diffusion-gr2/2", {}).get("decoded", 0)
    answers = [_rerank(server, {"user_id": f"u{k}", "candidates": CANDIDATES}) for k in range(3)]
    assert all(a.status_code == 200 and a.json()["model"]["version"] == "1" for a in answers)  # the champion answers
    deadline = time.monotonic() + 60
    while (summary := shadow_summary(httpx.get(f"{server}/metrics").text)["diffusion-gr2/2"])["decoded"] < before + 3:
        assert time.monotonic() < deadline, summary
        time.sleep(0.5)
    # Both untrained models answer with the pre-rank order, so the two agree on every request.
    assert summary["error"] == 0 and summary["top1_agreement"] == 1.0 and summary["mean_rank_correlation"] == 1.0
    assert summary["valid_rate"] == 0.0 and summary["mean_decode_ms"] > 0


def test_requests_generated_from_the_openapi_schema_get_no_5xx_and_each_4xx_names_its_field(server: str) -> None:
    """Property-based requests from the service's own OpenAPI schema (schemathesis), every
    operation: whatever the body, no server error, and a refused /rerank says which field and why."""
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert RERANK_PATH in {operation.path for operation in operations}
    answered: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def call(case) -> None:
            response = case.call(base_url=server, headers=AUTH, timeout=120)
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.path, case.body, response.text[:500])
            if case.path == RERANK_PATH and 400 <= response.status_code < 500:
                body = response.json()
                assert body["field"] and body["reason"], (case.body, body)

        call()
    # The generated bodies reached the request checks, not only the transport guard.
    assert any(400 <= status < 500 for status in answered), answered


def test_packaging_again_reuses_the_bundle(packaged: Packaged) -> None:
    again = _package([*packaged.args, "--no-build"], packaged.env)
    assert again["model_tag"] == packaged.tags["model_tag"] and again["bento_tag"] is None


def test_packaging_without_a_version_at_the_alias_says_so(packaged: Packaged) -> None:
    with pytest.raises(PackagingError, match="diffusion-gr2@canary does not exist"):
        package_service(load_config(None, packaged.overrides), alias="canary", build=False)


def test_packaging_a_student_whose_teacher_is_not_registered_fails_loudly(packaged: Packaged) -> None:
    version = _register_student(packaged.overrides, packaged.root, "orphan", parent="gr2-ar/99")
    with pytest.raises(PackagingError, match="names gr2-ar/99, which the registry cannot return"):
        package_service(load_config(None, packaged.overrides), version=version, build=False)



def _outcome(url: str) -> tuple[str, object]:
    """One request's end: its status and whole JSON body, or the transport error that cut it."""
    try:
        response = httpx.post(f"{url}/rerank", json={"user_id": "u1", "candidates": CANDIDATES}, headers=AUTH, timeout=60)
    except httpx.TransportError as error:
        return "transport", type(error).__name__
    return str(response.status_code), response.json()  # raises on a cut body


def test_a_service_killed_under_load_answers_every_request_after_a_restart(packaged: Packaged, tmp_path: Path) -> None:
    """SIGKILL to the whole service while 32 clients send requests: each request that got a response
    got a whole one (an answer or a refusal that names its field, never a 5xx); the rest lost their
    connection. Restarted, the same Bento answers every request."""
    env = {**packaged.env, "DGR2_API_KEY": API_KEY}
    with served_bento(packaged.tags["bento_tag"], env, tmp_path) as served:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            pending = [pool.submit(_outcome, served.url) for _ in range(1000)]
            while sum(future.done() for future in pending) < 5:
                time.sleep(0.01)
            served.kill()
            outcomes = [future.result() for future in pending]
    statuses = {status for status, _ in outcomes}
    assert "200" in statuses and "transport" in statuses, statuses
    for status, body in outcomes:
        assert status == "transport" or int(status) < 500, (status, body)
        if status == "200":
            assert set(CANDIDATES) == set(body["ranking"]) and body["fallback_reason"] is not None
        elif status != "transport":
            assert body["field"] and body["reason"], (status, body)
    with served_bento(packaged.tags["bento_tag"], env, tmp_path) as served:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            after = list(pool.map(lambda _: _outcome(served.url), range(16)))
    assert [status for status, _ in after] == ["200"] * 16


def test_the_bento_serves_from_a_fresh_venv_of_its_own_requirements(packaged: Packaged, tmp_path: Path) -> None:
    """What the Bento lists is all the service needs: a venv made from nothing but the Bento's
    requirements.txt (no project install, no test dependencies) starts the service from the Bento's
    own source and answers through the local feature store."""
    import shutil

    name, version = packaged.tags["bento_tag"].split(":")
    requirements = Path(packaged.env["BENTOML_HOME"]) / "bentos" / name / version / "env" / "python" / "requirements.txt"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "-r", str(requirements)], capture_output=True, text=True, timeout=900
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # Nothing of this checkout on the path: the service must come from the Bento.
    env = {key: value for key, value in packaged.env.items() if key != "PYTHONPATH"} | {"DGR2_API_KEY": API_KEY}
    try:
        with served_bento(packaged.tags["bento_tag"], env, tmp_path, python=str(venv / "bin" / "python")) as served:
            answer = httpx.post(f"{served.url}/rerank", json={"user_id": "u1", "candidates": CANDIDATES}, headers=AUTH, timeout=120)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["ranking"]) == set(CANDIDATES) and answer.json()["model"]["version"] == "1"
    finally:
        shutil.rmtree(venv)
