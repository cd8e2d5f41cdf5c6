"""Champion / challenger promotion of a registered re-ranker (the student, and the AR teacher).

A newly registered version always becomes ``challenger``. It becomes ``champion`` only when it
passes the gates in ``cfg.promotion``, all decided on a seeded sample of the **valid** split (test
is for the report, never for a decision), at the serving tau for a block-diffusion model:

1. validity: a valid rate of at least ``min_valid_rate`` (the service never decodes with a
   constrained decoder);
2. beats the floor: the paired bootstrap CI of (model - pre-rank order) has its lower bound above
   zero for Recall@1 and for NDCG@3, on the same examples, so a model that hands back its input
   order can never be crowned;
3. beats the champion (when there is one): the champion re-scored on the same examples; the
   paired CI of (challenger - champion) must not lie below zero for either metric, and the
   challenger must be ahead on Recall@1 (or level on it and ahead on NDCG@3): a tie keeps the
   champion; its decode throughput must not fall below the champion's by more than the tolerance;
4. same catalogue: a challenger trained on another item catalogue never replaces the champion.

Every check is one line with its numbers and CI. The decision and the compared numbers are written
to the version's tags before the alias moves; moving ``champion`` is the last step and a single
registry call, so a failure before it leaves the old champion serving.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.config import Config, EvaluationConfig, PromotionConfig
from components.rank_metrics import paired_difference_ci
from components.tracking.champions import record_champion
from components.tracking.registry import CHALLENGER, CHAMPION, ModelVersion, version_by_alias
from components.tracking.runs import client

# The slice of an evaluation report the gates read: the gate scope's valid sample.
GATE_SLICE = ("valid", "all")
GATE_METRICS = ("recall_at_1", "ndcg_at_3")


@dataclass(frozen=True)
class GateMetrics:
    """What the gates read of one model's evaluation on the gate's valid sample."""

    valid_rate: float
    recall_at_1: float
    ndcg_at_3: float
    decode_tokens_per_s: float
    examples: int
    # Paired CI of (model - pre-rank floor) per gate metric: mean, ci_low, ci_high.
    vs_floor: dict[str, dict[str, float]]
    # The target's rank under the model, per example, for paired comparisons with the champion.
    target_ranks: list[int]
    # Which examples were scored (same examples <=> same digest).
    examples_digest: str
    catalog: str = ""
    # Valid answers that hand back the pre-rank order unchanged (recorded, not gated: the floor
    # gates already refuse a model whose copies cost it its margin).
    copied_pre_rank_rate: float = 0.0

    @classmethod
    def from_evaluation(cls, report: dict[str, Any], catalog: str = "") -> "GateMetrics":
        """The gate metrics of a gate-scope evaluation report (``evaluate_model(..., scope="gate")``).

        Raises:
            ValueError: the report has no valid split (it was not a gate-scope evaluation).
        """
        split, slice_name = GATE_SLICE
        if split not in report:
            raise ValueError(f"the promotion gates decide on the valid split; this report has only {sorted(report)}")
        scored = report[split][slice_name]
        return cls(
            valid_rate=float(scored["valid_rate"]),
            recall_at_1=float(scored["recall_at_1"]["mean"]),
            ndcg_at_3=float(scored["ndcg_at_3"]["mean"]),
            decode_tokens_per_s=float(report[split]["decode"]["decode_tokens_per_s"]),
            examples=int(scored["n"]),
            vs_floor={m: dict(scored["vs_floor"][m]) for m in GATE_METRICS},
            target_ranks=[int(r) for r in scored["target_ranks"]],
            examples_digest=str(scored["examples_digest"]),
            catalog=catalog,
            copied_pre_rank_rate=float(scored.get("copied_pre_rank_rate", 0.0)),
        )

    def summary(self) -> dict[str, Any]:
        """The numbers worth recording on a version's tags (per-example ranks left out)."""
        return {k: v for k, v in asdict(self).items() if k != "target_ranks"}

    def scalars(self) -> dict[str, float]:
        """The headline numbers alone (what drift is measured on)."""
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}


@dataclass
class Decision:
    promote: bool
    # One line per gate: what was compared, on which split, and whether it passed.
    checks: list[str] = field(default_factory=list)
    challenger: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    champion_version: str | None = None
    # The gates as data: name, split, passed and numbers (``dgr2 report --json``'s ``promotion``).
    gates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ci(stats: dict[str, float]) -> str:
    return f"{stats['mean']:+.4f} [{stats['ci_low']:+.4f}, {stats['ci_high']:+.4f}]"


