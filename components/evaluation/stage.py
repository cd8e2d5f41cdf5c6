"""The evaluation stage: a model directory -> its metrics on the test users or the gate's valid sample.

Greedy decoding, as the papers report: AR decoding for the teacher, parallel block decoding at a
threshold tau for a converted model. The test slice covers every test user (or only the fixed
test sample, ``evaluation.test_users: sample``) and always reports the sample as its own slice,
so numbers compare with the papers' 1,615-user protocol.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import torch

from components import storage
from components.candidates.examples import read_examples, split_examples
from components.config import Config
from components.decoding.ar import generate
from components.decoding.block import generate_blocks
from components.decoding.speculative import generate_speculative
from components.evaluation.runner import evaluate_decoder
from components.modeling.block_diffusion import is_block_diffusion
from components.modeling.factory import load_model
from components.prompts.catalog import load_catalog
from components.prompts.render import render_prompts
from components.stage import StageResult, StageSpec, cached_result, publishing

# Modeling is in the code: the block attention masks the decoders use live there.
EVALUATION_STAGE = StageSpec(
    "evaluation",
    ("evaluation", "prompts", "candidates"),
    ("components/evaluation", "components/rank_metrics", "components/decoding", "components/modeling", "components/prompts"),
)


# What an evaluation scores: "" the report's test users (Table 1 and 2), "quick" fewer of them (an
# intermediate stage, when the budget needs it), "gate" the valid split the promotion gates decide on.
SCOPES = ("", "quick", "gate")


def evaluation_inputs(
    model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str, threshold: str = "", scope: str = ""
) -> dict[str, str]:
    inputs = {"model": model_uri, "dataset": dataset_uri, "sids": sid_uri, "examples": examples_uri}
    return inputs | ({"threshold": threshold} if threshold else {}) | ({"scope": scope} if scope else {})


def model_decoder(model: Any, tokenizer: Any, cfg: Config, threshold: float | None = None, batch_size: int | None = None) -> Any:
    """Greedy decoding of prompts with ``model``: AR, or block decoding at ``threshold`` (default:
    the serving tau) for a converted model."""
    batch_size = batch_size or cfg.evaluation.decode_batch_size
    if is_block_diffusion(model):
        tau = cfg.evaluation.serving_threshold if threshold is None else threshold
        return partial(generate_blocks, model, tokenizer, max_new_tokens=cfg.evaluation.max_new_tokens, threshold=tau, batch_size=batch_size)
    if threshold is not None:
        raise ValueError("a threshold applies to a block-diffusion model only; this model is autoregressive")
    return partial(generate, model, tokenizer, max_new_tokens=cfg.evaluation.max_new_tokens, batch_size=batch_size)


def speculative_decoder(teacher: Any, student: Any, tokenizer: Any, cfg: Config, batch_size: int | None = None) -> Any:
    """Greedy decoding of prompts by the AR ``teacher``, drafted by its block-diffusion ``student``
    (lossless: the teacher's own output)."""
    return partial(
        generate_speculative,
        teacher,
        student,
        tokenizer,
        max_new_tokens=cfg.evaluation.max_new_tokens,
        draft_steps=cfg.evaluation.draft_steps,
        batch_size=batch_size or cfg.evaluation.decode_batch_size,
    )


def evaluation_examples(examples: pd.DataFrame, cfg: Config, scope: str = "") -> dict[str, pd.DataFrame]:
    """The examples a scope scores: the configured test users ("" and, fewer of them, "quick"), or
    a seeded sample of the valid split ("gate"); see ``SCOPES``."""
    ecfg = cfg.evaluation
    if scope not in SCOPES:
        raise ValueError(f"evaluation scope must be one of {SCOPES}, got {scope!r}")
    if scope == "gate":
        return {"valid": split_examples(examples, "valid", ecfg.valid_examples, ecfg.seed)}
    test = examples[examples["in_test_sample"]] if ecfg.test_users == "sample" else examples
    limit = ecfg.quick_test_examples if scope == "quick" and ecfg.quick_test_examples else ecfg.max_test_examples
    return {"test": split_examples(test, "test", limit, ecfg.seed)}


def evaluate_model(
    cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str, threshold: str = "", scope: str = ""
) -> StageResult:
    """Decode every evaluation prompt greedily and score the answers against the floor.

    Args:
        cfg: run config (``cfg.evaluation``: users, sample sizes, decoding, bootstrap).
        model_uri: a ``save_model`` directory.
        dataset_uri, sid_uri, examples_uri: the data flow's outputs.
        threshold: tau for a block-diffusion model, as text (stage inputs are strings); empty
            means the serving tau. Must be empty for an AR model.
        scope: which examples (``SCOPES``): the test users, fewer of them, or the gate's valid sample.

    Returns:
        ``outputs``: ``evaluation_uri``; ``metrics``: ``{"test": {...}}`` (or ``{"valid": {...}}``
        for the gate scope) as :func:`components.evaluation.runner.evaluate_decoder` returns it.
    """
    uri = EVALUATION_STAGE.output_uri(cfg, evaluation_inputs(model_uri, dataset_uri, sid_uri, examples_uri, threshold, scope))
    if (cached := cached_result(uri, "evaluation_uri", cfg.storage.work_dir)) is not None:
        return cached
    work_dir = cfg.storage.work_dir
    model, tokenizer, _ = load_model(storage.fetch_dir(model_uri, work_dir))
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    catalog = load_catalog(dataset_uri, sid_uri, work_dir)
    decode = model_decoder(model, tokenizer, cfg, float(threshold) if threshold else None)
    report: dict[str, Any] = {}
    for split, examples in evaluation_examples(read_examples(examples_uri, work_dir), cfg, scope).items():
        prompts = render_prompts(tokenizer, examples, catalog, cfg.prompts)
        report[split] = evaluate_decoder(decode, prompts, examples, catalog, cfg.evaluation)
    with publishing(uri, work_dir, report):
        pass
    return StageResult({"evaluation_uri": uri}, report)
