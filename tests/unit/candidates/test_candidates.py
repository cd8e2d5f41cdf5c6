import numpy as np
import pandas as pd
import pytest

from components.candidates.build import build_candidate_lists
from components.candidates.prerank import TransitionPreRanker
from components.config import CandidatesConfig
from components.data.splits import leave_one_out_targets


def _interactions(sequences: dict[str, list[str]], start: int = 1_000_000_000) -> pd.DataFrame:
    rows = [
        (user, item, start + 86400 * (position // 2), position)
        for user, items in sequences.items()
        for position, item in enumerate(items)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    return frame


def _chain_dataset(users: int = 200, items: int = 60, length: int = 7, seed: int = 0) -> pd.DataFrame:
    """Users mostly walk item i -> i+1 (mod items), sometimes jump: transitions carry real, noisy signal."""
    rng = np.random.default_rng(seed)
    sequences = {}
    for user in range(users):
        walk = [int(rng.integers(0, items))]
        while len(walk) < length:
            step = walk[-1] + 1 if rng.random() < 0.6 else int(rng.integers(0, items))
            if step % items not in walk:
                walk.append(step % items)
        sequences[f"u{user:03d}"] = [f"i{item:03d}" for item in walk]
    return _interactions(sequences)


def _item_ids(interactions: pd.DataFrame) -> np.ndarray:
    return np.sort(interactions["item_id"].unique().astype(str))


def test_leave_one_out_targets_by_hand():
    interactions = _interactions({"a": ["1", "2", "3", "4", "5"], "b": ["7", "8"]})
    targets = leave_one_out_targets(interactions, train_examples_per_user=2)
    got = list(zip(targets["user_id"], targets["split"], targets["target"], targets["target_position"]))
    assert got == [
        ("a", "train", "2", 1),
        ("a", "train", "3", 2),
        ("a", "valid", "4", 3),
        ("a", "test", "5", 4),
        # b's second-last item sits at position 0: no history, so no valid example.
        ("b", "test", "8", 1),
    ]


def test_transition_probabilities_by_hand():
    sequences = [np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([0, 2])]
    ranker = TransitionPreRanker.fit(sequences, n_items=3)
    # From 0: 0->1 twice, 0->2 once; from 1: 1->2 once, 1->0 once.
    got = ranker.transition(np.array([0, 0, 1, 1, 2]), np.array([1, 2, 2, 0, 0]))
    assert got == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1 / 2, 0.0])
    assert ranker.popularity.tolist() == [4, 2, 2]


@pytest.mark.parametrize("negatives", ["uniform", "popularity", "hard"])
def test_candidate_lists_keep_the_contract(negatives):
    interactions = _chain_dataset()
    cfg = CandidatesConfig(negatives=negatives, test_sample_size=50, train_examples_per_user=2)
    lists = build_candidate_lists(interactions, _item_ids(interactions), cfg)
    seen = interactions.groupby("user_id")["item_id"].agg(set)
    for row in lists.itertuples():
        assert len(row.candidates) == cfg.num_candidates == len(set(row.candidates))
        assert row.candidates[row.target_pre_rank - 1] == row.target
        negatives_of_row = set(row.candidates) - {row.target}
        assert not negatives_of_row & seen[row.user_id], "a negative the user interacted with"
    assert lists["in_test_sample"].sum() == 50
    assert set(lists.loc[lists["in_test_sample"], "split"]) == {"test"}


def test_same_seed_same_lists_other_seed_other_lists():
    interactions = _chain_dataset()
    item_ids = _item_ids(interactions)
    first = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=20))
    again = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=20))
    other = build_candidate_lists(interactions, item_ids, CandidatesConfig(test_sample_size=20, seed=1))
    pd.testing.assert_frame_equal(first, again)
    assert first["candidates"].tolist() != other["candidates"].tolist()


def test_target_is_not_placed_at_a_fixed_slot_and_the_pre_ranker_has_signal():
    interactions = _chain_dataset()
    lists = build_candidate_lists(interactions, _item_ids(interactions), CandidatesConfig())
    ranks = lists["target_pre_rank"]
    # Chains make the next item predictable from other users' walks: mostly first, not always.
    assert 0.5 < (ranks == 1).mean() < 1.0
    assert ranks.nunique() > 3


def test_pre_ranker_never_saw_the_target_interaction():
    """Every user owns a private transition x_u -> y_u (its last two items) seen by no other user.

    A pre-ranker fitted on the user's own data would rank y_u first every time; fitted on the other
    folds it has no transition evidence for y_u, so the target lands first only by chance.
    """
    rng = np.random.default_rng(0)
    shared = [f"s{i:02d}" for i in range(30)]
    sequences = {}
    for user in range(150):
        prefix = list(rng.choice(shared, size=4, replace=False))
        sequences[f"u{user:03d}"] = prefix + [f"x{user:03d}", f"y{user:03d}"]
    interactions = _interactions(sequences)
    lists = build_candidate_lists(interactions, _item_ids(interactions), CandidatesConfig())
    test = lists[lists["split"] == "test"]
    assert (test["target_pre_rank"] == 1).mean() < 0.5


def test_hard_negatives_make_the_task_harder_than_uniform():
    interactions = _chain_dataset()
    item_ids = _item_ids(interactions)
    uniform = build_candidate_lists(interactions, item_ids, CandidatesConfig(negatives="uniform"))
    hard = build_candidate_lists(interactions, item_ids, CandidatesConfig(negatives="hard"))
    assert hard["target_pre_rank"].mean() > uniform["target_pre_rank"].mean()
