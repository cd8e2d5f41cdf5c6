"""AR -> block-diffusion conversion and the block attention pattern (Diffusion-GR2 section 6.2).

The converted model is the same HF causal LM with the same weights; only how it is called changes.
A response is cut into blocks of ``block_size`` tokens starting at the response start. Attention
is causal over the prompt, bidirectional inside a block and causal across blocks. Token shift
(Fast-dLLM v2): the logits at position j - 1 predict token j, so the first token of every block
is predicted autoregressively from the clean previous block, which is how it is decoded.

The training layout packs one example as ``[prompt | view 1 | ... | view V | clean response]``;
every view and the clean copy share the response's position ids, and the 4D boolean mask below
keeps each view to its own block (plus the clean blocks before it). Clean blocks never see noisy
ones, which is what makes cached block-by-block decoding exact (see ``components.decoding.block``).
The mask is passed to SDPA as is: under eager attention a boolean mask would be *added* to the
scores and silently mask nothing (research note, block-diffusion section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import MIN_BLOCK_SIZE, CommitRule
from components.modeling.tokenizer import MASK_TOKEN

# Custom keys stored on the model config, so a saved checkpoint says how it must be decoded.
BLOCK_SIZE_KEY = "bd_block_size"
MASK_TOKEN_ID_KEY = "bd_mask_token_id"
TOKEN_SHIFT_KEY = "bd_token_shift"
# Set by CFT when it trained whole-block masks (block start included): the decoder may then fold a
# block's commit into the next block's first denoising step (components.decoding.block).
FOLD_KEY = "bd_fold_commits"
# Which masked positions a denoising step may commit (DiffusionConfig.commit_rule); a checkpoint
# without it was converted before the rule existed and decodes with the papers' "any".
COMMIT_RULE_KEY = "bd_commit_rule"
COMMIT_RULES: tuple[str, ...] = get_args(CommitRule)


@dataclass(frozen=True)
class BlockDiffusionSpec:
    """How a converted model is trained and decoded."""

    block_size: int
    mask_token_id: int
    # Trained for folded decoding: a block's first step may see its first token masked.
    fold_commits: bool = False
    commit_rule: str = "any"


def is_block_diffusion(model: Any) -> bool:
    """Whether ``model`` was converted to block diffusion (and must be decoded block by block)."""
    return getattr(model.config, BLOCK_SIZE_KEY, None) is not None


def mask_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of ``<|mask|>``; ValueError when the tokenizer has no such single token."""
    token_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no single {MASK_TOKEN} token; build it with the reranker tokens")
    return int(token_id)


def convert_to_block_diffusion(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, block_size: int, commit_rule: str = "prefix"
) -> PreTrainedModel:
    """Mark an AR model as a block-diffusion model; the weights are kept one-to-one.

    Args:
        model: the AR causal LM (modified in place and returned).
        tokenizer: its tokenizer, which must hold the ``<|mask|>`` token.
        block_size: response tokens per block.
        commit_rule: which masked positions a denoising step may commit (``COMMIT_RULES``).

    Returns:
        The same model with ``bd_block_size``, ``bd_mask_token_id``, ``bd_token_shift`` and
        ``bd_commit_rule`` on its config.
    """
    _check_block_size(block_size)
    check_commit_rule(commit_rule)
    mask_id = mask_token_id(tokenizer)
    if mask_id >= model.config.vocab_size:
        raise ValueError(f"mask token id {mask_id} is outside the model's vocabulary ({model.config.vocab_size})")
    setattr(model.config, BLOCK_SIZE_KEY, block_size)
    setattr(model.config, MASK_TOKEN_ID_KEY, mask_id)
    setattr(model.config, TOKEN_SHIFT_KEY, True)
    setattr(model.config, COMMIT_RULE_KEY, commit_rule)
    return model


def block_diffusion_spec(model: PreTrainedModel) -> BlockDiffusionSpec:
    """The spec stored by :func:`convert_to_block_diffusion`; ValueError for an unconverted model."""
    block_size = getattr(model.config, BLOCK_SIZE_KEY, None)
    mask_id = getattr(model.config, MASK_TOKEN_ID_KEY, None)
    if block_size is None or mask_id is None:
        raise ValueError("the model is not a block-diffusion model: convert it first (dgr2 convert)")
    _check_block_size(int(block_size))
    commit_rule = str(getattr(model.config, COMMIT_RULE_KEY, "any"))
    check_commit_rule(commit_rule)
    return BlockDiffusionSpec(int(block_size), int(mask_id), bool(getattr(model.config, FOLD_KEY, False)), commit_rule)


def _check_block_size(block_size: int) -> None:
    if block_size < MIN_BLOCK_SIZE:
        raise ValueError(
            f"block size {block_size} is below {MIN_BLOCK_SIZE}: a block of one token is autoregressive decoding "
            "(components.decoding.ar.generate)"
        )


def check_commit_rule(commit_rule: str) -> None:
    """ValueError unless ``commit_rule`` is one of ``COMMIT_RULES``."""
    if commit_rule not in COMMIT_RULES:
        raise ValueError(f"commit_rule must be one of {', '.join(COMMIT_RULES)}, got {commit_rule!r}")


