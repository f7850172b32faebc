"""The run directory's final files: scores.parquet, selected.jsonl, rejected.jsonl and the manifest's counts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import __version__
from raysel import schema as S
from raysel.config import RunConfig
from raysel.io import iter_parquet, read_columns, write_jsonl, write_parquet_stream
from raysel.select.topk import IFD_ABOVE_1, Selection, select_top_ifd

SCORE_COLUMNS = (
    S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD, S.PPL_COND, S.PPL_DIRECT, S.SCORE_IFD_PPL, S.N_ANSWER_TOKENS,
    S.SCORE_CLASSIFIER, S.SCORE_SIMILARITY, S.SCORE_IST, S.JUDGE_VERDICT, S.JUDGE_SCORE_REF, S.JUDGE_SCORE_MODEL,
)  # fmt: skip
"""Score columns copied into selected.jsonl (those the method's table has)."""


def finish(
    cfg: RunConfig,
    out: Path,
    compact: pa.Table,
    dropped: dict[str, str],
    scored: Path,
    select: bool,
    selection: Selection | None = None,
) -> dict:
    """Select (when asked) and write the final files; returns the manifest (counts add up, or it raises).

    `dropped` maps the source of each row left out before scoring (a duplicate) to the reason. `selection`
    is the method's (IterIT's); by default the IFD top k of `scored`.
    """
    has_ifd = S.SCORE_IFD in pq.read_schema(scored).names  # IterSelectTune scores no IFD
    table = read_columns(scored, [S.SCORE_IFD, S.REJECT_REASON] if has_ifd else [S.REJECT_REASON])
    if has_ifd:
        ifd = table[S.SCORE_IFD].to_numpy(zero_copy_only=False).astype(np.float64)
    else:  # every row the method kept counts as scored unless it carries a reason
        ifd = np.where(pc.equal(table[S.REJECT_REASON], "").to_numpy(zero_copy_only=False), 0.0, np.nan)
    sel = selection or select_top_ifd(ifd, ratio=cfg.select.ratio, k=cfg.select.k)
    _write_scores(scored, out / "scores.parquet", sel if select else None)
    n_selected = write_jsonl(_selected_rows(scored, sel.selected), out / "selected.jsonl") if select else 0
    rejected = write_jsonl(_rejected_rows(compact, dropped, scored), out / "rejected.jsonl")
    reasons = Counter(r.split(":", 1)[0] for r in _nonempty(compact[S.REJECT_REASON]))
    unscorable = Counter(r.split(":", 1)[0] for r in _nonempty(table[S.REJECT_REASON]))
    counts = {
        "read": compact.num_rows,
        "rejected_input": sum(reasons.values()),
        "duplicates": sum(not r.startswith("near_") for r in dropped.values()),
        "near_duplicates": sum(r.startswith("near_") for r in dropped.values()),
        "to_score": table.num_rows,
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


def _nonempty(reasons: pa.ChunkedArray) -> list[str]:
    """The reasons given (only the rows set aside become Python strings)."""
    return reasons.filter(pc.not_equal(reasons, "")).to_pylist()


def _write_scores(scored: Path, dest: Path, sel) -> None:
    def batches() -> Iterator[pa.Table]:
        offset = 0
        for t in iter_parquet(scored):
            t = t.drop_columns([S.RAW])
            if sel is not None:
                part = slice(offset, offset + t.num_rows)
                t = t.append_column(S.SELECTED, pa.array(sel.selected[part]))
                t = t.append_column(S.SELECT_REASON, pa.array(sel.reason[part].tolist(), pa.string()))
                t = t.append_column(S.RANK_IFD, pa.array(sel.rank[part]))
            offset += t.num_rows
            yield t

    write_parquet_stream(batches(), dest)


def _selected_rows(scored: Path, selected: np.ndarray) -> Iterator[dict[str, Any]]:
    """Original fields + id + scores, in input order."""
    offset = 0
    names = set(pq.read_schema(scored).names)
    for t in iter_parquet(scored, columns=[S.ID, S.RAW, *(c for c in SCORE_COLUMNS if c in names)]):
        mask = selected[offset : offset + t.num_rows]
        offset += t.num_rows
        for row in t.filter(pa.array(mask)).to_pylist():
            original = json.loads(row.pop(S.RAW))
            if S.ID in original and original[S.ID] != row[S.ID]:  # keep the corpus's own id too
                original["source_id"] = original.pop(S.ID)
            yield original | row


def _rejected_rows(compact: pa.Table, dropped: dict[str, str], scored: Path) -> Iterator[dict[str, Any]]:
    """Every row set aside: bad input, later copies of duplicates, rows the model could not score."""
    set_aside = pc.or_(
        pc.not_equal(compact[S.REJECT_REASON], ""),
        pc.is_in(compact[S.SOURCE], value_set=pa.array(list(dropped), pa.string())),
    )
    for row in compact.filter(set_aside).to_pylist():  # only the rows set aside reach Python objects
        if row[S.REJECT_REASON]:
            yield {
                "stage": "input",
                S.SOURCE: row[S.SOURCE],
                "reason": row[S.REJECT_REASON],
                S.RAW: row[S.RAW],
            }
        elif row[S.SOURCE] in dropped:
            yield {"stage": "dedupe", S.SOURCE: row[S.SOURCE], S.ID: row[S.ID], "reason": dropped[row[S.SOURCE]]}
    for t in iter_parquet(scored, columns=[S.ID, S.SOURCE, S.REJECT_REASON, S.RAW]):
        for row in t.filter(pc.not_equal(t[S.REJECT_REASON], "")).to_pylist():
            yield {
                "stage": "score",
                S.SOURCE: row[S.SOURCE],
                S.ID: row[S.ID],
                "reason": row[S.REJECT_REASON],
                S.RAW: row[S.RAW],
            }
