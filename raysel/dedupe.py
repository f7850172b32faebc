"""Duplicate finding: exact copies (same content id) and near duplicates (embedding cosine >= a threshold)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import RunConfig
from raysel.steps import Steps, embed_rows, read_vectors

if TYPE_CHECKING:
    import ray.data

EXAMPLES = 5
"""Groups quoted in the manifest."""


def find_duplicates(ingest: pa.Table) -> dict[str, str]:
    """source of each later copy -> source of the first copy with the same id (rows in input order)."""
    rows = np.flatnonzero(pc.equal(ingest[S.REJECT_REASON], "").to_numpy(zero_copy_only=False))
    if not len(rows):
        return {}
    codes = pc.dictionary_encode(ingest[S.ID].take(rows)).combine_chunks().indices.to_numpy()
    first = np.unique(codes, return_index=True)[1]  # each id's first row (among the parsed rows)
    later = np.flatnonzero(first[codes] != np.arange(len(codes)))
    src = ingest[S.SOURCE]  # only the duplicates' sources become Python strings
    return dict(zip(src.take(rows[later]).to_pylist(), src.take(rows[first[codes[later]]]).to_pylist(), strict=True))


def _groups(pairs: dict[str, str]) -> dict[str, Any]:
    """Group counts and examples from later member -> first member of its group."""
    groups: dict[str, list[str]] = {}
    for src, first in pairs.items():
        groups.setdefault(first, [first]).append(src)
    return {"groups": len(groups), "extra_copies": len(pairs), "examples": list(groups.values())[:EXAMPLES]}


def exact_report(dups: dict[str, str], removed: bool) -> dict[str, Any]:
    return _groups(dups) | {"removed": removed}


def near_duplicates(
    cfg: RunConfig, steps: Steps, rows: Callable[[], ray.data.Dataset], key: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Embed the rows (a resumable step) and link rows whose cosine is >= data.near_dup.

    Returns source of each later member -> the reason naming its group's first row, and the manifest report.
    """
    from raysel.select.cluster import group_summary, near_duplicate_groups

    threshold = cfg.data.near_dup
    ekey = key | {"embed": cfg.embed}
    emb = steps.run("embed", ekey, lambda p: embed_rows(rows(), cfg.embed, p, ekey))
    reps = near_duplicate_groups(read_vectors(emb), threshold, seed=cfg.seed)
    sources = pq.read_table(emb, columns=[S.SOURCE])[S.SOURCE].to_pylist()
    pairs = {sources[i]: sources[r] for i, r in enumerate(reps) if r != i}
    near = {src: f"near_duplicate of {first} (cosine >= {threshold})" for src, first in pairs.items()}
    report = _groups(pairs) | {
        "largest": group_summary(reps)["largest"],
        "threshold": threshold,
        "embed_model": cfg.embed.model,
        "column": cfg.embed.column,
        "removed": cfg.data.near_dedupe,
    }
    return near, report
