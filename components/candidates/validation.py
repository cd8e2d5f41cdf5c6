"""The re-ranking examples' Great Expectations suite: their contract and the dataset they reference.

One row per example, whose columns are the aggregates of its lists that the contract constrains
(GX has no expectation over a list); the suite runs through ``components.data.validation``.
"""

from __future__ import annotations

import great_expectations.expectations as gxe
import pandas as pd

from components.candidates.examples import read_examples
from components.candidates.schema import SPLITS
from components.config import Config
from components.data.ingest import load_dataset
from components.data.validation import Suite, known_items, run_suites
from components.stage import StageResult


def _example_frame(examples: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per example with the aggregates of its lists that the contract constrains."""
    candidates = examples["candidates"].map(list)
    # 1-based index of the target in its candidate list; null when the target is not there.
    target_rank = [
        cands.index(target) + 1 if target in cands else None for cands, target in zip(candidates, examples["target"])
    ]
    return pd.DataFrame(
        {
            "user_id": examples["user_id"],
            "split": examples["split"],
            "event_seconds": examples["event_seconds"],
            "target_pre_rank": examples["target_pre_rank"],
            "n_candidates": candidates.map(len),
            "n_distinct_candidates": candidates.map(lambda c: len(set(c))),
            "target_candidate_rank": pd.array(target_rank, dtype="Int64"),
            # Null for an empty history: nothing to compare.
            "latest_history_event_seconds": pd.array(
                [max(times) if len(times) else None for times in examples["history_event_seconds"]], dtype="Int64"
            ),
            # As for interactions, membership in the items frame is a derived column (components.data.validation).
            "history_items_known": known_items(examples["history"], items),
            "candidates_known": known_items(examples["candidates"], items),
        }
    )


def _example_suites(cfg: Config, examples: pd.DataFrame, items: pd.DataFrame) -> list[Suite]:
    n = cfg.candidates.num_candidates
    return [
        Suite(
            "examples",
            _example_frame(examples, items),
            [
                gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                gxe.ExpectColumnValuesToBeBetween(column="n_candidates", min_value=n, max_value=n),
                gxe.ExpectColumnValuesToBeBetween(column="n_distinct_candidates", min_value=n, max_value=n),
                gxe.ExpectColumnValuesToNotBeNull(column="target_candidate_rank"),
                gxe.ExpectColumnValuesToBeBetween(column="target_pre_rank", min_value=1, max_value=n),
                # A target missing from its list is the not-null failure above; GX's pandas pair
                # comparison also cannot evaluate a null in a nullable integer column.
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="target_pre_rank",
                    column_B="target_candidate_rank",
                    ignore_row_if="either_value_is_missing",
                ),
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="event_seconds",
                    column_B="latest_history_event_seconds",
                    ignore_row_if="either_value_is_missing",
                ),
                *(
                    gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True])
                    for c in ("history_items_known", "candidates_known")
                ),
            ],
        ),
    ]


def validate_examples(cfg: Config, examples_uri: str, dataset_uri: str) -> StageResult:
    """Validate re-ranking examples against their contract and the dataset they were built from.

    Args:
        cfg: the run config; ``cfg.candidates.num_candidates`` is the required list length,
            ``cfg.storage.work_dir`` holds the GX project and its Data Docs.
        examples_uri: a published directory holding ``examples.parquet``.
        dataset_uri: the dataset version the examples reference.

    Returns:
        ``outputs``: ``data_docs_path`` (the local Data Docs index.html); ``metrics``:
        ``expectations_evaluated`` and ``expectations_failed`` (always 0: a failure raises).

    Raises:
        DataValidationError: an expectation failed; the Data Docs show the details.
    """
    examples = read_examples(examples_uri, cfg.storage.work_dir)
    items = load_dataset(dataset_uri, cfg.storage.work_dir).items
    return run_suites(cfg, _example_suites(cfg, examples, items))
