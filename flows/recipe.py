"""The ``recipe`` flow: data -> AR teacher -> block-diffusion conversion -> CFT, evaluated.

The teacher's stages are the ``train-teacher`` flow's tasks; the diffusion stages add conversion,
CFT and the AR-vs-block speed comparison, and the evaluation task decodes converted models at each
threshold tau. Every task is cached on its stage's content-addressed output, so re-running an
unchanged recipe trains nothing. ``until="convert"`` stops after the naive conversion's evaluation.

Run it with ``dgr2 train-cft`` (``dgr2 convert`` for the first half) or ``python -m flows.recipe``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.config import Config
from components.evaluation.speed import SPEED_STAGE, compare_speed
from components.reporting import recipe_summary_markdown
from components.training.diffusion import CFT_STAGE, CONVERT_STAGE, run_cft, run_convert, run_diffusion
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


RECIPE_TASKS = TEACHER_TASKS | {"convert": convert_task, "cft": cft_task, "speed": speed_task}


@flow(name="recipe", log_prints=True)
def recipe_flow(cfg: dict[str, Any], until: str = "cft") -> dict[str, Any]:
    """Train the AR teacher, convert it to block diffusion and fine-tune it; evaluate every model.

    Args:
        cfg: the resolved config (``Config.model_dump(mode="json")``).
        until: ``"convert"`` stops after the naive conversion, ``"cft"`` runs CFT and the tau sweep.

    Returns:
        The summary: dataset version, model URIs, evaluations (teacher, naive, CFT per tau), the
        speed comparison, and per-stage timings and facts.
    """
    started = time.perf_counter()
    config = Config.model_validate(cfg)
    data = data_flow(cfg)
    outputs = data["outputs"]
    run = task_runner(RECIPE_TASKS, cfg, get_run_logger())
    teacher = run_teacher(config, outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], run)
    teacher_uri = teacher["models"].get("SFT+RL", teacher["models"]["SFT"])
    diffusion = run_diffusion(
        config, teacher_uri, outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], teacher["traces_uri"], run, until
    )
    summary = {
        "dataset_version": data["dataset_version"],
        "teacher_model_uri": teacher_uri,
        "models": teacher["models"] | diffusion["models"],
        "evaluations": teacher["evaluations"] | diffusion["evaluations"],
        "speed": diffusion["speed"],
        "stages": teacher["stages"] | diffusion["stages"],
        "stage_metrics": teacher["stage_metrics"] | diffusion["stage_metrics"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    create_markdown_artifact(
        markdown=recipe_summary_markdown(summary), key="recipe-summary", description="AR teacher vs block-diffusion models"
    )
    return summary


if __name__ == "__main__":
    from components.config import load_config

    print(recipe_flow(load_config("configs/tiny.yaml").model_dump(mode="json")))
