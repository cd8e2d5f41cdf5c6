"""The block-diffusion stages: AR -> block-diffusion conversion, then conversion fine-tuning (CFT).

Conversion copies the AR teacher one-to-one and records the block size and mask token on the
model config (``components.modeling.block_diffusion``); nothing is trained, so the naive model
shows what the attention change alone does. CFT trains it with the masked block-diffusion
objective (``components.training.cft``) on the same accepted traces as SFT, in the shared loop.
:func:`run_diffusion` is the stage sequence after the teacher: convert, evaluate the naive model,
CFT, evaluate at every threshold, and compare decode speed with the AR teacher.
"""

from __future__ import annotations

from typing import Any

import torch

from components import storage
from components.config import Config
from components.evaluation.speed import compare_speed
from components.modeling.block_diffusion import block_diffusion_spec, convert_to_block_diffusion
from components.modeling.factory import load_model, save_model
from components.prompts.render import ItemCatalog
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.training.cft import complementary_mask, cft_loss_fn, diffusion_example, pack_batch
from components.training.loop import BatchFn, LossFn, batch_indices, derive_seed
from components.training.teacher import (
    TEACHER_STAGE_FUNCTIONS,
    StageRunner,
    encoded_traces,
    summarize_stages,
    train_stage,
    training_inputs,
)

_DIFFUSION_CODE = (
    "components/modeling/block_diffusion",
    "components/modeling/factory",
    "components/training/cft",
    "components/training/diffusion",
    "components/training/loop",
    "components/training/sft",
)
CONVERT_STAGE = StageSpec("convert", ("diffusion",), _DIFFUSION_CODE)
CFT_STAGE = StageSpec("cft", ("cft", "training", "sft", "prompts", "model"), _DIFFUSION_CODE)


def run_convert(cfg: Config, model_uri: str) -> StageResult:
    """Convert the AR model at ``model_uri`` to a block-diffusion model (``diffusion.block_size``).

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: block size, mask token id, parameters.
    """
    uri = CONVERT_STAGE.output_uri(cfg, {"model": model_uri})
    if (cached := cached_result(uri, "model_uri", cfg.storage.work_dir)) is not None:
        return cached
    model, tokenizer, parent_meta = load_model(storage.fetch_dir(model_uri, cfg.storage.work_dir))
    spec = block_diffusion_spec(convert_to_block_diffusion(model, tokenizer, cfg.diffusion.block_size))
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
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        examples = [diffusion_example(e, spec.block_size, end_id) for e in encoded_traces(cfg, tokenizer, catalog, traces_uri, metrics)]
        if not examples:
            raise ValueError("no CFT examples fit model.max_length")

        def batches(index: int) -> dict[str, Any]:
            rows = [examples[i] for i in batch_indices(len(examples), training.batch_size, index, training.seed).tolist()]
            # The masks are a pure function of the batch index, so a resumed run draws the same ones.
            generator = torch.Generator().manual_seed(derive_seed(training.seed, "cft-mask", index))
            masks = [complementary_mask(len(r.response_ids), spec.block_size, cfg.cft.mask_eps, generator) for r in rows]
            return pack_batch(rows, masks, spec, tokenizer.pad_token_id)

        return batches, cft_loss_fn(spec.mask_token_id)

    return train_stage(cfg, CFT_STAGE, training, training_inputs(model_uri, dataset_uri, sid_uri, traces_uri), build)


# Every stage of the recipe so far, by name (see components.training.teacher.StageRunner).
RECIPE_STAGE_FUNCTIONS = TEACHER_STAGE_FUNCTIONS | {"convert": run_convert, "cft": run_cft, "speed": compare_speed}


def run_diffusion(
    cfg: Config,
    teacher_uri: str,
    dataset_uri: str,
    sid_uri: str,
    examples_uri: str,
    traces_uri: str,
    run: StageRunner,
    until: str = "cft",
) -> dict[str, Any]:
    """Convert the teacher, evaluate the naive model (tau = 1), then (unless ``until="convert"``)
    CFT, evaluate at every threshold, and compare decode speed with the teacher.

    Returns:
        ``models`` (label -> URI), ``evaluations`` (label -> report; labels carry tau), ``speed``
        (empty when stopped after conversion), and :func:`summarize_stages`' entries.
    """
    if until not in ("convert", "cft"):
        raise ValueError(f"until must be 'convert' or 'cft', got {until!r}")
    stages: dict[str, dict[str, Any]] = {}
    stages["convert"] = run("convert", "convert", teacher_uri)
    models = {"naive conversion": stages["convert"]["outputs"]["model_uri"]}
    stages["evaluate naive"] = run("evaluate naive", "evaluate", models["naive conversion"], dataset_uri, sid_uri, examples_uri, "1.0")
    evaluations = {"naive conversion (tau=1.0)": stages["evaluate naive"]["metrics"]}
    if until == "convert":
        return {"models": models, "evaluations": evaluations, "speed": {}} | summarize_stages(stages)
    stages["cft"] = run("cft", "cft", models["naive conversion"], dataset_uri, sid_uri, traces_uri)
    models["CFT"] = stages["cft"]["outputs"]["model_uri"]
    for tau in cfg.evaluation.thresholds:
        label = f"CFT (tau={tau})"
        stages[f"evaluate {label}"] = run(f"evaluate {label}", "evaluate", models["CFT"], dataset_uri, sid_uri, examples_uri, str(tau))
        evaluations[label] = stages[f"evaluate {label}"]["metrics"]
    stages["speed"] = run("speed", "speed", models["CFT"], teacher_uri, dataset_uri, sid_uri, examples_uri)
    return {"models": models, "evaluations": evaluations, "speed": stages["speed"]["metrics"]} | summarize_stages(stages)
