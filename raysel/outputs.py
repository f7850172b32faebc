"""The run directory's final files: scores.parquet, selected.jsonl, rejected.jsonl and the manifest's counts.

The driver holds ids and scores, never the corpus text: the text of the rows the outputs quote (selected,
unscorable, the report's examples) comes back from the workers in one filtered pass over the corpus into
steps/texts.parquet, and selected.jsonl / rejected.jsonl stream it from there."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import __version__
from raysel import schema as S
from raysel.config import RunConfig
from raysel.io import (
    LIGHT_CPUS,
    arrow_batches,
    iter_parquet,
    iter_rows_at,
    take_rows,
    write_jsonl,
    write_parquet_stream,
)
from raysel.methods import method_spec
from raysel.select.topk import IFD_ABOVE_1, Selection, select_top_ifd

if TYPE_CHECKING:
    import ray.data

SCORE_COLUMNS = (
    S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD, S.PPL_COND, S.PPL_DIRECT, S.SCORE_IFD_PPL, S.N_ANSWER_TOKENS,
    S.SCORE_CLASSIFIER, S.SCORE_SIMILARITY, S.SCORE_IST, S.JUDGE_VERDICT, S.JUDGE_SCORE_REF, S.JUDGE_SCORE_MODEL,
)  # fmt: skip
"""Score columns copied into selected.jsonl (those the method's table has)."""


def finish(
    cfg: RunConfig,
    out: Path,
    summary: Path,
    dropped: dict[str, str],
    scored: Path,
    select: bool,
    rows: Callable[[], ray.data.Dataset],
    selection: Selection | None = None,
) -> dict:
    """Select (when asked) and write the final files; returns the manifest (counts add up, or it raises).

    `summary` is the ingest step's file (id, source, reject reason, raw record of the rejected rows); it and
    `scored` are read batch by batch. `dropped` maps the source of each row left out before scoring (a
    duplicate) to the reason. `rows()` is the dataset that was scored (row for row, in the order of
    `scored`): the quoted rows' text is read back from it unless `scored` has the text. `selection` is the
    method's (IterIT's); by default the IFD top k of `scored`.
    """
    ifd, unscorable_rows, unscorable = _scores(scored)
    sel = selection or select_top_ifd(ifd, ratio=method_spec(cfg.select.method).ratio(cfg.select.ratio), k=cfg.select.k)
    _write_scores(scored, out / "scores.parquet", sel if select else None)
    from raysel.report import example_positions

    quoted = unscorable_rows | sel.selected if select else unscorable_rows.copy()  # a new array: marked below
    quoted[example_positions(cfg.select.method, out / "scores.parquet")] = True
    texts = out / "steps" / "texts.parquet"
    write_texts(scored, rows, np.flatnonzero(quoted), texts)
    del quoted
    if select:
        n_selected = write_jsonl(_selected_rows(scored, texts, sel.selected), out / "selected.jsonl")
    else:
        n_selected = 0
    rejected = write_jsonl(_rejected_rows(summary, dropped, scored, texts, unscorable_rows), out / "rejected.jsonl")
    reasons: Counter = Counter()
    for t in iter_parquet(summary, columns=[S.REJECT_REASON]):
        reasons.update(r.split(":", 1)[0] for r in _nonempty(t[S.REJECT_REASON]))
    counts = {
        "read": pq.read_metadata(summary).num_rows,
        "rejected_input": sum(reasons.values()),
        "duplicates": sum(not r.startswith("near_") for r in dropped.values()),
        "near_duplicates": sum(r.startswith("near_") for r in dropped.values()),
        "to_score": len(ifd),
        "unscorable": sum(unscorable.values()),
        "scored": int(np.isfinite(ifd).sum()),
        "ifd_above_1": int((sel.reason == IFD_ABOVE_1).sum()),
        "passed": sel.passed,
        "selected": n_selected,
        "rejected_total": rejected,
    }
    # Nothing is lost: every row read is either scored or in rejected.jsonl, with its reason.
    if counts["read"] != counts["rejected_total"] + counts["scored"]:
        raise RuntimeError(f"row accounting does not add up (a raysel bug, please report it): {counts}")
    return {
        "raysel_version": __version__,
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "counts": counts,
        "rejected_by_reason": dict(reasons + unscorable + Counter(r.split(" of ", 1)[0] for r in dropped.values())),
        "outputs": sorted({p.name for p in out.iterdir() if p.is_file()} | {"manifest.json"}),
    }


def _scores(scored: Path) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Each scored row's IFD (float32 as stored; NaN when unscored), whether the scorer set it aside, and the
    reasons.

    IterSelectTune scores no IFD: every row it kept counts as scored (0.0) unless it carries a reason."""
    has_ifd = S.SCORE_IFD in pq.read_schema(scored).names
    ifd, aside, reasons = [], [], Counter()
    for t in iter_parquet(scored, columns=[S.SCORE_IFD, S.REJECT_REASON] if has_ifd else [S.REJECT_REASON]):
        bad = pc.not_equal(t[S.REJECT_REASON], "").to_numpy(zero_copy_only=False)
        aside.append(bad)
        reasons.update(r.split(":", 1)[0] for r in _nonempty(t[S.REJECT_REASON]))
        if has_ifd:
            ifd.append(t[S.SCORE_IFD].to_numpy(zero_copy_only=False).astype(np.float32, copy=False))
        else:
            ifd.append(np.where(bad, np.float32(np.nan), np.float32(0.0)))
    return np.concatenate(ifd), np.concatenate(aside).astype(bool), reasons


def _nonempty(reasons: pa.ChunkedArray) -> list[str]:
    """The reasons given (only the rows set aside become Python strings)."""
    return reasons.filter(pc.not_equal(reasons, "")).to_pylist()


def _write_scores(scored: Path, dest: Path, sel) -> None:
    """scores.parquet: the scored table without its text (ids, sources, scores), plus the selection."""

    def batches() -> Iterator[pa.Table]:
        offset = 0
        for t in iter_parquet(scored):
            t = t.drop_columns([c for c in S.TEXT if c in t.column_names])
            if sel is not None:
                part = slice(offset, offset + t.num_rows)
                t = t.append_column(S.SELECTED, pa.array(sel.selected[part]))
                t = t.append_column(S.SELECT_REASON, pa.array(sel.reason[part].tolist(), pa.string()))
                t = t.append_column(S.RANK_IFD, pa.array(sel.rank[part]))
            offset += t.num_rows
            yield t

    write_parquet_stream(batches(), dest)


def _pick(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    """(In the workers) the rows whose source is wanted, with their text."""
    keep = batch.filter(pc.is_in(batch[S.SOURCE], value_set=wanted))
    return keep.select([n for n in S.TEXTS_SCHEMA.names if n != S.POSITION])


def write_texts(scored: Path, rows: Callable[[], ray.data.Dataset], positions: np.ndarray, path: Path) -> int:
    """steps/texts.parquet: the text of the scored rows at sorted `positions`, each with its position.

    From `scored` itself when it has the text (IterIT, IterSelectTune keep it for their rounds), else from one
    pass over `rows()` in which the workers keep only the wanted rows: the driver receives nothing else.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [n for n in S.TEXTS_SCHEMA.names if n != S.POSITION]

    def positioned(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        done = 0
        for t in tables:
            t = t.select(columns).append_column(S.POSITION, pa.array(positions[done : done + t.num_rows]))
            done += t.num_rows
            yield t.select(S.TEXTS_SCHEMA.names).cast(S.TEXTS_SCHEMA)

    if not len(positions):
        return write_parquet_stream([], path, S.TEXTS_SCHEMA)
    if set(columns) <= set(pq.read_schema(scored).names):
        return write_parquet_stream(positioned(iter_rows_at(scored, positions, columns)), path, S.TEXTS_SCHEMA)
    keys = take_rows(scored, positions, [S.SOURCE, S.ID])
    wanted, ids = keys[S.SOURCE].combine_chunks(), keys[S.ID].combine_chunks()
    ds = rows().map_batches(_pick, fn_kwargs={"wanted": wanted}, batch_format="pyarrow", num_cpus=LIGHT_CPUS)

    def checked(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """The rows come back in scored order, and each must be the row scored at its position: same source
        and same content id (a file edited in place during the run would give other text)."""
        done = 0
        for t in tables:
            if done + t.num_rows > len(wanted):
                raise RuntimeError(f"more quoted rows came back than the {len(wanted)} asked for (a raysel bug)")
            same = pc.and_(pc.equal(t[S.SOURCE].combine_chunks(), wanted.slice(done, t.num_rows)),
                           pc.equal(t[S.ID].combine_chunks(), ids.slice(done, t.num_rows)))  # fmt: skip
            if t.num_rows and not pc.all(same).as_py():
                raise RuntimeError(
                    f"the corpus row at scored position {positions[done]} is not the row that was scored: the "
                    "input changed during the run (rerun with --overwrite), or a raysel bug"
                )
            done += t.num_rows
            yield t
        if done != len(wanted):
            raise RuntimeError(f"{len(wanted) - done} of {len(wanted)} quoted rows not found in the corpus "
                               "(did the input change during the run?)")  # fmt: skip

    return write_parquet_stream(positioned(checked(arrow_batches(ds))), path, S.TEXTS_SCHEMA)


def _texts_at(texts: Path) -> Iterator[tuple[int, str]]:
    for t in iter_parquet(texts, columns=[S.POSITION, S.RAW]):
        yield from zip(t[S.POSITION].to_pylist(), t[S.RAW].to_pylist(), strict=True)


def _join_raw(scored: Path, texts: Path, mask: np.ndarray, columns: list[str]) -> Iterator[tuple[dict, str]]:
    """(the scored row's `columns`, its original record) for the rows where `mask` is set, in order."""
    raws, offset, at, raw = _texts_at(texts), 0, -1, ""
    for t in iter_parquet(scored, columns=columns):
        picked = np.flatnonzero(mask[offset : offset + t.num_rows])
        for position, row in zip((picked + offset).tolist(), t.take(pa.array(picked)).to_pylist(), strict=True):
            while at < position:  # texts.parquet also holds rows quoted for other reasons
                at, raw = next(raws, (len(mask), ""))
            if at != position:
                raise RuntimeError(f"steps/texts.parquet lacks scored row {position} (a raysel bug)")
            yield row, raw
        offset += t.num_rows


def _selected_rows(scored: Path, texts: Path, selected: np.ndarray) -> Iterator[dict[str, Any]]:
    """Original fields + id + scores, in input order."""
    names = set(pq.read_schema(scored).names)
    for row, raw in _join_raw(scored, texts, selected, [S.ID, *(c for c in SCORE_COLUMNS if c in names)]):
        original = json.loads(raw)
        if S.ID in original and original[S.ID] != row[S.ID]:  # keep the corpus's own id too
            original["source_id"] = original.pop(S.ID)
        yield original | row


def _rejected_rows(
    summary: Path, dropped: dict[str, str], scored: Path, texts: Path, unscorable: np.ndarray
) -> Iterator[dict[str, Any]]:
    """Every row set aside: bad input, later copies of duplicates, rows the model could not score."""
    drop = pa.array(list(dropped), pa.string())
    for t in iter_parquet(summary, columns=[S.ID, S.SOURCE, S.REJECT_REASON, S.RAW]):
        set_aside = pc.or_(pc.not_equal(t[S.REJECT_REASON], ""), pc.is_in(t[S.SOURCE], value_set=drop))
        for row in t.filter(set_aside).to_pylist():  # only the rows set aside reach Python objects
            if row[S.REJECT_REASON]:
                yield {"stage": "input", S.SOURCE: row[S.SOURCE], "reason": row[S.REJECT_REASON], S.RAW: row[S.RAW]}
            else:
                yield {"stage": "dedupe", S.SOURCE: row[S.SOURCE], S.ID: row[S.ID], "reason": dropped[row[S.SOURCE]]}
    for row, raw in _join_raw(scored, texts, unscorable, [S.ID, S.SOURCE, S.REJECT_REASON]):
        yield {"stage": "score", S.SOURCE: row[S.SOURCE], S.ID: row[S.ID], "reason": row[S.REJECT_REASON], S.RAW: raw}
