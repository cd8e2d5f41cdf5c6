"""A tiny catalog whose SIDs are tokens of tests/unit/tiny_lm.py's tokenizer, and its Feast store,
for the serving tests."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from components.config import Config
from components.prompts.render import CatalogItem

ITEM_IDS = [f"p{k:02d}" for k in range(14)]
CATEGORIES = ["Nails", "Hair Care", "Skin Care", "Fragrance"]
# Four users with six purchases each; "u0" bought p00..p05.
HISTORIES = {f"u{u}": [ITEM_IDS[(3 * u + k) % len(ITEM_IDS)] for k in range(6)] for u in range(4)}
DAY = 1_300_060_800


def sid(k: int) -> str:
    """A distinct 4-token SID per item, from the tiny tokenizer's <s_{a..d}_{0..7}> tokens."""
    return f"<s_a_{k % 8}><s_b_{k // 8}><s_c_{(3 * k) % 8}><s_d_{k % 5}>"


def catalog_items() -> dict[str, CatalogItem]:
    return {
        item_id: CatalogItem(item_id, sid(k), f"Item {k}", "Acme", ("Beauty", CATEGORIES[k % len(CATEGORIES)]))
        for k, item_id in enumerate(ITEM_IDS)
    }


def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """interactions, items and sids frames shaped like a dataset version's."""
    rows = [(user, item, DAY + 86_400 * position, position) for user, items in HISTORIES.items() for position, item in enumerate(items)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position"]).astype({"timestamp": "Int64"})
    items = catalog_items().values()
    item_frame = pd.DataFrame(
        {
            "item_id": [i.item_id for i in items],
            "title": [i.title for i in items],
            "brand": [i.brand for i in items],
            "categories": [list(i.categories) for i in items],
            "description": [""] * len(ITEM_IDS),
        }
    )
    sids = pd.DataFrame({"item_id": ITEM_IDS, "codes": [[k] for k in range(len(ITEM_IDS))], "sid": [sid(k) for k in range(len(ITEM_IDS))]})
    return interactions, item_frame, sids


def build_store(cfg: Config, root: Path) -> Path:
    """A materialized Feast store over the tiny catalog; returns its directory."""
    from feature_repo.store import apply_definitions, build_feature_tables, materialize, open_store

    interactions, items, sids = frames()
    build_feature_tables(interactions, items, sids, root / "tables")
    store = open_store(cfg, root / "store")
    apply_definitions(store, root / "tables")
    materialize(store, datetime.now(timezone.utc))
    return root / "store"

