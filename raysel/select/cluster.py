"""K-Means, per-cluster sampling, nearest-neighbour similarity and near-duplicate groups on embedding vectors.

Pure numpy + faiss on float32 row vectors [n, d] that are expected to be L2-normalized; no Ray. Every result
is a function of the inputs and the seed.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

_DUP_TOL = 1e-5
"""Slack on the near-duplicate threshold: float32 dot products of identical unit vectors can land just below 1."""
_IVF_NPROBE = 16
"""IVF cells probed per query in near_duplicate_groups' approximate path."""


def _matrix(vectors: np.ndarray, d: int | None = None, *, cast: bool = True) -> np.ndarray:
    """Return vectors as a [n, d] array, C-contiguous float32 when `cast` (no copy when already one)."""
    x = np.asarray(vectors)
    if x.dtype == object:  # a column of per-row arrays, as Ray Data may hand over
        x = np.stack(x) if len(x) else np.empty((0, d or 0))
    if x.size == 0 and d is not None:
        x = x.reshape(0, d)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"expected vectors of shape [n, {d or 'd'}], got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32) if cast else x


def _unit(x: np.ndarray) -> np.ndarray:
    """Return x with L2-normalized rows; x itself when every row is already unit length (the usual case)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.all(np.abs(norms - 1) < 1e-4):
        return x
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12)[:, None], dtype=np.float32)


def kmeans_fit(vectors: np.ndarray, k: int, *, seed: int, niter: int = 20, train_sample: int = 200_000) -> np.ndarray:
    """Train K-Means (faiss, L2, k-means++ initialisation) and return the centroids, float32 [min(k, n), d].

    The vectors are unit length, so L2 K-Means groups by cosine; the centroids are plain means (not
    re-normalized: spherical=False). When there are more than `train_sample` rows, training uses a
    seeded random sample of `train_sample` of them (np.random.default_rng(seed)); faiss's own
    subsampling (max_points_per_centroid) is switched off so the sample is used whole, and faiss is
    seeded too, so the centroids depend only on the inputs and the seed. k-means++ is the initialisation
    sklearn's KMeans uses (the IFD paper's clustering); faiss's default random init often merges blobs.

    Raises:
        ValueError: no rows, or k/niter/train_sample not positive.
    """
    x = _matrix(vectors, cast=False)  # cast after sampling: float16 inputs are never copied whole
    if len(x) == 0:
        raise ValueError("kmeans_fit needs at least one row, got an empty array")
    if min(k, niter, train_sample) <= 0:
        raise ValueError(f"k, niter and train_sample must be positive, got {k}, {niter}, {train_sample}")
    if len(x) > train_sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), train_sample, replace=False))
        x = x[rows]
    x, k = np.ascontiguousarray(x, dtype=np.float32), min(k, len(x))
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=False,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        max_points_per_centroid=len(x),  # never subsample: the seeded sample above is the training set
        min_points_per_centroid=1,  # silences faiss's "provide at least 39*k points" warning on small runs
    )
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Assign each row to its nearest centroid (L2, the K-Means objective), `chunk` rows at a time.

    Cheap to call per batch: the flat index over the k x d centroids is rebuilt on each call.

    Returns:
        labels int32 [n] (row of `centroids`) and sim float32 [n], the cosine of each row to its centroid.
    """
    c = _matrix(centroids)
    if len(c) == 0 or chunk <= 0:
        raise ValueError(f"assign needs at least one centroid and a positive chunk, got {len(c)}, {chunk}")
    x = _matrix(vectors, c.shape[1], cast=False)  # cast chunk by chunk: memory stays bounded for float16 input
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    c_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", c, c)), 1e-12)
    labels = np.empty(len(x), dtype=np.int32)
    sim = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), chunk):
        xb = np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)
        lab = index.search(xb, 1)[1][:, 0]
        x_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", xb, xb)), 1e-12)
        labels[start : start + len(xb)] = lab
        sim[start : start + len(xb)] = np.einsum("ij,ij->i", xb, c[lab]) / (x_norm * c_norm[lab])
    return labels, sim


def _take_by_quota(inverse: np.ndarray, quota: np.ndarray, seed: int) -> np.ndarray:
    """Seeded random `quota[c]` rows of each cluster c (row i is in cluster inverse[i]), as sorted indexes."""
    keys = np.random.default_rng(seed).random(len(inverse))
    order = np.lexsort((keys, inverse))  # rows grouped by cluster, random order within each
    grouped = inverse[order]
    starts = np.searchsorted(grouped, np.arange(len(quota)))
    rank = np.arange(len(order)) - starts[grouped]
    return np.sort(order[rank < quota[grouped]]).astype(np.int64)


