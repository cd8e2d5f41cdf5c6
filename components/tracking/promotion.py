"""Champion / challenger promotion of ``diffusion-gr2``.

A newly registered version always becomes ``challenger``. It becomes ``champion`` only when it
passes the gates in ``cfg.promotion`` at the serving tau on the fixed test sample: a valid rate
of at least ``min_valid_rate`` (the service never decodes with a constrained decoder), and
Recall@1, NDCG@3 and decode throughput not below the current champion's by more than the
tolerances, the champion re-scored on the same examples. The decision and the compared numbers
are written to the version's tags before the alias moves; moving ``champion`` is the last step
and a single registry call, so a failure before it leaves the old champion serving.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from components.config import Config, PromotionConfig
from components.tracking.registry import ModelVersion, version_by_alias
from components.tracking.runs import client

CHAMPION = "champion"
CHALLENGER = "challenger"
# The slice of an evaluation report the gates read: the papers' fixed test sample.
GATE_SLICE = ("test", "test_sample")


@dataclass(frozen=True)
class GateMetrics:
    valid_rate: float
    recall_at_1: float
    ndcg_at_3: float
    decode_tokens_per_s: float
    examples: int

    @classmethod
    def from_evaluation(cls, report: dict[str, Any]) -> "GateMetrics":
        """The gate metrics of an evaluation stage's report (``evaluate_model`` metrics)."""
        split, slice_name = GATE_SLICE
        scored = report[split][slice_name]
        return cls(
            valid_rate=float(scored["valid_rate"]),
            recall_at_1=float(scored["recall_at_1"]["mean"]),
            ndcg_at_3=float(scored["ndcg_at_3"]["mean"]),
            decode_tokens_per_s=float(report[split]["decode"]["decode_tokens_per_s"]),
            examples=int(scored["n"]),
        )


@dataclass
class Decision:
    promote: bool
    # One line per gate: what was compared and whether it passed.
    checks: list[str] = field(default_factory=list)
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger: GateMetrics, champion: GateMetrics | None, gates: PromotionConfig) -> Decision:
    """Whether ``challenger`` may replace ``champion`` (None: there is no champion yet)."""
    checks: list[tuple[bool, str]] = [
        (
            challenger.valid_rate >= gates.min_valid_rate,
            f"valid rate {challenger.valid_rate:.2%} >= {gates.min_valid_rate:.2%}",
        )
    ]
    if champion is not None:
        if champion.examples != challenger.examples:
            checks.append((False, f"same test sample: {challenger.examples} vs {champion.examples} examples"))
        for name, tolerance in (("recall_at_1", gates.recall_at_1_tolerance), ("ndcg_at_3", gates.ndcg_at_3_tolerance)):
            mine, theirs = getattr(challenger, name), getattr(champion, name)
            checks.append((mine >= theirs - tolerance, f"{name} {mine:.4f} >= champion {theirs:.4f} - {tolerance}"))
        floor = champion.decode_tokens_per_s * (1 - gates.throughput_tolerance)
        checks.append(
            (
                challenger.decode_tokens_per_s >= floor,
                f"decode tokens/s {challenger.decode_tokens_per_s:,.0f} >= champion {champion.decode_tokens_per_s:,.0f}"
                f" x {1 - gates.throughput_tolerance:g}",
            )
        )
    return Decision(
        promote=all(ok for ok, _ in checks),
        checks=[("pass: " if ok else "FAIL: ") + text for ok, text in checks],
        challenger=asdict(challenger),
        champion=asdict(champion) if champion is not None else None,
    )


def promote(cfg: Config, version: ModelVersion, challenger: GateMetrics, champion: GateMetrics | None) -> Decision:
    """Make ``version`` the challenger, record the gate decision on it, and move ``champion`` if it passes."""
    mlflow_client = client(cfg)
    current = version_by_alias(cfg, version.name, CHAMPION)
    if current is not None and str(current.version) == version.version:
        decision = Decision(True, ["pass: already champion"], asdict(challenger), asdict(challenger))
    elif current is not None and champion is None:
        decision = Decision(False, [f"FAIL: champion {current.version} could not be re-scored on this test sample"], asdict(challenger))
    else:
        decision = decide(challenger, champion if current is not None else None, cfg.promotion)
    decision.champion_version = str(current.version) if current is not None else None
    mlflow_client.set_registered_model_alias(version.name, CHALLENGER, version.version)
    tags = {
        "promotion.decision": "champion" if decision.promote else "rejected",
        "promotion.checks": json.dumps(decision.checks),
        "promotion.compared_with": decision.champion_version or "none",
        "promotion.metrics": json.dumps({"challenger": decision.challenger, "champion": decision.champion}),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(version.name, version.version, key, value)
    if decision.promote:
        mlflow_client.set_registered_model_alias(version.name, CHAMPION, version.version)
    return decision
