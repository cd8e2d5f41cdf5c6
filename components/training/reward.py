"""The re-ranking reward (DESIGN.md, "Contracts": Reward; paper.md sections 4 and 6.5).

One implementation serves the AR teacher's RL and the diffusion RL, so the two stages optimise
the same objective and their rewards are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.config import RlConfig
from components.prompts.answer import parse_answer


@dataclass(frozen=True)
class RewardBreakdown:
    """One rollout's reward and its parts.

    ``format_reward`` is R_fmt in {0, 1} before the condition is applied, so it can be logged for
    every valid answer; ``reward`` includes it only where the condition holds.
    ``new_rank`` is None for an invalid answer (there is no ranking to read the target from);
    ``pre_rank`` is always the target's 1-based rank in the candidates' pre-rank order.
    ``copied_pre_rank`` marks a valid answer that returns the pre-rank order unchanged, the
    reward-hacking symptom of an unconditional format reward (paper.md section 4).
    """

    reward: float
    rank_reward: float
    format_reward: float
    valid: bool
    new_rank: int | None
    pre_rank: int
    copied_pre_rank: bool


def rerank_reward(
    answer_text: str, candidate_sids: Sequence[str], target_sid: str, cfg: RlConfig
) -> RewardBreakdown:
    """Score one generated answer against its query.

    R_rank = (pre_rank(target) - new_rank(target)) / N. The format bonus is conditional
    (paper.md section 6.5): R = R_rank + alpha * R_fmt only when the target's rank strictly
    improves or it was first and stays first; otherwise R = R_rank, so copying the pre-rank order
    earns nothing and the policy cannot farm the bonus that way (paper.md section 4).

    Args:
        answer_text: the generated assistant text.
        candidate_sids: the query's N distinct candidate SIDs in pre-rank order (best first).
        target_sid: the SID of the item the user interacted with next; one of the candidates.
        cfg: RL settings; ``format_weight`` is alpha, ``invalid_reward`` the invalid-answer reward.

    Returns:
        The reward and its parts. An invalid answer gets ``cfg.invalid_reward`` with zero parts.

    Raises:
        ValueError: ``target_sid`` is not among the candidates, or a candidate repeats (bugs
            upstream, not in the answer).
    """
    if target_sid not in candidate_sids:
        raise ValueError(f"target {target_sid!r} is not one of the candidates")
    pre_rank = list(candidate_sids).index(target_sid) + 1
    parsed = parse_answer(answer_text, candidate_sids)
    if not parsed.valid or parsed.ranking is None:
        return RewardBreakdown(
            reward=cfg.invalid_reward,
            rank_reward=0.0,
            format_reward=0.0,
            valid=False,
            new_rank=None,
            pre_rank=pre_rank,
            copied_pre_rank=False,
        )

    n = len(candidate_sids)
    new_rank = parsed.ranking.index(target_sid) + 1
    rank_reward = (pre_rank - new_rank) / n
    # R_fmt = Omega(o) is "parseable JSON with reasoning + ranked list" (paper.md section 4). The
    # ranking part is already guaranteed by validity; we also require a non-blank reasoning
    # string, because an answer that drops its reasoning is not the trained format and the
    # bonus would otherwise reward skipping the thinking the model is meant to learn.
    has_reasoning = parsed.reasoning is not None and parsed.reasoning.strip() != ""
    format_reward = 1.0 if has_reasoning else 0.0
    earns_format = new_rank < pre_rank or (pre_rank == 1 and new_rank == 1)
    reward = rank_reward + cfg.format_weight * format_reward if earns_format else rank_reward
    return RewardBreakdown(
        reward=reward,
        rank_reward=rank_reward,
        format_reward=format_reward,
        valid=True,
        new_rank=new_rank,
        pre_rank=pre_rank,
        copied_pre_rank=list(parsed.ranking) == list(candidate_sids),
    )
