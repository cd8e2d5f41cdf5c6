"""Residual k-means quantization into semantic IDs, plus GR2's uniqueness level.

GR2 (paper.md section 3) quantizes item embeddings level by level (RQ with k-means initialisation)
and assigns the last level at random among unused codewords, which lifts uniqueness to >= 99%.
Here the first ``levels`` codes come from k-means on successive residuals, and the last code gives
each item inside a collision group (items that share the quantized prefix) its own random codeword,
so every ID is unique by construction and the report says how much of that the last level did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.config import ConfigError


@dataclass
class Quantization:
    codes: np.ndarray  # (n_items, levels + 1), int
    codebooks: list[np.ndarray]  # per quantized level: (codebook_size, dim)


def residual_kmeans(embeddings: np.ndarray, levels: int, codebook_size: int, iterations: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes (n, levels) and codebooks from k-means on each level's residual."""
    from sklearn.cluster import KMeans

    # float32 halves k-means time on CPU; the codes do not need more precision.
    residual = embeddings.astype(np.float32)
    codes, codebooks = [], []
    for level in range(levels):
        k = min(codebook_size, len(residual))
        kmeans = KMeans(n_clusters=k, n_init=1, max_iter=iterations, random_state=seed + level).fit(residual)
        assignment = kmeans.labels_
        centroids = kmeans.cluster_centers_.astype(np.float32)
        codes.append(assignment)
        codebooks.append(centroids)
        residual = residual - centroids[assignment]  # (n, dim): what the next level must explain
    return np.stack(codes, axis=1), codebooks


def assign_unique_level(prefix_codes: np.ndarray, last_level_size: int, seed: int) -> np.ndarray:
    """A last code per item, distinct within each group of items that share ``prefix_codes``.

    Raises:
        ConfigError: a collision group is larger than ``last_level_size`` (IDs could not be unique).
    """
    rng = np.random.default_rng(seed)
    last = np.zeros(len(prefix_codes), dtype=np.int64)
    _, group_of, group_sizes = np.unique(prefix_codes, axis=0, return_inverse=True, return_counts=True)
    longest = int(group_sizes.max())
    if longest > last_level_size:
        raise ConfigError(
            f"semantic_ids.last_level_size={last_level_size} is smaller than the longest collision chain "
            f"({longest} items share one prefix); raise it or add a quantized level"
        )
    order = np.argsort(group_of, kind="stable")  # items grouped, in item order inside a group
    boundaries = np.cumsum(group_sizes)[:-1]
    for members in np.split(order, boundaries):
        last[members] = rng.choice(last_level_size, size=len(members), replace=False)
    return last


def quantize(embeddings: np.ndarray, levels: int, codebook_size: int, last_level_size: int, iterations: int, seed: int) -> Quantization:
    prefix, codebooks = residual_kmeans(embeddings, levels, codebook_size, iterations, seed)
    last = assign_unique_level(prefix, last_level_size, seed)
    return Quantization(np.concatenate([prefix, last[:, None]], axis=1), codebooks)


def sid_report(codes: np.ndarray, codebook_size: int, last_level_size: int) -> dict[str, float | int]:
    """Uniqueness before/after the last level, per-level codebook utilisation, longest collision chain."""
    n = len(codes)
    prefix = codes[:, :-1]
    _, prefix_counts = np.unique(prefix, axis=0, return_counts=True)
    report: dict[str, float | int] = {
        "items": n,
        "unique_rate_before_last_level": float(len(prefix_counts) / n),
        "unique_rate": float(len(np.unique(codes, axis=0)) / n),
        "longest_collision_chain": int(prefix_counts.max()),
        "collision_groups": int((prefix_counts > 1).sum()),
    }
    for level in range(prefix.shape[1]):
        report[f"utilization_level_{level}"] = float(len(np.unique(prefix[:, level])) / codebook_size)
    report["utilization_last_level"] = float(len(np.unique(codes[:, -1])) / last_level_size)
    return report
