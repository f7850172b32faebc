"""Unit tests for raysel.select.cluster: K-Means, per-cluster samplers, nearest similarity, near-duplicate groups."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raysel.select.cluster import (
    NearestSimilarity,
    assign,
    group_summary,
    kmeans_fit,
    near_duplicate_groups,
    sample_middle_band,
    sample_per_cluster,
    sample_proportional,
)

NAN = float("nan")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(per_blob: int, *, centres: int = 5, d: int = 32, noise: float = 0.01, seed: int = 0):
    """Unit vectors around `centres` random unit centres, shuffled; returns (vectors, true blob per row)."""
    rng = np.random.default_rng(seed)
    c = unit(rng.standard_normal((centres, d)))
    truth = np.repeat(np.arange(centres), per_blob)
    rng.shuffle(truth)
    return unit(c[truth] + noise * rng.standard_normal((len(truth), d))), truth


def assert_same_partition(labels: np.ndarray, truth: np.ndarray) -> None:
    """Each true blob carries exactly one label, and different blobs carry different labels."""
    per_blob = {t: set(labels[truth == t].tolist()) for t in np.unique(truth)}
    assert all(len(s) == 1 for s in per_blob.values()), per_blob
    assert len({next(iter(s)) for s in per_blob.values()}) == len(per_blob)


# ---- K-Means and assignment ----


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_and_assign_recover_blobs(seed: int) -> None:
    x, truth = blobs(200, seed=seed)
    centroids = kmeans_fit(x, 5, seed=seed)
    assert centroids.shape == (5, 32) and centroids.dtype == np.float32
    labels, sim = assign(x, centroids)
    assert labels.dtype == np.int32 and sim.dtype == np.float32
    assert_same_partition(labels, truth)
    assert sim.min() > 0.99  # noise 0.01 per dim: every row sits close to its blob's mean


def test_kmeans_deterministic_for_seed() -> None:
    x, _ = blobs(300, centres=8, noise=0.2, seed=3)  # overlapping blobs: the init matters
    assert np.array_equal(kmeans_fit(x, 8, seed=7), kmeans_fit(x.copy(), 8, seed=7))
    a, b = kmeans_fit(x, 8, seed=7, train_sample=500), kmeans_fit(x, 8, seed=7, train_sample=500)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, kmeans_fit(x, 8, seed=8, train_sample=500))


def test_kmeans_train_sample_path_recovers_blobs() -> None:
    x, truth = blobs(600, seed=4)
    centroids = kmeans_fit(x, 5, seed=0, train_sample=300)  # 3000 rows > 300: trains on a sample
    assert_same_partition(assign(x, centroids)[0], truth)


def test_kmeans_trains_on_every_sampled_row() -> None:
    # 3000 rows for 2 centroids is above faiss's default 256 points per centroid: faiss would subsample to
    # 512 rows and the centroids would miss the blob means by ~noise / sqrt(256) per dimension.
    x, truth = blobs(1500, centres=2, noise=0.05, seed=5)
    centroids = kmeans_fit(x, 2, seed=0)
    labels, _ = assign(x, centroids)
    assert_same_partition(labels, truth)
    for c in range(2):
        np.testing.assert_allclose(centroids[c], x[labels == c].mean(axis=0), atol=2e-6)


def test_kmeans_caps_k_at_rows_and_rejects_empty() -> None:
    x = unit(np.eye(3, 8) + 0.01)
    centroids = kmeans_fit(x, 10, seed=0)
    assert centroids.shape == (3, 8)
    assert sorted(assign(x, centroids)[0].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one row"):
        kmeans_fit(np.empty((0, 8), dtype=np.float32), 4, seed=0)


def test_assign_matches_brute_force_and_chunking() -> None:
    rng = np.random.default_rng(6)
    x, c = unit(rng.standard_normal((1000, 16))), unit(rng.standard_normal((7, 16))) * 0.8  # centroids not unit
    labels, sim = assign(x, c, chunk=10**6)
    dist = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    assert np.array_equal(labels, dist.argmin(1))
    np.testing.assert_allclose(sim, (x * c[labels]).sum(1) / 0.8, atol=1e-5)
    chunked = assign(x, c, chunk=64)
    assert np.array_equal(chunked[0], labels) and np.array_equal(chunked[1], sim)
    empty = assign(np.empty((0, 16), dtype=np.float32), c)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_assign_accepts_float16_and_per_row_columns() -> None:
    # Ray Data hands a batch's vector column over as a 2-D array or as an object array of rows
    x, truth = blobs(40, seed=11)
    centroids = kmeans_fit(x, 5, seed=0)
    want = assign(x.astype(np.float16).astype(np.float32), centroids)
    got = assign(x.astype(np.float16), centroids, chunk=33)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    column = np.empty(len(x), dtype=object)
    column[:] = list(x)
    assert np.array_equal(assign(column, centroids)[0], assign(x, centroids)[0])
    with pytest.raises(ValueError, match="shape"):
        assign(x[:, :10], centroids)


# ---- samplers ----

LABELS = np.array([5, 2, 9, 5, 5, 9, 2, 5, 9, 5, 5, 9, 5, 2, 9, 5, 9, 5, 9, 5])  # sizes: 2 -> 3, 5 -> 10, 9 -> 7


def test_sample_per_cluster_counts_and_seed() -> None:
    idx = sample_per_cluster(LABELS, 5, seed=0)
    assert idx.dtype == np.int64 and np.array_equal(idx, np.unique(idx))
    assert Counter(LABELS[idx].tolist()) == {2: 3, 5: 5, 9: 5}
    assert np.array_equal(idx, sample_per_cluster(LABELS, 5, seed=0))
    assert not np.array_equal(idx, sample_per_cluster(LABELS, 5, seed=1))
    assert len(sample_per_cluster(LABELS, 100, seed=0)) == len(LABELS)


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (10, [4, 3, 1, 1, 1]),  # shares 5, 3, 1.5, .4, .1: the two small clusters get 1, 8 split over the rest
        (3, [2, 1, 0, 0, 0]),  # fewer than the 5 clusters: plain largest remainder (1.5, .9, .45, .12, .03)
        (100, [50, 30, 15, 4, 1]),
        (500, [50, 30, 15, 4, 1]),  # capped at the number of rows
    ],
)
def test_sample_proportional_hand_counts(total: int, expected: list[int]) -> None:
    labels = np.repeat([0, 1, 2, 3, 4], [50, 30, 15, 4, 1])
    np.random.default_rng(0).shuffle(labels)
    idx = sample_proportional(labels, total, seed=0)
    assert np.bincount(labels[idx], minlength=5).tolist() == expected
    assert idx.dtype == np.int64 and np.array_equal(idx, np.unique(idx))


def test_sample_proportional_exact_sum_and_seed() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        labels = rng.integers(0, rng.integers(1, 12), rng.integers(1, 300))
        n_clusters = len(np.unique(labels))
        total = int(rng.integers(0, len(labels) + 5))
        idx = sample_proportional(labels, total, seed=1)
        assert len(idx) == min(total, len(labels)) and np.array_equal(idx, np.unique(idx))
        if total >= n_clusters:
            assert len(np.unique(labels[idx])) == n_clusters
    labels = np.repeat([0, 1], [40, 60])
    assert np.array_equal(sample_proportional(labels, 10, seed=3), sample_proportional(labels, 10, seed=3))
    assert not np.array_equal(sample_proportional(labels, 10, seed=3), sample_proportional(labels, 10, seed=4))


def middle_band_fixture() -> tuple[np.ndarray, np.ndarray]:
    """Clusters 0 (13 rows), 1 (2 rows) and 2 (4 rows), interleaved; values in each cluster's input order."""
    labels = np.array([0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 0, 2, 0, 1, 0, 0, 2, 0, 0])
    per = {0: [12, 0, 6, 3, 9, 1, 11, 4, 8, 2, 10, 5, 7], 1: [4, 4], 2: [1, 4, 2, 3]}
    values = np.empty(len(labels))
    for c, vals in per.items():
        values[labels == c] = vals
    return labels, values


