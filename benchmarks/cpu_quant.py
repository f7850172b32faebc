"""Approximate CPU scoring: speed and ranking agreement of raysel.backends.quant modes against fp32 IFD.

Run: python benchmarks/cpu_quant.py [--rows 64] [--modes int8 smoothquant:alpha=0.5] [--rounds 2 --time-rows 32]

Every mode scores the same rows through the same code path (IfdScoreStage, hf scorer, 2 threads side by
side); only stage.scorer.model is swapped. Accuracy: one pass over --rows rows per mode. Speed: --rounds
rounds over the first --time-rows rows, fp32 and every mode alternating within each round (the machine is
shared: ratios within a run matter, not absolute numbers); speedup = median over rounds of fp32 time / mode
time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from raysel.backends.quant import calibration_ids, quantize
from raysel.config import ScoreConfig
from raysel.stages.score import IfdScoreStage
from raysel.templates import build_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"


def columns(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in ("instruction", "input", "output")}


def run(stage: IfdScoreStage, model: torch.nn.Module, batch: dict) -> tuple[np.ndarray, float]:
    stage.scorer.model = model
    start = time.perf_counter()
    out = stage(batch)
    return out["score_ifd"].astype(np.float64), time.perf_counter() - start


def agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    ok = np.isfinite(ref) & np.isfinite(got)
    a, b = ref[ok], got[ok]
    k = max(1, round(0.1 * len(a)))
    top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
    return {
        "scored": int(ok.sum()),
        "spearman": round(float(stats.spearmanr(a, b).statistic), 4),
        "kendall": round(float(stats.kendalltau(a, b).statistic), 4),
        "top10pct_overlap": round(len(top_a & top_b) / k, 3),
        "max_abs_ifd_diff": round(float(np.abs(a - b).max()), 4),
        "mean_abs_ifd_diff": round(float(np.abs(a - b).mean()), 4),
        "nan_mismatch": int((np.isfinite(ref) != np.isfinite(got)).sum()),
    }


def mode_entry(name: str, ref: str, args, full_s: dict, times: dict, ifd: dict) -> dict:
    """One mode's figures against the reference mode `ref`: rows/s and speedup of the full pass and of the
    alternating rounds (median), and its agreement with the reference's IFD."""
    entry = {
        "rows_s_full_pass": round(args.rows / full_s[name], 2),
        "speedup_full_pass": round(full_s[ref] / full_s[name], 2),
    }
    if args.rounds:
        entry["rows_s_rounds"] = round(args.time_rows / statistics.median(times[name]), 2)
        ratios = [f / t for f, t in zip(times[ref], times[name], strict=True)]
        entry["speedup_rounds"] = [round(r, 2) for r in ratios]
        entry["speedup_median"] = round(statistics.median(ratios), 2)
    if name != ref:
        entry.update(agreement(ifd[ref], ifd[name]))
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64, help="rows for the agreement figures (first N of the file)")
    p.add_argument("--modes", nargs="+", default=["int8", "int8-token", "smoothquant", "smoothquant-pt"])
    p.add_argument("--calib", default="builtin", help="'builtin' (quant.CALIBRATION_TEXT) or 'data:K' (K rows "
                   "from the end of the file, disjoint from the scored rows)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--time-rows", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2")
    args = p.parse_args()
    if not DATA.is_file():
        sys.exit(f"skipped: {DATA} is absent")
    data = json.loads(DATA.read_text())
    rows = data[: args.rows]
    batch, timing = columns(rows), columns(rows[: args.time_rows])
    stage = IfdScoreStage(ScoreConfig(model=args.model, max_length=args.max_length, threads=args.threads))
    fp32 = stage.scorer.model
    tok = stage.scorer.tokenizer
    if args.calib == "builtin":
        calib = calibration_ids(tok)
    else:
        k = int(args.calib.split(":")[1])
        calib = [
            tok(build_prompt("alpaca", r["instruction"], r["input"]) + r["output"])["input_ids"][: args.max_length]
            for r in data[-k:]
        ]
    models = {"fp32": fp32}
    for mode in args.modes:
        models[mode] = quantize(fp32, mode, calibration=calib)
    warm = columns(rows[:2])
    for m in models.values():
        run(stage, m, warm)

    ifd, full_s = {}, {}
    for name, m in models.items():
        ifd[name], full_s[name] = run(stage, m, batch)
        print(f"{name}: {args.rows / full_s[name]:.2f} rows/s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            times[name].append(run(stage, m, timing)[1])

    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "model": args.model,
        "rows": args.rows,
        "time_rows": args.time_rows,
        "rounds": args.rounds,
        "max_length": args.max_length,
        "calibration": args.calib,
        "modes": {},
    }
    for name in models:
        result["modes"][name] = mode_entry(name, "fp32", args, full_s, times, ifd)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
