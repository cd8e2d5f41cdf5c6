"""The service's traffic log keeps the newest requests in a bounded window, from many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from components.serving.traffic import TrafficLog


def test_the_window_keeps_the_newest_requests_and_counts_all() -> None:
    log = TrafficLog(window=50)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: log.record([str(k)], ["c"], fallback=None if k % 2 else False), range(400)))
    page = log.snapshot()
    assert page["recorded"] == 400 and len(page["requests"]) == 50
    assert all(set(r) == {"time", "history", "candidates", "fallback"} for r in page["requests"])
    times = [r["time"] for r in page["requests"]]
    assert times == sorted(times)