def decide(
    challenger: GateMetrics, champion: GateMetrics | None, gates: PromotionConfig, evaluation: EvaluationConfig
) -> Decision:
    """Whether ``challenger`` may replace ``champion`` (None: there is no champion yet); see the module docstring."""
    split = f"{GATE_SLICE[0]}, n={challenger.examples}"
    results: list[dict[str, Any]] = []

    def check(name: str, passed: bool, text: str, **numbers: Any) -> None:
        results.append({"gate": name, "split": GATE_SLICE[0], "examples": challenger.examples, "passed": bool(passed), "text": text} | numbers)

    check(
        "validity",
        challenger.valid_rate >= gates.min_valid_rate,
        f"valid rate {challenger.valid_rate:.2%} >= {gates.min_valid_rate:.2%} ({split})",
        valid_rate=challenger.valid_rate,
        min_valid_rate=gates.min_valid_rate,
    )
    if gates.require_beats_floor:
        for metric in GATE_METRICS:
            diff = challenger.vs_floor[metric]
            check(
                f"beats floor {metric}",
                diff["ci_low"] > 0,
                f"{metric} - floor {_ci(diff)}: lower bound > 0 ({split})",
                **diff,
            )
    if champion is not None:
        if champion.catalog and challenger.catalog and champion.catalog != challenger.catalog:
            check(
                "same catalogue",
                False,
                f"catalogue {challenger.catalog} differs from the champion's {champion.catalog}",
                challenger_catalog=challenger.catalog,
                champion_catalog=champion.catalog,
            )
        if champion.examples_digest != challenger.examples_digest:
            check("same examples", False, f"champion scored on other examples ({champion.examples} vs {challenger.examples})")
        else:
            mine, theirs = np.asarray(challenger.target_ranks), np.asarray(champion.target_ranks)
            diffs = {m: paired_difference_ci(mine, theirs, m, evaluation) for m in GATE_METRICS}
            tolerances = {"recall_at_1": gates.recall_at_1_tolerance, "ndcg_at_3": gates.ndcg_at_3_tolerance}
            for metric, diff in diffs.items():
                check(
                    f"not worse than champion {metric}",
                    diff["ci_high"] >= -tolerances[metric],
                    f"{metric} - champion {_ci(diff)}: upper bound >= -{tolerances[metric]:g} ({split})",
                    **diff,
                )
            ahead = (round(diffs["recall_at_1"]["mean"], 12), round(diffs["ndcg_at_3"]["mean"], 12)) > (0.0, 0.0)
            check(
                "ahead of champion",
                ahead,
                f"ahead of the champion on recall_at_1 ({diffs['recall_at_1']['mean']:+.4f}), "
                f"or level on it and ahead on ndcg_at_3 ({diffs['ndcg_at_3']['mean']:+.4f}); a tie keeps the champion",
            )
        floor = champion.decode_tokens_per_s * (1 - gates.throughput_tolerance)
        check(
            "throughput",
            challenger.decode_tokens_per_s >= floor,
            f"decode tokens/s {challenger.decode_tokens_per_s:,.0f} >= champion {champion.decode_tokens_per_s:,.0f}"
            f" x {1 - gates.throughput_tolerance:g}",
            challenger_tokens_per_s=challenger.decode_tokens_per_s,
            champion_tokens_per_s=champion.decode_tokens_per_s,
        )
    return Decision(
        promote=all(r["passed"] for r in results),
        checks=[("pass: " if r["passed"] else "FAIL: ") + r["text"] for r in results],
        challenger=challenger.summary(),
        champion=champion.summary() if champion is not None else None,
        gates=results,
    )


def reason(decision: Decision) -> str:
    """One line: why a version was or was not promoted."""
    failed = [check.removeprefix("FAIL: ") for check in decision.checks if check.startswith("FAIL: ")]
    return "passed every gate" if not failed else f"failed: {failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")


def promote(cfg: Config, version: ModelVersion, challenger: GateMetrics, champion: GateMetrics | None) -> Decision:
    """Make ``version`` the challenger, record the gate decision on it, and move ``champion`` if it passes."""
    mlflow_client = client(cfg)
    current = version_by_alias(cfg, version.name, CHAMPION)
    if current is not None and str(current.version) == version.version:
        decision = Decision(True, ["pass: already champion"], challenger.summary(), challenger.summary())
    elif current is not None and champion is None:
        decision = Decision(False, [f"FAIL: champion {current.version} could not be re-scored on the gate's examples"], challenger.summary())
    else:
        decision = decide(challenger, champion if current is not None else None, cfg.promotion, cfg.evaluation)
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
    if decision.promote and decision.champion_version != version.version:
        mlflow_client.set_registered_model_alias(version.name, CHAMPION, version.version)
        record_champion(cfg, version.name, version.version, "promote", reason(decision))
    return decision
