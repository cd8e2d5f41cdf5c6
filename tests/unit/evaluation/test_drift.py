"""Traffic drift: each request's columns from its ids, the reference from examples, and evidently's
verdict on traffic drawn like the reference (no drift) and on traffic that moved (drift)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.evaluation.drift import DRIFT_COLUMNS, NO_CATEGORY, ItemStats, compare, reference_frame, request_columns, traffic_frame

ITEMS = [f"i{k}" for k in range(40)]


def _stats() -> ItemStats:
    # Item k was bought k times; items i0..i19 are Skin Care, the rest Makeup.
    return ItemStats({item: k for k, item in enumerate(ITEMS)}, {item: "Skin Care" if k < 20 else "Makeup" for k, item in enumerate(ITEMS)})


def test_item_stats_count_the_training_split_only() -> None:
    interactions = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "a", "b"], "position": [0, 1, 2, 3]})
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "categories": [["Nails"], ["Hair Care", "Shampoo"], []]})
    stats = ItemStats.from_dataset(interactions, items)
    # The user's last two interactions are valid and test: only the first two are training.
    assert stats.popularity == {"a": 1, "b": 1, "c": 0}
    assert stats.category == {"a": "Nails", "b": "Hair Care"}


def test_request_columns() -> None:
    columns = request_columns(["i1", "i21", "i22", "new"], ["i3", "i30", "gone"], _stats())
    assert columns["history_length"] == 4
    assert columns["unknown_item_rate"] == pytest.approx(2 / 7)
    assert columns["history_popularity"] == pytest.approx(np.mean([math.log1p(1), math.log1p(21), math.log1p(22)]))
    assert columns["candidate_popularity"] == pytest.approx(np.mean([math.log1p(3), math.log1p(30)]))
    assert columns["history_category"] == "Makeup"
    refused = request_columns(None, ["gone"], _stats())
    assert math.isnan(refused["history_length"]) and refused["unknown_item_rate"] == 1.0 and refused["history_category"] == NO_CATEGORY


def _requests(rng: np.random.Generator, n: int, moved: bool) -> list[tuple[list[str], list[str]]]:
    # The reference's users buy across the catalogue; moved traffic has long histories of the
    # least popular items and candidates the catalogue has never seen.
    out = []
    for _ in range(n):
        if moved:
            history = list(rng.choice(ITEMS[:8], size=int(rng.integers(25, 40))))
            candidates = [f"new{k}" for k in rng.integers(0, 100, size=5)] + list(rng.choice(ITEMS, size=5, replace=False))
        else:
            history = list(rng.choice(ITEMS, size=int(rng.integers(3, 12))))
            candidates = list(rng.choice(ITEMS, size=10, replace=False))
        out.append((history, candidates))
    return out


@pytest.mark.parametrize("moved", [False, True])
def test_evidently_flags_traffic_that_moved_and_not_traffic_like_the_reference(moved: bool) -> None:
    rng = np.random.default_rng(0)
    examples = pd.DataFrame(_requests(rng, 600, moved=False), columns=["history", "candidates"])
    reference = reference_frame(examples, _stats(), fallback_rate=0.02)
    assert list(reference.columns) == list(DRIFT_COLUMNS) and reference["fallback"].sum() == 12
    records = [{"history": h, "candidates": c, "fallback": False} for h, c in _requests(rng, 200, moved)]
    records += [{"history": None, "candidates": ["gone"], "fallback": None}] if moved else []
    report = compare(reference, traffic_frame(records, _stats()), drift_share=0.5)
    assert set(report.columns) == set(DRIFT_COLUMNS) and "<html" in report.html.lower()
    drifted = {column for column, test in report.columns.items() if test["drifted"]}
    if moved:
        assert report.drifted and {"history_length", "unknown_item_rate", "history_popularity"} <= drifted
    else:
        assert not report.drifted and report.drifted_share < 0.5
