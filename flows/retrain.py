"""Scheduled lifecycle flows: ``retrain`` (weekly) and ``evaluate-champion``.

``retrain`` ingests the newest data from the configured location (``source_uri``, default
``data.source_uri``), validates it, warm-starts the teacher and CFT from the current champion and
runs the recipe, which registers the new models and promotes only through the gates.
``evaluate-champion`` re-scores the champion on the newest data and records how its gate metrics
drifted from those it was promoted with, on the model version and in an MLflow run; a quality
metric that fell by more than ``monitoring.max_metric_drop`` flags the champion (``flagged``). With
``monitoring.service_url`` set it also reads the service's shadow-traffic counters (the challenger
decoding live requests beside the champion) into its report and onto the challenger's version.

Both take a profile path and ``section.key=value`` overrides, so a deployment's parameters stay
small and readable; see ``deploy/prefect.yaml`` and ``flows/serve.py``.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.config import Config
from components.tracking.card import shadow_sentence
from components.tracking.promotion import CHAMPION, GateMetrics
from components.tracking.registry import version_by_alias, version_checkpoint
from components.tracking.runs import RecipeRuns, client, log_to_run
from flows.data import data_flow
from flows.recipe import recipe_flow, resolve_config
from flows.stages import STAGE_TASKS


def _with_source(config: Config, source_uri: str) -> dict[str, Any]:
    cfg = config.model_dump(mode="json")
    if source_uri:
        cfg["data"]["source_uri"] = source_uri
    return Config.model_validate(cfg).model_dump(mode="json")


@flow(name="retrain", log_prints=True)
def retrain_flow(config: str = "configs/tiny.yaml", overrides: list[str] | None = None, source_uri: str = "") -> dict[str, Any]:
    """Newest data -> validation -> the recipe warm-started from the champion -> gated promotion."""
    cfg = _with_source(resolve_config(None, config, overrides), source_uri)
    return recipe_flow(cfg, until="rl", warm_start=True)


# The quality metrics a drop is flagged on (higher is better); throughput depends on the machine.
WATCHED_METRICS = ("valid_rate", "recall_at_1", "ndcg_at_3")


def metric_drift(recorded: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Change of each gate metric since promotion (now - then); ``examples`` is not a metric."""
    return {key: now[key] - recorded[key] for key in now if key != "examples" and key in recorded}


def read_shadow_traffic(cfg: Config) -> dict[str, dict[str, float]]:
    """The service's shadow-traffic numbers per challenger (``monitoring.service_url``), recorded
    on each challenger's version as evidence for its promotion; empty when no URL is set.

    Raises:
        RuntimeError: the service did not answer ``/metrics``.
    """
    import httpx

    from components.serving.shadow import shadow_summary
    from components.tracking.runs import client

    url = cfg.monitoring.service_url.rstrip("/")
    if not url:
        return {}
    try:
        page = httpx.get(f"{url}/metrics", timeout=30)
        page.raise_for_status()
    except httpx.HTTPError as exc:
        raise RuntimeError(f"monitoring.service_url {url}: /metrics did not answer ({exc})") from exc
    summary = shadow_summary(page.text)
    for challenger, numbers in summary.items():
        name, _, version = challenger.partition("/")
        client(cfg).set_model_version_tag(name, version, "shadow_evidence", json.dumps(numbers))
    return summary


def dropped_metrics(drift: dict[str, float], max_drop: float) -> dict[str, float]:
    """The watched metrics that fell by more than ``max_drop`` since promotion, with their change."""
    return {key: drift[key] for key in WATCHED_METRICS if key in drift and -drift[key] > max_drop}


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion_flow(config: str = "configs/tiny.yaml", overrides: list[str] | None = None, source_uri: str = "") -> dict[str, Any]:
    """Re-score the champion at the serving tau on the newest data's gate sample (valid); record the
    drift of its gate metrics."""
    cfg = _with_source(resolve_config(None, config, overrides), source_uri)
    settings = Config.model_validate(cfg)
    name = settings.tracking.student_model_name
    champion = version_by_alias(settings, name, CHAMPION)
    if champion is None:
        raise ValueError(f"{name} has no champion yet: run the recipe until a version passes the promotion gates")
    data = data_flow(cfg)
    outputs = data["outputs"]
    tau = str(settings.evaluation.serving_threshold)
    report = STAGE_TASKS["evaluate"](
        cfg, version_checkpoint(settings, champion), outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], tau, "gate"
    )
    now = GateMetrics.from_evaluation(report["metrics"]).scalars()
    recorded = json.loads(champion.tags.get("promotion.metrics", "{}")).get("challenger") or {}
    drift = metric_drift(recorded, now)
    dropped = dropped_metrics(drift, settings.monitoring.max_metric_drop)
    result = {
        "name": name, "version": str(champion.version), "dataset_version": data["dataset_version"], "metrics": now, "drift": drift,
        "flagged": bool(dropped), "dropped": dropped, "max_metric_drop": settings.monitoring.max_metric_drop,
    }
    result["shadow"] = read_shadow_traffic(settings)
    if dropped:
        print(f"{name} v{champion.version} dropped since promotion by more than {settings.monitoring.max_metric_drop}: "
              + ", ".join(f"{key} {change:+.4f}" for key, change in dropped.items()))

    runs = RecipeRuns.start(settings, f"evaluate-champion {name}/{champion.version}", {"dataset_version": data["dataset_version"]})
    log_to_run(settings, runs.parent_run_id, metrics={**now, **{f"drift.{k}": v for k, v in drift.items()}},
               tags={"model_version": f"{name}/{champion.version}", "flagged": str(bool(dropped)).lower()})
    runs.finish("FINISHED", result)
    client(settings).set_model_version_tag(name, champion.version, "last_evaluation", json.dumps(result))
    rows = "\n".join(f"| {k} | {recorded.get(k, float('nan')):.4f} | {now[k]:.4f} | {drift.get(k, float('nan')):+.4f} |" for k in now if k != "examples")
    create_markdown_artifact(
        markdown=f"# Champion `{name}` v{champion.version} on dataset `{data['dataset_version']}`\n\n"
        f"| metric | at promotion | now | drift |\n|---|---|---|---|\n{rows}\n\n"
        + (f"**Flagged**: {', '.join(dropped)} fell by more than {settings.monitoring.max_metric_drop}.\n" if dropped
           else f"No quality metric fell by more than {settings.monitoring.max_metric_drop}.\n")
        + "".join(f"\nShadow traffic, challenger {ref}: {shadow_sentence(numbers)}\n" for ref, numbers in result["shadow"].items()),
        key="champion-drift",
        description="Champion metrics on the newest data vs at promotion",
    )
    return result
