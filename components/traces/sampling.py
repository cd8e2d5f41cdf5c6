"""GR2 stage-2 trace generation: rejection sampling (or targeted sampling) over a teacher.

Rejection mode asks the teacher without the target and keeps the first proposal whose ranking puts
the target first, up to ``max_tries``; examples that never get there are dropped, so every kept
trace reasoned its own way to the right answer. Targeted mode names the target and asks once
(kept for comparison: it always yields a trace, at the risk of post-hoc rationalisation).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.config import TracesConfig
from components.prompts.render import ItemCatalog
from components.traces.teacher import InvalidProposal, Proposal, TraceTeacher


def example_rng(seed: int, example: Mapping[str, Any]) -> np.random.Generator:
    """The random stream of one example, independent of which other examples are in the batch.

    Args:
        seed: ``TracesConfig.seed``.
        example: a row with user_id, split and target; target_position when present.

    Returns:
        A generator seeded from ``seed`` and a stable hash of the example's identity (Python's
        ``hash`` is salted per process, so it would break reproducibility).
    """
    key = f"{example['user_id']}\x00{example.get('split', '')}\x00{example['target']}\x00{example.get('target_position', '')}"
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _accepts(proposal: Proposal, example: Mapping[str, Any]) -> bool:
    """A proposal counts only as a permutation of the candidates with the target first."""
    candidates = list(example["candidates"])
    return sorted(proposal.ranking) == sorted(candidates) and proposal.ranking[0] == example["target"]


def generate_traces(
    examples: pd.DataFrame, teacher: TraceTeacher, catalog: ItemCatalog, cfg: TracesConfig
) -> tuple[pd.DataFrame, dict[str, float | int]]:
    """Ask the teacher for a trace per example and keep those whose ranking puts the target first.

    Args:
        examples: re-ranking examples (user_id, history, candidates, target, ...).
        teacher: the trace teacher.
        catalog: SIDs and metadata of the examples' items.
        cfg: mode, max_tries and seed (the teacher's own settings are its constructor's).

    Returns:
        ``(accepted, stats)``. ``accepted`` holds the kept examples' columns plus ``reasoning``,
        ``ranking`` (candidate item ids, target first) and ``tries`` (proposals it took, failed
        ones included). ``stats``: ``examples``; ``dropped`` (no accepted proposal within the tries);
        ``acceptance_rate`` (kept / examples, 0.0 for no examples); ``mean_tries`` (mean ``tries``
        of the kept examples, 0.0 when none); ``proposals`` (teacher calls in all).

    Raises:
        Whatever the teacher raises other than ``InvalidProposal`` (e.g. an unreachable endpoint).
    """
    budget = 1 if cfg.mode == "targeted" else cfg.max_tries
    kept: list[dict[str, Any]] = []
    proposals = 0
    records = examples.to_dict("records")
    for example in tqdm(records, desc=f"traces ({cfg.mode})", file=sys.stderr, leave=False):
        rng = example_rng(cfg.seed, example)
        target = example["target"] if cfg.mode == "targeted" else None
        for tries in range(1, budget + 1):
            proposals += 1
            try:
                proposal = teacher.propose(example, catalog, rng, target)
            except InvalidProposal:
                continue
            if _accepts(proposal, example):
                kept.append({**example, "reasoning": proposal.reasoning, "ranking": proposal.ranking, "tries": tries})
                break
    accepted = pd.DataFrame(kept, columns=[*examples.columns, "reasoning", "ranking", "tries"])
    stats: dict[str, float | int] = {
        "examples": len(records),
        "dropped": len(records) - len(kept),
        "acceptance_rate": len(kept) / len(records) if records else 0.0,
        "mean_tries": float(accepted["tries"].mean()) if kept else 0.0,
        "proposals": proposals,
    }
    return accepted, stats
