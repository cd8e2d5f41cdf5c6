"""DAPO for the re-ranker (GR2 stage 3, Diffusion-GR2 section 6.5): rollouts, rewards and the
clipped policy loss per step, for the AR teacher and for the block-diffusion model alike.

Each optimizer step samples ``batch_size`` training prompts, decodes ``group_size`` rollouts of
each with the current policy, scores them with the re-ranking reward, drops the groups whose
rewards are all equal (dynamic sampling), and takes the DAPO loss over the rest with
group-normalised advantages and token-level normalisation. Rollouts are drawn inside the loss
function from the loop's per-step seeded RNG, so a resumed run samples the same rollouts.

The two differ only in how a rollout is sampled and re-scored (:class:`RolloutPolicy`): the AR
decoder and a causal forward, or the block decoder and trajectory replay
(``components.training.replay``, TraceRL-style). Invalid rollouts get the invalid reward and stay
in their group.

One update per rollout batch keeps the policy on-policy: the old log-probs are those recorded by
the decoder under the same weights, the importance ratio is 1 up to float error, and clipping
guards the update the same way it would guard a reused (stale) batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from components.config import PromptConfig, RlConfig
from components.decoding.ar import Generation, generate
from components.decoding.block import generate_blocks
from components.modeling.block_diffusion import block_diffusion_spec
from components.evaluation.runner import render_prompts
from components.prompts.render import ItemCatalog
from components.training.dapo import dapo_loss, dynamic_sampling_mask, group_advantages
from components.training.logprobs import completion_logprobs
from components.training.loop import LossFn
from components.training.replay import chosen, replay_batch, replay_log_probs
from components.training.reward import rerank_reward


@dataclass(frozen=True)
class RerankPrompt:
    """A rendered prompt with what its reward needs: the candidates' SIDs in pre-rank order and the target's."""

    text: str
    candidate_sids: list[str]
    target_sid: str


def rerank_prompts(
    tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame, catalog: ItemCatalog, cfg: PromptConfig
) -> list[RerankPrompt]:
    """One prompt per example, chat template and generation prompt applied."""
    texts = render_prompts(tokenizer, examples, catalog, cfg)
    return [
        RerankPrompt(text, catalog.sids(list(candidates)), catalog.sid(target))
        for text, candidates, target in zip(texts, examples["candidates"], examples["target"])
    ]


def padded_rows(rows: Sequence[Sequence[float]], width: int) -> Tensor:
    """Per-row values (recorded log-probs) as a (B, width) tensor, zero-padded on the right."""
    out = torch.zeros((len(rows), width))
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


@dataclass(frozen=True)
class RolloutPolicy:
    """How a policy samples rollouts and scores them again with gradients.

    ``sample(model, prompts)`` decodes one rollout per prompt text; ``log_probs(model, prompt_ids,
    rollouts, rows)`` gives ``(log-probs (B, T), mask (B, T))`` of the sampled tokens of rollouts
    ``rows``, column j being generated token j, under ``model``.
    """

    sample: Callable[[nn.Module, list[str]], Generation]
    log_probs: Callable[[nn.Module, list[list[int]], Generation, list[int]], tuple[Tensor, Tensor]]


def ar_policy(tokenizer: PreTrainedTokenizerBase, cfg: RlConfig) -> RolloutPolicy:
    """The AR decoder samples; a causal forward re-scores."""

    def sample(model: nn.Module, texts: list[str]) -> Generation:
        # No compiled decode steps: every rollout batch has new prompt lengths, so a compiled graph
        # would be rebuilt each step instead of reused.
        return generate(
            model, tokenizer, texts, cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, batch_size=len(texts), compile=False
        )

    def log_probs(model: nn.Module, prompt_ids: list[list[int]], rollouts: Generation, rows: list[int]) -> tuple[Tensor, Tensor]:
        completions = [rollouts.token_ids[i] for i in rows]
        return completion_logprobs(model, [prompt_ids[i] for i in rows], completions, tokenizer.pad_token_id, cfg.temperature)

    return RolloutPolicy(sample, log_probs)


def block_policy(
    tokenizer: PreTrainedTokenizerBase, model: nn.Module, temperature: float, top_p: float, threshold: float, max_new_tokens: int
) -> RolloutPolicy:
    """The block decoder samples at ``threshold``; trajectory replay re-scores every committed token
    on the state it was committed from."""
    spec = block_diffusion_spec(model)

    def sample(policy: nn.Module, texts: list[str]) -> Generation:
        return generate_blocks(
            policy, tokenizer, texts, max_new_tokens, threshold=threshold, temperature=temperature, top_p=top_p, batch_size=len(texts)
        )

    def log_probs(policy: nn.Module, prompt_ids: list[list[int]], rollouts: Generation, rows: list[int]) -> tuple[Tensor, Tensor]:
        device = next(policy.parameters()).device
        batch = {k: v.to(device) for k, v in replay_batch(prompt_ids, rollouts, rows, spec, tokenizer.pad_token_id).items()}
        return chosen(replay_log_probs(policy, batch, spec.mask_token_id, temperature), batch["targets"]), batch["weights"]

    return RolloutPolicy(sample, log_probs)


def dapo_loss_fn(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RerankPrompt],
    cfg: RlConfig,
    policy: RolloutPolicy,
    reference: nn.Module | None = None,
) -> LossFn:
    """The loss function for :func:`components.training.loop.train`: one DAPO update per batch.

    Args:
        tokenizer: the policy's tokenizer.
        prompts: the training prompts; a batch holds ``prompt_index`` rows into it.
        cfg: group size, sampling, clipping, reward and KL settings.
        policy: how rollouts are sampled and re-scored (:func:`ar_policy`, :func:`block_policy`).
        reference: the frozen reference policy for the KL term (needed when ``cfg.kl_weight > 0``).

    Returns:
        ``loss_fn(module, batch) -> (loss, extras)``; extras: reward_mean, valid_rate,
        copied_pre_rank_rate (valid rollouts that return the pre-rank order unchanged: GR2's
        reward-hacking symptom), kept_group_share, mean_output_tokens and DAPO's diagnostics.
    """
    if cfg.kl_weight > 0 and reference is None:
        raise ValueError("rl.kl_weight > 0 needs a reference policy")
    group = cfg.group_size

    def loss_fn(module: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        picked = [prompts[i] for i in batch["prompt_index"].tolist()]
        repeated = [prompt for prompt in picked for _ in range(group)]
        texts = [prompt.text for prompt in repeated]
        rollouts = policy.sample(getattr(module, "module", module), texts)
        scored = [rerank_reward(text, p.candidate_sids, p.target_sid, cfg) for text, p in zip(rollouts.texts, repeated)]
        rewards = torch.tensor([s.reward for s in scored]).view(len(picked), group)  # (P, G)
        keep = dynamic_sampling_mask(rewards)  # (P,)
        advantages = group_advantages(rewards).flatten()  # (P*G,)
        rows = [i for i in range(len(texts)) if keep[i // group]]
        # No group with reward variance: no gradient this step, but a zero loss still runs the
        # forward over every parameter, as DDP expects of each rank.
        scale = 1.0 if rows else 0.0
        rows = rows or [0]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        new_logprobs, mask = policy.log_probs(module, prompt_ids, rollouts, rows)
        old_logprobs = padded_rows([rollouts.logprobs[i] for i in rows], new_logprobs.shape[1]).to(new_logprobs.device)
        ref_logprobs = None
        if reference is not None and cfg.kl_weight > 0:
            with torch.no_grad():
                ref_logprobs, _ = policy.log_probs(reference.to(new_logprobs.device), prompt_ids, rollouts, rows)
        loss, stats = dapo_loss(
            new_logprobs,
            old_logprobs,
            advantages[rows].to(new_logprobs.device),
            mask,
            cfg.clip_low,
            cfg.clip_high,
            ref_logprobs=ref_logprobs,
            kl_weight=cfg.kl_weight,
        )
        extras: dict[str, Tensor | float] = {
            "reward_mean": float(rewards.mean()),
            "valid_rate": sum(s.valid for s in scored) / len(scored),
            "copied_pre_rank_rate": sum(s.copied_pre_rank for s in scored) / len(scored),
            "kept_group_share": float(keep.float().mean()),
            "mean_output_tokens": rollouts.output_tokens / len(texts),
            "tokens_per_forward": rollouts.tokens_per_forward,
            **stats,
        }
        return loss * scale, extras

    return loss_fn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for reference log-probs: eval mode, no gradients."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
