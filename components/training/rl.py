"""DAPO for the re-ranker (GR2 stage 3, Diffusion-GR2 section 6.5): rollouts, rewards and the
clipped policy loss per step, for the AR teacher and for the block-diffusion model alike.

A rollout batch takes ``batch_size`` training prompts, decodes ``group_size`` rollouts of each
with the current policy, scores them with the re-ranking reward, drops the groups whose rewards
are all equal and refills the batch with fresh prompts (dynamic sampling), and takes the DAPO loss
over the kept groups with group-normalised advantages and token-level normalisation. Rollouts
and refill prompts are drawn inside the loss function from the loop's per-step seeded RNG.

The two differ only in how a rollout is sampled and re-scored (:class:`RolloutPolicy`): the AR
decoder and a causal forward, or the block decoder and trajectory replay
(``components.training.replay``, TraceRL-style). Invalid rollouts get the invalid reward and stay
in their group.

Each rollout batch serves ``updates_per_batch`` optimizer steps (DAPO's mini-batch updates): the
old log-probs are those the decoder recorded when it sampled, so the first update's importance
ratio is 1 up to float error and the later ones' move away from it, where the clip bounds them.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from components.config import PromptConfig, RlConfig
from components.decoding.ar import Generation, generate
from components.decoding.block import generate_blocks
from components.modeling.block_diffusion import block_diffusion_spec
from components.prompts.render import ItemCatalog, render_prompts
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


def block_policy(tokenizer: PreTrainedTokenizerBase, model: nn.Module, cfg: RlConfig) -> RolloutPolicy:
    """The block decoder samples at ``cfg.threshold`` under ``cfg.commit_rule``; trajectory replay
    re-scores every committed token on the state it was committed from."""
    spec = block_diffusion_spec(model)

    def sample(policy: nn.Module, texts: list[str]) -> Generation:
        return generate_blocks(
            policy, tokenizer, texts, cfg.max_new_tokens, threshold=cfg.threshold, temperature=cfg.temperature, top_p=cfg.top_p,
            batch_size=len(texts), commit_rule=cfg.commit_rule,
        )

    def log_probs(policy: nn.Module, prompt_ids: list[list[int]], rollouts: Generation, rows: list[int]) -> tuple[Tensor, Tensor]:
        device = next(policy.parameters()).device
        batch = {k: v.to(device) for k, v in replay_batch(prompt_ids, rollouts, rows, spec, tokenizer.pad_token_id).items()}
        return chosen(replay_log_probs(policy, batch, spec.mask_token_id, cfg.temperature), batch["targets"]), batch["weights"]

    return RolloutPolicy(sample, log_probs)


@dataclass
class RolloutChunk:
    """One sampling round's kept rollouts: what each update of the batch re-scores."""

    prompt_ids: list[list[int]]
    rollouts: Generation
    rows: list[int]  # rollouts in groups with reward variance
    advantages: Tensor  # (len(rows),)


