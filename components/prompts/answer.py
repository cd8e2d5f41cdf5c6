"""Parse and check a generated answer (DESIGN.md, "Answer"; paper.md section 1, "Validity").

An answer is valid iff it is a JSON object whose ``ranking`` is a permutation of the query's
candidates, named by SID or, in the ``index`` answer form (``PromptConfig.answer_ids``), by their
1-based position in the prompt's candidate list. Nothing is repaired: a near-miss is invalid and
says why, because the valid rate is itself a result (the converted model must learn to emit
permutations without a constrained decoder). Evaluation and serving both replace an invalid answer
with the pre-rank order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from components.prompts.render import RANKING_KEY, REASONING_KEY

# Failure classes, in the order they are recorded; the first one is an answer's primary failure.
UNPARSEABLE = "unparseable"  # not a JSON object, or no ranking list of SID strings or of positions
WRONG_LENGTH = "wrong_length"  # ranking length differs from the number of candidates
OUT_OF_SET = "out_of_set"  # an entry that is not one of this query's candidate SIDs
DUPLICATE = "duplicate"  # an entry that appears more than once
OMISSION = "omission"  # a candidate that never appears
FAILURE_CLASSES = (UNPARSEABLE, WRONG_LENGTH, OUT_OF_SET, DUPLICATE, OMISSION)

# Qwen3's end-of-turn and end-of-text tokens, which a decoder may leave at the end of the text.
END_OF_TEXT_MARKERS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class ParsedAnswer:
    """One answer, checked against its query's candidates.

    ``ranking`` holds the answer's SIDs (positions already mapped) in its own order whenever the
    list itself parsed (also for an invalid answer, so failures can be inspected); ``failures``
    lists every class that applies, in ``FAILURE_CLASSES`` order.
    """

    valid: bool
    ranking: list[str] | None
    reasoning: str | None
    failures: tuple[str, ...]

    @property
    def primary_failure(self) -> str | None:
        """The first failure class, or None for a valid answer."""
        return self.failures[0] if self.failures else None


def _strip_end_markers(text: str, end_markers: Sequence[str]) -> str:
    text = text.strip()
    trimmed = True
    while trimmed:
        trimmed = False
        for marker in end_markers:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                trimmed = True
    return text


def _ranking_sids(entries: object, candidate_sids: Sequence[str]) -> list[str] | None:
    """The ranking as SIDs: a list of SID strings as is, a list of 1-based candidate positions
    mapped to their SIDs (a position outside 1..N becomes ``#<position>``, which is never a
    candidate); None for anything else, a list mixing both forms included."""
    if not isinstance(entries, list):
        return None
    if all(isinstance(entry, str) for entry in entries):
        return entries
    # bool is an int subclass, and JSON true is not a position.
    if all(isinstance(entry, int) and not isinstance(entry, bool) for entry in entries):
        n = len(candidate_sids)
        return [candidate_sids[entry - 1] if 1 <= entry <= n else f"#{entry}" for entry in entries]
    return None


def parse_answer(
    text: str, candidate_sids: Sequence[str], end_markers: Sequence[str] = END_OF_TEXT_MARKERS
) -> ParsedAnswer:
    """Parse an answer and record every way it fails to be a permutation of the candidates.

    Args:
        text: the generated assistant text. Surrounding whitespace and trailing end markers are
            ignored; any other text around the JSON object makes it unparseable.
        candidate_sids: this query's candidate SIDs (distinct), in prompt (pre-rank) order, which
            is what an answer's positions refer to.
        end_markers: end-of-text tokens that may trail the answer.

    Returns:
        The parsed answer; ``valid`` iff ``failures`` is empty.

    Raises:
        ValueError: ``candidate_sids`` holds a SID twice (a bug upstream, not in the answer).
    """
    candidates = set(candidate_sids)
    if len(candidates) != len(candidate_sids):
        raise ValueError("candidate SIDs must be distinct")
    try:
        payload = json.loads(_strip_end_markers(text, end_markers))
    except json.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return ParsedAnswer(valid=False, ranking=None, reasoning=None, failures=(UNPARSEABLE,))
    reasoning = payload.get(REASONING_KEY)
    reasoning = reasoning if isinstance(reasoning, str) else None
    ranking = _ranking_sids(payload.get(RANKING_KEY), candidate_sids)
    if ranking is None:
        return ParsedAnswer(valid=False, ranking=None, reasoning=reasoning, failures=(UNPARSEABLE,))

    counts = Counter(ranking)
    # Insertion order is FAILURE_CLASSES order (after unparseable, which was settled above).
    checks = {
        WRONG_LENGTH: len(ranking) != len(candidate_sids),
        # A malformed SID is never a candidate, so it lands here too.
        OUT_OF_SET: any(entry not in candidates for entry in counts),
        DUPLICATE: any(count > 1 for count in counts.values()),
        OMISSION: any(sid not in counts for sid in candidate_sids),
    }
    failures = tuple(name for name, failed in checks.items() if failed)
    return ParsedAnswer(valid=not failures, ranking=ranking, reasoning=reasoning, failures=failures)


def ranking_or_fallback(parsed: ParsedAnswer, candidate_sids: Sequence[str]) -> tuple[list[str], bool]:
    """The ranking to use: the answer's if valid, else the pre-rank order.

    Args:
        parsed: the checked answer.
        candidate_sids: the candidate SIDs in pre-rank order.

    Returns:
        ``(ranking, fell_back)``; ``fell_back`` is True when the pre-rank order replaced an
        invalid answer (evaluation counts it, serving reports it).
    """
    if parsed.valid and parsed.ranking is not None:
        return list(parsed.ranking), False
    return list(candidate_sids), True
