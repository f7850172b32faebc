"""Embedding throughput: raysel's embed backend and stage vs sentence-transformers' own encode loop, same rows.

Run: python benchmarks/embed_throughput.py [--rows 1000] [--column instruction_input] [--threads 2]
Prints one JSON object; record it in benchmarks/RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raysel.config import EmbedConfig, load_config
from raysel.stages.embed import embed_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--column", default="instruction_input")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Data run")
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"{DATA} is absent: nothing to measure", file=sys.stderr)
        return 0
    import torch
    from sentence_transformers import SentenceTransformer

    from raysel.backends.hf_embed import HfEmbedder
    from raysel.backends.models import minilm_dir

    rows = json.loads(DATA.read_text())[: args.rows]
    cfg = EmbedConfig(column=args.column, num_cpus=args.threads)
    texts = [embed_text(cfg, r["instruction"], r.get("input", ""), r["output"]) for r in rows]
    result: dict = {"rows": len(texts), "column": args.column, "machine": platform.processor() or platform.machine()}

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.encode(texts[:32])  # warm-up
    ref, t_st = _timed(lambda: st.encode(texts, batch_size=32, normalize_embeddings=True))
    result["sentence_transformers_encode"] = {"s": round(t_st, 2), "rows_per_s": round(len(texts) / t_st, 1)}

    emb = HfEmbedder(cfg)
    emb.embed(texts[:32])
    out, t_hf = _timed(lambda: emb.embed(texts))
    result["raysel_hf_in_process"] = {
        "s": round(t_hf, 2),
        "rows_per_s": round(len(texts) / t_hf, 1),
        "speedup": round(t_st / t_hf, 2),
        "max_abs_diff_vs_st": float(np.abs(out.vectors - ref).max()),
    }
    if not args.no_ray:
        result["raysel_ray_data"] = _ray_run(args, len(texts), t_st)
    print(json.dumps(result, indent=2))
    return 0


def _ray_run(args, n: int, t_st: float) -> dict:
    """The embed step of a run (near-duplicate pass), actor start and model loads included."""
    from raysel.driver import run

    with tempfile.TemporaryDirectory() as tmp:
        values = {
            "output": tmp,
            "data.input": str(DATA),
            "data.limit": args.rows,
            "data.near_dup": 0.95,
            "embed.column": args.column,
            "embed.concurrency": args.threads,
            "embed.num_cpus": 0.75,  # 2 x 0.75 + the light read tasks fit 2 CPUs
            "embed.batch_size": 128,
            "score.backend": "fake",
        }
        res = run(load_config(None, values), select=False)
        t = res.manifest["timings_s"]["embed"]
    return {"s": t, "rows_per_s": round(n / t, 1), "speedup": round(t_st / t, 2), "actors": args.threads}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
