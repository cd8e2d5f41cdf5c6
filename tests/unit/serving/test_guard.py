"""RequestGuard, the service's ASGI middleware, in process: API key, body size (declared or
streamed) and JSON syntax are refused before the body reaches BentoML; other paths pass through."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deploy.service import API_KEY_ENV, GuardSettings, RequestGuard


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


@pytest.fixture
def client() -> TestClient:
    app = Starlette(routes=[Route("/rerank", _echo, methods=["POST"]), Route("/other", _echo, methods=["POST"])])
    return TestClient(RequestGuard(app, GuardSettings(max_body_bytes=1024)), base_url="http://127.0.0.1")


def test_a_good_body_reaches_the_app_whole(client: TestClient) -> None:
    response = client.post("/rerank", content=b'{"user_id": "u1"}')
    assert response.status_code == 200 and response.json() == {"received": 17}


def test_malformed_json_and_oversized_bodies_are_refused(client: TestClient) -> None:
    malformed = client.post("/rerank", content=b"{nope")
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    declared = client.post("/rerank", content=b"[" + b"1," * 600 + b"1]")
    assert declared.status_code == 413 and "limit is 1024" in declared.json()["reason"]

    def chunks():  # no Content-Length: the guard counts what arrives
        for _ in range(10):
            yield b" " * 200

    streamed = client.post("/rerank", content=chunks())
    assert streamed.status_code == 413 and "exceeds the limit" in streamed.json()["reason"]
    # Only /rerank is guarded.
    assert client.post("/other", content=b"{nope").status_code == 200


def test_api_key_when_configured(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    assert client.post("/rerank", content=b"{}").status_code == 401
    assert client.post("/rerank", content=b"{}", headers={"Authorization": "Bearer wrong"}).json()["reason"].startswith("API key is wrong")
    assert client.post("/rerank", content=b"{}", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/rerank", content=b"{}", headers={"X-API-Key": "s3cret"}).status_code == 200


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "reranker.internal"])
def test_without_a_key_the_service_answers_only_on_loopback(client: TestClient, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert client.post("/rerank", content=b"{}").status_code == 200  # 127.0.0.1
    assert client.post("http://localhost/rerank", content=b"{}").status_code == 200
    refused = client.post(f"http://{host}/rerank", content=b"{}")
    assert refused.status_code == 503 and refused.json()["field"] == "authorization"
    assert f"listens on {host} without {API_KEY_ENV}" in refused.json()["reason"]
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    assert client.post(f"http://{host}/rerank", content=b"{}", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_traffic_is_answered_by_the_guard_behind_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.serving.traffic import TrafficLog

    traffic = TrafficLog(window=2)
    app = Starlette(routes=[Route("/rerank", _echo, methods=["POST"])])
    client = TestClient(RequestGuard(app, GuardSettings(traffic=traffic)), base_url="http://127.0.0.1")
    for k in range(3):
        traffic.record([f"h{k}"], ["c1", "c2"], fallback=k == 1)
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    assert client.get("/traffic").status_code == 401
    page = client.get("/traffic", headers={"X-API-Key": "s3cret"}).json()
    # The window keeps the newest requests; the count covers every one.
    assert page["window"] == 2 and page["recorded"] == 3
    assert [(r["history"], r["fallback"]) for r in page["requests"]] == [(["h1"], True), (["h2"], False)]
    monkeypatch.delenv(API_KEY_ENV)
    assert client.get("http://10.0.0.5/traffic").status_code == 503  # no key: loopback only


def test_the_services_queue_bound_answers_before_bentomls() -> None:
    from pydantic import ValidationError

    from components.config import ServingConfig
    from deploy.service import MAX_IN_FLIGHT

    assert ServingConfig().max_pending < MAX_IN_FLIGHT
    with pytest.raises(ValidationError, match="max_pending"):
        ServingConfig(max_pending=MAX_IN_FLIGHT)
