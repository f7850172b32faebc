"""K-Means at scale: kmeans_fit on a seeded sample, then assign over every row, on synthetic unit vectors.

Run: python benchmarks/kmeans_scale.py [--rows 1000000] [--dim 384] [--k 100] [--train-sample 200000]
Target (1M x 384, k=100, 2 cores): fit + assign under 5 minutes, peak memory under 4 GB.
Prints a Markdown table; record it in benchmarks/RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import faiss
import numpy as np

from raysel.select.cluster import assign, kmeans_fit


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(rows: int, dim: int, centres: int, noise: float, seed: int, chunk: int = 65536) -> np.ndarray:
    """Unit vectors around `centres` random unit centres, built `chunk` rows at a time into one array."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        block = out[start : start + chunk]
        block[:] = c[rng.integers(0, centres, len(block))]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--train-sample", type=int, default=200_000)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--centres", type=int, default=1000, help="true centres the synthetic rows scatter around")
    p.add_argument("--noise", type=float, default=0.03, help="per-dimension Gaussian noise before normalizing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    start = time.perf_counter()
    x = synthetic(args.rows, args.dim, args.centres, args.noise, args.seed)
    gen_s, gen_rss = time.perf_counter() - start, peak_rss_mb()

    start = time.perf_counter()
    centroids = kmeans_fit(x, args.k, seed=args.seed, niter=args.niter, train_sample=args.train_sample)
    fit_s, fit_rss = time.perf_counter() - start, peak_rss_mb()

    start = time.perf_counter()
    labels, sim = assign(x, centroids)
    assign_s, assign_rss = time.perf_counter() - start, peak_rss_mb()

    sizes = np.bincount(labels, minlength=len(centroids))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}"
    )
    print(
        f"rows {args.rows:,} x dim {args.dim}, k {len(centroids)}, train_sample {min(args.train_sample, args.rows):,}, "
        f"niter {args.niter}; vectors {x.nbytes / 2**20:,.0f} MiB"
    )
    print()
    print("| step | wall s | peak RSS MiB (process, so far) |")
    print("|---|---:|---:|")
    print(f"| generate vectors | {gen_s:.1f} | {gen_rss:,.0f} |")
    print(f"| kmeans_fit | {fit_s:.1f} | {fit_rss:,.0f} |")
    print(f"| assign (all rows) | {assign_s:.1f} | {assign_rss:,.0f} |")
    print(f"| **fit + assign** | **{fit_s + assign_s:.1f}** | **{assign_rss:,.0f}** |")
    print()
    print(
        f"cluster sizes min {sizes.min():,} / median {int(np.median(sizes)):,} / max {sizes.max():,}; "
        f"mean cosine to centroid {float(sim.mean()):.4f}"
    )
    ok = fit_s + assign_s < 300 and assign_rss < 4096
    print(f"target (fit + assign < 300 s, peak RSS < 4096 MiB): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
