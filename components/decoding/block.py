"""Parallel block-diffusion decoding with a confidence threshold and a KV cache (Fast-dLLM v2 style).

The prompt is prefilled causally into the cache; its last logits give the first response token
(token shift: the logits at position j - 1 predict token j). Then, per block of ``b`` tokens:

1. the block starts as ``[first token, <|mask|> x (b - 1)]``;
2. each step runs the whole block against the cache (bidirectional inside the block), rolls the
   block's K/V back out of the cache, and commits masked positions by the model's commit rule
   (``BlockDiffusionSpec.commit_rule``), at least one per step, so at most ``b - 1`` steps finish
   a block. ``any`` (the papers, Fast-dLLM v2) commits every masked position whose probability is
   at least ``threshold``, plus the most confident one; ``prefix`` commits the run of masked
   positions from the leftmost one on that reach ``threshold`` (the leftmost alone when it does
   not), so no token is fixed while a gap to its left is still open (an answer's tail committed
   before its middle is how a candidate comes to be written twice);
3. once a stop token is in the block, the masked positions after it are not decoded (the answer
   ends there);
4. a last forward over the finished block writes its K/V to the cache and predicts the next
   block's first token.

Folded decoding (``fold``) saves that last forward: the finished block (or, for the first block,
the prompt) and the next block, wholly masked, run in one forward. The finished tokens write their
K/V exactly as the commit forward would (they never attend to the block after them), the logits at
the last of them give the block's first token, and the masked positions after it get their first
proposals, from a state with the first token still masked. That state needs a model trained on
whole-block masks (CFT's ``whole_block_rate``, recorded as ``BlockDiffusionSpec.fold_commits``).
The first step commits the block's first token (plus, below ``threshold >= 1``, whatever reaches
tau), so at ``threshold >= 1`` both decoders commit the same tokens in the same number of forwards.

``threshold >= 1`` commits exactly one token per step, the papers' quality setting (under
``prefix``, left to right). Sequences
stop independently: a finished sequence stays in its batch, fed padding that it never commits.
Each token's commit step is recorded (-1 for a block's first token when it is decoded before the
block's steps, 0 when the folded first step commits it), and each sequence's forward passes
(NFE): what OPD and RL replay, and what tokens per forward counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.decoding.ar import DecodeSetup, Generation, choose_tokens, decode_in_batches, eval_mode, left_pad
from components.decoding.cache import InPlaceCache
from components.modeling.block_diffusion import BlockDiffusionSpec, block_diffusion_spec, block_step_mask, check_commit_rule, fold_step_mask, token_flags

# The commit step recorded for a block's first token, which is predicted from the previous block.
AUTOREGRESSIVE_STEP = -1


@dataclass
class BlockGeneration(Generation):
    """A :class:`Generation` plus the decoding trajectory of every sequence."""

    # Per generated token, the denoising step of its block at which it was committed.
    commit_steps: list[list[int]]
    # Per sequence, the forwards it took part in (prefill, denoising steps, block commits).
    sequence_forward_passes: list[int]
    # Per sequence, every decoded block whole (``token_ids`` is cut after the first stop token):
    # what follows the stop in its block, committed or left as padding, is part of the states the
    # tokens before it were committed from, so replaying a trajectory needs it.
    block_token_ids: list[list[int]]
    # The commit step of each of those tokens; padding placed after a stop token takes the step
    # at which the stop was committed.
    block_commit_steps: list[list[int]]

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per forward pass, summed over sequences."""
        return self.output_tokens / max(1, sum(self.sequence_forward_passes))


