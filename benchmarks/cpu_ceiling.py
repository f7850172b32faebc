"""This machine's fp32 matmul ceiling at SmolLM2-135M's shapes: what an exact (fp32) CPU scorer can reach.

A forward of SmolLM2-135M is ~81% matmuls (torch.profiler on the hf scorer); if these GEMMs already run near the
figures below, no exact scorer is much faster on this machine, and a speedup must come from doing less work.

    .venv/bin/python benchmarks/cpu_ceiling.py
"""

from __future__ import annotations

import argparse
import time

import torch

# (tokens, in, out): q/o projections, MLP up/gate and down, the vocabulary head on answer tokens
SHAPES = [(512, 576, 576), (512, 576, 1536), (512, 1536, 576), (256, 576, 49152)]


def gflops(m: int, k: int, n: int, repeats: int) -> float:
    a, w = torch.randn(m, k), torch.randn(n, k)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(a, w)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print("threads | tokens x in x out | GFLOP/s")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for m, k, n in SHAPES:
            print(f"{threads} | {m} x {k} x {n} | {gflops(m, k, n, args.repeats):.1f}")


if __name__ == "__main__":
    main()
