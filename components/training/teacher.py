"""The AR teacher's training stages (GR2): SID mid-training -> SFT -> DAPO RL.

Each stage reads a model directory, trains it with the shared loop and publishes the result as a
new model directory (``save_model`` layout plus ``metrics.json`` and ``history.json``, the logged
metrics per step). Checkpoints live under ``<work_dir>/checkpoints/<stage>/<output key>``: a run
killed mid-stage and started again with the same inputs resumes from the last one; they are
removed once the model is published.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from components import storage
from components.candidates.examples import read_examples, split_examples
from components.config import Config, TrainingConfig
from components.data.ingest import load_dataset
from components.data.splits import training_interactions
from components.modeling.factory import load_model, save_model
from components.prompts.catalog import load_catalog
from components.prompts.midtrain import candidate_recall_examples, caption_examples, next_item_examples
from components.prompts.render import ItemCatalog, answer_candidates, render_example
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.traces.build import read_traces
from components.training.loop import BatchFn, LossFn, TrainResult, batch_indices, length_sorted_micro_batch, train
from components.training.midtrain import encode_pairs
from components.training.rl import RerankPrompt, ar_policy, dapo_loss_fn, frozen_copy, rerank_prompts
from components.training.sft import EncodedExample, ExampleTooLong, collate, encode_sft_example, weighted_lm_loss

# The modules a teacher stage runs; the diffusion stages' modules are left out so that changing
# them does not retrain the teacher.
_TRAINING_CODE = (
    *(f"components/training/{m}" for m in ("loop", "sft", "midtrain", "rl", "dapo", "reward", "logprobs", "teacher")),
    *(f"components/modeling/{m}" for m in ("factory", "tokenizer", "build")),
    "components/prompts",
    "components/decoding/ar",
    "components/data/splits",
)
MIDTRAIN_STAGE = StageSpec("midtrain", ("midtrain", "training", "candidates", "model"), _TRAINING_CODE)
SFT_STAGE = StageSpec("sft", ("sft", "training", "prompts", "model"), _TRAINING_CODE)
RL_STAGE = StageSpec("rl", ("rl", "training", "prompts"), _TRAINING_CODE)


def training_inputs(model_uri: str, dataset_uri: str, sid_uri: str, data_uri: str) -> dict[str, str]:
    """A training stage's inputs: the model it starts from, the catalog, and its training data."""
    return {"model": model_uri, "dataset": dataset_uri, "sids": sid_uri, "data": data_uri}



def _is_master() -> bool:
    # Under torchrun every rank trains, only rank 0 publishes.
    return int(os.environ.get("RANK", "0")) == 0


