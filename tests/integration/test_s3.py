"""Storage and ingest against a real S3 server (SeaweedFS, started once for the session)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import EndpointConnectionError

from components import storage
from components.storage import objects
from components.storage.objects import PUBLISH_LOCK
from components.data.ingest import ingest, load_dataset
from tests.conftest import BUNDLED_DATA
from tests.integration.conftest import RestartableServer, S3Server
from tests.unit.data.test_ingest import write_amazon, write_bundled

pytestmark = pytest.mark.integration

DATASET_FILES = ("interactions.parquet", "items.parquet", "stats.json")
# Operations that change a bucket; a cached ingest must issue none of them.
WRITES = {
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "CopyObject",
    "DeleteObject",
    "DeleteObjects",
}


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own: the server and its buckets are shared by the session."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def s3_operations(s3: S3Server) -> list[tuple[str, str]]:
    """(operation, key) of each call the storage module's client makes, in order."""
    sent: list[tuple[str, str]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, params.get("Key", "")))

    # The client is the one the code under test gets: cached, and fresh for this test.
    storage.s3_client().meta.events.register("provide-client-params.s3", record)
    return sent


def _upload(s3: S3Server, local_dir: Path, prefix: str) -> str:
    client = s3.client()
    for path in sorted(local_dir.iterdir()):
        client.upload_file(str(path), s3.raw_bucket, f"{prefix}/{path.name}")
    return f"s3://{s3.raw_bucket}/{prefix}"


