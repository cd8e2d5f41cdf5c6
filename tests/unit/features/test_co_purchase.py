"""Co-purchase evidence: counted on the training split only, a training target's own share left
out, the same numbers from the feature-store text as from the counts, and the prompt's line."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from components.data.splits import training_interactions
from feature_repo.co_purchase import candidate_co_purchases, co_purchase_neighbors, decode_neighbors, encode_neighbors

# Three users; each one's last two items are their valid and test targets, never counted.
SEQUENCES = {"u1": ["a", "b", "c", "x", "y"], "u2": ["a", "b", "d", "x2", "y2"], "u3": ["b", "c", "a", "x3", "y3"]}


def interactions() -> pd.DataFrame:
    rows = [(user, item, position) for user, items in SEQUENCES.items() for position, item in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "position"])


def test_counts_cover_the_training_split_only() -> None:
    train = training_interactions(interactions())
    assert set(train["item_id"]) == {"a", "b", "c", "d"}  # no valid or test target
    neighbors = co_purchase_neighbors(train)
    assert neighbors["a"] == Counter({"b": 3, "c": 2, "d": 1})
    assert neighbors["d"] == Counter({"a": 1, "b": 1})
    # Symmetric: users who bought both, whichever came first.
    assert all(neighbors[i][j] == neighbors[j][i] for i in neighbors for j in neighbors[i])


def test_feature_store_text_round_trips_most_first() -> None:
    neighbors = co_purchase_neighbors(training_interactions(interactions()))
    text = encode_neighbors(neighbors["a"])
    assert text == "b:3 c:2 d:1"
    assert decode_neighbors(text) == dict(neighbors["a"])
    assert decode_neighbors(None) == {} and decode_neighbors("") == {}
    with pytest.raises(ValueError, match="item:count"):
        decode_neighbors("b:3 c")


def test_a_training_target_leaves_out_its_own_users_share() -> None:
    neighbors = co_purchase_neighbors(training_interactions(interactions()))
    # u1's training example with target c after history [a, b]: u1 itself bought a+c and b+c.
    assert candidate_co_purchases(["a", "b"], ["c", "d"], neighbors) == [2 + 2, 1 + 1]
    assert candidate_co_purchases(["a", "b"], ["c", "d"], neighbors, own_target="c") == [1 + 1, 1 + 1]
    # Repeated history items count once; a candidate never co-purchases with itself.
    assert candidate_co_purchases(["a", "a", "b"], ["a", "zz"], neighbors) == [3, 0]


def test_the_trace_teacher_counts_the_same_evidence() -> None:
    """The analyst's co-purchase evidence (what its traces cite) equals the prompt's count."""
    from components.traces.analyst import AnalystStats

    from tests.unit.prompts.fakes import fake_catalog

    rows = interactions()
    stats = AnalystStats.fit(training_interactions(rows), fake_catalog())
    neighbors = co_purchase_neighbors(training_interactions(rows))
    for history, candidate, user in ((["a", "b"], "c", "u1"), (["a", "b"], "d", "u1"), (["b"], "a", "u3")):
        own = candidate if candidate in set(SEQUENCES[user][:-2]) else None
        assert candidate_co_purchases(history, [candidate], neighbors, own_target=own) == [
            sum(stats.co_purchases(h, candidate, user) for h in dict.fromkeys(history))
        ]
