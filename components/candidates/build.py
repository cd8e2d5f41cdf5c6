"""The candidates stage: leave-one-out targets -> N-item candidate lists in pre-rank order.

Each list is the target plus N-1 negatives, ordered by the pre-ranker's score, so the target sits
at the rank its own score gives it (never at a fixed slot). How negatives are drawn decides how hard
the task is (DESIGN.md, "Candidate lists"): ``uniform`` (items the user never interacted with, the
papers' regime) is the default; ``popularity`` and ``hard`` (the pre-ranker's own top scorers) are
selectable and report their own floors. The pre-ranker is a first-order transition model, or
SASRec (``candidates.pre_ranker: sasrec``), both fitted on the other user folds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from components import storage
from components.candidates.prerank import TransitionPreRanker, user_folds, user_sequences
from components.candidates.sasrec import SASREC_TRAINING_FIELDS, score_candidates, train_sasrec
from components.config import CandidatesConfig, Config, SasrecConfig
from components.data.ingest import load_dataset
from components.data.splits import leave_one_out_targets
from components.rank_metrics import floor_metrics
from components.stage import StageResult, StageSpec


class _CandidatesSpec(StageSpec):
    """With ``candidates.pre_ranker: sasrec`` SASRec's settings and code name the lists too, and only
    then: the default lists keep their name whatever the SASRec baseline's settings are."""

    def output_uri(self, cfg: Config, inputs: dict[str, str]) -> str:
        if cfg.candidates.pre_ranker != "sasrec":
            return super().output_uri(cfg, inputs)
        with_sasrec = StageSpec(self.name, self.config_sections + SASREC_TRAINING_FIELDS, self.code + ("components/candidates/sasrec",))
        return with_sasrec.output_uri(cfg, inputs)


# Only the floors' bootstrap settings come from the evaluation section: how many users a run scores
# must not invalidate the data, and everything trained on it.
CANDIDATES_STAGE = _CandidatesSpec(
    "candidates",
    ("candidates", "evaluation.bootstrap_samples", "evaluation.confidence", "evaluation.seed"),
    ("components/candidates", "components/rank_metrics", "components/data/ingest", "components/data/events", "components/data/splits"),
)

# Random draws per example before rejection; uniform negatives almost never need a second round.
_OVERSAMPLE = 4


def _recent_histories(sequences: dict[str, np.ndarray], targets: pd.DataFrame, window: int) -> np.ndarray:
    """(n, window) item indices before each target, most recent first, -1 padded."""
    recent = np.full((len(targets), window), -1, dtype=np.int64)
    for row, (user, position) in enumerate(zip(targets["user_id"], targets["target_position"])):
        before = sequences[user][max(0, position - window) : position][::-1]
        recent[row, : len(before)] = before
    return recent


