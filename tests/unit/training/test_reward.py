"""The re-ranking reward on hand-built answers with N = 10 candidates."""

from __future__ import annotations

import json

import pytest

from components.config import RlConfig
from components.training.reward import RewardBreakdown, rerank_reward

CANDIDATES = [f"<a_{i}><b_{i}><c_{i}>" for i in range(10)]  # pre-rank order, best first
CFG = RlConfig()  # alpha = 0.2, invalid reward -1
N = 10
ALPHA = 0.2


def _answer(ranking: list[str], reasoning: str | None = "history points to skincare") -> str:
    payload: dict[str, object] = {"ranking": ranking}
    if reasoning is not None:
        payload["reasoning"] = reasoning
    return json.dumps(payload)


def _move(target: str, new_rank: int) -> list[str]:
    """The pre-rank order with the target moved to 1-based ``new_rank``."""
    rest = [sid for sid in CANDIDATES if sid != target]
    return rest[: new_rank - 1] + [target] + rest[new_rank - 1 :]


def test_improvement_earns_rank_and_format_reward() -> None:
    target = CANDIDATES[3]  # pre-rank 4
    result = rerank_reward(_answer(_move(target, 1)), CANDIDATES, target, CFG)
    assert result.pre_rank == 4 and result.new_rank == 1
    assert result.rank_reward == pytest.approx((4 - 1) / N)
    assert result.format_reward == 1.0
    assert result.reward == pytest.approx(0.3 + ALPHA)
    assert result.valid and not result.copied_pre_rank


def test_keeping_the_target_first_earns_the_format_reward() -> None:
    target = CANDIDATES[0]
    result = rerank_reward(_answer(_move(target, 1)), CANDIDATES, target, CFG)
    assert (result.pre_rank, result.new_rank) == (1, 1)
    assert result.rank_reward == 0.0
    assert result.reward == pytest.approx(ALPHA)
    # The pre-rank order itself; it is rewarded here because it is the right answer.
    assert result.copied_pre_rank


def test_copying_the_pre_rank_order_earns_nothing() -> None:
    target = CANDIDATES[3]
    result = rerank_reward(_answer(list(CANDIDATES)), CANDIDATES, target, CFG)
    assert (result.pre_rank, result.new_rank) == (4, 4)
    assert result.rank_reward == 0.0
    assert result.format_reward == 1.0  # the format is fine, but the condition withholds it
    assert result.reward == 0.0
    assert result.copied_pre_rank


def test_same_rank_with_a_reshuffled_list_is_not_a_copy() -> None:
    target = CANDIDATES[3]
    ranking = [CANDIDATES[1], CANDIDATES[0], *CANDIDATES[2:]]  # target still 4th
    result = rerank_reward(_answer(ranking), CANDIDATES, target, CFG)
    assert result.reward == 0.0
    assert not result.copied_pre_rank


def test_a_worse_rank_is_penalised_without_format_reward() -> None:
    target = CANDIDATES[1]  # pre-rank 2
    result = rerank_reward(_answer(_move(target, 5)), CANDIDATES, target, CFG)
    assert (result.pre_rank, result.new_rank) == (2, 5)
    assert result.reward == pytest.approx((2 - 5) / N)
    assert result.reward == pytest.approx(-0.3)


def test_losing_first_place_gets_no_format_reward() -> None:
    target = CANDIDATES[0]
    result = rerank_reward(_answer(_move(target, 2)), CANDIDATES, target, CFG)
    assert result.reward == pytest.approx(-0.1)


@pytest.mark.parametrize(
    "text",
    [
        _answer([CANDIDATES[0], *CANDIDATES[:9]]),  # duplicate SID (and an omission)
        _answer(CANDIDATES[:9]),  # wrong length
        'ranking: ["<a_0><b_0><c_0>"]',  # unparseable
    ],
    ids=["duplicate", "wrong_length", "unparseable"],
)
def test_an_invalid_answer_gets_the_invalid_reward_only(text: str) -> None:
    result = rerank_reward(text, CANDIDATES, CANDIDATES[3], CFG)
    assert result == RewardBreakdown(
        reward=-1.0,
        rank_reward=0.0,
        format_reward=0.0,
        valid=False,
        new_rank=None,
        pre_rank=4,
        copied_pre_rank=False,
    )


def test_invalid_reward_follows_the_config() -> None:
    result = rerank_reward("not json", CANDIDATES, CANDIDATES[0], RlConfig(invalid_reward=-2.0))
    assert result.reward == -2.0


@pytest.mark.parametrize("reasoning", [None, "", "   "])
def test_a_valid_answer_without_reasoning_gets_no_format_reward(reasoning: str | None) -> None:
    target = CANDIDATES[3]
    result = rerank_reward(_answer(_move(target, 1), reasoning), CANDIDATES, target, CFG)
    assert result.valid
    assert result.format_reward == 0.0
    assert result.reward == pytest.approx(0.3)


def test_format_weight_follows_the_config() -> None:
    target = CANDIDATES[3]
    cfg = RlConfig(format_weight=0.5)
    result = rerank_reward(_answer(_move(target, 1)), CANDIDATES, target, cfg)
    assert result.reward == pytest.approx(0.3 + 0.5)


def test_a_target_outside_the_candidates_is_rejected() -> None:
    with pytest.raises(ValueError, match="not one of the candidates"):
        rerank_reward(_answer(list(CANDIDATES)), CANDIDATES, "<a_99><b_99><c_99>", CFG)