def sample_per_cluster(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Return sorted indexes of `n` seeded-random rows from each cluster (all rows of a smaller cluster)."""
    if n < 0:
        raise ValueError(f"sample_per_cluster needs n >= 0 rows per cluster, got {n}")
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return _take_by_quota(inverse.ravel(), np.minimum(counts, n), seed)


def _proportional_quota(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` (<= counts.sum()) over clusters by size, largest remainder; >= 1 each if total allows."""
    counts = counts.astype(np.int64)
    fixed = np.zeros(len(counts), dtype=bool)
    if total >= len(counts):  # clusters whose share is below 1 get exactly 1; the rest is re-split
        while True:
            budget, size = total - int(fixed.sum()), int(counts[~fixed].sum())
            low = ~fixed & (budget * counts < size)
            if not low.any():
                break
            fixed |= low
    budget, size = total - int(fixed.sum()), int(counts[~fixed].sum())
    share = np.where(fixed, 0, budget * counts)  # integer arithmetic: exact, ties broken by cluster order
    quota, remainder = share // max(size, 1), share % max(size, 1)
    quota[np.argsort(-remainder, kind="stable")[: budget - int(quota.sum())]] += 1
    return np.where(fixed, 1, quota)


def sample_proportional(labels: np.ndarray, total: int, *, seed: int) -> np.ndarray:
    """Return sorted indexes of `total` rows spread over clusters in proportion to their sizes.

    Exactly min(total, n_rows) rows: each cluster's share is rounded by largest remainder (ties go to the
    smaller label). When total >= the number of clusters every cluster gets at least one row: clusters
    whose share is below one get exactly one and the rest is split over the others the same way. Rows are
    drawn at random (seeded) within each cluster.
    """
    if total < 0:
        raise ValueError(f"sample_proportional needs total >= 0, got {total}")
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    quota = _proportional_quota(counts, min(total, len(inverse)))
    return _take_by_quota(inverse.ravel(), quota, seed)


def _evenly(rows: np.ndarray, n: int) -> np.ndarray:
    """All of `rows` if fewer than n, else every (len // n)-th row, first n of them (Cherry_LLM's rule)."""
    return rows if len(rows) < n else rows[:: len(rows) // n][:n]


def sample_middle_band(
    labels: np.ndarray, values: np.ndarray | None, n: int, *, low_pct: float = 25, high_pct: float = 75
) -> np.ndarray:
    """Return sorted indexes of the IFD paper's pre-experience sample: n evenly spaced mid-band rows per cluster.

    As Cherry_LLM's data_by_cluster.py (sample_middle_confidence_data) does it, for each cluster's rows in
    input order: fewer than n rows -> all of them; else keep the rows whose value v has
    percentile(low_pct) <= v <= percentile(high_pct) within the cluster (np.percentile, linear), and take
    all of that band if it has fewer than n rows, else band[::len(band) // n][:n]. values=None means no
    band: the same step rule over all the cluster's rows. Deterministic, no seed.

    Rows whose value is not finite (NaN: no perplexity) are left out before anything else, as if absent:
    they are never taken, do not move the percentiles and do not count towards a cluster's size.
    """
    if n <= 0:
        raise ValueError(f"sample_middle_band needs n >= 1 rows per cluster, got {n}")
    labels = np.asarray(labels)
    v = None if values is None else np.asarray(values, dtype=np.float64)
    rows = np.arange(len(labels)) if v is None else np.flatnonzero(np.isfinite(v))
    order = rows[np.argsort(labels[rows], kind="stable")]  # grouped by cluster, input order within each
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    picked = []
    for group in np.split(order, bounds) if len(order) else []:
        if v is not None and len(group) >= n:
            lo, hi = np.percentile(v[group], [low_pct, high_pct])
            group = group[(v[group] >= lo) & (v[group] <= hi)]
        picked.append(_evenly(group, n))
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.empty(0, dtype=np.int64)


class NearestSimilarity:
    """Similarity of candidates to a growing selected set: mean cosine of their top-k neighbours in it.

    IterSelectTune's sim_score(x): the mean cosine of x to its k (default 5) nearest rows of the hard set,
    over min(k, set size) neighbours, 0 while the set is empty. Exact search (faiss IndexFlatIP).
    """

    def __init__(self, d: int, *, k: int = 5) -> None:
        if d <= 0 or k <= 0:
            raise ValueError(f"NearestSimilarity needs positive d and k, got {d}, {k}")
        self.d, self.k = d, k
        self._index = faiss.IndexFlatIP(d)

    def add(self, vectors: np.ndarray) -> None:
        """Add rows to the set (normalized here if they are not unit length)."""
        x = _matrix(vectors, self.d)
        if len(x):
            self._index.add(_unit(x))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def score(self, candidates: np.ndarray) -> np.ndarray:
        """Return float32 [m]: each candidate's mean cosine to its min(k, len(self)) nearest set rows."""
        x = _matrix(candidates, self.d)
        top = min(self.k, len(self))
        if top == 0 or len(x) == 0:
            return np.zeros(len(x), dtype=np.float32)
        sims, _ = self._index.search(_unit(x), top)
        return sims.mean(axis=1, dtype=np.float64).astype(np.float32)


def _search_index(x: np.ndarray, exact_limit: int, seed: int) -> faiss.Index:
    """Inner-product index over x: flat (exact) up to exact_limit rows, else IVF (approximate, seeded)."""
    d = x.shape[1]
    if len(x) <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, int(math.sqrt(len(x))))  # ~sqrt(n) cells of ~sqrt(n) rows
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = 64  # the training sample below is used whole
        index.cp.min_points_per_centroid = 1
        sample = np.random.default_rng(seed).choice(len(x), min(len(x), 64 * nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = min(_IVF_NPROBE, nlist)
    index.add(x)
    return index


def _components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Union-find over edges (src, dst), vectorised: each node's root is its component's smallest index."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        while not np.array_equal(grand := parent[parent], parent):  # pointer jumping: every node -> its root
            parent = grand
        a, b = parent[src], parent[dst]
        cross = a != b
        if not cross.any():
            return parent
        # hook the larger root under the smaller: parent[i] <= i keeps the forest acyclic, roots are minima
        np.minimum.at(parent, np.maximum(a, b)[cross], np.minimum(a, b)[cross])


def near_duplicate_groups(
    vectors: np.ndarray, threshold: float, *, k: int = 16, exact_limit: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Group rows whose cosine similarity is >= threshold; return each row's representative, int64 [n].

    A row's representative is the earliest row (input order) of its group; a row without a near duplicate
    is its own. Pairs at or above the threshold (minus 1e-5 of float32 slack) are linked and groups are the
    connected components, so A~B and B~C group A with C even when A and C are further apart. Only the k
    nearest neighbours of each row (itself aside) are examined: a row with more than k near duplicates
    still joins their group through them, but pairs beyond every row's top k are not seen. Search is exact
    (faiss IndexFlatIP) up to `exact_limit` rows; above it an IVF index (nlist = sqrt(n) cells trained on a
    seeded sample of 64 rows per cell, nprobe = 16) is used, which is approximate and can miss pairs that
    fall in cells not probed.
    """
    if k <= 0:
        raise ValueError(f"near_duplicate_groups needs k >= 1 neighbours, got {k}")
    x = _matrix(vectors)
    n = len(x)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    x = _unit(x)
    index = _search_index(x, exact_limit, seed)
    top, src, dst = min(k + 1, n), [], []
    for start in range(0, n, 65536):
        sims, nbrs = index.search(x[start : start + 65536], top)
        rows = np.arange(start, start + len(nbrs))[:, None]
        hit = (sims >= threshold - _DUP_TOL) & (nbrs >= 0) & (nbrs != rows)
        src.append(np.broadcast_to(rows, nbrs.shape)[hit])
        dst.append(nbrs[hit])
    return _components(n, np.concatenate(src), np.concatenate(dst))


def group_summary(reps: np.ndarray) -> dict[str, int]:
    """Summarise near_duplicate_groups' output: groups of >= 2 rows, rows in them, extra copies, largest size."""
    reps = np.asarray(reps, dtype=np.int64)
    sizes = np.bincount(reps, minlength=len(reps))
    multi = sizes[sizes >= 2]
    return {
        "groups": int(len(multi)),
        "rows_in_groups": int(multi.sum()),
        "extra_copies": int((reps != np.arange(len(reps))).sum()),
        "largest": int(multi.max()) if len(multi) else 0,
    }
