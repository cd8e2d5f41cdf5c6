"""The block-diffusion stages: conversion, conversion fine-tuning (CFT), on-policy distillation
(OPD) and RL (Diffusion-GR2 section 6).

Conversion copies the AR teacher one-to-one and records the block size and mask token on the
model config (``components.modeling.block_diffusion``); nothing is trained, so the naive model
shows what the attention change alone does. CFT trains it with the masked block-diffusion
objective (``components.training.cft``) on the same accepted traces as SFT. OPD distils the
frozen teacher into it on its own trajectories (``components.training.opd``), and RL runs DAPO
with the teacher's reward on replayed trajectories (``components.training.rl``). All of them use
the shared loop; ``components.recipe`` runs them after the teacher.
"""

from __future__ import annotations

from typing import Any

import torch

from components import storage
from components.config import Config
from components.modeling.block_diffusion import block_diffusion_spec, convert_to_block_diffusion, mark_fold_commits
from components.modeling.factory import load_model, save_model
from components.prompts.render import ItemCatalog
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.training.cft import cft_loss_fn, complementary_mask, complementary_views, diffusion_example, pack_batch, whole_blocks
from components.training.loop import BatchFn, LossFn, derive_seed, length_sorted_micro_batch
from components.training.opd import opd_loss_fn
from components.training.rl import block_policy, dapo_loss_fn, frozen_copy
from components.training.teacher import encoded_traces, prompt_stage, train_stage, training_inputs

# The diffusion stages run what the teacher stages run (TRAINING_CODE: prompts, the training loop,
# the RL reward, data splits) and all of training, modeling and decoding besides (conversion, CFT,
# OPD, replay, every decoder).
_DIFFUSION_CODE = ("components/training", "components/modeling", "components/decoding", "components/prompts", "components/data/splits")
CONVERT_STAGE = StageSpec("convert", ("diffusion",), _DIFFUSION_CODE)
CFT_STAGE = StageSpec("cft", ("cft", "training", "sft", "prompts", "model"), _DIFFUSION_CODE)
OPD_STAGE = StageSpec("opd", ("opd", "training", "prompts"), _DIFFUSION_CODE)
DIFFUSION_RL_STAGE = StageSpec("diffusion_rl", ("diffusion_rl", "training", "prompts"), _DIFFUSION_CODE)


def convert_inputs(model_uri: str) -> dict[str, str]:
    return {"model": model_uri}


