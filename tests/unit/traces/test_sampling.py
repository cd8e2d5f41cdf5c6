from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from components.config import PromptConfig, TracesConfig
from components.traces import AnalystTeacher, InvalidProposal, Proposal, generate_traces


class ScriptedTeacher:
    """Puts the target first on try ``succeed_on[user]`` (never when 0), a wrong item first before;
    the try before a success is an invalid answer, to show it counts as a try."""

    def __init__(self, succeed_on: dict[str, int]) -> None:
        self.succeed_on = succeed_on
        self.calls: Counter[str] = Counter()

    def propose(self, example, catalog, rng, target) -> Proposal:
        user = example["user_id"]
        self.calls[user] += 1
        candidates, goal = list(example["candidates"]), example["target"]
        if self.calls[user] == self.succeed_on[user]:
            return Proposal("found it", [goal, *(c for c in candidates if c != goal)])
        if self.calls[user] == self.succeed_on[user] - 1:
            raise InvalidProposal("garbled")
        return Proposal("wrong", [*(c for c in candidates if c != goal), goal])


class CoinTeacher:
    """Puts the target first with probability ``p`` per try, drawn from the example's rng."""

    def __init__(self, p: float) -> None:
        self.p = p

    def propose(self, example, catalog, rng, target) -> Proposal:
        ranking = list(example["candidates"])
        first = example["target"] if rng.random() < self.p else next(c for c in ranking if c != example["target"])
        ranking.remove(first)
        return Proposal("coin", [first, *ranking])


def stub_examples(count: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(count)],
            "split": "train",
            "target": "b",
            "history": [["x"]] * count,
            "candidates": [["a", "b", "c"]] * count,
        }
    )


def test_rejection_keeps_only_target_first_and_counts_drops(catalog):
    examples = stub_examples(10)
    # Users 0..9 succeed on tries 1, 2, 3, 4, 0 (never), 1, 2, ...; with 3 tries 4 and 0 drop.
    teacher = ScriptedTeacher({f"u{k}": [1, 2, 3, 4, 0][k % 5] for k in range(10)})
    accepted, stats = generate_traces(examples, teacher, catalog, TracesConfig(max_tries=3))
    assert stats == {"examples": 10, "dropped": 4, "acceptance_rate": 0.6, "mean_tries": 2.0, "proposals": 24}
    assert (accepted["ranking"].str[0] == accepted["target"]).all()
    assert accepted["tries"].tolist() == [1, 2, 3, 1, 2, 3]
    assert set(accepted["reasoning"]) == {"found it"}
    assert list(accepted.columns) == [*examples.columns, "reasoning", "ranking", "tries"]


def test_acceptance_rate_matches_a_known_success_probability(catalog):
    _, stats = generate_traces(stub_examples(3000), CoinTeacher(0.3), catalog, TracesConfig(max_tries=4))
    assert stats["acceptance_rate"] == pytest.approx(1 - 0.7**4, abs=0.025)
    assert stats["dropped"] == 3000 - round(stats["acceptance_rate"] * 3000)


def test_no_examples_gives_empty_frame_and_zero_rates(catalog):
    accepted, stats = generate_traces(stub_examples(0), CoinTeacher(0.5), catalog, TracesConfig())
    assert accepted.empty and stats["acceptance_rate"] == 0.0 and stats["mean_tries"] == 0.0


def test_analyst_rejection_sampling_is_deterministic_for_a_seed(examples, stats, catalog):
    cfg = TracesConfig(max_tries=4, seed=7)
    teacher = AnalystTeacher.from_config(stats, cfg, PromptConfig())
    first, first_stats = generate_traces(examples, teacher, catalog, cfg)
    again, again_stats = generate_traces(examples, teacher, catalog, cfg)
    pd.testing.assert_frame_equal(first, again)
    assert first_stats == again_stats
    assert 0 < first_stats["acceptance_rate"] < 1
    assert (first["ranking"].str[0] == first["target"]).all()
    # A subset sees the same random streams per example, so it keeps the same traces.
    subset, _ = generate_traces(examples.iloc[::2], teacher, catalog, cfg)
    pd.testing.assert_frame_equal(subset.reset_index(drop=True), first[first["user_id"].isin(subset["user_id"])].reset_index(drop=True))
    other, _ = generate_traces(examples, teacher, catalog, cfg.model_copy(update={"seed": 8}))
    assert not other["reasoning"].equals(first["reasoning"]) or not other["ranking"].equals(first["ranking"])


def test_targeted_mode_always_accepts_in_one_try(examples, stats, catalog):
    cfg = TracesConfig(mode="targeted")
    accepted, result = generate_traces(examples, AnalystTeacher.from_config(stats, cfg, PromptConfig()), catalog, cfg)
    assert result["acceptance_rate"] == 1.0 and result["dropped"] == 0 and result["mean_tries"] == 1.0
    assert (accepted["ranking"].str[0] == accepted["target"]).all()
    for row in accepted.itertuples():
        assert f"I rank {catalog.sid(row.target)} first" in row.reasoning


def test_targeted_mode_asks_once(catalog):
    teacher = ScriptedTeacher({"u0": 2})
    _, result = generate_traces(stub_examples(1), teacher, catalog, TracesConfig(mode="targeted", max_tries=4))
    assert teacher.calls["u0"] == 1 and result["dropped"] == 1


def test_a_non_permutation_is_a_failed_try(catalog):
    class Duplicating:
        def propose(self, example, catalog, rng, target) -> Proposal:
            return Proposal("dup", [example["target"]] * len(example["candidates"]))

    _, result = generate_traces(stub_examples(2), Duplicating(), catalog, TracesConfig(max_tries=2))
    assert result["dropped"] == 2 and result["proposals"] == 4
