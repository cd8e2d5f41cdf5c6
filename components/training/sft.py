"""Supervised fine-tuning on reasoning traces: token-weighted encoding, collation and loss.

The loss covers the assistant message only, with the reasoning and the answer weighted apart
(GR2 stage 2): ``L = -lambda_r * sum log P(reasoning tokens) - lambda_o * sum log P(answer tokens)``,
``lambda_r < lambda_o``, so the model is held hardest to the JSON format and the ranking. Every
example becomes token ids plus one loss weight per token; SID mid-training reuses the same encoding
with a single weight on its target text (``components.training.midtrain``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from components.config import SftConfig
from components.modeling.tokenizer import IM_END
from components.prompts.render import REASONING_KEY, render_answer
from components.training.loop import LOSS_WEIGHT_KEY, TOKENS_KEY

# What each token is, kept beside its weight so the reasoning and answer losses can be logged apart
# even when a weight is 0 or both weights are equal.
PROMPT, REASONING, ANSWER = 0, 1, 2


class ExampleTooLong(ValueError):
    """An example longer than ``max_length``: it is dropped, never truncated."""


@dataclass(frozen=True)
class EncodedExample:
    """One training sequence.

    Attributes:
        input_ids: prompt tokens, then completion tokens, then the end token.
        loss_weights: the weight of predicting each token; 0 on the prompt.
        segments: ``PROMPT``, ``REASONING`` or ``ANSWER`` per token.
    """

    input_ids: list[int]
    loss_weights: list[float]
    segments: list[int]


@dataclass(frozen=True)
class WeightedSpan:
    """Characters ``[start, end)`` of a completion whose tokens take ``weight`` and ``segment``."""

    start: int
    end: int
    weight: float
    segment: int


def encode_weighted(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    completion: str,
    end_token: str,
    max_length: int,
    weight: float = 1.0,
    spans: Sequence[WeightedSpan] = (),
) -> EncodedExample:
    """Tokenize ``prompt + completion + end_token`` with loss weights on the completion and end only.

    The prompt is tokenized on its own, exactly as it is at generation time, so the completion the
    model learns starts from the same token boundary it will continue from when it decodes.

    Args:
        tokenizer: a fast tokenizer (the offset mapping locates ``spans``).
        prompt: the full prompt text, chat template and generation prompt already applied.
        completion: the text the model must produce.
        end_token: the token that ends the completion (one id, e.g. ``<|im_end|>``).
        max_length: the longest sequence allowed, in tokens.
        weight: the weight of every completion token outside ``spans``, and of the end token.
        spans: character ranges of ``completion`` with their own weight; a token takes a span's
            weight only when all its characters lie inside the span.

    Returns:
        The ids, a weight per token and a segment per token.

    Raises:
        ValueError: ``end_token`` is not a single token of ``tokenizer``.
        ExampleTooLong: the example is longer than ``max_length`` (it is never truncated: a cut
            answer teaches a broken format).
    """
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no single token for {end_token!r}")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    completion_ids: list[int] = encoded["input_ids"]
    length = len(prompt_ids) + len(completion_ids) + 1
    if length > max_length:
        raise ExampleTooLong(
            f"example is {length} tokens ({len(prompt_ids)} prompt + {len(completion_ids) + 1} completion), "
            f"longer than max_length {max_length}; shorten the prompt or raise max_length"
        )
    # Weights follow the offsets of the very tokens the model is fed. Re-tokenizing the pieces
    # (the reasoning alone, the JSON around it) would give other tokens wherever BPE merges across
    # a piece boundary, and the weights would drift off the sequence the model actually sees.
    weights, segments = [weight] * len(completion_ids), [ANSWER] * len(completion_ids)
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        for span in spans:
            if span.start <= start and end <= span.end:
                weights[index], segments[index] = span.weight, span.segment
    return EncodedExample(
        input_ids=prompt_ids + completion_ids + [end_id],
        loss_weights=[0.0] * len(prompt_ids) + weights + [weight],
        segments=[PROMPT] * len(prompt_ids) + segments + [ANSWER],
    )


def reasoning_span(answer: str, reasoning: str) -> tuple[int, int]:
    """Character range of the reasoning string's value (between its quotes) in a rendered answer.

    Args:
        answer: ``render_answer(reasoning, ...)``.
        reasoning: the reasoning it was rendered from.

    Returns:
        ``(start, end)`` such that ``answer[start:end]`` is the reasoning as JSON escapes it.
    """
    head = "{" + json.dumps(REASONING_KEY) + ':"'
    escaped = json.dumps(reasoning, ensure_ascii=False)[1:-1]
    start, end = len(head), len(head) + len(escaped)
    if not answer.startswith(head) or answer[start:end] != escaped:
        raise ValueError(f"the answer does not start with the reasoning value: {answer[:80]!r}")
    return start, end


def encode_sft_example(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    reasoning: str,
    ranking_sids: list[str],
    cfg: SftConfig,
    max_length: int,
    candidate_sids: Sequence[str] | None = None,
) -> EncodedExample:
    """Encode one re-ranking example for SFT: loss on the assistant message only.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        messages: the prompt's chat messages (``render_messages``).
        reasoning: the trace's reasoning text.
        ranking_sids: the trace's ranking, best first.
        cfg: lambda_reasoning for the reasoning value's tokens, lambda_answer for every other
            assistant token (JSON syntax, the ranking, the end-of-turn token).
        max_length: the longest sequence allowed, in tokens.
        candidate_sids: the candidates in prompt order when the answer names them by position
            (``render_answer``); None writes SIDs.

    Returns:
        The example; weights are 0 on the prompt.

    Raises:
        ExampleTooLong: the example is longer than ``max_length``.
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = render_answer(reasoning, ranking_sids, candidate_sids)
    start, end = reasoning_span(answer, reasoning)
    # A token that straddles the closing quote (BPE may merge "." with '"') carries JSON syntax the
    # parser needs, so only tokens wholly inside the value take the lower reasoning weight.
    return encode_weighted(
        tokenizer,
        prompt,
        answer,
        IM_END,
        max_length,
        weight=cfg.lambda_answer,
        spans=[WeightedSpan(start, end, cfg.lambda_reasoning, REASONING)],
    )


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, Tensor]:
    """Left-pad encoded examples into a batch.

    Left padding lines every row's completion up at the end of the batch, so the loss computes
    logits only over the last (longest completion) positions: right padding would leave each
    row's completion where its prompt ends, and the vocabulary projection over the columns in
    between is a large share of a small model's step.

    Args:
        examples: the batch's examples.
        pad_id: the id padding takes; padded positions get attention 0 and weight 0.

    Returns:
        ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long, ``position_ids`` (B, T) long
        (each row counts from 0 at its first real token), ``loss_weights`` (B, T) float,
        ``segments`` (B, T) long (``PROMPT`` on padding), ``num_tokens`` (B,) long, the count of
        tokens with a non-zero weight, and ``loss_weight`` (B,), their summed weight (the loss's
        normaliser, so accumulation and DDP weigh rows as one batch would).
    """
    width = max(len(example.input_ids) for example in examples)
    batch = {
        "input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
        "loss_weights": torch.zeros((len(examples), width), dtype=torch.float32),
        "segments": torch.full((len(examples), width), PROMPT, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        start = width - len(example.input_ids)
        batch["input_ids"][row, start:] = torch.tensor(example.input_ids)
        batch["attention_mask"][row, start:] = 1
        batch["loss_weights"][row, start:] = torch.tensor(example.loss_weights)
        batch["segments"][row, start:] = torch.tensor(example.segments)
    batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    batch[TOKENS_KEY] = (batch["loss_weights"] != 0).sum(dim=1)
    batch[LOSS_WEIGHT_KEY] = batch["loss_weights"].sum(dim=1)
    return batch


def weighted_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy weighted per target token, normalised by the sum of the weights.

    Args:
        model: a causal LM returning ``.logits`` (B, T, V).
        batch: a ``collate`` batch.

    Returns:
        The loss and, for logging, ``reasoning_loss`` and ``answer_loss``: the unweighted mean
        cross-entropy over each kind of token (0 for a batch without that kind, so every batch
        reports the same keys).
    """
    # Position t predicts token t + 1. Logits are computed only from the first position that predicts
    # a completion token in any row (completions end together, see ``collate``): the prompt
    # positions before it carry no loss.
    scored = ((batch["loss_weights"][:, 1:] != 0) | (batch["segments"][:, 1:] != PROMPT)).any(dim=0)  # (T-1,)
    first = int(scored.nonzero()[0, 0]) if bool(scored.any()) else 0
    width = batch["input_ids"].shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=width - first,
    ).logits  # (B, T - first, V): positions first .. T-1
    targets = batch["input_ids"][:, first + 1 :]  # (B, T-1-first)
    weights = batch["loss_weights"][:, first + 1 :].float()
    segments = batch["segments"][:, first + 1 :]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none")  # (B, T-1)
    loss = (nll * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
    extras: dict[str, Tensor] = {}
    for name, segment in (("reasoning_loss", REASONING), ("answer_loss", ANSWER)):
        mask = segments == segment
        extras[name] = (nll.detach() * mask).sum() / mask.sum().clamp_min(1)
    return loss, extras
