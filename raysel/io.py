"""Corpus reading on Ray Data (files, dirs, globs, s3:// and gs://) and the run directory's files."""

from __future__ import annotations

import fnmatch
import glob
import io
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import DataConfig
from raysel.readers import ColumnMap, InputError, detect_format, normalize_record, parse_records

if TYPE_CHECKING:
    import ray.data

EXTENSIONS = (".json", ".jsonl", ".ndjson", ".parquet")
LIGHT_CPUS = 0.25
"""CPUs per read/parse/filter task: they are light, and whole-CPU tasks beside whole-CPU model actors
deadlock a 2-CPU machine (shared/notes/ray-data-llm-on-cpu.md, pitfall 2)."""


def _is_uri(path: str) -> bool:
    return "://" in path


def expand_input(path: str) -> list[str]:
    """The data files behind a file, directory (recursive) or glob, local or remote, sorted."""
    if not _is_uri(path):
        if any(c in path for c in "*?["):
            found = glob.glob(path, recursive=True)
        elif os.path.isdir(path):
            found = [str(p) for p in Path(path).rglob("*")]
        elif os.path.isfile(path):
            return [path]
        else:
            raise InputError(f"{path}: no such file or directory; check data.input (--input)")
        files = sorted(f for f in found if os.path.isfile(f) and f.lower().endswith(EXTENSIONS))
    else:
        files = _expand_remote(path)
    if not files:
        raise InputError(f"{path}: no {'/'.join(EXTENSIONS)} files found; check data.input (--input)")
    return files


def fingerprint(files: list[str]) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of each input file: a completed step is reused only for unchanged inputs."""
    from pyarrow import fs as pafs

    out = []
    for f in files:
        filesystem, path = pafs.FileSystem.from_uri(f) if _is_uri(f) else (pafs.LocalFileSystem(), os.path.abspath(f))
        info = filesystem.get_file_info(path)
        out.append((f, info.size or 0, info.mtime.timestamp() if info.mtime else 0.0))
    return out


def _expand_remote(uri: str) -> list[str]:
    from pyarrow import fs as pafs

    scheme = uri.split("://", 1)[0]
    pattern = next((i for i, c in enumerate(uri) if c in "*?["), None)
    root = uri if pattern is None else uri[: uri.rfind("/", 0, pattern)]
    try:
        filesystem, base = pafs.FileSystem.from_uri(root)
        info = filesystem.get_file_info(base)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{uri}: cannot list it ({e}); check data.input and the storage credentials") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{uri}: not found; check data.input (--input)")
    if info.type == pafs.FileType.File:
        return [uri]
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    files = [f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File]
    if pattern is not None:
        files = [f for f in files if fnmatch.fnmatch(f, uri)]
    return sorted(f for f in files if f.lower().endswith(EXTENSIONS))


def parse_file(path: str, data: bytes, columns: ColumnMap, strict: bool) -> list[dict[str, str]]:
    """Canonical rows of one file's bytes (JSON, JSONL or Parquet); bad rows carry a reject_reason."""
    if detect_format(path) != "parquet":
        return parse_records(path, data, columns=columns, strict=strict)
    try:
        records = pq.read_table(io.BytesIO(data)).to_pylist()
    except pa.ArrowException as e:
        if strict:
            raise InputError(f"{path}: not a readable Parquet file ({e}); re-export it") from None
        row = dict.fromkeys(S.CANONICAL, "")
        return [row | {S.SOURCE: path, S.REJECT_REASON: f"not a readable Parquet file: {e}"}]
    return [
        normalize_record(rec, f"{path}:{i}", columns=columns, strict=strict, where=f"{path}: row {i}")
        for i, rec in enumerate(records, start=1)
    ]


def _parse_batch(batch: dict[str, Any], columns: ColumnMap, strict: bool) -> pa.Table:
    rows: list[dict[str, str]] = []
    for path, data in zip(batch["path"], batch["bytes"], strict=True):
        rows += parse_file(str(path), bytes(data), columns, strict)
    return pa.Table.from_pylist(rows, schema=S.CANONICAL_SCHEMA)


def read_corpus(cfg: DataConfig, files: list[str] | None = None) -> ray.data.Dataset:
    """A Ray Dataset of canonical rows (rejected rows included, with their reason), in file/line order.

    Each file is parsed whole by one task, so line numbers are exact; many shards read in parallel.
    """
    import ray.data

    files = files if files is not None else expand_input(cfg.input)
    ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=LIGHT_CPUS)
    ds = ds.map_batches(
        _parse_batch,
        # Always lenient in the workers: the driver enforces data.strict on the first bad row in input
        # order, so the error is the same whatever the parallelism, and not wrapped in a Ray task error.
        fn_kwargs={"columns": cfg.columns, "strict": False},
        batch_size=1,
        batch_format="numpy",
        num_cpus=LIGHT_CPUS,
    )
    return ds.limit(cfg.limit) if cfg.limit else ds


LOCAL_READ_BYTES = 64 * 2**20
"""Inputs up to this size, all on the driver's disk, are parsed by the driver: a Ray Data read pass costs
seconds of fixed cost (task start, scheduling) that a small corpus does not repay."""


