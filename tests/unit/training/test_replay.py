"""Trajectory replay: one training-layout forward reproduces the log-prob the decoder recorded for
every committed token, sampled or greedy, with early stops and several commits per step."""

from __future__ import annotations

import pytest
import torch

from components.decoding.block import generate_blocks
from components.modeling.block_diffusion import block_diffusion_spec
from components.training.replay import chosen, replay_batch, replay_log_probs, trajectory_example
from tests.unit.tiny_lm import chat_prompts, tiny_model, tiny_tokenizer

@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, 4)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return chat_prompts(tokenizer)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize(("threshold", "temperature"), [(1.0, 1.0), (0.05, 1.0), (0.3, 0.0), (0.02, 0.7)])
def test_replayed_log_probs_equal_the_recorded_ones(model, tokenizer, prompts, threshold, temperature, fold):
    spec = block_diffusion_spec(model)
    decode = dict(threshold=threshold, temperature=temperature, seed=1, fold=fold)
    free = generate_blocks(model, tokenizer, prompts, 20, stop_token_ids=[], **decode)
    # A token the model does emit, as stop token: some trajectories end early, mid-block.
    stop = free.token_ids[0][6]
    out = generate_blocks(model, tokenizer, prompts, 20, stop_token_ids=[stop], **decode)
    assert any(len(ids) < 20 for ids in out.token_ids)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    batch = replay_batch(prompt_ids, out, range(len(prompts)), spec, tokenizer.pad_token_id)
    with torch.no_grad():
        replayed = chosen(replay_log_probs(model, batch, spec.mask_token_id, temperature or 1.0), batch["targets"])
    for row, recorded in enumerate(out.logprobs):
        n = len(recorded)
        assert batch["weights"][row, :n].eq(1).all() and batch["weights"][row, n:].eq(0).all()
        torch.testing.assert_close(replayed[row, :n], torch.tensor(recorded), atol=1e-4, rtol=0)


def test_trajectory_views_show_tokens_committed_before_each_step():
    example, (masked, source) = trajectory_example([5, 6], [10, 11, 12, 13, 20, 21, 22, 0], [-1, 1, 0, 1, -1, 0, 0, 0], 6, 4)
    assert masked.tolist() == [
        [False, True, True, True, False, True, True, True],
        [False, True, False, True, False, False, False, False],
    ]
    assert source.tolist() == [-1, 1, 0, 1, -1, 0, 0, 0]
    assert example.weights == [1.0] * 6 + [0.0] * 2


def test_a_folded_first_token_is_masked_at_step_zero_and_read_from_the_clean_stream():
    _, (masked, source) = trajectory_example([5, 6], [10, 11, 12, 13, 20, 21, 22, 0], [0, 1, 1, 2, 0, 1, 1, 1], 6, 4)
    assert masked[0].tolist() == [True] * 8
    assert masked[1].tolist() == [False, True, True, True, False, True, True, True]
    assert source.tolist() == [-1, 1, 1, 2, -1, 1, 1, 1]


def test_a_partial_block_is_refused():
    with pytest.raises(ValueError, match="whole blocks"):
        trajectory_example([5], [10, 11, 12], [-1, 0, 1], 3, 4)
