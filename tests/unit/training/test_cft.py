"""CFT: complementary views supervise every response token once, block starts come from the clean
stream, b = 1 is exactly the SFT loss, and left-padding a batch changes nothing."""

from __future__ import annotations

import pytest
import torch

from components.modeling.block_diffusion import BlockDiffusionSpec
from components.training.cft import cft_loss_fn, complementary_mask, complementary_views, diffusion_example, pack_batch, whole_blocks

VIEWS = 2
from components.training.sft import ANSWER, PROMPT, REASONING, EncodedExample, collate, weighted_lm_loss
from tests.unit.tiny_lm import tiny_model, tiny_tokenizer

END_ID = 1


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def _encoded(prompt_length: int, reasoning: int, answer: int, seed: int) -> EncodedExample:
    ids = torch.randint(10, 200, (prompt_length + reasoning + answer,), generator=torch.Generator().manual_seed(seed)).tolist()
    ids.append(END_ID)
    weights = [0.0] * prompt_length + [0.1] * reasoning + [1.0] * (answer + 1)
    segments = [PROMPT] * prompt_length + [REASONING] * reasoning + [ANSWER] * (answer + 1)
    return EncodedExample(ids, weights, segments)


def _spec(tokenizer, block_size: int) -> BlockDiffusionSpec:
    return BlockDiffusionSpec(block_size, tokenizer.convert_tokens_to_ids("<|mask|>"))


def test_diffusion_example_fills_the_last_block_with_the_end_token():
    example = diffusion_example(_encoded(5, 4, 2, seed=0), block_size=4, fill_id=END_ID)
    assert len(example.prompt_ids) == 5 and len(example.response_ids) == 8
    assert example.response_ids[-2:] == [END_ID, END_ID] and example.weights[-2:] == [1.0, 1.0]


def test_every_response_token_is_supervised_once_from_the_right_stream(tokenizer):
    spec = _spec(tokenizer, 4)
    examples = [diffusion_example(_encoded(p, 6, 3, seed=p), 4, END_ID) for p in (5, 9)]
    generator = torch.Generator().manual_seed(0)
    masks = [complementary_views(complementary_mask(len(e.response_ids), 4, 1e-3, generator), 4) for e in examples]
    batch = pack_batch(examples, masks, spec, pad_id=0)
    prompt_width = max(len(e.prompt_ids) for e in examples)
    response_width = batch["targets"].shape[1]
    for row, example in enumerate(examples):
        for j, token in enumerate(example.response_ids):
            column = int(batch["logit_index"][row, j])
            predicted_at = prompt_width - 1 + column  # the position whose logits predict token j
            if j % 4 == 0:
                clean_start = prompt_width + VIEWS * response_width
                assert predicted_at == (prompt_width - 1 if j == 0 else clean_start + j - 1)
            else:
                # The next position in that view holds token j's slot, and it is masked there.
                assert batch["input_ids"][row, predicted_at + 1] == spec.mask_token_id
            assert batch["targets"][row, j] == token
        # Each non-block-start token is masked in exactly one view; block starts in none.
        views = [batch["input_ids"][row, prompt_width + v * response_width : prompt_width + (v + 1) * response_width] for v in range(VIEWS)]
        masked = sum((view == spec.mask_token_id).long() for view in views)[: len(example.response_ids)]
        assert masked[::4].sum() == 0 and bool((masked.view(-1, 4)[:, 1:] == 1).all())


def test_block_size_one_is_the_sft_loss(model, tokenizer):
    encoded = [_encoded(6, 5, 4, seed=1), _encoded(8, 3, 4, seed=2)]
    spec = _spec(tokenizer, 1)
    examples = [diffusion_example(e, 1, END_ID) for e in encoded]
    masks = [complementary_views(complementary_mask(len(e.response_ids), 1, 1e-3, torch.Generator().manual_seed(0)), 1) for e in examples]
    with torch.no_grad():
        cft, _ = cft_loss_fn(spec.mask_token_id)(model, pack_batch(examples, masks, spec, pad_id=0))
        # The SFT loss never excludes the mask column; the untrained model gives it little mass.
        sft, _ = weighted_lm_loss(model, collate(encoded, pad_id=0))
    assert float(cft) == pytest.approx(float(sft), abs=5e-3)


def test_left_padding_in_a_batch_changes_no_example(model, tokenizer):
    spec = _spec(tokenizer, 4)
    examples = [diffusion_example(_encoded(p, 7, 3, seed=p), 4, END_ID) for p in (4, 11)]
    masks = [complementary_views(complementary_mask(len(e.response_ids), 4, 1e-3, torch.Generator().manual_seed(p)), 4) for p, e in enumerate(examples)]
    loss_fn = cft_loss_fn(spec.mask_token_id)
    with torch.no_grad():
        together, _ = loss_fn(model, pack_batch(examples, masks, spec, pad_id=0))
        alone = [loss_fn(model, pack_batch([e], [m], spec, pad_id=0))[0] for e, m in zip(examples, masks)]
    weight = [sum(e.weights) for e in examples]
    expected = sum(float(a) * w for a, w in zip(alone, weight)) / sum(weight)
    assert float(together) == pytest.approx(expected, abs=1e-4)


def test_whole_blocks_hide_the_start_in_view_one_and_keep_the_partial_draw_in_view_two():
    generator = torch.Generator().manual_seed(3)
    draw = complementary_mask(64, 4, 1e-3, generator)
    whole = whole_blocks(64, 4, 0.5, generator)
    assert 0 < int(whole.sum()) < 16  # some blocks whole, some not
    (first, second), source = complementary_views(draw, 4, whole)
    (plain_first, plain_second), plain_source = complementary_views(draw, 4)
    blocks = lambda t: t.view(16, 4)  # noqa: E731
    assert blocks(first)[whole].all() and torch.equal(blocks(second)[whole], blocks(draw)[whole])
    # Other blocks: the plain complementary pair.
    for got, plain in ((first, plain_first), (second, plain_second), (source, plain_source)):
        assert torch.equal(blocks(got)[~whole], blocks(plain)[~whole])
    # Every token once: starts from the clean stream, the rest from a view that hides it.
    assert (blocks(source)[:, 0] == -1).all()
    rest = source != -1
    hides = torch.stack([first, second]).gather(0, source.clamp(min=0)[None])[0]
    assert hides[rest].all()
    assert torch.equal(blocks(source)[whole][:, 1:] == 1, blocks(draw)[whole][:, 1:])
