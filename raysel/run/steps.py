"""Resumable steps of a run directory: a step is a file plus a done-marker keyed on what made it, and a long map
step streams its output through resumable parts."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.io import LIGHT_CPUS, iter_parquet, write_parquet_stream

if TYPE_CHECKING:
    import ray.data


def _no_sync() -> None:
    return None


class Steps:
    """<dir>/<name>.parquet (or a directory) + <dir>/<name>.done.json; a step is redone only when its key changes.

    <dir> is the run directory's steps/ unless given (IterIT's round_<e>/); `timings` can be shared; `sync`
    uploads what landed (a remote run directory's RunDir.sync; raysel.run.context wires it).
    """

    def __init__(
        self,
        out: Path,
        dir: Path | None = None,
        timings: dict[str, Any] | None = None,
        sync: Callable[[], Any] = _no_sync,
    ) -> None:
        self.dir = dir or out / "steps"
        self.timings: dict[str, Any] = {} if timings is None else timings
        self.prefix = "" if dir is None else f"{dir.name}/"
        self.sync = sync

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
        self.sync()  # a remote run directory gets each step as it completes
        return path

    def stream(
        self,
        path: Path,
        key: dict[str, Any],
        tables: Callable[[pa.Array | None, int], Iterable[pa.Table]],
        schema: pa.Schema,
        *,
        part_rows: int,
    ) -> int:
        """stream_in_parts into `path`, each part uploaded as it lands."""
        return stream_in_parts(path, key, tables, schema, part_rows=part_rows, sync=self.sync)

    @staticmethod
    def stamp(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True, default=str)


PART_SECONDS = 120.0
"""A long map step writes a part every `part_rows` rows (config `checkpoint_rows`) or this often, whichever
comes first: a killed run loses at most that much of the step's work."""


def stream_in_parts(
    path: Path,
    key: dict[str, Any],
    tables: Callable[[pa.Array | None, int], Iterable[pa.Table]],
    schema: pa.Schema,
    *,
    part_rows: int,
    sync: Callable[[], Any] = _no_sync,
) -> int:
    """Write a row-wise map step into `path` through resumable parts; returns its row count.

    `tables(done, offset)` yields the step's output for the input rows whose `source` is not in `done` (None:
    all rows), in input order; `offset` is how many rows earlier parts hold. Parts go to `<path>.parts/`
    (renamed into place when complete, uploaded to a remote run directory as they land); a killed run
    skips the rows its parts hold. Outputs do not depend on batching, so the joined parts equal an
    uninterrupted run's output, row for row and in the same order.
    """
    parts = path.with_name(path.name.removesuffix(".parquet") + ".parts")
    keyfile, stamp = parts / "key.json", Steps.stamp(key)
    if parts.is_dir() and (not keyfile.is_file() or keyfile.read_text() != stamp):
        shutil.rmtree(parts)  # parts of another configuration or code
    parts.mkdir(parents=True, exist_ok=True)
    keyfile.write_text(stamp)
    done = sorted(parts.glob("part-*.parquet"))
    skip, offset = None, 0
    if done:
        skip = pa.chunked_array(
            [pq.read_table(p, columns=[S.SOURCE])[S.SOURCE] for p in done], pa.string()
        ).combine_chunks()
        offset = len(skip)
        print(f"[raysel] {path.name}: resuming after {offset} rows in {len(done)} parts", flush=True)
    buf: list[pa.Table] = []
    start = last = time.monotonic()
    written = 0

    def flush() -> None:
        nonlocal last, written
        part = parts / f"part-{len(done):06d}.parquet"
        written += write_parquet_stream(buf, part, schema)
        done.append(part)
        buf.clear()
        last = time.monotonic()
        sync()
        rate = written / max(last - start, 1e-9)
        print(f"[raysel] {path.name}: {offset + written} rows done ({rate:.1f} rows/s), part {len(done)}", flush=True)

    for t in tables(skip, offset):
        buf.append(t)
        if sum(b.num_rows for b in buf) >= part_rows or time.monotonic() - last >= PART_SECONDS:
            flush()
    if buf:
        flush()
    rows = write_parquet_stream(itertools.chain.from_iterable(iter_parquet(p) for p in done), path, schema)
    shutil.rmtree(parts)
    return rows


def _drop_done(batch: pa.Table, done: pa.Array) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch[S.SOURCE], value_set=done)))


def without(ds: ray.data.Dataset, done: pa.Array | None) -> ray.data.Dataset:
    """`ds` less the rows whose `source` is in `done` (a resumed map step's finished rows)."""
    if done is None or len(done) == 0:
        return ds
    return ds.map_batches(_drop_done, fn_kwargs={"done": done}, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
