"""GX validation suites on small published datasets and example sets, clean and corrupted."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from components import storage
from components.candidates.validation import validate_examples
from components.config import Config
from components.data.validation import DataValidationError, validate_dataset

USERS = ["u1", "u2", "u3"]
ITEMS = [f"i{k:02d}" for k in range(12)]
SEQUENCE_LENGTH = 5


def _interactions() -> pd.DataFrame:
    """Five interactions per user; u3 lacks two timestamps, which is allowed."""
    rows = [
        (user, ITEMS[(3 * u + p) % len(ITEMS)], 1_000 + 10 * p, p)
        for u, user in enumerate(USERS)
        for p in range(SEQUENCE_LENGTH)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    frame.loc[(frame["user_id"] == "u3") & frame["position"].isin([1, 3]), "timestamp"] = pd.NA
    return frame


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ITEMS,
            "title": [f"Item {item}" for item in ITEMS],
            "brand": None,
            "categories": [["Beauty"]] * len(ITEMS),
            "description": "",
        }
    )


def _examples() -> pd.DataFrame:
    """A valid and a test example per user, N=10 candidates, the target at a varying rank."""
    rows = []
    for user, sequence in _interactions().groupby("user_id")["item_id"]:
        sequence = list(sequence)
        for split, k in (("valid", SEQUENCE_LENGTH - 2), ("test", SEQUENCE_LENGTH - 1)):
            target = sequence[k]
            others = [item for item in ITEMS if item != target][:9]
            rank = len(rows) % 10 + 1
            rows.append(
                {
                    "user_id": user,
                    "split": split,
                    "target": target,
                    "target_position": k,
                    "event_seconds": 1_000 + 10 * k,
                    "history": sequence[:k],
                    "history_event_seconds": [1_000 + 10 * j for j in range(k)],
                    "candidates": others[: rank - 1] + [target] + others[rank - 1 :],
                    "target_pre_rank": rank,
                    "in_test_sample": split == "test",
                }
            )
    return pd.DataFrame(rows)


def _publish(cfg: Config, name: str, frames: dict[str, pd.DataFrame]) -> str:
    uri = storage.join(cfg.storage.artifact_root, name)
    with tempfile.TemporaryDirectory() as local:
        for file_name, frame in frames.items():
            frame.to_parquet(Path(local) / f"{file_name}.parquet", index=False)
        storage.publish_dir(local, uri)
    return uri


def _publish_dataset(cfg: Config, interactions: pd.DataFrame, items: pd.DataFrame) -> str:
    return _publish(cfg, "datasets/fixture", {"interactions": interactions, "items": items})


def _publish_examples(cfg: Config, examples: pd.DataFrame) -> tuple[str, str]:
    """Publish examples plus the clean dataset they refer to; returns (examples_uri, dataset_uri)."""
    return _publish(cfg, "examples/fixture", {"examples": examples}), _publish_dataset(cfg, _interactions(), _items())


def _row(frame: pd.DataFrame, user: str, position: int) -> pd.Series:
    return (frame["user_id"] == user) & (frame["position"] == position)


# --------------------------------------------------------------------------- dataset


def test_clean_dataset_passes_and_writes_data_docs(make_config) -> None:
    cfg = make_config()
    dataset_uri = _publish_dataset(cfg, _interactions(), _items())

    result = validate_dataset(cfg, dataset_uri)

    docs = Path(result.outputs["data_docs_path"])
    assert docs.name == "index.html" and docs.is_file()
    assert docs.is_relative_to(Path(cfg.storage.work_dir) / "gx")
    assert result.metrics == {"expectations_evaluated": 14, "expectations_failed": 0}
    # A second run in the same GX project replaces the stored definitions instead of failing.
    assert validate_dataset(cfg, dataset_uri).metrics == result.metrics


def _duplicate_item(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    inter.loc[_row(inter, "u1", 1), "item_id"] = inter.loc[_row(inter, "u1", 0), "item_id"].iloc[0]


def _position_gap(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    inter.loc[_row(inter, "u1", 4), "position"] = 5


def _too_few_interactions(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    inter.drop(inter.index[_row(inter, "u2", 4)], inplace=True)


def _decreasing_timestamps(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    # u3's timestamp at position 1 is null: the decrease is across it, from position 0 to 2.
    inter.loc[_row(inter, "u3", 2), "timestamp"] = 999


def _item_without_row(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    items.drop(items.index[items["item_id"] == inter["item_id"].iloc[0]], inplace=True)


def _low_title_coverage(inter: pd.DataFrame, items: pd.DataFrame) -> None:
    items.loc[items.index[:2], "title"] = ["", " "]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        pytest.param(
            _duplicate_item,
            "suite interactions: expect_compound_columns_to_be_unique on user_id, item_id (2 unexpected)",
            id="duplicate_item",
        ),
        pytest.param(
            _position_gap,
            "suite users: expect_column_pair_values_a_to_be_greater_than_b on n, max_position (1 unexpected)",
            id="position_gap",
        ),
        pytest.param(
            _too_few_interactions,
            "suite users: expect_column_values_to_be_between on n (1 unexpected)",
            id="too_few_interactions",
        ),
        pytest.param(
            _decreasing_timestamps,
            "suite users: expect_column_values_to_be_in_set on timestamps_non_decreasing (1 unexpected)",
            id="decreasing_timestamps",
        ),
        pytest.param(
            _item_without_row,
            "suite interactions: expect_column_values_to_be_in_set on has_item_row (1 unexpected)",
            id="item_without_row",
        ),
        pytest.param(
            _low_title_coverage,
            "suite items: expect_column_values_to_match_regex on title (2 unexpected)",
            id="low_title_coverage",
        ),
    ],
)
def test_corrupted_dataset_fails_naming_the_expectation(
    make_config, corrupt: Callable[[pd.DataFrame, pd.DataFrame], None], expected: str
) -> None:
    cfg = make_config()
    interactions, items = _interactions(), _items()
    corrupt(interactions, items)

    with pytest.raises(DataValidationError) as failure:
        validate_dataset(cfg, _publish_dataset(cfg, interactions, items))

    message = str(failure.value)
    assert expected in message
    assert message.endswith(f"Data Docs: {failure.value.data_docs_path}")
    # The Data Docs are written on failure too.
    assert Path(failure.value.data_docs_path).is_file()
    assert all(entry["unexpected_count"] for entry in failure.value.failed)


def test_title_coverage_threshold_comes_from_config(make_config) -> None:
    cfg = make_config("validation.min_title_coverage=0.8")
    interactions, items = _interactions(), _items()
    _low_title_coverage(interactions, items)

    assert validate_dataset(cfg, _publish_dataset(cfg, interactions, items)).metrics["expectations_failed"] == 0


# --------------------------------------------------------------------------- examples


def test_clean_examples_pass(make_config) -> None:
    cfg = make_config()
    result = validate_examples(cfg, *_publish_examples(cfg, _examples()))

    assert Path(result.outputs["data_docs_path"]).is_file()
    assert result.metrics == {"expectations_evaluated": 9, "expectations_failed": 0}


# Example 0's target is ranked first, so the corruptions below leave it in place.


def _nine_candidates(examples: pd.DataFrame) -> None:
    examples.at[0, "candidates"] = examples.at[0, "candidates"][:9]


def _duplicate_candidate(examples: pd.DataFrame) -> None:
    examples.at[0, "candidates"] = [*examples.at[0, "candidates"][:9], examples.at[0, "candidates"][8]]


def _target_not_candidate(examples: pd.DataFrame) -> None:
    # The last item is not among example 0's candidates.
    examples.at[0, "candidates"] = [ITEMS[-1], *examples.at[0, "candidates"][1:]]


def _pre_rank_out_of_range(examples: pd.DataFrame) -> None:
    examples.at[0, "target_pre_rank"] = 11


def _pre_rank_mismatch(examples: pd.DataFrame) -> None:
    examples.at[0, "target_pre_rank"] = examples.at[0, "target_pre_rank"] % 10 + 1


def _history_not_earlier(examples: pd.DataFrame) -> None:
    times = examples.at[1, "history_event_seconds"]
    examples.at[1, "history_event_seconds"] = [*times[:-1], examples.at[1, "event_seconds"]]


def _unknown_split(examples: pd.DataFrame) -> None:
    examples.at[0, "split"] = "holdout"


def _unknown_history_item(examples: pd.DataFrame) -> None:
    examples.at[0, "history"] = [*examples.at[0, "history"][:-1], "no-such-item"]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        pytest.param(
            _nine_candidates,
            "suite examples: expect_column_values_to_be_between on n_candidates (1 unexpected)",
            id="nine_candidates",
        ),
        pytest.param(
            _duplicate_candidate,
            "suite examples: expect_column_values_to_be_between on n_distinct_candidates (1 unexpected)",
            id="duplicate_candidate",
        ),
        pytest.param(
            _target_not_candidate,
            "suite examples: expect_column_values_to_not_be_null on target_candidate_rank (1 unexpected)",
            id="target_not_candidate",
        ),
        pytest.param(
            _pre_rank_out_of_range,
            "suite examples: expect_column_values_to_be_between on target_pre_rank (1 unexpected)",
            id="pre_rank_out_of_range",
        ),
        pytest.param(
            _pre_rank_mismatch,
            "suite examples: expect_column_pair_values_to_be_equal on target_pre_rank, target_candidate_rank"
            " (1 unexpected)",
            id="pre_rank_mismatch",
        ),
        pytest.param(
            _history_not_earlier,
            "suite examples: expect_column_pair_values_a_to_be_greater_than_b on event_seconds,"
            " latest_history_event_seconds (1 unexpected)",
            id="history_not_earlier",
        ),
        pytest.param(
            _unknown_split,
            "suite examples: expect_column_values_to_be_in_set on split (1 unexpected)",
            id="unknown_split",
        ),
        pytest.param(
            _unknown_history_item,
            "suite examples: expect_column_values_to_be_in_set on history_items_known (1 unexpected)",
            id="unknown_history_item",
        ),
    ],
)
def test_corrupted_examples_fail_naming_the_expectation(
    make_config, corrupt: Callable[[pd.DataFrame], None], expected: str
) -> None:
    cfg = make_config()
    examples = _examples()
    corrupt(examples)

    with pytest.raises(DataValidationError) as failure:
        validate_examples(cfg, *_publish_examples(cfg, examples))

    assert expected in str(failure.value)
    assert Path(failure.value.data_docs_path).is_file()
