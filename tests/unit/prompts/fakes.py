"""A fake catalog for prompt and evaluation tests: ids i<k>, SID codes (k, k % 3, 7, 0), two category
paths, titles with a line break."""

from __future__ import annotations

import pandas as pd

from components.prompts import ItemCatalog
from components.semantic_ids.format import sid_string

CATEGORY_PATHS = [["Makeup", "Nails", "Nail Polish"], ["Skin Care", "Face", "Creams & Moisturizers"]]


def item_frames(count: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(count)],
            "title": [f"Title of item {k}, a rather long product name\nwith a line break" for k in range(count)],
            "brand": ["OPI" if k % 2 else None for k in range(count)],
            "categories": [CATEGORY_PATHS[k % 2] for k in range(count)],
            "description": ["" for _ in range(count)],
        }
    )
    sids = pd.DataFrame({"item_id": items["item_id"], "sid": [sid_string([k, k % 3, 7, 0]) for k in range(count)]})
    return items, sids


def fake_catalog(count: int = 12) -> ItemCatalog:
    return ItemCatalog.from_frames(*item_frames(count))
