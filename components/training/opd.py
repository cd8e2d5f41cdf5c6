"""On-policy distillation (OPD): the block-diffusion student learns from the frozen AR teacher on
the student's own decoded trajectories (Diffusion-GR2 section 6.4; research note section 4.4).

Each step the student decodes ``samples_per_prompt`` trajectories per prompt with its production
decoder. The teacher scores every trajectory in one causal forward, which gives its distribution
before each committed token; the student's distribution at that token is taken on the state it
was actually committed from (trajectory replay, ``components.training.replay``). Two objectives:

- ``forward_kl`` (the paper's): KL(teacher || student) over the vocabulary, averaged over each
  output's committed tokens, then over outputs;
- ``reverse_kl`` (the GR2 tech report's and Thinking Machines'): a per-token advantage
  ``log p_T(y_j) - log q_old(y_j)`` in a clipped surrogate, which lowers the student's reverse KL
  to the teacher along its own samples.

Both are zero when student and teacher agree. The ``<|mask|>`` token is excluded from both
distributions, so they share one support.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from components.config import OpdConfig
from components.decoding.block import generate_blocks
from components.modeling.block_diffusion import block_diffusion_spec
from components.training.dapo import dapo_loss
from components.training.logprobs import completion_distributions
from components.training.loop import LossFn
from components.training.replay import chosen, replay_batch, replay_log_probs
from components.training.rl import RerankPrompt, padded_rows


def forward_kl(teacher_log_probs: Tensor, student_log_probs: Tensor, weights: Tensor) -> Tensor:
    """Mean over outputs of the mean over their tokens of KL(teacher || student).

    Args:
        teacher_log_probs: (B, T, V), no gradient needed.
        student_log_probs: (B, T, V), carries the gradient.
        weights: (B, T), 1 on tokens that count.

    Returns:
        A scalar; 0 when the distributions are equal on every counted token.
    """
    teacher_probs = teacher_log_probs.exp()
    # Where the teacher gives a token no mass the term is 0 (0 * log 0 / q), not NaN.
    terms = torch.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
    per_token = terms.sum(dim=-1)  # (B, T)
    per_output = (per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    counted = (weights.sum(dim=1) > 0).float()
    return (per_output * counted).sum() / counted.sum().clamp_min(1.0)


def opd_loss_fn(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[RerankPrompt], teacher: nn.Module, student: nn.Module, cfg: OpdConfig
) -> LossFn:
    """The loss function for :func:`components.training.loop.train`: one OPD update per batch.

    Args:
        tokenizer: the shared tokenizer.
        prompts: the training prompts; a batch holds ``prompt_index`` rows into it.
        teacher: the frozen AR teacher.
        student: the block-diffusion student (to read its block size and mask id).
        cfg: samples per prompt, objective, sampling temperature and tau, clipping.

    Returns:
        ``loss_fn(module, batch) -> (loss, extras)``; extras: ``teacher_nll`` (the teacher's mean
        negative log-likelihood of the student's tokens, a quality signal), ``tokens_per_forward``
        and ``mean_output_tokens`` of the rollouts, and the surrogate's diagnostics for reverse_kl.
    """
    spec = block_diffusion_spec(student)
    pad_id = tokenizer.pad_token_id

    def loss_fn(module: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        texts = [prompts[i].text for i in batch["prompt_index"].tolist() for _ in range(cfg.samples_per_prompt)]
        rollouts = generate_blocks(
            getattr(module, "module", module),
            tokenizer,
            texts,
            cfg.max_new_tokens,
            threshold=cfg.threshold,
            temperature=cfg.temperature,
            batch_size=len(texts),
            commit_rule=cfg.commit_rule,
        )
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        device = next(module.parameters()).device
        replay = {k: v.to(device) for k, v in replay_batch(prompt_ids, rollouts, range(len(texts)), spec, pad_id).items()}
        student_log_probs = replay_log_probs(module, replay, spec.mask_token_id, cfg.temperature)  # (B, R, V)
        with torch.no_grad():
            teacher_log_probs, _ = completion_distributions(
                teacher.to(device), prompt_ids, rollouts.block_token_ids, pad_id, cfg.temperature, exclude_id=spec.mask_token_id
            )
        weights = replay["weights"]
        teacher_chosen = chosen(teacher_log_probs, replay["targets"])
        extras: dict[str, Tensor | float] = {
            "teacher_nll": float(-(teacher_chosen * weights).sum() / weights.sum().clamp_min(1.0)),
            "tokens_per_forward": rollouts.tokens_per_forward,
            "mean_output_tokens": rollouts.output_tokens / len(texts),
        }
        if cfg.objective == "forward_kl":
            return forward_kl(teacher_log_probs, student_log_probs, weights), extras
        old = padded_rows(rollouts.logprobs, weights.shape[1]).to(device)
        advantages = torch.where(weights.bool(), teacher_chosen - old, 0.0)
        loss, stats = dapo_loss(chosen(student_log_probs, replay["targets"]), old, advantages, weights, cfg.clip, cfg.clip)
        return loss, extras | stats

    return loss_fn
