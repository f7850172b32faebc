"""Driver memory vs corpus size: `raysel select` (fake backend) on synthetic 100K and 1M-row corpora.

Run: .venv/bin/python benchmarks/driver_memory.py   # --rows 100000,1000000 --workdir /tmp/raysel-bench

Each size runs `raysel select --input CORPUS --output RUN --backend fake --ratio 0.1 --overwrite` (plus the
--score.* resource flags below) as a child process, one at a time, and samples the child's /proc status every
0.5 s. Target (DESIGN.md section 7): the driver's peak grows with the corpus only by ids + scores.
Prints a Markdown table, one JSON line per size and the growth per row; record them in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from raysel import schema as S

REPO = Path(__file__).resolve().parent.parent
WORDS = 5000
"""Synthetic vocabulary size: words are 3-9 lowercase letters."""
STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
ID_AND_SCORE_COLUMNS = (S.ID, S.SOURCE, S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD, S.PPL_COND, S.PPL_DIRECT,
                        S.SCORE_IFD_PPL, S.N_ANSWER_TOKENS)  # fmt: skip
"""What the driver is allowed to hold per row: the id, the row's source (file:line), the scores."""


def _vocab(seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(WORDS)]


def write_corpus(path: Path, rows: int, seed: int) -> dict[str, float]:
    """Stream `rows` distinct Alpaca rows (instruction / input / output, ~300-600 text bytes) into `path`.

    Deterministic for a seed; the row number in the instruction keeps every row distinct. Returns the
    corpus's size figures, also kept beside it in `<path>.meta.json`.
    """
    vocab, rng = _vocab(seed), random.Random(seed + 1)
    tmp, text_bytes = path.with_name(f".{path.name}.tmp"), 0
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(rows):
            instruction = f"Task {i}: " + " ".join(rng.choices(vocab, k=rng.randint(6, 14))) + "?"
            context = " ".join(rng.choices(vocab, k=rng.randint(5, 25))) if rng.random() < 0.4 else ""
            output = " ".join(rng.choices(vocab, k=rng.randint(40, 75))) + "."
            text_bytes += len(instruction) + len(context) + len(output)
            f.write(json.dumps({"instruction": instruction, "input": context, "output": output}) + "\n")
    tmp.replace(path)
    meta = {"rows": rows, "seed": seed, "text_bytes": text_bytes, "file_bytes": path.stat().st_size}
    Path(f"{path}.meta.json").write_text(json.dumps(meta))
    return meta


