"""Duplicate finding: exact copies (same content id) and near duplicates (embedding cosine >= a threshold)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysel import schema as S
from raysel.config import RunConfig
from raysel.io import iter_parquet, take_rows
from raysel.run.steps import Steps
from raysel.vectors import embed_rows, read_vectors

if TYPE_CHECKING:
    import ray.data

EXAMPLES = 5
"""Groups quoted in the manifest."""


def find_duplicates(ingest: Path) -> dict[str, str]:
    """source of each later copy -> source of the first copy with the same id (rows in input order).

    `ingest` is the ingest step's file, read batch by batch: only the parsed rows' ids are held, as 16-byte
    keys (raysel's content ids are 32 hex digits), while they are sorted; only the duplicates' sources
    become Python strings."""
    rows_all, keys = _parsed_keys(ingest, as_text=False)
    if keys is None:  # ids that are not content ids (written by hand): compare them as text
        rows_all, keys = _parsed_keys(ingest, as_text=True)
    if not len(rows_all):
        return {}
    first = _first_copy(keys)
    del keys
    later = np.flatnonzero(first != np.arange(len(first)))
    return _source_pairs(ingest, rows_all[later], rows_all[first[later]])


def _source_pairs(path: Path, later: np.ndarray, first: np.ndarray) -> dict[str, str]:
    """source of the row at each `later` position -> source of the row at the matching `first` position,
    read from `path`'s source column for those rows only (the only sources that become Python strings)."""
    wanted = np.unique(np.concatenate([later, first]))
    at = dict(zip(wanted.tolist(), take_rows(path, wanted, [S.SOURCE])[S.SOURCE].to_pylist(), strict=True))
    return {at[d]: at[o] for d, o in zip(later.tolist(), first.tolist(), strict=True)}


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def _parsed_keys(ingest: Path, as_text: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the parsed rows and their id keys (None: some id is not 32 hex digits)."""
    rows, keys, offset = [], [], 0
    for t in iter_parquet(ingest, columns=[S.ID, S.REJECT_REASON], batch_size=65536):
        good = np.flatnonzero(pc.equal(t[S.REJECT_REASON], "").to_numpy(zero_copy_only=False))
        ids = t[S.ID].take(pa.array(good)).combine_chunks()
        key = np.array(ids.to_pylist(), dtype=object) if as_text else _hex_keys(ids)
        if key is None:
            return np.zeros(0, np.int64), None
        rows.append(good + offset)
        keys.append(key)
        offset += t.num_rows
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, object)
    return np.concatenate(rows), np.concatenate(keys)


def _hex_keys(ids: pa.StringArray) -> np.ndarray | None:
    """The 16 bytes of each 32-hex-digit id, as one sortable NumPy value per row (None if any id is not)."""
    if not len(ids):
        return np.zeros(0, "V16")
    lengths = pc.binary_length(ids)
    if ids.null_count or pc.min(lengths).as_py() != 32 or pc.max(lengths).as_py() != 32:
        return None
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
    nibbles = _HEX[np.frombuffer(ids.buffers()[2], np.uint8, count=32 * len(ids), offset=int(offsets[0]))]
    if (nibbles == 255).any():
        return None
    nibbles = nibbles.reshape(-1, 32)
    return np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view("V16").reshape(-1)


def _first_copy(keys: np.ndarray) -> np.ndarray:
    """For each row, the position of the first row with the same key."""
    if keys.dtype == object:
        first: dict[str, int] = {}
        return np.array([first.setdefault(k, i) for i, k in enumerate(keys)], np.int64)
    _, first_at, codes = np.unique(keys, return_index=True, return_inverse=True)  # stable: the earliest row
    return first_at[codes]


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
    emb = steps.run("embed", ekey, lambda p: embed_rows(rows(), cfg.embed, p, ekey, cfg.checkpoint_rows, steps))
    reps = near_duplicate_groups(read_vectors(emb), threshold, seed=cfg.seed)
    later = np.flatnonzero(reps != np.arange(len(reps)))
    pairs = _source_pairs(emb, later, reps[later])
    near = {src: f"near_duplicate of {first} (cosine >= {threshold})" for src, first in pairs.items()}
    report = _groups(pairs) | {
        "largest": group_summary(reps)["largest"],
        "threshold": threshold,
        "embed_model": cfg.embed.model,
        "column": cfg.embed.column,
        "removed": cfg.data.near_dedupe,
    }
    return near, report
