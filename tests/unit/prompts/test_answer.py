from __future__ import annotations

import json

import pytest

from components.prompts import (
    DUPLICATE,
    OMISSION,
    OUT_OF_SET,
    UNPARSEABLE,
    WRONG_LENGTH,
    ParsedAnswer,
    parse_answer,
    ranking_or_fallback,
    render_answer,
)
from components.semantic_ids.format import sid_string

SIDS = [sid_string([k, k % 3, 7, 0]) for k in range(10)]
STRANGER = sid_string([99, 0, 7, 0])  # well-formed, but not one of this query's candidates


def answer(ranking: object, reasoning: object = "because") -> str:
    return json.dumps({"reasoning": reasoning, "ranking": ranking})


def test_valid_permutation() -> None:
    ranking = SIDS[::-1]
    parsed = parse_answer(answer(ranking), SIDS)
    assert parsed == ParsedAnswer(valid=True, ranking=ranking, reasoning="because", failures=())
    assert parsed.primary_failure is None


@pytest.mark.parametrize(
    "text",
    [
        f"  \n{answer(SIDS)}\n",
        f"{answer(SIDS)}<|im_end|>",
        f"{answer(SIDS)} <|im_end|><|endoftext|>\n",
    ],
)
def test_tolerates_whitespace_and_end_markers(text: str) -> None:
    assert parse_answer(text, SIDS).valid


@pytest.mark.parametrize(
    ("text", "failures"),
    [
        ("not json at all", (UNPARSEABLE,)),
        (f"Here you go: {answer(SIDS)}", (UNPARSEABLE,)),  # no repair: prose around the JSON
        (answer(SIDS)[:-2], (UNPARSEABLE,)),  # truncated
        (json.dumps(SIDS), (UNPARSEABLE,)),  # a list, not an object
        (json.dumps({"reasoning": "r"}), (UNPARSEABLE,)),  # no ranking
        (answer(", ".join(SIDS)), (UNPARSEABLE,)),  # ranking is a string
        (answer([*SIDS[:9], 3]), (UNPARSEABLE,)),  # a non-string entry
        (answer(SIDS[:9]), (WRONG_LENGTH, OMISSION)),
        (answer([*SIDS, SIDS[0]]), (WRONG_LENGTH, DUPLICATE)),
        (answer([*SIDS[:9], STRANGER]), (OUT_OF_SET, OMISSION)),
        (answer([*SIDS[:9], "<s_a_9><s_b_0>"]), (OUT_OF_SET, OMISSION)),  # malformed (truncated) SID
        (answer([*SIDS[:9], "item 9"]), (OUT_OF_SET, OMISSION)),
        (answer([*SIDS[:9], SIDS[0]]), (DUPLICATE, OMISSION)),
        (answer([*SIDS[:8], STRANGER, STRANGER]), (OUT_OF_SET, DUPLICATE, OMISSION)),
        (answer([*SIDS[:9], STRANGER, SIDS[0]]), (WRONG_LENGTH, OUT_OF_SET, DUPLICATE, OMISSION)),
    ],
)
def test_failure_classes(text: str, failures: tuple[str, ...]) -> None:
    parsed = parse_answer(text, SIDS)
    assert not parsed.valid
    assert parsed.failures == failures
    assert parsed.primary_failure == failures[0]
    assert (parsed.ranking is None) == (failures == (UNPARSEABLE,))


def test_invalid_answer_keeps_its_ranking_and_reasoning() -> None:
    ranking = [*SIDS[:9], SIDS[0]]
    parsed = parse_answer(answer(ranking, reasoning="dup"), SIDS)
    assert parsed.ranking == ranking and parsed.reasoning == "dup"


def test_reasoning_is_none_when_absent_or_not_text() -> None:
    assert parse_answer(json.dumps({"ranking": SIDS}), SIDS).reasoning is None
    assert parse_answer(answer(SIDS, reasoning=["a"]), SIDS).reasoning is None


def test_candidates_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        parse_answer(answer(SIDS), [*SIDS[:9], SIDS[0]])


def test_valid_answer_ranking_is_used() -> None:
    ranking = SIDS[2:] + SIDS[:2]
    used, fell_back = ranking_or_fallback(parse_answer(render_answer("r", ranking), SIDS), SIDS)
    assert used == ranking and not fell_back


@pytest.mark.parametrize("text", ["{}", answer(SIDS[:9]), answer([*SIDS[:9], SIDS[0]])])
def test_invalid_answer_falls_back_to_pre_rank_order(text: str) -> None:
    used, fell_back = ranking_or_fallback(parse_answer(text, SIDS), SIDS)
    assert used == SIDS and fell_back


def test_positions_name_candidates_in_prompt_order() -> None:
    parsed = parse_answer(answer([3, 1, 2, *range(4, 11)]), SIDS)
    assert parsed.valid
    assert parsed.ranking == [SIDS[2], SIDS[0], SIDS[1], *SIDS[3:]]


@pytest.mark.parametrize(
    ("positions", "failures"),
    [
        ([*range(1, 10), 11], (OUT_OF_SET, OMISSION)),  # past the last candidate
        ([0, *range(2, 11)], (OUT_OF_SET, OMISSION)),  # positions count from 1
        ([*range(1, 10), 1], (DUPLICATE, OMISSION)),
        (list(range(1, 10)), (WRONG_LENGTH, OMISSION)),
        ([*range(1, 10), True], (UNPARSEABLE,)),  # JSON true is not a position
        ([*range(1, 10), 10.0], (UNPARSEABLE,)),
        ([*range(1, 10), "10"], (UNPARSEABLE,)),  # positions and strings mixed
    ],
)
def test_position_failure_classes(positions: list[object], failures: tuple[str, ...]) -> None:
    assert parse_answer(answer(positions), SIDS).failures == failures


def test_out_of_range_position_is_kept_for_inspection() -> None:
    assert parse_answer(answer([*range(1, 10), 12]), SIDS).ranking == [*SIDS[:9], "#12"]
