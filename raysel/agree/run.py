"""`raysel agree`: one seeded sample of the corpus scored by two IFD scorers, each through the IFD scoring
stage in its own actor pool; then raysel.agree.stats on the two score vectors.

Steps (resumable, under <output>/steps/): rows (the corpus's good rows, parsed once), sample (the seeded
positions and their rows), score_small and score_large (id, source, IFD and token counts per sampled row).
agreement.json and report.html are written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.agree import METRICS
from raysel.agree.stats import agreement, verdict
from raysel.config import AgreeConfig, ScoreConfig, dump_yaml, identity
from raysel.io import LIGHT_CPUS, arrow_batches, expand_input, fingerprint, json_safe, take_rows, write_parquet_stream
from raysel.readers import InputError
from raysel.run.context import run_context

SCORED = [S.ID, S.SOURCE, S.SCORE_IFD, S.N_ANSWER_TOKENS, S.PROMPT_TOKENS, S.REJECT_REASON]


@dataclass(frozen=True)
class AgreeResult:
    output: Path
    result: dict[str, Any]
    """What agreement.json holds."""


def _good(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch[S.REJECT_REASON], ""))


def run_agree(cfg: AgreeConfig, *, resume: bool = False, overwrite: bool = False) -> AgreeResult:
    from raysel.io import read_corpus

    files = expand_input(cfg.data.input)
    stale = ("agreement.json", "report.html")
    with run_context(cfg.output, dump_yaml(cfg), resume=resume, overwrite=overwrite, stale=stale) as ctx:
        out, steps = ctx.out, ctx.steps()
        key = {"data": cfg.data, "files": fingerprint(files), "code": ctx.code}

        def rows(path: Path) -> int:
            ds = read_corpus(cfg.data, files).map_batches(_good, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
            return write_parquet_stream(arrow_batches(ds), path, S.CANONICAL_SCHEMA)

        rows_path = steps.run("rows", key, rows)
        n = pq.ParquetFile(rows_path).metadata.num_rows
        if n < 2:
            raise InputError(f"{cfg.data.input}: {n} usable rows; agreement needs at least 2")
        size = min(cfg.sample, n)
        positions = np.sort(np.random.default_rng(cfg.seed).choice(n, size=size, replace=False))
        key |= {"sample": size, "seed": cfg.seed}
        cols = [S.ID, S.SOURCE, S.INSTRUCTION, S.INPUT, S.OUTPUT]
        sample_path = steps.run(
            "sample", key, lambda p: write_parquet_stream([take_rows(rows_path, positions, cols)], p)
        )
        sample = pq.read_table(sample_path)
        scored, costs = {}, {}
        for which in ("small", "large"):
            score_cfg: ScoreConfig = getattr(cfg, which)
            name, scoring = f"score_{which}", identity(score_cfg)
            seconds = steps.dir / f"{name}.seconds.json"  # the step's wall time, kept for reruns that skip it
            path = steps.run(name, key | {"score": scoring, "model_files": _model_stamp(score_cfg.model)},
                             lambda p, c=score_cfg, t=seconds: _score(sample, c, p, t))  # fmt: skip
            scored[which] = pq.read_table(path)
            if not scored[which][S.ID].equals(sample[S.ID]):
                raise RuntimeError(f"{path.name} does not hold the sample's rows in order: delete it and rerun")
            took = json.loads(seconds.read_text()) if seconds.is_file() else None
            costs[which] = _cost(score_cfg, scored[which], took) | {"scoring": scoring}
        ifd = {w: scored[w][S.SCORE_IFD].to_numpy(zero_copy_only=False).astype(np.float64) for w in scored}
        result = agreement(ifd["small"], ifd["large"], ratio=cfg.ratio, rounds=cfg.bootstrap, seed=cfg.seed)
        result = {"verdict": verdict(result), **result, "small": costs["small"], "large": costs["large"],
                  "data": {"input": cfg.data.input, "limit": cfg.data.limit}, "corpus_rows": n,
                  "timings_s": ctx.timings, "ray": ctx.cluster}  # fmt: skip
        (out / "agreement.json").write_text(json.dumps(json_safe(result), indent=2, default=str))
        _report(out, ifd, result)
    return AgreeResult(output=out, result=result)


def _model_stamp(model: str) -> list[tuple[str, int, int]] | None:
    """(file, size, mtime) of a local model directory's config and weights: scores are redone when a model
    is retrained in place (an HF id or a bucket URI is its own identity: None)."""
    root = Path(model)
    if "://" in model or not root.is_dir():
        return None
    files = sorted(f for f in root.iterdir() if f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _score(sample: pa.Table, cfg: ScoreConfig, path: Path, seconds: Path) -> int:
    import time

    import ray.data

    from raysel.stages.base import apply
    from raysel.stages.score import IfdScoreStage

    start = time.perf_counter()
    ds = apply(ray.data.from_arrow(sample), IfdScoreStage, cfg, SCORED)
    rows = write_parquet_stream(arrow_batches(ds), path)
    seconds.write_text(json.dumps(round(time.perf_counter() - start, 3)))
    return rows


def _cost(cfg: ScoreConfig, scored: pa.Table, seconds: Any) -> dict[str, Any]:
    """Tokens through the model (conditioned text + answer alone) and the step's rows/s (model load included;
    a rerun that skips the step reports the time measured when it ran)."""
    answer = pc.sum(scored[S.N_ANSWER_TOKENS]).as_py() or 0
    prompt = pc.sum(scored[S.PROMPT_TOKENS]).as_py() or 0
    timed = isinstance(seconds, float | int)
    return {
        "model": cfg.model, "backend": cfg.backend, "device": cfg.device, "tokens": int(prompt + 2 * answer),
        "seconds": seconds if timed else None, "rows_per_s": scored.num_rows / seconds if timed and seconds else None,
        "unscored": int(pc.sum(pc.not_equal(scored[S.REJECT_REASON], "")).as_py() or 0),
    }  # fmt: skip


def _report(out: Path, ifd: dict[str, np.ndarray], result: dict[str, Any]) -> None:
    """report.html: the verdict, the statistics and a scatter plot of the two IFD scores."""
    from raysel import html

    ax = html.axes(4.2, 4.0)[0][0]
    ok = np.isfinite(ifd["small"]) & np.isfinite(ifd["large"])
    ax.scatter(ifd["large"][ok], ifd["small"][ok], s=6, alpha=0.5)
    ax.axvline(1.0, color="k", linewidth=0.6, linestyle="--")
    ax.axhline(1.0, color="k", linewidth=0.6, linestyle="--")
    html.label(ax, f"IFD, large scorer ({result['large']['model']})", f"IFD, small scorer ({result['small']['model']})")
    rows = [[n, result[n]["value"], result[n]["low"], result[n]["high"]] for n in METRICS]
    costs = [[w, result[w]["model"], result[w]["tokens"], result[w]["rows_per_s"]] for w in ("small", "large")]
    body = (
        f"<h1>raysel agree: {html.escape(out.name)}</h1><h2>Scorer agreement</h2>"
        f"<p>{html.escape(result['verdict'])}</p>"
        + html.img(ax.figure, "IFD of each sampled row by the two scorers")
        + html.table(["statistic", "value", "95% low", "95% high"], rows)
        + html.table(["scorer", "model", "tokens", "rows/s"], costs)
    )
    page = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>raysel agree</title>'
    (out / "report.html").write_text(page + f"<style>{html.CSS}</style></head><body>{body}</body></html>\n")
