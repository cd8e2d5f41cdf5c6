"""Synthetic trace-test data: a hand-built catalog, category-Markov purchase sequences, examples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.prompts.render import CatalogItem, ItemCatalog
from components.semantic_ids.format import sid_string

CATEGORIES = ["Nail Polish", "Nail Treatment", "Creams & Moisturizers", "Shampoos", "Conditioners"]
BRANDS = ["OPI", "Essie", "Olay", None]
# Next-category probabilities: shampoo -> conditioner, polish -> treatment, and so on.
CATEGORY_CHAIN = np.array(
    [
        [0.5, 0.3, 0.1, 0.05, 0.05],
        [0.5, 0.2, 0.2, 0.05, 0.05],
        [0.2, 0.1, 0.5, 0.1, 0.1],
        [0.05, 0.05, 0.1, 0.2, 0.6],
        [0.05, 0.05, 0.1, 0.5, 0.3],
    ]
)


def make_catalog(count: int = 40) -> ItemCatalog:
    """Items ``i<k>`` with category ``k % 5``, brand ``k % 4`` (every fourth has none), SID ``(k, k % 7, 3, 0)``."""
    return ItemCatalog(
        CatalogItem(
            item_id=f"i{k}",
            sid=sid_string([k, k % 7, 3, 0]),
            title=f"Item {k}",
            brand=BRANDS[k % 4],
            categories=("Beauty", CATEGORIES[k % 5]),
        )
        for k in range(count)
    )


def make_interactions(users: int = 60, items: int = 40, seed: int = 0) -> pd.DataFrame:
    """user_id, item_id, position, timestamp: sequences of 6 to 10 items whose categories follow CATEGORY_CHAIN."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        category = int(rng.integers(5))
        for position in range(int(rng.integers(6, 11))):
            # Within a category, low item ids are more popular, so popularity carries signal too.
            choices = np.arange(category, items, 5)
            weights = 1.0 / np.arange(1, len(choices) + 1)
            item = int(rng.choice(choices, p=weights / weights.sum()))
            rows.append({"user_id": f"u{u}", "item_id": f"i{item}", "position": position, "timestamp": 1_000 * position})
            category = int(rng.choice(5, p=CATEGORY_CHAIN[category]))
    return pd.DataFrame(rows)


def make_examples(
    interactions: pd.DataFrame, items: int = 40, num_candidates: int = 10, seed: int = 0
) -> pd.DataFrame:
    """One training example per user: target = last training item, 9 random other items, shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for user_id, frame in interactions.sort_values(["user_id", "position"]).groupby("user_id"):
        sequence = frame["item_id"].tolist()
        position = len(sequence) - 3  # the latest training position (the last two are valid/test)
        history, target = sequence[:position], sequence[position]
        pool = [f"i{k}" for k in range(items) if f"i{k}" != target]
        candidates = [target, *rng.choice(pool, size=num_candidates - 1, replace=False).tolist()]
        rng.shuffle(candidates)
        rows.append(
            {
                "user_id": user_id,
                "split": "train",
                "target": target,
                "target_position": position,
                "history": history,
                "candidates": candidates,
                "target_pre_rank": candidates.index(target) + 1,
            }
        )
    return pd.DataFrame(rows)
