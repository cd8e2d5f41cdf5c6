"""The block-diffusion attention pattern: b = 1 is the AR model, and the training layout's logits
are those of cached block-by-block decoding (research note, block-diffusion sections 3 and 4.6)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from components.decoding.ar import cache_keyword
from components.modeling.block_diffusion import (
    block_diffusion_spec,
    block_step_mask,
    convert_to_block_diffusion,
    training_layout,
)
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer

PROMPT_LENGTH, RESPONSE_LENGTH = 7, 12


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def _random_ids(count: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (count,), generator=torch.Generator().manual_seed(seed))


def _layout_logits(model, prompt, views, clean, block_size):
    allowed, positions = training_layout(len(prompt), len(clean), block_size, len(views))
    ids = torch.cat([prompt, *views, clean])[None]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=allowed[None, None], position_ids=positions[None]).logits[0]


def test_conversion_keeps_weights_and_records_the_spec(tokenizer):
    ar = tiny_model(tokenizer)
    before = {k: v.clone() for k, v in ar.state_dict().items()}
    converted = convert_to_block_diffusion(ar, tokenizer, block_size=4)
    spec = block_diffusion_spec(converted)
    assert spec.block_size == 4 and spec.mask_token_id == tokenizer.convert_tokens_to_ids("<|mask|>")
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())


def test_unconverted_model_is_refused(model):
    with pytest.raises(ValueError, match="not a block-diffusion model"):
        block_diffusion_spec(model)


def test_a_one_token_block_is_refused_at_conversion_and_when_read_back(tokenizer):
    with pytest.raises(ValueError, match="block size 1 is below 2"):
        convert_to_block_diffusion(tiny_model(tokenizer), tokenizer, block_size=1)
    converted = convert_to_block_diffusion(tiny_model(tokenizer), tokenizer, block_size=4)
    converted.config.bd_block_size = 1  # a checkpoint edited or written by other code
    with pytest.raises(ValueError, match="autoregressive decoding"):
        block_diffusion_spec(converted)


def test_block_size_one_clean_stream_is_the_ar_model(model):
    vocab = model.config.vocab_size
    prompt, clean = _random_ids(PROMPT_LENGTH, vocab, 1), _random_ids(RESPONSE_LENGTH, vocab, 2)
    noisy = _random_ids(RESPONSE_LENGTH, vocab, 3)
    layout = _layout_logits(model, prompt, [noisy], clean, block_size=1)
    with torch.no_grad():
        causal = model(input_ids=torch.cat([prompt, clean])[None]).logits[0]
    clean_rows = layout[PROMPT_LENGTH + RESPONSE_LENGTH :]
    torch.testing.assert_close(layout[:PROMPT_LENGTH], causal[:PROMPT_LENGTH], atol=1e-5, rtol=0)
    torch.testing.assert_close(clean_rows, causal[PROMPT_LENGTH:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_size", [2, 4])
def test_training_layout_equals_cached_block_decoding(model, tokenizer, block_size):
    """Each view's block, fed against a cache of the prompt and the clean blocks before it, gives the
    training layout's logits; so does each clean block (the commit forward)."""
    vocab, mask_id = model.config.vocab_size, tokenizer.convert_tokens_to_ids("<|mask|>")
    prompt, clean = _random_ids(PROMPT_LENGTH, vocab, 4), _random_ids(RESPONSE_LENGTH, vocab, 5)
    masked = torch.rand(RESPONSE_LENGTH, generator=torch.Generator().manual_seed(6)) < 0.5
    views = [clean.masked_fill(masked, mask_id), clean.masked_fill(~masked, mask_id)]
    layout = _layout_logits(model, prompt, views, clean, block_size)
    keyword = cache_keyword(model)
    cache = DynamicCache()
    with torch.no_grad():
        prefill = model(input_ids=prompt[None], use_cache=True, **{keyword: cache}).logits[0]
        torch.testing.assert_close(layout[:PROMPT_LENGTH], prefill, atol=1e-4, rtol=0)
        for start in range(0, RESPONSE_LENGTH, block_size):
            span = slice(start, start + block_size)
            positions = torch.arange(PROMPT_LENGTH + start, PROMPT_LENGTH + start + block_size)[None]
            mask = block_step_mask(torch.ones((1, PROMPT_LENGTH + start), dtype=torch.bool), block_size)
            for v, view in enumerate(views):
                step = model(input_ids=view[span][None], attention_mask=mask, position_ids=positions, use_cache=True, **{keyword: cache})
                cache.crop(-block_size)
                assert cache.get_seq_length() == PROMPT_LENGTH + start
                offset = PROMPT_LENGTH + v * RESPONSE_LENGTH + start
                torch.testing.assert_close(layout[offset : offset + block_size], step.logits[0], atol=1e-4, rtol=0)
            commit = model(input_ids=clean[span][None], attention_mask=mask, position_ids=positions, use_cache=True, **{keyword: cache})
            offset = PROMPT_LENGTH + len(views) * RESPONSE_LENGTH + start
            torch.testing.assert_close(layout[offset : offset + block_size], commit.logits[0], atol=1e-4, rtol=0)


def test_eager_attention_with_a_boolean_mask_silently_differs(tokenizer):
    """The trap the design avoids: eager attention adds a bool mask instead of applying it."""
    eager = tiny_model(tokenizer)
    eager.set_attn_implementation("eager")
    sdpa = tiny_model(tokenizer)
    vocab = sdpa.config.vocab_size
    prompt, clean = _random_ids(PROMPT_LENGTH, vocab, 7), _random_ids(RESPONSE_LENGTH, vocab, 8)
    reference = _layout_logits(sdpa, prompt, [clean], clean, block_size=4)
    wrong = _layout_logits(eager, prompt, [clean], clean, block_size=4)
    assert (reference - wrong).abs().max() > 1e-3


def test_training_layout_rows():
    allowed, positions = training_layout(prompt_length=2, response_length=4, block_size=2, views=1)
    # [p0 p1 | v0 v1 v2 v3 | c0 c1 c2 c3]
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    v2, c1, c2 = 4, 7, 8
    assert allowed[v2].tolist() == [True, True, False, False, True, True, True, True, False, False]
    assert allowed[c1].tolist() == [True, True, False, False, False, False, True, True, False, False]
    assert allowed[c2].tolist() == [True, True, False, False, False, False, True, True, True, True]
    assert allowed[1].tolist() == [True, True] + [False] * 8