def _draw_negatives(
    ranker: TransitionPreRanker,
    targets: np.ndarray,
    recent: np.ndarray,
    seen: list[set[int]],
    cfg: CandidatesConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, N-1) distinct negatives per example, none of them an item the user interacted with."""
    need = cfg.num_candidates - 1
    n_items = ranker.n_items
    if cfg.negatives == "popularity":
        cdf = np.cumsum(ranker.popularity + 1) / (ranker.popularity + 1).sum()  # +1: every item drawable
        draw = lambda rows: np.minimum(np.searchsorted(cdf, rng.random((rows, need * _OVERSAMPLE))), n_items - 1)  # noqa: E731
    else:
        draw = lambda rows: rng.integers(0, n_items, size=(rows, need * _OVERSAMPLE))  # noqa: E731
    by_popularity = np.argsort(-ranker.popularity, kind="stable")
    negatives = np.empty((len(targets), need), dtype=np.int64)
    pool = draw(len(targets))
    for row in range(len(targets)):
        if cfg.negatives == "hard":
            scores: dict[int, float] = {}
            for w, prev in enumerate(recent[row]):
                if prev >= 0:
                    items, probs = ranker.successors(int(prev))
                    for item, prob in zip(items.tolist(), probs.tolist()):
                        scores[item] = scores.get(item, 0.0) + cfg.pre_ranker_decay**w * prob
            ranked = sorted(scores, key=lambda item: -scores[item])
            stream = iter(ranked + by_popularity.tolist())
        else:
            stream = iter(pool[row].tolist())
        chosen: list[int] = []
        while len(chosen) < need:
            item = next(stream, None)
            if item is None:  # the oversampled draws ran out: draw again for this row
                stream = iter(draw(1)[0].tolist())
                continue
            if item not in seen[row] and item not in chosen:
                chosen.append(item)
        negatives[row] = chosen
    return negatives


def _sasrec_scores(
    fitted_on: list[np.ndarray],
    sequences: dict[str, np.ndarray],
    targets: pd.DataFrame,
    pool: np.ndarray,
    n_items: int,
    cfg: SasrecConfig,
    fold: int,
) -> np.ndarray:
    """(n, N) scores of each example's pool by SASRec trained on ``fitted_on`` (the other folds'
    users), after everything the user had before the target."""
    model, _ = train_sasrec(fitted_on, n_items, cfg, desc=f"SASRec pre-ranker, fold {fold}")
    histories = [sequences[user][:position] for user, position in zip(targets["user_id"], targets["target_position"])]
    return score_candidates(model, histories, pool, cfg.score_batch_size)


def build_candidate_lists(
    interactions: pd.DataFrame, item_ids: np.ndarray, cfg: CandidatesConfig, sasrec: SasrecConfig | None = None
) -> pd.DataFrame:
    """Targets with their candidate lists in pre-rank order, the target's pre-rank and the test sample flag.

    ``sasrec`` holds the settings of the SASRec pre-ranker (``cfg.pre_ranker: sasrec``; defaults if None).
    """
    index_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    sequences = user_sequences(interactions, item_ids)
    users = np.array(list(sequences), dtype=object)

    targets = leave_one_out_targets(interactions, cfg.train_examples_per_user)
    user_fold = dict(zip(users, user_folds(pd.Series(users), cfg.pre_ranker_folds, cfg.seed)))
    folds = targets["user_id"].map(user_fold).to_numpy()
    rng = np.random.default_rng(cfg.seed)
    candidates = np.empty((len(targets), cfg.num_candidates), dtype=np.int64)
    pre_rank = np.empty(len(targets), dtype=np.int64)
    for fold in tqdm(range(cfg.pre_ranker_folds), desc="pre-ranker folds", leave=False):
        fitted_on = [s for u, s in sequences.items() if user_fold[u] != fold]
        ranker = TransitionPreRanker.fit(fitted_on, len(item_ids))
        rows = np.flatnonzero(folds == fold)
        fold_targets = targets.iloc[rows]
        target_codes = index_of.loc[fold_targets["target"]].to_numpy()
        recent = _recent_histories(sequences, fold_targets, cfg.pre_ranker_window)
        seen = [set(sequences[user].tolist()) for user in fold_targets["user_id"]]
        negatives = _draw_negatives(ranker, target_codes, recent, seen, cfg, rng)
        pool = np.concatenate([target_codes[:, None], negatives], axis=1)  # (n, N), target in column 0
        if cfg.pre_ranker == "sasrec":
            scores = _sasrec_scores(fitted_on, sequences, fold_targets, pool, len(item_ids), sasrec or SasrecConfig(), fold)
        else:
            scores = ranker.score(recent, pool, cfg.pre_ranker_decay)
        # A tiny seeded jitter breaks score ties at random instead of by column (which would
        # always favour the target).
        scores = scores + rng.random(pool.shape) * 1e-9
        order = np.argsort(-scores, axis=1, kind="stable")
        candidates[rows] = np.take_along_axis(pool, order, axis=1)
        pre_rank[rows] = np.argmax(order == 0, axis=1) + 1

    targets["candidates"] = [item_ids[row].tolist() for row in candidates]
    targets["target_pre_rank"] = pre_rank
    test_users = np.sort(targets.loc[targets["split"] == "test", "user_id"].unique())
    sample_size = min(cfg.test_sample_size, len(test_users))
    sample = set(np.random.default_rng(cfg.seed).choice(test_users, size=sample_size, replace=False).tolist())
    targets["in_test_sample"] = (targets["split"] == "test") & targets["user_id"].isin(sample)
    return targets


def floor_table(lists: pd.DataFrame, cfg: Config) -> dict[str, dict]:
    """The pre-rank order's metrics per split and on the test sample."""
    slices = {split: lists[lists["split"] == split] for split in ("train", "valid", "test")}
    slices["test_sample"] = lists[lists["in_test_sample"]]
    return {name: floor_metrics(part["target_pre_rank"].to_numpy(), cfg.evaluation) for name, part in slices.items() if len(part)}


def read_candidate_lists(candidates_uri: str, work_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(storage.fetch_dir(candidates_uri, work_dir) / "candidates.parquet")


def build_candidates(cfg: Config, dataset_uri: str) -> StageResult:
    """Split, fit the pre-ranker by user folds, and build the candidate lists.

    Args:
        cfg: run config (``cfg.candidates``).
        dataset_uri: a published dataset version.

    Returns:
        ``outputs``: ``candidates_uri`` (candidates.parquet, floors.json); ``metrics``: example
        counts, the floor table per split, and the train/valid leakage check.
    """
    candidates_uri = CANDIDATES_STAGE.output_uri(cfg, {"dataset": dataset_uri})
    if storage.exists(candidates_uri):
        metrics = json.loads((storage.fetch_dir(candidates_uri, cfg.storage.work_dir) / "metrics.json").read_text())
        return StageResult({"candidates_uri": candidates_uri}, metrics, cached=True)

    dataset = load_dataset(dataset_uri, cfg.storage.work_dir)
    item_ids = np.sort(dataset.items["item_id"].to_numpy().astype(str))
    lists = build_candidate_lists(dataset.interactions, item_ids, cfg.candidates, cfg.sasrec)
    floors = floor_table(lists, cfg)
    train_r1 = floors["train"]["recall_at_1"]["mean"] if "train" in floors else None
    valid_r1 = floors["valid"]["recall_at_1"]["mean"]
    metrics = {
        "examples": {split: int((lists["split"] == split).sum()) for split in ("train", "valid", "test")},
        "test_sample_users": int(lists["in_test_sample"].sum()),
        "negatives": cfg.candidates.negatives,
        "floors": floors,
        # Leakage check: a pre-ranker that saw its targets would make train floors far higher.
        "train_valid_recall_at_1_relative_gap": None if train_r1 is None else abs(train_r1 - valid_r1) / valid_r1,
    }
    with tempfile.TemporaryDirectory(dir=cfg.storage.work_dir, prefix="candidates-") as staging:
        lists.to_parquet(Path(staging) / "candidates.parquet", index=False)
        (Path(staging) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        storage.publish_dir(staging, candidates_uri)
    return StageResult({"candidates_uri": candidates_uri}, metrics)
