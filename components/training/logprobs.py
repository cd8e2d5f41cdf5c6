"""Log-probs of given completions under the current policy, with gradients (RL's new log-probs).

The decoder records each sampled token's log-prob while it generates (the "old" policy); RL needs
the same quantity again under the model being trained, for whole batches of prompt + completion in
one forward. Right padding keeps every real token at its natural position, so no position ids are
needed and the numbers match the decoder's up to float error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def completion_distributions(
    model: nn.Module,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
    exclude_id: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The model's next-token distribution before every completion token, given its prompt.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, L, V).
        prompt_ids: token ids of each prompt (at least one token each).
        completion_ids: token ids of each completion.
        pad_id: id used for right padding (masked out).
        temperature: distributions are ``softmax(logits / temperature)``.
        exclude_id: a token given probability 0 before normalising (a student's ``<|mask|>``, so
            teacher and student share one support).

    Returns:
        ``(log_probs (B, T, V), mask (B, T))`` with T the longest completion: row i, column j is the
        distribution that predicts completion token j; ``mask`` is 1 on real completion tokens.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(completion_ids)} completions")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)  # (B, L)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, device=device)
        attention_mask[i, : len(row)] = 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature  # (B, L, V)
    if exclude_id is not None:
        logits[..., exclude_id] = float("-inf")
    width = max((len(c) for c in completion_ids), default=0)
    # Logits at position j predict token j + 1: the completion's tokens are predicted from the
    # positions starting at the prompt's last token.
    index = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), device=device)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        index[i, : len(completion)] = len(prompt) - 1 + torch.arange(len(completion), device=device)
        mask[i, : len(completion)] = 1.0
    picked = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    return torch.log_softmax(picked, dim=-1), mask


def completion_logprobs(
    model: nn.Module,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of each completion given its prompt.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, L, V).
        prompt_ids: token ids of each prompt (at least one token each).
        completion_ids: token ids of each completion, as generated.
        pad_id: id used for right padding (masked out).
        temperature: the sampling temperature the completions were drawn with; log-probs are of
            ``softmax(logits / temperature)`` so they compare with the decoder's.

    Returns:
        ``(logprobs, mask)``, both (B, T) with T the longest completion; ``mask`` is 1 on real
        completion tokens. ``logprobs`` carries gradients to the model.
    """
    log_probs, mask = completion_distributions(model, prompt_ids, completion_ids, pad_id, temperature)
    targets = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    for i, completion in enumerate(completion_ids):
        targets[i, : len(completion)] = torch.tensor(completion, device=mask.device)
    return torch.where(mask.bool(), log_probs.gather(-1, targets[..., None]).squeeze(-1), 0.0), mask
