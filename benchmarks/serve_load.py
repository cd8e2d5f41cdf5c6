"""Load on the re-ranking service: latency percentiles and throughput per decoder and concurrency,
and a mixed stream in which a known share of the requests is bad.

    make serve &                              # or DGR2_SERVE_ALIAS=challenger make serve &
    python benchmarks/serve_load.py [--url http://127.0.0.1:3000] [--examples PATH]

Requests are real test users with their pre-ranked candidates (``--examples``: an examples
parquet of the data flow; by default the newest under ``.dgr2/artifacts/examples``). For each
decoder (diffusion, ar, speculative) and concurrency (1, 8, 32) it sends ``--requests`` requests, or stops after
``--max-seconds``, and reports p50/p95/p99 latency, requests/s and errors. The mixed stream sends
``--mixed`` requests of which every fifth is bad (an unknown item, a duplicate candidate, a short
list, a threshold out of range, malformed JSON, in turn): the error rate must be exactly those
20%, all 4xx. The overload phase sends ``--overload-requests`` diffusion requests from
``--overload`` clients at once, far above what the service decodes: it must shed the excess with
429 and ``Retry-After`` (``serving.max_pending``), answer no 5xx, and keep the answered requests'
p99 bounded. Only a loopback URL is accepted: this is a load generator.
Appends a section to benchmarks/results/serve_load.md with the command, machine, date, commit and
``--label`` (which champion was served, on which host).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_run import REPO_ROOT, append_record, current_commit  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "serve_load.md"
CONCURRENCY = (1, 8, 32)
DECODERS = ("diffusion", "ar", "speculative")


def _exchange(url: str, body: bytes, timeout: float = 300.0) -> tuple[int, float, dict, str | None]:
    """(HTTP status, seconds, JSON body, Retry-After) of one POST /rerank."""
    request = urllib.request.Request(f"{url}/rerank", data=body, method="POST", headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        payload, status, headers = error.read(), error.code, error.headers
    seconds = time.perf_counter() - started
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = {}
    return status, seconds, parsed if isinstance(parsed, dict) else {}, headers.get("Retry-After")


def _post(url: str, body: bytes) -> tuple[int, float]:
    """(HTTP status, seconds) of one POST /rerank."""
    status, seconds, _, _ = _exchange(url, body)
    return status, seconds


def _quantile(values: list[float], q: int) -> float:
    """The q-th percentile (nan for none)."""
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else values[0]


def _overload(url: str, bodies: list[bytes], clients: int) -> dict:
    """Every body at once from ``clients`` threads: what was answered, shed and how fast."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda body: _exchange(url, body), bodies))
    wall = time.perf_counter() - started
    answered = sorted(seconds for status, seconds, _, _ in results if status == 200)
    shed = [(payload, retry) for status, _, payload, retry in results if status == 429]
    reasons: dict[str, int] = {}
    for status, _, payload, _ in results:
        if status == 200 and payload.get("fallback"):
            reasons[payload["fallback_reason"]] = reasons.get(payload["fallback_reason"], 0) + 1
    return {
        "requests": len(results),
        "answered": len(answered),
        "shed": len(shed),
        "shed_with_retry_after": sum(retry is not None and payload.get("field") == "queue" for payload, retry in shed),
        "server_errors": sum(status >= 500 for status, _, _, _ in results),
        "other": sum(status not in (200, 429) and status < 500 for status, _, _, _ in results),
        "fallbacks": reasons,
        "p50": _quantile(answered, 50),
        "p99": _quantile(answered, 99),
        "max": answered[-1] if answered else float("nan"),
        "answered_per_s": len(answered) / wall if wall else 0.0,
    }


def _requests(examples: pd.DataFrame, decoder: str) -> list[bytes]:
    return [
        json.dumps({"user_id": str(row.user_id), "candidates": [str(c) for c in row.candidates], "decoder": decoder}).encode()
        for row in examples.itertuples(index=False)
    ]


def _bad(body: dict, kind: int) -> bytes:
    """The kind-th sort of bad request, made from a good one."""
    candidates = body["candidates"]
    if kind == 0:
        return json.dumps(body | {"candidates": ["no-such-item", *candidates[1:]]}).encode()
    if kind == 1:
        return json.dumps(body | {"candidates": [candidates[0], *candidates[:-1]]}).encode()
    if kind == 2:
        return json.dumps(body | {"candidates": candidates[:-1]}).encode()
    if kind == 3:
        return json.dumps(body | {"threshold": 7.5}).encode()
    return b'{"user_id": "1", "candidates": ['


