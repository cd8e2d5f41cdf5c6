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
20%, all 4xx. Only a loopback URL is accepted: this is a load generator.
Writes benchmarks/results/serve_load.md with the command, machine and date.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "serve_load.md"
CONCURRENCY = (1, 8, 32)
DECODERS = ("diffusion", "ar", "speculative")


def _post(url: str, body: bytes, timeout: float = 300.0) -> tuple[int, float]:
    """(HTTP status, seconds) of one POST /rerank."""
    request = urllib.request.Request(f"{url}/rerank", data=body, method="POST", headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    return status, time.perf_counter() - started


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
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else latencies * 99
    return {
        "requests": len(results),
        "errors": sum(status != 200 for status, _ in results),
        "p50": quantiles[49] if quantiles else float("nan"),
        "p95": quantiles[94] if quantiles else float("nan"),
        "p99": quantiles[98] if quantiles else float("nan"),
        "rps": len(results) / wall if wall else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--examples", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=48, help="requests per decoder and concurrency")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="time limit per decoder and concurrency")
    parser.add_argument("--mixed", type=int, default=100, help="requests in the mixed stream (every fifth bad)")
    args = parser.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"--url must be a loopback address, got {args.url}")
    path = args.examples or max((REPO_ROOT / ".dgr2" / "artifacts" / "examples").glob("*/examples.parquet"), key=lambda p: p.stat().st_mtime, default=None)
    if path is None or not path.is_file():
        sys.exit("no examples parquet: run `make run` (or pass --examples)")
    examples = pd.read_parquet(path)
    examples = examples[examples["split"] == "test"].sample(n=max(args.requests, args.mixed), random_state=0)

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

    lines = [
        "# Re-ranking service under load",
        "",
        f"- command: `python benchmarks/serve_load.py --url {args.url} --requests {args.requests} --max-seconds {args.max_seconds:g} --mixed {args.mixed}`",
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
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
