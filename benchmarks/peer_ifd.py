"""Peer benchmark: raysel's IFD scoring against data-juicer's instruction_following_difficulty_filter, same rows.

Run: python benchmarks/peer_ifd.py [--rows 160,1000] [--repeats 2] [--reference-rows 160] [--json out.json]

Both tools run as users run them, one subprocess each, alternating (raysel, data-juicer, raysel, ...), on
the first N rows of alpaca_gpt4_1k.json with the same local HF model directory (SmolLM2-135M-Instruct,
fp32): `raysel score ifd` with its defaults, and `dj-process` with the op's defaults except the model, the
documented query/response templates and the Cherry keep rule (IFD <= 1). data-juicer is installed on
first use into its own virtualenv (benchmarks/.venv-dj; CPU torch first). Per run: whole-process wall
time, the scoring step's time (raysel: manifest timings_s.score; data-juicer: its log's "OP [...] Done in"),
and the peak summed RSS (and PSS) of the process tree. Both tools' IFD is compared with the paper-shaped
per-sample loop of benchmarks/ifd_throughput.py (Spearman), computed outside the timed runs.
Prints one JSON object and a markdown table; record them in benchmarks/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_gpt4_1k.json"
DJ_VERSION = "1.6.1"
TORCH_CPU = "torch==2.13.0"  # the CPU wheel on this project's machines; installed first so nothing pulls CUDA
# data-juicer's `generic` extra is accelerate, torch==2.8.0, transformers==4.57.1; its torch pin is replaced by
# the CPU torch and its transformers pin by raysel's own version: transformers 4.x cannot read the model
# directory raysel writes (tokenizer_class TokenizersBackend; rope_parameters, so it would silently fall back
# to rope_theta 10000 instead of SmolLM2's 100000), and the same version keeps the model code identical.
# aiohttp: data_juicer.utils.file_utils imports it, undeclared; ray: dj-process installs it with uv at its first
# start when it is missing (its LazyLoader), which must not land in a timed run.
DJ_EXTRA = ["accelerate", "aiohttp", "ray"]
OP = "instruction_following_difficulty_filter"
# The op's documented templates: docs/operators/filter/instruction_following_difficulty_filter.md and
# tests/ops/filter/test_instruction_following_difficulty_filter.py use these (the op's own defaults are
# "" and "{text}"). Alpaca rows map to text = instruction (+ "\n" + input when there is one), answer = output.
QUERY_TEMPLATE = "Question: {text}"
RESPONSE_TEMPLATE = "Answer: {answer}"
TARGETS = {160: 1.3, 1000: 1.5}  # end-to-end speedup, raysel defaults vs data-juicer defaults
MARKER = "RAYSEL_PEER_IFD_RUN"  # set in each run's environment: finds its processes that left the tree
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------- data-juicer's virtualenv


def _pip(venv: Path, args: list[str], log: Path, env: dict[str, str]) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise RuntimeError(f"pip failed ({rc}): {' '.join(args)}; see {log}")


def ensure_dj_venv(venv: Path) -> dict[str, Any]:
    """Create `venv` with CPU torch, py-data-juicer and its HF extra unless it is there; its versions."""
    import importlib.metadata as md

    transformers = f"transformers=={md.version('transformers')}"  # raysel's
    stamp = venv / ".installed.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if f"transformers=={info['transformers']}" == transformers:
            return info | {"installed_now": False}
        env = {**os.environ, "PIP_CONSTRAINT": str(venv / "constraints.txt")}
        _pip(venv, [transformers], venv / "install.log", env)  # raysel's venv moved on
        stamp.write_text(json.dumps(info | {"transformers": transformers.split("==")[1]}, indent=2))
        return info | {"transformers": transformers.split("==")[1], "installed_now": False}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    log = venv / "install.log"
    constraints = venv / "constraints.txt"
    constraints.write_text(f"{TORCH_CPU}\n")  # no later resolve may swap the CPU torch for a CUDA one
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints)}
    _pip(venv, [TORCH_CPU], log, env)
    _pip(venv, [f"py-data-juicer=={DJ_VERSION}", transformers, *DJ_EXTRA], log, env)
    seconds = time.perf_counter() - start
    probe = (
        "import importlib.metadata as m, json, torch;"
        "print(json.dumps({'data_juicer': m.version('py-data-juicer'), 'torch': torch.__version__,"
        " 'torch_cuda': torch.version.cuda, 'transformers': m.version('transformers'),"
        " 'nvidia_packages': sorted(d.metadata['Name'] for d in m.distributions()"
        " if d.metadata['Name'].lower().startswith('nvidia'))}))"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    if info["torch_cuda"] or info["nvidia_packages"]:
        raise RuntimeError(f"{venv} got a CUDA torch or NVIDIA packages: {info}")
    info |= {"venv": str(venv), "install_s": round(seconds, 1), "install_log": str(log)}
    stamp.write_text(json.dumps(info, indent=2))
    return info | {"installed_now": True}


# ---------------------------------------------------------------- measuring a process tree


def _mem(p: psutil.Process) -> tuple[int, int]:
    """RSS and PSS (shared pages split among their sharers, so a tree's sum counts them once)."""
    try:
        full = p.memory_full_info()
        return full.rss, full.pss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0, 0


def _marked(token: str) -> set[int]:
    """Pids whose environment carries this run's marker (Ray processes outlive or leave the tree)."""
    found = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARKER) == token:
                found.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_measured(cmd: list[str], env: dict[str, str], log: Path, interval: float = 0.2) -> dict[str, Any]:
    """Run `cmd`; wall time, peak summed RSS / PSS over the process and every descendant, polled."""
    token = uuid.uuid4().hex
    env = {**env, MARKER: token}
    load = os.getloadavg()[0]
    procs: dict[int, psutil.Process] = {}
    by_env_only: set[int] = set()
    peak_rss = peak_pss = 0
    peak_n = 0
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        procs[proc.pid] = root
        tick = 0
        while proc.poll() is None:
            try:
                for c in root.children(recursive=True):
                    procs.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                pass
            if tick % 5 == 0:  # once a second: processes of this run that are not (or no more) descendants
                for pid in _marked(token) - procs.keys():
                    try:
                        procs[pid] = psutil.Process(pid)
                        by_env_only.add(pid)
                    except psutil.NoSuchProcess:
                        pass
            alive = [p for p in procs.values() if p.is_running()]
            mems = [_mem(p) for p in alive]
            peak_rss = max(peak_rss, sum(m[0] for m in mems))
            peak_pss = max(peak_pss, sum(m[1] for m in mems))
            peak_n = max(peak_n, len(alive))
            tick += 1
            time.sleep(interval)
        wall = time.perf_counter() - start
    lingering = _marked(token)
    deadline = time.monotonic() + 30
    while lingering and time.monotonic() < deadline:  # give Ray's processes their shutdown
        time.sleep(0.5)
        lingering = _marked(token)
    for pid in lingering:  # processes this run started that would skew the next run
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return {
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(peak_rss / 2**20, 1),
        "peak_pss_mib": round(peak_pss / 2**20, 1),
        "processes_seen": len(procs),
        "processes_peak": peak_n,
        "processes_found_by_env_only": len(by_env_only),
        "killed_after_30s": len(lingering),
        "loadavg_before": round(load, 2),
        "log": str(log),
    }


