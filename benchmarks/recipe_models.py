"""The latest recipe run's AR teacher and final student, with the test-sample prompts they are
scored on (shared by the decoding benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from cli_run import REPO_ROOT, run_dgr2
from components import storage
from components.candidates.examples import read_examples
from components.config import Config, load_config
from components.evaluation.stage import evaluation_examples
from components.modeling.factory import load_model
from components.prompts.catalog import load_catalog
from components.prompts.render import ItemCatalog, render_prompts


@dataclass
class RecipeModels:
    cfg: Config
    summary: dict[str, Any]
    teacher: Any
    student: Any
    tokenizer: Any
    catalog: ItemCatalog
    # The test-sample examples and their rendered prompts, in the same order.
    test: pd.DataFrame
    prompts: list[str]


def latest_recipe_models(config: str, max_prompts: int = 0) -> RecipeModels:
    """``dgr2 report``'s teacher and CFT+OPD+RL student, and the first ``max_prompts`` test-sample
    prompts (0: all of them)."""
    cfg = load_config(REPO_ROOT / config)
    _, data = run_dgr2("data", config, [])
    _, summary = run_dgr2("report", config, [])
    outputs, work_dir = data["outputs"], cfg.storage.work_dir
    teacher, tokenizer, _ = load_model(storage.fetch_dir(summary["teacher_model_uri"], work_dir))
    student, _, _ = load_model(storage.fetch_dir(summary["models"]["CFT+OPD+RL"], work_dir))
    catalog = load_catalog(outputs["dataset_uri"], outputs["sid_uri"], work_dir)
    test = evaluation_examples(read_examples(outputs["examples_uri"], work_dir), cfg)["test"]
    if max_prompts:
        test = test.head(max_prompts)
    return RecipeModels(cfg, summary, teacher, student, tokenizer, catalog, test, render_prompts(tokenizer, test, catalog, cfg.prompts))
