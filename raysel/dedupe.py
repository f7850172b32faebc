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
    good = pc.equal(ingest[S.REJECT_REASON], "").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(good)
    if not len(rows):
        return {}
    ids = ingest[S.ID] if len(rows) == len(good) else ingest[S.ID].take(rows)
    first = _first_copy(ids.combine_chunks())
    later = np.flatnonzero(first != np.arange(len(first)))
    src = ingest[S.SOURCE]  # only the duplicates' sources become Python strings
    return dict(zip(src.take(rows[later]).to_pylist(), src.take(rows[first[later]]).to_pylist(), strict=True))


def _first_copy(ids: pa.StringArray) -> np.ndarray:
    """For each row, the position of the first row with the same id.

    Content ids have one width (hex digests): their bytes are viewed in place as fixed-width NumPy strings
    and sorted (about 60 bytes per row at the peak, where a hash table of every id took about 300). Ids of
    varying width go through Arrow's dictionary encoding."""
    lengths = pc.binary_length(ids)
    width = pc.max(lengths).as_py() or 0
    if ids.null_count or width == 0 or pc.min(lengths).as_py() != width:
        codes = pc.dictionary_encode(ids).indices.to_numpy()
        return np.unique(codes, return_index=True)[1][codes]
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
    fixed = np.frombuffer(ids.buffers()[2], dtype=f"S{width}", count=len(ids), offset=int(offsets[0]))
    _, first, codes = np.unique(fixed, return_index=True, return_inverse=True)  # stable: first = earliest row
    return first[codes]


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
