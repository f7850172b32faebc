"""The IFD run: ingest -> dedupe -> score -> select -> write. Completed steps are skipped on a rerun."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import RunConfig, ScoreConfig, dump_yaml
from raysel.io import (
    LIGHT_CPUS,
    expand_input,
    fingerprint,
    read_corpus,
    write_parquet_stream,
)
from raysel.outputs import finish
from raysel.readers import InputError


@dataclass(frozen=True)
class RunResult:
    output: Path
    """The run directory."""
    manifest: dict[str, Any]
    """What manifest.json holds: config hash, counts, timings, outputs."""


def _init_ray() -> dict[str, Any]:
    """Join RAY_ADDRESS if set, else start a local Ray; keep row order so results are deterministic."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len(alive),
        "cpus": ray.cluster_resources().get("CPU", 0),
        "gpus": ray.cluster_resources().get("GPU", 0),
    }


def _arrow(ds) -> Iterator[pa.Table]:
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _step(out: Path, name: str, key: dict[str, Any], build: Callable[[Path], int], timings: dict) -> Path:
    """Run `build` into steps/<name>.parquet unless a completed copy made from the same config exists."""
    path, marker = out / "steps" / f"{name}.parquet", out / "steps" / f"{name}.done.json"
    stamp = json.dumps(key, sort_keys=True, default=str)
    if path.is_file() and marker.is_file() and marker.read_text() == stamp:
        timings[name] = "skipped (completed earlier)"
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    rows = build(path)
    timings[name] = round(time.perf_counter() - start, 3)
    print(f"[raysel] step {name}: {rows} rows in {timings[name]} s", flush=True)
    marker.write_text(stamp)
    return path


def _compact(batch: pa.Table) -> pa.Table:
    """Ingest summary: id, source, reject reason; the raw text only for rejected rows."""
    bad = pc.not_equal(batch[S.REJECT_REASON], "")
    raw = pc.if_else(bad, batch[S.RAW], pa.scalar("", pa.string()))
    return pa.table({S.ID: batch[S.ID], S.SOURCE: batch[S.SOURCE], S.REJECT_REASON: batch[S.REJECT_REASON], S.RAW: raw})


def _keep(batch: pa.Table, drop: pa.Array) -> pa.Table:
    """Rows to score: parsed fine and the first copy of their content."""
    good = pc.equal(batch[S.REJECT_REASON], "")
    dup = pc.is_in(batch[S.SOURCE], value_set=drop)
    return batch.filter(pc.and_(good, pc.invert(dup)))


def _raise_first_reject(compact: pa.Table) -> None:
    bad = compact.filter(pc.not_equal(compact[S.REJECT_REASON], ""))
    if bad.num_rows:
        src, why = bad[S.SOURCE][0].as_py(), bad[S.REJECT_REASON][0].as_py()
        raise InputError(
            f"{src}: {why} (data.strict is on: fix the row, or drop --strict to set bad rows "
            f"aside in rejected.jsonl; {bad.num_rows} bad rows in all)"
        )


def find_duplicates(ingest: pa.Table) -> dict[str, str]:
    """source of each later copy -> source of the first copy with the same id (rows in input order)."""
    first: dict[str, str] = {}
    dups: dict[str, str] = {}
    for rid, src, why in zip(*(ingest[c].to_pylist() for c in (S.ID, S.SOURCE, S.REJECT_REASON)), strict=True):
        if why:
            continue
        if rid in first:
            dups[src] = first[rid]
        else:
            first[rid] = src
    return dups


def _code_hash() -> str:
    """Hash of raysel's own source: a completed step is reused only by the code that made it."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# Fields that change how fast scoring runs, never its results: changing them does not redo a finished step.
_RESOURCE_FIELDS = ("batch_size", "token_budget", "concurrency", "num_cpus", "num_gpus", "threads")


def _scoring_identity(score: ScoreConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(score).items() if k not in _RESOURCE_FIELDS}


def run(cfg: RunConfig, *, select: bool = True) -> RunResult:
    """Score (and with select=True, select) cfg.data.input into the run directory cfg.output."""
    from raysel.stages.base import apply
    from raysel.stages.score import IfdScoreStage

    files = expand_input(cfg.data.input)  # a wrong --input fails here, before Ray starts
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "selected.jsonl"):  # outputs of an earlier run must not pass for this one's
        (out / stale).unlink(missing_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))  # the resolved config, before any work
    cluster = _init_ray()
    timings: dict[str, Any] = {}
    data_key = {"data": cfg.data, "files": fingerprint(files), "code": _code_hash()}

    def ingest(path: Path) -> int:
        return write_parquet_stream(
            _arrow(read_corpus(cfg.data, files).map_batches(_compact, batch_format="pyarrow", num_cpus=LIGHT_CPUS)),
            path,
            S.COMPACT_SCHEMA,
        )

    compact = pq.read_table(_step(out, "ingest", data_key, ingest, timings))
    if cfg.data.strict:
        _raise_first_reject(compact)
    dups = find_duplicates(compact) if cfg.data.dedupe else {}

    def score(path: Path) -> int:
        parsed = pc.sum(pc.equal(compact[S.REJECT_REASON], "")).as_py() or 0
        if parsed == len(dups):  # nothing to score: no model start
            return write_parquet_stream([], path, S.SCORED_SCHEMA)
        ds = read_corpus(cfg.data, files).map_batches(
            _keep, fn_kwargs={"drop": pa.array(list(dups), pa.string())}, batch_format="pyarrow", num_cpus=LIGHT_CPUS
        )
        return write_parquet_stream(_arrow(apply(ds, IfdScoreStage, cfg.score)), path, S.SCORED_SCHEMA)

    scored = _step(out, "score", data_key | {"score": _scoring_identity(cfg.score)}, score, timings)
    start = time.perf_counter()
    manifest = finish(cfg, out, compact, dups, scored, select)
    timings["write"] = round(time.perf_counter() - start, 3)
    manifest["timings_s"] = timings
    manifest["ray"] = cluster
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return RunResult(output=out, manifest=manifest)