def corpus(workdir: Path, rows: int, seed: int) -> tuple[Path, dict[str, float]]:
    """The cached corpus of `rows` rows (written first when missing or from another seed)."""
    path = workdir / f"corpus_{rows}.jsonl"
    meta_path = Path(f"{path}.meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("seed") == seed and meta.get("file_bytes") == path.stat().st_size:
            return path, meta
    start = time.perf_counter()
    meta = write_corpus(path, rows, seed)
    print(f"wrote {path} ({meta['file_bytes'] / 2**20:,.0f} MiB) in {time.perf_counter() - start:.1f} s", flush=True)
    return path, meta


def proc_status(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of `pid` in KiB (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_KEYS:
            out[key] = int(value.split()[0])
    return out


def run_once(args: argparse.Namespace, rows: int) -> dict:
    """One `raysel select` child on the `rows` corpus: wall time, RSS samples per phase, manifest figures."""
    path, meta = corpus(args.workdir, rows, args.seed)
    out = args.workdir / f"run_{rows}"
    cmd = [str(REPO / ".venv/bin/raysel"), "select", "--input", str(path), "--output", str(out),
           "--backend", "fake", "--ratio", "0.1", "--overwrite", *args.flags.split()]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    log = args.workdir / f"run_{rows}.log"
    print(f"$ {' '.join(cmd)}   (log {log})", flush=True)
    samples: list[tuple[float, dict[str, int]]] = []
    marks: list[tuple[float, str]] = []  # (time, step) when the driver reports a step done
    start = time.perf_counter()
    with open(log, "w") as logf:
        child = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def read_output() -> None:
            for line in child.stdout:
                logf.write(line)
                if line.startswith("[raysel] step "):
                    marks.append((time.perf_counter() - start, line.split()[2].rstrip(":")))

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        while child.poll() is None:
            status = proc_status(child.pid)
            if status:
                samples.append((time.perf_counter() - start, status))
            time.sleep(args.interval)
        wall = time.perf_counter() - start
        reader.join()
    if child.returncode != 0:
        sys.exit(f"raysel exited {child.returncode}; see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    return summarize(rows, meta, out, manifest, samples, marks, wall)


def summarize(
    rows: int,
    meta: dict[str, float],
    out: Path,
    manifest: dict,
    samples: list[tuple[float, dict[str, int]]],
    marks: list[tuple[float, str]],
    wall: float,
) -> dict:
    """Peaks (MiB) over the whole run and per phase (start -> ingest done -> score done -> exit)."""

    def peak(key: str, lo: float = 0.0, hi: float = float("inf")) -> float:
        values = [s[key] for t, s in samples if lo <= t < hi and key in s]
        return round(max(values, default=0) / 1024, 1)

    done = {name: t for t, name in marks}
    bounds = [("ingest", 0.0, done.get("ingest", 0.0)), ("score", done.get("ingest", 0.0), done.get("score", 0.0)),
              ("write+report", done.get("score", 0.0), float("inf"))]  # fmt: skip
    scores = pq.read_table(out / "scores.parquet", columns=list(ID_AND_SCORE_COLUMNS))
    return {
        "rows": rows,
        "corpus_mib": round(meta["file_bytes"] / 2**20, 1),
        "text_bytes_per_row": round(meta["text_bytes"] / rows, 1),
        "file_bytes_per_row": round(meta["file_bytes"] / rows, 1),
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall, 1),
        "timings_s": manifest["timings_s"],
        "selected": manifest["counts"]["selected"],
        "driver_peak_rss_mb": manifest["driver_peak_rss_mb"],  # ru_maxrss, recorded before report.html
        "sampled_peak_mib": {k: peak(k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")},
        "last_vmhwm_mib": peak("VmHWM"),
        "phase_peak_mib": {
            name: {k: peak(k, lo, hi) for k in ("VmRSS", "RssAnon", "RssShmem")} for name, lo, hi in bounds
        },
        "ids_scores_bytes_per_row": round(scores.nbytes / rows, 1),
        "samples": len(samples),
    }


def print_table(results: list[dict]) -> None:
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GiB")
    print(
        "\n| rows | corpus MiB | text B/row | wall s | rows/s | ingest s | score s | write s "
        "| driver peak RSS MiB (ru_maxrss) | sampled peak RSS / anon / shmem MiB | ids+scores B/row |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        t, s = r["timings_s"], r["sampled_peak_mib"]
        print(f"| {r['rows']:,} | {r['corpus_mib']:,.0f} | {r['text_bytes_per_row']:.0f} | {r['wall_s']:.0f} "
              f"| {r['rows_per_s']:,.0f} | {t.get('ingest', '-')} | {t.get('score', '-')} | {t.get('write', '-')} "
              f"| {r['driver_peak_rss_mb']:,.0f} | {s['VmRSS']:,.0f} / {s['RssAnon']:,.0f} / {s['RssShmem']:,.0f} "
              f"| {r['ids_scores_bytes_per_row']:.0f} |")  # fmt: skip


def print_growth(lo: dict, hi: dict) -> None:
    """Bytes of driver memory per row added between the smallest and the largest corpus."""
    n = hi["rows"] - lo["rows"]

    def per_row(a: float, b: float) -> str:
        return f"{(b - a) * 2**20 / n:,.0f}"

    print(f"\ngrowth {lo['rows']:,} -> {hi['rows']:,} rows, bytes per added row:")
    print(f"  driver peak RSS (ru_maxrss):     {per_row(lo['driver_peak_rss_mb'], hi['driver_peak_rss_mb'])}")
    for key in ("VmRSS", "RssAnon", "RssShmem"):
        print(f"  sampled peak {key:<9}           {per_row(lo['sampled_peak_mib'][key], hi['sampled_peak_mib'][key])}")
    for phase, peaks in lo["phase_peak_mib"].items():
        for key in ("RssAnon", "RssShmem"):
            print(f"  peak {key:<8} in {phase:<13}   {per_row(peaks[key], hi['phase_peak_mib'][phase][key])}")
    print(f"  ids + scores in Arrow:           {hi['ids_scores_bytes_per_row']:.0f}")
    print(f"  corpus text (instruction + input + output): {hi['text_bytes_per_row']:.0f}; "
          f"JSONL line: {hi['file_bytes_per_row']:.0f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="100000,1000000", help="comma-separated corpus sizes, run one at a time")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/raysel-bench"), help="corpora and runs (cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between /proc samples")
    p.add_argument(
        "--flags",
        default="--score.batch_size 512 --score.concurrency 2 --score.num_cpus 0.75",
        help="extra raysel flags (2 actors x 0.75 CPU leave room for the 0.25-CPU read tasks on 2 cores)",
    )
    p.add_argument("--keep", action="store_true", help="keep each run directory (default: delete after measuring)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        res = run_once(args, rows)
        print(json.dumps(res), flush=True)
        results.append(res)
        if not args.keep:
            shutil.rmtree(args.workdir / f"run_{rows}")
    print_table(results)
    if len(results) >= 2:
        print_growth(results[0], results[-1])


if __name__ == "__main__":
    main()
