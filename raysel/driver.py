"""`raysel select` / `raysel score`: ingest -> dedupe (exact, near) -> the method (raysel.methods: IFD,
IterIT, IterSelectTune) -> the run's files (raysel.outputs) -> report.

The run directory (local or s3:// / gs://) is claimed first (raysel.run.context); completed steps are skipped
on a rerun, and long map steps resume from their parts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from raysel import schema as S
from raysel.config import RunConfig, dump_yaml
from raysel.dedupe import exact_report, find_duplicates, near_duplicates
from raysel.io import (
    LIGHT_CPUS,
    arrow_batches,
    expand_input,
    fingerprint,
    iter_parquet,
    parse_locally,
    read_corpus,
    write_parquet_stream,
)
from raysel.methods import method_spec
from raysel.methods.base import MethodResult, Rows
from raysel.outputs import finish
from raysel.readers import InputError
from raysel.run.context import RunContext, run_context

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class RunResult:
    output: Path
    """The run directory."""
    manifest: dict[str, Any]
    """What manifest.json holds: config hash, counts, timings, outputs."""
    uri: str = ""
    """The run directory as given: `output` itself, or the s3:// / gs:// URI it is a staging copy of."""


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


def _count_parsed(summary: Path, strict: bool) -> int:
    """Rows of the ingest summary that parsed; with `strict`, the first bad row (in input order) stops the run."""
    first, parsed, bad_rows = None, 0, 0
    for t in iter_parquet(summary, [S.SOURCE, S.REJECT_REASON]):
        bad = t.filter(pc.not_equal(t[S.REJECT_REASON], ""))
        if bad.num_rows and first is None:
            first = bad[S.SOURCE][0].as_py(), bad[S.REJECT_REASON][0].as_py()
        parsed += t.num_rows - bad.num_rows
        bad_rows += bad.num_rows
    if strict and first:
        raise InputError(
            f"{first[0]}: {first[1]} (data.strict is on: fix the row, or drop --strict to set bad rows "
            f"aside in rejected.jsonl; {bad_rows} bad rows in all)"
        )
    return parsed


def _dropped_key(dropped: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(sorted(dropped)).encode()).hexdigest()[:16]


def run(cfg: RunConfig, *, select: bool = True, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Score (and with select=True, select) cfg.data.input into the run directory cfg.output.

    An existing run directory with another config is refused unless `resume` or `overwrite` (raysel.run.rundir).
    """
    method = method_spec(cfg.select.method).load()
    files = expand_input(cfg.data.input)  # a wrong --input fails here, before Ray starts
    checked = method.check(cfg)  # so does, for IFD, a select.agreement directory without an agreement.json
    stale = ("manifest.json", "selected.jsonl", "report.html")  # an earlier run's must not pass for this one's
    with run_context(cfg.output, dump_yaml(cfg), resume=resume, overwrite=overwrite, stale=stale) as ctx:
        ctx.timings["ray_start"] = ctx.ray_start  # fixed cost, first in the breakdown
        ingested = _ingest(ctx, cfg, files)
        result = method.run(ctx, cfg, ingested.rows, checked)
        return _write(ctx, cfg, ingested, result, select)


@dataclass(frozen=True)
class Ingested:
    summary: Path
    """The ingest step's file: id, source and reject reason of every row read (raw record of the rejected)."""
    dropped: dict[str, str]
    """Source of each row left out before the method (a duplicate) -> why."""
    duplicates: dict[str, Any]
    """The manifest's "duplicates" section."""
    rows: Rows
    """The rows the method selects from."""


def _ingest(ctx: RunContext, cfg: RunConfig, files: list[str]) -> Ingested:
    """Ingest (the summary of every row read), exact and near duplicates; the rows left for the method."""
    steps = ctx.steps()
    # The near-duplicate settings change which rows are dropped (in the "dropped" part of later keys), not
    # what ingest reads or what the rows embed to: a new threshold reuses the ingest and the embeddings.
    rows_cfg = dataclasses.replace(cfg.data, near_dup=None, near_dedupe=False)
    data_key = {"data": rows_cfg, "files": fingerprint(files), "code": ctx.code}

    # A small local corpus is parsed once, here: no Ray Data read pass for the ingest, and the passes below
    # (score, the quoted texts) start from these tables in the object store instead of parsing it again.
    import ray
    import ray.data

    local = parse_locally(cfg.data, files)
    refs = None if local is None else [ray.put(t) for t in local]

    def corpus() -> ray.data.Dataset:
        return read_corpus(cfg.data, files) if refs is None else ray.data.from_arrow_refs(refs)

    def ingest(path: Path) -> int:
        if local is not None:
            return write_parquet_stream((_compact(t) for t in local), path, S.COMPACT_SCHEMA)
        ds = read_corpus(cfg.data, files).map_batches(_compact, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
        return write_parquet_stream(arrow_batches(ds), path, S.COMPACT_SCHEMA)

    summary = steps.run("ingest", data_key, ingest)  # read batch by batch below: the driver holds no table of it
    parsed = _count_parsed(summary, cfg.data.strict)
    exact = find_duplicates(summary)
    dropped = {src: f"duplicate of {first}" for src, first in exact.items()} if cfg.data.dedupe else {}
    duplicates = {"exact": exact_report(exact, cfg.data.dedupe)}

    def rows() -> ray.data.Dataset:
        drop = pa.array(list(dropped), pa.string())
        ds = corpus()
        return ds.map_batches(_keep, fn_kwargs={"drop": drop}, batch_format="pyarrow", num_cpus=LIGHT_CPUS)

    if cfg.data.near_dup is not None and parsed > len(dropped):
        near, duplicates["near"] = near_duplicates(cfg, steps, rows, data_key | {"dropped": _dropped_key(dropped)})
        if cfg.data.near_dedupe:
            dropped |= near
    key = data_key | {"dropped": _dropped_key(dropped)}
    return Ingested(summary, dropped, duplicates, Rows(dataset=rows, key=key, count=parsed - len(dropped)))


def _peak_rss_mb() -> float:
    """This process's peak resident memory (the driver's: Ray's workers are other processes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _write(ctx: RunContext, cfg: RunConfig, ingested: Ingested, result: MethodResult, select: bool) -> RunResult:
    """The run's final files, manifest.json (its presence means the run finished), then report.html."""
    out, timings, scored = ctx.out, ctx.timings, result.scored
    start = time.perf_counter()
    manifest = finish(
        cfg, out, ingested.summary, ingested.dropped, scored, select, ingested.rows.dataset, result.selection
    )
    timings["write"] = round(time.perf_counter() - start, 3)
    manifest |= {"duplicates": ingested.duplicates, **result.sections, "timings_s": timings, "ray": ctx.cluster,
                 "driver_peak_rss_mb": _peak_rss_mb()}  # fmt: skip
    manifest["tables"] = {"scored": Path(scored).relative_to(out).as_posix(), "texts": "steps/texts.parquet"}
    if "report.html" not in manifest["outputs"]:
        manifest["outputs"] = sorted([*manifest["outputs"], "report.html"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    start = time.perf_counter()
    _report(out)
    manifest["timings_s"]["report"] = round(time.perf_counter() - start, 3)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return RunResult(output=out, manifest=manifest, uri=cfg.output)


def _report(out: Path) -> None:
    """report.html; a failure to draw it is reported, never the run's failure (`raysel report` redraws it)."""
    try:
        from raysel.report import write_report

        write_report(out)
    except Exception as e:  # noqa: BLE001
        print(f"[raysel] report.html not written ({type(e).__name__}: {e}); retry with `raysel report {out}`")
