"""The item catalog of a dataset version: its items joined with their semantic IDs.

Kept apart from ``render`` so that rendering a prompt (the service's path) needs no dataset reader.
"""

from __future__ import annotations

from pathlib import Path

from components.data.ingest import load_dataset
from components.prompts.render import ItemCatalog
from components.semantic_ids.build import read_sids


def load_catalog(dataset_uri: str, sid_uri: str, work_dir: str | Path) -> ItemCatalog:
    """Every item of a dataset version with its SID, categories, brand and title."""
    return ItemCatalog.from_frames(load_dataset(dataset_uri, work_dir).items, read_sids(sid_uri, work_dir))
