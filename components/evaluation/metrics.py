"""Scoring generated answers: each answer's target rank, validity and failure class, then the
ranking metrics of ``components.rank_metrics`` (paper.md section 6.7). An invalid answer is scored
as the pre-rank order, as the service falls back to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.config import EvaluationConfig
from components.prompts.answer import FAILURE_CLASSES, ParsedAnswer, parse_answer, ranking_or_fallback
from components.prompts.render import ItemCatalog
from components.rank_metrics import ranking_metrics


def answer_ranks(
    examples: pd.DataFrame, answers: Sequence[str], catalog: ItemCatalog
) -> tuple[np.ndarray, list[ParsedAnswer]]:
    """The target's rank under each answer, invalid answers replaced by the pre-rank order.

    Args:
        examples: re-ranking examples (``candidates`` in pre-rank order, ``target``).
        answers: one generated answer text per example, in the same order.
        catalog: gives each item its SID.

    Returns:
        ``(ranks, parsed)``: 1-based target ranks (an int array) and each parsed answer.
    """
    if len(answers) != len(examples):
        raise ValueError(f"{len(answers)} answers for {len(examples)} examples")
    ranks = np.empty(len(examples), dtype=np.int64)
    parsed_answers = []
    for i, (candidates, target, answer) in enumerate(zip(examples["candidates"], examples["target"], answers)):
        candidate_sids = catalog.sids(list(candidates))
        target_sid = catalog.sid(target)
        if target_sid not in candidate_sids:
            raise ValueError(f"example {i}: target {target!r} is not among its candidates")
        parsed = parse_answer(answer, candidate_sids)
        ranking, _ = ranking_or_fallback(parsed, candidate_sids)
        ranks[i] = ranking.index(target_sid) + 1
        parsed_answers.append(parsed)
    return ranks, parsed_answers


def answer_metrics(ranks: np.ndarray, parsed_answers: Sequence[ParsedAnswer], cfg: EvaluationConfig) -> dict[str, Any]:
    """Ranking metrics of scored answers plus the valid rate and failure counts.

    Args:
        ranks: the target's rank under each answer (invalid ones already at their pre-rank).
        parsed_answers: each checked answer, in the same order.
        cfg: bootstrap samples, confidence and seed.

    Returns:
        :func:`ranking_metrics` plus ``valid_rate``, ``invalid_count`` (answers scored as the
        pre-rank order) and ``failure_counts`` (answers carrying each failure class; one answer
        can carry several, so these may sum to more than ``invalid_count``).
    """
    valid_count = sum(parsed.valid for parsed in parsed_answers)
    result = ranking_metrics(ranks, cfg)
    result["valid_rate"] = valid_count / len(parsed_answers)
    result["invalid_count"] = len(parsed_answers) - valid_count
    result["failure_counts"] = {
        name: sum(name in parsed.failures for parsed in parsed_answers) for name in FAILURE_CLASSES
    }
    return result


def evaluate_answers(
    examples: pd.DataFrame, answers: Sequence[str], catalog: ItemCatalog, cfg: EvaluationConfig
) -> dict[str, Any]:
    """Score generated answers, with the paper's protocol for invalid ones.

    Args:
        examples: re-ranking examples (``candidates`` in pre-rank order, ``target``).
        answers: one generated answer text per example, in the same order.
        catalog: gives each item its SID.
        cfg: bootstrap samples, confidence and seed.

    Returns:
        :func:`answer_metrics` of the answers.
    """
    ranks, parsed_answers = answer_ranks(examples, answers, catalog)
    return answer_metrics(ranks, parsed_answers, cfg)