def test_sample_middle_band_hand_example() -> None:
    labels, values = middle_band_fixture()
    pos = {c: np.flatnonzero(labels == c) for c in (0, 1, 2)}
    # cluster 0: 25th/75th percentiles of 0..12 are 3 and 9 (both ends kept): band = local rows 2,3,4,7,8,11,12
    #   (values 6,3,9,4,8,5,7); 7 rows >= 3, step 7 // 3 = 2 -> local rows 2, 4, 8
    # cluster 1: 2 rows < 3 -> both; cluster 2: band [1.75, 3.25] = local rows 2, 3 (values 2, 3) < 3 -> both
    expected = sorted([*pos[0][[2, 4, 8]], *pos[1], *pos[2][[2, 3]]])
    assert sample_middle_band(labels, values, 3).tolist() == expected
    # no band: cluster 0 step 13 // 3 = 4 -> local rows 0, 4, 8; cluster 2 step 1 -> local rows 0, 1, 2
    expected = sorted([*pos[0][[0, 4, 8]], *pos[1], *pos[2][[0, 1, 2]]])
    assert sample_middle_band(labels, None, 3).tolist() == expected
    # a narrower band: 40th/60th percentiles of 0..12 are 4.8, 7.2 -> values 6, 5, 7 (local rows 2, 11, 12);
    # cluster 2: [2.2, 2.8] holds no value, so it contributes nothing
    expected = sorted([*pos[0][[2, 11, 12]], *pos[1]])
    assert sample_middle_band(labels, values, 3, low_pct=40, high_pct=60).tolist() == expected


