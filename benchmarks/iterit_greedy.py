"""IterIT greedy selection at scale: raysel's tfidf_matrix + greedy_select vs the authors' loop (greedy_reference).

Run: python benchmarks/iterit_greedy.py [--sizes 10000,100000,1000000] [--ratio 0.05] [--seed 0]
         [--reference-picks 50] [--reference-full-max 10000] [--reference-sklearn-max 100000]
Target (1M responses, k = 5%, 2 cores): tfidf_matrix + greedy_select under 10 minutes and 8 GB.

Synthetic responses, the same for a seed at every size (a size's corpus is a prefix of a larger one's): words
drawn from a Zipf-like law over a 50K-word vocabulary (p ~ 1/rank^1.1), 40-120 words each, followed by
"<|im_end|>" (IterIT fits TF-IDF on output + EOS); IFD scores uniform(0.2, 1.0), float32.

Every measurement runs in a fresh child process (one at a time), which generates its corpus, records its RSS
(corpus + imports: the baseline), resets the kernel's high-water mark (/proc/self/clear_refs) and runs:
- raysel: tfidf_matrix, then greedy_select for k picks; wall and CPU time of each, the child's peak RSS over
  its whole life (ru_maxrss) and the selection's own increment (high-water mark during selection - baseline);
- the reference, greedy_reference (sklearn TfidfVectorizer(ngram_range=(1, 3)), CSC, per pick every row sum
  recomputed and the pick's columns rescaled one by one: O(k x nnz)):
  * N <= --reference-full-max: all k picks, measured; its picks are compared with greedy_select's;
  * N <= --reference-sklearn-max: the first --reference-picks picks; sklearn's fit_transform and .tocsc() are
    timed separately (a wrapper around fit_transform) and only the pick loop is extrapolated to k picks,
    linearly (every pick costs O(nnz));
  * larger N (sklearn's n-gram vocabulary dict would not fit in memory): the authors' pick loop, copied
    verbatim from greedy_reference, on raysel's TF-IDF matrix in CSC form (same weights, nnz and column
    lengths, columns permuted) for --reference-picks picks, extrapolated to k; sklearn's fit time is
    extrapolated linearly in N from the largest size where it ran.
Prints Markdown tables; record them in benchmarks/RESULTS.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

VOCAB = 50_000
ZIPF_S = 1.1
MIN_WORDS, MAX_WORDS = 40, 120
EOS = "<|im_end|>"
DECAY = 0.1
TARGET_S, TARGET_MIB = 600.0, 8 * 1024.0


# ---------------------------------------------------------------------------------------------------- corpus


def synthetic_corpus(n: int, seed: int, chunk: int = 20_000) -> tuple[list[str], np.ndarray]:
    """`n` responses + EOS and their IFD scores; the first m of n rows equal the corpus of size m (same seed)."""
    vocab_ss, ifd_ss, len_ss, word_ss = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(vocab_ss)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    seen: dict[str, None] = {}
    while len(seen) < VOCAB:  # distinct lower-case pseudo-words of 2-10 letters, shortest = most frequent
        for size in rng.integers(2, 11, VOCAB):
            seen.setdefault("".join(letters[rng.integers(0, 26, size)]), None)
    vocab = sorted(list(seen)[:VOCAB], key=len)
    p = 1.0 / np.arange(1, VOCAB + 1, dtype=np.float64) ** ZIPF_S
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    ifd = np.random.default_rng(ifd_ss).uniform(0.2, 1.0, n).astype(np.float32)
    lens = np.random.default_rng(len_ss).integers(MIN_WORDS, MAX_WORDS + 1, n)
    word_rng = np.random.default_rng(word_ss)
    texts: list[str] = []
    for first in range(0, n, chunk):
        part = lens[first : first + chunk]
        words = [vocab[i] for i in np.searchsorted(cdf, word_rng.random(int(part.sum())), side="right").tolist()]
        at = 0
        for m in part.tolist():
            texts.append(" ".join(words[at : at + m]) + EOS)
            at += m
    return texts, ifd


# ---------------------------------------------------------------------------------------------------- memory


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS; False where the kernel won't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def lifetime_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- children


def _baseline(n: int, seed: int) -> tuple[list[str], np.ndarray, dict]:
    start = time.perf_counter()
    texts, ifd = synthetic_corpus(n, seed)
    gen_s = time.perf_counter() - start
    gc.collect()
    info = {"gen_s": gen_s, "baseline_mib": _status_mib("VmRSS"), "gen_peak_mib": lifetime_peak_mib()}
    info["hwm_reset"] = reset_peak()
    return texts, ifd, info


def child_raysel(n: int, k: int, seed: int, keep_picks: int) -> dict:
    from raysel.select.greedy import greedy_select, tfidf_matrix

    texts, ifd, out = _baseline(n, seed)
    w0, c0 = time.perf_counter(), time.process_time()
    matrix = tfidf_matrix(texts)
    w1, c1 = time.perf_counter(), time.process_time()
    picks = greedy_select(ifd, matrix, k, DECAY)
    w2, c2 = time.perf_counter(), time.process_time()
    out.update(
        tfidf_s=w1 - w0,
        greedy_s=w2 - w1,
        tfidf_cpu_s=c1 - c0,
        greedy_cpu_s=c2 - c1,
        nnz=int(matrix.nnz),
        n_cols=int(matrix.shape[1]),
        matrix_mib=(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 2**20,
        n_picks=len(picks),
        picks=picks[:keep_picks].tolist(),
        peak_mib=lifetime_peak_mib(),
        selection_hwm_mib=_status_mib("VmHWM") if out["hwm_reset"] else lifetime_peak_mib(),
    )
    return out


def authors_loop(scores: np.ndarray, matrix, k: int, decay: float = DECAY) -> list[int]:
    """The authors' pick loop (raysel.select.greedy.reference_loop) on a given CSC matrix (where sklearn's
    TF-IDF won't fit)."""
    from raysel.select.greedy import reference_loop

    return reference_loop(scores, matrix, k, decay).tolist()


