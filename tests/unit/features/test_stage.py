"""feature_repo.stage.build_features end to end on a tiny published dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components import storage
from components.data.ingest import Dataset, canonicalize
from feature_repo.stage import FEATURES_STAGE, build_features, features_inputs
from feature_repo.store import online_features, open_store


def _publish(frames: dict[str, pd.DataFrame], uri: str, staging: Path) -> str:
    staging.mkdir(parents=True)
    for name, frame in frames.items():
        frame.to_parquet(staging / name, index=False)
    return storage.publish_dir(staging, uri)


def test_build_features_publishes_tables_and_store_then_caches(make_config, tmp_path, interactions, items, sids):
    cfg = make_config()
    dataset = canonicalize(Dataset(interactions, items))
    root = cfg.storage.artifact_root
    dataset_uri = _publish(
        {"interactions.parquet": dataset.interactions, "items.parquet": dataset.items},
        storage.join(root, "datasets", "v1"),
        tmp_path / "staging-dataset",
    )
    sid_uri = _publish({"sids.parquet": sids}, storage.join(root, "semantic_ids", "s1"), tmp_path / "staging-sids")

    first = build_features(cfg, dataset_uri, sid_uri)

    assert not first.cached
    # The orchestrator's cache key is the output URI the stage spec names.
    assert first.outputs["features_uri"] == FEATURES_STAGE.output_uri(cfg, features_inputs(dataset_uri, sid_uri))
    assert {"users": 4, "items": 5, "rows": 11}.items() <= first.metrics.items()
    assert {"tables_s", "apply_s", "materialize_s"} <= first.metrics.keys()
    tables = storage.fetch_dir(first.outputs["features_uri"], cfg.storage.work_dir)
    assert {"user_history.parquet", "item_features.parquet"} <= {p.name for p in tables.iterdir()}
    store_dir = Path(first.outputs["feature_store_dir"])
    store = open_store(cfg, store_dir)
    assert online_features(store, ["b"], [])["users"]["b"]["history_item_ids"] == ["i2", "i1"]

    store_files = {p: p.stat().st_mtime_ns for p in store_dir.iterdir()}
    second = build_features(cfg, dataset_uri, sid_uri)

    assert second.cached
    assert second.outputs == first.outputs
    assert second.metrics == first.metrics
    assert {p: p.stat().st_mtime_ns for p in store_dir.iterdir()} == store_files

    # A different store configuration is a different output.
    other = build_features(make_config("features.project=dgr2_other"), dataset_uri, sid_uri)
    assert not other.cached
    assert other.outputs["features_uri"] != first.outputs["features_uri"]
