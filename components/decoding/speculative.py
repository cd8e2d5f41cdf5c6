"""Lossless speculative decoding: the block-diffusion student drafts, its AR teacher verifies.

Per round and sequence, with ``t`` the next token (the teacher's choice, cached by neither model):

1. draft: the student runs ``[accepted | t, <|mask|> x (b - 1)]`` in one forward: the tokens the
   last round accepted write their K/V to its cache (causally, as the AR model it was converted
   from reads text) and the block proposes the b - 1 tokens after ``t``. ``draft_steps`` > 1 runs
   more denoising steps on the block (committing what reaches ``draft_threshold``, at least one
   position a step); the last step fills every position still masked;
2. verify: the teacher runs ``[t, d_1, .., d_{b-1}]`` causally against its cache in one forward;
   its greedy choices g_1..g_b follow each prefix. The longest run with d_i == g_i is accepted
   (n tokens) and g_{n+1} is the next ``t``: the round emits t, d_1..d_n, n + 1 tokens for one
   teacher forward.

Every emitted token is the teacher's greedy choice after the tokens before it, so the output is the
AR decoder's token for token (anchor: block-diffusion drafters, DFlash, arXiv 2602.06036); only a
floating-point near-tie between a one-token and a block forward could tell them apart. Rejected
drafts stay in the teacher's cache, masked out of every later forward; each row advances at its own
pace with its own position ids, and a row that stops leaves the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.decoding.ar import DecodeSetup, Generation, decode_in_batches, eval_mode, left_pad
from components.decoding.cache import InPlaceCache
from components.modeling.block_diffusion import block_diffusion_spec, block_step_mask, fold_step_mask, token_flags


@dataclass
class SpeculativeGeneration(Generation):
    """A :class:`Generation` plus what the drafts saved."""

    # Per sequence: forwards it took part in, the teacher's and the student's together.
    sequence_forward_passes: list[int]
    # Per sequence: teacher forwards (prefill and one verification per round).
    teacher_forward_passes: list[int]
    # Per sequence: rounds, and drafted tokens the teacher accepted over them.
    rounds: list[int]
    accepted_drafts: list[int]

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per forward pass of either model, summed over sequences."""
        return self.output_tokens / max(1, sum(self.sequence_forward_passes))

    @property
    def mean_accepted_length(self) -> float:
        """Drafted tokens accepted per verification (each round also emits the teacher's own token)."""
        return sum(self.accepted_drafts) / max(1, sum(self.rounds))


