"""Embedding steps and vectors, shared by near-duplicate detection (raysel.dedupe) and the methods: rows embedded
in an actor pool, vectors read back from parquet, rows assigned to K-Means centroids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import EmbedConfig
from raysel.io import LIGHT_CPUS, iter_parquet, take_rows, write_parquet_stream
from raysel.run.steps import Steps, without

if TYPE_CHECKING:
    import ray.data


def _fixed_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embed_rows(
    ds: ray.data.Dataset,
    cfg: EmbedConfig,
    path: Path,
    key: dict[str, Any] | None = None,
    part_rows: int = 10_000,
    steps: Steps | None = None,
) -> int:
    """Embed every row of `ds` in an actor pool and stream id, source, vector, ppl into `path` (float32).

    With the step's `key` (and the `steps` it belongs to), the step resumes from its parts (see
    raysel.run.steps.stream_in_parts)."""
    from raysel.stages.base import apply
    from raysel.stages.embed import EmbedStage

    def tables(done: pa.Array | None = None, offset: int = 0) -> Iterator[pa.Table]:
        for b in apply(without(ds, done), EmbedStage, cfg).iter_batches(batch_format="numpy", batch_size=None):
            vectors = np.asarray(b[S.EMBEDDING], dtype=np.float32)
            yield pa.table(
                [pa.array(b[S.ID], pa.string()), pa.array(b[S.SOURCE], pa.string()), _fixed_list(vectors),
                 pa.array(b[S.PPL_TEXT], pa.float32())],
                schema=S.embedding_schema(vectors.shape[1]),
            )  # fmt: skip

    if key is not None:
        if steps is None:
            raise ValueError("embed_rows: a resumable embed step (key given) needs the Steps it belongs to")
        return steps.stream(path, key, tables, S.embedding_schema(1), part_rows=part_rows)
    return write_parquet_stream(tables(), path, S.embedding_schema(1))


def vectors_of(table: pa.Table) -> np.ndarray:
    """The embedding column as float32 [n, d] without per-row Python objects."""
    col = table[S.EMBEDDING].combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def read_vectors(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """All vectors of an embed step, or only those at the sorted positions `rows`, read batch by batch."""
    if rows is not None:
        return vectors_of(take_rows(path, rows, [S.EMBEDDING]))
    parts = [vectors_of(t) for t in iter_parquet(path, columns=[S.EMBEDDING], batch_size=65536)]
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
