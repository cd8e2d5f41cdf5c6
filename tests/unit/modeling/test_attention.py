"""The shared-KV SDPA attention computes what transformers' stock SDPA computes; training keeps
the stock path."""

from __future__ import annotations

import torch

from components.modeling.attention import SDPA_SHARED_KV
from components.modeling.block_diffusion import training_layout
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer


def _pair():
    tokenizer = tiny_tokenizer()
    stock, shared = tiny_model(tokenizer), tiny_model(tokenizer)
    stock.set_attn_implementation("sdpa")
    assert shared.config._attn_implementation == SDPA_SHARED_KV
    assert shared.config.num_key_value_heads < shared.config.num_attention_heads  # the grouped case
    return stock, shared, tokenizer


def _layout_inputs(tokenizer):
    allowed, positions = training_layout(prompt_length=6, response_length=8, block_size=4, views=2)
    ids = torch.randint(0, len(tokenizer), (2, allowed.shape[0]), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": allowed[None, None].expand(2, 1, -1, -1), "position_ids": positions[None].expand(2, -1)}


def test_block_mask_same_logits_without_copying_heads(monkeypatch):
    """A 4D block-diffusion mask at inference: same logits, and SDPA shares the key/value heads."""
    stock, shared, tokenizer = _pair()
    inputs = _layout_inputs(tokenizer)
    with torch.no_grad():
        expected = stock(**inputs).logits
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def recording(query, key, value, **kwargs):
            calls.append((query.shape[1], key.shape[1], kwargs.get("enable_gqa", False)))
            return sdpa(query, key, value, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
        got = shared(**inputs).logits
    torch.testing.assert_close(expected, got, atol=1e-5, rtol=0)
    heads, kv_heads = shared.config.num_attention_heads, shared.config.num_key_value_heads
    assert calls == [(heads, kv_heads, True)] * shared.config.num_hidden_layers


def test_training_takes_the_stock_path():
    """With gradients on, logits and gradients are stock SDPA's to the bit (training is unchanged)."""
    stock, shared, tokenizer = _pair()
    stock.train(), shared.train()
    inputs = _layout_inputs(tokenizer)
    losses = []
    for model in (stock, shared):
        logits = model(**inputs).logits
        loss = logits.logsumexp(-1).mean()
        loss.backward()
        losses.append((logits, model.model.layers[0].self_attn.k_proj.weight.grad))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])


def test_left_padded_batch_same_logits():
    """A 2D padding mask (a left-padded batch, prefill and one-token steps alike)."""
    stock, shared, tokenizer = _pair()
    ids = torch.randint(0, len(tokenizer), (3, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4], mask[1, :1] = 0, 0
    with torch.no_grad():
        expected, got = (model(input_ids=ids, attention_mask=mask).logits for model in (stock, shared))
    real = mask.bool()
    torch.testing.assert_close(expected[real], got[real], atol=1e-5, rtol=0)
