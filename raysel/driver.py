"""A run: ingest -> dedupe (exact, near) -> the method (IFD: [pre-experience] -> score -> select; IterIT:
raysel.iterit; IterSelectTune: raysel.iterselecttune) -> write.

The run directory (local or s3:// / gs://, raysel.rundir) is claimed first; completed steps are skipped
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
from raysel.agree.lineage import read_agreement, scorer_section
from raysel.config import RunConfig, ScoreConfig, dump_yaml
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
from raysel.outputs import finish
from raysel.pre_experience import pre_experience
from raysel.readers import InputError
from raysel.steps import Steps, stream_in_parts, without

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


def _init_ray() -> dict[str, Any]:
    """Join RAY_ADDRESS if set, else start a local Ray; keep row order so results are deterministic."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Ray 2.60's V2 read_parquet lists files in a task that asks a whole CPU whatever num_cpus the read is
    # given; beside actors sized to their node (less the light tasks' 0.25) it would wait forever. The V1 reader
    # runs every task at the num_cpus raysel passes (LIGHT_CPUS).
    ctx.use_datasource_v2 = False
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len(alive),
        "cpus": ray.cluster_resources().get("CPU", 0),
        "gpus": ray.cluster_resources().get("GPU", 0),
    }


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


_PRESENTATION = {"report.py", "summary.py"}
"""Modules that only present finished results: editing them does not redo a run's steps."""


def _code_hash() -> str:
    """Hash of raysel's own source: a completed step is reused only by the code that made it."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        if path.name not in _PRESENTATION:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# Fields that change how fast scoring runs, never its results: changing them does not redo a finished step.
_RESOURCE_FIELDS = ("batch_size", "token_budget", "concurrency", "num_cpus", "num_gpus", "threads", "packing")


def scoring_identity(score: ScoreConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(score).items() if k not in _RESOURCE_FIELDS}


def score_resources(score: ScoreConfig) -> dict[str, Any]:
    """The scoring pool as resolved from the cluster (stages.base.resolve), as the manifest records it."""
    from raysel.stages.base import stage_resources
    from raysel.stages.score import IfdScoreStage

    return {**stage_resources(IfdScoreStage, score), "packing": score.packing}


def method_resources(cfg: RunConfig) -> dict[str, Any]:
    """Every actor pool the run's method starts, as resolved from the cluster it runs on."""
    from raysel.stages.base import stage_resources

    pools = {"score": score_resources(cfg.score)}
    if cfg.select.method == "iterselecttune":
        from raysel.stages.classify import ClassifyRun, ClassifyStage
        from raysel.stages.embed import EmbedStage
        from raysel.stages.generate import GenerateStage
        from raysel.stages.judge import JudgeRun, JudgeStage

        pools = {
            "embed": stage_resources(EmbedStage, cfg.embed),
            "generate": stage_resources(GenerateStage, cfg.generate),
            "classify": stage_resources(ClassifyStage, ClassifyRun(classifier=cfg.classifier, path="")),
            "judge": stage_resources(JudgeStage, JudgeRun(judge=cfg.judge, cache_dir="")),
        }
    elif cfg.pre_experience.enabled and cfg.select.method == "ifd":
        from raysel.pre_experience import embed_config
        from raysel.stages.embed import EmbedStage

        pools["pre_embed"] = stage_resources(EmbedStage, embed_config(cfg))
    return pools


def _dropped_key(dropped: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(sorted(dropped)).encode()).hexdigest()[:16]


