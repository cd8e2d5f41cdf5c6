"""The features stage: build the offline tables, publish them, and load a Feast store from them."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath


from components import storage
from components.config import Config
from components.data.ingest import load_dataset
from components.semantic_ids.build import read_sids
from components.stage import StageResult, StageSpec
from feature_repo.store import apply_definitions, build_feature_tables, materialize, open_store

# The code part of the name covers this whole directory: a changed view changes what the store holds.
FEATURES_STAGE = StageSpec(
    "features", ("features",), ("components/data/ingest", "components/data/events", "components/data/splits", "feature_repo")
)
# Written last, so its presence means the local store was fully applied and materialized.
_DONE_FILE = "features.json"


def features_inputs(dataset_uri: str, sid_uri: str) -> dict[str, str]:
    """The input URIs that name the stage's output (FEATURES_STAGE.output_uri)."""
    return {"dataset": dataset_uri, "sids": sid_uri}


def _store_dir(cfg: Config, features_uri: str) -> Path:
    """The local store is named by the same stage key as the published tables."""
    return Path(cfg.storage.work_dir) / "feast" / PurePosixPath(features_uri).name


def features_ready(cfg: Config, features_uri: str) -> bool:
    """True when the tables are published and the local store was fully applied and materialized."""
    return storage.exists(features_uri) and (_store_dir(cfg, features_uri) / _DONE_FILE).is_file()


def build_features(cfg: Config, dataset_uri: str, sid_uri: str) -> StageResult:
    """Build the feature tables for a dataset version and its SIDs, and materialize a store.

    Args:
        cfg: the run config; ``cfg.features`` configures the store, ``cfg.storage`` where outputs go.
        dataset_uri: a published dataset version (components/data/ingest.py).
        sid_uri: a published directory holding ``sids.parquet`` (item_id, codes, sid).

    Returns:
        ``outputs``: ``features_uri`` (the published tables) and ``feature_store_dir`` (the local
        store directory, for open_store); ``metrics``: users, items, rows and seconds per step.
        ``cached`` is True when both already existed, and then nothing was done.
    """
    work_dir = Path(cfg.storage.work_dir)
    features_uri = FEATURES_STAGE.output_uri(cfg, features_inputs(dataset_uri, sid_uri))
    store_dir = _store_dir(cfg, features_uri)
    outputs = {"features_uri": features_uri, "feature_store_dir": str(store_dir)}
    done_path = store_dir / _DONE_FILE
    if features_ready(cfg, features_uri):
        return StageResult(outputs, json.loads(done_path.read_text()), cached=True)

    started = time.perf_counter()
    dataset = load_dataset(dataset_uri, work_dir)
    sids = read_sids(sid_uri, work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="features-") as staging:
        build_feature_tables(dataset.interactions, dataset.items, sids, Path(staging))
        storage.publish_dir(staging, features_uri)
    tables_s = time.perf_counter() - started

    # The registry records where the tables are: the published directory itself when the
    # artifact root is local, a local copy of it when it is on S3.
    tables_dir = storage.fetch_dir(features_uri, work_dir)
    store = open_store(cfg, store_dir)
    started = time.perf_counter()
    apply_definitions(store, tables_dir)
    apply_s = time.perf_counter() - started
    started = time.perf_counter()
    materialize(store, datetime.now(timezone.utc))
    materialize_s = time.perf_counter() - started

    metrics = {
        "users": int(dataset.interactions["user_id"].nunique()),
        "items": len(dataset.items),
        # One user-history row per interaction.
        "rows": len(dataset.interactions),
        "tables_s": round(tables_s, 3),
        "apply_s": round(apply_s, 3),
        "materialize_s": round(materialize_s, 3),
    }
    done_path.write_text(json.dumps(metrics, indent=2))
    return StageResult(outputs, metrics)
