"""DAPO advantages, dynamic sampling and loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from components.training.dapo import dapo_loss, dynamic_sampling_mask, group_advantages

CLIP_LOW, CLIP_HIGH = 0.2, 0.28

# (new_logprobs, old_logprobs, advantages, mask)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _one_token(log_ratio: float, advantage: float) -> Batch:
    """A batch of one rollout with one valid token whose ratio is exp(log_ratio)."""
    new = torch.tensor([[log_ratio]], requires_grad=True)
    old = torch.zeros(1, 1)
    return new, old, torch.tensor([advantage]), torch.ones(1, 1)


# group_advantages ----------------------------------------------------------------------------


def test_group_advantages_known_values() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, -0.3, 0.3, -0.3]])
    # Row 0: mean 0.25, population std sqrt(0.1875) = sqrt(3) / 4, so +sqrt(3) and -1 / sqrt(3).
    # Row 1: mean 0, std 0.3, so +-1.
    s3 = math.sqrt(3.0)
    expected = torch.tensor([[s3, -1 / s3, -1 / s3, -1 / s3], [1.0, -1.0, 1.0, -1.0]])
    torch.testing.assert_close(group_advantages(rewards), expected, rtol=1e-5, atol=1e-5)


def test_a_constant_group_gets_zero_advantages() -> None:
    advantages = group_advantages(torch.full((2, 8), -1.0))
    assert torch.equal(advantages, torch.zeros(2, 8))


def test_group_advantages_rejects_a_flat_tensor() -> None:
    with pytest.raises(ValueError, match="num_groups, G"):
        group_advantages(torch.zeros(8))


# dynamic_sampling_mask -----------------------------------------------------------------------


def test_dynamic_sampling_keeps_only_groups_with_reward_variance() -> None:
    rewards = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2],  # identical: dropped
            [0.0, 0.0, -1.0, 0.0],  # one invalid among zeros: kept
            [-1.0, -1.0, -1.0, -1.0],  # all invalid: dropped
            [0.5, 0.3, 0.1, -0.1],  # kept
        ]
    )
    assert dynamic_sampling_mask(rewards).tolist() == [False, True, False, True]


# dapo_loss -----------------------------------------------------------------------------------


def _unequal_lengths() -> Batch:
    """Two rollouts with new == old: 3 valid tokens at A = 1, 1 valid token at A = -0.5."""
    new = torch.tensor([[-0.5, -1.0, -2.0, -0.1], [-0.7, -0.3, -0.9, -1.1]], requires_grad=True)
    old = new.detach().clone()
    advantages = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    return new, old, advantages, mask


def test_on_policy_loss_is_the_token_weighted_mean_advantage() -> None:
    loss, metrics = dapo_loss(*_unequal_lengths(), CLIP_LOW, CLIP_HIGH)
    # Token level: -(3 * 1 + 1 * -0.5) / 4 = -0.625; the long rollout counts three times.
    assert loss.item() == pytest.approx(-0.625)
    # A per-sequence mean would give -(1 + -0.5) / 2 = -0.25 instead.
    assert loss.item() != pytest.approx(-0.25)
    assert metrics == pytest.approx({"clip_fraction": 0.0, "ratio_mean": 1.0, "approx_kl": 0.0})


def test_gradient_flows_to_new_logprobs_only() -> None:
    new, old, advantages, mask = _unequal_lengths()
    old.requires_grad_(True)
    advantages.requires_grad_(True)
    loss, _ = dapo_loss(new, old, advantages, mask, CLIP_LOW, CLIP_HIGH)
    loss.backward()
    # d(-r A / 4) / d new = -A / 4 at r = 1 on valid tokens, 0 on masked ones.
    expected = torch.tensor([[-0.25, -0.25, -0.25, 0.0], [0.125, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(new.grad, expected)
    assert old.grad is None
    assert advantages.grad is None


def test_positive_advantage_is_clipped_at_one_plus_clip_high() -> None:
    loss, metrics = dapo_loss(*_one_token(math.log(1.5), 2.0), CLIP_LOW, CLIP_HIGH)
    # min(1.5 * 2, 1.28 * 2) = 2.56.
    assert loss.item() == pytest.approx(-2.56)
    assert metrics["clip_fraction"] == 1.0
    assert metrics["ratio_mean"] == pytest.approx(1.5)
    # k3 of KL(old || new): (r - 1) - log r.
    assert metrics["approx_kl"] == pytest.approx(0.5 - math.log(1.5))


def test_negative_advantage_is_clipped_at_one_minus_clip_low() -> None:
    loss, metrics = dapo_loss(*_one_token(math.log(0.5), -1.0), CLIP_LOW, CLIP_HIGH)
    # min(0.5 * -1, 0.8 * -1) = -0.8.
    assert loss.item() == pytest.approx(0.8)
    assert metrics["clip_fraction"] == 1.0


def test_clipped_tokens_get_no_gradient() -> None:
    new, old, advantages, mask = _one_token(math.log(1.5), 2.0)
    loss, _ = dapo_loss(new, old, advantages, mask, CLIP_LOW, CLIP_HIGH)
    loss.backward()
    assert new.grad is not None and new.grad.item() == 0.0


def test_the_pessimistic_term_wins_when_clipping_would_help() -> None:
    # A > 0 with r = 0.5: min(0.5, 0.8) keeps the unclipped 0.5, so nothing counts as clipped.
    loss, metrics = dapo_loss(*_one_token(math.log(0.5), 1.0), CLIP_LOW, CLIP_HIGH)
    assert loss.item() == pytest.approx(-0.5)
    assert metrics["clip_fraction"] == 0.0


def test_masked_tokens_contribute_nothing() -> None:
    new, old, advantages, mask = _unequal_lengths()
    # Wild ratios on the masked positions only.
    wild = torch.tensor([[0.0, 0.0, 0.0, 5.0], [0.0, -5.0, 7.0, 3.0]])
    loss, metrics = dapo_loss(new, old + wild, advantages, mask, CLIP_LOW, CLIP_HIGH)
    assert loss.item() == pytest.approx(-0.625)
    assert metrics == pytest.approx({"clip_fraction": 0.0, "ratio_mean": 1.0, "approx_kl": 0.0})


def test_infinite_padding_logprobs_stay_out_of_loss_and_gradient() -> None:
    new, old, advantages, mask = _unequal_lengths()
    padded = torch.where(mask.bool(), new, torch.tensor(-math.inf))
    ref = torch.where(mask.bool(), new.detach(), torch.tensor(-math.inf))
    old = old.masked_fill(~mask.bool(), -math.inf)
    loss, metrics = dapo_loss(padded, old, advantages, mask, CLIP_LOW, CLIP_HIGH, ref, 0.1)
    loss.backward()
    # ref == new on valid tokens, so k3 = 0 and the loss is the on-policy -0.625.
    assert loss.item() == pytest.approx(-0.625)
    assert all(math.isfinite(value) for value in metrics.values())
    assert new.grad is not None and torch.isfinite(new.grad).all()


def test_k3_kl_penalty_to_the_reference() -> None:
    new, old, _, mask = _unequal_lengths()
    advantages = torch.zeros(2)
    ref = new.detach() + math.log(2.0)  # ref - new = log 2 on every token
    loss, _ = dapo_loss(new, old, advantages, mask, CLIP_LOW, CLIP_HIGH, ref, kl_weight=0.1)
    # k3 = exp(log 2) - log 2 - 1 = 1 - log 2 per token; the surrogate is 0 at A = 0.
    assert loss.item() == pytest.approx(0.1 * (1.0 - math.log(2.0)))
    # With kl_weight 0 the reference is ignored.
    loss, _ = dapo_loss(new, old, advantages, mask, CLIP_LOW, CLIP_HIGH, ref, kl_weight=0.0)
    assert loss.item() == 0.0


def test_kl_weight_without_a_reference_is_rejected() -> None:
    with pytest.raises(ValueError, match="ref_logprobs"):
        dapo_loss(*_unequal_lengths(), CLIP_LOW, CLIP_HIGH, kl_weight=0.1)


def test_mismatched_shapes_are_rejected() -> None:
    new, old, advantages, mask = _unequal_lengths()
    with pytest.raises(ValueError, match="advantages"):
        dapo_loss(new, old, advantages[:1], mask, CLIP_LOW, CLIP_HIGH)
    with pytest.raises(ValueError, match="share one"):
        dapo_loss(new, old, advantages, mask[:, :2], CLIP_LOW, CLIP_HIGH)
