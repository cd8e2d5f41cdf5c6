"""The ``recipe`` flow: data -> AR teacher -> block-diffusion conversion -> CFT -> OPD -> RL, evaluated.

The teacher's stages are the ``train-teacher`` flow's tasks; the diffusion stages add conversion,
CFT, OPD, RL and the AR-vs-block speed comparison, and the evaluation task decodes converted
models at each threshold tau. Every task is cached on its stage's content-addressed output, so
re-running an unchanged recipe trains nothing. ``until`` stops after an earlier stage. The summary
is also written to ``<artifact_root>/reports/latest.json``, which ``dgr2 report`` prints.

Run it with ``dgr2 train-rl`` (``convert``, ``train-cft``, ``train-opd`` stop earlier) or
``python -m flows.recipe``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components import storage
from components.config import Config
from components.evaluation.speed import SPEED_STAGE, compare_speed
from components.reporting import recipe_summary_markdown
from components.training.diffusion import (
    CFT_STAGE,
    CONVERT_STAGE,
    DIFFUSION_RL_STAGE,
    OPD_STAGE,
    recipe_summary,
    run_cft,
    run_convert,
    run_diffusion,
    run_diffusion_rl,
    run_opd,
    teacher_model,
)
from components.training.teacher import run_teacher, training_inputs
from flows.caching import output_cache_key, task_runner
from flows.data import data_flow
from flows.teacher import TEACHER_TASKS


@task(name="convert", cache_key_fn=output_cache_key(CONVERT_STAGE, lambda p: {"model": p["model_uri"]}), persist_result=True)
def convert_task(cfg: dict[str, Any], model_uri: str) -> dict[str, Any]:
    return run_convert(Config.model_validate(cfg), model_uri).to_dict()


@task(
    name="cft",
    cache_key_fn=output_cache_key(CFT_STAGE, lambda p: training_inputs(p["model_uri"], p["dataset_uri"], p["sid_uri"], p["traces_uri"])),
    persist_result=True,
)
def cft_task(cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, traces_uri: str) -> dict[str, Any]:
    return run_cft(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, traces_uri).to_dict()


@task(
    name="speed",
    cache_key_fn=output_cache_key(
        SPEED_STAGE,
        lambda p: {
            "student": p["student_uri"],
            "teacher": p["teacher_uri"],
            "dataset": p["dataset_uri"],
            "sids": p["sid_uri"],
            "examples": p["examples_uri"],
        },
    ),
    persist_result=True,
)
def speed_task(cfg: dict[str, Any], student_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return compare_speed(Config.model_validate(cfg), student_uri, teacher_uri, dataset_uri, sid_uri, examples_uri).to_dict()


@task(
    name="opd",
    cache_key_fn=output_cache_key(
        OPD_STAGE,
        lambda p: training_inputs(p["model_uri"], p["dataset_uri"], p["sid_uri"], p["examples_uri"]) | {"teacher": p["teacher_uri"]},
    ),
    persist_result=True,
)
def opd_task(cfg: dict[str, Any], model_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return run_opd(Config.model_validate(cfg), model_uri, teacher_uri, dataset_uri, sid_uri, examples_uri).to_dict()


@task(
    name="diffusion-rl",
    cache_key_fn=output_cache_key(
        DIFFUSION_RL_STAGE, lambda p: training_inputs(p["model_uri"], p["dataset_uri"], p["sid_uri"], p["examples_uri"])
    ),
    persist_result=True,
)
def diffusion_rl_task(cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return run_diffusion_rl(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, examples_uri).to_dict()


RECIPE_TASKS = TEACHER_TASKS | {
    "convert": convert_task,
    "cft": cft_task,
    "opd": opd_task,
    "diffusion_rl": diffusion_rl_task,
    "speed": speed_task,
}


def latest_report_uri(cfg: Config) -> str:
    """Where the last recipe run's summary is kept (``dgr2 report`` reads it)."""
    return storage.join(cfg.storage.artifact_root, "reports", "latest.json")


@flow(name="recipe", log_prints=True)
def recipe_flow(cfg: dict[str, Any], until: str = "rl") -> dict[str, Any]:
    """Train the AR teacher, convert it to block diffusion, then CFT, OPD and RL; evaluate every model.

    Args:
        cfg: the resolved config (``Config.model_dump(mode="json")``).
        until: the last stage: ``"convert"``, ``"cft"``, ``"opd"`` or ``"rl"``.

    Returns:
        The summary: dataset version, model URIs, tau = 1 evaluations of every model (teacher
        included), the final model's tau sweep and speed comparison, and per-stage timings and facts.
    """
    started = time.perf_counter()
    config = Config.model_validate(cfg)
    data = data_flow(cfg)
    outputs = data["outputs"]
    run = task_runner(RECIPE_TASKS, cfg, get_run_logger())
    teacher = run_teacher(config, outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], run)
    teacher_uri = teacher_model(teacher)
    diffusion = run_diffusion(
        config, teacher_uri, outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], teacher["traces_uri"], run, until
    )
    summary = {"dataset_version": data["dataset_version"], "until": until} | recipe_summary(teacher, diffusion, teacher_uri)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    storage.write_json(latest_report_uri(config), summary, sort_keys=False)
    create_markdown_artifact(
        markdown=recipe_summary_markdown(summary), key="recipe-summary", description="AR teacher vs block-diffusion models"
    )
    return summary


if __name__ == "__main__":
    from components.config import load_config

    print(recipe_flow(load_config("configs/tiny.yaml").model_dump(mode="json")))