def dapo_loss_fn(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RerankPrompt],
    cfg: RlConfig,
    policy: RolloutPolicy,
    reference: nn.Module | None = None,
) -> LossFn:
    """The loss function for :func:`components.training.loop.train`: DAPO over reused rollout batches.

    Every ``cfg.updates_per_batch`` optimizer steps, the step's prompts are rolled out
    ``group_size`` times; groups with equal rewards are dropped and up to ``cfg.sampling_rounds``
    rounds of fresh prompts (drawn from the step's seeded RNG) refill the batch to ``batch_size``
    groups with reward variance. Each step in between re-scores the same rollouts under the updated
    policy against the log-probs recorded when they were sampled, so the ratio moves off 1 and the
    clip bounds the update (a resumed run re-samples at its first step).

    Args:
        tokenizer: the policy's tokenizer.
        prompts: the training prompts; a batch holds ``prompt_index`` rows into it.
        cfg: group size, sampling, clipping, reward, reuse and KL settings.
        policy: how rollouts are sampled and re-scored (:func:`ar_policy`, :func:`block_policy`).
        reference: the frozen reference policy for the KL term (needed when ``cfg.kl_weight > 0``).

    Returns:
        ``loss_fn(module, batch) -> (loss, extras)``; extras: reward_mean, valid_rate,
        copied_pre_rank_rate (valid rollouts that return the pre-rank order unchanged: GR2's
        reward-hacking symptom), kept_group_share (of the first round), kept_groups, sampling_rounds,
        reused (1 on a step that re-scores earlier rollouts), mean_output_tokens and DAPO's diagnostics.
    """
    if cfg.kl_weight > 0 and reference is None:
        raise ValueError("rl.kl_weight > 0 needs a reference policy")
    group = cfg.group_size
    held: dict[str, Any] = {"chunks": [], "uses_left": 0, "stats": {}, "empty": False}

    def sample_round(module: nn.Module, picked: list[RerankPrompt], wanted: int) -> tuple[RolloutChunk, dict[str, float], Tensor]:
        """Roll out ``picked``; the chunk keeps the first ``wanted`` groups with reward variance."""
        repeated = [prompt for prompt in picked for _ in range(group)]
        texts = [prompt.text for prompt in repeated]
        rollouts = policy.sample(getattr(module, "module", module), texts)
        scored = [rerank_reward(text, p.candidate_sids, p.target_sid, cfg) for text, p in zip(rollouts.texts, repeated)]
        rewards = torch.tensor([s.reward for s in scored]).view(len(picked), group)  # (P, G)
        keep = dynamic_sampling_mask(rewards)  # (P,)
        kept_groups = set(torch.nonzero(keep).flatten().tolist()[:wanted])
        rows = [i for i in range(len(texts)) if i // group in kept_groups]
        advantages = group_advantages(rewards).flatten()  # (P*G,)
        chunk = RolloutChunk(tokenizer(texts, add_special_tokens=False)["input_ids"], rollouts, rows, advantages[rows])
        stats = {
            "reward_sum": float(rewards.sum()),
            "valid": sum(s.valid for s in scored),
            "copied": sum(s.copied_pre_rank for s in scored),
            "rollouts": len(texts),
            "output_tokens": rollouts.output_tokens,
            "kept": len(kept_groups),
        }
        return chunk, stats, keep

    def sample_batch(module: nn.Module, prompt_index: list[int]) -> None:
        chunks: list[RolloutChunk] = []
        totals: Counter[str] = Counter()
        picked = [prompts[i] for i in prompt_index]
        for round_index in range(cfg.sampling_rounds):
            chunk, stats, keep = sample_round(module, picked, len(prompt_index) - totals["kept"])
            if round_index == 0:
                first_share = float(keep.float().mean())
            totals.update(stats)
            if chunk.rows:
                chunks.append(chunk)
            missing = len(prompt_index) - totals["kept"]
            if not missing:
                break
            # Refill: fresh prompts from the step's seeded RNG, one per missing group.
            picked = [prompts[i] for i in torch.randint(len(prompts), (missing,)).tolist()]
        # No group with reward variance: no gradient from this batch, but its steps still run a
        # forward over every parameter (one rollout, zero weight), as DDP expects of each rank.
        held["empty"] = not chunks
        if not chunks:
            chunks = [RolloutChunk(chunk.prompt_ids, chunk.rollouts, [0], torch.zeros(1))]
        held["chunks"], held["uses_left"] = chunks, cfg.updates_per_batch
        held["stats"] = {
            "reward_mean": totals["reward_sum"] / totals["rollouts"],
            "valid_rate": totals["valid"] / totals["rollouts"],
            "copied_pre_rank_rate": totals["copied"] / totals["rollouts"],
            "kept_group_share": first_share,
            "kept_groups": float(totals["kept"]),
            "sampling_rounds": float(round_index + 1),
            "mean_output_tokens": totals["output_tokens"] / totals["rollouts"],
            "tokens_per_forward": chunk.rollouts.tokens_per_forward,
        }

    def loss_fn(module: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        reused = held["uses_left"] > 0
        if not reused:
            sample_batch(module, batch["prompt_index"].tolist())
        held["uses_left"] -= 1
        terms, token_counts, diagnostics = [], [], []
        for chunk in held["chunks"]:
            new_logprobs, mask = policy.log_probs(module, chunk.prompt_ids, chunk.rollouts, chunk.rows)
            old_logprobs = padded_rows([chunk.rollouts.logprobs[i] for i in chunk.rows], new_logprobs.shape[1]).to(new_logprobs.device)
            ref_logprobs = None
            if reference is not None and cfg.kl_weight > 0:
                with torch.no_grad():
                    ref_logprobs, _ = policy.log_probs(reference.to(new_logprobs.device), chunk.prompt_ids, chunk.rollouts, chunk.rows)
            loss, stats = dapo_loss(
                new_logprobs, old_logprobs, chunk.advantages.to(new_logprobs.device), mask, cfg.clip_low, cfg.clip_high,
                ref_logprobs=ref_logprobs, kl_weight=cfg.kl_weight,
            )
            terms.append(loss)
            token_counts.append(float(mask.sum()))
            diagnostics.append(stats)
        # Token-level normalisation across the rounds: each chunk's token mean weighed by its tokens.
        total = sum(token_counts) or 1.0
        loss = sum(term * (count / total) for term, count in zip(terms, token_counts))
        merged = {key: sum(d[key] * c for d, c in zip(diagnostics, token_counts)) / total for key in diagnostics[0]}
        return loss * (0.0 if held["empty"] else 1.0), held["stats"] | merged | {"reused": float(reused)}

    return loss_fn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for reference log-probs: eval mode, no gradients."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
