"""Exact-duplicate search over the ingest summary (driver side, Arrow/NumPy)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.dedupe import find_duplicates
from raysel.schema import row_id


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)


def _ingest(ids: list[str], reasons: list[str] | None = None, chunks: int = 1) -> Path:
    n = len(ids)
    reasons = reasons or [""] * n
    cols = {S.ID: ids, S.SOURCE: [f"f.jsonl:{i + 1}" for i in range(n)], S.REJECT_REASON: reasons, S.RAW: [""] * n}
    table = pa.table(cols, schema=S.COMPACT_SCHEMA)
    step = max(1, -(-n // chunks))
    path = Path(f"ingest_{len(list(Path().glob('*.parquet')))}.parquet")
    pq.write_table(table, path, row_group_size=step)  # several row groups: read batch by batch
    return path


def test_content_ids_later_copies_point_at_the_first():
    a, b, c = (row_id(f"q{i}", "", f"a{i}") for i in range(3))
    got = find_duplicates(_ingest([a, b, a, c, b, a], chunks=3))
    assert got == {"f.jsonl:3": "f.jsonl:1", "f.jsonl:5": "f.jsonl:2", "f.jsonl:6": "f.jsonl:1"}


def test_rejected_rows_are_never_copies_and_never_firsts():
    a, b = row_id("q", "", "a"), row_id("r", "", "b")
    # row 1 is rejected (its id is empty); the first parsed copy of a is row 2
    got = find_duplicates(_ingest(["", a, b, a, ""], ["bad_json: x", "", "", "", "empty_output"]))
    assert got == {"f.jsonl:4": "f.jsonl:2"}


def test_ids_that_are_not_content_ids_are_compared_as_text():
    got = find_duplicates(_ingest(["x", "yy", "x", "zzz", "yy", "x"], chunks=2))
    assert got == {"f.jsonl:3": "f.jsonl:1", "f.jsonl:5": "f.jsonl:2", "f.jsonl:6": "f.jsonl:1"}
    a = row_id("q", "", "a")  # 32 hex digits in one row group, not in the next: all compared as text
    got = find_duplicates(_ingest([a, "x", a.upper(), a, "x"], chunks=2))
    assert got == {"f.jsonl:4": "f.jsonl:1", "f.jsonl:5": "f.jsonl:2"}


def test_no_duplicates_and_no_rows():
    assert find_duplicates(_ingest([row_id(f"q{i}", "", "a") for i in range(5)])) == {}
    assert find_duplicates(_ingest([])) == {}
    assert find_duplicates(_ingest(["", ""], ["bad_json: x", "bad_json: y"])) == {}
