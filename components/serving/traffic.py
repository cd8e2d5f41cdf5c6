"""The service's recent requests, kept for the drift check (``components/evaluation/drift.py``).

A bounded window of what each request asked for (history and candidate item ids; no user id) and
how it ended: answered by the model, answered with the pre-rank order, or refused for item ids the
feature store does not know. The ``check-drift`` flow reads it from ``GET /traffic``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any


class TrafficLog:
    """The last ``window`` requests, safe to record from several threads."""

    def __init__(self, window: int) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.recorded = 0  # since start, including those the window has dropped

    def record(self, history: Sequence[str] | None, candidates: Sequence[str], fallback: bool | None) -> None:
        """One request. ``history`` None: refused before the user's history was read;
        ``fallback`` None: refused (no answer), else whether the answer was the pre-rank order."""
        record = {"time": time.time(), "history": None if history is None else list(history), "candidates": list(candidates), "fallback": fallback}
        with self._lock:
            self._records.append(record)
            self.recorded += 1

    def snapshot(self) -> dict[str, Any]:
        """The window as ``GET /traffic`` returns it, oldest first."""
        with self._lock:
            return {"window": self._records.maxlen, "recorded": self.recorded, "requests": list(self._records)}
