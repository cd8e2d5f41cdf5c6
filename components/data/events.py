"""Event times: a strictly increasing timestamp per interaction within a user.

Amazon review times are exact only to the day, and most users have several reviews on one day.
Point-in-time joins (Feast) need an order that never ties, so an interaction's event time is its
day timestamp plus ``position`` seconds (positions stay far below 86,400, so the day never
changes). Interactions without a timestamp get the Unix epoch plus ``position`` seconds: still
deterministic and ordered, documented here because it is a choice, not a fact of the data.
"""

from __future__ import annotations

import pandas as pd


def event_times(interactions: pd.DataFrame) -> pd.Series:
    """UTC event time of each interaction row (columns ``timestamp`` (nullable) and ``position``)."""
    seconds = interactions["timestamp"].astype("Int64").fillna(0).astype("int64") + interactions["position"].astype("int64")
    return pd.to_datetime(seconds, unit="s", utc=True)


def event_seconds(interactions: pd.DataFrame) -> pd.Series:
    """The same event times as integer Unix seconds."""
    return interactions["timestamp"].astype("Int64").fillna(0).astype("int64") + interactions["position"].astype("int64")
