"""Co-purchase evidence: how many other shoppers bought a candidate together with the history's items.

Counted on the training split only (``splits.training_interactions``), so no valid or test target
is ever part of a count. The counts reach the prompt through the feature store: each item's
neighbours are one text feature (``encode_neighbors``), read point-in-time for training examples
and online for a served request, and turned into one number per candidate by
``candidate_co_purchases`` in both places.

A training example's target is itself a training interaction, so its own user co-bought it with
every history item; that share is left out (``own_target``), as the trace teacher leaves it out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pandas as pd


def co_purchase_neighbors(train_interactions: pd.DataFrame) -> dict[str, Counter[str]]:
    """item -> item -> number of users who bought both (each user's distinct items count once).

    Args:
        train_interactions: user_id, item_id of the training split.
    """
    neighbors: dict[str, Counter[str]] = {}
    for items in train_interactions.groupby("user_id", sort=False)["item_id"]:
        distinct = set(items[1].tolist())
        for item in distinct:
            neighbors.setdefault(item, Counter()).update(distinct - {item})
    return neighbors


def encode_neighbors(counts: Mapping[str, int]) -> str:
    """``"item_b:12 item_c:3"``, most co-purchases first (ties by item id): one feature-store string."""
    return " ".join(f"{item}:{n}" for item, n in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def decode_neighbors(text: str | None) -> dict[str, int]:
    """The inverse of ``encode_neighbors``; None or "" (an item nobody co-bought) is empty.

    Raises:
        ValueError: an entry that is not ``item:count``.
    """
    neighbors: dict[str, int] = {}
    for entry in (text or "").split():
        item, sep, count = entry.rpartition(":")
        if not sep or not item or not count.isdigit():
            raise ValueError(f"malformed co-purchase entry {entry!r} (expected item:count)")
        neighbors[item] = int(count)
    return neighbors


def candidate_co_purchases(
    history: Sequence[str],
    candidates: Sequence[str],
    neighbors: Mapping[str, Mapping[str, int]],
    own_target: str | None = None,
) -> list[int]:
    """Per candidate: co-purchases with the history summed over its distinct items.

    Args:
        history: item ids the user bought before this example.
        candidates: the candidate item ids, in prompt order.
        neighbors: ``co_purchase_neighbors`` (or decoded features) of at least the candidates.
        own_target: a training example's target: its user's own co-purchase with each history
            item is in the counts, and is subtracted (None for valid, test and served requests,
            whose targets are not training interactions).

    Returns:
        One count per candidate, in order.
    """
    distinct = [h for h in dict.fromkeys(history)]
    counts = []
    for candidate in candidates:
        row = neighbors.get(candidate, {})
        total = sum(row.get(h, 0) for h in distinct if h != candidate)
        if candidate == own_target:
            total -= sum(1 for h in distinct if h != candidate and row.get(h, 0) > 0)
        counts.append(total)
    return counts
