"""Local-or-S3 directory storage with atomic publish (see the package docstring)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "_COMPLETE"
# On S3 one publisher at a time uploads a directory: it holds this object, created with a
# conditional write (If-None-Match), while it does. A lock older than LOCK_STALE_S, or one whose
# publisher is known to be gone (see _lock_orphaned), was left without cleanup; the next one takes
# it over.
PUBLISH_LOCK = "_PUBLISHING"
LOCK_STALE_S = 1800.0
LOCK_POLL_S = 1.0
# What S3-compatible servers answer for a key that does not exist.
_MISSING_CODES = ("404", "NoSuchKey", "NotFound")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an s3:// URI needs a bucket name")
    return bucket, key.strip("/")


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri).joinpath(*parts))


@functools.cache
def s3_client() -> Any:
    """One boto3 S3 client per process; configuration comes from the environment."""
    import boto3
    from botocore.config import Config as BotoConfig

    # A session of its own: boto3's default session keeps the credentials it first resolved, so
    # after s3_client.cache_clear() a new client would still sign with the old keys.
    session = boto3.Session()
    # Path-style addressing works with every S3-compatible server (SeaweedFS, MinIO) and AWS.
    return session.client("s3", config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))


def _s3_call(uri: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    # The transfer helpers (upload_file, download_file) wrap client errors in Boto3Error.
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise StorageError(f"{uri}: {exc}") from exc


def exists(uri: str) -> bool:
    """True if a published directory (its completion marker) or a plain file exists at ``uri``."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        client = s3_client()
        for candidate in (f"{key}/{COMPLETE_MARKER}", key):
            try:
                client.head_object(Bucket=bucket, Key=candidate)
                return True
            except ClientError as exc:
                if _client_error_code(exc) not in _MISSING_CODES:
                    raise StorageError(f"{uri}: {exc}") from exc
        return False
    path = Path(uri)
    return (path / COMPLETE_MARKER).is_file() if path.is_dir() else path.is_file()


def _manifest(local_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(local_dir)): p.stat().st_size
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def publish_dir(local_dir: str | Path, uri: str) -> str:
    """Publish the contents of ``local_dir`` at ``uri`` atomically; returns ``uri``.

    If ``uri`` already holds a complete directory it is left as it is (outputs are named by the
    hash of what produced them, so an existing one has the same content).
    """
    local_dir = Path(local_dir)
    if exists(uri):
        return uri
    manifest = _manifest(local_dir)
    marker = json.dumps({"files": manifest}, sort_keys=True)
    if is_s3(uri):
        _publish_s3(local_dir, uri, manifest, marker)
        return uri
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        shutil.copytree(local_dir, staging)
        (staging / COMPLETE_MARKER).write_text(marker)
        try:
            os.rename(staging, target)
        except OSError:
            # Another writer published the same content first, or a stale incomplete directory
            # is in the way: replace the latter, keep the former.
            if exists(uri):
                return uri
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return uri


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# Owner tokens of this process's publishes in flight: a lock this process wrote that holds none
# of them was left behind by a publish that failed (its server went away before the cleanup).
_HELD_LOCKS: set[str] = set()


def _claim_publish(client: Any, uri: str, bucket: str, lock_key: str, owner: str) -> bool:
    """Create the publish lock if no one holds it; False when another publisher does."""
    from botocore.exceptions import ClientError

    body = json.dumps({"owner": owner, "host": os.uname().nodename, "pid": os.getpid()}).encode()
    try:
        client.put_object(Bucket=bucket, Key=lock_key, Body=body, IfNoneMatch="*")
        return True
    except ClientError as exc:
        # 409 ConditionalRequestConflict: another conditional write on the key is in flight.
        code = _client_error_code(exc)
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        if code == "NotImplemented":
            raise StorageError(
                f"{uri}: this S3 server does not support conditional writes (If-None-Match), which publishing "
                "needs to keep concurrent publishers apart"
            ) from exc
        raise StorageError(f"{uri}: {exc}") from exc


def _lock_age_s(client: Any, bucket: str, lock_key: str) -> float | None:
    """Seconds since the lock was written (the server's clock), or None when there is no lock."""
    from botocore.exceptions import ClientError

    try:
        written = client.head_object(Bucket=bucket, Key=lock_key)["LastModified"]
    except ClientError as exc:
        if _client_error_code(exc) in _MISSING_CODES:
            return None
        raise
    return (datetime.now(timezone.utc) - written).total_seconds()


