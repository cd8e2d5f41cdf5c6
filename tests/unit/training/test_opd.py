"""OPD: the loss is zero when student and teacher agree and positive otherwise, its gradient moves
the student toward the teacher, and one real step (rollouts, replay, teacher scoring) trains."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from components.config import ModelConfig, OpdConfig, PromptConfig
from components.modeling import build_model, build_tokenizer
from components.modeling.block_diffusion import convert_to_block_diffusion
from components.prompts.render import render_answer, render_messages
from components.semantic_ids.format import all_sid_tokens
from components.training import opd, rl
from components.training.dapo import dapo_loss
from components.training.opd import forward_kl, opd_loss_fn
from tests.unit.prompts.fakes import fake_catalog

CANDIDATES = ["i0", "i1", "i2", "i3"]


def _log_probs(seed: int, shape=(2, 5, 7)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).log_softmax(-1)


def test_forward_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    weights = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    teacher = _log_probs(0)
    assert float(forward_kl(teacher, teacher.clone(), weights)) == pytest.approx(0.0, abs=1e-6)
    assert float(forward_kl(teacher, _log_probs(1), weights)) > 0.01
    # Tokens with weight 0 do not count: differing only there is still zero.
    student = teacher.clone()
    student[0, 4] = _log_probs(2)[0, 4]
    assert float(forward_kl(teacher, student, weights)) == pytest.approx(0.0, abs=1e-6)


def test_forward_kl_ignores_tokens_the_teacher_excludes():
    teacher = _log_probs(3)
    teacher[..., 0] = float("-inf")  # the <|mask|> column: no mass
    teacher = teacher.log_softmax(-1)
    student = teacher.clone()
    student[..., 0] = float("-inf")
    assert torch.isfinite(forward_kl(teacher, student, torch.ones(2, 5)))


def test_a_gradient_step_on_forward_kl_moves_the_student_toward_the_teacher():
    teacher = _log_probs(4)
    logits = torch.randn((2, 5, 7), generator=torch.Generator().manual_seed(5), requires_grad=True)
    weights = torch.ones(2, 5)
    before = forward_kl(teacher, logits.log_softmax(-1), weights)
    before.backward()
    with torch.no_grad():
        after = forward_kl(teacher, (logits - 1.0 * logits.grad).log_softmax(-1), weights)
    assert float(after) < float(before.detach())


def test_reverse_kl_advantages_are_zero_when_the_teacher_agrees_with_the_sample():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    new = old.clone().requires_grad_(True)
    mask = torch.ones_like(old)
    loss, _ = dapo_loss(new, old, torch.zeros_like(old), mask, 0.2, 0.2)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(new.grad.abs().sum()) == 0.0
    # The teacher likes token 0 more than the student did: descending the loss raises its log-prob.
    new.grad = None
    loss, _ = dapo_loss(new, old, torch.tensor([[0.5, 0.0, 0.0]]), mask, 0.2, 0.2)
    loss.backward()
    assert float(loss.detach()) > -1.0 and float(new.grad[0, 0]) < 0


@pytest.fixture(scope="module")
def setup():
    catalog = fake_catalog()
    examples = pd.DataFrame({"history": [["i5", "i6"]], "candidates": [CANDIDATES], "target": ["i2"]})
    corpus = [m["content"] for m in render_messages(["i5", "i6"], CANDIDATES, catalog, PromptConfig())]
    corpus.append(render_answer("the latest purchase is nail polish", catalog.sids(CANDIDATES)))
    tokenizer = build_tokenizer(corpus * 3, all_sid_tokens(4, [12, 3, 8, 1]), vocab_size=300)
    teacher = build_model(ModelConfig(max_length=512), tokenizer, seed=0).eval()
    student = convert_to_block_diffusion(build_model(ModelConfig(max_length=512), tokenizer, seed=1), tokenizer, 4)
    prompts = rl.rerank_prompts(tokenizer, examples, catalog, PromptConfig())
    return tokenizer, teacher, student, prompts


@pytest.mark.parametrize("objective", ["forward_kl", "reverse_kl"])
def test_one_real_opd_step_gives_a_finite_loss_and_a_gradient(setup, objective):
    tokenizer, teacher, student, prompts = setup
    student = copy.deepcopy(student)
    cfg = OpdConfig(samples_per_prompt=2, max_new_tokens=12, threshold=0.3, objective=objective)
    torch.manual_seed(0)
    loss, extras = opd_loss_fn(tokenizer, prompts, teacher, student, cfg)(student, {"prompt_index": torch.tensor([0])})
    loss.backward()
    assert torch.isfinite(loss)
    if objective == "forward_kl":
        assert float(loss.detach()) > 0  # two different random models disagree
    else:
        assert extras["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # replay is on-policy
    assert extras["teacher_nll"] > 0 and extras["tokens_per_forward"] > 0
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("commit_rule", ["any", "prefix"])
def test_opd_rollouts_decode_with_the_configured_commit_rule(setup, monkeypatch, commit_rule):
    tokenizer, teacher, student, prompts = setup
    rules = []
    decode = opd.generate_blocks
    monkeypatch.setattr(opd, "generate_blocks", lambda *args, **kwargs: rules.append(kwargs["commit_rule"]) or decode(*args, **kwargs))
    cfg = OpdConfig(samples_per_prompt=2, max_new_tokens=12, threshold=0.3, commit_rule=commit_rule)
    opd_loss_fn(tokenizer, prompts, teacher, copy.deepcopy(student), cfg)(student, {"prompt_index": torch.tensor([0])})
    assert rules == [commit_rule]
