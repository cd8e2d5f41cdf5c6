"""Drift of what the service sees against the data its champion was trained on.

Each request, served or refused, is reduced to a few columns: history length, the share of its
item ids the catalogue does not know, how popular its history and candidates are (log of
training-split interactions), the top-level category its history mostly comes from, and whether
the answer fell back to the pre-rank order. The reference is the same columns over the dataset
version's gate (valid) examples, with the fallback share the champion was promoted with.
evidently tests each column (K-S, chi-square or Z-test by type and size) and counts the drifted
ones; a share of drifted columns at or above ``monitoring.drift_share`` is drift that acts: the
``check-drift`` flow (``flows/retrain.py``) then triggers the retrain deployment.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.splits import training_interactions

NUMERICAL_COLUMNS = ("history_length", "unknown_item_rate", "history_popularity", "candidate_popularity")
CATEGORICAL_COLUMNS = ("history_category", "fallback")
DRIFT_COLUMNS = NUMERICAL_COLUMNS + CATEGORICAL_COLUMNS
# The category of a request whose history holds no known, categorised item.
NO_CATEGORY = "(none)"


@dataclass(frozen=True)
class ItemStats:
    """What the drift columns need to know about the catalogue of one dataset version."""

    popularity: Mapping[str, int]  # item id -> interactions in the training split
    category: Mapping[str, str]  # item id -> top-level category (items without one left out)

    @classmethod
    def from_dataset(cls, interactions: pd.DataFrame, items: pd.DataFrame) -> ItemStats:
        counts = training_interactions(interactions)["item_id"].astype(str).value_counts()
        popularity = {item: int(counts.get(item, 0)) for item in items["item_id"].astype(str)}
        category = {str(item): path[0] for item, path in zip(items["item_id"], items["categories"]) if len(path)}
        return cls(popularity, category)


def _mean_log_popularity(item_ids: Iterable[str], stats: ItemStats) -> float:
    known = [math.log1p(stats.popularity[i]) for i in item_ids if i in stats.popularity]
    return float(np.mean(known)) if known else math.nan


def request_columns(history: Sequence[str] | None, candidates: Sequence[str], stats: ItemStats) -> dict[str, Any]:
    """One request's drift columns (``fallback`` is filled by the caller).

    ``history`` None: the service refused the request before it resolved the user's history, so
    its length and popularity are unknown (NaN), not zero.
    """
    ids = set(candidates) | set(history or ())
    unknown = sum(i not in stats.popularity for i in ids)
    categories = Counter(stats.category[i] for i in history or () if i in stats.category)
    return {
        "history_length": math.nan if history is None else float(len(history)),
        "unknown_item_rate": unknown / len(ids) if ids else 0.0,
        "history_popularity": math.nan if history is None else _mean_log_popularity(history, stats),
        "candidate_popularity": _mean_log_popularity(candidates, stats),
        # The most frequent category, ties broken by name so the column does not depend on order.
        "history_category": min(categories, key=lambda c: (-categories[c], c)) if categories else NO_CATEGORY,
    }


def reference_frame(examples: pd.DataFrame, stats: ItemStats, fallback_rate: float) -> pd.DataFrame:
    """The drift columns of ``examples`` (rows with ``history`` and ``candidates``).

    The examples have no served answers, so ``fallback`` carries the rate the champion was
    promoted with: that share of rows is 1 (the tests compare distributions, not rows).
    """
    frame = pd.DataFrame([request_columns(list(h), list(c), stats) for h, c in zip(examples["history"], examples["candidates"])])
    frame["fallback"] = (np.arange(len(frame)) < round(fallback_rate * len(frame))).astype(int)
    return frame


def traffic_frame(records: Sequence[Mapping[str, Any]], stats: ItemStats) -> pd.DataFrame:
    """The drift columns of the service's recorded requests (``components/serving/traffic.py``):
    ``fallback`` is 1 for the pre-rank order, NaN for a refused request (it got no answer)."""
    rows = []
    for record in records:
        row = request_columns(record["history"], record["candidates"], stats)
        row["fallback"] = math.nan if record["fallback"] is None else int(record["fallback"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))


@dataclass(frozen=True)
class DriftReport:
    columns: dict[str, dict[str, Any]]  # column -> method, p-value (or score), threshold, drifted
    drifted_share: float
    drifted: bool
    html: str  # evidently's report, for the MLflow run

    def summary(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "drifted_share": self.drifted_share, "columns": self.columns}


def compare(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float) -> DriftReport:
    """Test each drift column of ``current`` against ``reference`` with evidently.

    Args:
        drift_share: the share of drifted columns at or above which the whole is drifted.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=list(NUMERICAL_COLUMNS), categorical_columns=list(CATEGORICAL_COLUMNS))
    datasets = [Dataset.from_pandas(frame[list(DRIFT_COLUMNS)], data_definition=definition) for frame in (current, reference)]
    snapshot = Report([ValueDrift(column=column) for column in DRIFT_COLUMNS]).run(*datasets)
    columns = {}
    for column, result in zip(DRIFT_COLUMNS, snapshot.dict()["metrics"]):
        config = result["config"]
        method, threshold, value = config.get("method") or "", float(config.get("threshold") or 0.05), float(result["value"])
        # evidently's statistical tests report a p-value (drift below the threshold); its
        # distance measures report a score (drift above it).
        drifted = value < threshold if "p_value" in method else value >= threshold
        columns[column] = {"method": method, "value": value, "threshold": threshold, "drifted": drifted}
    share = sum(c["drifted"] for c in columns.values()) / len(columns)
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "drift.html"
        snapshot.save_html(str(page))
        html = page.read_text()
    return DriftReport(columns, share, share >= drift_share, html)