def _lock_orphaned(client: Any, bucket: str, lock_key: str) -> bool:
    """Whether the lock's publisher is known to be gone: it ran on this host and its process has
    exited, or it is this process and holds no such publish. Such a lock is taken over at once
    rather than after LOCK_STALE_S (say, after the S3 server came back from an outage)."""
    from botocore.exceptions import ClientError

    try:
        holder = json.loads(client.get_object(Bucket=bucket, Key=lock_key)["Body"].read() or b"{}")
    except ClientError as exc:
        if _client_error_code(exc) in _MISSING_CODES:
            return False  # released meanwhile: the next claim gets it
        raise
    except ValueError:  # not a lock this code wrote: only its age can tell
        return False
    if holder.get("host") != os.uname().nodename or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == os.getpid():
        return holder.get("owner") not in _HELD_LOCKS
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _publish_s3(local_dir: Path, uri: str, manifest: dict[str, int], marker: str) -> None:
    """Upload ``local_dir`` under ``uri`` and the marker last, holding the publish lock.

    Two publishers of the same URI (two flows computing the same stage output) take turns: the
    one holding the lock uploads, the other waits until the directory is complete and uses it.
    Only the lock holder ever writes or deletes objects under the prefix, so a failed publisher's
    cleanup cannot remove another's objects.
    """
    bucket, prefix = split_s3(uri)
    client = s3_client()
    lock_key = f"{prefix}/{PUBLISH_LOCK}"
    owner = uuid.uuid4().hex
    while not _s3_call(uri, _claim_publish, client, uri, bucket, lock_key, owner):
        if exists(uri):
            return
        age = _s3_call(uri, _lock_age_s, client, bucket, lock_key)
        if age is not None and (age > LOCK_STALE_S or _s3_call(uri, _lock_orphaned, client, bucket, lock_key)):
            # Its publisher died or failed mid-upload: take over (its partial objects are
            # overwritten or never listed by a marker).
            _s3_call(uri, client.delete_object, Bucket=bucket, Key=lock_key)
        elif age is not None:
            time.sleep(LOCK_POLL_S)
    _HELD_LOCKS.add(owner)
    uploaded: list[str] = []
    try:
        if exists(uri):  # published while this one waited for the lock
            return
        for rel in manifest:
            key = f"{prefix}/{rel}"
            # Recorded before the upload: a request that fails after the server stored the
            # object (e.g. a lost response) must not leave it behind.
            uploaded.append(key)
            _s3_call(uri, client.upload_file, str(local_dir / rel), bucket, key)
        _s3_call(uri, client.put_object, Bucket=bucket, Key=f"{prefix}/{COMPLETE_MARKER}", Body=marker.encode())
    except BaseException:
        for key in uploaded:
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - best-effort cleanup; the marker is absent anyway
                pass
        raise
    finally:
        _HELD_LOCKS.discard(owner)
        try:
            client.delete_object(Bucket=bucket, Key=lock_key)
        except Exception:  # noqa: BLE001 - a lock left behind is taken over (_lock_orphaned, LOCK_STALE_S)
            pass


def fetch_dir(uri: str, work_dir: str | Path) -> Path:
    """A local path holding the published directory ``uri`` (downloaded once if on S3)."""
    if not exists(uri):
        raise StorageError(f"{uri}: no published directory here")
    if not is_s3(uri):
        return Path(uri)
    cache = Path(work_dir) / "cache" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (cache / COMPLETE_MARKER).is_file():
        return cache
    bucket, prefix = split_s3(uri)
    client = s3_client()
    marker = json.loads(_s3_call(uri, client.get_object, Bucket=bucket, Key=f"{prefix}/{COMPLETE_MARKER}")["Body"].read())
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".fetch-"))
    try:
        for rel in marker["files"]:
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _s3_call(uri, client.download_file, bucket, f"{prefix}/{rel}", str(dest))
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
        # The cache directory only ever appears whole, by this rename. When it fails, another
        # process (a DDP rank on the same host) finished the same fetch first and may be reading
        # its copy: keep that one rather than replace it under the reader.
        try:
            os.rename(staging, cache)
        except OSError:
            if not (cache / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-directories (prefixes) under ``uri``."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        # At the bucket root the listing prefix is empty, not "/".
        prefix = f"{prefix}/" if prefix else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        names: list[str] = []
        for page in _s3_call(uri, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"))):
            names += [p["Prefix"][len(prefix) :].strip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)
    path = Path(uri)
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def read_json(uri: str) -> Any:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        body = _s3_call(uri, s3_client().get_object, Bucket=bucket, Key=key)["Body"].read()
        return json.loads(body)
    try:
        return json.loads(Path(uri).read_text())
    except FileNotFoundError:
        # As on S3 (NoSuchKey), so callers need not know which backend they read from.
        raise StorageError(f"{uri}: file does not exist") from None


def write_json(uri: str, payload: Any, sort_keys: bool = True) -> None:
    """Write a small JSON document (single object put on S3, rename on disk: both atomic).

    Keys are sorted for stable diffs unless ``sort_keys`` is False (a report whose key order is
    the order of its table columns and stages).
    """
    data = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, s3_client().put_object, Bucket=bucket, Key=key, Body=data.encode())
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(data)
    os.replace(tmp, path)