# ---------------------------------------------------------------- the two tools


def run_raysel(rows_file: Path, out: Path, env: dict[str, str], raysel_bin: str) -> dict[str, Any]:
    cmd = [raysel_bin, "score", "ifd", "--input", str(rows_file), "--output", str(out)]
    res = run_measured(cmd, env, out.parent / f"{out.name}.log")
    if res["rc"]:
        raise RuntimeError(f"raysel failed ({res['rc']}); see {res['log']}")
    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    table = pq.read_table(out / "scores.parquet", columns=["source", "score_ifd"]).to_pylist()
    ifd = {int(r["source"].rsplit(":", 1)[1]) - 1: r["score_ifd"] for r in table}  # JSONL: 1-based line
    timings = manifest["timings_s"]  # where raysel's wall went: ray_start, ingest, score (+ score_parts), ...
    return res | {"score_s": round(float(timings["score"]), 2), "timings_s": timings, "ifd": ifd}


def dj_config(data: Path, model: str, run: Path) -> dict[str, Any]:
    """dj-process config: data-juicer's defaults except the data, the model, the templates and Cherry's rule."""
    return {
        "project_name": "raysel-peer-ifd",
        "dataset_path": str(data),
        "export_path": str(run / "kept.jsonl"),
        "ds_cache_dir": str(run / "hf_datasets_cache"),  # per run: a second run must not reuse the first's cache
        "process": [
            {
                OP: {
                    "hf_model": model,
                    "min_score": 0.0,  # IFD is a ratio of two losses, never negative
                    "max_score": 1.0,  # Cherry keeps IFD <= 1 (the op's default range is [1, 100])
                    "query_template": QUERY_TEMPLATE,
                    "response_template": RESPONSE_TEMPLATE,
                    "stats_export_path": str(run / "stats.jsonl"),  # every row's IFD, before the filter
                }
            }
        ],
    }


