"""Conversion fine-tuning (CFT): the masked block-diffusion objective on the SFT data.

Each example is packed as ``[prompt | view 1 | view 2 | clean response]`` (see
``components.modeling.block_diffusion.training_layout``). Per response block a mask rate t is drawn
from U(eps, 1); view 1 masks each token of the block except its first with probability t, and
view 2 masks exactly the others, so every response token is supervised once per example. With
``whole_block_rate`` some blocks are masked whole in view 1, start included, which is what a
folded decoder's first step sees (the model is then marked for folded decoding); view 2 then holds
the block's partial draw (:func:`complementary_views`):

- a block's first token from the clean stream's logits at the position before it (the prompt's
  last token for the first block), as the decoder predicts it from the committed previous block;
- every other token from the logits at the position before it in the view where it is masked
  (token shift).

Reasoning and answer tokens are weighted lambda_r / lambda_o as in SFT. The response ends with the
end token and its last block is filled with more end tokens, labelled as such, so that once the end
is committed the rest of the block follows with high confidence (EOS-fill).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.modeling.block_diffusion import BlockDiffusionSpec, padded_length, token_flags, training_layout
from components.training.loop import LOSS_WEIGHT_KEY, TOKENS_KEY
from components.training.sft import ANSWER, PROMPT, REASONING, EncodedExample

# Source of a token supervised from the clean stream (a block's first token) rather than a view.
CLEAN = -1


@dataclass(frozen=True)
class DiffusionExample:
    """One example split into its prompt and its block-padded response."""

    prompt_ids: list[int]
    response_ids: list[int]
    weights: list[float]
    segments: list[int]


def diffusion_example(encoded: EncodedExample, block_size: int, fill_id: int) -> DiffusionExample:
    """Split an SFT example at its first completion token and fill its last block with ``fill_id``.

    Args:
        encoded: an ``encode_sft_example`` result (prompt tokens have segment ``PROMPT``).
        block_size: b.
        fill_id: the end token, which the filled positions are labelled with.

    Returns:
        The prompt, and the response, weights and segments padded to a multiple of b; filled
        positions take the end token's weight.
    """
    prompt_length = next((i for i, s in enumerate(encoded.segments) if s != PROMPT), len(encoded.segments))
    if prompt_length == 0 or prompt_length == len(encoded.input_ids):
        raise ValueError("a diffusion example needs a non-empty prompt and a non-empty response")
    response = list(encoded.input_ids[prompt_length:])
    weights = list(encoded.loss_weights[prompt_length:])
    segments = list(encoded.segments[prompt_length:])
    fill = padded_length(len(response), block_size) - len(response)
    return DiffusionExample(
        prompt_ids=list(encoded.input_ids[:prompt_length]),
        response_ids=response + [fill_id] * fill,
        weights=weights + [weights[-1]] * fill,
        segments=segments + [ANSWER] * fill,
    )


def complementary_mask(response_length: int, block_size: int, eps: float, generator: torch.Generator) -> Tensor:
    """View 1's mask over a response: per block a rate t ~ U(eps, 1), block-start tokens never masked.

    View 2 masks the complement of this among the non-block-start tokens.

    Returns:
        (R,) bool, True where view 1 shows ``<|mask|>``.
    """
    blocks = response_length // block_size
    rates = eps + (1.0 - eps) * torch.rand(blocks, generator=generator)  # (K,)
    draws = torch.rand(response_length, generator=generator)  # (R,)
    masked = draws < rates.repeat_interleave(block_size)
    masked[::block_size] = False
    return masked


def whole_blocks(response_length: int, block_size: int, rate: float, generator: torch.Generator) -> Tensor:
    """(K,) bool: the blocks that view 1 hides whole, start included, each with probability ``rate``."""
    return torch.rand(response_length // block_size, generator=generator) < rate


def complementary_views(view1: Tensor, block_size: int, whole: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The two CFT views of a :func:`complementary_mask` and which stream supervises each token.

    In a block of ``whole`` (:func:`whole_blocks`), view 1 hides everything, start included (what
    a folded decoder's first step sees) and view 2 hides what the draw gave view 1: the drawn
    tokens are supervised from view 2's partial state, the others from the whole-block state.
    Every token is still supervised exactly once.

    Returns:
        ``(masked (2, R) bool, source (R,) long)``: ``source`` is the view that masks a token, or
        ``CLEAN`` for block-start tokens (predicted from the clean previous block).
    """
    start = torch.zeros_like(view1)
    start[::block_size] = True
    first, second = view1, ~view1 & ~start
    source = torch.where(start, CLEAN, torch.where(view1, 0, 1))
    if whole is not None:
        hidden = whole.repeat_interleave(block_size)  # (R,)
        first, second = view1 | hidden, torch.where(hidden, view1, second)
        # A start stays supervised from the clean stream even where view 1 hides it.
        source = torch.where(start, CLEAN, torch.where(hidden, torch.where(view1, 1, 0), source))
    return torch.stack([first, second]), source