def train_stage(
    cfg: Config,
    spec: StageSpec,
    training: TrainingConfig,
    inputs: dict[str, str],
    build: Callable[[Any, Any, ItemCatalog, dict[str, Any]], tuple[BatchFn, LossFn]],
) -> StageResult:
    """What every training stage does around its own data: find a cached output, or load the start
    model (``inputs["model"]``) and catalog, let ``build(model, tokenizer, catalog, metrics)`` give
    (batches, loss_fn) and add its counts to ``metrics``, train, and publish the trained model.
    """
    uri = spec.output_uri(cfg, inputs)
    if (cached := cached_result(uri, "model_uri", cfg.storage.work_dir)) is not None:
        return cached
    model_uri = inputs["model"]
    metrics: dict[str, Any] = {}
    work_dir = cfg.storage.work_dir
    model, tokenizer, parent_meta = load_model(storage.fetch_dir(model_uri, work_dir))
    catalog = load_catalog(inputs["dataset"], inputs["sids"], work_dir)
    batches, loss_fn = build(model, tokenizer, catalog, metrics)
    checkpoints = Path(work_dir) / "checkpoints" / spec.name / uri.rstrip("/").rsplit("/", 1)[-1]
    history: list[dict[str, float]] = []
    result: TrainResult = train(
        model.train(),
        batches,
        loss_fn,
        training,
        checkpoints,
        on_metrics=lambda step, values: history.append({"step": step, **values}),
        metadata={"stage": spec.name, "output_uri": uri, "parent_model_uri": model_uri},
    )
    metrics |= {
        "final_loss": result.final_loss,
        "steps": result.steps,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "wall_time_s": round(result.wall_time_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "last_logged": history[-1] if history else {},
    }
    if _is_master():
        with publishing(uri, work_dir, metrics) as out:
            save_model(model.cpu(), tokenizer, out, parent_meta | {"stage": spec.name, "parent_model_uri": model_uri})
            (out / "history.json").write_text(json.dumps(history))
        shutil.rmtree(checkpoints, ignore_errors=True)
    return StageResult({"model_uri": uri}, metrics)


def encoded_traces(cfg: Config, tokenizer: Any, catalog: ItemCatalog, traces_uri: str, metrics: dict[str, Any]) -> list[EncodedExample]:
    """The accepted traces encoded for SFT (reasoning weighted lambda_r, answer lambda_o); the
    example count and the examples dropped as longer than ``model.max_length`` go to ``metrics``."""
    traces = read_traces(traces_uri, cfg.storage.work_dir)
    encoded, too_long = [], 0
    for row in traces.itertuples(index=False):
        messages = render_example(row._asdict(), catalog, cfg.prompts)
        try:
            encoded.append(
                encode_sft_example(
                    tokenizer,
                    messages,
                    row.reasoning,
                    catalog.sids(list(row.ranking)),
                    cfg.sft,
                    cfg.model.max_length,
                    answer_candidates(catalog.sids(list(row.candidates)), cfg.prompts),
                )
            )
        except ExampleTooLong:
            too_long += 1
    metrics.update(examples=len(encoded), dropped_too_long=too_long)
    return encoded


def _weighted_lm(encoded: list[EncodedExample], training: TrainingConfig, tokenizer: Any) -> tuple[BatchFn, LossFn]:
    if not encoded:
        raise ValueError("no training examples fit model.max_length")
    lengths = [len(example.input_ids) for example in encoded]

    def batches(index: int) -> dict[str, Any]:
        return collate([encoded[i] for i in length_sorted_micro_batch(lengths, training, index)], tokenizer.pad_token_id)

    return batches, weighted_lm_loss


def _sample(pairs: list[Any], limit: int, seed: int) -> list[Any]:
    """A seeded sample of ``limit`` pairs in their original order; 0 keeps all."""
    if not 0 < limit < len(pairs):
        return pairs
    keep = pd.Series(range(len(pairs))).sample(n=limit, random_state=seed).sort_values()
    return [pairs[i] for i in keep]


def run_midtrain(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """GR2 stage 1: next-item SID prediction, SID <-> text captioning and candidate recall.

    Args:
        cfg: run config (``cfg.midtrain`` over ``cfg.training``).
        model_uri: the base model.
        dataset_uri, sid_uri, examples_uri: the dataset version, its SIDs and the examples (whose
            training candidate lists feed candidate recall).

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: example counts, final loss, tokens/s, wall time.
    """
    training = cfg.midtrain.training(cfg.training)
    mcfg = cfg.midtrain

    def build(_model: Any, tokenizer: Any, catalog: ItemCatalog, metrics: dict[str, Any]) -> tuple[BatchFn, LossFn]:
        work_dir = cfg.storage.work_dir
        # Only training positions: the valid and test targets must stay unseen.
        train_rows = training_interactions(load_dataset(dataset_uri, work_dir).interactions)
        ordered = train_rows.sort_values(["user_id", "position"], kind="stable")
        sequences = ordered.groupby("user_id", sort=False)["item_id"].agg(list).tolist()
        next_items = _sample(next_item_examples(sequences, catalog, cfg.candidates.history_max), mcfg.max_next_item_examples, training.seed)
        captions = _sample(caption_examples(catalog, catalog.item_ids, reverse=mcfg.caption_reverse), mcfg.max_caption_examples, training.seed)
        recall = []
        if mcfg.candidate_recall_examples:
            lists = split_examples(read_examples(examples_uri, work_dir), "train", mcfg.candidate_recall_examples, training.seed)
            recall = candidate_recall_examples(lists["candidates"], catalog)
        metrics.update(next_item_examples=len(next_items), caption_examples=len(captions), candidate_recall_examples=len(recall))
        pairs = next_items + captions + recall
        return _weighted_lm(encode_pairs(tokenizer, pairs, cfg.model.max_length), training, tokenizer)

    return train_stage(cfg, MIDTRAIN_STAGE, training, training_inputs(model_uri, dataset_uri, sid_uri, examples_uri), build)


def run_sft(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, traces_uri: str) -> StageResult:
    """GR2 stage 2: SFT on the accepted traces, reasoning tokens weighted lambda_r, the rest lambda_o.

    Args:
        cfg: run config (``cfg.sft`` over ``cfg.training``).
        model_uri: the mid-trained (or base) model.
        dataset_uri, sid_uri: the dataset version and its SIDs.
        traces_uri: the traces stage's output.

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: examples used and dropped as too long, final loss,
        tokens/s, wall time.
    """
    training = cfg.sft.training(cfg.training)

    def build(_model: Any, tokenizer: Any, catalog: ItemCatalog, metrics: dict[str, Any]) -> tuple[BatchFn, LossFn]:
        return _weighted_lm(encoded_traces(cfg, tokenizer, catalog, traces_uri, metrics), training, tokenizer)

    return train_stage(cfg, SFT_STAGE, training, training_inputs(model_uri, dataset_uri, sid_uri, traces_uri), build)


def run_rl(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """GR2 stage 3: DAPO on training prompts with the conditional re-ranking reward.

    ``batch_size`` counts prompts here; each brings ``rl.group_size`` rollouts.

    Args:
        cfg: run config (``cfg.rl`` over ``cfg.training``).
        model_uri: the SFT model.
        dataset_uri, sid_uri, examples_uri: the data flow's outputs.

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: prompts, final loss and the last logged reward,
        valid rate, copied-pre-rank rate and kept-group share.
    """
    return prompt_stage(
        cfg,
        RL_STAGE,
        cfg.rl,
        training_inputs(model_uri, dataset_uri, sid_uri, examples_uri),
        lambda model, tokenizer, prompts: dapo_loss_fn(
            tokenizer, prompts, cfg.rl, ar_policy(tokenizer, cfg.rl), frozen_copy(model) if cfg.rl.kl_weight > 0 else None
        ),
    )


def prompt_stage(
    cfg: Config,
    spec: StageSpec,
    stage_cfg: Any,
    inputs: dict[str, str],
    make_loss: Callable[[Any, Any, list[RerankPrompt]], LossFn],
) -> StageResult:
    """A training stage on the policy's own rollouts (RL, OPD): each step takes ``batch_size``
    training prompts (``stage_cfg.max_prompts`` drawn from the train split of ``inputs["data"]``)
    and ``make_loss(model, tokenizer, prompts)`` samples and scores them."""
    training = stage_cfg.training(cfg.training)

    def build(model: Any, tokenizer: Any, catalog: ItemCatalog, metrics: dict[str, Any]) -> tuple[BatchFn, LossFn]:
        examples = split_examples(read_examples(inputs["data"], cfg.storage.work_dir), "train", stage_cfg.max_prompts, training.seed)
        prompts = rerank_prompts(tokenizer, examples, catalog, cfg.prompts)
        metrics.update(prompts=len(prompts))

        def batches(index: int) -> dict[str, Any]:
            return {"prompt_index": batch_indices(len(prompts), training.batch_size, index, training.seed)}

        return batches, make_loss(model, tokenizer, prompts)

    return train_stage(cfg, spec, training, inputs, build)
