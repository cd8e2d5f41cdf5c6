"""The semantic-ID stage: dataset version -> ``sids.parquet`` (item_id, codes, sid) + report.

Embeddings are cached by (dataset version, encoder, text recipe) on their own, so changing the
quantization settings re-quantizes in seconds without re-encoding 12k items.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components import storage
from components.config import Config
from components.data.ingest import load_dataset
from components.semantic_ids.encoder import ENCODER_NAME, encode_texts, item_texts
from components.semantic_ids.format import sid_string
from components.semantic_ids.quantize import quantize, sid_report
from components.stage import StageResult, StageSpec, code_version, stage_key

SEMANTIC_IDS_STAGE = StageSpec("semantic_ids", ("semantic_ids",), ("components/semantic_ids", "components/data/ingest"))


def _item_embeddings(cfg: Config, dataset_uri: str, items: pd.DataFrame) -> tuple[np.ndarray, bool]:
    key = stage_key("embeddings", {"dataset": dataset_uri}, ENCODER_NAME, code_version("components/semantic_ids/encoder"))
    uri = storage.join(cfg.storage.artifact_root, "embeddings", key)
    if storage.exists(uri):
        local = storage.fetch_dir(uri, cfg.storage.work_dir)
        stored = np.load(local / "embeddings.npy")
        stored_ids = (local / "item_ids.txt").read_text().split("\n")
        if stored_ids == items["item_id"].tolist():
            return stored, True
    embeddings = encode_texts(item_texts(items), cfg.semantic_ids.encode_batch_size)
    with tempfile.TemporaryDirectory(dir=cfg.storage.work_dir, prefix="embeddings-") as staging:
        np.save(Path(staging) / "embeddings.npy", embeddings)
        (Path(staging) / "item_ids.txt").write_text("\n".join(items["item_id"]))
        storage.publish_dir(staging, uri)
    return embeddings, False


def read_sids(sid_uri: str, work_dir: str | Path) -> pd.DataFrame:
    """The published SID table: item_id, codes (list[int]), sid (str)."""
    return pd.read_parquet(storage.fetch_dir(sid_uri, work_dir) / "sids.parquet")


def build_semantic_ids(cfg: Config, dataset_uri: str) -> StageResult:
    """Encode item text and quantize it into unique 4-token semantic IDs.

    Args:
        cfg: run config (``cfg.semantic_ids`` holds levels, codebook sizes, seed).
        dataset_uri: a published dataset version.

    Returns:
        ``outputs``: ``sid_uri`` (a directory with sids.parquet, codebooks.npz, report.json);
        ``metrics``: the uniqueness/utilisation report plus timings.
    """
    sid_cfg = cfg.semantic_ids
    sid_uri = SEMANTIC_IDS_STAGE.output_uri(cfg, {"dataset": dataset_uri})
    if storage.exists(sid_uri):
        report = json.loads((storage.fetch_dir(sid_uri, cfg.storage.work_dir) / "report.json").read_text())
        return StageResult({"sid_uri": sid_uri}, report, cached=True)

    Path(cfg.storage.work_dir).mkdir(parents=True, exist_ok=True)
    items = load_dataset(dataset_uri, cfg.storage.work_dir).items
    started = time.perf_counter()
    embeddings, embeddings_cached = _item_embeddings(cfg, dataset_uri, items)
    encoded = time.perf_counter()
    quantization = quantize(
        embeddings,
        levels=sid_cfg.quantized_levels,
        codebook_size=sid_cfg.codebook_size,
        last_level_size=sid_cfg.last_level_size,
        iterations=sid_cfg.kmeans_iterations,
        seed=sid_cfg.seed,
    )
    report = sid_report(quantization.codes, sid_cfg.codebook_size, sid_cfg.last_level_size)
    report |= {
        "levels": sid_cfg.quantized_levels + 1,
        "level_sizes": [sid_cfg.codebook_size] * sid_cfg.quantized_levels + [sid_cfg.last_level_size],
        "encoder": ENCODER_NAME,
        "embeddings_cached": embeddings_cached,
        "encode_seconds": round(encoded - started, 2),
        "quantize_seconds": round(time.perf_counter() - encoded, 2),
    }
    table = pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "codes": [row.tolist() for row in quantization.codes],
            "sid": [sid_string(row) for row in quantization.codes],
        }
    )
    with tempfile.TemporaryDirectory(dir=cfg.storage.work_dir, prefix="sids-") as staging:
        table.to_parquet(Path(staging) / "sids.parquet", index=False)
        np.savez(Path(staging) / "codebooks.npz", *quantization.codebooks)
        (Path(staging) / "report.json").write_text(json.dumps(report, indent=2))
        storage.publish_dir(staging, sid_uri)
    return StageResult({"sid_uri": sid_uri}, report)
