"""The BentoML re-ranking service: ``POST /rerank`` over the packaged Diffusion-GR2 model.

BentoML stays at this edge: request checks, prompts, decoding and the fallback live in
``components/serving``. The model comes from the BentoML model store, written there by
``flows.package``: in a built Bento, the bundle the Bento was built with (its ``bento.yaml``).

With ``serving.shadow_fraction`` above 0 and a challenger packaged beside the champion, that share
of the champion's requests is decoded again by the challenger after the answer is sent
(``components/serving/shadow.py``; Prometheus ``dgr2_shadow_*``).

Environment:
    DGR2_BENTO_MODEL  the bundle to build a Bento around, or to serve from the source tree
                      (``dgr2-reranker:<tag>``; default the newest). A built Bento ignores it.
    DGR2_API_KEY      when set, ``/rerank`` needs it as ``Authorization: Bearer <key>`` or ``X-API-Key``;
                      unset, ``/rerank`` answers only on a loopback address (503 on any other).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import bentoml
from starlette.responses import JSONResponse

from components.serving import shadow
from components.serving.batching import MicroBatcher, Overloaded
from components.serving.bundle import bundle_to_serve, load_reranker
from components.serving.engine import Prepared, UnknownItems
from components.serving.request import RequestError, metric_field, parse_json, parse_request
from components.serving.traffic import TrafficLog

BUNDLE_TAG = bundle_to_serve(__file__)
API_KEY_ENV = "DGR2_API_KEY"
RERANK_PATH = "/rerank"
TRAFFIC_PATH = "/traffic"
# BentoML answers a bare 429 (no field, no Retry-After) past this many requests in flight, so the
# service's own queue bound (serving.max_pending, at most 511) sits far below it and answers
# first; a request beyond the queue bound is refused before any work, so in-flight ones are cheap.
MAX_IN_FLIGHT = 512
logger = logging.getLogger("dgr2.service")

RESPONSES = bentoml.metrics.Counter(
    name="dgr2_rerank_responses",
    documentation="Answered re-rank requests, by decoder and whether the pre-rank order replaced the model's output.",
    labelnames=["decoder", "fallback"],
)
FALLBACK_RATE = bentoml.metrics.Gauge(
    name="dgr2_rerank_fallback_rate",
    documentation="Share of answered requests since start that fell back to the pre-rank order.",
    labelnames=["decoder"],
)
REJECTED = bentoml.metrics.Counter(
    name="dgr2_rerank_rejected",
    documentation="Refused re-rank requests, by HTTP status and offending field.",
    labelnames=["status", "field"],
)
FALLBACKS = bentoml.metrics.Counter(
    name="dgr2_rerank_fallbacks",
    documentation="Answers that are the pre-rank order, by decoder and why (invalid_answer, decode_error, deadline).",
    labelnames=["decoder", "reason"],
)
DECODE_ERRORS = bentoml.metrics.Counter(
    name="dgr2_rerank_decode_errors",
    documentation="Decodes that raised; their requests were answered with the pre-rank order.",
    labelnames=["decoder"],
)
FORWARD_PASSES = bentoml.metrics.Histogram(
    name="dgr2_rerank_forward_passes",
    documentation="Model forward passes per request.",
    labelnames=["decoder"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
SHADOW_REQUESTS = bentoml.metrics.Counter(
    name=shadow.REQUESTS,
    documentation="Champion requests picked for shadow decoding by the challenger, by outcome (decoded, dropped, error).",
    labelnames=["challenger", "outcome"],
)
SHADOW_TOP1 = bentoml.metrics.Counter(
    name=shadow.TOP1_AGREEMENTS,
    documentation="Shadow decodes whose top item equals the champion's answer's.",
    labelnames=["challenger"],
)
SHADOW_VALID = bentoml.metrics.Counter(
    name=shadow.VALID_ANSWERS,
    documentation="Shadow decodes whose output was a valid ranking.",
    labelnames=["challenger"],
)
SHADOW_CORRELATION = bentoml.metrics.Histogram(
    name=shadow.RANK_CORRELATION,
    documentation="Spearman correlation of the challenger's and the champion's rankings of a request.",
    labelnames=["challenger"],
    buckets=(-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
)
SHADOW_SECONDS = bentoml.metrics.Histogram(
    name=shadow.DECODE_SECONDS,
    documentation="Wall time of the shadow decode that held a request.",
    labelnames=["challenger"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="dgr2_rerank_batch_size",
    documentation="Requests decoded together.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


@dataclass
class GuardSettings:
    """Limits the transport guard enforces, and the traffic log it answers ``GET /traffic`` from;
    the service sets both from its config when it loads."""

    max_body_bytes: int = 65536
    traffic: TrafficLog = field(default_factory=lambda: TrafficLog(window=1))


GUARD = GuardSettings()


def _reject(error: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    REJECTED.labels(status=str(error.status), field=metric_field(error.field)).inc()
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class RequestGuard:
    """ASGI middleware for ``/rerank``: API key (401), body size (413) and JSON syntax (400).

    These are checked before BentoML parses the body, whose own errors would not name the field.
    It also answers ``GET /traffic`` (the recent requests, for the drift check) behind the same key.
    """

    def __init__(self, app: Any, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = (scope["path"].rstrip("/"), scope["method"]) if scope["type"] == "http" else None
        if route not in ((RERANK_PATH, "POST"), (TRAFFIC_PATH, "GET")):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        if route[0] == TRAFFIC_PATH:
            # What users asked for is theirs: the same key guards it as /rerank.
            error = self._check_key(headers, scope.get("server"))
            response = _reject(error) if error is not None else JSONResponse(self.settings.traffic.snapshot())
            await response(scope, receive, send)
            return
        error = self._check_key(headers, scope.get("server")) or self._check_length(headers)
        if error is None:
            body, error = await self._read_body(receive)
        if error is None:
            try:
                parse_json(body)
            except RequestError as exc:
                error = exc
        if error is not None:
            await _reject(error)(scope, receive, send)
            return
        await self.app(scope, _replay(body), send)

    @staticmethod
    def _check_key(headers: dict[str, str], server: tuple[str, int] | None) -> RequestError | None:
        expected = os.environ.get(API_KEY_ENV)
        if not expected:
            # Fail closed: without a key the service answers only on this machine.
            if server is None or _is_loopback(server[0]):
                return None
            return RequestError(
                503, "authorization", f"the service listens on {server[0]} without {API_KEY_ENV}; set a key to serve beyond loopback"
            )
        bearer = headers.get("authorization", "")
        presented = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key", "")
        if hmac.compare_digest(presented.encode(), expected.encode()):
            return None
        reason = "is missing" if not presented else "is wrong"
        return RequestError(401, "authorization", f"API key {reason}; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")

    def _check_length(self, headers: dict[str, str]) -> RequestError | None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return RequestError(413, "body", f"is {declared} bytes; the limit is {self.settings.max_body_bytes}")
        return None

    async def _read_body(self, receive: Any) -> tuple[bytes, RequestError | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", RequestError(400, "body", "the client disconnected before sending it")
            chunk = message.get("body", b"")
            size += len(chunk)
            # A chunked body declares no length, so count it as it arrives.
            if size > self.settings.max_body_bytes:
                return b"", RequestError(413, "body", f"exceeds the limit of {self.settings.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (the address the request came in on) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other name may resolve beyond this machine
        return False


def _replay(body: bytes) -> Any:
    """An ASGI receive that hands the already-read body to the app once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


