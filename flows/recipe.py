"""The ``recipe`` flow: data -> AR teacher -> block-diffusion conversion -> CFT -> OPD -> RL ->
evaluate -> register -> promote -> package.

Every stage is a task generated from the recipe's stage table (``flows.stages``), run in the order
``components.recipe.run`` gives: the teacher's stages, then conversion, CFT, OPD, RL and the
AR-vs-block speed comparison; the evaluation task decodes converted models at each threshold
tau. Every task is cached on its stage's content-addressed output, so re-running an unchanged
recipe trains nothing. ``until`` stops after an earlier stage. The summary is also written to
``<artifact_root>/reports/latest.json``, which ``dgr2 report`` prints; each registered version
gets a model card and the run an HTML page.

Run it with ``dgr2 train-rl`` (``convert``, ``train-cft``, ``train-opd`` stop earlier) or
``python -m flows.recipe``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import prefect.runtime as prefect_runtime
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components import storage
from components.config import Config, load_config
from components.recipe.run import recipe_summary, run_diffusion, run_teacher, summarize_stages, teacher_model
from components.recipe.stages import STAGES
from components.reporting import frontier_plot, html_page, promotion_markdown, recipe_summary_markdown
from components.tracking.card import log_card
from components.tracking.promotion import CHAMPION, GateMetrics, promote, reason
from components.tracking.registry import ModelVersion, register, version_by_alias, version_checkpoint
from components.tracking.runs import RecipeRuns, client, model_version_url, run_url, tracking_uri, ui_command
from flows.caching import io_error, task_runner
from flows.data import data_flow
from flows.stages import STAGE_TASKS


DATA_SECTIONS = ("data", "validation", "semantic_ids", "candidates", "prompts", "features")


@task(name="register", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=io_error)
def register_task(cfg: dict[str, Any], name: str, model_uri: str, run_id: str, stage: str, dataset_version: str, parent: str) -> dict[str, Any]:
    """Register a trained model (logged as a pyfunc in its stage's child run) with its lineage tags."""
    config = Config.model_validate(cfg)
    version = register(config, name, model_uri, run_id, stage, dataset_version, parent)
    return asdict(version) | {"url": model_version_url(config, name, version.version)}


@task(name="promote", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=io_error)
def promote_task(
    cfg: dict[str, Any], version: dict[str, Any], challenger: dict[str, Any], champion: dict[str, Any] | None, champion_catalog: str = ""
) -> dict[str, Any]:
    """Challenger alias, gate decision on the version's tags, then the champion alias if it passed."""
    config = Config.model_validate(cfg)
    decision = promote(
        config,
        ModelVersion(**{key: version[key] for key in ("name", "version", "model_uri", "run_id")}),
        GateMetrics.from_evaluation(challenger, config.data.catalog_name),
        GateMetrics.from_evaluation(champion, champion_catalog) if champion is not None else None,
    )
    create_markdown_artifact(
        markdown=promotion_markdown(version, decision.to_dict()),
        key=f"promotion-{version['name']}",
        description="Champion / challenger decision",
    )
    return decision.to_dict() | {"reason": reason(decision)}


@task(name="package", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=io_error)
def package_task(cfg: dict[str, Any], feature_store_dir: str | None) -> dict[str, Any]:
    """The champion and its AR teacher into the BentoML model store, then ``bentoml build``."""
    # BentoML is imported only when there is a champion to package: it adds seconds to every start.
    from flows.package import package_service

    return asdict(package_service(Config.model_validate(cfg), feature_store_dir))


def latest_report_uri(cfg: Config) -> str:
    """Where the last recipe run's summary is kept (``dgr2 report`` reads it)."""
    return storage.join(cfg.storage.artifact_root, "reports", "latest.json")


@dataclass
class _Lineage:
    """Which child run logged each model URI, so registration finds the run and stage of a model."""

    runs: RecipeRuns
    model_runs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __call__(self, label: str, stage: str, result: dict[str, Any]) -> None:
        spec = STAGES[stage].spec
        run_id = self.runs.log_stage(label, spec, result)
        if "model_uri" in result["outputs"]:
            self.model_runs[result["outputs"]["model_uri"]] = (run_id, spec.name)


def _champion_start(config: Config) -> dict[str, str]:
    """Warm start: the champion's checkpoint and its teacher's (named by its lineage tag)."""
    champion = version_by_alias(config, config.tracking.student_model_name, CHAMPION)
    if champion is None:
        return {}
    start = {"student": version_checkpoint(config, champion)}
    teacher_name, _, teacher_version = champion.tags.get("parent_model_version", "").partition("/")
    if teacher_version:
        start["teacher"] = version_checkpoint(config, client(config).get_model_version(teacher_name, teacher_version))
    return start


def _register_and_promote(
    config: Config, summary: dict[str, Any], lineage: _Lineage, run: Any, data: tuple[str, str, str], feature_store_dir: str | None
) -> dict[str, Any]:
    """Register the teacher and the final student, re-score the champion, promote through the
    gates, and package a new champion for serving."""
    cfg = config.model_dump(mode="json")
    tracking = config.tracking
    teacher_uri = summary["teacher_model_uri"]
    base = summary["stage_metrics"].get("base_model", {}).get("source") or f"warm start from {summary['warm_start'].get('teacher')}"
    teacher_run, teacher_stage = lineage.model_runs[teacher_uri]
    teacher = register_task(cfg, tracking.teacher_model_name, teacher_uri, teacher_run, teacher_stage, summary["dataset_version"], base)
    result: dict[str, Any] = {"registry": {tracking.teacher_model_name: teacher}}
    stages: dict[str, dict[str, Any]] = {}

    def gate(label: str, version: dict[str, Any], model_uri: str, tau: str) -> dict[str, Any]:
        """Score the version and the current champion of its name on the gate's valid sample, then promote."""
        name = f"gate {label}" + (f" (tau={tau})" if tau else "")
        stages[name] = run(name, "evaluate", model_uri, *data, tau, "gate")
        champion_report, champion_catalog = None, ""
        current = version_by_alias(config, version["name"], CHAMPION)
        if current is not None and str(current.version) != version["version"]:
            label = f"gate champion {version['name']} v{current.version}" + (f" (tau={tau})" if tau else "")
            stages[label] = run(label, "evaluate", version_checkpoint(config, current), *data, tau, "gate")
            champion_report, champion_catalog = stages[label]["metrics"], current.tags.get("catalog", "")
        decision = promote_task(cfg, version, stages[name]["metrics"], champion_report, champion_catalog)
        # The card records the decision, so it is written once the gates have run.
        log_card(config, f"{version['name']}@{version['version']}", summary)
        return decision | {"name": version["name"], "version": version["version"]}

    # The teacher goes through the same gates (AR decoding), so a copy-the-input teacher is no champion either.
    result["teacher_promotion"] = gate("AR teacher", teacher, teacher_uri, "")
    final = summary["final"]
    if final == "naive conversion":
        summary["stages"] |= summarize_stages(stages)["stages"]
        return result
    student_uri = summary["models"][final]
    student_run, student_stage = lineage.model_runs[student_uri]
    student = register_task(
        cfg, tracking.student_model_name, student_uri, student_run, student_stage, summary["dataset_version"],
        f"{teacher['name']}/{teacher['version']}",
    )
    result["registry"][tracking.student_model_name] = student
    result["promotion"] = gate(final, student, student_uri, str(config.evaluation.serving_threshold))
    summary["stages"] |= summarize_stages(stages)["stages"]
    # A promoted model is always a built Bento; a rejected one leaves the serving Bento as it was.
    if result["promotion"]["promote"]:
        result["package"] = package_task(cfg, feature_store_dir)
    return result


def resolve_config(cfg: dict[str, Any] | None, config: str, overrides: list[str] | None) -> Config:
    """A flow's config: the resolved dict the CLI passes, or a profile path plus overrides (deployments)."""
    return Config.model_validate(cfg) if cfg is not None else load_config(config or None, overrides)


@flow(name="recipe", log_prints=True)
def recipe_flow(
    cfg: dict[str, Any] | None = None,
    until: str = "rl",
    warm_start: bool = False,
    config: str = "",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train the AR teacher, convert it to block diffusion, then CFT, OPD and RL; evaluate every
    model; register the teacher and the final student in MLflow and promote through the gates.

    Args:
        cfg: the resolved config (``Config.model_dump(mode="json")``); when None, ``config`` (a
            profile path, empty for the embedded defaults) and ``overrides`` give it.
        until: the last stage: ``"convert"``, ``"cft"``, ``"opd"`` or ``"rl"``.
        warm_start: start the teacher's training and CFT from the current champion's models
            (``retrain`` sets it) instead of a fresh base model and the naive conversion.

    Returns:
        The summary: dataset version, model URIs, tau = 1 evaluations of every model (teacher
        included) and the final model's at the serving tau, the final model's tau sweep and speed
        comparison, per-stage timings and facts, and (with tracking on) the MLflow runs,
        registered versions, the promotion decision and, for a new champion, its built Bento.
    """
    started = time.perf_counter()
    config = resolve_config(cfg, config, overrides)
    cfg = config.model_dump(mode="json")
    data = data_flow(cfg)
    outputs = data["outputs"]
    inputs = (outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"])
    lineage = None
    if config.tracking.enabled:
        flow_run = prefect_runtime.flow_run.id or ""
        runs = RecipeRuns.start(config, f"recipe {data['dataset_version']} until {until}", {"prefect_flow_run_id": str(flow_run), "dataset_version": data["dataset_version"]})
        lineage = _Lineage(runs)
    run = task_runner(STAGE_TASKS, cfg, get_run_logger(), on_stage=lineage)
    try:
        if lineage is not None:
            lineage.runs.log_data(data, DATA_SECTIONS)
        start = _champion_start(config) if warm_start and config.tracking.enabled else {}
        teacher = run_teacher(config, *inputs, run, start.get("teacher", ""))
        teacher_uri = teacher_model(teacher)
        diffusion = run_diffusion(config, teacher_uri, *inputs, teacher["traces_uri"], run, until, start.get("student", ""))
        summary = {"dataset_version": data["dataset_version"], "until": until, "warm_start": start} | recipe_summary(teacher, diffusion, teacher_uri, config.evaluation)
        if lineage is not None:
            summary |= _register_and_promote(config, summary, lineage, run, inputs, outputs.get("feature_store_dir"))
            summary["tracking"] = {
                "experiment_id": lineage.runs.experiment_id,
                "parent_run_id": lineage.runs.parent_run_id,
                "parent_run_url": run_url(config, lineage.runs.experiment_id, lineage.runs.parent_run_id),
                "ui": ui_command(config),
                "tracking_uri": tracking_uri(config),
            }
        summary["seconds"] = round(time.perf_counter() - started, 2)
        storage.write_json(latest_report_uri(config), summary, sort_keys=False)
        if lineage is not None:
            plots = {}
            prefix = Path(config.storage.work_dir) / "plots" / lineage.runs.parent_run_id
            if summary.get("sweep") and summary.get("speed"):
                plots["plots"] = frontier_plot(summary, f"{prefix}-frontier.png")
            # One page per run: the tables, gate decisions and links, with the plot inlined.
            page = Path(f"{prefix}-report.html")
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(html_page(recipe_summary_markdown(summary), "Diffusion-GR2 recipe", list(plots.values())))
            plots["report"] = page
            lineage.runs.finish("FINISHED", summary, plots)
    except BaseException:
        if lineage is not None:
            lineage.runs.fail()
        raise
    create_markdown_artifact(
        markdown=recipe_summary_markdown(summary), key="recipe-summary", description="AR teacher vs block-diffusion models"
    )
    return summary


if __name__ == "__main__":
    print(recipe_flow(config="configs/tiny.yaml"))
