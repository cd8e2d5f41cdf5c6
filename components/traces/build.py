"""The traces stage: training examples -> reasoning traces for SFT (GR2 stage 2).

The configured teacher writes a trace and a ranking per training example; rejection sampling keeps
those whose ranking puts the target first (``components.traces.sampling``). Output: a directory
with ``traces.parquet`` (the example columns plus ``reasoning``, ``ranking``, ``tries``) and the
acceptance statistics.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from components import storage
from components.candidates.examples import read_examples, split_examples
from components.config import Config
from components.data.ingest import load_dataset
from components.data.splits import training_interactions
from components.prompts.catalog import load_catalog
from components.prompts.render import ItemCatalog
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.traces.analyst import AnalystStats, AnalystTeacher, trace_length
from components.traces.openai_client import OpenAITeacher
from components.traces.sampling import generate_traces
from components.traces.teacher import TraceTeacher

# The prompts section decides how the traces cite items and what the chat teacher is asked.
TRACES_STAGE = StageSpec("traces", ("traces", "prompts"), ("components/traces", "components/prompts", "components/data/splits", "feature_repo/co_purchase"))


def traces_inputs(dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, str]:
    return {"dataset": dataset_uri, "sids": sid_uri, "examples": examples_uri}


def read_traces(traces_uri: str, work_dir: str | Path) -> pd.DataFrame:
    """The accepted traces: example columns plus reasoning, ranking (item ids) and tries."""
    return pd.read_parquet(storage.fetch_dir(traces_uri, work_dir) / "traces.parquet")


def _teacher(cfg: Config, dataset_uri: str, catalog: ItemCatalog) -> contextlib.AbstractContextManager[TraceTeacher]:
    if cfg.traces.teacher == "openai":
        return OpenAITeacher.from_config(cfg.traces, cfg.prompts)
    stats = AnalystStats.fit(training_interactions(load_dataset(dataset_uri, cfg.storage.work_dir).interactions), catalog)
    return contextlib.nullcontext(AnalystTeacher.from_config(stats, cfg.traces, cfg.prompts))


def build_traces(cfg: Config, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """Write and filter reasoning traces for (a seeded sample of) the training examples.

    Args:
        cfg: run config (``cfg.traces``: teacher, mode, tries, sample size, seed).
        dataset_uri, sid_uri, examples_uri: outputs of the data flow.

    Returns:
        ``outputs``: ``traces_uri``; ``metrics``: examples, dropped, acceptance_rate, mean_tries,
        proposals and the mean trace length (``trace_length`` units, the paper's ~130 tokens).
    """
    uri = TRACES_STAGE.output_uri(cfg, traces_inputs(dataset_uri, sid_uri, examples_uri))
    if (cached := cached_result(uri, "traces_uri", cfg.storage.work_dir)) is not None:
        return cached
    work_dir = cfg.storage.work_dir
    catalog = load_catalog(dataset_uri, sid_uri, work_dir)
    train = split_examples(read_examples(examples_uri, work_dir), "train", cfg.traces.max_examples, cfg.traces.seed)
    with _teacher(cfg, dataset_uri, catalog) as teacher:
        accepted, stats = generate_traces(train, teacher, catalog, cfg.traces)
    metrics: dict[str, float | int | str] = dict(stats)
    metrics["teacher"] = cfg.traces.teacher
    metrics["mode"] = cfg.traces.mode
    metrics["mean_trace_length"] = float(accepted["reasoning"].map(trace_length).mean()) if len(accepted) else 0.0
    with publishing(uri, work_dir, metrics) as out:
        accepted.to_parquet(out / "traces.parquet", index=False)
    return StageResult({"traces_uri": uri}, metrics)
