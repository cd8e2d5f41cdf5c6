"""Log-probs of given completions under the current policy, with gradients (RL's new log-probs).

The decoder records each sampled token's log-prob while it generates (the "old" policy); RL needs
the same quantity again under the model being trained, for whole batches of prompt + completion in
one forward. Right padding keeps every real token at its natural position, so no position ids are
needed and the numbers match the decoder's up to float error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V)
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)

    width = max((len(c) for c in completion_ids), default=0)
    out = torch.zeros((len(rows), width), dtype=log_probs.dtype, device=device)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=log_probs.dtype, device=device)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        if not completion:
            continue
        # Logits at position j predict token j + 1: the completion's tokens are predicted from the
        # positions starting at the prompt's last token.
        start = len(prompt) - 1
        steps = torch.arange(len(completion), device=device)
        targets = torch.tensor(completion, device=device)
        out[i, : len(completion)] = log_probs[i, start + steps, targets]
        mask[i, : len(completion)] = 1.0
    return out, mask
