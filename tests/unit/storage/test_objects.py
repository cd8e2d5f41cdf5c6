"""Local-disk storage: atomic publish and the small helpers around it (S3: tests/integration)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components import storage
from components.storage import objects

FILES = {"a.txt": "alpha", "sub/b.txt": "beta"}


def _make_dir(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def _contents(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_publish_copies_files_and_a_manifest_marker(tmp_path: Path) -> None:
    target = tmp_path / "out" / "v1"

    assert storage.publish_dir(_make_dir(tmp_path / "src", FILES), str(target)) == str(target)

    contents = _contents(target)
    assert json.loads(contents.pop(storage.COMPLETE_MARKER)) == {"files": {"a.txt": 5, "sub/b.txt": 4}}
    assert contents == FILES
    # Nothing but the target is left in its parent (no staging directory).
    assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "src", FILES)
    # A file that vanished under its link: the copy fails after the readable files are copied.
    (src / "vanished.txt").symlink_to(tmp_path / "gone")
    target = tmp_path / "out" / "v1"

    with pytest.raises(shutil.Error, match="vanished.txt"):
        storage.publish_dir(src, str(target))

    assert list((tmp_path / "out").iterdir()) == []
    assert not storage.exists(str(target))


def test_stale_incomplete_directory_is_replaced(tmp_path: Path) -> None:
    target = _make_dir(tmp_path / "out" / "v1", {"a.txt": "half-written", "leftover.txt": "x"})
    assert not storage.exists(str(target))

    storage.publish_dir(_make_dir(tmp_path / "src", FILES), str(target))

    assert storage.exists(str(target))
    assert set(_contents(target)) == {*FILES, storage.COMPLETE_MARKER}
    assert (target / "a.txt").read_text() == "alpha"


def test_second_publish_keeps_the_first(tmp_path: Path) -> None:
    target = str(tmp_path / "out" / "v1")
    storage.publish_dir(_make_dir(tmp_path / "first", FILES), target)
    first = _contents(Path(target))

    assert storage.publish_dir(_make_dir(tmp_path / "second", {"a.txt": "other"}), target) == target

    assert _contents(Path(target)) == first
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["v1"]


def test_concurrent_publisher_that_loses_the_rename_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(tmp_path / "out" / "v1")
    storage.publish_dir(_make_dir(tmp_path / "first", FILES), target)
    first = _contents(Path(target))
    # The loser's first check ran before the winner finished, so it goes on to stage and rename.
    real_exists = objects.exists
    checks: list[str] = []

    def exists_late(uri: str) -> bool:
        checks.append(uri)
        return len(checks) > 1 and real_exists(uri)

    monkeypatch.setattr(objects, "exists", exists_late)

    assert storage.publish_dir(_make_dir(tmp_path / "second", {"a.txt": "other"}), target) == target

    assert _contents(Path(target)) == first
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["v1"]


def test_exists(tmp_path: Path) -> None:
    published = storage.publish_dir(_make_dir(tmp_path / "src", FILES), str(tmp_path / "published"))
    incomplete = _make_dir(tmp_path / "incomplete", FILES)

    assert storage.exists(published)
    assert storage.exists(str(tmp_path / "src" / "a.txt"))  # a plain file
    assert not storage.exists(str(incomplete))
    assert not storage.exists(str(tmp_path / "absent"))


def test_fetch_dir_returns_published_directories_only(tmp_path: Path) -> None:
    published = storage.publish_dir(_make_dir(tmp_path / "src", FILES), str(tmp_path / "published"))

    assert storage.fetch_dir(published, tmp_path / "work") == Path(published)
    for unpublished in (_make_dir(tmp_path / "incomplete", FILES), tmp_path / "absent"):
        with pytest.raises(storage.StorageError, match=f"{unpublished}: no published directory"):
            storage.fetch_dir(str(unpublished), tmp_path / "work")


def test_list_dirs_names_visible_subdirectories(tmp_path: Path) -> None:
    root = _make_dir(tmp_path / "root", {"b/x": "", "a/x": "", "file.txt": "", ".v1.tmp-123/x": ""})

    assert storage.list_dirs(str(root)) == ["a", "b"]
    assert storage.list_dirs(str(tmp_path / "absent")) == []


def test_write_json_round_trips_and_replaces(tmp_path: Path) -> None:
    uri = str(tmp_path / "deep" / "dir" / "doc.json")

    storage.write_json(uri, {"b": 1, "a": [1, 2], "path": tmp_path})
    assert storage.read_json(uri) == {"a": [1, 2], "b": 1, "path": str(tmp_path)}
    storage.write_json(uri, {"b": 2})
    assert storage.read_json(uri) == {"b": 2}

    # Written under a temporary name and renamed over: no temporary file is left behind.
    assert [p.name for p in (tmp_path / "deep" / "dir").iterdir()] == ["doc.json"]


def test_read_json_of_a_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    uri = str(tmp_path / "absent.json")
    with pytest.raises(storage.StorageError, match=f"{uri}: file does not exist"):
        storage.read_json(uri)


def test_uri_helpers() -> None:
    assert storage.join("s3://bucket/root/", "/datasets/", "v1") == "s3://bucket/root/datasets/v1"
    assert storage.join("/data/root", "datasets", "v1") == "/data/root/datasets/v1"
    assert storage.split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.split_s3("s3:///key")