def run_dj(data: Path, model: str, run: Path, env: dict[str, str], venv: Path) -> dict[str, Any]:
    run.mkdir(parents=True)
    config = run / "config.yaml"
    config.write_text(json.dumps(dj_config(data, model, run), indent=2))  # JSON is YAML
    res = run_measured([str(venv / "bin" / "dj-process"), "--config", str(config)], env, run / "dj.log")
    text = Path(res["log"]).read_text(errors="replace")
    if res["rc"]:
        raise RuntimeError(f"data-juicer failed ({res['rc']}); see {res['log']}")
    done = re.findall(rf"OP \[{OP}\] Done in ([0-9.]+)s\. Left (\d+) samples", text)
    if not done:
        raise RuntimeError(f"no 'OP [{OP}] Done in' line in {res['log']}")
    ifd = {}
    for line in (run / "stats.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ifd[int(rec["row"])] = rec["__dj__stats__"]["ifd_score"]
    installs = len(re.findall(r"not found, installing|Installing \S+ using (?:uv|pip)", text))
    return res | {"score_s": float(done[-1][0]), "kept": int(done[-1][1]), "ifd": ifd, "auto_installs": installs}


# ---------------------------------------------------------------- reference and statistics


def reference_ifd(rows: list[dict], model: str) -> tuple[np.ndarray, float]:
    """raysel's exact per-sample IFD: the paper's code shape (benchmarks/ifd_throughput.py), fp32, 512 tokens."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ifd_throughput import per_sample_loop
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    start = time.perf_counter()
    ifd, _ = per_sample_loop(tok, lm, rows, 512, "cpu")
    return ifd, time.perf_counter() - start


def spearman(scores: dict[int, float], ref: np.ndarray) -> dict[str, Any]:
    from scipy.stats import spearmanr

    pairs = [(scores[i], ref[i]) for i in range(len(ref)) if _finite(scores.get(i)) and _finite(ref[i])]
    if len(pairs) < 3:
        return {"rho": None, "n": len(pairs)}
    a, b = np.array(pairs).T
    return {"rho": round(float(spearmanr(a, b).statistic), 4), "n": len(pairs)}


def _finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def _mean(xs: list[float]) -> float:
    return round(float(np.mean(xs)), 2)


def summarize(runs: list[dict], n: int) -> dict[str, Any]:
    scored = [sum(1 for v in r["ifd"].values() if _finite(v)) for r in runs]
    wall = _mean([r["wall_s"] for r in runs])
    return {
        "wall_s": [r["wall_s"] for r in runs],
        "wall_s_mean": wall,
        "score_s": [r["score_s"] for r in runs],
        "score_s_mean": _mean([r["score_s"] for r in runs]),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
        "rows_scored": scored[0],
        "rows_s_end_to_end": round(n / wall, 3),
        "rows_s_scoring": round(n / _mean([r["score_s"] for r in runs]), 3),
        "ifd_le_1": sum(1 for v in runs[0]["ifd"].values() if _finite(v) and v <= 1),
        "runs": [{k: v for k, v in r.items() if k != "ifd"} for r in runs],
    }


def max_diff(a: dict[int, float], b: dict[int, float]) -> float | None:
    common = [i for i in a if _finite(a[i]) and _finite(b.get(i))]
    return float(max(abs(a[i] - b[i]) for i in common)) if common else None


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(result: dict[str, Any]) -> str:
    head = (
        "| rows | tool | wall s (runs) | wall s mean | scoring s mean | peak tree RSS MiB | peak tree PSS MiB "
        "| rows/s e2e | speedup e2e (target) | Spearman vs ref (n) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for block in result["results"]:
        for tool in ("raysel", "data_juicer"):
            s = block[tool]
            rho = block["spearman_vs_reference"][tool]
            speed = ""
            if tool == "raysel":
                speed = f"{block['speedup_end_to_end']}x"
                if block.get("target") is not None:
                    speed += f" (>= {block['target']}x: {'met' if block['target_met'] else 'NOT met'})"
            lines.append(
                f"| {block['rows']} ({s['rows_scored']} scored) | {tool} | "
                f"{', '.join(str(w) for w in s['wall_s'])} | {s['wall_s_mean']} | {s['score_s_mean']} | "
                f"{s['peak_rss_mib']} | {s['peak_pss_mib']} | {s['rows_s_end_to_end']} | {speed} | "
                f"{rho['rho']} ({rho['n']}) |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="160,1000", help="comma-separated row counts (capped at the data's 999)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool per row count, alternating")
    p.add_argument("--reference-rows", type=int, default=160, help="rows of the per-sample reference (0: none)")
    p.add_argument("--dj-venv", type=Path, default=ROOT / "benchmarks" / ".venv-dj")
    p.add_argument("--raysel-bin", default=str(ROOT / ".venv" / "bin" / "raysel"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--keep", type=Path, help="keep the run directories under this path")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    args = p.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent")
        return
    os.environ.update(OFFLINE)
    data = json.loads(DATA.read_text())
    counts = [int(c) for c in args.rows.split(",")]

    from raysel.backends.models import resolve_model

    model = resolve_model(args.model)  # materialized before any timed run
    args.dj_venv = args.dj_venv.resolve()
    dj = ensure_dj_venv(args.dj_venv)
    env = {**os.environ, **OFFLINE}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "raysel"], capture_output=True, text=True)
    import importlib.metadata as md

    result: dict[str, Any] = {
        "machine": machine(),
        "raysel_commit": commit.stdout.strip() + (" (raysel/ modified)" if dirty.stdout.strip() else ""),
        "raysel_env": {k: md.version(k) for k in ("torch", "transformers", "ray")},
        "data_juicer": {k: v for k, v in dj.items()},
        "model": model,
        "data": str(DATA),
        "dj_op": {"name": OP, **dj_config(Path("ROWS"), model, Path("RUN"))["process"][0][OP]},
        "repeats": args.repeats,
        "notes": [
            "rows/s are rows of the input over wall (or scoring) seconds; raysel's defaults reject exact duplicate "
            "rows before scoring (14 of the 999, none in the first 160), data-juicer scores every row",
            "data-juicer's IFD: loss('Question: {text} Answer: {answer}' joined by a space) over the last "
            "len(tokens('Answer: ...')) - 1 tokens / loss('Answer: ...') alone, one forward per text, no length "
            "cap (the tokenizer's model_max_length), num_proc = cores (1 torch thread each); the reference and "
            "raysel: the paper's Alpaca prompt, 512 tokens",
            "peak RSS sums every process of the tree (shared pages counted once per process); PSS splits them",
        ],
        "results": [],
    }
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peer_ifd_", dir=args.keep))
    for requested in counts:
        n = min(requested, len(data))
        rows = data[:n]
        base = work / f"rows_{n}"
        base.mkdir()
        raysel_in = base / "rows.jsonl"
        raysel_in.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        dj_in = base / "dj_rows.jsonl"
        dj_in.write_text(
            "".join(
                json.dumps(
                    {
                        "row": i,
                        "text": r["instruction"] + ("\n" + r["input"] if r["input"] else ""),
                        "answer": r["output"],
                    },
                    ensure_ascii=False,
                )
                + "\n"
                for i, r in enumerate(rows)
            )
        )
        runs: dict[str, list[dict]] = {"raysel": [], "data_juicer": []}
        for rep in range(args.repeats):
            print(f"[{n} rows] run {rep + 1}/{args.repeats}: raysel", file=sys.stderr, flush=True)
            runs["raysel"].append(run_raysel(raysel_in, base / f"raysel_{rep}", env, args.raysel_bin))
            print(f"[{n} rows] run {rep + 1}/{args.repeats}: data-juicer", file=sys.stderr, flush=True)
            runs["data_juicer"].append(run_dj(dj_in, model, base / f"dj_{rep}", env, args.dj_venv))
        block = {
            "rows_requested": requested,
            "rows": n,
            "raysel": summarize(runs["raysel"], n),
            "data_juicer": summarize(runs["data_juicer"], n),
            "raysel_runs_max_ifd_diff": max_diff(runs["raysel"][0]["ifd"], runs["raysel"][-1]["ifd"]),
            "data_juicer_runs_max_ifd_diff": max_diff(runs["data_juicer"][0]["ifd"], runs["data_juicer"][-1]["ifd"]),
            "_ifd": {t: runs[t][0]["ifd"] for t in runs},
        }
        block["speedup_end_to_end"] = round(block["data_juicer"]["wall_s_mean"] / block["raysel"]["wall_s_mean"], 2)
        block["speedup_scoring"] = round(block["data_juicer"]["score_s_mean"] / block["raysel"]["score_s_mean"], 2)
        block["target"] = TARGETS.get(requested)
        block["target_met"] = None if block["target"] is None else block["speedup_end_to_end"] >= block["target"]
        result["results"].append(block)

    ref_n = min(args.reference_rows, max(b["rows"] for b in result["results"]))
    ref = np.array([])
    if ref_n > 0:  # the row sets are prefixes of one file: one reference over the first ref_n rows serves all
        print(f"reference: per-sample loop over {ref_n} rows", file=sys.stderr, flush=True)
        ref, ref_s = reference_ifd(data[:ref_n], model)
        result["reference"] = {"rows": ref_n, "seconds": round(ref_s, 1), "rows_s": round(ref_n / ref_s, 3)}
    for block in result["results"]:
        ifd = block.pop("_ifd")
        block["spearman_vs_reference"] = {t: spearman(ifd[t], ref[: block["rows"]]) for t in ifd}
        block["raysel_max_abs_diff_vs_reference"] = max_diff(
            ifd["raysel"], {i: float(v) for i, v in enumerate(ref[: block["rows"]])}
        )
        block["spearman_raysel_vs_data_juicer"] = spearman(
            ifd["data_juicer"], np.array([ifd["raysel"].get(i, np.nan) for i in range(block["rows"])], dtype=float)
        )
    result["work_dir"] = str(work) if args.keep else None
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n" + table(result))


if __name__ == "__main__":
    main()