def pack_batch(
    examples: Sequence[DiffusionExample],
    views: Sequence[tuple[Tensor, Tensor]],
    spec: BlockDiffusionSpec,
    pad_id: int,
) -> dict[str, Tensor]:
    """Pack examples into the training layout ``[prompt | view 1 .. view V | clean response]``.

    Prompts are left-padded to a common length and responses filled to the batch's longest, so
    each row's response sits at the same columns and the logits the loss reads are one slice for
    the whole batch. Rows with fewer views get views with nothing masked, which nothing reads.

    Args:
        examples: the batch's examples.
        views: per example, ``(masked (V_i, R_i) bool, source (R_i,) long)``: which response
            tokens each view hides, and the view whose logits supervise each token (``CLEAN``:
            the clean stream, i.e. the previous block as committed).
        spec: block size and mask token id.
        pad_id: the id of padding (never attended to, never supervised).

    Returns:
        ``input_ids`` (B, N), ``attention_mask`` (B, 1, N, N) bool, ``position_ids`` (B, N),
        ``logit_index`` (B, R): for every response token, the column (counted from the prompt's
        last position) whose logits predict it; ``targets``, ``weights``, ``segments`` (B, R); and
        ``num_tokens`` and ``loss_weight`` (B,). N = P + (V + 1) R.
    """
    prompt_width = max(len(e.prompt_ids) for e in examples)
    response_width = max(len(e.response_ids) for e in examples)
    num_views = max(masked.shape[0] for masked, _ in views)
    allowed, layout_positions = training_layout(prompt_width, response_width, spec.block_size, num_views)
    width = allowed.shape[0]
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = allowed.repeat(batch, 1, 1)  # (B, N, N)
    positions = torch.zeros((batch, width), dtype=torch.long)
    targets = torch.full((batch, response_width), pad_id, dtype=torch.long)
    weights = torch.zeros((batch, response_width))
    segments = torch.full((batch, response_width), PROMPT, dtype=torch.long)
    logit_index = torch.zeros((batch, response_width), dtype=torch.long)
    response_index = torch.arange(response_width)
    eye = torch.eye(width, dtype=torch.bool)
    clean_start = prompt_width + num_views * response_width
    for row, (example, (masked, source)) in enumerate(zip(examples, views)):
        pad = prompt_width - len(example.prompt_ids)
        length = len(example.response_ids)
        response = torch.full((response_width,), pad_id, dtype=torch.long)
        response[:length] = torch.tensor(example.response_ids)
        input_ids[row, pad:prompt_width] = torch.tensor(example.prompt_ids)
        for view in range(num_views):
            hidden = torch.zeros(response_width, dtype=torch.bool)
            if view < masked.shape[0]:
                hidden[:length] = masked[view]
            start = prompt_width + view * response_width
            input_ids[row, start : start + response_width] = response.masked_fill(hidden, spec.mask_token_id)
        input_ids[row, clean_start:] = response
        # Pads neither attend nor are attended to; a pad row sees only itself (no empty softmax row).
        real = torch.ones(width, dtype=torch.bool)
        real[:pad] = False
        for copy in range(num_views + 1):
            start = prompt_width + copy * response_width
            real[start + length : start + response_width] = False
        attention[row] &= real[None, :] & real[:, None]
        attention[row] |= eye & ~real[:, None]
        positions[row] = (layout_positions - pad).clamp(min=0)
        # Column 0 of the kept logits is the prompt's last position: token j of view v is predicted
        # at column v * R + j (position j - 1 of that view), token j of the clean stream at
        # V * R + j; the first response token at column 0.
        stream = torch.full((response_width,), num_views, dtype=torch.long)
        stream[:length] = torch.where(source == CLEAN, num_views, source)
        index = stream * response_width + response_index
        index[0] = 0
        logit_index[row] = index
        targets[row, :length] = response[:length]
        weights[row, :length] = torch.tensor(example.weights)
        segments[row, :length] = torch.tensor(example.segments)
    return {
        "input_ids": input_ids,
        "attention_mask": attention[:, None],
        "position_ids": positions,
        "logit_index": logit_index,
        "targets": targets,
        "weights": weights,
        "segments": segments,
        TOKENS_KEY: (weights != 0).sum(dim=1),
        LOSS_WEIGHT_KEY: weights.sum(dim=1),
        # A 0-d tensor: the same for every row, so it is not split across DDP ranks.
        "prompt_width": torch.tensor(prompt_width),
    }


def response_logits(model: nn.Module, batch: dict[str, Tensor], mask_token_id: int) -> Tensor:
    """The logits that predict every response token of a :func:`pack_batch` batch, float32, with the
    ``<|mask|>`` column at -inf (it is never a prediction, as in the decoder).

    Returns:
        (B, R, V).
    """
    # Logits from the prompt's last position to the end: N - P + 1 columns, column 0 at P - 1.
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["input_ids"].shape[1] - int(batch["prompt_width"]) + 1,
    ).logits  # (B, N - P + 1, V)
    index = batch["logit_index"][..., None].expand(-1, -1, logits.shape[-1])
    chosen = logits.gather(1, index).float()
    return chosen.masked_fill(token_flags(chosen.shape[-1], mask_token_id, chosen.device), float("-inf"))


def cft_loss_fn(mask_token_id: int):
    """The CFT loss: weighted cross-entropy of every response token at its :func:`pack_batch` column."""

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        chosen = response_logits(model, batch, mask_token_id)  # (B, R, V)
        nll = F.cross_entropy(chosen.transpose(1, 2), batch["targets"], reduction="none")  # (B, R)
        weights = batch["weights"]
        loss = (nll * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        extras: dict[str, Tensor] = {}
        for name, segment in (("reasoning_loss", REASONING), ("answer_loss", ANSWER)):
            mask = (batch["segments"] == segment) & (weights != 0)
            extras[name] = (nll.detach() * mask).sum() / mask.sum().clamp_min(1)
        return loss, extras

    return loss_fn
