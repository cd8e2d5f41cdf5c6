import pytest
import torch

from components.config import ModelConfig
from components.decoding import generate
from components.modeling.factory import build_model
from components.modeling.tokenizer import build_tokenizer
from components.semantic_ids.format import all_sid_tokens
from components.training.logprobs import completion_logprobs

TEXTS = [
    "Purchase history (oldest first): nail polish, top coat, base coat.",
    "Candidates (pre-ranked, best first): shampoo, conditioner, mascara, eyeliner.",
    '{"reasoning":"the latest purchase is nail polish","ranking":["a","b"]}',
]


@pytest.fixture(scope="module")
def policy():
    tokenizer = build_tokenizer(TEXTS * 4, all_sid_tokens(2, [4, 4]), vocab_size=300)
    model = build_model(ModelConfig(max_length=256), tokenizer, seed=1)
    return model, tokenizer


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_replayed_logprobs_equal_those_recorded_at_decode_time(policy, temperature):
    model, tokenizer = policy
    prompts = ["Purchase history: nail polish", "Candidates: shampoo, conditioner, mascara, eyeliner and more"]
    generation = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=temperature, seed=3, batch_size=2)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    replayed, mask = completion_logprobs(model, prompt_ids, generation.token_ids, tokenizer.pad_token_id, temperature)
    for row, recorded in enumerate(generation.logprobs):
        assert mask[row].sum().item() == len(recorded)
        assert torch.allclose(replayed[row, : len(recorded)], torch.tensor(recorded), atol=1e-4)
    assert (replayed * (1 - mask)).abs().sum() == 0  # padding carries nothing


def test_gradients_reach_the_model(policy):
    model, tokenizer = policy
    model.train()
    logprobs, mask = completion_logprobs(model, [[5, 6, 7]], [[8, 9]], tokenizer.pad_token_id)
    (logprobs * mask).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_bad_inputs_are_rejected(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        completion_logprobs(model, [[1], [2]], [[3]], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="at least one token"):
        completion_logprobs(model, [[]], [[3]], tokenizer.pad_token_id)
