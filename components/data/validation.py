"""Data validation: Great Expectations suites over a dataset version, and the runner every suite uses
(the re-ranking examples' suite is ``components.candidates.validation``).

Every suite runs as a GX checkpoint in a file context at ``<work_dir>/gx``; the checkpoint's
UpdateDataDocsAction rewrites the Data Docs there on every run, pass or fail. Any failed
expectation raises :class:`DataValidationError` after all suites of the stage have run, so one
message lists every problem. Bad data is not transient: nothing here retries.

GX validates one frame at a time and has no expectation over a group of rows (a user's sequence,
an example's candidate list). Such properties are checked with built-in expectations on a derived
frame with one row per user or per example, whose columns are that group's aggregates; the
unexpected counts of those suites count users or examples, not rows. Checks across frames (an
item id that must have an item row) are a derived boolean column next to the referring rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig

from components.config import Config
from components.data.ingest import load_dataset
from components.stage import StageResult

logger = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """A suite failed; the message lists each failed expectation and ends with the Data Docs path.

    Attributes:
        failed: one dict per failed expectation: ``suite``, ``expectation``, ``columns``,
            ``unexpected_count`` (None for an expectation that could not be evaluated), ``error``.
        data_docs_path: the local Data Docs ``index.html``.
    """

    def __init__(self, failed: list[dict[str, Any]], data_docs_path: str) -> None:
        self.failed = failed
        self.data_docs_path = data_docs_path
        lines = [f"data validation failed: {len(failed)} expectation(s)"]
        for entry in failed:
            detail = f"error: {entry['error']}" if entry["error"] else f"{entry['unexpected_count']} unexpected"
            lines.append(
                f"  - suite {entry['suite']}: {entry['expectation']} on {', '.join(entry['columns'])} ({detail})"
            )
        lines.append(f"Data Docs: {data_docs_path}")
        super().__init__("\n".join(lines))


@dataclass
class Suite:
    """Expectations and the frame they are evaluated on (one GX suite, asset and checkpoint)."""

    name: str
    frame: pd.DataFrame
    expectations: list[gxe.Expectation]


# --------------------------------------------------------------------------- dataset suites


def _user_frame(interactions: pd.DataFrame) -> pd.DataFrame:
    """One row per user: sequence length, position range and whether known timestamps ascend."""
    ordered = interactions.sort_values(["user_id", "position"], kind="stable")
    # Rows without a timestamp are skipped, so a null between two times does not hide a decrease.
    timed = ordered.dropna(subset=["timestamp"])
    step = timed.groupby("user_id", sort=False)["timestamp"].diff()
    decreased = timed.loc[step.lt(0).fillna(False), "user_id"]
    users = ordered.groupby("user_id").agg(
        n=("position", "size"),
        n_distinct_positions=("position", "nunique"),
        min_position=("position", "min"),
        max_position=("position", "max"),
    )
    users["timestamps_non_decreasing"] = ~users.index.isin(decreased)
    return users.reset_index()


def known_items(lists: pd.Series, items: pd.DataFrame) -> pd.Series:
    """Per row: whether every item id in the row's list has an item row (true for an empty list)."""
    ids = lists.explode().dropna()
    return pd.Series(~lists.index.isin(ids.index[~ids.isin(items["item_id"])]), index=lists.index)


def _dataset_suites(cfg: Config, interactions: pd.DataFrame, items: pd.DataFrame) -> list[Suite]:
    return [
        Suite(
            "interactions",
            # The check across the two frames. Membership is computed here rather than with
            # ExpectColumnValuesToBeInSet(value_set=<all item ids>): GX copies an expectation's
            # kwargs many times per run, and a 12k-id value set made that one check take seconds
            # and its Data Docs page 600 kB.
            interactions.assign(has_item_row=interactions["item_id"].isin(items["item_id"])),
            [
                *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "position")),
                gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
                gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "position"]),
                gxe.ExpectColumnValuesToBeInSet(column="has_item_row", value_set=[True]),
            ],
        ),
        Suite(
            "users",
            _user_frame(interactions),
            [
                gxe.ExpectColumnValuesToBeBetween(column="n", min_value=cfg.validation.min_interactions_per_user),
                # n distinct positions, none below 0 and none at n or above: exactly 0..n-1.
                gxe.ExpectColumnValuesToBeBetween(column="min_position", min_value=0, max_value=0),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="n_distinct_positions", column_B="n"),
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n", column_B="max_position"),
                gxe.ExpectColumnValuesToBeInSet(column="timestamps_non_decreasing", value_set=[True]),
            ],
        ),
        Suite(
            "items",
            # A missing title counts as an empty one.
            items.assign(title=items["title"].fillna("")),
            [
                gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
                gxe.ExpectColumnValuesToBeUnique(column="item_id"),
                gxe.ExpectColumnValuesToMatchRegex(
                    column="title", regex=r"\S", mostly=cfg.validation.min_title_coverage
                ),
            ],
        ),
    ]


