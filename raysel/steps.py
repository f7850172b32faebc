"""Resumable steps of a run directory, and the steps every method shares: embedding and cluster assignment."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import EmbedConfig
from raysel.io import LIGHT_CPUS, write_parquet_stream

if TYPE_CHECKING:
    import ray.data


class Steps:
    """<dir>/<name>.parquet (or a directory) + <dir>/<name>.done.json; a step is redone only when its key changes.

    <dir> is the run directory's steps/ unless given (IterIT's round_<e>/); `timings` can be shared.
    """

    def __init__(self, out: Path, dir: Path | None = None, timings: dict[str, Any] | None = None) -> None:
        self.dir = dir or out / "steps"
        self.timings: dict[str, Any] = {} if timings is None else timings
        self.prefix = "" if dir is None else f"{dir.name}/"

    def run(self, name: str, key: dict[str, Any], build: Callable[[Path], int], *, suffix: str = ".parquet") -> Path:
        """Run `build(path)` (it returns a row count) unless a completed copy made from the same key exists."""
        path, marker = self.dir / f"{name}{suffix}", self.dir / f"{name}.done.json"
        stamp = self.stamp(key)
        if path.exists() and marker.is_file() and marker.read_text() == stamp:
            self.timings[self.prefix + name] = "skipped (completed earlier)"
            return path
        self.dir.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        start = time.perf_counter()
        rows = build(path)
        took = self.timings[self.prefix + name] = round(time.perf_counter() - start, 3)
        print(f"[raysel] step {self.prefix}{name}: {rows} rows in {took} s", flush=True)
        marker.write_text(stamp)
        return path

    @staticmethod
    def stamp(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True, default=str)


def _fixed_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embed_rows(ds: ray.data.Dataset, cfg: EmbedConfig, path: Path) -> int:
    """Embed every row of `ds` in an actor pool and stream id, source, vector, ppl into `path` (float32)."""
    from raysel.stages.base import apply
    from raysel.stages.embed import EmbedStage

    def tables() -> Iterator[pa.Table]:
        for b in apply(ds, EmbedStage, cfg).iter_batches(batch_format="numpy", batch_size=None):
            vectors = np.asarray(b[S.EMBEDDING], dtype=np.float32)
            yield pa.table(
                [pa.array(b[S.ID], pa.string()), pa.array(b[S.SOURCE], pa.string()), _fixed_list(vectors),
                 pa.array(b[S.PPL_TEXT], pa.float32())],
                schema=S.embedding_schema(vectors.shape[1]),
            )  # fmt: skip

    return write_parquet_stream(tables(), path, S.embedding_schema(1))


def vectors_of(table: pa.Table) -> np.ndarray:
    """The embedding column as float32 [n, d] without per-row Python objects."""
    col = table[S.EMBEDDING].combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def read_vectors(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """All vectors of an embed step, or only those at the sorted positions `rows`, read batch by batch."""
    parts, offset = [], 0
    with pq.ParquetFile(path) as f:
        for rb in f.iter_batches(batch_size=65536, columns=[S.EMBEDDING]):
            t = pa.Table.from_batches([rb])
            if rows is None:
                parts.append(vectors_of(t))
            else:
                lo, hi = np.searchsorted(rows, [offset, offset + t.num_rows])
                if hi > lo:
                    parts.append(vectors_of(t.take(pa.array(rows[lo:hi] - offset))))
            offset += t.num_rows
    dim = pq.read_schema(path).field(S.EMBEDDING).type.list_size
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def _assign_batch(batch: pa.Table, centroids: np.ndarray) -> pa.Table:
    from raysel.select.cluster import assign

    labels, _ = assign(vectors_of(batch), centroids)
    return pa.table({S.ID: batch[S.ID], S.CLUSTER: pa.array(labels, pa.int32()), S.PPL_TEXT: batch[S.PPL_TEXT]})


def assign_clusters(embeddings: Path, centroids: np.ndarray, path: Path) -> int:
    """Every row's nearest centroid, in a Ray Data map over the embed step's file (the driver holds none)."""
    import ray.data

    ds = ray.data.read_parquet(str(embeddings), num_cpus=LIGHT_CPUS).map_batches(
        _assign_batch, fn_kwargs={"centroids": centroids}, batch_format="pyarrow", num_cpus=LIGHT_CPUS
    )
    schema = pa.schema([(S.ID, pa.string()), (S.CLUSTER, pa.int32()), (S.PPL_TEXT, pa.float32())])
    return write_parquet_stream((t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None)), path, schema)