def mark_fold_commits(model: PreTrainedModel, trained: bool) -> None:
    """Record on ``model``'s config whether it was trained for folded decoding (see ``FOLD_KEY``)."""
    setattr(model.config, FOLD_KEY, trained)


def token_flags(vocab_size: int, token_id: int, device: torch.device | str = "cpu") -> Tensor:
    """(V,) bool, True only at ``token_id``: ``logits.masked_fill(flags, -inf)`` keeps a token
    (``<|mask|>``) from ever being predicted, in training and decoding alike."""
    flags = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    flags[token_id] = True
    return flags


def padded_length(length: int, block_size: int) -> int:
    """``length`` rounded up to whole blocks."""
    return -(-length // block_size) * block_size


def training_layout(prompt_length: int, response_length: int, block_size: int, views: int) -> tuple[Tensor, Tensor]:
    """The attention mask and position ids of ``[prompt | view 1 .. view V | clean response]``.

    Args:
        prompt_length: P, the prompt's tokens.
        response_length: R, a multiple of ``block_size``.
        block_size: b.
        views: V, the noisy copies of the response.

    Returns:
        ``(allowed, positions)``: ``allowed`` (N, N) bool, True where query row i may attend key j;
        ``positions`` (N,) long. N = P + (V + 1) R.
    """
    if response_length % block_size:
        raise ValueError(f"response length {response_length} is not a multiple of block size {block_size}")
    total = prompt_length + (views + 1) * response_length
    # Segment 0 is the prompt, 1..V the noisy views, V + 1 the clean response.
    segment = torch.zeros(total, dtype=torch.long)
    index = torch.arange(total)
    response_index = torch.arange(response_length)
    for copy in range(views + 1):
        start = prompt_length + copy * response_length
        segment[start : start + response_length] = copy + 1
        index[start : start + response_length] = response_index
    block = torch.where(segment > 0, index // block_size, -1)
    clean = views + 1
    q_seg, k_seg = segment[:, None], segment[None, :]
    q_idx, k_idx = index[:, None], index[None, :]
    q_blk, k_blk = block[:, None], block[None, :]
    is_view = (q_seg > 0) & (q_seg < clean)
    allowed = (
        ((k_seg == 0) & ((q_seg > 0) | (k_idx <= q_idx)))  # the prompt: causal for prompt rows, whole otherwise
        | (is_view & (k_seg == q_seg) & (k_blk == q_blk))  # a view's own block, bidirectional
        | (is_view & (k_seg == clean) & (k_blk < q_blk))  # the clean blocks before it
        | ((q_seg == clean) & (k_seg == clean) & (k_blk <= q_blk))  # clean: causal across blocks
    )
    positions = torch.where(segment > 0, prompt_length + index, index)
    return allowed, positions


def block_step_mask(key_valid: Tensor, block_size: int) -> Tensor:
    """The 4D mask of one decoding forward of a whole block against the cache.

    Args:
        key_valid: (B, L) bool, True for cached positions that are real tokens (left pads False).
        block_size: b, the block fed in this forward.

    Returns:
        (B, 1, b, L + b) bool: every block row sees every real cached token and the whole block.
    """
    batch = key_valid.shape[0]
    block = torch.ones((batch, block_size), dtype=torch.bool, device=key_valid.device)
    keys = torch.cat([key_valid.bool(), block], dim=1)  # (B, L + b)
    return keys[:, None, None, :].expand(batch, 1, block_size, keys.shape[1])


def fold_step_mask(key_valid: Tensor, committed_valid: Tensor, block_size: int, committed_causal: bool) -> Tensor:
    """The 4D mask of a forward that commits tokens and runs the next block's first step at once.

    The forward feeds ``[committed | block]`` against the cache: the committed tokens (the prompt,
    or a finished block) write their K/V and see each other causally (the prompt) or whole (a
    block), never the block after them; the block sees everything before it and itself whole.

    Args:
        key_valid: (B, L) bool, the cached positions that are real tokens.
        committed_valid: (B, c) bool, the committed tokens that are real (left pads False).
        block_size: b.
        committed_causal: whether the committed tokens attend causally among themselves.

    Returns:
        (B, 1, c + b, L + c + b) bool. A pad row sees itself, so no softmax row is empty.
    """
    batch, cached = key_valid.shape
    committed = committed_valid.shape[1]
    device = key_valid.device
    rows = committed + block_size
    order = torch.arange(committed, device=device)
    among = order[None, :] <= order[:, None] if committed_causal else torch.ones((committed, committed), dtype=torch.bool, device=device)
    committed_rows = (among[None] & committed_valid[:, None, :].bool()) | torch.eye(committed, dtype=torch.bool, device=device)[None]
    committed_keys = torch.cat([committed_rows, committed_valid[:, None, :].bool().expand(batch, block_size, committed)], dim=1)
    block_keys = torch.zeros((batch, rows, block_size), dtype=torch.bool, device=device)
    block_keys[:, committed:] = True
    cache_keys = key_valid[:, None, :].bool().expand(batch, rows, cached)
    return torch.cat([cache_keys, committed_keys, block_keys], dim=2)[:, None]