@dataclass
class _BatchDecode:
    """One batch's decode: :class:`BlockGeneration`'s per-sequence fields, rows in batch order."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    commit_steps: list[list[int]]
    sequence_forward_passes: list[int]
    block_token_ids: list[list[int]]
    block_commit_steps: list[list[int]]
    forward_passes: int


def _decode_batch(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    spec: BlockDiffusionSpec,
    max_new_tokens: int,
    threshold: float,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    stop_ids: torch.Tensor,
    pad_id: int,
    cache_argument: str,
    fold: bool,
    commit_rule: str,
) -> _BatchDecode:
    """Decode one batch of prompts (``fold`` and ``commit_rule``: see the module docstring)."""
    device = stop_ids.device
    b, mask_id = spec.block_size, spec.mask_token_id
    prefix = commit_rule == "prefix"
    ids, prompt_mask = left_pad(prompt_ids, pad_id, device)  # (B, P)
    batch = ids.shape[0]
    positions = (prompt_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P)
    cache = InPlaceCache()
    # Every forward runs the decoder and the output projection apart: the projection runs only
    # where it predicts a masked position (on a small model it is close to half of a forward).
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    never_mask = token_flags(head.weight.shape[0], mask_id, device)  # (V,)

    def run(inputs: torch.Tensor, mask: torch.Tensor, input_positions: torch.Tensor, step_cache: InPlaceCache) -> torch.Tensor:
        return decoder(
            input_ids=inputs, attention_mask=mask, position_ids=input_positions, **{cache_argument: step_cache, "use_cache": True}
        ).last_hidden_state

    def choose(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (N, H) hidden states -> tokens and log-probs; <|mask|> is never a prediction.
        logits = head(hidden).float().masked_fill(never_mask, float("-inf"))
        return choose_tokens(logits, temperature, top_p, generator)

    forwards = 0
    nfe = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    # The rows still decoding (indices into the batch) and, per such row, the cached positions
    # that are real tokens and the next position. A row that stops leaves the cache and these.
    rows = torch.arange(batch, device=device)  # (W,)
    next_position = positions[:, -1] + 1  # (W,)
    if fold:
        # The prompt is committed by the first block's first step; nothing is cached yet.
        key_valid = torch.zeros((batch, 0), dtype=torch.bool, device=device)  # (W, L)
        committed, committed_valid, committed_positions, committed_causal = ids, prompt_mask.bool(), positions, True
    else:
        key_valid = prompt_mask.bool()
        first, first_log_prob = choose(run(ids, prompt_mask, positions, cache)[:, -1])
        forwards, nfe = 1, nfe + 1
        committed = None
    num_blocks = -(-max_new_tokens // b)
    tokens = torch.full((batch, num_blocks * b), pad_id, dtype=torch.long, device=device)
    log_probs = torch.zeros((batch, num_blocks * b), device=device)
    steps = torch.full((batch, num_blocks * b), AUTOREGRESSIVE_STEP, dtype=torch.long, device=device)
    offsets = torch.arange(b, device=device)
    for k in range(num_blocks):
        width = len(rows)
        block = torch.full((width, b), mask_id, dtype=torch.long, device=device)  # (W, b)
        block_log_probs = torch.zeros((width, b), device=device)
        block_steps = torch.full((width, b), AUTOREGRESSIVE_STEP, dtype=torch.long, device=device)
        if committed is None:
            block[:, 0], block_log_probs[:, 0] = first, first_log_prob
            # A block that starts with a stop token ends its sequence; nothing after it is decoded.
            block[:, 1:] = block[:, 1:].masked_fill(torch.isin(first, stop_ids)[:, None], pad_id)
        block_positions = next_position[:, None] + offsets  # (W, b)
        step_mask = None
        step = 0
        while bool((masked := block == mask_id).any()):
            active = masked.any(dim=1)  # (W,): rows whose block is not finished yet
            forwards += 1
            nfe[rows] += active
            if committed is not None:
                # Folded step: the committed tokens write their K/V and the whole block, its first
                # token masked too, runs its first step in the same forward (every row is active).
                shift = committed.shape[1]
                step_rows = torch.arange(width, device=device)
                hidden = run(
                    torch.cat([committed, block], dim=1),
                    fold_step_mask(key_valid, committed_valid, b, committed_causal),
                    torch.cat([committed_positions, block_positions], dim=1),
                    cache,
                )  # (W, c + b, H)
                cache.crop(-b)
                key_valid = torch.cat([key_valid, committed_valid], dim=1)
                committed = None
            else:
                shift = 0
                if step_mask is None:
                    step_mask = block_step_mask(key_valid, b)  # (W, 1, b, L + b)
                if bool(active.all()):
                    step_rows, step_cache = torch.arange(width, device=device), cache
                else:
                    # Only the rows with masked positions left run this step, over a copy of their
                    # cache rows (the step's keys and values are thrown away after it anyway).
                    step_rows = active.nonzero().squeeze(1)
                    step_cache = cache.select_rows(step_rows)
                hidden = run(block[step_rows], step_mask[step_rows], block_positions[step_rows], step_cache)  # (A, b, H)
                step_cache.crop(-b)  # the noisy block's K/V must not stay in the cache
            # Token shift: block position j is predicted at input column shift + j - 1.
            row, slot = masked[step_rows].nonzero(as_tuple=True)  # (M,) each
            proposed = torch.zeros((width, b), dtype=torch.long, device=device)
            proposed_log_probs = torch.zeros((width, b), device=device)
            chosen, chosen_log_probs = choose(hidden[row, slot + shift - 1])  # (M,) each
            proposed[step_rows[row], slot], proposed_log_probs[step_rows[row], slot] = chosen, chosen_log_probs
            confidence = proposed_log_probs.exp().masked_fill(~masked, -1.0)
            commit = masked & (confidence >= threshold) if threshold < 1.0 else torch.zeros_like(masked)
            if prefix:
                # Only the run of masked positions that reach tau from the leftmost one on (the
                # committed positions between them do not break it).
                commit &= (commit | ~masked).long().cummin(dim=1).values.bool()
                forced = masked.long().argmax(dim=1)  # (W,): the leftmost masked position
            else:
                # Each step commits at least one position: a masked block start first (it is
                # predicted from the committed text alone, as an AR step would), else the most
                # confident.
                forced = torch.where(masked[:, 0], 0, confidence.argmax(dim=1))  # (W,)
            commit[torch.arange(width, device=device), forced] |= active
            block = torch.where(commit, proposed, block)
            block_log_probs = torch.where(commit, proposed_log_probs, block_log_probs)
            block_steps = torch.where(commit, step, block_steps)
            # Once a stop token is committed, what follows it in the block is not part of the answer.
            stopped = torch.isin(block, stop_ids).long().cummax(dim=1).values.bool()  # (W, b)
            after_stop = stopped & ~torch.isin(block, stop_ids)
            filled = after_stop & (block == mask_id)
            block = block.masked_fill(filled, pad_id)
            block_steps = block_steps.masked_fill(filled, step)
            step += 1
        span = slice(k * b, (k + 1) * b)
        tokens[rows, span], log_probs[rows, span], steps[rows, span] = block, block_log_probs, block_steps
        going = ~torch.isin(block, stop_ids).any(dim=1)  # (W,)
        if not bool(going.any()) or k == num_blocks - 1:
            break
        if not bool(going.all()):
            # Rows that stopped leave the batch: later forwards no longer compute them.
            kept = going.nonzero().squeeze(1)
            cache.batch_select_indices(kept)
            rows, block, block_positions = rows[kept], block[kept], block_positions[kept]
            key_valid, next_position = key_valid[kept], next_position[kept]
        finished = torch.ones((len(rows), b), dtype=torch.bool, device=device)
        if fold:
            committed, committed_valid, committed_positions, committed_causal = block, finished, block_positions, False
        else:
            # The commit forward: the finished block's K/V into the cache, the next first token.
            hidden = run(block, block_step_mask(key_valid, b), block_positions, cache)
            forwards += 1
            nfe[rows] += 1
            key_valid = torch.cat([key_valid, finished], dim=1)
            first, first_log_prob = choose(hidden[:, -1])
        next_position = next_position + b

    stop_set = set(stop_ids.tolist())
    token_rows, log_prob_rows, step_rows = tokens.tolist(), log_probs.tolist(), steps.tolist()
    block_rows, block_step_rows = [], []
    for i, row in enumerate(token_rows):
        end = next((t + 1 for t, token in enumerate(row) if token in stop_set), min(len(row), max_new_tokens))
        block_end = -(-end // b) * b
        block_rows.append(row[:block_end])
        block_step_rows.append(step_rows[i][:block_end])
        token_rows[i], log_prob_rows[i], step_rows[i] = row[:end], log_prob_rows[i][:end], step_rows[i][:end]
    return _BatchDecode(token_rows, log_prob_rows, step_rows, nfe.tolist(), block_rows, block_step_rows, forwards)


@torch.inference_mode()
def generate_blocks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    threshold: float = 0.9,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token_ids: list[int] | None = None,
    batch_size: int = 16,
    fold: bool | None = None,
    commit_rule: str | None = None,
) -> BlockGeneration:
    """Complete chat prompts with a converted block-diffusion model, ``batch_size`` at a time.

    Args:
        model: a model converted by ``convert_to_block_diffusion`` (its config holds the block
            size and mask id); its train/eval mode is restored afterwards.
        tokenizer: its tokenizer.
        prompts: prompts already rendered with the chat template.
        max_new_tokens: the most tokens generated per prompt.
        threshold: tau; a masked position is committed once its probability reaches it.
            1.0 (or more) commits one token per step.
        temperature: 0 for greedy choices (confidence = top probability); otherwise sampled
            (confidence = the sampled token's probability).
        top_p: nucleus mass when sampling.
        seed: seeds the sampling RNG.
        stop_token_ids: ids that end a sequence; default: eos and ``<|im_end|>``.
        batch_size: prompts per batch.
        fold: fold each block's commit into the next block's first step; None: when the model
            was trained for it (``BlockDiffusionSpec.fold_commits``).
        commit_rule: ``any`` or ``prefix`` (module docstring); None: the model's
            (``BlockDiffusionSpec.commit_rule``).

    Returns:
        The completions in prompt order, with their commit steps and forward passes.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    if not 0.0 < threshold or temperature < 0.0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need threshold > 0, temperature >= 0 and 0 < top_p <= 1, got {threshold}, {temperature}, {top_p}")
    start = time.perf_counter()
    spec = block_diffusion_spec(model)
    setup = DecodeSetup.of(model, tokenizer, prompts, stop_token_ids, temperature, seed)
    fold = spec.fold_commits if fold is None else fold
    commit_rule = spec.commit_rule if commit_rule is None else commit_rule
    check_commit_rule(commit_rule)

    def decode_batch(prompt_ids: list[list[int]]) -> _BatchDecode:
        return _decode_batch(
            model, prompt_ids, spec, max_new_tokens, threshold, temperature, top_p, setup.generator, setup.stop_ids, setup.pad_id, setup.cache_argument, fold, commit_rule
        )

    with eval_mode(model):
        rows, forward_passes = decode_in_batches(setup, batch_size, decode_batch)
    return BlockGeneration(
        texts=setup.texts(tokenizer, rows["token_ids"]), forward_passes=forward_passes, seconds=time.perf_counter() - start, **rows
    )
