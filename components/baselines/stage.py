"""The SASRec stage: train SASRec on the training split, score the evaluation's candidate lists.

SASRec is the standard sequential-recommender baseline. It ranks the same ten candidates of the
same examples the evaluation stage decodes (the seeded test users, and the valid sample where the
evaluation scores one) by its next-item score after each example's history, and reports them in
the evaluation report's layout, so its Table 1 row and its comparison with the floor sit next to
the re-rankers'. A ranking of scores is always a permutation of the candidates: the valid rate is
1 by construction.

The trained weights are their own content-addressed output (``sasrec_model``), named by the
dataset version and the SASRec settings only, so scoring more users or another bootstrap seed
re-scores the same model instead of training it again.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from components import storage
from components.candidates.examples import read_examples
from components.candidates.prerank import user_sequences
from components.candidates.sasrec import SASREC_TRAINING_FIELDS, SASRec, load_sasrec, save_sasrec, score_candidates, train_sasrec
from components.config import Config
from components.data.ingest import load_dataset
from components.data.splits import training_interactions
from components.evaluation.runner import floor_comparison, sample_slices
from components.evaluation.stage import evaluation_examples
from components.prompts.answer import FAILURE_CLASSES
from components.rank_metrics import ranking_metrics
from components.stage import StageResult, StageSpec, cached_result, publishing

SASREC_MODEL_STAGE = StageSpec(
    "sasrec_model",
    SASREC_TRAINING_FIELDS,
    ("components/candidates/sasrec", "components/candidates/prerank", "components/data/splits", "components/data/ingest"),
)
SASREC_STAGE = StageSpec(
    "sasrec",
    ("sasrec", "evaluation"),
    (
        "components/baselines",
        "components/candidates/prerank",
        "components/candidates/sasrec",
        "components/data/splits",
        "components/data/ingest",
        "components/evaluation",
        "components/rank_metrics",
        "components/prompts/answer",
    ),
)
SCORES_FILE = "scores.parquet"


def sasrec_inputs(dataset_uri: str, examples_uri: str) -> dict[str, str]:
    return {"dataset": dataset_uri, "examples": examples_uri}


def trained_sasrec(cfg: Config, dataset_uri: str) -> tuple[SASRec, np.ndarray, str, dict[str, Any]]:
    """SASRec trained on the dataset's training split: published once, loaded afterwards.

    Returns:
        ``(model, item_ids, weights_uri, training facts)``; ``item_ids`` are the sorted item ids
        whose positions are the model's item indices.
    """
    work_dir = cfg.storage.work_dir
    dataset = load_dataset(dataset_uri, work_dir)
    item_ids = np.sort(dataset.items["item_id"].to_numpy().astype(str))
    uri = SASREC_MODEL_STAGE.output_uri(cfg, {"dataset": dataset_uri})
    if (cached := cached_result(uri, "weights_uri", work_dir)) is not None:
        return load_sasrec(storage.fetch_dir(uri, work_dir)), item_ids, uri, cached.metrics
    sequences = user_sequences(training_interactions(dataset.interactions), item_ids)
    model, facts = train_sasrec(list(sequences.values()), len(item_ids), cfg.sasrec)
    with publishing(uri, work_dir, facts) as out:
        save_sasrec(model, out)
    return model, item_ids, uri, facts


def target_ranks(scores: np.ndarray, pre_ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (columns, in pre-rank order) ordered by score, ties kept in pre-rank order: the
    target's 1-based rank in that order, and whether the order is the pre-rank order itself."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.argmax(order == (pre_ranks - 1)[:, None], axis=1) + 1
    return ranks, (order == np.arange(order.shape[1])).all(axis=1)


def score_examples(model: SASRec, index_of: dict[str, int], examples: pd.DataFrame, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SASRec's score of every candidate after each example's history (``index_of``: item id ->
    model index), with :func:`target_ranks` of those scores: ``(scores, ranks, copied)``."""
    histories = [[index_of[item] for item in history] for history in examples["history"]]
    candidates = np.array([[index_of[item] for item in row] for row in examples["candidates"]], dtype=np.int64)
    scores = score_candidates(model, histories, candidates, batch_size)
    return scores, *target_ranks(scores, examples["target_pre_rank"].to_numpy())