def test_sample_middle_band_nan_rows_are_absent() -> None:
    labels, values = middle_band_fixture()
    base = sample_middle_band(labels, values, 3)
    # a NaN row inserted at the front of cluster 0 changes neither its percentiles nor its picks
    got = sample_middle_band(np.r_[0, labels], np.r_[NAN, values], 3)
    assert got.tolist() == (base + 1).tolist()
    # cluster 3 has 4 rows but only 2 with a value: it counts as a 2-row cluster, so both valued rows come out
    labels3, values3 = np.r_[labels, 3, 3, 3, 3], np.r_[values, NAN, 1.0, NAN, 2.0]
    got = sample_middle_band(labels3, values3, 3)
    n = len(labels)
    assert got.tolist() == base.tolist() + [n + 1, n + 3]
    # a cluster with no values at all contributes nothing
    assert sample_middle_band(np.r_[labels, 4, 4], np.r_[values, NAN, NAN], 3).tolist() == base.tolist()


# ---- nearest similarity ----


def test_nearest_similarity_known_cosines() -> None:
    sim = NearestSimilarity(3, k=5)
    cands = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    assert len(sim) == 0 and sim.score(cands).tolist() == [0.0, 0.0, 0.0]
    sim.add(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    assert len(sim) == 2
    # k=5 > 2 rows in the set: the mean over both
    np.testing.assert_allclose(sim.score(cands), [0.5, 0.7, 0.0], atol=1e-6)
    sim.add(np.array([[0, 0.6, 0.8]], dtype=np.float32))
    np.testing.assert_allclose(sim.score(cands), [1 / 3, (0.6 + 0.8 + 0.48) / 3, 0.8 / 3], atol=1e-6)
    top1 = NearestSimilarity(3, k=1)
    top1.add(np.array([[1, 0, 0], [0, 1, 0], [0, 0.6, 0.8]], dtype=np.float32))
    np.testing.assert_allclose(top1.score(cands), [1.0, 0.8, 0.8], atol=1e-6)
    assert sim.score(np.empty((0, 3), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        sim.score(np.ones((2, 4), dtype=np.float32))


# ---- near duplicates ----


def planted_duplicates(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 random unit rows in 64-d with planted near copies and a chain; returns (vectors, expected reps)."""
    rng = np.random.default_rng(seed)
    d = 64
    x = unit(rng.standard_normal((60, d)))
    reps = np.arange(60)
    for base, copy in [(3, 10), (3, 41), (30, 7), (12, 50), (12, 51)]:  # copy 7 comes before its base 30
        x[copy] = unit(x[base][None] + 0.01 * rng.standard_normal((1, d)))[0]
    reps[[3, 10, 41]] = 3
    reps[[7, 30]] = 7
    reps[[12, 50, 51]] = 12
    # chain C(5) ~ A(20) ~ B(33): cos 0.96 between neighbours, cos(A, C) = 2 * 0.96**2 - 1 = 0.84
    u, v = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
    theta = np.arccos(0.96)
    for row, angle in [(20, 0.0), (33, theta), (5, 2 * theta)]:
        x[row] = np.cos(angle) * u + np.sin(angle) * v
    reps[[5, 20, 33]] = 5
    return x.astype(np.float32), reps


def test_near_duplicate_groups_planted() -> None:
    x, expected = planted_duplicates()
    assert float(x[5] @ x[20]) < 0.9 < float(x[5] @ x[33])
    reps = near_duplicate_groups(x, 0.95)
    assert reps.dtype == np.int64 and reps.tolist() == expected.tolist()
    assert group_summary(reps) == {"groups": 4, "rows_in_groups": 11, "extra_copies": 7, "largest": 3}
    # above the chain's 0.96 links and the copies' ~0.995 nothing groups
    assert near_duplicate_groups(x, 0.999).tolist() == list(range(60))
    assert group_summary(np.arange(4)) == {"groups": 0, "rows_in_groups": 0, "extra_copies": 0, "largest": 0}


def test_near_duplicate_groups_long_chain() -> None:
    # 8 rows along an arc, cos 0.96 between neighbours only, scattered over 40 rows: one group through 7 links
    rng = np.random.default_rng(9)
    x = unit(rng.standard_normal((40, 64)))
    u, v = np.linalg.qr(rng.standard_normal((64, 2)))[0].T
    rows = np.array([31, 4, 22, 39, 9, 17, 35, 12])  # arc order, not input order
    angles = np.arange(8) * np.arccos(0.96)
    x[rows] = np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v
    expected = np.arange(40)
    expected[rows] = 4
    assert near_duplicate_groups(x, 0.95, k=2).tolist() == expected.tolist()


def test_near_duplicate_groups_exact_copies_at_threshold_one() -> None:
    x, _ = planted_duplicates()
    x = x[[0, 1, 3, 0, 10, 2, 0, 1]]  # rows 0,3,6 and 1,7 are exact copies; 2 and 4 are near copies only
    assert near_duplicate_groups(x, 1.0).tolist() == [0, 1, 2, 0, 4, 5, 0, 1]
    assert near_duplicate_groups(x, 0.95).tolist() == [0, 1, 2, 0, 2, 5, 0, 1]
    # float32 dot products of a unit row with itself land on either side of 1.0: copies still group at 1.0
    many = unit(np.random.default_rng(10).standard_normal((50, 384)))
    reps = near_duplicate_groups(np.concatenate([many, many]), 1.0)
    assert reps.tolist() == list(range(50)) * 2
    assert near_duplicate_groups(x[:1], 0.9).tolist() == [0]
    assert near_duplicate_groups(np.empty((0, 64), dtype=np.float32), 0.9).shape == (0,)


def test_near_duplicate_groups_ivf_path() -> None:
    rng = np.random.default_rng(8)
    x = unit(rng.standard_normal((3000, 64)))
    bases, copies = rng.permutation(3000)[:60].reshape(2, 30)
    x[copies] = unit(x[bases] + 0.02 * rng.standard_normal((30, 64)))
    expected = np.arange(3000)
    expected[np.maximum(bases, copies)] = np.minimum(bases, copies)
    exact = near_duplicate_groups(x, 0.9)
    approx = near_duplicate_groups(x, 0.9, exact_limit=1000, seed=1)  # IVF: sqrt(3000) = 54 cells, 16 probed
    assert exact.tolist() == expected.tolist()
    assert approx.tolist() == expected.tolist()
    assert np.array_equal(approx, near_duplicate_groups(x, 0.9, exact_limit=1000, seed=1))
