"""Ingest raw interaction logs into a canonical, content-hashed dataset version.

Accepted inputs (a local directory or an ``s3://`` prefix):

* the bundled layout: ``interactions.tsv[.gz]`` (user_id, item_id, timestamp, position) and
  ``items.jsonl[.gz]`` (item_id, title, brand, categories[, description]);
* the public Amazon review JSON-lines files (McAuley lab, 2014 release): a reviews file with
  reviewerID/asin/unixReviewTime and a metadata file with asin/title/brand/categories. The 2014
  metadata lines are Python literals rather than strict JSON; both are read.

Output, under ``<artifact root>/datasets/<version>/``: ``interactions.parquet`` (user_id, item_id,
timestamp or null, position) and ``items.parquet`` (item_id, title, brand, categories,
description), where ``version`` is the hash of the canonical content. Bad input raises
:class:`DataError` naming the file, line or column; nothing is published unless all of it parsed.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from components import storage
from components.config import Config, DataConfig
from components.stage import StageResult, code_version

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "position"]
ITEM_COLUMNS = ["item_id", "title", "brand", "categories", "description"]


class DataError(ValueError):
    """Input data that cannot be ingested; the message names the file, line or column."""


@dataclass
class Dataset:
    interactions: pd.DataFrame
    items: pd.DataFrame


# --------------------------------------------------------------------------- reading sources


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _first_existing(directory: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: missing {what} file (looked for {', '.join(names)})")


def _json_lines(path: Path, allow_python_literals: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not allow_python_literals:
                        raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                    try:
                        record = ast.literal_eval(line.strip())
                    except (ValueError, SyntaxError):
                        raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None


def _require(record: dict[str, Any], key: str, path: Path, line_no: int) -> Any:
    if record.get(key) in (None, ""):
        raise DataError(f"{path}:{line_no}: missing field {key!r}")
    return record[key]


def _as_str_list(value: Any, path: Path, line_no: int, column: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}:{line_no}: column {column!r} must be a list of strings")
    return value


def _optional_str(value: Any, path: Path, line_no: int, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{path}:{line_no}: column {column!r} must be a string, got {type(value).__name__}")


def _item_row(record: dict[str, Any], path: Path, line_no: int, id_field: str, categories: list[str]) -> dict[str, Any]:
    """One canonical item row from a metadata record whose id is in ``id_field``."""
    return {
        "item_id": str(_require(record, id_field, path, line_no)),
        "title": _optional_str(record.get("title"), path, line_no, "title") or "",
        "brand": _optional_str(record.get("brand"), path, line_no, "brand"),
        "categories": categories,
        "description": _optional_str(record.get("description"), path, line_no, "description") or "",
    }


def _read_bundled(directory: Path) -> Dataset:
    inter_path = _first_existing(directory, ["interactions.tsv.gz", "interactions.tsv"], "interactions")
    items_path = _first_existing(directory, ["items.jsonl.gz", "items.jsonl"], "items")
    try:
        frame = pd.read_csv(inter_path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise DataError(f"{inter_path}: cannot be parsed as TSV ({exc})") from None
    missing = [c for c in ("user_id", "item_id", "position") if c not in frame.columns]
    if missing:
        raise DataError(f"{inter_path}: missing column(s) {', '.join(missing)}")
    if "timestamp" not in frame.columns:
        frame["timestamp"] = ""
    for column in ("user_id", "item_id"):
        blank = frame[column].str.strip() == ""
        if blank.any():
            raise DataError(f"{inter_path}:{int(blank.idxmax()) + 2}: column {column!r} is empty")
    for column, nullable in (("position", False), ("timestamp", True)):
        raw = frame[column].str.strip()
        numeric = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = (numeric.isna() & ((raw != "") | (not nullable))) | (numeric.notna() & (numeric % 1 != 0))
        if bad.any():
            row = int(bad.idxmax())
            raise DataError(
                f"{inter_path}:{row + 2}: column {column!r} must be an integer, got {frame[column].iloc[row]!r}"
            )
        frame[column] = numeric.astype("Int64")
    interactions = frame[INTERACTION_COLUMNS].copy()
    interactions["position"] = interactions["position"].astype("int64")

    rows = [
        _item_row(record, items_path, line_no, "item_id", _as_str_list(record.get("categories"), items_path, line_no, "categories"))
        for line_no, record in _json_lines(items_path, allow_python_literals=False)
    ]
    dataset = Dataset(interactions, pd.DataFrame(rows, columns=ITEM_COLUMNS))
    # Row i of the frame is line i + 2 of the file (line 1 is the header).
    _check_consistency(dataset, inter_path, range(2, len(interactions) + 2), items_path)
    return dataset


def _flatten_categories(value: Any, path: Path, line_no: int) -> list[str]:
    """2014 metadata holds category *paths* (lists of lists); keep each path without its root."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}:{line_no}: column 'categories' must be a list")
    flat: list[str] = []
    for entry in value:
        names = entry[1:] if isinstance(entry, list) else [entry]
        for name in names:
            if not isinstance(name, str):
                raise DataError(f"{path}:{line_no}: column 'categories' must hold strings")
            if name not in flat:
                flat.append(name)
    return flat


