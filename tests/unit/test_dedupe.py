"""Exact-duplicate search over the ingest summary (driver side, Arrow/NumPy)."""

import pyarrow as pa

from raysel import schema as S
from raysel.dedupe import find_duplicates
from raysel.schema import row_id


def _ingest(ids: list[str], reasons: list[str] | None = None, chunks: int = 1) -> pa.Table:
    n = len(ids)
    reasons = reasons or [""] * n
    cols = {S.ID: ids, S.SOURCE: [f"f.jsonl:{i + 1}" for i in range(n)], S.REJECT_REASON: reasons, S.RAW: [""] * n}
    table = pa.table(cols, schema=S.COMPACT_SCHEMA)
    step = max(1, -(-n // chunks))
    if n == 0:
        return table
    return pa.Table.from_batches([b for i in range(0, n, step) for b in table.slice(i, step).to_batches()])


def test_content_ids_later_copies_point_at_the_first():
    a, b, c = (row_id(f"q{i}", "", f"a{i}") for i in range(3))
    got = find_duplicates(_ingest([a, b, a, c, b, a], chunks=3))
    assert got == {"f.jsonl:3": "f.jsonl:1", "f.jsonl:5": "f.jsonl:2", "f.jsonl:6": "f.jsonl:1"}


def test_rejected_rows_are_never_copies_and_never_firsts():
    a, b = row_id("q", "", "a"), row_id("r", "", "b")
    # row 1 is rejected (its id is empty); the first parsed copy of a is row 2
    got = find_duplicates(_ingest(["", a, b, a, ""], ["bad_json: x", "", "", "", "empty_output"]))
    assert got == {"f.jsonl:4": "f.jsonl:2"}


def test_ids_of_varying_width_take_the_dictionary_path():
    got = find_duplicates(_ingest(["x", "yy", "x", "zzz", "yy", "x"], chunks=2))
    assert got == {"f.jsonl:3": "f.jsonl:1", "f.jsonl:5": "f.jsonl:2", "f.jsonl:6": "f.jsonl:1"}


def test_no_duplicates_and_no_rows():
    assert find_duplicates(_ingest([row_id(f"q{i}", "", "a") for i in range(5)])) == {}
    assert find_duplicates(_ingest([])) == {}
    assert find_duplicates(_ingest(["", ""], ["bad_json: x", "bad_json: y"])) == {}