def parse_locally(cfg: DataConfig, files: list[str]) -> list[pa.Table] | None:
    """The corpus's canonical rows parsed here, one table per file exactly as read_corpus's tasks parse it
    (rejected rows included, data.limit applied), when every file is local and together they are at most
    LOCAL_READ_BYTES; else None (read them with read_corpus)."""
    if any(_is_uri(f) for f in files):
        return None
    try:
        if sum(os.path.getsize(f) for f in files) > LOCAL_READ_BYTES:
            return None
    except OSError:
        return None
    tables, left = [], cfg.limit
    for f in files:
        t = _parse_batch({"path": [f], "bytes": [Path(f).read_bytes()]}, cfg.columns, False)
        if left is not None:
            t = t.slice(0, left)
            left -= t.num_rows
        tables.append(t)
        if left == 0:
            break
    return tables


ROW_GROUP_ROWS = 65536
"""Row groups of the files raysel writes: a reader decodes one at a time, so its memory stays bounded."""


def write_parquet_stream(batches: Iterable[pa.Table], path: Path, empty_schema: pa.Schema | None = None) -> int:
    """Stream tables into one Parquet file (written to a temp name, renamed when complete); returns rows.

    With no tables at all (an empty corpus), an empty file with `empty_schema` is written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    writer, rows = None, 0
    if empty_schema is not None:
        batches = itertools.chain(batches, [None])
    try:
        for table in batches:
            if table is None:  # the end of a stream that may have been empty
                table = None if writer is not None else empty_schema.empty_table()
                if table is None:
                    break
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            elif table.schema != writer.schema:  # e.g. a batch whose string column arrived as large_string
                table = table.cast(writer.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"nothing to write into {path}")
    tmp.replace(path)
    return rows


def arrow_batches(ds: ray.data.Dataset) -> Iterator[pa.Table]:
    """A dataset's output as Arrow tables, block by block (in order when the context preserves it)."""
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def with_positions(tables: Iterable[pa.Table], names: list[str], start: int = 0) -> Iterator[pa.Table]:
    """The tables' `names` columns plus `position`: each row's 0-based place in the whole stream (+ start)."""
    offset = start
    for t in tables:
        positions = pa.array(range(offset, offset + t.num_rows), pa.int64())
        yield t.select(names).append_column(S.POSITION, positions)
        offset += t.num_rows


def iter_parquet(
    path: Path, columns: list[str] | None = None, batch_size: int = 4096, dictionary: list[str] | None = None
) -> Iterator[pa.Table]:
    """A Parquet file's rows in order, in record batches of bounded size, one row group read at a time.

    (pyarrow's threaded iter_batches reads row groups far ahead of the consumer: over a million-row file
    of text that is the whole text in memory at once.) `dictionary` columns (strings with few values, e.g.
    a reason) come dictionary-encoded: a small integer per row instead of the string."""
    with pq.ParquetFile(path, read_dictionary=dictionary) as f:
        if f.metadata.num_rows == 0:  # still one (empty) table, so callers see the columns
            yield f.schema_arrow.empty_table() if columns is None else f.read(columns=columns)
        for group in range(f.num_row_groups):
            for rb in f.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns, use_threads=False):
                yield pa.Table.from_batches([rb])


def read_columns(path: Path, columns: list[str] | None = None, dictionary: list[str] | None = None) -> pa.Table:
    """Columns of a Parquet file as one table, read row group by row group (pq.read_table's threaded
    reader costs several times the table's size in transient memory on a million-row file of text)."""
    return pa.concat_tables(iter_parquet(path, columns=columns, batch_size=65536, dictionary=dictionary))


def take_rows(path: Path, positions: np.ndarray, columns: list[str]) -> pa.Table:
    """The rows at sorted 0-based `positions` of a Parquet file, streamed (only those rows are kept)."""
    parts = list(iter_rows_at(path, positions, columns))
    return pa.concat_tables(parts) if parts else pq.read_schema(path).empty_table().select(columns)


def iter_rows_at(path: Path, positions: np.ndarray, columns: list[str]) -> Iterator[pa.Table]:
    """The rows at sorted 0-based `positions` of a Parquet file, batch by batch (none held beyond its batch)."""
    offset = 0
    for t in iter_parquet(path, columns=columns, batch_size=65536):
        lo, hi = np.searchsorted(positions, [offset, offset + t.num_rows])
        if hi > lo:
            yield t.take(pa.array(positions[lo:hi] - offset))
        offset += t.num_rows


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows as JSON lines (temp file, then rename); returns how many."""
    tmp, n = path.with_name(f".{path.name}.tmp"), 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            try:
                line = json.dumps(row, ensure_ascii=False, allow_nan=False)
            except ValueError:  # NaN/inf in an original record: JSON has no such number, write null
                line = json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False)
            f.write(line + "\n")
            n += 1
    tmp.replace(path)
    return n


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf) as None: strict JSON, which jq and browsers read."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