def run(cfg: RunConfig, *, select: bool = True, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Score (and with select=True, select) cfg.data.input into the run directory cfg.output.

    An existing run directory with another config is refused unless `resume` or `overwrite` (raysel.rundir).
    """
    from raysel import rundir
    from raysel.stages.base import StageClock, apply
    from raysel.stages.score import IfdScoreStage

    files = expand_input(cfg.data.input)  # a wrong --input fails here, before Ray starts
    agreement = read_agreement(cfg)  # so does a select.agreement directory without an agreement.json
    rd = rundir.open_run(cfg.output, dump_yaml(cfg), resume=resume, overwrite=overwrite)
    out = rd.local
    for stale in ("manifest.json", "selected.jsonl", "report.html"):  # an earlier run's must not pass for this one's
        (out / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    cluster = _init_ray()
    steps = Steps(out, timings={"ray_start": round(time.perf_counter() - start, 3)})  # fixed cost, in the breakdown
    # The near-duplicate settings change which rows are dropped (in the "dropped" part of later keys), not
    # what ingest reads or what the rows embed to: a new threshold reuses the ingest and the embeddings.
    rows_cfg = dataclasses.replace(cfg.data, near_dup=None, near_dedupe=False)
    data_key = {"data": rows_cfg, "files": fingerprint(files), "code": _code_hash()}

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
    if cfg.select.method == "iterit":
        from raysel.iterit import run_iterit

        result = run_iterit(cfg, out, rows, key, steps.timings)
        return _write(cfg, out, summary, dropped, result.scored, select, steps, cluster, rows,
                      {"duplicates": duplicates, "iterit": result.section, "resources": method_resources(cfg)},
                      result.selection)  # fmt: skip
    if cfg.select.method == "iterselecttune":
        from raysel.iterselecttune import run_iterselecttune

        res = run_iterselecttune(cfg, out, rows, key, steps.timings)
        return _write(cfg, out, summary, dropped, res.scored, select, steps, cluster, rows,
                      {"duplicates": duplicates, "iterselecttune": res.section, "resources": method_resources(cfg)},
                      res.selection)  # fmt: skip
    score_cfg, extra = cfg.score, {"scorer": scorer_section(cfg, agreement)}
    if cfg.pre_experience.enabled and parsed > len(dropped):
        model, extra["pre_experience"] = pre_experience(cfg, steps, rows, key)
        # The run directory's twin in a remote store when there is one: scoring actors on other nodes load it.
        score_cfg = dataclasses.replace(cfg.score, model=rundir.storage_uri(model))

    extra["resources"] = method_resources(cfg)
    pre_key = extra.get("pre_experience", {}).get("key")
    score_key = key | {"score": scoring_identity(score_cfg), "pre": pre_key}

    clock = StageClock()

    def score(path: Path) -> int:
        if parsed == len(dropped):  # nothing to score: no model start
            return write_parquet_stream([], path, S.IFD_SCORES_SCHEMA)

        def tables(done: pa.Array | None, offset: int):
            # The workers drop the text: only ids and scores reach the driver (outputs.write_texts reads
            # back the few rows whose text the outputs quote).
            ds = apply(without(rows(), done), IfdScoreStage, score_cfg, S.IFD_SCORES_SCHEMA.names, clock)
            return clock.strip(arrow_batches(ds))

        return stream_in_parts(path, score_key, tables, S.IFD_SCORES_SCHEMA, part_rows=cfg.checkpoint_rows)

    scored = steps.run("score", score_key, score)
    if isinstance(steps.timings.get("score"), float) and (parts := clock.breakdown(steps.timings["score"])):
        steps.timings["score_parts"] = parts
    return _write(cfg, out, summary, dropped, scored, select, steps, cluster, rows, {"duplicates": duplicates, **extra})


def _peak_rss_mb() -> float:
    """This process's peak resident memory (the driver's: Ray's workers are other processes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _write(cfg, out, summary, dropped, scored, select, steps, cluster, rows, extra, selection=None) -> RunResult:
    """The run's final files, manifest.json (its presence means the run finished), then report.html."""
    from raysel import rundir

    start = time.perf_counter()
    manifest = finish(cfg, out, summary, dropped, scored, select, rows, selection)
    steps.timings["write"] = round(time.perf_counter() - start, 3)
    manifest |= {**extra, "timings_s": steps.timings, "ray": cluster, "driver_peak_rss_mb": _peak_rss_mb()}
    manifest["tables"] = {"scored": Path(scored).relative_to(out).as_posix(), "texts": "steps/texts.parquet"}
    if "report.html" not in manifest["outputs"]:
        manifest["outputs"] = sorted([*manifest["outputs"], "report.html"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    start = time.perf_counter()
    _report(out)
    manifest["timings_s"]["report"] = round(time.perf_counter() - start, 3)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    rundir.sync(final=True)
    return RunResult(output=out, manifest=manifest, uri=cfg.output)


def _report(out: Path) -> None:
    """report.html; a failure to draw it is reported, never the run's failure (`raysel report` redraws it)."""
    try:
        from raysel.report import write_report

        write_report(out)
    except Exception as e:  # noqa: BLE001
        print(f"[raysel] report.html not written ({type(e).__name__}: {e}); retry with `raysel report {out}`")
