"""The ``train-teacher`` flow: data -> traces -> base model -> mid-training -> SFT -> RL, evaluated.

The AR teacher (GR2) is the accuracy reference the block-diffusion student must match. Every stage
is a task around one component function, cached on its content-addressed output like the data
flow's, so re-running an unchanged recipe trains nothing and a changed stage re-runs with
everything after it. The SFT and RL models are both evaluated, so the summary shows what RL adds.
SASRec, a sequential-recommender baseline, is trained and scored on the same examples first.

Run it with ``dgr2 train-teacher`` or ``python -m flows.teacher``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.baselines.stage import SASREC_STAGE, run_sasrec, sasrec_inputs
from components.config import Config
from components.evaluation.stage import EVALUATION_STAGE, evaluate_model, evaluation_inputs
from components.modeling.build import BASE_MODEL_STAGE, base_model_inputs, build_base_model
from components.reporting import teacher_summary_markdown
from components.traces.build import TRACES_STAGE, build_traces, traces_inputs
from components.training.teacher import (
    MIDTRAIN_STAGE,
    RL_STAGE,
    SFT_STAGE,
    run_midtrain,
    run_rl,
    run_sft,
    run_teacher,
    training_inputs,
)
from flows.caching import output_cache_key, task_runner
from flows.data import data_flow


def _training_key(spec: Any, data_parameter: str) -> Any:
    """Cache key of a training task: its start model, catalog and the parameter naming its training data."""
    return output_cache_key(spec, lambda p: training_inputs(p["model_uri"], p["dataset_uri"], p["sid_uri"], p[data_parameter]))


@task(name="traces", cache_key_fn=output_cache_key(TRACES_STAGE, lambda p: traces_inputs(p["dataset_uri"], p["sid_uri"], p["examples_uri"])), persist_result=True)
def traces_task(cfg: dict[str, Any], dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return build_traces(Config.model_validate(cfg), dataset_uri, sid_uri, examples_uri).to_dict()


@task(
    name="base-model",
    cache_key_fn=output_cache_key(
        BASE_MODEL_STAGE, lambda p: base_model_inputs(p["dataset_uri"], p["sid_uri"], p["examples_uri"], p["traces_uri"])
    ),
    persist_result=True,
)
def base_model_task(cfg: dict[str, Any], dataset_uri: str, sid_uri: str, examples_uri: str, traces_uri: str) -> dict[str, Any]:
    return build_base_model(Config.model_validate(cfg), dataset_uri, sid_uri, examples_uri, traces_uri).to_dict()


@task(name="midtrain", cache_key_fn=_training_key(MIDTRAIN_STAGE, "examples_uri"), persist_result=True)
def midtrain_task(cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return run_midtrain(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, examples_uri).to_dict()


@task(name="sft", cache_key_fn=_training_key(SFT_STAGE, "traces_uri"), persist_result=True)
def sft_task(cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, traces_uri: str) -> dict[str, Any]:
    return run_sft(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, traces_uri).to_dict()


@task(name="rl", cache_key_fn=_training_key(RL_STAGE, "examples_uri"), persist_result=True)
def rl_task(cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, Any]:
    return run_rl(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, examples_uri).to_dict()


@task(
    name="evaluate",
    cache_key_fn=output_cache_key(
        EVALUATION_STAGE,
        lambda p: evaluation_inputs(
            p["model_uri"], p["dataset_uri"], p["sid_uri"], p["examples_uri"], p.get("threshold", ""), p.get("scope", "")
        ),
    ),
    persist_result=True,
)
def evaluate_task(
    cfg: dict[str, Any], model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str, threshold: str = "", scope: str = ""
) -> dict[str, Any]:
    return evaluate_model(Config.model_validate(cfg), model_uri, dataset_uri, sid_uri, examples_uri, threshold, scope).to_dict()


@task(name="sasrec", cache_key_fn=output_cache_key(SASREC_STAGE, lambda p: sasrec_inputs(p["dataset_uri"], p["examples_uri"])), persist_result=True)
def sasrec_task(cfg: dict[str, Any], dataset_uri: str, examples_uri: str) -> dict[str, Any]:
    return run_sasrec(Config.model_validate(cfg), dataset_uri, examples_uri).to_dict()


TEACHER_TASKS = {
    "traces": traces_task,
    "base_model": base_model_task,
    "midtrain": midtrain_task,
    "sft": sft_task,
    "rl": rl_task,
    "evaluate": evaluate_task,
    "sasrec": sasrec_task,
}


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
    run = task_runner(TEACHER_TASKS, cfg, get_run_logger())
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