def _read_amazon_json(directory: Path, cfg: DataConfig) -> Dataset:
    reviews_path = _first_existing(directory, [cfg.reviews_file, cfg.reviews_file.removesuffix(".gz")], "reviews")
    meta_path = _first_existing(directory, [cfg.metadata_file, cfg.metadata_file.removesuffix(".gz")], "metadata")
    reviews = []
    lines: list[int] = []
    for line_no, record in _json_lines(reviews_path, allow_python_literals=True):
        timestamp = record.get("unixReviewTime")
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
            raise DataError(f"{reviews_path}:{line_no}: column 'unixReviewTime' must be an integer")
        reviews.append(
            (
                str(_require(record, "reviewerID", reviews_path, line_no)),
                str(_require(record, "asin", reviews_path, line_no)),
                timestamp,
            )
        )
        lines.append(line_no)
    frame = pd.DataFrame(reviews, columns=["user_id", "item_id", "timestamp"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")

    items = [
        _item_row(record, meta_path, line_no, "asin", _flatten_categories(record.get("categories"), meta_path, line_no))
        for line_no, record in _json_lines(meta_path, allow_python_literals=True)
    ]
    items_frame = pd.DataFrame(items, columns=ITEM_COLUMNS)
    # Checked while rows are still in file order, so an error can name the review's line.
    _check_consistency(Dataset(frame, items_frame), reviews_path, lines, meta_path)
    # A stable sort by time keeps same-day reviews in file order (the S3-Rec/P5 convention).
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable", na_position="first").reset_index(drop=True)
    frame["position"] = frame.groupby("user_id").cumcount().astype("int64")
    return Dataset(frame[INTERACTION_COLUMNS], items_frame)


def _detect_format(directory: Path, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    if any((directory / n).is_file() for n in ("interactions.tsv.gz", "interactions.tsv")):
        return "bundled"
    if any((directory / n).is_file() for n in (cfg.reviews_file, cfg.reviews_file.removesuffix(".gz"))):
        return "amazon-json"
    raise DataError(
        f"{directory}: no interactions.tsv[.gz] (bundled layout) and no {cfg.reviews_file} (Amazon JSON lines)"
    )


@contextlib.contextmanager
def _local_source(cfg: DataConfig, work_dir: Path) -> Iterator[Path]:
    """The source directory on local disk; an s3:// source is downloaded (its top-level files)
    into a directory of this ingest's own, removed afterwards, so concurrent ingests of one source
    never touch each other's files."""
    if not storage.is_s3(cfg.source_uri):
        directory = Path(cfg.source_uri)
        if not directory.is_dir():
            raise DataError(f"{cfg.source_uri}: source directory does not exist")
        yield directory
        return
    bucket, prefix = storage.split_s3(cfg.source_uri)
    client = storage.s3_client()
    listing = storage.objects._s3_call(
        cfg.source_uri, client.list_objects_v2, Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", Delimiter="/"
    )
    keys = [obj["Key"] for obj in listing.get("Contents", [])]
    if not keys:
        raise DataError(f"{cfg.source_uri}: no objects under this prefix")
    (work_dir / "sources").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir / "sources", prefix=hashlib.sha256(cfg.source_uri.encode()).hexdigest()[:16] + "-") as target:
        for key in keys:
            storage.objects._s3_call(cfg.source_uri, client.download_file, bucket, key, str(Path(target) / Path(key).name))
        yield Path(target)


def _input_digest(directory: Path, fmt: str) -> str:
    digest = hashlib.sha256(fmt.encode())
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def _parse(directory: Path, fmt: str, cfg: DataConfig) -> Dataset:
    return _read_bundled(directory) if fmt == "bundled" else _read_amazon_json(directory, cfg)


def _check_consistency(dataset: Dataset, inter_path: Path, lines: Sequence[int], items_path: Path) -> None:
    """Both files non-empty and every interaction names a known item.

    ``lines[i]`` is the line of ``inter_path`` that row ``i`` of the interactions came from.
    """
    if dataset.interactions.empty:
        raise DataError(f"{inter_path}: no interactions")
    if dataset.items.empty:
        raise DataError(f"{items_path}: no items")
    unknown = ~dataset.interactions["item_id"].isin(dataset.items["item_id"])
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        others = dataset.interactions.loc[unknown, "item_id"].nunique() - 1
        raise DataError(
            f"{inter_path}:{lines[row]}: item {dataset.interactions['item_id'].iloc[row]!r} has no row in "
            f"{items_path}" + (f" ({others} more unknown item(s))" if others else "")
        )


# --------------------------------------------------------------------------- canonical form


def canonicalize(dataset: Dataset) -> Dataset:
    """Sorted, typed frames: the same content always gives the same bytes and version."""
    inter = dataset.interactions.astype({"user_id": str, "item_id": str}).copy()
    inter["timestamp"] = inter["timestamp"].astype("Int64")
    inter["position"] = inter["position"].astype("int64")
    inter = inter.sort_values(["user_id", "position"], kind="stable").reset_index(drop=True)
    items = dataset.items.copy()
    items["brand"] = items["brand"].astype(object).where(items["brand"].notna(), None)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    return Dataset(inter[INTERACTION_COLUMNS], items[ITEM_COLUMNS])


def content_version(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(dataset.interactions.to_csv(index=False, sep="\t").encode())
    digest.update(dataset.items.assign(categories=dataset.items["categories"].map(json.dumps)).to_csv(index=False, sep="\t").encode())
    return digest.hexdigest()[:16]


def load_dataset(dataset_uri: str, work_dir: str | Path) -> Dataset:
    """Read a published dataset version."""
    local = storage.fetch_dir(dataset_uri, work_dir)
    items = pd.read_parquet(local / "items.parquet")
    items["categories"] = items["categories"].map(list)
    return Dataset(pd.read_parquet(local / "interactions.parquet"), items)


def ingest(cfg: Config) -> StageResult:
    """Read the configured source and publish it as a dataset version.

    Args:
        cfg: the run config; ``cfg.data`` says where the source is, ``cfg.storage`` where to write.

    Returns:
        ``outputs``: ``dataset_uri`` and ``dataset_version``; ``metrics``: row counts.
        ``cached`` is True when the same input was ingested before (no parsing, no writing).
    """
    root = cfg.storage.artifact_root
    work_dir = Path(cfg.storage.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _local_source(cfg.data, work_dir) as directory:
        fmt = _detect_format(directory, cfg.data)
        # The input bytes (plus format and ingest code) index an earlier version: same input, no work.
        index_uri = storage.join(root, "datasets", "_by_input", f"{_input_digest(directory, fmt)}-{code_version('components/data/ingest')}.json")
        if storage.exists(index_uri):
            entry = storage.read_json(index_uri)
            if storage.exists(entry["outputs"]["dataset_uri"]):
                return StageResult(entry["outputs"], entry["metrics"], cached=True)
        dataset = _parse(directory, fmt, cfg.data)
    canonical = canonicalize(dataset)
    version = content_version(canonical)
    dataset_uri = storage.join(root, "datasets", version)
    inter, items = canonical.interactions, canonical.items
    metrics = {
        "users": int(inter["user_id"].nunique()),
        "items": int(len(items)),
        "interactions": int(len(inter)),
        "timestamp_coverage": float(inter["timestamp"].notna().mean()),
    }
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="ingest-") as staging:
        inter.to_parquet(Path(staging) / "interactions.parquet", index=False)
        items.to_parquet(Path(staging) / "items.parquet", index=False)
        (Path(staging) / "stats.json").write_text(json.dumps(metrics, indent=2))
        storage.publish_dir(staging, dataset_uri)
    outputs = {"dataset_uri": dataset_uri, "dataset_version": version}
    storage.write_json(index_uri, {"outputs": outputs, "metrics": metrics})
    return StageResult(outputs, metrics)
