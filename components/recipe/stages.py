"""The recipe's stage table: one row per stage, read by every way of running a stage.

A row names the stage's function (``cfg, *input URIs -> StageResult``), its :class:`StageSpec`
(what names its output), the function that turns the same URIs into the named inputs its output
key hashes, and the metrics the run summary shows. A stage's inputs are the function's ``*_uri``
parameters (and, for evaluation, its threshold and scope), read from its signature: the Prefect
tasks, the torchrun launcher and the direct runner derive their arguments from it, so adding a
stage is one row here and one function in its component.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from components.baselines.stage import SASREC_STAGE, run_sasrec, sasrec_inputs
from components.evaluation.speed import SPEED_STAGE, compare_speed, speed_inputs
from components.evaluation.stage import EVALUATION_STAGE, evaluate_model, evaluation_inputs
from components.modeling.build import BASE_MODEL_STAGE, base_model_inputs, build_base_model
from components.stage import StageResult, StageSpec
from components.traces.build import TRACES_STAGE, build_traces, traces_inputs
from components.training.diffusion import (
    CFT_STAGE,
    CONVERT_STAGE,
    DIFFUSION_RL_STAGE,
    OPD_STAGE,
    convert_inputs,
    opd_inputs,
    run_cft,
    run_convert,
    run_diffusion_rl,
    run_opd,
)
from components.training.teacher import MIDTRAIN_STAGE, RL_STAGE, SFT_STAGE, run_midtrain, run_rl, run_sft, training_inputs


@dataclass(frozen=True)
class RecipeStage:
    """One row of the table.

    Attributes:
        spec: names the stage's output (config sections and code it hashes).
        function: ``(cfg, *inputs) -> StageResult``.
        key_inputs: the same inputs, positionally -> the named URIs the output key hashes (the
            function computes its output URI from the same mapping).
        facts: metrics the summary's stage table shows.
        trains: runs the shared training loop, so torchrun can run it on several ranks.
    """

    spec: StageSpec
    function: Callable[..., StageResult]
    key_inputs: Callable[..., dict[str, str]]
    facts: tuple[str, ...] = ()
    trains: bool = False

    @property
    def signature(self) -> inspect.Signature:
        """The function's inputs: its parameters after ``cfg``."""
        parameters = list(inspect.signature(self.function).parameters.values())
        return inspect.Signature(parameters[1:])

    @property
    def input_names(self) -> list[str]:
        return list(self.signature.parameters)


_TRAINING_FACTS = ("final_loss", "steps", "tokens_per_s")

STAGES: dict[str, RecipeStage] = {
    "sasrec": RecipeStage(SASREC_STAGE, run_sasrec, sasrec_inputs, ("epochs", "final_loss", "train_seconds")),
    "traces": RecipeStage(TRACES_STAGE, build_traces, traces_inputs, ("acceptance_rate", "dropped", "mean_trace_length")),
    "base_model": RecipeStage(BASE_MODEL_STAGE, build_base_model, base_model_inputs, ("parameters", "vocab_size")),
    "midtrain": RecipeStage(MIDTRAIN_STAGE, run_midtrain, training_inputs, ("candidate_recall_examples", *_TRAINING_FACTS), trains=True),
    "sft": RecipeStage(SFT_STAGE, run_sft, training_inputs, ("examples", *_TRAINING_FACTS), trains=True),
    "rl": RecipeStage(RL_STAGE, run_rl, training_inputs, ("prompts", "steps", "tokens_per_s"), trains=True),
    "evaluate": RecipeStage(EVALUATION_STAGE, evaluate_model, evaluation_inputs),
    "convert": RecipeStage(CONVERT_STAGE, run_convert, convert_inputs, ("block_size", "parameters")),
    "cft": RecipeStage(CFT_STAGE, run_cft, training_inputs, ("examples", *_TRAINING_FACTS), trains=True),
    "opd": RecipeStage(OPD_STAGE, run_opd, opd_inputs, ("prompts", *_TRAINING_FACTS), trains=True),
    "diffusion_rl": RecipeStage(DIFFUSION_RL_STAGE, run_diffusion_rl, training_inputs, ("prompts", "steps", "tokens_per_s"), trains=True),
    "speed": RecipeStage(SPEED_STAGE, compare_speed, speed_inputs),
}