def ranked_report(examples: pd.DataFrame, ranks: np.ndarray, copied: np.ndarray, cfg: Config, seconds: float) -> dict[str, Any]:
    """One split's report from the target's rank under a baseline's order, in the layout of
    :func:`components.evaluation.runner.evaluate_decoder` (every ranking is valid)."""
    pre_ranks = examples["target_pre_rank"].to_numpy()
    valid = {"valid_rate": 1.0, "invalid_count": 0, "failure_counts": dict.fromkeys(FAILURE_CLASSES, 0)}
    report = sample_slices(
        examples,
        lambda rows: ranking_metrics(ranks[rows], cfg.evaluation)
        | valid
        | floor_comparison(ranks[rows], pre_ranks[rows], copied[rows], cfg.evaluation),
    )
    # Scoring decodes nothing: only the example count and time, so token columns read "-".
    return report | {"decode": {"examples": len(examples), "seconds": round(seconds, 3)}}


def run_sasrec(cfg: Config, dataset_uri: str, examples_uri: str) -> StageResult:
    """Train SASRec (or find it trained) and score the evaluation's candidate lists with it.

    Args:
        cfg: run config (``cfg.sasrec``; ``cfg.evaluation`` picks the examples and the bootstrap).
        dataset_uri: the dataset version it trains on (its training split only).
        examples_uri: the examples whose candidate lists it ranks.

    Returns:
        ``outputs``: ``evaluation_uri`` (metrics.json, scores.parquet: each scored example's
        candidates, their scores and the target's rank) and ``weights_uri`` (the trained model);
        ``metrics``: the evaluation report (``{"test": {...}}`` and ``"valid"`` where the
        evaluation scores one, each as :func:`ranked_report` gives it) plus the training facts
        (``train_seconds``, ``epochs``, ``steps``, ``final_loss``, ``parameters``, ...) and the
        ``settings`` it trained with.
    """
    work_dir = cfg.storage.work_dir
    uri = SASREC_STAGE.output_uri(cfg, sasrec_inputs(dataset_uri, examples_uri))
    weights_uri = SASREC_MODEL_STAGE.output_uri(cfg, {"dataset": dataset_uri})
    if (cached := cached_result(uri, "evaluation_uri", work_dir)) is not None:
        return StageResult(cached.outputs | {"weights_uri": weights_uri}, cached.metrics, cached=True)
    model, item_ids, weights_uri, facts = trained_sasrec(cfg, dataset_uri)
    index_of = {item: index for index, item in enumerate(item_ids)}
    metrics: dict[str, Any] = {}
    scored = []
    for split, examples in evaluation_examples(read_examples(examples_uri, work_dir), cfg).items():
        started = time.perf_counter()
        scores, ranks, copied = score_examples(model, index_of, examples, cfg.sasrec.score_batch_size)
        metrics[split] = ranked_report(examples, ranks, copied, cfg, time.perf_counter() - started)
        columns = ["user_id", "split", "target", "candidates", "target_pre_rank", "in_test_sample"]
        scored.append(examples[columns].assign(scores=list(scores), rank=ranks))
    metrics |= facts | {"settings": cfg.sasrec.model_dump()}
    with publishing(uri, work_dir, metrics) as out:
        pd.concat(scored, ignore_index=True).to_parquet(out / SCORES_FILE, index=False)
    return StageResult({"evaluation_uri": uri, "weights_uri": weights_uri}, metrics)


def evaluation_report(metrics: dict[str, Any]) -> dict[str, Any]:
    """The evaluation report in a SASRec stage's metrics (its splits), without the training facts,
    so it reads exactly like an evaluation stage's report."""
    return {split: report for split, report in metrics.items() if isinstance(report, dict) and "all" in report}