def child_reference(n: int, picks: int, seed: int, use_sklearn: bool) -> dict:
    texts, ifd, out = _baseline(n, seed)
    if use_sklearn:
        # Time sklearn's fit and the CSC conversion inside greedy_reference: the wrapper returns the matrix
        # already in CSC form (timed), so greedy_reference's own .tocsc() is a no-op and the rest is the loop.
        from sklearn.feature_extraction.text import TfidfVectorizer

        from raysel.select.greedy import greedy_reference

        original = TfidfVectorizer.fit_transform
        setup: dict = {}

        def timed_fit_transform(self, raw_documents, y=None):
            t0 = time.perf_counter()
            m = original(self, raw_documents, y)
            t1 = time.perf_counter()
            c = m.tocsc()
            setup.update(fit_s=t1 - t0, tocsc_s=time.perf_counter() - t1, nnz=int(m.nnz), n_cols=int(m.shape[1]))
            return c

        TfidfVectorizer.fit_transform = timed_fit_transform
        start = time.perf_counter()
        got = greedy_reference(ifd, texts, picks, DECAY)
        total = time.perf_counter() - start
        TfidfVectorizer.fit_transform = original
        out.update(setup, loop_s=total - setup["fit_s"] - setup["tocsc_s"], how="sklearn")
    else:
        from raysel.select.greedy import tfidf_matrix

        m = tfidf_matrix(texts)
        t0 = time.perf_counter()
        c = m.tocsc()
        tocsc_s = time.perf_counter() - t0
        nnz = int(m.nnz)
        del m
        gc.collect()
        start = time.perf_counter()
        got = authors_loop(ifd.astype(np.float64), c, picks, DECAY)
        out.update(loop_s=time.perf_counter() - start, tocsc_s=tocsc_s, nnz=nnz, how="loop on raysel matrix")
    out.update(n_picks=len(got), picks=[int(i) for i in got], peak_mib=lifetime_peak_mib())
    out["selection_hwm_mib"] = _status_mib("VmHWM") if out["hwm_reset"] else lifetime_peak_mib()
    return out


