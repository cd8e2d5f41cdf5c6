"""The ``data`` flow: ingest -> validate -> semantic IDs -> features -> candidates -> examples.

Each step is a task around one component function. Steps that publish an output are cached on
that output (flows.caching), so a second run with the same inputs, config and code replays every
step from the cache. Ingest is never cached by Prefect: the same source path may hold new data,
and ingest's own input digest already makes a repeat ingest do no work.

Run it with ``dgr2 data`` or ``python -m flows.data``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.candidates.build import CANDIDATES_STAGE, build_candidates
from components.candidates.examples import EXAMPLES_STAGE, build_examples, examples_inputs
from components.config import Config
from components.data.ingest import ingest
from components.reporting import data_summary_markdown
from components.semantic_ids.build import SEMANTIC_IDS_STAGE, build_semantic_ids
from feature_repo.stage import FEATURES_STAGE, build_features, features_inputs, features_ready
from flows.caching import check_cache_key, io_error, output_cache_key, run_stage


@task(name="ingest", retries=3, retry_delay_seconds=[2, 8, 30], retry_condition_fn=io_error)
def ingest_task(cfg: dict[str, Any]) -> dict[str, Any]:
    return ingest(Config.model_validate(cfg)).to_dict()


@task(name="validate-dataset", cache_key_fn=check_cache_key(("validation",), ("components/data/validation", "components/data/ingest"), ("dataset_uri",)), persist_result=True)
def validate_dataset_task(cfg: dict[str, Any], dataset_uri: str) -> dict[str, Any]:
    # Great Expectations takes seconds to import; a run whose checks are cached never needs it.
    from components.data.validation import validate_dataset

    return validate_dataset(Config.model_validate(cfg), dataset_uri).to_dict()


@task(name="semantic-ids", cache_key_fn=output_cache_key(SEMANTIC_IDS_STAGE, lambda p: {"dataset": p["dataset_uri"]}), persist_result=True)
def semantic_ids_task(cfg: dict[str, Any], dataset_uri: str) -> dict[str, Any]:
    return build_semantic_ids(Config.model_validate(cfg), dataset_uri).to_dict()


@task(
    name="features",
    cache_key_fn=output_cache_key(FEATURES_STAGE, lambda p: features_inputs(p["dataset_uri"], p["sid_uri"]), features_ready),
    persist_result=True,
)
def features_task(cfg: dict[str, Any], dataset_uri: str, sid_uri: str) -> dict[str, Any]:
    return build_features(Config.model_validate(cfg), dataset_uri, sid_uri).to_dict()


@task(name="candidates", cache_key_fn=output_cache_key(CANDIDATES_STAGE, lambda p: {"dataset": p["dataset_uri"]}), persist_result=True)
def candidates_task(cfg: dict[str, Any], dataset_uri: str) -> dict[str, Any]:
    return build_candidates(Config.model_validate(cfg), dataset_uri).to_dict()


@task(
    name="examples",
    cache_key_fn=output_cache_key(
        EXAMPLES_STAGE, lambda p: examples_inputs(p["dataset_uri"], p["sid_uri"], p["candidates_uri"], p["feature_store_dir"])
    ),
    persist_result=True,
)
def examples_task(cfg: dict[str, Any], dataset_uri: str, sid_uri: str, candidates_uri: str, feature_store_dir: str | None) -> dict[str, Any]:
    return build_examples(Config.model_validate(cfg), dataset_uri, sid_uri, candidates_uri, feature_store_dir).to_dict()


@task(name="validate-examples", cache_key_fn=check_cache_key(("validation", "candidates"), ("components/candidates/validation", "components/data/validation", "components/data/ingest"), ("examples_uri", "dataset_uri")), persist_result=True)
def validate_examples_task(cfg: dict[str, Any], examples_uri: str, dataset_uri: str) -> dict[str, Any]:
    from components.candidates.validation import validate_examples

    return validate_examples(Config.model_validate(cfg), examples_uri, dataset_uri).to_dict()


@flow(name="data", log_prints=True)
def data_flow(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build a validated dataset version, semantic IDs, features and re-ranking examples.

    Args:
        cfg: the resolved config (``Config.model_dump(mode="json")``).

    Returns:
        A summary: dataset version, per-stage outputs, metrics, timings and cache hits.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    stages["ingest"] = run_stage(ingest_task, cfg)
    dataset_uri = stages["ingest"]["outputs"]["dataset_uri"]
    logger.info("dataset version %s", stages["ingest"]["outputs"]["dataset_version"])
    stages["validate_dataset"] = run_stage(validate_dataset_task, cfg, dataset_uri)
    stages["semantic_ids"] = run_stage(semantic_ids_task, cfg, dataset_uri)
    sid_uri = stages["semantic_ids"]["outputs"]["sid_uri"]
    feature_store_dir = None
    if cfg["features"]["enabled"]:
        stages["features"] = run_stage(features_task, cfg, dataset_uri, sid_uri)
        feature_store_dir = stages["features"]["outputs"]["feature_store_dir"]
    stages["candidates"] = run_stage(candidates_task, cfg, dataset_uri)
    candidates_uri = stages["candidates"]["outputs"]["candidates_uri"]
    stages["examples"] = run_stage(examples_task, cfg, dataset_uri, sid_uri, candidates_uri, feature_store_dir)
    stages["validate_examples"] = run_stage(validate_examples_task, cfg, stages["examples"]["outputs"]["examples_uri"], dataset_uri)

    summary = {
        "dataset_version": stages["ingest"]["outputs"]["dataset_version"],
        "outputs": {k: v for stage in stages.values() for k, v in stage["outputs"].items()},
        "dataset": stages["ingest"]["metrics"],
        "semantic_ids": stages["semantic_ids"]["metrics"],
        "floors": stages["candidates"]["metrics"]["floors"],
        "examples": stages["candidates"]["metrics"]["examples"],
        "leakage_check": {
            "train_valid_recall_at_1_relative_gap": stages["candidates"]["metrics"]["train_valid_recall_at_1_relative_gap"],
            "passed": stages["candidates"]["metrics"]["train_valid_recall_at_1_relative_gap"] <= 0.2,
        },
        "stage_seconds": {name: stage.get("seconds") for name, stage in stages.items()},
        "cached": {name: stage.get("cached", False) for name, stage in stages.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    create_markdown_artifact(
        markdown=data_summary_markdown(summary), key="data-summary", description="Dataset version, SID report and floor table"
    )
    return summary


if __name__ == "__main__":
    from components.config import load_config

    print(data_flow(load_config("configs/tiny.yaml").model_dump(mode="json")))
