"""Residual k-means quantization into semantic IDs, plus GR2's uniqueness level.

GR2 (paper.md section 3) quantizes item embeddings level by level (RQ with k-means initialisation)
and assigns the last level at random among unused codewords, which lifts uniqueness to >= 99%.
Here the first ``levels`` codes come from k-means on successive residuals (exact integer arithmetic,
so the same embeddings give the same codes on every machine), and the last code gives
each item inside a collision group (items that share the quantized prefix) its own random codeword,
so every ID is unique by construction and the report says how much of that the last level did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.config import ConfigError
from components.semantic_ids.encoder import GRID_SCALE


@dataclass
class Quantization:
    codes: np.ndarray  # (n_items, levels + 1), int
    codebooks: list[np.ndarray]  # per quantized level: (codebook_size, dim)


def _scores(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, k) squared distance minus ||point||^2 (the same argmin); exact on integer-valued inputs."""
    return (centroids**2).sum(axis=1)[None, :] - 2.0 * (points @ centroids.T)


def _squared_distances(points: np.ndarray, squares: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(len(centers), n) int64 squared distances from points ``centers`` (indices) to every point:
    ||p||^2 + ||c||^2 - 2 p.c, exact on integer-valued inputs (``squares``: every ||p||^2)."""
    return (squares[None, :] + squares[centers][:, None] - 2.0 * (points[centers] @ points.T)).astype(np.int64)


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding, sampling with integer arithmetic so the draw is the same on every machine."""
    squares = (points**2).sum(axis=1)
    centers = [int(rng.integers(len(points)))]
    closest = _squared_distances(points, squares, np.array(centers))[0]
    # Greedy k-means++ (as sklearn): draw a few candidates, keep the one that lowers the potential most.
    trials = 2 + int(np.log(k))
    for _ in range(1, k):
        cumulative = np.cumsum(closest)
        if cumulative[-1] == 0:  # fewer distinct points than k: any point will do
            centers.append(int(rng.integers(len(points))))
            continue
        candidates = np.searchsorted(cumulative, rng.integers(cumulative[-1], size=trials), side="right")
        potentials = np.minimum(closest[None, :], _squared_distances(points, squares, candidates))  # (trials, n)
        best = int(potentials.sum(axis=1).argmin())
        centers.append(int(candidates[best]))
        closest = potentials[best]
    return points[centers].copy()


def _exact_kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on integer-valued float64 points, with centroids rounded back to integers.

    Every product and partial sum is an integer below 2**53, so float64 BLAS computes them exactly
    whatever order a CPU sums in: the assignments and centroids are bit-identical on any machine.
    """
    centroids = _kmeans_plus_plus(points, k, np.random.default_rng(seed))
    assignment = np.full(len(points), -1)
    squares = (points**2).sum(axis=1)
    for _ in range(iterations):
        scores = _scores(points, centroids)
        new_assignment = scores.argmin(axis=1)
        counts = np.bincount(new_assignment, minlength=k)
        # An empty cluster takes the point farthest from its centroid (as sklearn relocates).
        own = scores[np.arange(len(points)), new_assignment] + squares
        while (counts == 0).any():
            empty = int(np.flatnonzero(counts == 0)[0])
            farthest = int(np.where(counts[new_assignment] > 1, own, -1.0).argmax())
            counts[new_assignment[farthest]] -= 1
            new_assignment[farthest], own[farthest] = empty, -1.0
            counts[empty] = 1
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        order = np.argsort(assignment, kind="stable")
        sums = np.add.reduceat(points[order], np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
        centroids = np.round(sums / counts[:, None])
    return assignment, centroids


def residual_kmeans(embeddings: np.ndarray, levels: int, codebook_size: int, iterations: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes (n, levels) and codebooks from k-means on each level's residual.

    The embeddings are taken on the encoder's 2**-GRID_BITS grid and scaled to integers, so the
    codes depend only on the embeddings, not on the machine (see ``_exact_kmeans``).
    """
    residual = np.round(np.asarray(embeddings, dtype=np.float64) * GRID_SCALE)
    codes, codebooks = [], []
    for level in range(levels):
        k = min(codebook_size, len(residual))
        assignment, centroids = _exact_kmeans(residual, k, iterations, seed + level)
        codes.append(assignment)
        codebooks.append((centroids / GRID_SCALE).astype(np.float32))
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
