"""Trajectory replay: the block-diffusion policy's log-probs on the states its decoder visited.

OPD and RL train a block-diffusion student on its own decoded trajectories (TraceRL-style). The
decoder records, for every response token, the denoising step of its block at which it was
committed (``components.decoding.block``). Replaying step ``s`` of every block at once is one
view of the training layout: tokens committed before step ``s`` are shown, the rest are masked,
and the tokens committed at step ``s`` are read from that view (token shift). A block's first
token, decoded autoregressively from the committed previous block, is read from the clean stream.
So one forward over ``[prompt | step-0 view | ... | step-(S-1) view | clean response]`` gives the
log-prob of every committed token under exactly the state it was committed from. Under folded
decoding a block's first token is committed at step 0: masked in the step-0 view, read from the
clean stream all the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from components.decoding.block import AUTOREGRESSIVE_STEP, BlockGeneration
from components.modeling.block_diffusion import BlockDiffusionSpec
from components.training.cft import CLEAN, DiffusionExample, pack_batch, response_logits
from components.training.sft import ANSWER


def trajectory_example(
    prompt_ids: list[int], block_ids: list[int], block_steps: list[int], answer_length: int, block_size: int
) -> tuple[DiffusionExample, tuple[Tensor, Tensor]]:
    """A decoded trajectory as a training example and its replay views.

    Args:
        prompt_ids: the prompt's tokens.
        block_ids: the decoded blocks whole (:attr:`BlockGeneration.block_token_ids`).
        block_steps: each of their tokens' commit step (``AUTOREGRESSIVE_STEP`` for a block's first).
        answer_length: how many of them are the answer (up to the first stop token included); the
            rest of the last block shaped the states but is not supervised.
        block_size: b.

    Returns:
        The example (weight 1 on answer tokens, 0 after them) and ``(masked (S, R), source (R,))``
        for :func:`components.training.cft.pack_batch`, with S the most steps any block took.
    """
    if len(block_ids) != len(block_steps) or len(block_ids) % block_size or not 0 < answer_length <= len(block_ids):
        raise ValueError("a trajectory needs whole blocks, a commit step per token and a non-empty answer")
    steps = torch.tensor(block_steps)  # (R,)
    rounds = max(int(steps.max()) + 1, 1)
    masked = torch.stack([steps >= r for r in range(rounds)])  # (S, R): not yet committed at step r
    # A block's first token is always predicted from the committed text before it (the clean
    # stream), whether it was decoded before the block's steps or committed by a folded first step.
    starts = torch.arange(len(block_ids)) % block_size == 0
    source = torch.where(starts | (steps == AUTOREGRESSIVE_STEP), CLEAN, steps)
    example = DiffusionExample(
        prompt_ids=list(prompt_ids),
        response_ids=list(block_ids),
        weights=[1.0] * answer_length + [0.0] * (len(block_ids) - answer_length),
        segments=[ANSWER] * len(block_ids),
    )
    return example, (masked, source)


def replay_batch(
    prompt_ids: Sequence[list[int]], generation: BlockGeneration, rows: Sequence[int], spec: BlockDiffusionSpec, pad_id: int
) -> dict[str, Tensor]:
    """The :func:`pack_batch` batch that replays the trajectories ``rows`` of ``generation``."""
    pairs = [
        trajectory_example(
            prompt_ids[i], generation.block_token_ids[i], generation.block_commit_steps[i], len(generation.token_ids[i]), spec.block_size
        )
        for i in rows
    ]
    return pack_batch([example for example, _ in pairs], [views for _, views in pairs], spec, pad_id)


def replay_log_probs(model: nn.Module, batch: dict[str, Tensor], mask_token_id: int, temperature: float = 1.0) -> Tensor:
    """Log-softmax of the policy on every replayed state, with gradients.

    Args:
        model: the block-diffusion policy.
        batch: a :func:`replay_batch`.
        mask_token_id: the ``<|mask|>`` id (never a prediction).
        temperature: the decoder's sampling temperature, so the values compare with its records.

    Returns:
        (B, R, V) log-probs; ``batch["targets"]`` and ``batch["weights"]`` say which token each row
        committed and whether it counts.
    """
    return torch.log_softmax(response_logits(model, batch, mask_token_id) / temperature, dim=-1)


def chosen(log_probs: Tensor, targets: Tensor) -> Tensor:
    """The (B, R) log-probs of ``targets`` out of (B, R, V) ``log_probs``."""
    return log_probs.gather(-1, targets[..., None]).squeeze(-1)
