from __future__ import annotations

import warnings

import pytest
import torch

from components.config import ModelConfig
from components.decoding import Generation, ar, default_stop_token_ids, generate
from components.modeling import build_model, build_tokenizer
from components.modeling.tokenizer import IM_END

SID_TOKENS = [f"<s_{level}_{code}>" for level in "abcd" for code in range(8)]
TEXTS = [
    "The history is mostly nail polish with repeat purchases and strong brand loyalty.",
    "Candidates: creams, shampoos, mascara, eau de parfum; rank them for the user.",
    'Answer with {"reasoning": ..., "ranking": [...]} listing ten candidates.',
] * 5
# Different lengths, so the batch is left-padded by different amounts.
CONTENTS = [
    "Rank <s_a_1><s_b_2><s_c_3><s_d_0> and <s_a_4><s_b_5><s_c_6><s_d_0> for a nail polish buyer.",
    "History: shampoos.",
    "History: mascara, creams and eau de parfum; candidates <s_a_7><s_b_0><s_c_1><s_d_0>, twice over again.",
    "Hi",
    "Rank the candidates.",
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, SID_TOKENS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(ModelConfig(preset="tiny", max_length=256), tokenizer, seed=0).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        for c in CONTENTS
    ]


def _ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int, stops: list[int]) -> list[int]:
    """transformers' own greedy decoding of one prompt, cut after the first stop token."""
    ids = torch.tensor([_ids(tokenizer, prompt)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    row = out[0, ids.shape[1] :].tolist()
    end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
    return row[:end]


def _early_stop(free: list[list[int]]) -> int:
    """A stop token that one sequence emits early and another never emits, given stop-free rows."""
    return next(
        token
        for row in free
        for token in row[1 : MAX_NEW // 2]
        if any(token not in other for other in free)
    )


def test_prompts_have_different_lengths(tokenizer, prompts):
    assert len({len(_ids(tokenizer, p)) for p in prompts}) == len(prompts)


def test_default_stops_are_eos_and_im_end(tokenizer):
    assert default_stop_token_ids(tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]


def test_greedy_batch_equals_transformers_generate_per_prompt(model, tokenizer, prompts):
    stops = default_stop_token_ids(tokenizer)
    result = generate(model, tokenizer, prompts, MAX_NEW)
    expected = [_hf_greedy(model, tokenizer, p, MAX_NEW, stops) for p in prompts]
    assert result.token_ids == expected


def test_batch_results_equal_single_prompt_results(model, tokenizer, prompts):
    batched = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    for i, prompt in enumerate(prompts):
        alone = generate(model, tokenizer, [prompt], MAX_NEW, stop_token_ids=[])
        assert batched.token_ids[i] == alone.token_ids[0]
        torch.testing.assert_close(
            torch.tensor(batched.logprobs[i]), torch.tensor(alone.logprobs[0]), atol=1e-5, rtol=0
        )


def test_batch_size_splits_without_changing_results(model, tokenizer, prompts):
    whole = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    split = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[], batch_size=2)
    assert split.token_ids == whole.token_ids
    # Batches of 2, 2 and 1, each decoding the full MAX_NEW tokens.
    assert split.forward_passes == 3 * MAX_NEW


def test_each_sequence_stops_at_its_own_stop_token(model, tokenizer, prompts):
    free = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[]).token_ids
    assert all(len(row) == MAX_NEW for row in free)
    stop = _early_stop(free)
    stopped = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[stop])
    for row, free_row in zip(stopped.token_ids, free, strict=True):
        end = free_row.index(stop) + 1 if stop in free_row else MAX_NEW
        assert row == free_row[:end]
    lengths = [len(row) for row in stopped.token_ids]
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW
    # The stop token is kept in the ids but not in the text.
    for row, text in zip(stopped.token_ids, stopped.texts, strict=True):
        body = row[:-1] if row[-1] == stop else row
        assert text == tokenizer.decode(body, skip_special_tokens=True)


def test_max_new_tokens_is_respected(model, tokenizer, prompts):
    result = generate(model, tokenizer, prompts, 3, stop_token_ids=[])
    assert [len(row) for row in result.token_ids] == [3] * len(prompts)
    assert [len(row) for row in result.logprobs] == [3] * len(prompts)