@dataclass
class _BatchDecode:
    """One batch's decode: :class:`SpeculativeGeneration`'s per-sequence fields, rows in batch order."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    sequence_forward_passes: list[int]
    teacher_forward_passes: list[int]
    rounds: list[int]
    accepted_drafts: list[int]
    forward_passes: int


def _decode_batch(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    draft_steps: int,
    draft_threshold: float,
    setup: DecodeSetup,
) -> _BatchDecode:
    stop_ids, device = setup.stop_ids, setup.stop_ids.device
    spec = block_diffusion_spec(student)
    b, mask_id = spec.block_size, spec.mask_token_id
    ids, prompt_mask = left_pad(prompt_ids, setup.pad_id, device)  # (B, P)
    batch = ids.shape[0]
    positions = (prompt_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P)
    keyword = setup.cache_argument
    teacher_body, teacher_head = teacher.get_decoder(), teacher.get_output_embeddings()
    student_body, student_head = student.get_decoder(), student.get_output_embeddings()
    never_mask = token_flags(student_head.weight.shape[0], mask_id, device)  # (V,)
    teacher_cache, student_cache = InPlaceCache(), InPlaceCache()

    def run(body: torch.nn.Module, inputs: torch.Tensor, mask: torch.Tensor, input_positions: torch.Tensor, cache: InPlaceCache) -> torch.Tensor:
        return body(input_ids=inputs, attention_mask=mask, position_ids=input_positions, **{keyword: cache, "use_cache": True}).last_hidden_state

    def greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = logits.float().log_softmax(dim=-1)
        best, tokens = log_probs.max(dim=-1)
        return tokens, best

    hidden = run(teacher_body, ids, prompt_mask, positions, teacher_cache)
    pending, pending_log_prob = greedy(teacher_head(hidden[:, -1]))  # (B,) each: the next token t
    teacher_valid = prompt_mask.bool()  # (W, L_teacher): cached teacher positions that count
    student_valid = torch.zeros((batch, 0), dtype=torch.bool, device=device)  # (W, L_student)
    # What the student has yet to cache: the prompt first, then each round's accepted tokens.
    accepted, accepted_valid, accepted_positions, accepted_causal = ids, prompt_mask.bool(), positions, True
    next_position = positions[:, -1] + 1  # (W,): the position of t
    rows = list(range(batch))  # batch row of each row still decoding
    outputs: list[list[int]] = [[] for _ in range(batch)]
    output_log_probs: list[list[float]] = [[] for _ in range(batch)]
    teacher_forwards, student_forwards = [1] * batch, [0] * batch
    rounds, accepted_drafts = [0] * batch, [0] * batch
    forwards = 1
    stop_set = set(stop_ids.tolist())
    offsets = torch.arange(b, device=device)

    def finish(kept: list[int]) -> None:
        # Rows not in ``kept`` (indices into the current rows) leave both caches and every state.
        nonlocal rows, pending, pending_log_prob, teacher_valid, student_valid, next_position
        nonlocal accepted, accepted_valid, accepted_positions
        index = torch.tensor(kept, dtype=torch.long, device=device)
        teacher_cache.batch_select_indices(index)
        student_cache.batch_select_indices(index)
        rows = [rows[i] for i in kept]
        pending, pending_log_prob, next_position = pending[index], pending_log_prob[index], next_position[index]
        teacher_valid, student_valid = teacher_valid[index], student_valid[index]
        accepted, accepted_valid, accepted_positions = accepted[index], accepted_valid[index], accepted_positions[index]

    while rows:
        width = len(rows)
        block_positions = next_position[:, None] + offsets  # (W, b)
        block = torch.full((width, b), mask_id, dtype=torch.long, device=device)
        block[:, 0] = pending
        # Draft: the student caches the accepted tokens and runs its first step on the block.
        shift = accepted.shape[1]
        hidden = run(
            student_body,
            torch.cat([accepted, block], dim=1),
            fold_step_mask(student_valid, accepted_valid, b, accepted_causal),
            torch.cat([accepted_positions, block_positions], dim=1),
            student_cache,
        )[:, shift:]  # (W, b, H): the block's part
        student_cache.crop(-b)
        student_valid = torch.cat([student_valid, accepted_valid], dim=1)
        step_mask = block_step_mask(student_valid, b)
        for step in range(draft_steps):
            if step:
                hidden = run(student_body, block, step_mask, block_positions, student_cache)
                student_cache.crop(-b)
            masked = block == mask_id  # (W, b)
            # Token shift: block position j is predicted at the block's column j - 1.
            logits = student_head(hidden[:, :-1]).float().masked_fill(never_mask, float("-inf"))  # (W, b - 1, V)
            probs, proposals = logits.softmax(dim=-1).max(dim=-1)  # (W, b - 1) each
            probs = probs.masked_fill(~masked[:, 1:], -1.0)
            if step == draft_steps - 1:
                commit = masked[:, 1:]
            else:
                commit = probs >= draft_threshold
                commit[torch.arange(width, device=device), probs.argmax(dim=1)] = True
                commit &= masked[:, 1:]
            block[:, 1:] = torch.where(commit, proposals, block[:, 1:])
            if not bool((block == mask_id).any()):
                break
        drafted_forwards = step + 1
        # Verify: the teacher's greedy choice after each prefix of the drafted block.
        hidden = run(
            teacher_body,
            block,
            fold_step_mask(teacher_valid, torch.ones_like(block, dtype=torch.bool), 0, True),
            block_positions,
            teacher_cache,
        )
        choices, choice_log_probs = greedy(teacher_head(hidden))  # (W, b) each
        agree = (block[:, 1:] == choices[:, :-1]).long().cumprod(dim=1)  # (W, b - 1)
        taken = agree.sum(dim=1)  # (W,): accepted drafted tokens n
        emitted = offsets[None, :] <= taken[:, None]  # (W, b): t and the accepted drafts
        teacher_valid = torch.cat([teacher_valid, emitted], dim=1)
        forwards += 1 + drafted_forwards
        # The log-prob of each accepted draft is the teacher's, at the position before it.
        block_log_probs = torch.cat([pending_log_prob[:, None], choice_log_probs[:, :-1]], dim=1)
        row_index = torch.arange(width, device=device)
        pending, pending_log_prob = choices[row_index, taken], choice_log_probs[row_index, taken]
        accepted, accepted_valid, accepted_positions, accepted_causal = block, emitted, block_positions, True
        next_position = next_position + taken + 1
        kept = []
        rows_out = zip(rows, taken.tolist(), block.tolist(), block_log_probs.tolist(), pending.tolist(), pending_log_prob.tolist(), strict=True)
        for i, (row, count, tokens, log_probs, next_token, next_log_prob) in enumerate(rows_out):
            teacher_forwards[row] += 1
            student_forwards[row] += drafted_forwards
            rounds[row] += 1
            accepted_drafts[row] += count
            room = max_new_tokens - len(outputs[row])
            new = tokens[: count + 1][:room]
            stop_at = next((t for t, token in enumerate(new) if token in stop_set), None)
            if stop_at is not None:
                new = new[: stop_at + 1]
            outputs[row] += new
            output_log_probs[row] += log_probs[: len(new)]
            if stop_at is not None or len(outputs[row]) == max_new_tokens:
                continue
            if next_token in stop_set or len(outputs[row]) == max_new_tokens - 1:
                # The teacher's next token ends the sequence: emitted now, no round is spent on it.
                outputs[row].append(next_token)
                output_log_probs[row].append(next_log_prob)
                continue
            kept.append(i)
        if len(kept) < width:
            finish(kept)
    sequence_forwards = [t + s for t, s in zip(teacher_forwards, student_forwards)]
    return _BatchDecode(outputs, output_log_probs, sequence_forwards, teacher_forwards, rounds, accepted_drafts, forwards)


@torch.inference_mode()
def generate_speculative(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    draft_steps: int = 1,
    draft_threshold: float = 0.9,
    stop_token_ids: list[int] | None = None,
    batch_size: int = 16,
) -> SpeculativeGeneration:
    """The AR teacher's greedy completions of chat prompts, drafted by its block-diffusion student.

    Args:
        teacher: the AR model whose greedy output this is.
        student: a block-diffusion model sharing the teacher's tokenizer (its block size sets the
            draft length).
        tokenizer: their tokenizer.
        prompts: prompts already rendered with the chat template.
        max_new_tokens: the most tokens generated per prompt.
        draft_steps: student forwards per draft (1: the whole block from one forward).
        draft_threshold: tau of the draft's intermediate steps (``draft_steps`` > 1).
        stop_token_ids: ids that end a sequence; default: eos and ``<|im_end|>``.
        batch_size: prompts per batch.

    Returns:
        The completions in prompt order, with the forwards of both models and the accepted drafts.
    """
    if max_new_tokens < 1 or batch_size < 1 or draft_steps < 1:
        raise ValueError("max_new_tokens, batch_size and draft_steps must be positive")
    if not 0.0 < draft_threshold <= 1.0:
        raise ValueError(f"need 0 < draft_threshold <= 1, got {draft_threshold}")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError("teacher and student must share a vocabulary (the student is converted from the teacher)")
    start = time.perf_counter()
    setup = DecodeSetup.of(teacher, tokenizer, prompts, stop_token_ids, 0.0, None)

    def decode_batch(prompt_ids: list[list[int]]) -> _BatchDecode:
        return _decode_batch(teacher, student, prompt_ids, max_new_tokens, draft_steps, draft_threshold, setup)

    with eval_mode(teacher), eval_mode(student):
        rows, forward_passes = decode_in_batches(setup, batch_size, decode_batch)
    return SpeculativeGeneration(
        texts=setup.texts(tokenizer, rows["token_ids"]), forward_passes=forward_passes, seconds=time.perf_counter() - start, **rows
    )