# --------------------------------------------------------------------------- running suites


def _context(cfg: Config) -> AbstractDataContext:
    context = gx.get_context(mode="file", context_root_dir=Path(cfg.storage.work_dir) / "gx")
    # tqdm bars per metric batch only clutter pipeline logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _failure(suite: str, result: ExpectationValidationResult) -> dict[str, Any]:
    kwargs = result.expectation_config.kwargs
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    columns += kwargs.get("column_list", [])
    info = result.exception_info or {}
    # One metric's error sits at the top level; errors of several metrics are keyed by metric id.
    errors = [info] if "raised_exception" in info else list(info.values())
    messages = [e["exception_message"] for e in errors if isinstance(e, dict) and e.get("raised_exception")]
    return {
        "suite": suite,
        "expectation": result.expectation_config.type,
        "columns": columns,
        "unexpected_count": result.result.get("unexpected_count"),
        "error": "; ".join(messages) or None,
    }


def _run_suite(context: AbstractDataContext, suite: Suite) -> tuple[int, list[dict[str, Any]]]:
    """Run one suite on its frame through a checkpoint that also updates the Data Docs.

    Every object is added-or-updated under the suite's name, so reruns (in this process or a
    later one) replace the previous definitions instead of failing on existing names.
    """
    # A fresh source per run: its dataframe asset exists only to hand this frame to GX.
    source = context.data_sources.add_or_update_pandas(suite.name)
    batch = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe(suite.name)
    definition = gx.ValidationDefinition(
        name=suite.name, data=batch, suite=gx.ExpectationSuite(name=suite.name, expectations=suite.expectations)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format="SUMMARY",
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": suite.frame})
    results = [r for validation in run.run_results.values() for r in validation.results]
    return len(results), [_failure(suite.name, r) for r in results if not r.success]


def run_suites(cfg: Config, suites: list[Suite]) -> StageResult:
    """Run every suite, then raise :class:`DataValidationError` listing all failures, or return the
    Data Docs path and the count of expectations evaluated."""
    context = _context(cfg)
    evaluated, failed = 0, []
    for suite in suites:
        count, failures = _run_suite(context, suite)
        evaluated += count
        failed += failures
    docs_path = url2pathname(urlparse(context.get_docs_sites_urls()[0]["site_url"]).path)
    logger.info("Data Docs: %s", docs_path)
    if failed:
        raise DataValidationError(failed, docs_path)
    return StageResult({"data_docs_path": docs_path}, {"expectations_evaluated": evaluated, "expectations_failed": 0})


def validate_dataset(cfg: Config, dataset_uri: str) -> StageResult:
    """Validate a published dataset version: interactions, per-user sequences and items.

    Args:
        cfg: the run config; ``cfg.validation`` sets the thresholds, ``cfg.storage.work_dir`` holds
            the GX project and its Data Docs.
        dataset_uri: a published dataset version (``components.data.ingest``).

    Returns:
        ``outputs``: ``data_docs_path`` (the local Data Docs index.html); ``metrics``:
        ``expectations_evaluated`` and ``expectations_failed`` (always 0: a failure raises).

    Raises:
        DataValidationError: an expectation failed; the Data Docs show the details.
    """
    dataset = load_dataset(dataset_uri, cfg.storage.work_dir)
    return run_suites(cfg, _dataset_suites(cfg, dataset.interactions, dataset.items))