def opd_inputs(model_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> dict[str, str]:
    """OPD's inputs: a training stage's, plus the teacher it distils."""
    return training_inputs(model_uri, dataset_uri, sid_uri, examples_uri) | {"teacher": teacher_uri}


def run_convert(cfg: Config, model_uri: str) -> StageResult:
    """Convert the AR model at ``model_uri`` to a block-diffusion model (``diffusion.block_size``).

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: block size, mask token id, parameters.
    """
    uri = CONVERT_STAGE.output_uri(cfg, convert_inputs(model_uri))
    if (cached := cached_result(uri, "model_uri", cfg.storage.work_dir)) is not None:
        return cached
    model, tokenizer, parent_meta = load_model(storage.fetch_dir(model_uri, cfg.storage.work_dir))
    spec = block_diffusion_spec(convert_to_block_diffusion(model, tokenizer, cfg.diffusion.block_size, cfg.diffusion.commit_rule))
    metrics: dict[str, Any] = {
        "block_size": spec.block_size,
        "mask_token_id": spec.mask_token_id,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with publishing(uri, cfg.storage.work_dir, metrics) as out:
        save_model(model, tokenizer, out, parent_meta | {"stage": "convert", "parent_model_uri": model_uri})
    return StageResult({"model_uri": uri}, metrics)


def run_cft(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, traces_uri: str) -> StageResult:
    """Conversion fine-tuning of a converted model on the accepted traces.

    Args:
        cfg: run config (``cfg.cft`` over ``cfg.training``; ``sft.lambda_*`` weight the tokens).
        model_uri: the converted model.
        dataset_uri, sid_uri: the dataset version and its SIDs.
        traces_uri: the traces stage's output (the SFT data).

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: examples, final loss, tokens/s, wall time.
    """
    training = cfg.cft.training(cfg.training)

    def build(model: Any, tokenizer: Any, catalog: ItemCatalog, metrics: dict[str, Any]) -> tuple[BatchFn, LossFn]:
        spec = block_diffusion_spec(model)
        mark_fold_commits(model, cfg.cft.whole_block_rate > 0.0)
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        examples = [diffusion_example(e, spec.block_size, end_id) for e in encoded_traces(cfg, tokenizer, catalog, traces_uri, metrics)]
        if not examples:
            raise ValueError("no CFT examples fit model.max_length")

        lengths = [len(e.prompt_ids) + len(e.response_ids) for e in examples]

        def batches(index: int) -> dict[str, Any]:
            rows = [examples[i] for i in length_sorted_micro_batch(lengths, training, index)]
            # The masks are a pure function of the batch index, so a resumed run draws the same ones.
            generator = torch.Generator().manual_seed(derive_seed(training.seed, "cft-mask", index))
            rate = cfg.cft.whole_block_rate
            views = [
                complementary_views(
                    complementary_mask(len(r.response_ids), spec.block_size, cfg.cft.mask_eps, generator),
                    spec.block_size,
                    whole_blocks(len(r.response_ids), spec.block_size, rate, generator) if rate > 0 else None,
                )
                for r in rows
            ]
            return pack_batch(rows, views, spec, tokenizer.pad_token_id)

        return batches, cft_loss_fn(spec.mask_token_id)

    return train_stage(cfg, CFT_STAGE, training, training_inputs(model_uri, dataset_uri, sid_uri, traces_uri), build)


def run_opd(cfg: Config, model_uri: str, teacher_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """On-policy distillation of the CFT model from the frozen AR teacher.

    ``batch_size`` counts prompts; each brings ``opd.samples_per_prompt`` trajectories.

    Args:
        cfg: run config (``cfg.opd`` over ``cfg.training``).
        model_uri: the CFT model (the student).
        teacher_uri: the AR teacher (SFT+RL, or SFT when RL is off).
        dataset_uri, sid_uri, examples_uri: the data flow's outputs (prompts from the train split).

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: prompts, final loss, the last logged teacher NLL
        and tokens per forward, tokens/s, wall time.
    """

    def make_loss(model: Any, tokenizer: Any, prompts: list[Any]) -> LossFn:
        # Loaded only when the stage trains: a cached OPD output needs no teacher.
        teacher, _, _ = load_model(storage.fetch_dir(teacher_uri, cfg.storage.work_dir))
        teacher = frozen_copy(teacher.to(next(model.parameters()).device))
        return opd_loss_fn(tokenizer, prompts, teacher, model, cfg.opd)

    return prompt_stage(cfg, OPD_STAGE, cfg.opd, opd_inputs(model_uri, teacher_uri, dataset_uri, sid_uri, examples_uri), make_loss)


def run_diffusion_rl(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """DAPO of the block-diffusion model (from OPD, or CFT when OPD is off) with the teacher's reward.

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: as the teacher's RL stage.
    """
    rl_cfg = cfg.diffusion_rl

    def make_loss(model: Any, tokenizer: Any, prompts: list[Any]) -> LossFn:
        policy = block_policy(tokenizer, model, rl_cfg)
        return dapo_loss_fn(tokenizer, prompts, rl_cfg, policy, frozen_copy(model) if rl_cfg.kl_weight > 0 else None)

    return prompt_stage(cfg, DIFFUSION_RL_STAGE, rl_cfg, training_inputs(model_uri, dataset_uri, sid_uri, examples_uri), make_loss)
