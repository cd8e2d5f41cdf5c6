"""Scheduled lifecycle flows: ``retrain`` (weekly) and ``evaluate-champion``.

``retrain`` ingests the newest data from the configured location (``source_uri``, default
``data.source_uri``), validates it, warm-starts the teacher and CFT from the current champion and
runs the recipe, which registers the new models and promotes only through the gates.
``evaluate-champion`` re-scores the champion on the newest data and records how its gate metrics
drifted from those it was promoted with, on the model version and in an MLflow run; a quality
metric that fell by more than ``monitoring.max_metric_drop`` flags the champion (``flagged``). With
``monitoring.service_url`` set it also reads the service's shadow-traffic counters (the challenger
decoding live requests beside the champion) into its report and onto the challenger's version.
``check-drift`` compares the service's recent requests (``GET /traffic``) with the data version
(``components/evaluation/drift.py``, evidently) and, past ``monitoring.drift_share``, triggers the
retrain deployment with its own parameters; that retrain still promotes only through the gates.

Both take a profile path and ``section.key=value`` overrides, so a deployment's parameters stay
small and readable; see ``deploy/prefect.yaml`` and ``flows/serve.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from components.candidates.examples import read_examples, split_examples
from components.config import Config
from components.data.ingest import load_dataset
from components.evaluation.drift import ItemStats, compare, reference_frame, traffic_frame
from components.tracking.card import shadow_sentence
from components.tracking.promotion import CHAMPION, GateMetrics
from components.tracking.registry import version_by_alias, version_checkpoint
from components.tracking.runs import RecipeRuns, client, log_to_run
from flows.data import data_flow
from flows.recipe import recipe_flow, resolve_config
from flows.stages import STAGE_TASKS


def _champion(settings: Config, name: str) -> Any:
    champion = version_by_alias(settings, name, CHAMPION)
    if champion is None:
        raise ValueError(f"{name} has no champion yet: run the recipe until a version passes the promotion gates")
    return champion


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


def _read_service(cfg: Config, path: str) -> Any:
    """GET ``path`` from the service at ``monitoring.service_url``, with the API key from
    ``DGR2_API_KEY`` when set (``/metrics`` ignores it, ``/traffic`` needs it).

    Raises:
        RuntimeError: the service did not answer.
    """
    import httpx

    url = cfg.monitoring.service_url.rstrip("/")
    key = os.environ.get("DGR2_API_KEY")
    try:
        page = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
        page.raise_for_status()
    except httpx.HTTPError as exc:
        raise RuntimeError(f"monitoring.service_url {url}: {path} did not answer ({exc})") from exc
    return page


def read_shadow_traffic(cfg: Config) -> dict[str, dict[str, float]]:
    """The service's shadow-traffic numbers per challenger (``monitoring.service_url``), recorded
    on each challenger's version as evidence for its promotion; empty when no URL is set.

    Raises:
        RuntimeError: the service did not answer ``/metrics``.
    """
    from components.serving.shadow import shadow_summary

    if not cfg.monitoring.service_url:
        return {}
    summary = shadow_summary(_read_service(cfg, "/metrics").text)
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
    champion = _champion(settings, name)
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


def read_traffic(cfg: Config) -> list[dict[str, Any]]:
    """The service's recent requests (``monitoring.service_url`` + ``/traffic``; the API key from
    ``DGR2_API_KEY`` when set).

    Raises:
        ValueError: no service URL is configured.
        RuntimeError: the service did not answer.
    """
    if not cfg.monitoring.service_url:
        raise ValueError("monitoring.service_url is empty: check-drift reads the service's recent requests from its /traffic")
    return _read_service(cfg, "/traffic").json()["requests"]


@flow(name="check-drift", log_prints=True)
def check_drift_flow(config: str = "configs/tiny.yaml", overrides: list[str] | None = None, source_uri: str = "") -> dict[str, Any]:
    """The service's recent requests against the data version; drift past the threshold triggers
    ``monitoring.retrain_deployment`` with this flow's parameters."""
    cfg = _with_source(resolve_config(None, config, overrides), source_uri)
    settings = Config.model_validate(cfg)
    monitoring = settings.monitoring
    name = settings.tracking.student_model_name
    champion = _champion(settings, name)
    records = read_traffic(settings)
    data = data_flow(cfg)
    outputs = data["outputs"]
    result: dict[str, Any] = {"name": name, "version": str(champion.version), "dataset_version": data["dataset_version"], "requests": len(records)}
    if len(records) < monitoring.drift_min_requests:
        print(f"check-drift: {len(records)} requests recorded, fewer than monitoring.drift_min_requests={monitoring.drift_min_requests}; no verdict")
        return result | {"drifted": None}

    dataset = load_dataset(outputs["dataset_uri"], settings.storage.work_dir)
    stats = ItemStats.from_dataset(dataset.interactions, dataset.items)
    reference = split_examples(read_examples(outputs["examples_uri"], settings.storage.work_dir), "valid", 0, settings.seed)
    promoted = json.loads(champion.tags.get("promotion.metrics", "{}")).get("challenger") or {}
    fallback_rate = 1.0 - promoted.get("valid_rate", 1.0)
    report = compare(reference_frame(reference, stats, fallback_rate), traffic_frame(records, stats), monitoring.drift_share)
    result |= report.summary() | {"drift_share": monitoring.drift_share, "reference_examples": len(reference)}
    drifted = [column for column, test in report.columns.items() if test["drifted"]]
    print(f"check-drift: {len(drifted)} of {len(report.columns)} columns drifted ({', '.join(drifted) or 'none'}); "
          f"threshold {monitoring.drift_share:.0%}")
    if report.drifted and monitoring.retrain_deployment:
        triggered = run_deployment(
            monitoring.retrain_deployment, parameters={"config": config, "overrides": overrides or [], "source_uri": source_uri}, timeout=0
        )
        result["retrain_flow_run_id"] = str(triggered.id)
        print(f"check-drift: triggered {monitoring.retrain_deployment} (flow run {triggered.id})")

    runs = RecipeRuns.start(settings, f"check-drift {name}/{champion.version}", {"dataset_version": data["dataset_version"]})
    log_to_run(settings, runs.parent_run_id, metrics={"drifted_share": report.drifted_share, "requests": len(records)}
               | {f"drift.{column}": test["value"] for column, test in report.columns.items()},
               tags={"model_version": f"{name}/{champion.version}", "drifted": str(report.drifted).lower()})
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "drift.html"
        page.write_text(report.html)
        runs.finish("FINISHED", result, files={"drift": page})
    client(settings).set_model_version_tag(name, champion.version, "last_drift_check", json.dumps(result))
    rows = "\n".join(
        f"| {column} | {test['method']} | {test['value']:.4g} | {test['threshold']:.4g} | {'yes' if test['drifted'] else 'no'} |"
        for column, test in report.columns.items()
    )
    create_markdown_artifact(
        markdown=f"# Traffic drift for `{name}` v{champion.version} against dataset `{data['dataset_version']}`\n\n"
        f"{len(records)} requests against {len(reference)} reference examples.\n\n"
        f"| column | test | value | threshold | drifted |\n|---|---|---|---|---|\n{rows}\n\n"
        + (f"**Drifted** ({report.drifted_share:.0%} of columns): retrain triggered ({result.get('retrain_flow_run_id', 'no deployment configured')}).\n"
           if report.drifted else f"Not drifted ({report.drifted_share:.0%} of columns, threshold {monitoring.drift_share:.0%}).\n"),
        key="traffic-drift",
        description="What the service sees against the data version",
    )
    return result
