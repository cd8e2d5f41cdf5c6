"""The examples stage: candidate lists + point-in-time histories -> re-ranking examples.

Histories come from the Feast offline store (``get_historical_features``, as of one second before
the target's event time), so training examples see exactly what serving would have seen at that
moment. They are cross-checked against the histories read straight off the interaction sequence:
any difference means the point-in-time join leaked or lost items, and the stage fails.

Each example also carries its candidates' co-purchases with its history (training-split counts,
``feature_repo.co_purchase``), read from the same store's item features, which the
service reads online; a prompt shows them when ``prompts.list_co_purchases`` is set.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from components import storage
from components.candidates.build import read_candidate_lists
from components.candidates.schema import EXAMPLE_COLUMNS
from components.config import Config
from components.data.events import event_seconds
from components.data.ingest import load_dataset
from components.data.splits import training_interactions
from components.prompts.render import ItemCatalog, render_example
from components.semantic_ids.build import read_sids
from components.stage import StageResult, StageSpec
from feature_repo.co_purchase import candidate_co_purchases, co_purchase_neighbors


EXAMPLES_STAGE = StageSpec("examples", ("candidates", "prompts", "features"), ("components/candidates", "components/prompts", "components/data/ingest", "components/data/events", "components/data/splits", "feature_repo/co_purchase"))


def examples_inputs(dataset_uri: str, sid_uri: str, candidates_uri: str, feature_store_dir: str | None) -> dict[str, str]:
    return {"dataset": dataset_uri, "sids": sid_uri, "candidates": candidates_uri, "features": feature_store_dir or ""}


class HistoryMismatchError(RuntimeError):
    """Feature-store histories disagree with the interaction log (a point-in-time join bug)."""


def sequence_histories(interactions: pd.DataFrame, lists: pd.DataFrame, history_max: int) -> tuple[list[list[str]], list[list[int]]]:
    """For each example: the item ids before its target (oldest first, last ``history_max``) and their event times."""
    ordered = interactions.sort_values(["user_id", "position"], kind="stable")
    seconds = event_seconds(ordered).to_numpy()
    items = ordered["item_id"].to_numpy()
    starts = dict(zip(*np.unique(ordered["user_id"].to_numpy(), return_index=True)))
    histories, times = [], []
    for user, position in zip(lists["user_id"], lists["target_position"]):
        start = starts[user]
        lo = start + max(0, position - history_max)
        histories.append(items[lo : start + position].tolist())
        times.append(seconds[lo : start + position].tolist())
    return histories, times


def feature_store_histories(cfg: Config, feature_store_dir: str, lists: pd.DataFrame) -> list[list[str]]:
    """Histories as of one second before each target, from the Feast offline store."""
    from feature_repo.store import historical_histories, open_store

    store = open_store(cfg, Path(feature_store_dir))
    entity_df = pd.DataFrame(
        {
            "user_id": lists["user_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(lists["event_seconds"].to_numpy() - 1, unit="s", utc=True),
        }
    )
    fetched = historical_histories(store, entity_df)
    return [list(h)[-cfg.candidates.history_max :] for h in fetched["history_item_ids"]]


def feature_store_co_purchases(cfg: Config, feature_store_dir: str, item_ids: list[str]) -> dict[str, dict[str, int]]:
    """Every item's training-split co-purchases, from the Feast offline store."""
    from feature_repo.store import historical_co_purchases, open_store

    return historical_co_purchases(open_store(cfg, Path(feature_store_dir)), item_ids)


def example_co_purchases(lists: pd.DataFrame, histories: list[list[str]], neighbors: dict[str, dict[str, int]]) -> list[list[int]]:
    """Per example, each candidate's co-purchases with its history (a train target's own share left out)."""
    return [
        candidate_co_purchases(history, list(candidates), neighbors, own_target=target if split == "train" else None)
        for history, candidates, target, split in zip(histories, lists["candidates"], lists["target"], lists["split"])
    ]


def read_examples(examples_uri: str, work_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(storage.fetch_dir(examples_uri, work_dir) / "examples.parquet")


def split_examples(examples: pd.DataFrame, split: str, limit: int, seed: int) -> pd.DataFrame:
    """The examples of one split, or a seeded sample of ``limit`` of them (0 = all), in file order."""
    rows = examples[examples["split"] == split]
    if 0 < limit < len(rows):
        rows = rows.sample(n=limit, random_state=seed).sort_index()
    return rows.reset_index(drop=True)


def build_examples(
    cfg: Config, dataset_uri: str, sid_uri: str, candidates_uri: str, feature_store_dir: str | None
) -> StageResult:
    """Join candidate lists with point-in-time histories into re-ranking examples.

    Args:
        cfg: run config.
        dataset_uri, sid_uri, candidates_uri: outputs of the earlier stages.
        feature_store_dir: the Feast repo of the features stage; None reads histories from the
            interaction log directly (``features.enabled: false``).

    Returns:
        ``outputs``: ``examples_uri`` (examples.parquet, prompt_preview.json); ``metrics``: counts
        and history lengths.
    """
    examples_uri = EXAMPLES_STAGE.output_uri(cfg, examples_inputs(dataset_uri, sid_uri, candidates_uri, feature_store_dir))
    if storage.exists(examples_uri):
        metrics = json.loads((storage.fetch_dir(examples_uri, cfg.storage.work_dir) / "metrics.json").read_text())
        return StageResult({"examples_uri": examples_uri}, metrics, cached=True)

    dataset = load_dataset(dataset_uri, cfg.storage.work_dir)
    lists = read_candidate_lists(candidates_uri, cfg.storage.work_dir)
    histories, history_times = sequence_histories(dataset.interactions, lists, cfg.candidates.history_max)
    if feature_store_dir is not None:
        fetched = feature_store_histories(cfg, feature_store_dir, lists)
        mismatched = [row for row, (a, b) in enumerate(zip(fetched, histories)) if a != b]
        if mismatched:
            row = mismatched[0]
            raise HistoryMismatchError(
                f"{len(mismatched)} feature-store histories differ from the interaction log; first: user "
                f"{lists['user_id'].iloc[row]} at position {lists['target_position'].iloc[row]}: "
                f"feature store {fetched[row]} vs log {histories[row]}"
            )
        histories = fetched
        neighbors = feature_store_co_purchases(cfg, feature_store_dir, dataset.items["item_id"].astype(str).tolist())
    else:
        neighbors = co_purchase_neighbors(training_interactions(dataset.interactions))
    examples = lists.assign(
        history=histories, history_event_seconds=history_times, co_purchases=example_co_purchases(lists, histories, neighbors)
    )[EXAMPLE_COLUMNS]

    catalog = ItemCatalog.from_frames(dataset.items, read_sids(sid_uri, cfg.storage.work_dir))
    first_test = examples[examples["split"] == "test"].iloc[0]
    preview = render_example(first_test, catalog, cfg.prompts)
    lengths = examples["history"].map(len)
    metrics = {
        "examples": int(len(examples)),
        "history_source": "feast" if feature_store_dir is not None else "interaction_log",
        "history_length_mean": float(lengths.mean()),
        "history_length_max": int(lengths.max()),
        "prompt_preview_chars": int(sum(len(m["content"]) for m in preview)),
    }
    with tempfile.TemporaryDirectory(dir=cfg.storage.work_dir, prefix="examples-") as staging:
        examples.to_parquet(Path(staging) / "examples.parquet", index=False)
        (Path(staging) / "prompt_preview.json").write_text(json.dumps(preview, indent=2))
        (Path(staging) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        storage.publish_dir(staging, examples_uri)
    return StageResult({"examples_uri": examples_uri}, metrics)
