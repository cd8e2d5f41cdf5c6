"""Event times: a strictly increasing timestamp per interaction within a user.

Amazon review times are exact only to the day, and most users have several reviews on one day.
Point-in-time joins (Feast) need an order that never ties, so an interaction's event time is its
day timestamp plus ``position`` seconds (positions stay far below 86,400, so the day never
changes). An interaction without a timestamp takes the previous known timestamp of that user (or,
before the first known one, the first known one), so event times still follow positions; a user
with no timestamp at all counts from the Unix epoch. This is a choice, documented here, not a fact
of the data.
"""

from __future__ import annotations

import pandas as pd


def event_seconds(interactions: pd.DataFrame) -> pd.Series:
    """Event time of each interaction row as integer Unix seconds (columns user_id, timestamp, position)."""
    ordered = interactions.sort_values(["user_id", "position"], kind="stable")
    known = ordered["timestamp"].astype("Float64")
    by_user = known.groupby(ordered["user_id"], sort=False)
    filled = by_user.ffill().fillna(by_user.bfill()).fillna(0).astype("int64")
    return (filled + ordered["position"].astype("int64")).reindex(interactions.index)


def event_times(interactions: pd.DataFrame) -> pd.Series:
    """The same event times as UTC datetimes."""
    return pd.to_datetime(event_seconds(interactions), unit="s", utc=True)
