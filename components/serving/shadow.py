"""Shadow traffic: the challenger decodes a share of live requests beside the champion.

The service answers with the champion; afterwards, off the response path, the challenger decodes
the same prompt and the two rankings are compared. What the service counts (Prometheus, labelled
by challenger version) is what an operator needs before promoting it on live traffic: how often
the two agree on the top item, how closely their orders correlate, how often the challenger's
answer is valid and how long it takes. ``evaluate-champion`` reads these numbers back from the
service's ``/metrics`` with :func:`shadow_summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Metric names as the service declares them; Prometheus adds _total to counters and _sum /
# _count / _bucket to histograms.
REQUESTS = "dgr2_shadow_requests"
TOP1_AGREEMENTS = "dgr2_shadow_top1_agreements"
VALID_ANSWERS = "dgr2_shadow_valid_answers"
RANK_CORRELATION = "dgr2_shadow_rank_correlation"
DECODE_SECONDS = "dgr2_shadow_decode_seconds"
# Outcomes of a request picked for shadowing: decoded, dropped (the shadow queue was full, so the
# live traffic keeps priority) or error (the challenger's decode raised).
OUTCOMES = ("decoded", "dropped", "error")


def rank_correlation(champion: Sequence[str], challenger: Sequence[str]) -> float:
    """Spearman's rho of two orders of the same items: 1 same order, -1 reversed.

    Raises:
        ValueError: the two are not orders of the same set of items.
    """
    if sorted(champion) != sorted(challenger) or len(set(champion)) != len(champion):
        raise ValueError("rank correlation needs two orders of the same distinct items")
    n = len(champion)
    if n < 2:
        return 1.0
    position = {item: rank for rank, item in enumerate(challenger)}
    squared = sum((rank - position[item]) ** 2 for rank, item in enumerate(champion))
    return 1.0 - 6.0 * squared / (n * (n * n - 1))


def compare(champion: Sequence[str], challenger: Sequence[str]) -> dict[str, Any]:
    """What one shadowed request contributes: top-1 agreement and rank correlation."""
    return {"top1_agrees": champion[0] == challenger[0], "rank_correlation": rank_correlation(champion, challenger)}


def shadow_summary(metrics_text: str) -> dict[str, dict[str, float]]:
    """Per challenger (``name/version``), the shadow numbers from a ``/metrics`` page.

    Returns:
        ``{challenger: {decoded, dropped, error, top1_agreement, valid_rate, mean_rank_correlation,
        mean_decode_ms}}``; the rates are over decoded requests (0 when none was decoded).
    """
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, dict[str, float]] = {}

    def add(challenger: str, key: str, value: float) -> None:
        entry = totals.setdefault(challenger, {**{o: 0.0 for o in OUTCOMES}, "agreements": 0.0, "valid": 0.0})
        entry[key] = entry.get(key, 0.0) + value

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            challenger = sample.labels.get("challenger")
            if challenger is None:
                continue
            if sample.name == f"{REQUESTS}_total":
                add(challenger, sample.labels["outcome"], sample.value)
            elif sample.name == f"{TOP1_AGREEMENTS}_total":
                add(challenger, "agreements", sample.value)
            elif sample.name == f"{VALID_ANSWERS}_total":
                add(challenger, "valid", sample.value)
            elif sample.name in (f"{RANK_CORRELATION}_sum", f"{RANK_CORRELATION}_count", f"{DECODE_SECONDS}_sum"):
                add(challenger, sample.name, sample.value)
    summary = {}
    for challenger, entry in totals.items():
        decoded = entry["decoded"]
        summary[challenger] = {
            **{o: entry[o] for o in OUTCOMES},
            "top1_agreement": entry["agreements"] / decoded if decoded else 0.0,
            "valid_rate": entry["valid"] / decoded if decoded else 0.0,
            "mean_rank_correlation": entry.get(f"{RANK_CORRELATION}_sum", 0.0) / entry[f"{RANK_CORRELATION}_count"]
            if entry.get(f"{RANK_CORRELATION}_count") else 0.0,
            "mean_decode_ms": 1000 * entry.get(f"{DECODE_SECONDS}_sum", 0.0) / decoded if decoded else 0.0,
        }
    return summary
