"""IFD scoring throughput: raysel's hf scorer vs the paper-style per-sample loop, same rows, same model, one run.

Run: python benchmarks/ifd_throughput.py [--rows 64] [--max-length 512] [--threads 2] [--device cpu]
Prints one JSON object; record it in benchmarks/RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raysel.backends.models import resolve_model
from raysel.config import ScoreConfig
from raysel.stages.score import IfdScoreStage
from raysel.templates import DIRECT_PREFIX, build_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"


def per_sample_loop(tok, model, rows: list[dict], max_length: int, device: str) -> tuple[np.ndarray, int]:
    """The released code's shape: one forward per text, no batching, full logits; loss vectorized."""

    def answer_loss(text: str, prompt: str, budget: int) -> tuple[float, int]:
        ids = tok(text)["input_ids"][:max_length]
        start = len(tok(prompt)["input_ids"])
        end = min(len(ids), start + budget)
        x = torch.tensor([ids[:end]], device=device)
        with torch.inference_mode():
            logits = model(x).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[start - 1 : end - 1], x[0, start:end])
        return nll.item(), end

    ifd, tokens = [], 0
    for r in rows:
        prompt = build_prompt("alpaca", r["instruction"], r["input"])
        cond, n1 = answer_loss(prompt + r["output"], prompt, max_length)
        budget = max_length - len(tok(prompt)["input_ids"])
        direct, n2 = answer_loss(DIRECT_PREFIX + r["output"], DIRECT_PREFIX, budget)
        ifd.append(cond / direct)
        tokens += n1 + n2
    return np.array(ifd), tokens


def ceiling(model, device: str, width: int, batch: int = 8, reps: int = 3) -> float:
    """Tokens/s of a large batched full forward: what the hardware gives this model at best."""
    x = torch.randint(0, model.config.vocab_size, (batch, width), device=device)
    with torch.inference_mode():
        model(x[:1, :64])  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
    return batch * width * reps / (time.perf_counter() - start)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def timed_stage(cfg: ScoreConfig, batch: dict) -> tuple[np.ndarray, float]:
    stage = IfdScoreStage(cfg)
    stage({k: v[:2] for k, v in batch.items()})  # warm-up
    start = time.perf_counter()
    out = stage(batch)
    return out["score_ifd"].astype(np.float64), time.perf_counter() - start


def ray_pipeline(args: argparse.Namespace, out: Path) -> tuple[np.ndarray, float]:
    """raysel as users run it: Ray Data, `actors` scoring actors of `threads // actors` threads each.

    The time is the score step's wall time, actor start and model loads included."""
    from raysel.config import load_config
    from raysel.driver import run

    overrides = {
        "data.input": str(DATA),
        "data.limit": args.rows,
        "output": str(out),
        "score.max_length": args.max_length,
        "score.batch_size": args.batch_size,
        "score.concurrency": args.actors,
        "score.num_cpus": 0.75,
        "score.threads": max(1, args.threads // args.actors),
    }
    result = run(load_config(None, overrides), select=False)
    import pyarrow.parquet as pq

    ifd = pq.read_table(out / "scores.parquet", columns=["score_ifd"])["score_ifd"].to_numpy()
    return ifd.astype(np.float64), float(result.manifest["timings_s"]["score"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--actors", type=int, default=2, help="Ray Data scoring actors for the pipeline run")
    p.add_argument("--batch-size", type=int, default=8, help="rows per actor call (and per block) in the pipeline")
    args = p.parse_args()
    if not DATA.is_file():
        sys.exit(f"skipped: {DATA} is absent")
    torch.set_num_threads(args.threads)
    rows = json.loads(DATA.read_text())[: args.rows]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in ("instruction", "input", "output")}
    cfg = ScoreConfig(model=args.model, max_length=args.max_length, threads=args.threads, device=args.device)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(args.device).eval()
    per_sample_loop(tok, model, rows[:2], args.max_length, args.device)  # warm-up
    start = time.perf_counter()
    base_ifd, tokens = per_sample_loop(tok, model, rows, args.max_length, args.device)
    base_s = time.perf_counter() - start
    peak = ceiling(model, args.device, args.max_length)
    del model

    fp32_ifd, fp32_s = timed_stage(cfg, batch)
    int8_ifd, int8_s = (None, None)
    if args.device == "cpu":
        int8_ifd, int8_s = timed_stage(ScoreConfig(**{**cfg.__dict__, "quantize": "int8"}), batch)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ray_ifd, ray_s = ray_pipeline(args, Path(tmp) / "run")
    n = len(rows)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "model": args.model,
        "rows": n,
        "max_length": args.max_length,
        "tokens_per_pass": tokens,
        "ceiling_tok_s": round(peak, 1),
        "per_sample": {"rows_s": round(n / base_s, 2), "tok_s": round(tokens / base_s, 1)},
        "raysel_fp32": {
            "rows_s": round(n / fp32_s, 2),
            "tok_s": round(tokens / fp32_s, 1),
            "speedup": round(base_s / fp32_s, 2),
            "of_ceiling": round(tokens / fp32_s / peak, 3),
            "max_abs_ifd_diff": float(np.nanmax(np.abs(fp32_ifd - base_ifd))),
        },
    }
    result["raysel_ray_data"] = {
        "actors": args.actors,
        "batch_size": args.batch_size,
        "rows_s": round(n / ray_s, 2),
        "tok_s": round(tokens / ray_s, 1),
        "speedup": round(base_s / ray_s, 2),
        "max_abs_ifd_diff": float(np.nanmax(np.abs(ray_ifd - base_ifd))),
    }
    if int8_s is not None:
        result["raysel_int8"] = {
            "rows_s": round(n / int8_s, 2),
            "speedup": round(base_s / int8_s, 2),
            "spearman_vs_fp32": round(spearman(int8_ifd, fp32_ifd), 4),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