def run_child(*args: str) -> dict:
    """Run this script as a fresh process with `args`; its result comes back as JSON through a temp file."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, os.path.abspath(__file__), *args, "--child-out", f.name], check=True)
        with open(f.name) as g:
            return json.load(g)


# ---------------------------------------------------------------------------------------------------- driver


def fmt_s(s: float, unit: str = "") -> str:
    """Seconds for a table cell (unit "") or a sentence (unit " s"); hours added from an hour up."""
    if not math.isfinite(s):
        return "n/a"
    if s >= 3600:
        return f"{s:,.0f}{unit} ({s / 3600:.1f} h)"
    return (f"{s:,.1f}" if s >= 10 else f"{s:.2f}") + unit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of responses")
    p.add_argument("--ratio", type=float, default=0.05, help="k = round(ratio x N) picks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-picks", type=int, default=50, help="picks the reference runs above the full size")
    p.add_argument("--reference-full-max", type=int, default=10_000, help="largest N the reference runs in full")
    p.add_argument(
        "--reference-sklearn-max",
        type=int,
        default=100_000,
        help="largest N sklearn's TF-IDF is fitted at; above, the loop runs on raysel's matrix",
    )
    p.add_argument("--no-reference", action="store_true", help="time raysel only")
    p.add_argument("--child", choices=["raysel", "reference", "reference-loop"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--keep-picks", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        if args.child == "raysel":
            res = child_raysel(args.n, args.k, args.seed, args.keep_picks)
        else:
            res = child_reference(args.n, args.k, args.seed, use_sklearn=args.child == "reference")
        with open(args.child_out, "w") as f:
            json.dump(res, f)
        return

    import scipy
    import sklearn

    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, sklearn {sklearn.__version__}"
    )
    print(
        f"corpus: Zipf s={ZIPF_S} over {VOCAB:,} words, {MIN_WORDS}-{MAX_WORDS} words + {EOS!r}, "
        f"IFD uniform(0.2, 1.0) float32, seed {args.seed}; k = {args.ratio:g} x N, decay {DECAY}",
        flush=True,
    )
    rows = []
    sklearn_fit: tuple[int, float] | None = None  # (N, fit s) of the largest size sklearn ran at
    for n in sizes:
        k = round(args.ratio * n)
        full = n <= args.reference_full_max
        keep = k if full else args.reference_picks
        print(f"\nN={n:,} k={k:,}: raysel ...", flush=True)
        r = run_child(
            "--child", "raysel", "--n", str(n), "--k", str(k), "--seed", str(args.seed), "--keep-picks", str(keep)
        )
        r["total_s"] = r["tfidf_s"] + r["greedy_s"]
        print(
            f"  gen {r['gen_s']:.1f} s, tfidf {r['tfidf_s']:.1f} s (cpu {r['tfidf_cpu_s']:.1f}), greedy "
            f"{r['greedy_s']:.1f} s (cpu {r['greedy_cpu_s']:.1f}), nnz {r['nnz']:,}, cols {r['n_cols']:,}, "
            f"peak {r['peak_mib']:,.0f} MiB, baseline {r['baseline_mib']:,.0f} MiB",
            flush=True,
        )
        ref = None
        if not args.no_reference:
            ref_picks = k if full else min(args.reference_picks, k)
            use_sklearn = n <= args.reference_sklearn_max
            print(f"  reference ({'all' if full else ref_picks} picks, {'sklearn' if use_sklearn else 'loop'}) ...")
            ref = run_child(
                "--child", "reference" if use_sklearn else "reference-loop",
                "--n", str(n), "--k", str(ref_picks), "--seed", str(args.seed),
            )  # fmt: skip
            scale = k / max(ref["n_picks"], 1)
            ref["loop_k_s"] = ref["loop_s"] * scale
            if use_sklearn:
                sklearn_fit = (n, ref["fit_s"])
                ref["fit_k_s"], ref["fit_note"] = ref["fit_s"], "measured"
            elif sklearn_fit:
                ref["fit_k_s"] = sklearn_fit[1] * n / sklearn_fit[0]
                ref["fit_note"] = f"extrapolated x{n / sklearn_fit[0]:g} from N={sklearn_fit[0]:,}"
            else:
                ref["fit_k_s"], ref["fit_note"] = float("nan"), "not run"
            ref["total_s"] = ref["fit_k_s"] + ref["tocsc_s"] + ref["loop_k_s"]
            ref["measured"] = full and use_sklearn
            ref["same"] = ref["picks"] == r["picks"][: len(ref["picks"])]
            print(
                f"  reference: sklearn fit {fmt_s(ref['fit_k_s'], ' s')} ({ref['fit_note']}), tocsc "
                f"{ref['tocsc_s']:.1f} s, {ref['n_picks']:,} picks in {ref['loop_s']:.1f} s"
                + ("" if full else f" -> {k:,} picks extrapolated {fmt_s(ref['loop_k_s'], ' s')}")
                + f"; peak {ref['peak_mib']:,.0f} MiB; picks equal greedy_select's: {ref['same']}",
                flush=True,
            )
        rows.append((n, k, r, ref))

    print()
    print(
        "| N | k | nnz | tfidf s | greedy s | total s | rows/s | peak RSS MiB | increment MiB | reference s | speedup |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for n, k, r, ref in rows:
        inc = r["selection_hwm_mib"] - r["baseline_mib"]
        if ref is None:
            ref_cell, speed = "-", "-"
        else:
            how = "measured" if ref["measured"] else f"extrapolated from {ref['n_picks']} picks"
            if ref["how"] != "sklearn":
                how += ", sklearn fit extrapolated" if math.isfinite(ref["fit_k_s"]) else ", sklearn fit not run"
            ref_cell = f"{fmt_s(ref['total_s'])} ({how})"
            speed = f"{ref['total_s'] / r['total_s']:,.0f}x" if math.isfinite(ref["total_s"]) else "n/a"
        print(
            f"| {n:,} | {k:,} | {r['nnz']:,} | {r['tfidf_s']:.1f} | {r['greedy_s']:.1f} | {r['total_s']:.1f} "
            f"| {n / r['total_s']:,.0f} | {r['peak_mib']:,.0f} | {inc:,.0f} | {ref_cell} | {speed} |"
        )
    if any(ref for *_, ref in rows):
        print()
        print("| N | reference: sklearn fit s | tocsc s | picks run | loop s (run) | loop s (k picks) | peak RSS MiB |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for n, _, _, ref in rows:
            if ref:
                print(
                    f"| {n:,} | {fmt_s(ref['fit_k_s'])} ({ref['fit_note']}) | {ref['tocsc_s']:.1f} "
                    f"| {ref['n_picks']:,} | {ref['loop_s']:.1f} | {fmt_s(ref['loop_k_s'])} | {ref['peak_mib']:,.0f} |"
                )
    print()
    print("CPU share of the raysel child (cpu s / wall s): " + ", ".join(
        f"N={n:,}: tfidf {r['tfidf_cpu_s'] / r['tfidf_s']:.0%}, greedy {r['greedy_cpu_s'] / r['greedy_s']:.0%}"
        for n, _, r, _ in rows
    ))  # fmt: skip
    if len(rows) > 1:
        ns = np.log([n for n, *_ in rows])
        for key in ("tfidf_s", "greedy_s", "total_s"):
            ts = np.log([r[key] for _, _, r, _ in rows])
            steps = ", ".join(
                f"{rows[i][0]:,}->{rows[i + 1][0]:,}: {(ts[i + 1] - ts[i]) / (ns[i + 1] - ns[i]):.2f}"
                for i in range(len(rows) - 1)
            )
            print(f"growth exponent b (time ~ N^b), {key[:-2]}: fit {np.polyfit(ns, ts, 1)[0]:.2f} ({steps})")
    for n, k, _, ref in rows:
        if ref:
            what = "all" if len(ref["picks"]) == k else f"first {len(ref['picks'])}"
            src = "greedy_reference" if ref["how"] == "sklearn" else "authors' loop on raysel's matrix"
            print(f"N={n:,}: greedy_select picks == {src} picks ({what}): {ref['same']}")
    big = [row for row in rows if row[0] == 1_000_000]
    for n, _, r, _ in big:
        ok = r["total_s"] < TARGET_S and r["peak_mib"] < TARGET_MIB
        print(
            f"target at N={n:,} (total < {TARGET_S:.0f} s, peak RSS < {TARGET_MIB:,.0f} MiB): "
            f"{'met' if ok else 'MISSED'} ({r['total_s']:.0f} s, {r['peak_mib']:,.0f} MiB peak, "
            f"{r['selection_hwm_mib'] - r['baseline_mib']:,.0f} MiB of it the selection's)"
        )


if __name__ == "__main__":
    main()
