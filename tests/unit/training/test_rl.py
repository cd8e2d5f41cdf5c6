"""DAPO's step for the AR and the block-diffusion re-ranker: rewards from the real reward, dynamic
sampling, invalid rollouts kept in their group, gradients."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pandas as pd
import pytest
import torch

from components.config import ModelConfig, PromptConfig, RlConfig
from components.decoding import Generation
from components.modeling import build_model, build_tokenizer
from components.modeling.block_diffusion import convert_to_block_diffusion
from components.modeling.tokenizer import IM_END
from components.prompts.render import render_answer, render_messages
from components.semantic_ids.format import all_sid_tokens
from components.training import rl
from components.training.logprobs import completion_logprobs
from tests.unit.prompts.fakes import fake_catalog

CANDIDATES = ["i0", "i1", "i2", "i3"]
TARGET = "i2"  # pre-rank 3


@pytest.fixture(scope="module")
def setup():
    catalog = fake_catalog()
    examples = pd.DataFrame({"history": [["i5", "i6"]], "candidates": [CANDIDATES], "target": [TARGET]})
    corpus = [m["content"] for m in render_messages(["i5", "i6"], CANDIDATES, catalog, PromptConfig())]
    corpus.append(render_answer("the latest purchase is nail polish", catalog.sids(CANDIDATES)))
    tokenizer = build_tokenizer(corpus * 3, all_sid_tokens(4, [12, 3, 8, 1]), vocab_size=300)
    model = build_model(ModelConfig(max_length=512), tokenizer, seed=0)
    prompts = rl.rerank_prompts(tokenizer, examples, catalog, PromptConfig())
    return catalog, tokenizer, model, prompts


def _fixed_rollouts(monkeypatch, model, tokenizer, answers: list[str]) -> None:
    """Make the decoder return ``answers`` (cycled over the rollouts) with their true log-probs."""
    _rollout_rounds(monkeypatch, itertools.repeat(answers))


def _rollout_rounds(monkeypatch, rounds) -> None:
    """Each decoder call returns the next list of ``rounds`` (cycled over its rollouts) with their true log-probs."""

    def fake_generate(policy, tok, texts, *args, **kwargs) -> Generation:
        answers = next(rounds)
        chosen = [answers[i % len(answers)] for i in range(len(texts))]
        ids = [tok(a, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(IM_END)] for a in chosen]
        prompt_ids = tok(texts, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs, _ = completion_logprobs(policy, prompt_ids, ids, tok.pad_token_id)
        return Generation(chosen, ids, [row[: len(i)].tolist() for row, i in zip(logprobs, ids)], 1, 1.0)

    monkeypatch.setattr(rl, "generate", fake_generate)


def _grad_norm(model) -> float:
    return sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)


def test_a_group_with_reward_variance_gets_a_gradient(setup, monkeypatch):
    catalog, tokenizer, model, prompts = setup
    improve = render_answer("i2 fits the history", catalog.sids(["i2", "i0", "i1", "i3"]))
    copy = render_answer("keep the order", catalog.sids(CANDIDATES))
    _fixed_rollouts(monkeypatch, model, tokenizer, [improve, copy, "not json", improve])
    cfg = RlConfig(group_size=4)
    model.zero_grad()
    loss, extras = rl.dapo_loss_fn(tokenizer, prompts, cfg, rl.ar_policy(tokenizer, cfg))(model, {"prompt_index": torch.tensor([0])})
    loss.backward()
    # Rewards: improve 3 -> 1 is +0.5 + 0.2 format; copy 0; invalid -1.
    assert extras["reward_mean"] == pytest.approx((0.7 + 0.0 - 1.0 + 0.7) / 4)
    assert extras["valid_rate"] == 0.75
    assert extras["copied_pre_rank_rate"] == 0.25
    assert extras["kept_group_share"] == 1.0
    assert extras["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: old == new
    assert torch.isfinite(loss) and loss.item() != 0.0
    assert _grad_norm(model) > 0


def test_a_group_without_reward_variance_is_dropped(setup, monkeypatch):
    catalog, tokenizer, model, prompts = setup
    _fixed_rollouts(monkeypatch, model, tokenizer, ["not json"])  # every rollout invalid: -1 each
    model.zero_grad()
    cfg = RlConfig(group_size=4)
    loss, extras = rl.dapo_loss_fn(tokenizer, prompts, cfg, rl.ar_policy(tokenizer, cfg))(model, {"prompt_index": torch.tensor([0])})
    loss.backward()
    assert extras["reward_mean"] == -1.0 and extras["kept_group_share"] == 0.0
    assert loss.item() == 0.0
    assert _grad_norm(model) == 0.0


def test_real_rollouts_of_an_untrained_policy(setup):
    """The real decoder end to end: random weights write no valid answer, so every group is dropped."""
    _catalog, tokenizer, model, prompts = setup
    torch.manual_seed(0)
    cfg = RlConfig(group_size=2, max_new_tokens=8)
    loss_fn = rl.dapo_loss_fn(tokenizer, prompts, cfg, rl.ar_policy(tokenizer, cfg))
    loss, extras = loss_fn(model, {"prompt_index": torch.tensor([0, 0])})
    assert extras["valid_rate"] == 0.0 and extras["kept_group_share"] == 0.0
    assert 0 < extras["mean_output_tokens"] <= 8
    assert loss.item() == 0.0


def test_kl_weight_needs_a_reference(setup):
    _catalog, tokenizer, _model, prompts = setup
    with pytest.raises(ValueError, match="reference"):
        rl.dapo_loss_fn(tokenizer, prompts, RlConfig(kl_weight=0.1), rl.ar_policy(tokenizer, RlConfig()))


def test_block_policy_keeps_invalid_rollouts_in_the_group_and_replays_on_policy(setup, monkeypatch):
    """Real block-decoder rollouts of an untrained model are invalid (-1 each); one in two is scored
    as a valid improvement here, so the group has variance: the invalid ones stay in it with -1,
    and the replayed log-probs equal the decoder's (ratio 1)."""
    _catalog, tokenizer, model, prompts = setup
    student = convert_to_block_diffusion(copy.deepcopy(model), tokenizer, 4)
    real_reward = rl.rerank_reward
    calls = iter(range(1000))

    def alternating(text, candidate_sids, target_sid, cfg):
        scored = real_reward(text, candidate_sids, target_sid, cfg)
        return dataclasses.replace(scored, reward=0.5) if next(calls) % 2 == 0 else scored

    monkeypatch.setattr(rl, "rerank_reward", alternating)
    cfg = RlConfig(group_size=4, max_new_tokens=12)
    policy = rl.block_policy(tokenizer, student, RlConfig(temperature=1.0, top_p=1.0, threshold=0.3, max_new_tokens=12, commit_rule="any"))
    torch.manual_seed(0)
    student.zero_grad()
    loss, extras = rl.dapo_loss_fn(tokenizer, prompts, cfg, policy)(student, {"prompt_index": torch.tensor([0])})
    loss.backward()
    assert extras["reward_mean"] == pytest.approx((0.5 - 1.0) / 2)
    assert extras["kept_group_share"] == 1.0 and extras["valid_rate"] == 0.0
    assert extras["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert extras["tokens_per_forward"] > 0
    assert _grad_norm(student) > 0


def test_a_rollout_batch_serves_several_updates_and_the_ratio_leaves_one(setup, monkeypatch):
    catalog, tokenizer, model, prompts = setup
    model = copy.deepcopy(model)
    improve = render_answer("i2 fits the history", catalog.sids(["i2", "i0", "i1", "i3"]))
    keep_order = render_answer("keep the order", catalog.sids(CANDIDATES))
    _fixed_rollouts(monkeypatch, model, tokenizer, [improve, keep_order])
    sampled = []
    sample = rl.generate
    monkeypatch.setattr(rl, "generate", lambda *args, **kwargs: sampled.append(1) or sample(*args, **kwargs))
    cfg = RlConfig(group_size=2, updates_per_batch=2)
    loss_fn = rl.dapo_loss_fn(tokenizer, prompts, cfg, rl.ar_policy(tokenizer, cfg))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = {"prompt_index": torch.tensor([0])}

    first_loss, first = loss_fn(model, batch)
    assert first["reused"] == 0.0 and first["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    first_loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    second_loss, second = loss_fn(model, batch)
    # Same rollouts, re-scored under the updated policy against the recorded log-probs.
    assert second["reused"] == 1.0 and len(sampled) == 1
    assert second["ratio_mean"] != pytest.approx(1.0, abs=1e-3)
    assert second["reward_mean"] == first["reward_mean"]
    second_loss.backward()
    # The third step samples afresh.
    _, third = loss_fn(model, batch)
    assert third["reused"] == 0.0 and len(sampled) == 2


def test_dynamic_sampling_refills_the_batch_after_dropping_groups_without_variance(setup, monkeypatch):
    catalog, tokenizer, model, prompts = setup
    improve = render_answer("i2 fits the history", catalog.sids(["i2", "i0", "i1", "i3"]))
    keep_order = render_answer("keep the order", catalog.sids(CANDIDATES))
    _rollout_rounds(monkeypatch, iter([["not json"], [improve, keep_order]]))
    cfg = RlConfig(group_size=2, sampling_rounds=3)
    policy = rl.ar_policy(tokenizer, cfg)
    torch.manual_seed(0)
    model.zero_grad()
    loss, extras = rl.dapo_loss_fn(tokenizer, prompts, cfg, policy)(model, {"prompt_index": torch.tensor([0])})
    loss.backward()
    # Round 1: one invalid group, dropped; round 2 refills it with a group that has variance.
    assert extras["kept_group_share"] == 0.0 and extras["kept_groups"] == 1.0 and extras["sampling_rounds"] == 2.0
    assert extras["reward_mean"] == pytest.approx((-1.0 - 1.0 + 0.7 + 0.0) / 4)
    assert _grad_norm(model) > 0

    one_round = RlConfig(group_size=2, sampling_rounds=1)
    _rollout_rounds(monkeypatch, iter([["not json"]]))
    loss, extras = rl.dapo_loss_fn(tokenizer, prompts, one_round, rl.ar_policy(tokenizer, one_round))(model, {"prompt_index": torch.tensor([0])})
    assert extras["kept_groups"] == 0.0 and extras["sampling_rounds"] == 1.0 and loss.item() == 0.0


def test_block_rollouts_follow_the_commit_rule_they_are_given(setup):
    # Under "prefix" no token is committed right of a masked position, so within every block the
    # recorded commit steps never decrease left to right.
    _catalog, tokenizer, model, prompts = setup
    student = convert_to_block_diffusion(copy.deepcopy(model), tokenizer, 4, commit_rule="any")
    texts = [prompt.text for prompt in prompts] * 4
    torch.manual_seed(0)
    rollouts = rl.block_policy(tokenizer, student, RlConfig(temperature=1.0, top_p=1.0, threshold=0.3, max_new_tokens=12, commit_rule="prefix")).sample(student, texts)
    for steps in rollouts.block_commit_steps:
        for start in range(0, len(steps), 4):
            assert steps[start : start + 4] == sorted(steps[start : start + 4])
