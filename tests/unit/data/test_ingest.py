"""Ingest: canonical output, content-hashed versions, caching, and errors that name the file/line.

The source writers here are also used by the S3 integration tests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

from components import storage
from components.data.ingest import INTERACTION_COLUMNS, ITEM_COLUMNS, DataError, ingest, load_dataset
from components.stage import StageResult
from tests.conftest import BUNDLED_DATA

# (user, item, unix time or None, position). Positions follow time, as the Amazon reader derives
# them, and a missing time sorts first, so both formats describe the same sequences.
INTERACTIONS: list[tuple[str, str, int | None, int]] = [
    ("u1", "B01", 1000, 0),
    ("u1", "B02", 2000, 1),
    ("u1", "B03", 3000, 2),
    ("u2", "B02", None, 0),
    ("u2", "B03", 1500, 1),
]
# B04 has no interactions and must still be kept.
ITEMS: list[dict[str, Any]] = [
    {"item_id": "B01", "title": "Lipstick", "brand": "Acme", "categories": ["Makeup", "Lips"], "description": "Red."},
    {"item_id": "B02", "title": "Nail polish", "brand": None, "categories": ["Makeup", "Nails"], "description": ""},
    {"item_id": "B03", "title": "Shampoo", "brand": "Suds", "categories": ["Hair Care", "Shampoos"], "description": ""},
    {"item_id": "B04", "title": "Comb", "brand": "Acme", "categories": [], "description": ""},
]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    # mtime=0: the same content gives the same bytes, hence the same input digest.
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _read(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()


def _replace(path: Path, old: str, new: str) -> int:
    """Replace the one occurrence of ``old`` in ``path``; returns the (1-based) line it was on."""
    text = _read(path)
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    _write(path, text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def write_bundled(directory: Path, *, gz: bool = False, reverse: bool = False) -> Path:
    """The bundled layout: interactions.tsv + items.jsonl (with an extra key readers ignore)."""
    suffix = ".gz" if gz else ""
    rows = INTERACTIONS[::-1] if reverse else INTERACTIONS
    items = ITEMS[::-1] if reverse else ITEMS
    tsv = "user_id\titem_id\ttimestamp\tposition\n" + "".join(
        f"{user}\t{item}\t{'' if ts is None else ts}\t{pos}\n" for user, item, ts, pos in rows
    )
    jsonl = "".join(
        json.dumps({**{k: v for k, v in item.items() if v is not None}, "letter_id": n}) + "\n"
        for n, item in enumerate(items)
    )
    _write(directory / f"interactions.tsv{suffix}", tsv)
    _write(directory / f"items.jsonl{suffix}", jsonl)
    return directory


def write_amazon(directory: Path, *, gz: bool = False) -> Path:
    """The 2014 Amazon release: strict-JSON reviews, Python-literal metadata with category paths."""
    suffix = ".gz" if gz else ""
    # Not in time order: the reader derives positions by sorting.
    reviews = [
        {"reviewerID": user, "asin": item, "overall": 5.0, **({} if ts is None else {"unixReviewTime": ts})}
        for user, item, ts, _ in reversed(INTERACTIONS)
    ]
    meta = [
        {
            "asin": item["item_id"],
            "title": item["title"],
            "categories": [["Beauty", *item["categories"]]],
            **{k: item[k] for k in ("brand", "description") if item[k]},
        }
        for item in ITEMS
    ]
    _write(directory / f"reviews.json{suffix}", "".join(json.dumps(r) + "\n" for r in reviews))
    # repr() writes single-quoted strings: not JSON, like the real metadata file.
    _write(directory / f"meta.json{suffix}", "".join(repr(m) + "\n" for m in meta))
    return directory


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root`` with inode, size and mtime: any rewrite changes the inode."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _ingest(make_config: Callable[..., Any], source: Path) -> StageResult:
    return ingest(make_config(f"data.source_uri={source}"))


def test_ingest_publishes_canonical_frames(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    cfg = make_config(f"data.source_uri={write_bundled(tmp_path / 'src', reverse=True)}")
    result = ingest(cfg)

    version = result.outputs["dataset_version"]
    assert result.outputs["dataset_uri"] == str(tmp_path / "artifacts" / "datasets" / version)
    assert storage.exists(result.outputs["dataset_uri"])
    assert result.metrics == {"users": 2, "items": 4, "interactions": 5, "timestamp_coverage": 0.8}
    assert storage.read_json(storage.join(result.outputs["dataset_uri"], "stats.json")) == result.metrics

    dataset = load_dataset(result.outputs["dataset_uri"], cfg.storage.work_dir)
    inter, items = dataset.interactions, dataset.items
    assert list(inter.columns) == INTERACTION_COLUMNS
    assert inter.dtypes.astype(str).to_dict() == {
        "user_id": "object",
        "item_id": "object",
        "timestamp": "Int64",
        "position": "int64",
    }
    # Sorted by user and position whatever the file order; a missing time stays missing.
    rows = [(u, i, None if pd.isna(t) else t, p) for u, i, t, p in inter.itertuples(index=False)]
    assert rows == INTERACTIONS
    assert list(items.columns) == ITEM_COLUMNS
    assert items.to_dict("records") == ITEMS


def test_same_input_is_cached_and_writes_nothing(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    source = write_bundled(tmp_path / "src")
    first = _ingest(make_config, source)
    before = _tree(tmp_path / "artifacts")

    second = _ingest(make_config, source)

    assert (first.cached, second.cached) == (False, True)
    assert (second.outputs, second.metrics) == (first.outputs, first.metrics)
    assert _tree(tmp_path / "artifacts") == before


def test_content_equal_sources_share_one_version(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    sources = {
        "bundled": write_bundled(tmp_path / "bundled"),
        "bundled-gz": write_bundled(tmp_path / "bundled-gz", gz=True),
        "bundled-reversed": write_bundled(tmp_path / "bundled-reversed", reverse=True),
        "amazon": write_amazon(tmp_path / "amazon"),
        "amazon-gz": write_amazon(tmp_path / "amazon-gz", gz=True),
    }
    versions = {name: _ingest(make_config, path).outputs["dataset_version"] for name, path in sources.items()}

    assert len(set(versions.values())) == 1, versions
    assert set(storage.list_dirs(str(tmp_path / "artifacts" / "datasets"))) == {versions["bundled"], "_by_input"}


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("items.jsonl", '"title": "Shampoo"', '"title": "Shampoo 2"'),
        ("interactions.tsv", "u1\tB02\t2000\t1", "u1\tB02\t2001\t1"),
        ("interactions.tsv", "u2\tB03\t1500\t1", "u2\tB01\t1500\t1"),
    ],
    ids=["title", "timestamp", "item"],
)
def test_changed_content_gets_a_new_version(
    tmp_path: Path, make_config: Callable[..., Any], file: str, old: str, new: str
) -> None:
    original = _ingest(make_config, write_bundled(tmp_path / "original"))
    changed = write_bundled(tmp_path / "changed")
    _replace(changed / file, old, new)

    assert _ingest(make_config, changed).outputs["dataset_version"] != original.outputs["dataset_version"]


# Each case builds a bad source in the given directory and returns the text the error must hold.
def _missing_items(src: Path) -> str:
    (write_bundled(src) / "items.jsonl").unlink()
    return f"{src}: missing items file (looked for items.jsonl.gz, items.jsonl)"


def _missing_metadata(src: Path) -> str:
    (write_amazon(src) / "meta.json").unlink()
    return f"{src}: missing metadata file (looked for meta.json.gz, meta.json)"


def _no_recognised_files(src: Path) -> str:
    _write(src / "notes.txt", "nothing to ingest\n")
    return f"{src}: no interactions.tsv[.gz] (bundled layout) and no reviews.json.gz (Amazon JSON lines)"


def _missing_column(src: Path) -> str:
    _replace(write_bundled(src) / "interactions.tsv", "\tposition\n", "\trank\n")
    return f"{src / 'interactions.tsv'}: missing column(s) position"


def _position_not_a_number(src: Path) -> str:
    line = _replace(write_bundled(src) / "interactions.tsv", "u1\tB02\t2000\t1", "u1\tB02\t2000\tabc")
    return f"{src / 'interactions.tsv'}:{line}: column 'position' must be an integer, got 'abc'"


def _timestamp_fractional_gz(src: Path) -> str:
    path = write_bundled(src, gz=True) / "interactions.tsv.gz"
    line = _replace(path, "u2\tB03\t1500\t1", "u2\tB03\t1.5\t1")
    return f"{path}:{line}: column 'timestamp' must be an integer, got '1.5'"


def _review_time_fractional(src: Path) -> str:
    line = _replace(write_amazon(src) / "reviews.json", '"unixReviewTime": 2000', '"unixReviewTime": 1.5')
    return f"{src / 'reviews.json'}:{line}: column 'unixReviewTime' must be an integer"


def _items_line_not_json(src: Path) -> str:
    line = _replace(write_bundled(src) / "items.jsonl", '{"item_id": "B03",', '{"item_id": "B03",,')
    return f"{src / 'items.jsonl'}:{line}: not valid JSON"


def _review_line_not_json(src: Path) -> str:
    path = write_amazon(src) / "reviews.json"
    _write(path, _read(path) + "{reviewerID: u3\n")
    return f"{path}:{len(INTERACTIONS) + 1}: not valid JSON"


def _meta_line_not_a_literal(src: Path) -> str:
    path = write_amazon(src) / "meta.json"
    _write(path, _read(path) + "{'asin': 'B09', 'title': \n")
    return f"{path}:{len(ITEMS) + 1}: not valid JSON"


def _unknown_item(src: Path) -> str:
    line = _replace(write_bundled(src) / "interactions.tsv", "u1\tB03\t3000\t2", "u1\tB99\t3000\t2")
    return f"{src / 'interactions.tsv'}:{line}: item 'B99' has no row in {src / 'items.jsonl'}"


def _unknown_item_in_review(src: Path) -> str:
    line = _replace(write_amazon(src) / "reviews.json", '"asin": "B01"', '"asin": "B99"')
    return f"{src / 'reviews.json'}:{line}: item 'B99' has no row in {src / 'meta.json'}"


def _header_only(src: Path) -> str:
    _write(write_bundled(src) / "interactions.tsv", "user_id\titem_id\ttimestamp\tposition\n")
    return f"{src / 'interactions.tsv'}: no interactions"


def _zero_bytes(src: Path) -> str:
    _write(write_bundled(src) / "interactions.tsv", "")
    return f"{src / 'interactions.tsv'}: cannot be parsed as TSV"


def _no_reviews(src: Path) -> str:
    _write(write_amazon(src) / "reviews.json", "\n")
    return f"{src / 'reviews.json'}: no interactions"


@pytest.mark.parametrize(
    "make_bad_source",
    [
        _missing_items,
        _missing_metadata,
        _no_recognised_files,
        _missing_column,
        _position_not_a_number,
        _timestamp_fractional_gz,
        _review_time_fractional,
        _items_line_not_json,
        _review_line_not_json,
        _meta_line_not_a_literal,
        _unknown_item,
        _unknown_item_in_review,
        _header_only,
        _zero_bytes,
        _no_reviews,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_bad_input_names_the_place_and_publishes_nothing(
    tmp_path: Path, make_config: Callable[..., Any], make_bad_source: Callable[[Path], str]
) -> None:
    src = tmp_path / "src"
    expected = make_bad_source(src)

    with pytest.raises(DataError) as error:
        _ingest(make_config, src)

    assert expected in str(error.value)
    artifacts = tmp_path / "artifacts"
    assert not artifacts.exists() or not any(artifacts.rglob("*"))


def test_missing_source_directory(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    with pytest.raises(DataError, match="source directory does not exist"):
        _ingest(make_config, tmp_path / "absent")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_bundled_amazon_beauty(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    result = _ingest(make_config, BUNDLED_DATA)

    assert result.metrics == {"users": 22363, "items": 12101, "interactions": 198502, "timestamp_coverage": 1.0}
