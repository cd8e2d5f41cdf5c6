import numpy as np
import pytest

from components.semantic_ids.format import parse_sid, sid_string
from components.semantic_ids.quantize import assign_unique_level, quantize, residual_kmeans, sid_report


def _clustered_embeddings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, 16))
    points = centers[rng.integers(0, 8, size=n)] + 0.05 * rng.normal(size=(n, 16))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_every_id_is_unique_and_deterministic_for_a_seed():
    embeddings = _clustered_embeddings(400)
    # 8 true clusters into 4 x 4 prefixes: some prefix holds two of them (about 100 items).
    first = quantize(embeddings, levels=2, codebook_size=4, last_level_size=128, iterations=20, seed=3)
    second = quantize(embeddings, levels=2, codebook_size=4, last_level_size=128, iterations=20, seed=3)
    assert np.array_equal(first.codes, second.codes)
    assert len(np.unique(first.codes, axis=0)) == 400
    assert first.codes.shape == (400, 3)
    assert first.codes[:, :2].max() < 4 and first.codes[:, 2].max() < 128


def test_residual_levels_reduce_reconstruction_error():
    embeddings = _clustered_embeddings(300)
    codes, codebooks = residual_kmeans(embeddings, levels=3, codebook_size=8, iterations=30, seed=0)
    reconstruction = np.zeros_like(embeddings, dtype=np.float64)
    errors = []
    for level in range(3):
        reconstruction += codebooks[level][codes[:, level]]
        errors.append(float(((embeddings - reconstruction) ** 2).sum()))
    assert errors[0] > errors[1] > errors[2]


def test_last_level_separates_each_collision_group():
    prefix = np.array([[0, 0], [0, 0], [0, 0], [1, 2], [1, 2], [3, 3]])
    last = assign_unique_level(prefix, last_level_size=4, seed=0)
    assert len(set(last[:3].tolist())) == 3
    assert last[3] != last[4]
    assert (last < 4).all()


def test_too_small_last_level_is_a_clear_error():
    prefix = np.zeros((5, 2), dtype=int)
    with pytest.raises(ValueError, match="last_level_size=4 .* longest collision chain \\(5"):
        assign_unique_level(prefix, last_level_size=4, seed=0)


def test_report_counts_collisions_and_utilisation_by_hand():
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 3, 0], [1, 1, 0]])
    report = sid_report(codes, codebook_size=4, last_level_size=2)
    assert report["unique_rate_before_last_level"] == pytest.approx(3 / 4)
    assert report["unique_rate"] == 1.0
    assert report["longest_collision_chain"] == 2
    assert report["collision_groups"] == 1
    assert report["utilization_level_0"] == pytest.approx(3 / 4)  # codes 0, 1, 2 of 4
    assert report["utilization_level_1"] == pytest.approx(2 / 4)  # codes 1, 3
    assert report["utilization_last_level"] == 1.0


def test_sid_string_round_trips():
    text = sid_string([97, 168, 137, 3])
    assert text == "<s_a_97><s_b_168><s_c_137><s_d_3>"
    assert parse_sid(text) == (97, 168, 137, 3)
    assert parse_sid("<s_b_1><s_a_2>") is None
    assert parse_sid("<s_a_1> <s_b_2>") is None


def test_codes_do_not_depend_on_summation_order():
    # Permuting the dimensions changes the order every dot product and centroid sum is taken in;
    # exact integer arithmetic gives bit-identical codes and codebooks, as another CPU would.
    from components.semantic_ids.encoder import to_grid

    embeddings = to_grid(_clustered_embeddings(500, seed=4))
    permutation = np.random.default_rng(0).permutation(embeddings.shape[1])
    codes, codebooks = residual_kmeans(embeddings, levels=3, codebook_size=8, iterations=30, seed=1)
    permuted_codes, permuted_codebooks = residual_kmeans(embeddings[:, permutation], levels=3, codebook_size=8, iterations=30, seed=1)
    assert np.array_equal(codes, permuted_codes)
    for codebook, permuted in zip(codebooks, permuted_codebooks):
        assert np.array_equal(codebook[:, permutation], permuted)


def test_more_clusters_than_distinct_points_still_fills_every_code():
    embeddings = np.repeat(np.eye(3, 16, dtype=np.float32), [5, 1, 1], axis=0)
    codes, codebooks = residual_kmeans(embeddings, levels=1, codebook_size=6, iterations=10, seed=0)
    assert sorted(np.unique(codes[:, 0]).tolist()) == list(range(6))  # no empty cluster left
    assert np.isfinite(codebooks[0]).all()
