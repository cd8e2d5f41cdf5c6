"""The base-model stage: a tokenizer and an untrained (or pretrained) model for the re-ranker.

Built from scratch (the CPU default), the BPE tokenizer learns from the text the model will read
and write: every item's category path and title, the prompts of a sample of examples, the
mid-training templates and the reasoning traces. Given ``model.base_model``, a local pretrained
causal LM is loaded instead and extended with the SID and mask tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from components.candidates.examples import read_examples
from components.config import Config
from components.modeling.factory import build_model, count_parameters, load_pretrained, save_model
from components.modeling.tokenizer import build_tokenizer
from components.prompts.catalog import load_catalog
from components.prompts.midtrain import candidate_recall_examples, caption_examples, next_item_examples
from components.prompts.render import ItemCatalog, answer_candidates, render_answer, render_example
from components.semantic_ids.build import read_sids
from components.semantic_ids.format import all_sid_tokens
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.traces.build import read_traces

BASE_MODEL_STAGE = StageSpec(
    "base_model", ("model", "prompts"), ("components/modeling", "components/prompts", "components/semantic_ids/format")
)
# Prompts sampled into the tokenizer's corpus: they repeat one template, so a few thousand teach
# BPE everything the rest would.
_TOKENIZER_PROMPTS = 2000


def base_model_inputs(dataset_uri: str, sid_uri: str, examples_uri: str, traces_uri: str) -> dict[str, str]:
    return {"dataset": dataset_uri, "sids": sid_uri, "examples": examples_uri, "traces": traces_uri}


def tokenizer_corpus(catalog: ItemCatalog, examples: pd.DataFrame, traces: pd.DataFrame, cfg: Config) -> Iterator[str]:
    """The text a from-scratch tokenizer is trained on (SID tokens in it are cut out by the trainer)."""
    item_ids = catalog.item_ids
    for pair in caption_examples(catalog, item_ids, reverse=True):
        yield pair.prompt + pair.target
    # One pair of each other mid-training task, for their template words.
    few = item_ids[:3]
    for pair in next_item_examples([few], catalog, cfg.candidates.history_max) + candidate_recall_examples([few], catalog):
        yield pair.prompt + pair.target
    sample = examples.sample(n=min(_TOKENIZER_PROMPTS, len(examples)), random_state=cfg.seed)
    for example in sample.to_dict("records"):
        for message in render_example(example, catalog, cfg.prompts):
            yield message["content"]
    for reasoning, ranking, candidates in zip(traces["reasoning"], traces["ranking"], traces["candidates"]):
        yield render_answer(reasoning, catalog.sids(list(ranking)), answer_candidates(catalog.sids(list(candidates)), cfg.prompts))


def build_base_model(cfg: Config, dataset_uri: str, sid_uri: str, examples_uri: str, traces_uri: str) -> StageResult:
    """Build the tokenizer and the model every training stage starts from.

    Args:
        cfg: run config (``cfg.model``: preset or base_model, BPE vocabulary size, max length).
        dataset_uri, sid_uri, examples_uri, traces_uri: outputs of the earlier stages.

    Returns:
        ``outputs``: ``model_uri`` (a ``save_model`` directory); ``metrics``: parameters and
        vocabulary size.
    """
    uri = BASE_MODEL_STAGE.output_uri(cfg, base_model_inputs(dataset_uri, sid_uri, examples_uri, traces_uri))
    if (cached := cached_result(uri, "model_uri", cfg.storage.work_dir)) is not None:
        return cached
    work_dir = cfg.storage.work_dir
    codes = read_sids(sid_uri, work_dir)["codes"]
    levels = len(codes.iloc[0])
    sizes = [int(max(row[level] for row in codes)) + 1 for level in range(levels)]
    sid_tokens = all_sid_tokens(levels, sizes)
    if cfg.model.base_model:
        model, tokenizer = load_pretrained(cfg.model.base_model, sid_tokens)
    else:
        catalog = load_catalog(dataset_uri, sid_uri, work_dir)
        corpus = tokenizer_corpus(catalog, read_examples(examples_uri, work_dir), read_traces(traces_uri, work_dir), cfg)
        tokenizer = build_tokenizer(corpus, sid_tokens, cfg.model.bpe_vocab_size)
        model = build_model(cfg.model, tokenizer, seed=cfg.seed)
    metrics = {
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "source": cfg.model.base_model or f"preset:{cfg.model.preset}",
    }
    with publishing(uri, work_dir, metrics) as out:
        save_model(model, tokenizer, out, {"stage": "base_model", "sid_level_sizes": sizes, **metrics})
    return StageResult({"model_uri": uri}, metrics)
