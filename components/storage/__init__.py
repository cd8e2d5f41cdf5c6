"""Object storage: a local directory or any S3-compatible store, behind one set of functions.

Stage outputs are *directories* published atomically: on a local disk they are built in a sibling
temp directory and renamed into place; on S3 every object is uploaded first and a ``_COMPLETE``
marker last, so a reader never sees a half-written output (a directory without the marker does
not exist as far as :func:`exists` is concerned, and is overwritten by the next publish). Two
publishers of one S3 directory take turns through a lock object created with a conditional write,
so neither deletes or overwrites the other's objects.
boto3 reads endpoint, credentials and region from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from components.storage.objects import (
    COMPLETE_MARKER,
    StorageError,
    exists,
    fetch_dir,
    is_s3,
    join,
    list_dirs,
    publish_dir,
    read_json,
    s3_client,
    split_s3,
    write_json,
)

__all__ = [
    "COMPLETE_MARKER",
    "StorageError",
    "exists",
    "fetch_dir",
    "is_s3",
    "join",
    "list_dirs",
    "publish_dir",
    "read_json",
    "s3_client",
    "split_s3",
    "write_json",
]
