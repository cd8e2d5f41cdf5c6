"""A tiny dataset with the cases point-in-time joins get wrong: same-day ties and undated rows."""

from __future__ import annotations

import pandas as pd
import pytest

DAY1 = 1_300_060_800  # 2011-03-14 00:00 UTC; review times are whole days.
DAY2 = DAY1 + 30 * 86_400


@pytest.fixture
def interactions() -> pd.DataFrame:
    rows = [
        # a: three reviews on one day, then one a month later.
        ("a", "i1", DAY1, 0),
        ("a", "i2", DAY1, 1),
        ("a", "i3", DAY1, 2),
        ("a", "i4", DAY2, 3),
        ("b", "i2", DAY1, 0),
        ("b", "i1", DAY2, 1),
        # c: no review times at all (event times count from the Unix epoch).
        ("c", "i3", None, 0),
        ("c", "i1", None, 1),
        # d: one review time missing between two known ones (it takes the previous one).
        ("d", "i4", DAY1, 0),
        ("d", "i2", None, 1),
        ("d", "i3", DAY2, 2),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"])
    return frame.astype({"timestamp": "Int64", "position": "int64"})


@pytest.fixture
def items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4", "i5"],
            "title": ["Nail polish", "Lip balm", "Shampoo", "Brush", "Never reviewed"],
            "brand": ["OPI", None, "Acme", "Acme", "Acme"],
            "categories": [["Makeup", "Nails"], ["Skin Care"], ["Hair Care"], ["Tools"], []],
            "description": [""] * 5,
        }
    )


@pytest.fixture
def sids(items: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": items["item_id"],
            "codes": [[k, 2 * k] for k in range(len(items))],
            "sid": [f"<s_a_{k}><s_b_{2 * k}>" for k in range(len(items))],
        }
    )
