"""Evaluation: re-ranking metrics with bootstrap CIs, the pre-rank floor and answer scoring."""

from components.evaluation.metrics import answer_metrics, answer_ranks, evaluate_answers
from components.rank_metrics import (
    METRIC_NAMES,
    bootstrap_ci,
    floor_metrics,
    metric_values,
    ndcg_at_k,
    paired_difference_ci,
    ranking_metrics,
    recall_at_k,
)

__all__ = [
    "METRIC_NAMES",
    "answer_metrics",
    "answer_ranks",
    "bootstrap_ci",
    "evaluate_answers",
    "floor_metrics",
    "metric_values",
    "ndcg_at_k",
    "paired_difference_ci",
    "ranking_metrics",
    "recall_at_k",
]
