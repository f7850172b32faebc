"""Resumable steps and the embedding file helpers, without Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.run.steps import Steps
from raysel.vectors import _fixed_list, read_vectors, vectors_of


def _write_embeddings(path: Path, vectors: np.ndarray) -> None:
    n = len(vectors)
    table = pa.table(
        [pa.array([f"id{i}" for i in range(n)]), pa.array([f"f:{i}" for i in range(n)]), _fixed_list(vectors),
         pa.array(np.full(n, np.nan, dtype=np.float32))],
        schema=S.embedding_schema(vectors.shape[1]),
    )  # fmt: skip
    pq.write_table(table, path, row_group_size=7)  # several row groups: reads cross batch boundaries


def test_vectors_round_trip_whole_and_by_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 6)).astype(np.float32)
    path = tmp_path / "e.parquet"
    _write_embeddings(path, vectors)
    np.testing.assert_array_equal(read_vectors(path), vectors)
    rows = np.array([0, 6, 7, 13, 14, 49])
    np.testing.assert_array_equal(read_vectors(path, rows), vectors[rows])
    assert read_vectors(path, np.array([], dtype=np.int64)).shape == (0, 6)
    assert vectors_of(pq.read_table(path)).dtype == np.float32


def test_step_runs_once_per_key(tmp_path: Path) -> None:
    steps, calls = Steps(tmp_path), []

    def build(path: Path) -> int:
        calls.append(path)
        pq.write_table(pa.table({"x": [1, 2]}), path)
        return 2

    first = steps.run("a", {"k": 1}, build)
    assert steps.run("a", {"k": 1}, build) == first and len(calls) == 1
    assert steps.timings["a"] == "skipped (completed earlier)"
    steps.run("a", {"k": 2}, build)  # another key: redone
    assert len(calls) == 2
    (tmp_path / "steps" / "a.done.json").unlink()  # killed before its stamp was written: redone
    steps.run("a", {"k": 2}, build)
    assert len(calls) == 3


def test_steps_upload_each_step_and_part_and_a_killed_stream_resumes(tmp_path: Path) -> None:
    """Steps hands every finished step and every part to its sync (a remote run directory's upload); a map step
    killed after its first part resumes after the rows that part holds, and the result is the uninterrupted one."""
    synced: list[str] = []
    steps = Steps(tmp_path, sync=lambda: synced.append("sync"))
    schema = pa.schema([(S.SOURCE, pa.string()), ("x", pa.int64())])
    rows = [f"f:{i}" for i in range(10)]
    seen: list[tuple[int | None, int]] = []

    def tables(done, offset: int, fail_after: int | None = None):
        seen.append((None if done is None else len(done), offset))
        skip = set() if done is None else set(done.to_pylist())
        todo = [r for r in rows if r not in skip]
        for i in range(0, len(todo), 2):
            if fail_after is not None and i >= fail_after:
                raise RuntimeError("killed")
            yield pa.table({S.SOURCE: todo[i : i + 2], "x": [int(r[2:]) for r in todo[i : i + 2]]}, schema=schema)

    path = tmp_path / "steps" / "m.parquet"
    path.parent.mkdir()
    try:
        steps.stream(path, {"k": 1}, lambda d, o: tables(d, o, fail_after=4), schema, part_rows=4)
    except RuntimeError:
        pass
    assert synced == ["sync"] and not path.exists()  # one part of 4 rows landed and was uploaded
    done = steps.run("m", {"k": 1}, lambda p: steps.stream(p, {"k": 1}, tables, schema, part_rows=4))
    assert seen[-1] == (4, 4)  # resumed after the 4 rows of the first part
    assert done == path and pq.read_table(path)["x"].to_pylist() == list(range(10))
    assert synced == ["sync"] * 4  # two more parts, then the finished step