@bentoml.service(name="dgr2-reranker", workers=1, traffic={"timeout": 120, "max_concurrency": MAX_IN_FLIGHT})
class ReRanker:
    bundle = bentoml.models.BentoModel(BUNDLE_TAG)

    def __init__(self) -> None:
        self.ready = False
        self.reranker = load_reranker(self.bundle.path)
        cfg = self.reranker.cfg
        GUARD.max_body_bytes = cfg.serving.max_body_bytes
        self.traffic = GUARD.traffic = TrafficLog(cfg.monitoring.traffic_window)
        self.batcher: MicroBatcher[Prepared, dict[str, Any]] = MicroBatcher(
            self._decode_batch, cfg.serving.max_batch_size, cfg.serving.max_batch_wait_ms / 1000, cfg.serving.max_pending
        )
        self.deadline_s = cfg.serving.deadline_ms / 1000
        self.counts: dict[str, list[int]] = {}  # decoder -> [answered, fell back]
        # One decode at a time, live or shadow: a shadow decode never shares the CPU with a live one.
        self.decoding = threading.Lock()
        self.shadow_batcher: MicroBatcher[Prepared, dict[str, Any]] | None = None
        if self.reranker.shadow is not None:
            info = self.reranker.shadow.info
            self.challenger = f"{info.name}/{info.version}"
            self.shadow_batcher = MicroBatcher(
                self._decode_shadow_batch, cfg.serving.max_batch_size, cfg.serving.max_batch_wait_ms / 1000, cfg.serving.shadow_max_pending
            )
            for outcome in shadow.OUTCOMES:  # every series on /metrics from the start, at 0
                SHADOW_REQUESTS.labels(challenger=self.challenger, outcome=outcome)
            SHADOW_TOP1.labels(challenger=self.challenger)
            SHADOW_VALID.labels(challenger=self.challenger)
        self.shadow_sampler = random.Random(cfg.seed)
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.reranker.warm_up()
        self.ready = True
        logger.info("serving %s (%s)", self.bundle.tag, ", ".join(f"{d}: {m.info.name}/{m.info.version}" for d, m in self.reranker.models.items()))

    def __is_ready__(self) -> bool:
        return self.ready

    def _decode_batch(self, key: Any, batch: list[Prepared]) -> list[dict[str, Any]]:
        BATCH_SIZE.observe(len(batch))
        try:
            with self.decoding:
                return self.reranker.decode(key, batch)
        except Exception:  # noqa: BLE001 - the service never answers without a ranking
            # Logged once per batch with its request ids; the clients see only the fallback reason.
            logger.exception("decode failed for requests %s; answering with the pre-rank order", ", ".join(p.request_id for p in batch))
            DECODE_ERRORS.labels(decoder=key[0]).inc(len(batch))
            return [self.reranker.fallback_answer(p, "decode_error") for p in batch]

    def _decode_shadow_batch(self, key: Any, batch: list[Prepared]) -> list[dict[str, Any]]:
        # Live requests first: start only when none waits. One that arrives during a shadow decode
        # waits for it, at most one shadow batch.
        while self.batcher.pending:
            time.sleep(0.005)
        with self.decoding:
            return self.reranker.decode_shadow(batch)

    def _start_shadow(self, prepared: Prepared, response: dict[str, Any]) -> None:
        """Decode this champion request with the challenger too, after the answer has gone."""
        if self.shadow_batcher is None or prepared.request.decoder != "diffusion":
            return
        if response["fallback_reason"] in ("deadline", "decode_error"):  # a service short of time sheds the extra work
            return
        if self.shadow_sampler.random() >= self.reranker.cfg.serving.shadow_fraction:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(prepared, response["ranking"]))
        self.shadow_tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, prepared: Prepared, champion_ranking: list[str]) -> None:
        assert self.shadow_batcher is not None
        try:
            answer = await self.shadow_batcher.submit(("shadow", None), prepared)
        except Overloaded:
            SHADOW_REQUESTS.labels(challenger=self.challenger, outcome="dropped").inc()
            return
        except Exception:  # noqa: BLE001 - the client has its answer; the failure is counted and logged
            logger.exception("shadow decode failed for request %s", prepared.request_id)
            SHADOW_REQUESTS.labels(challenger=self.challenger, outcome="error").inc()
            return
        comparison = shadow.compare(champion_ranking, answer["ranking"])
        SHADOW_REQUESTS.labels(challenger=self.challenger, outcome="decoded").inc()
        if comparison["top1_agrees"]:
            SHADOW_TOP1.labels(challenger=self.challenger).inc()
        if answer["valid"]:
            SHADOW_VALID.labels(challenger=self.challenger).inc()
        SHADOW_CORRELATION.labels(challenger=self.challenger).observe(comparison["rank_correlation"])
        SHADOW_SECONDS.labels(challenger=self.challenger).observe(answer["decode"]["ms"] / 1000)

    def _count(self, decoder: str, response: dict[str, Any]) -> None:
        answered, fell_back = self.counts.setdefault(decoder, [0, 0])
        self.counts[decoder] = [answered + 1, fell_back + int(response["fallback"])]
        RESPONSES.labels(decoder=decoder, fallback=str(response["fallback"]).lower()).inc()
        if response["fallback"]:
            FALLBACKS.labels(decoder=decoder, reason=response["fallback_reason"]).inc()
        FALLBACK_RATE.labels(decoder=decoder).set(self.counts[decoder][1] / self.counts[decoder][0])
        FORWARD_PASSES.labels(decoder=decoder).observe(response["decode"]["forward_passes"])

    # The body arrives as one JSON object (positional-only: BentoML then passes the whole body);
    # RequestGuard has already checked its size and syntax.
    @bentoml.api(route=RERANK_PATH)
    async def rerank(self, body: Any, /) -> dict[str, Any]:
        """Re-rank candidates for a user.

        Body: ``{"user_id": str}`` or ``{"history": [item_id, ...]}``, ``"candidates": [item_id, ...]``
        in pre-rank order (the trained list size), optional ``"decoder": "diffusion" | "ar" | "speculative"``,
        ``"threshold"`` (tau, diffusion only) and ``"return_reasoning"``. Answer: ``ranking``
        (item ids; the pre-rank order with ``fallback: true`` when there is no usable model
        output), ``valid``, ``fallback``, ``fallback_reason`` (``invalid_answer``, ``decode_error``
        or ``deadline``; None otherwise), ``model``, ``decode`` and ``request_id`` (as logged).
        Errors name the ``field`` and the ``reason``; a full queue answers 429 with ``Retry-After``.
        """
        request_id = uuid.uuid4().hex[:16]
        try:
            request = parse_request(body, self.reranker.cfg, self.reranker.allowed_sizes)
            self.batcher.admit()
            # Feature-store reads block; keep them off the event loop that accepts requests.
            prepared = replace(await anyio.to_thread.run_sync(self.reranker.prepare, request), request_id=request_id)
            response = await self.batcher.submit(self.reranker.batch_key(prepared), prepared, self.deadline_s)
        except UnknownItems as error:
            self.traffic.record(error.history, request.candidates, None)
            return _reject(error)
        except RequestError as error:
            return _reject(error)
        except Overloaded as error:
            return _reject(RequestError(429, "queue", f"the service is at capacity: {error}"), {"Retry-After": "1"})
        except TimeoutError:
            response = self.reranker.fallback_answer(prepared, "deadline")
        self._count(request.decoder, response)
        self.traffic.record(prepared.history, request.candidates, response["fallback"])
        self._start_shadow(prepared, response)
        return response | {"request_id": request_id}


ReRanker.add_asgi_middleware(RequestGuard, settings=GUARD)
