"""The ``train-teacher`` flow: data -> traces -> base model -> mid-training -> SFT -> RL, evaluated.

The AR teacher (GR2) is the accuracy reference the block-diffusion student must match. Every stage
is a task around one row of the recipe's stage table (``flows.stages``), cached on its
content-addressed output like the data flow's, so re-running an unchanged recipe trains nothing and a changed stage re-runs with
everything after it. The SFT and RL models are both evaluated, so the summary shows what RL adds.
SASRec, a sequential-recommender baseline, is trained and scored on the same examples first.

Run it with ``dgr2 train-teacher`` or ``python -m flows.teacher``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.config import Config
from components.recipe.run import run_teacher
from components.reporting import teacher_summary_markdown
from flows.caching import task_runner
from flows.data import data_flow
from flows.stages import STAGE_TASKS


@flow(name="train-teacher", log_prints=True)
def teacher_flow(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate the AR teacher on a (cached) data flow's outputs.

    Args:
        cfg: the resolved config (``Config.model_dump(mode="json")``).

    Returns:
        A summary: dataset version, model URIs, per-stage metrics and timings, and the evaluation
        of the SFT and RL models (each with the floor on the same examples).
    """
    started = time.perf_counter()
    data = data_flow(cfg)
    outputs = data["outputs"]
    run = task_runner(STAGE_TASKS, cfg, get_run_logger())
    summary = {"dataset_version": data["dataset_version"]}
    summary |= run_teacher(Config.model_validate(cfg), outputs["dataset_uri"], outputs["sid_uri"], outputs["examples_uri"], run)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    create_markdown_artifact(
        markdown=teacher_summary_markdown(summary), key="teacher-summary", description="AR teacher: floor vs SFT vs RL"
    )
    return summary


if __name__ == "__main__":
    from components.config import load_config

    print(teacher_flow(load_config("configs/tiny.yaml").model_dump(mode="json")))