def test_forward_passes_count_prefill_and_steps(model, tokenizer, prompts):
    result = generate(model, tokenizer, prompts, 5, stop_token_ids=[])
    # The prefill yields the first token; each of 4 steps yields one more.
    assert result.forward_passes == 5
    assert result.output_tokens == 5 * len(prompts)
    assert result.seconds > 0 and result.decode_tokens_per_s == result.output_tokens / result.seconds


def test_sampling_is_seeded(model, tokenizer, prompts):
    def sample(seed: int) -> Generation:
        return generate(model, tokenizer, prompts, MAX_NEW, temperature=1.0, top_p=0.95, seed=seed)

    first, again, other = sample(7), sample(7), sample(8)
    assert first.token_ids == again.token_ids and first.logprobs == again.logprobs
    assert first.token_ids != other.token_ids


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.3, 0.9), (0.0, 1.0)])
def test_logprobs_match_a_full_forward(model, tokenizer, prompts, temperature, top_p):
    result = generate(model, tokenizer, prompts, MAX_NEW, temperature=temperature, top_p=top_p, seed=3)
    scale = temperature if temperature > 0 else 1.0
    for prompt, row, log_probs in zip(prompts, result.token_ids, result.logprobs, strict=True):
        prompt_ids = _ids(tokenizer, prompt)
        ids = torch.tensor([prompt_ids + row])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (T, V): logits predicting each token
        expected = (logits / scale).log_softmax(dim=-1).gather(-1, torch.tensor(row)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(log_probs), expected, atol=1e-4, rtol=0)


def test_top_p_keeps_only_the_nucleus(model, tokenizer, prompts):
    # With a tiny nucleus only the most likely token survives, so sampling is greedy.
    greedy = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    nucleus = generate(model, tokenizer, prompts, MAX_NEW, temperature=1.0, top_p=1e-6, seed=0, stop_token_ids=[])
    assert nucleus.token_ids == greedy.token_ids


def test_model_mode_is_restored(model, tokenizer, prompts):
    model.train()
    try:
        generate(model, tokenizer, prompts[:1], 2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 2, "top_p": 0.0},
        # A compiled step needs fixed shapes, which a growing cache does not have.
        {"max_new_tokens": 2, "static_cache": False, "compile": True},
    ],
)
def test_bad_arguments_raise(model, tokenizer, prompts, kwargs):
    with pytest.raises(ValueError):
        generate(model, tokenizer, prompts, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "early_stop"),
    [
        ({"stop_token_ids": []}, False),
        ({"temperature": 1.0, "top_p": 0.9, "seed": 3}, False),
        ({"stop_token_ids": [], "batch_size": 2}, False),
        ({}, True),
    ],
)
def test_static_cache_gives_the_dynamic_cache_results(model, tokenizer, prompts, kwargs, early_stop):
    # CUDA decodes with a static cache by default; forcing it here checks that path on CPU.
    if early_stop:
        # One row stops early and the rest decode on: the finished row is fed pads meanwhile.
        free = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[]).token_ids
        kwargs = {"stop_token_ids": [_early_stop(free)]}
    dynamic = generate(model, tokenizer, prompts, MAX_NEW, static_cache=False, **kwargs)
    static = generate(model, tokenizer, prompts, MAX_NEW, static_cache=True, **kwargs)
    assert static.token_ids == dynamic.token_ids
    assert static.forward_passes == dynamic.forward_passes
    for static_row, dynamic_row in zip(static.logprobs, dynamic.logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(static_row), torch.tensor(dynamic_row), atol=1e-5, rtol=0)


def test_older_cache_argument_name_gives_the_same_tokens(model, tokenizer, prompts, monkeypatch):
    # transformers before the ``cache`` rename only take ``past_key_values``; both must decode alike.
    assert ar.cache_keyword(model) in {"cache", "past_key_values"}
    current = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    monkeypatch.setattr(ar, "cache_keyword", lambda model: "past_key_values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        older = generate(model, tokenizer, prompts, MAX_NEW, stop_token_ids=[])
    assert older.token_ids == current.token_ids