def _objects(s3: S3Server, prefix: str) -> dict[str, int]:
    """Key -> size of every object under ``prefix`` in the artifact bucket."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.artifact_bucket, Prefix=prefix)
    return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}


def _config(make_config: Callable[..., Any], source: str, artifact_root: str) -> Any:
    return make_config(f"data.source_uri={source}", f"storage.artifact_root={artifact_root}")


@pytest.mark.parametrize("write_source", [write_bundled, write_amazon], ids=["bundled", "amazon-json"])
def test_ingest_from_s3_publishes_once(
    s3: S3Server,
    s3_operations: list[tuple[str, str]],
    prefix: str,
    tmp_path: Path,
    make_config: Callable[..., Any],
    write_source: Callable[[Path], Path],
) -> None:
    local_source = write_source(tmp_path / "src")
    root = f"s3://{s3.artifact_bucket}/{prefix}/artifacts"
    cfg = _config(make_config, _upload(s3, local_source, f"{prefix}/raw"), root)

    result = ingest(cfg)

    version = result.outputs["dataset_version"]
    assert result.outputs["dataset_uri"] == f"{root}/datasets/{version}"
    dataset_key = f"{prefix}/artifacts/datasets/{version}"
    objects = _objects(s3, f"{dataset_key}/")
    assert set(objects) == {f"{dataset_key}/{name}" for name in (*DATASET_FILES, storage.COMPLETE_MARKER)}
    marker = s3.client().get_object(Bucket=s3.artifact_bucket, Key=f"{dataset_key}/{storage.COMPLETE_MARKER}")
    sizes = {name: objects[f"{dataset_key}/{name}"] for name in DATASET_FILES}
    assert json.loads(marker["Body"].read()) == {"files": sizes}
    # The publish lock first, the marker after every file, then the index that maps these input
    # bytes to it; the lock is gone once the directory is complete.
    puts = [key for operation, key in s3_operations if operation == "PutObject"]
    assert puts[:-1] == [f"{dataset_key}/{name}" for name in (PUBLISH_LOCK, *DATASET_FILES, storage.COMPLETE_MARKER)]
    assert ("DeleteObject", f"{dataset_key}/{PUBLISH_LOCK}") in s3_operations
    assert puts[-1].startswith(f"{prefix}/artifacts/datasets/_by_input/")
    assert storage.list_dirs(f"{root}/datasets") == sorted([version, "_by_input"])

    # What came back from S3 is what a local ingest of the same files produces.
    assert ingest(make_config(f"data.source_uri={local_source}")).outputs["dataset_version"] == version
    dataset = load_dataset(result.outputs["dataset_uri"], cfg.storage.work_dir)
    assert len(dataset.interactions) == result.metrics["interactions"]

    before = _objects(s3, f"{prefix}/")
    del s3_operations[:]
    again = ingest(cfg)

    assert again.cached
    assert (again.outputs, again.metrics) == (result.outputs, result.metrics)
    assert WRITES.isdisjoint(operation for operation, _ in s3_operations), s3_operations
    assert _objects(s3, f"{prefix}/") == before


def test_failed_publish_leaves_no_objects(
    s3: S3Server, prefix: str, tmp_path: Path, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"s3://{s3.artifact_bucket}/{prefix}/artifacts"
    cfg = _config(make_config, _upload(s3, write_bundled(tmp_path / "src"), f"{prefix}/raw"), root)
    client = storage.s3_client()
    real_upload = client.upload_file

    def upload_then_lose_connection(filename: str, bucket: str, key: str, *args: Any, **kwargs: Any) -> None:
        real_upload(filename, bucket, key, *args, **kwargs)
        # The server stored the second file, but its response never arrived.
        if key.endswith("/items.parquet"):
            raise EndpointConnectionError(endpoint_url=s3.endpoint)

    with monkeypatch.context() as patch:
        patch.setattr(client, "upload_file", upload_then_lose_connection)
        with pytest.raises(storage.StorageError, match=re.escape(f"{root}/datasets/")):
            ingest(cfg)

    assert _objects(s3, f"{prefix}/artifacts/") == {}
    # Nothing half-published blocks a retry.
    assert not ingest(cfg).cached
    assert len(_objects(s3, f"{prefix}/artifacts/datasets/")) == len(DATASET_FILES) + 2  # + marker, input index


def test_missing_bucket_is_a_storage_error(s3: S3Server, tmp_path: Path, make_config: Callable[..., Any]) -> None:
    # The server does not create buckets on first write, as AWS does not.
    root = "s3://dgr2-no-such-bucket/artifacts"
    cfg = _config(make_config, str(write_bundled(tmp_path / "src")), root)

    with pytest.raises(storage.StorageError, match=f"{re.escape(root)}/datasets/.*NoSuchBucket"):
        ingest(cfg)


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_wrong_credentials_are_rejected(
    s3: S3Server,
    prefix: str,
    tmp_path: Path,
    make_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    local_source = write_bundled(tmp_path / "src")
    s3_source = _upload(s3, local_source, f"{prefix}/raw")
    root = f"s3://{s3.artifact_bucket}/{prefix}/artifacts"
    assert not storage.exists(root)  # with the right keys: a client that has seen them exists
    monkeypatch.setenv(variable, "wrong")
    storage.s3_client.cache_clear()

    # Reading the source, and (from a local source) checking the artifact root.
    rejected = "(InvalidAccessKeyId|SignatureDoesNotMatch)"
    with pytest.raises(storage.StorageError, match=f"{re.escape(s3_source)}: .*{rejected}"):
        ingest(_config(make_config, s3_source, root))
    with pytest.raises(storage.StorageError, match=f"{re.escape(root)}/datasets/.*403"):
        ingest(_config(make_config, str(local_source), root))

    assert _objects(s3, f"{prefix}/") == {}


def _dir_with_file(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


def test_storage_helpers_on_s3(s3: S3Server, prefix: str, tmp_path: Path) -> None:
    base = f"s3://{s3.artifact_bucket}/{prefix}"

    assert not storage.exists(f"{base}/out")
    storage.publish_dir(_dir_with_file(tmp_path / "first", "alpha"), f"{base}/out")
    storage.publish_dir(_dir_with_file(tmp_path / "second", "other"), f"{base}/out")  # kept as it was
    assert storage.exists(f"{base}/out")
    assert (storage.fetch_dir(f"{base}/out", tmp_path / "work") / "a.txt").read_text() == "alpha"
    with pytest.raises(storage.StorageError, match="no published directory"):
        storage.fetch_dir(f"{base}/absent", tmp_path / "work")

    storage.write_json(f"{base}/doc.json", {"b": 1, "a": 2})
    assert storage.read_json(f"{base}/doc.json") == {"a": 2, "b": 1}
    with pytest.raises(storage.StorageError, match="NoSuchKey"):
        storage.read_json(f"{base}/absent.json")

    assert storage.list_dirs(base) == ["out"]
    # At the bucket root too (other tests' prefixes are there as well).
    assert prefix in storage.list_dirs(f"s3://{s3.artifact_bucket}")


def test_a_fetch_keeps_the_cache_another_process_completed(
    s3: S3Server, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two DDP ranks fetch the same directory: the slower one must not replace the copy that the
    faster one has already returned and may be reading."""
    uri = f"s3://{s3.artifact_bucket}/{prefix}/out"
    storage.publish_dir(_dir_with_file(tmp_path / "src", "alpha"), uri)
    work = tmp_path / "work"
    real_call = objects._s3_call
    first: dict[str, Any] = {}

    def call(target: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # While this fetch downloads its first file, the other rank runs a whole fetch.
        if getattr(fn, "__name__", "") == "download_file" and not first:
            first["started"] = True
            first["cache"] = storage.fetch_dir(uri, work)
            first["inode"] = (first["cache"] / "a.txt").stat().st_ino
        return real_call(target, fn, *args, **kwargs)

    monkeypatch.setattr(objects, "_s3_call", call)
    cache = storage.fetch_dir(uri, work)
    assert "cache" in first, "the concurrent fetch never ran"
    assert cache == first["cache"] and (cache / "a.txt").stat().st_ino == first["inode"]
    assert (cache / "a.txt").read_text() == "alpha"
    assert [p.name for p in (work / "cache").iterdir()] == [cache.name], "a staging directory was left behind"


@pytest.mark.slow
def test_ingest_bundled_amazon_beauty_from_s3(s3: S3Server, prefix: str, make_config: Callable[..., Any]) -> None:
    root = f"s3://{s3.artifact_bucket}/{prefix}/artifacts"
    result = ingest(_config(make_config, _upload(s3, BUNDLED_DATA, f"{prefix}/raw"), root))

    assert result.metrics == {"users": 22363, "items": 12101, "interactions": 198502, "timestamp_coverage": 1.0}
    assert storage.exists(result.outputs["dataset_uri"])


def _version(directory: Path, letter: str, sizes: tuple[int, ...]) -> Path:
    """A directory of files part-0..n, every byte ``letter``: two versions differ in every file."""
    directory.mkdir(parents=True)
    for index, size in enumerate(sizes):
        (directory / f"part-{index}").write_bytes(letter.encode() * size)
    return directory


def test_two_publishers_of_one_directory_end_with_one_complete_version(
    s3: S3Server, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{s3.artifact_bucket}/{prefix}/out"
    # Different content and sizes, so a mix of the two would show in the bytes or the marker.
    versions = {"a": _version(tmp_path / "a", "a", (3_000, 1, 2_000)), "b": _version(tmp_path / "b", "b", (5, 4_000, 7))}
    client = storage.s3_client()
    real_upload = client.upload_file

    def slow_upload_b_fails(filename: str, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)  # the two publishers' uploads interleave
        if filename == str(versions["b"] / "part-1"):
            time.sleep(0.3)
            raise EndpointConnectionError(endpoint_url=s3.endpoint)
        real_upload(filename, *args, **kwargs)

    monkeypatch.setattr(client, "upload_file", slow_upload_b_fails)
    start, errors = threading.Barrier(2), {}

    def publish(letter: str) -> None:
        try:
            start.wait()
            storage.publish_dir(versions[letter], uri)
        except storage.StorageError as exc:
            errors[letter] = exc

    threads = [threading.Thread(target=publish, args=(letter,)) for letter in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # b fails when it uploads first; when a does, b finds a's directory complete and uses it.
    assert set(errors) <= {"b"}
    key = f"{prefix}/out"
    marker = json.loads(s3.client().get_object(Bucket=s3.artifact_bucket, Key=f"{key}/{storage.COMPLETE_MARKER}")["Body"].read())
    contents = {rel: s3.client().get_object(Bucket=s3.artifact_bucket, Key=f"{key}/{rel}")["Body"].read() for rel in marker["files"]}
    # Every listed file is there at its listed size, all of them a's: b's cleanup removed none of them.
    assert {rel: len(data) for rel, data in contents.items()} == marker["files"] == {"part-0": 3_000, "part-1": 1, "part-2": 2_000}
    assert {data[:1] for data in contents.values()} == {b"a"}
    assert set(_objects(s3, f"{key}/")) == {f"{key}/{rel}" for rel in (*marker["files"], storage.COMPLETE_MARKER)}


def test_a_publisher_waits_for_the_lock_and_takes_over_a_stale_one(
    s3: S3Server, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "LOCK_POLL_S", 0.1)
    client, key = s3.client(), f"{prefix}/out"
    uri = f"s3://{s3.artifact_bucket}/{key}"
    version = _version(tmp_path / "a", "a", (10, 20))
    # Another publisher holds the lock: this one waits, and publishes once the lock is released.
    client.put_object(Bucket=s3.artifact_bucket, Key=f"{key}/{PUBLISH_LOCK}", Body=b"{}")
    threading.Timer(0.5, lambda: client.delete_object(Bucket=s3.artifact_bucket, Key=f"{key}/{PUBLISH_LOCK}")).start()
    started = time.monotonic()
    storage.publish_dir(version, uri)
    assert time.monotonic() - started >= 0.4 and storage.exists(uri)

    # A lock its publisher left behind (it died) is taken over once stale.
    other = f"{key}-stale"
    client.put_object(Bucket=s3.artifact_bucket, Key=f"{other}/{PUBLISH_LOCK}", Body=b"{}")
    monkeypatch.setattr(objects, "LOCK_STALE_S", 0.0)
    storage.publish_dir(version, f"s3://{s3.artifact_bucket}/{other}")
    assert set(_objects(s3, f"{other}/")) == {f"{other}/part-0", f"{other}/part-1", f"{other}/{storage.COMPLETE_MARKER}"}


def test_concurrent_ingests_of_one_s3_source_both_succeed_and_leave_no_download(
    s3: S3Server, prefix: str, tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    root = f"s3://{s3.artifact_bucket}/{prefix}/artifacts"
    cfg = _config(make_config, _upload(s3, write_bundled(tmp_path / "src"), f"{prefix}/raw"), root)
    start, results, errors = threading.Barrier(2), [], []

    def run() -> None:
        try:
            start.wait()
            results.append(ingest(cfg).outputs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2 and results[0] == results[1]
    assert storage.exists(results[0]["dataset_uri"])
    # Each ingest downloaded into a directory of its own and removed it.
    assert not any((Path(cfg.storage.work_dir) / "sources").iterdir())



def test_s3_stopping_during_a_publish_leaves_no_version_and_the_rerun_publishes_at_once(
    restartable_s3: RestartableServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault on purpose: the server stops after the first object of a publish. The publish
    retries, then fails with an error that names the URI; nothing is visible as published; once the
    server is back, the rerun takes over the lock the failed publish could not remove (without
    waiting LOCK_STALE_S) and publishes the whole version."""
    server = restartable_s3.server
    key = "faults/out"
    uri = f"s3://{server.artifact_bucket}/{key}"
    version = _version(tmp_path / "v", "a", (10, 20, 30))
    client = storage.s3_client()
    real_upload = client.upload_file

    def upload_then_the_server_stops(filename: str, bucket: str, object_key: str, *args: Any, **kwargs: Any) -> None:
        real_upload(filename, bucket, object_key, *args, **kwargs)
        if object_key.endswith("/part-0"):
            restartable_s3.stop()

    with monkeypatch.context() as patch:
        patch.setattr(client, "upload_file", upload_then_the_server_stops)
        with pytest.raises(storage.StorageError, match=re.escape(uri) + ".*(Could not connect|Connection)"):
            storage.publish_dir(version, uri)

    restartable_s3.start()
    assert not storage.exists(uri)
    # What the failed publish left: its lock and the object it stored before the server went away.
    left = set(_objects(server, f"{key}/"))
    assert f"{key}/{PUBLISH_LOCK}" in left and f"{key}/{storage.COMPLETE_MARKER}" not in left
    started = time.monotonic()
    storage.publish_dir(version, uri)
    assert time.monotonic() - started < 60 and storage.exists(uri)
    assert set(_objects(server, f"{key}/")) == {f"{key}/part-{i}" for i in range(3)} | {f"{key}/{storage.COMPLETE_MARKER}"}
