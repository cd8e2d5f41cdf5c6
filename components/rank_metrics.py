"""Ranking metrics of target ranks with bootstrap confidence intervals (paper.md section 6.7).

Every example has exactly one relevant item, the target, so a system's output on an example is
the target's 1-based rank. Recall@k is 1 when rank <= k; NDCG@k is 1 / log2(rank + 1) when
rank <= k (the ideal DCG is 1), else 0. A metric is the mean over examples, reported with a
percentile-bootstrap confidence interval: the gaps between systems are a few thousandths on
Beauty (AR GR2 vs the floor: +0.0149 Recall@1), so a mean alone says little.

Pure functions of ranks, so the pre-rank floor (``components.candidates``), the baselines and the
evaluation of generated answers (``components.evaluation``) share one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from components.config import EvaluationConfig

# Stable metric keys, in report order.
METRIC_NAMES = ("recall_at_1", "recall_at_3", "recall_at_5", "ndcg_at_3", "ndcg_at_5", "ndcg_at_10")

# Bootstrap resamples are drawn in chunks of about this many indices, so memory stays bounded
# (a few tens of MB) whatever the number of examples.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _as_ranks(ranks: ArrayLike) -> np.ndarray:
    array = np.asarray(ranks)
    if array.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 1):
        raise ValueError("ranks must be integers >= 1 (1 = first)")
    return array


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def recall_at_k(ranks: ArrayLike, k: int) -> np.ndarray:
    """Per-example Recall@k with one relevant item: 1.0 if its rank is <= k, else 0.0.

    Args:
        ranks: 1-based rank of the target, one per example.
        k: cut-off.

    Returns:
        A float array of the same length; Recall@k is its mean.
    """
    _check_k(k)
    return (_as_ranks(ranks) <= k).astype(float)


def ndcg_at_k(ranks: ArrayLike, k: int) -> np.ndarray:
    """Per-example NDCG@k with one relevant item: 1 / log2(rank + 1) if rank <= k, else 0.0.

    Args:
        ranks: 1-based rank of the target, one per example.
        k: cut-off.

    Returns:
        A float array of the same length; NDCG@k is its mean.
    """
    _check_k(k)
    array = _as_ranks(ranks)
    return np.where(array <= k, 1.0 / np.log2(array + 1.0), 0.0)


_METRIC_FAMILIES: dict[str, Callable[[ArrayLike, int], np.ndarray]] = {"recall": recall_at_k, "ndcg": ndcg_at_k}


def metric_values(ranks: ArrayLike, metric: str) -> np.ndarray:
    """Per-example values of a metric given by its stable key.

    Args:
        ranks: 1-based rank of the target, one per example.
        metric: ``recall_at_<k>`` or ``ndcg_at_<k>``.

    Returns:
        A float array, one value per example.
    """
    family, separator, k = metric.partition("_at_")
    if not separator or family not in _METRIC_FAMILIES or not k.isdigit():
        raise ValueError(f"unknown metric {metric!r}: expected recall_at_<k> or ndcg_at_<k>")
    return _METRIC_FAMILIES[family](ranks, int(k))


def bootstrap_ci(values: ArrayLike, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean.

    Args:
        values: one value per example.
        samples: number of resamples (each of the same size as ``values``, with replacement).
        confidence: e.g. 0.95 for the 2.5th-97.5th percentile interval.
        seed: the same seed, values and samples give the same interval.

    Returns:
        ``(low, high)``.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty one-dimensional array")
    if samples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("bootstrap_ci needs samples >= 1 and 0 < confidence < 1")
    n = array.size
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    for start in range(0, samples, rows_per_chunk):
        stop = min(samples, start + rows_per_chunk)
        indices = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        means[start:stop] = array[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _summary(values: np.ndarray, cfg: EvaluationConfig) -> dict[str, float]:
    low, high = bootstrap_ci(values, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return {"mean": float(values.mean()), "ci_low": low, "ci_high": high}


def ranking_metrics(
    ranks: ArrayLike, cfg: EvaluationConfig, metrics: Sequence[str] = METRIC_NAMES
) -> dict[str, Any]:
    """Mean and bootstrap CI of each metric.

    Args:
        ranks: 1-based rank of the target, one per example.
        cfg: bootstrap samples, confidence and seed.
        metrics: stable metric keys (``recall_at_<k>``, ``ndcg_at_<k>``).

    Returns:
        ``{"n": <examples>, "<metric>": {"mean", "ci_low", "ci_high"}, ...}``. Every metric uses
        the same seed, hence the same resamples.
    """
    array = _as_ranks(ranks)
    if array.size == 0:
        raise ValueError("no examples to evaluate")
    result: dict[str, Any] = {"n": int(array.size)}
    for metric in metrics:
        result[metric] = _summary(metric_values(array, metric), cfg)
    return result


def floor_metrics(target_pre_ranks: ArrayLike, cfg: EvaluationConfig) -> dict[str, Any]:
    """The floor: the metrics of the pre-rank order itself (what any invalid answer scores).

    Args:
        target_pre_ranks: the target's 1-based rank among the candidates, one per example.
        cfg: bootstrap samples, confidence and seed.

    Returns:
        The same layout as :func:`ranking_metrics`.
    """
    return ranking_metrics(target_pre_ranks, cfg)


def paired_difference_ci(
    ranks_a: ArrayLike, ranks_b: ArrayLike, metric: str, cfg: EvaluationConfig
) -> dict[str, float]:
    """Bootstrap CI of metric(A) - metric(B) for two systems scored on the same examples.

    Resampling the per-example differences keeps the pairing: both systems see the same resampled
    examples, which removes the between-example variance both share. A ``ci_low`` above zero says
    A beats B at the configured confidence.

    Args:
        ranks_a: the target's rank under system A, one per example.
        ranks_b: the target's rank under system B, for the same examples in the same order.
        metric: a stable metric key, e.g. ``recall_at_1``.
        cfg: bootstrap samples, confidence and seed.

    Returns:
        ``{"mean", "ci_low", "ci_high"}`` of the difference A - B.
    """
    values_a = metric_values(ranks_a, metric)
    values_b = metric_values(ranks_b, metric)
    if values_a.shape != values_b.shape:
        raise ValueError(f"paired ranks differ in length: {values_a.size} vs {values_b.size}")
    return _summary(values_a - values_b, cfg)
