"""The block-diffusion stages: conversion, conversion fine-tuning (CFT), on-policy distillation
(OPD) and RL (Diffusion-GR2 section 6).

Conversion copies the AR teacher one-to-one and records the block size and mask token on the
model config (``components.modeling.block_diffusion``); nothing is trained, so the naive model
shows what the attention change alone does. CFT trains it with the masked block-diffusion
objective (``components.training.cft``) on the same accepted traces as SFT. OPD distils the
frozen teacher into it on its own trajectories (``components.training.opd``), and RL runs DAPO
with the teacher's reward on replayed trajectories (``components.training.rl``). All of them use
the shared loop. :func:`run_diffusion` is the stage sequence after the teacher.
"""

from __future__ import annotations

from typing import Any

import torch

from components import storage
from components.config import Config, EvaluationConfig
from components.evaluation.runner import paired_comparison
from components.evaluation.speed import compare_speed
from components.modeling.block_diffusion import block_diffusion_spec, convert_to_block_diffusion, mark_fold_commits
from components.modeling.factory import load_model, save_model
from components.prompts.render import ItemCatalog
from components.stage import StageResult, StageSpec, cached_result, publishing
from components.training.cft import cft_loss_fn, complementary_mask, complementary_views, diffusion_example, pack_batch, whole_blocks
from components.training.loop import BatchFn, LossFn, batch_indices, derive_seed
from components.training.opd import opd_loss_fn
from components.training.rl import block_policy, dapo_loss_fn, frozen_copy
from components.training.teacher import (
    TEACHER_STAGE_FUNCTIONS,
    StageRunner,
    encoded_traces,
    prompt_stage,
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
    "components/training/replay",
    "components/training/opd",
    "components/training/rl",
    "components/training/dapo",
    "components/training/reward",
    "components/training/logprobs",
    "components/decoding",
)
CONVERT_STAGE = StageSpec("convert", ("diffusion",), _DIFFUSION_CODE)
CFT_STAGE = StageSpec("cft", ("cft", "training", "sft", "prompts", "model"), _DIFFUSION_CODE)
OPD_STAGE = StageSpec("opd", ("opd", "training", "prompts"), _DIFFUSION_CODE)
DIFFUSION_RL_STAGE = StageSpec("diffusion_rl", ("diffusion_rl", "training", "prompts"), _DIFFUSION_CODE)


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
        mark_fold_commits(model, cfg.cft.whole_block_rate > 0.0)
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        examples = [diffusion_example(e, spec.block_size, end_id) for e in encoded_traces(cfg, tokenizer, catalog, traces_uri, metrics)]
        if not examples:
            raise ValueError("no CFT examples fit model.max_length")

        def batches(index: int) -> dict[str, Any]:
            rows = [examples[i] for i in batch_indices(len(examples), training.batch_size, index, training.seed).tolist()]
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

    inputs = training_inputs(model_uri, dataset_uri, sid_uri, examples_uri) | {"teacher": teacher_uri}
    return prompt_stage(cfg, OPD_STAGE, cfg.opd, inputs, make_loss)


def run_diffusion_rl(cfg: Config, model_uri: str, dataset_uri: str, sid_uri: str, examples_uri: str) -> StageResult:
    """DAPO of the block-diffusion model (from OPD, or CFT when OPD is off) with the teacher's reward.

    Returns:
        ``outputs``: ``model_uri``; ``metrics``: as the teacher's RL stage.
    """
    rl_cfg = cfg.diffusion_rl

    def make_loss(model: Any, tokenizer: Any, prompts: list[Any]) -> LossFn:
        policy = block_policy(tokenizer, model, rl_cfg.temperature, rl_cfg.top_p, rl_cfg.threshold, rl_cfg.max_new_tokens)
        return dapo_loss_fn(tokenizer, prompts, rl_cfg, policy, frozen_copy(model) if rl_cfg.kl_weight > 0 else None)

    return prompt_stage(cfg, DIFFUSION_RL_STAGE, rl_cfg, training_inputs(model_uri, dataset_uri, sid_uri, examples_uri), make_loss)


# Every stage of the recipe, by name (see components.training.teacher.StageRunner).
RECIPE_STAGE_FUNCTIONS = TEACHER_STAGE_FUNCTIONS | {
    "convert": run_convert,
    "cft": run_cft,
    "opd": run_opd,
    "diffusion_rl": run_diffusion_rl,
    "speed": compare_speed,
}
# How far ``run_diffusion`` goes.
UNTIL = ("convert", "cft", "opd", "rl")