def _cell(url: str, bodies: list[bytes], concurrency: int, max_seconds: float) -> dict:
    deadline = time.perf_counter() + max_seconds
    results: list[tuple[int, float]] = []

    def send(body: bytes) -> tuple[int, float] | None:
        return _post(url, body) if time.perf_counter() < deadline else None

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(send, bodies) if r is not None]
    wall = time.perf_counter() - started
    latencies = sorted(seconds for status, seconds in results if status == 200)
    return {
        "requests": len(results),
        "errors": sum(status != 200 for status, _ in results),
        "p50": _quantile(latencies, 50),
        "p95": _quantile(latencies, 95),
        "p99": _quantile(latencies, 99),
        "rps": len(results) / wall if wall else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--examples", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=48, help="requests per decoder and concurrency")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="time limit per decoder and concurrency")
    parser.add_argument("--mixed", type=int, default=100, help="requests in the mixed stream (every fifth bad)")
    parser.add_argument("--overload", type=int, default=128, help="clients at once in the overload phase")
    parser.add_argument("--overload-requests", type=int, default=512, help="requests in the overload phase")
    parser.add_argument("--label", default="", help="what the section measures, e.g. which champion on which host")
    args = parser.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"--url must be a loopback address, got {args.url}")
    path = args.examples or max((REPO_ROOT / ".dgr2" / "artifacts" / "examples").glob("*/examples.parquet"), key=lambda p: p.stat().st_mtime, default=None)
    if path is None or not path.is_file():
        sys.exit("no examples parquet: run `make run` (or pass --examples)")
    examples = pd.read_parquet(path)
    examples = examples[examples["split"] == "test"]
    examples = examples.sample(n=min(len(examples), max(args.requests, args.mixed, args.overload_requests)), random_state=0)

    rows = []
    for decoder in DECODERS:
        bodies = _requests(examples.head(args.requests), decoder)
        _post(args.url, bodies[0])  # warm-up, not timed
        for concurrency in CONCURRENCY:
            cell = _cell(args.url, bodies, concurrency, args.max_seconds)
            rows.append({"decoder": decoder, "concurrency": concurrency} | cell)
            print(rows[-1], file=sys.stderr)

    good = [json.loads(body) for body in _requests(examples.head(args.mixed), "diffusion")]
    mixed = [_bad(body, (i // 5) % 5) if i % 5 == 4 else json.dumps(body).encode() for i, body in enumerate(good)]
    with ThreadPoolExecutor(8) as pool:
        statuses = [status for status, _ in pool.map(lambda body: _post(args.url, body), mixed)]
    bad_expected = sum(i % 5 == 4 for i in range(len(mixed)))
    errors = [s for s in statuses if s != 200]
    overload = _overload(args.url, _requests(examples.head(args.overload_requests), "diffusion"), args.overload)
    print(overload, file=sys.stderr)

    lines = [
        f"## {args.label or 'serve_load'}: {datetime.now(timezone.utc):%Y-%m-%d}, commit {current_commit()}",
        "",
        f"- command: `python benchmarks/serve_load.py --url {args.url} --requests {args.requests} --max-seconds {args.max_seconds:g} "
        f"--mixed {args.mixed} --overload {args.overload} --overload-requests {args.overload_requests}`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d}; machine: {platform.machine()}, {platform.processor() or 'cpu'}; examples: `{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}`",
        "",
        "| decoder | concurrency | requests | errors | p50 s | p95 s | p99 s | requests/s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['decoder']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['rps']:.2f} |"
            for r in rows
        ),
        "",
        f"Mixed stream: {len(mixed)} requests, {bad_expected} bad; {len(errors)} answered with an error"
        f" ({len(errors) / len(mixed):.0%}), {sum(400 <= s < 500 for s in errors)} of them 4xx.",
        "",
        f"Overload: {overload['requests']} diffusion requests from {args.overload} clients at once. "
        f"{overload['answered']} answered ({overload['answered_per_s']:.2f}/s; fallbacks by reason: {overload['fallbacks'] or 'none'}), "
        f"{overload['shed']} shed with 429 ({overload['shed_with_retry_after']} of them naming the queue with Retry-After), "
        f"{overload['server_errors']} 5xx, {overload['other']} other. Answered latency: p50 {overload['p50']:.3f} s, "
        f"p99 {overload['p99']:.3f} s, max {overload['max']:.3f} s.",
    ]
    append_record(RESULTS, "# Re-ranking service under load\n", "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
