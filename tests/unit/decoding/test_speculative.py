"""Speculative decoding is lossless: whatever the student drafts, the output is the AR teacher's
greedy output token for token, at any batch size, with stops, and with one or several draft steps."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from components.decoding.ar import generate
from components.decoding.speculative import generate_speculative
from components.modeling.block_diffusion import convert_to_block_diffusion
from tests.unit.tiny_lm import TEXTS, chat_prompts, tiny_model, tiny_tokenizer

BLOCK = 4
MAX_NEW = 24


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    # Many prompts of many lengths, so batches are left-padded by different amounts.
    words = " ".join(TEXTS).split()
    rng = random.Random(0)
    return chat_prompts(tokenizer, [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(24)])


def _students(tokenizer, teacher):
    # The teacher's own weights converted (drafts that often agree) and an unrelated random model
    # (drafts that rarely do): neither may change a single output token.
    own = convert_to_block_diffusion(copy.deepcopy(teacher), tokenizer, BLOCK)
    return {"converted teacher": own, "unrelated": tiny_model(tokenizer, BLOCK, seed=7)}


@pytest.mark.parametrize("draft_steps", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_output_is_the_teachers_greedy_output(tokenizer, teacher, prompts, batch_size, draft_steps):
    free = generate(teacher, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    # A token the teacher does emit, as stop token: sequences end at different rounds.
    stop = free.token_ids[0][5]
    reference = generate(teacher, tokenizer, prompts, MAX_NEW, stop_token_ids=[stop], batch_size=batch_size)
    assert any(len(ids) < MAX_NEW for ids in reference.token_ids) and any(len(ids) == MAX_NEW for ids in reference.token_ids)
    for name, student in _students(tokenizer, teacher).items():
        out = generate_speculative(
            teacher, student, tokenizer, prompts, MAX_NEW, draft_steps=draft_steps, stop_token_ids=[stop], batch_size=batch_size
        )
        assert out.token_ids == reference.token_ids, name
        assert out.texts == reference.texts, name
        for got, expected in zip(out.logprobs, reference.logprobs):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=0)
        for tokens, teacher_forwards, forwards, rounds, accepted in zip(
            out.token_ids, out.teacher_forward_passes, out.sequence_forward_passes, out.rounds, out.accepted_drafts
        ):
            assert teacher_forwards == 1 + rounds  # the prefill and one verification per round
            assert rounds + 1 <= forwards - teacher_forwards + 1 <= rounds * draft_steps + 1
            # Each round emits its first token and its accepted drafts (cut at a stop or the limit),
            # and the teacher's last choice may end the sequence without a round.
            assert len(tokens) <= rounds + accepted + 1


def test_drafts_from_the_converted_teacher_are_accepted(tokenizer, teacher, prompts):
    student = _students(tokenizer, teacher)["converted teacher"]
    out = generate_speculative(teacher, student, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    assert out.mean_accepted_length > 0
    assert sum(out.teacher_forward_passes) < sum(len(ids) for ids in out.token_ids)


def test_bad_arguments_are_refused(tokenizer, teacher, prompts):
    student = _students(tokenizer, teacher)["unrelated"]
    with pytest.raises(ValueError, match="draft_steps"):
        generate_speculative(teacher, student, tokenizer, prompts, MAX_NEW, draft_steps=0)
    with pytest.raises(ValueError, match="convert"):
        generate_speculative(teacher, teacher, tokenizer, prompts, MAX_NEW)
