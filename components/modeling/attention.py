"""SDPA attention that lets the kernel share key/value heads instead of copying them (CPU decoding).

transformers' ``sdpa`` attention repeats every key and value head for the query heads that share
it (grouped-query attention) before calling ``scaled_dot_product_attention`` whenever a mask is
given, which every block-diffusion step and every padded batch has: a copy of the whole KV cache
per layer and forward. On CPU, PyTorch's SDPA takes ``enable_gqa=True`` with a mask in its flash
kernel, so the copy is not needed and the output is the same (block decoding about 8% faster,
benchmarks/results/decode_profile.md).

Only inference takes this path (decoding, evaluation, rollouts, a teacher's scores): with
gradients on, the stock function runs, so training computes exactly what it computed before and
the recorded models stay reproducible. On CUDA a mask with ``enable_gqa`` falls back to the slow
math kernel, so there the stock function always runs.

Registered under :data:`SDPA_SHARED_KV` with transformers' attention and mask interfaces; the
model factory builds and loads every model with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SDPA_SHARED_KV = "sdpa_shared_kv"


def sdpa_shared_kv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, q, D), key and value
    (B, H_kv, k, D) -> output (B, q, H, D)."""
    # Without a mask the stock function already shares the heads (and handles is_causal).
    stock = attention_mask is None or query.device.type != "cpu" or torch.is_grad_enabled()
    if stock or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(SDPA_SHARED_KV, sdpa_shared_kv_attention)
AttentionMaskInterface.register(SDPA_SHARED_KV, sdpa_mask)
