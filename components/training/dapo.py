"""DAPO pieces as pure tensor functions (paper.md sections 4 and 6.5).

Group-normalised advantages, dynamic sampling and the clip-higher, token-level policy loss. The
AR teacher's RL and the diffusion RL share them; they differ only in where the log-probs come
from (plain forward vs trajectory replay).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keeps a constant group's advantages at exactly zero instead of 0 / 0.
ADVANTAGE_EPS = 1e-6


def group_advantages(rewards: Tensor, eps: float = ADVANTAGE_EPS) -> Tensor:
    """Group-relative advantages A_i = (R_i - mean(R)) / (std(R) + eps) (paper.md section 4).

    The std is the population std of the group (no Bessel correction): the group is the whole set
    of rollouts being compared, not a sample of it, and a two-rollout group then gets +-1.

    Args:
        rewards: float tensor of shape (num_groups, G), one row per prompt's G rollouts.
        eps: added to the std so a zero-variance group yields zeros, not NaN.

    Returns:
        Tensor of shape (num_groups, G).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_groups, G), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


def dynamic_sampling_mask(rewards: Tensor) -> Tensor:
    """Which groups to keep: those whose rewards are not all equal (DAPO dynamic sampling).

    A zero-variance group has zero advantage everywhere and so no gradient; it would only dilute
    the token-level normaliser (paper.md section 6.5). Invalid rollouts (reward -1) stay in their
    group and count like any other reward, so one invalid rollout among equal ones keeps the
    group (its negative advantage teaches validity) while an all-invalid group is dropped.

    Args:
        rewards: tensor of shape (num_groups, G).

    Returns:
        Bool tensor of shape (num_groups,); True keeps the group.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_groups, G), got shape {tuple(rewards.shape)}")
    # Exact comparison: equal outcomes go through the same reward arithmetic, so they are equal
    # bit for bit.
    return rewards.amax(dim=1) != rewards.amin(dim=1)


def _token_mean(values: Tensor, mask: Tensor, num_tokens: Tensor) -> Tensor:
    """Sum over the valid tokens of the whole batch divided by their count (token-level norm)."""
    return (values * mask).sum() / num_tokens


def dapo_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    ref_logprobs: Tensor | None = None,
    kl_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The DAPO clipped-surrogate loss with token-level normalisation (paper.md sections 4, 6.5).

    Per token, r = exp(new - old) and the objective is min(r * A, clip(r, 1 - clip_low,
    1 + clip_high) * A); clip-higher (clip_high > clip_low) leaves low-probability tokens room to
    grow. The objective is summed over every valid token of the batch and divided by the total
    number of valid tokens (1 / sum_i |o_i|), so each token weighs the same and a long rollout
    counts more than a short one, unlike a per-sequence mean. The loss is the negated objective,
    for minimisation. With ``kl_weight > 0`` a k3 estimate of KL(pi || pi_ref),
    exp(ref - new) - (ref - new) - 1, is added per token under the same normalisation.

    Args:
        new_logprobs: (B, T) log-probs of the sampled tokens under the current policy; the only
            input gradients flow to.
        old_logprobs: (B, T) log-probs under the policy that sampled the rollouts.
        advantages: (B,) one advantage per rollout, broadcast over its tokens, or (B, T) one per
            token (on-policy distillation's per-token teacher signal).
        mask: (B, T) 1 for completion tokens that count, 0 for prompt and padding.
        clip_low: epsilon_low; the ratio is clipped below at 1 - clip_low.
        clip_high: epsilon_high; the ratio is clipped above at 1 + clip_high.
        ref_logprobs: (B, T) log-probs under the frozen reference; required when kl_weight > 0.
        kl_weight: weight of the k3 KL penalty; 0 (DAPO's default) skips it.

    Returns:
        ``(loss, metrics)``: a scalar loss, and floats ``clip_fraction`` (share of valid tokens
        whose clipped term was the minimum), ``ratio_mean`` (mean ratio over valid tokens) and
        ``approx_kl`` (k3 estimate of KL(pi_old || pi) over valid tokens, a drift check).

    Raises:
        ValueError: mismatched shapes, or kl_weight > 0 without ref_logprobs.
    """
    shape = new_logprobs.shape
    if new_logprobs.dim() != 2 or old_logprobs.shape != shape or mask.shape != shape:
        raise ValueError("new_logprobs, old_logprobs and mask must share one (B, T) shape")
    if advantages.shape not in (shape[:1], shape):
        raise ValueError(f"advantages must be ({shape[0]},) or {tuple(shape)}, got {tuple(advantages.shape)}")
    if kl_weight > 0 and (ref_logprobs is None or ref_logprobs.shape != shape):
        raise ValueError("kl_weight > 0 needs ref_logprobs of shape (B, T)")

    valid = mask.bool()
    mask = mask.to(new_logprobs.dtype)
    # An all-padding batch gives a zero loss rather than 0 / 0.
    num_tokens = mask.sum().clamp(min=1.0)
    # Rollouts were sampled by the old policy: it is a constant of this update. Padding may hold
    # -inf log-probs; zeroing its log-ratio before exp keeps NaN out of the loss and gradients.
    log_ratio = torch.where(valid, new_logprobs - old_logprobs.detach(), 0.0)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(new_logprobs.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    objective = torch.minimum(unclipped, clipped)
    loss = -_token_mean(objective, mask, num_tokens)
    if kl_weight > 0 and ref_logprobs is not None:
        ref_log_ratio = torch.where(valid, ref_logprobs.detach() - new_logprobs, 0.0)
        k3 = torch.exp(ref_log_ratio) - ref_log_ratio - 1.0
        loss = loss + kl_weight * _token_mean(k3, mask, num_tokens)

    with torch.no_grad():
        metrics = {
            "clip_fraction": _token_mean(
                (clipped < unclipped).to(mask.dtype), mask, num_tokens
            ).item(),
            "ratio_mean": _token_mean(ratio, mask, num_tokens).item(),
            "approx_kl": _token_mean(ratio - 1.0 - log_ratio, mask, num_tokens).item(),
        }
    return loss, metrics
