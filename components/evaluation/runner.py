"""Evaluate a re-ranker on examples: render prompts, decode, score, compare with the floor.

Used for every model the recipe produces; the decoder is the only thing that differs between the
AR teacher and its block-diffusion student, so it is passed in.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import pandas as pd

from components.config import EvaluationConfig
from components.evaluation.metrics import answer_metrics, answer_ranks
from components.prompts.render import ItemCatalog
from components.rank_metrics import floor_metrics, paired_difference_ci

# What the comparison with the floor reports (DESIGN: Recall@1 and NDCG@3 are the headline metrics).
FLOOR_COMPARISON_METRICS = ("recall_at_1", "ndcg_at_3")

Decoder = Callable[[list[str]], Any]  # prompts -> a Generation (texts, output_tokens, seconds, ...)


def floor_comparison(ranks: np.ndarray, pre_ranks: np.ndarray, copied: np.ndarray, cfg: EvaluationConfig) -> dict[str, Any]:
    """What every scored slice reports next to its metrics, whatever ranked it (a decoded answer
    or a baseline's scores): ``copied_pre_rank_rate``, ``floor`` (the pre-rank order's metrics on
    the same examples), ``vs_floor`` (paired bootstrap CIs of ranker - floor) and ``target_ranks``
    (per example, for paired comparisons with another ranker, such as the promotion gates')."""
    return {
        # GR2's reward-hacking symptom: a valid answer that hands back the pre-rank order unchanged.
        "copied_pre_rank_rate": float(copied.mean()),
        "floor": floor_metrics(pre_ranks, cfg),
        "vs_floor": {m: paired_difference_ci(ranks, pre_ranks, m, cfg) for m in FLOOR_COMPARISON_METRICS},
        "target_ranks": [int(r) for r in ranks],
    }


def sample_slices(examples: pd.DataFrame, score: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """``{"all": score(every row), "test_sample": score(the fixed test sample's rows)}``, the second
    only when the examples hold sample rows, so every report compares with the papers' sample.
    Each slice names its examples by ``examples_digest``: two reports with the same digest scored
    the same examples in the same order, so their ``target_ranks`` pair up."""
    slices = {"all": np.arange(len(examples))}
    in_sample = examples["in_test_sample"].to_numpy(dtype=bool)
    if in_sample.any():
        slices["test_sample"] = np.flatnonzero(in_sample)
    return {name: score(rows) | {"examples_digest": examples_digest(examples.iloc[rows])} for name, rows in slices.items()}


def paired_comparison(report: dict[str, Any], reference: dict[str, Any], cfg: EvaluationConfig) -> dict[str, Any] | None:
    """Paired bootstrap CIs of (report - reference) on the test sample both scored.

    Args:
        report, reference: two evaluations' metrics (``{"test": {"test_sample": slice, ...}}``).
        cfg: bootstrap samples, confidence and seed.

    Returns:
        ``n`` and, per metric of ``FLOOR_COMPARISON_METRICS``, ``{"mean", "ci_low", "ci_high"}``;
        None when either has no test-sample slice or they scored different examples.
    """
    mine, theirs = report.get("test", {}).get("test_sample"), reference.get("test", {}).get("test_sample")
    if mine is None or theirs is None or mine["examples_digest"] != theirs["examples_digest"]:
        return None
    ranks, reference_ranks = np.asarray(mine["target_ranks"]), np.asarray(theirs["target_ranks"])
    return {"n": len(ranks)} | {m: paired_difference_ci(ranks, reference_ranks, m, cfg) for m in FLOOR_COMPARISON_METRICS}


def examples_digest(examples: pd.DataFrame) -> str:
    """A short hash of which examples (user and target position) are scored, in order."""
    keys = "\n".join(f"{u}\t{p}" for u, p in zip(examples["user_id"], examples["target_position"]))
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def evaluate_decoder(
    decode: Decoder,
    prompts: list[str],
    examples: pd.DataFrame,
    catalog: ItemCatalog,
    cfg: EvaluationConfig,
) -> dict[str, Any]:
    """Decode every prompt and score the answers, overall and on the fixed test sample.

    Args:
        decode: turns prompts into a generation with ``texts``, ``output_tokens``, ``seconds``
            and ``decode_tokens_per_s``.
        prompts: one rendered prompt per example (see :func:`components.prompts.render.render_prompts`).
        examples: the re-ranking examples the prompts came from (candidates in pre-rank order).
        catalog: gives each item its SID.
        cfg: bootstrap samples, confidence and seed.

    Returns:
        ``{"all": slice, "test_sample": slice (when the examples hold sample rows), "decode": {...}}``,
        each slice with the metrics of :func:`answer_metrics`, ``copied_pre_rank_rate``, ``floor``
        (the pre-rank order's metrics on the same examples) and ``vs_floor``: the paired bootstrap
        CI of (model - pre-rank floor) for Recall@1 and NDCG@3.
    """
    generation = decode(prompts)
    ranks, parsed = answer_ranks(examples, generation.texts, catalog)
    pre_ranks = examples["target_pre_rank"].to_numpy()
    copied = np.array(
        [p.valid and list(p.ranking) == catalog.sids(list(c)) for p, c in zip(parsed, examples["candidates"])], dtype=bool
    )
    result = sample_slices(
        examples,
        lambda rows: answer_metrics(ranks[rows], [parsed[i] for i in rows], cfg)
        | floor_comparison(ranks[rows], pre_ranks[rows], copied[rows], cfg),
    )
    result["decode"] = {
        "examples": len(prompts),
        "output_tokens": int(generation.output_tokens),
        "mean_output_tokens": generation.output_tokens / max(1, len(prompts)),
        "seconds": float(generation.seconds),
        "decode_tokens_per_s": float(generation.decode_tokens_per_s),
        "tokens_per_forward": float(generation.tokens_per_forward),
    }
    return result