def run_diffusion(
    cfg: Config,
    teacher_uri: str,
    dataset_uri: str,
    sid_uri: str,
    examples_uri: str,
    traces_uri: str,
    run: StageRunner,
    until: str = "rl",
    student_start_uri: str = "",
) -> dict[str, Any]:
    """Convert the teacher, then CFT, OPD and RL as far as ``until``; evaluate every model at
    tau = 1 (the papers' table 1), the last one at every ``evaluation.thresholds`` value (table 2),
    and compare its decode speed with the teacher's.

    ``opd.enabled`` / ``diffusion_rl.enabled`` skip those stages. ``student_start_uri`` warm-starts
    CFT from an earlier block-diffusion model (the champion, on retraining) instead of the naive
    conversion, which is still evaluated as the table's reference row.

    Returns:
        ``models`` (label -> URI), ``evaluations`` (label -> tau = 1 report), ``sweep`` (tau ->
        report of the final model), ``final`` (its label), ``speed`` (empty after conversion only),
        and :func:`summarize_stages`' entries.
    """
    if until not in UNTIL:
        raise ValueError(f"until must be one of {UNTIL}, got {until!r}")
    data = (dataset_uri, sid_uri, examples_uri)
    stages: dict[str, dict[str, Any]] = {}
    models: dict[str, str] = {}
    evaluations: dict[str, Any] = {}

    def evaluate(label: str, tau: float, scope: str = "") -> dict[str, Any]:
        name = f"evaluate {label} (tau={tau})"
        stages[name] = run(name, "evaluate", models[label], *data, str(tau), scope)
        return stages[name]["metrics"]

    # The stages this run goes through: the last one's model is the final one, scored on every
    # test user; the ones before it may be scored on the quick scope. The naive conversion is the
    # table's reference row, always on the quick scope, so `dgr2 convert` and a later `dgr2
    # train-rl` share its evaluation.
    planned = ["convert"]
    if until != "convert":
        planned.append("cft")
    if until in ("opd", "rl") and cfg.opd.enabled:
        planned.append("opd")
    if until == "rl" and cfg.diffusion_rl.enabled:
        planned.append("diffusion_rl")

    def add(label: str, stage: str, *inputs: str) -> None:
        stages[stage] = run(stage, stage, *inputs)
        models[label] = stages[stage]["outputs"]["model_uri"]
        evaluations[label] = evaluate(label, 1.0, "" if stage == planned[-1] != "convert" else "quick")

    add("naive conversion", "convert", teacher_uri)
    if "cft" in planned:
        add("CFT", "cft", student_start_uri or models["naive conversion"], dataset_uri, sid_uri, traces_uri)
    if "opd" in planned:
        add("CFT+OPD", "opd", models["CFT"], teacher_uri, *data)
    if "diffusion_rl" in planned:
        add(f"{list(models)[-1]}+RL", "diffusion_rl", models[list(models)[-1]], *data)
    final = list(models)[-1]
    sweep: dict[str, Any] = {}
    speed: dict[str, Any] = {}
    if final != "naive conversion":
        # tau = 1 (Table 1) and the serving tau on every test user; the other points of the
        # accuracy-speed frontier on the quick scope.
        headline = (1.0, cfg.evaluation.serving_threshold)
        sweep = {
            str(tau): evaluations[final] if tau == 1.0 else evaluate(final, tau, "" if tau in headline else "quick")
            for tau in cfg.evaluation.thresholds
        }
        stages["speed"] = run("speed", "speed", models[final], teacher_uri, *data)
        speed = stages["speed"]["metrics"]
    return {"models": models, "evaluations": evaluations, "sweep": sweep, "final": final, "speed": speed} | summarize_stages(stages)


def recipe_summary(teacher: dict[str, Any], diffusion: dict[str, Any], teacher_uri: str, cfg: EvaluationConfig) -> dict[str, Any]:
    """One summary of :func:`components.training.teacher.run_teacher` and :func:`run_diffusion`:
    every model's tau = 1 evaluation side by side, the final model's sweep and speed, all stages,
    and ``vs_teacher``: each block-diffusion evaluation (the sweep's too) against the AR teacher's,
    paired on the test-sample users both scored (the papers' claim is that the student keeps its
    teacher's accuracy)."""
    teacher_label = next(label for label, uri in teacher["models"].items() if uri == teacher_uri)
    students = diffusion["evaluations"] | {
        f"{diffusion['final']} (tau={tau})": report for tau, report in diffusion["sweep"].items() if float(tau) != 1.0
    }
    compared = {label: paired_comparison(report, teacher["evaluations"][teacher_label], cfg) for label, report in students.items()}
    return {
        "teacher_model_uri": teacher_uri,
        "teacher_label": teacher_label,
        "vs_teacher": {label: comparison for label, comparison in compared.items() if comparison is not None},
        "models": teacher["models"] | diffusion["models"],
        "evaluations": teacher["evaluations"] | diffusion["evaluations"],
        "final": diffusion["final"],
        "sweep": diffusion["sweep"],
        "speed": diffusion["speed"],
        "stages": teacher["stages"] | diffusion["stages"],
        "stage_metrics": teacher["stage_metrics"] | diffusion["stage_metrics"],
    }


def teacher_model(teacher: dict[str, Any]) -> str:
    """The AR model the diffusion stages start from and distil: SFT+RL, or SFT when RL is off."""
    return teacher["models"].get("SFT+RL", teacher["models"]["SFT"])
