"""Unit tests for raysel.readers: formats, record kinds, ids, rejections and strict mode."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from raysel import schema
from raysel.readers import ColumnMap, InputError, detect_format, normalize_record, parse_records

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY = ASSETS / "tiny_instructions.jsonl"


def _jsonl(*records: object) -> bytes:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode("utf-8") + b"\n"


def _one(path: str, line: bytes, **kwargs: object) -> dict[str, str]:
    rows = parse_records(path, line, **kwargs)
    assert len(rows) == 1
    return rows[0]


def _good(row: dict[str, str]) -> bool:
    return row[schema.REJECT_REASON] == ""


ALPACA = {"instruction": "Say hi.", "input": "", "output": "Hi!"}


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("a.json", "json"),
        ("dir/A.JSON", "json"),
        ("a.jsonl", "jsonl"),
        ("s3://b/a.ndjson", "jsonl"),
        ("a.parquet", "parquet"),
    ],
)
def test_detect_format(path: str, fmt: str) -> None:
    assert detect_format(path) == fmt


def test_detect_format_unsupported_names_path_and_extensions() -> None:
    with pytest.raises(InputError) as exc:
        detect_format("data/train.csv")
    assert "data/train.csv" in str(exc.value)
    assert ".jsonl" in str(exc.value) and ".parquet" in str(exc.value)


def test_parse_records_refuses_parquet() -> None:
    with pytest.raises(InputError, match="normalize_record"):
        parse_records("x.parquet", b"PAR1")


def test_asset_file_all_valid_with_canonical_keys() -> None:
    path = str(TINY)
    rows = parse_records(path, TINY.read_bytes())
    assert len(rows) == 24
    assert all(_good(r) for r in rows)
    assert all(tuple(r) == schema.CANONICAL and all(isinstance(v, str) for v in r.values()) for r in rows)
    assert [r[schema.SOURCE] for r in rows] == [f"{path}:{n}" for n in range(1, 25)]
    assert all(r[schema.MESSAGES] == "" for r in rows)
    assert len({r[schema.ID] for r in rows}) == 21


def test_asset_duplicates_and_whitespace_variant_share_ids() -> None:
    rows = parse_records(str(TINY), TINY.read_bytes())
    ids = [r[schema.ID] for r in rows]
    assert ids[0] == ids[12]  # exact duplicate
    assert ids[3] == ids[19]  # exact duplicate (code answer)
    assert ids[8] == ids[16]  # outer whitespace only
    assert rows[16][schema.INSTRUCTION] == "  How many continents are there?\n"  # stored text untouched


def test_jsonl_raw_source_and_blank_lines() -> None:
    rec = {"instruction": "Café ☕?", "output": "Oui.", "extra": [1, 2]}
    data = b"\n" + _jsonl(rec) + b"   \n\n" + _jsonl(ALPACA)
    rows = parse_records("f.jsonl", data)
    assert [r[schema.SOURCE] for r in rows] == ["f.jsonl:2", "f.jsonl:5"]
    assert rows[0][schema.RAW] == json.dumps(rec, ensure_ascii=False)
    assert rows[0][schema.INPUT] == ""  # input is optional


def test_jsonl_crlf_and_bom() -> None:
    data = b"\xef\xbb\xbf" + _jsonl(ALPACA, ALPACA).replace(b"\n", b"\r\n")
    rows = parse_records("f.jsonl", data)
    assert len(rows) == 2 and all(_good(r) for r in rows)


def test_json_list_uses_record_numbers() -> None:
    recs = [ALPACA, {"instruction": "Count to 3.", "output": "1, 2, 3"}]
    rows = parse_records("f.json", json.dumps(recs, indent=2).encode())
    assert [r[schema.SOURCE] for r in rows] == ["f.json:1", "f.json:2"]
    assert rows[1][schema.OUTPUT] == "1, 2, 3"
    assert rows[1][schema.RAW] == json.dumps(recs[1], ensure_ascii=False)


def test_json_single_object_is_one_record() -> None:
    row = _one("f.json", json.dumps(ALPACA).encode())
    assert _good(row) and row[schema.SOURCE] == "f.json:1"


def test_json_file_that_is_actually_jsonl() -> None:
    data = _jsonl(ALPACA, {"instruction": "Other?", "output": "Yes."}) + b"\n" + b"{broken\n"
    rows = parse_records("f.json", data)
    assert len(rows) == 3
    assert [_good(r) for r in rows] == [True, True, False]
    assert rows[2][schema.SOURCE] == "f.json:4"


@pytest.mark.parametrize(
    ("path", "data"),
    [("e.json", b""), ("e.json", b"\n  \n"), ("e.json", b"[]"), ("e.jsonl", b""), ("e.jsonl", b"\n \n")],
)
def test_empty_files_have_no_rows(path: str, data: bytes) -> None:
    assert parse_records(path, data, strict=True) == []


def test_json_invalid_whole_file_is_one_rejected_row() -> None:
    row = _one("f.json", b'[{"instruction": "x", "output": "y"},')
    assert not _good(row) and "invalid JSON" in row[schema.REJECT_REASON]
    assert row[schema.ID] == ""


def test_json_list_not_utf8_is_one_rejected_row() -> None:
    data = b'[{"instruction": "caf\xe9", "output": "y"}]'
    row = _one("f.json", data)
    assert "not valid UTF-8 at byte 21" in row[schema.REJECT_REASON]
    assert row[schema.ID] == "" and "\ufffd" in row[schema.RAW]


def test_json_lines_not_utf8_handled_per_line() -> None:
    data = _jsonl(ALPACA) + b'{"instruction": "caf\xe9", "output": "y"}\n'
    rows = parse_records("f.json", data)
    assert [_good(r) for r in rows] == [True, False]
    assert "not valid UTF-8" in rows[1][schema.REJECT_REASON]


# --- record kinds ------------------------------------------------------------------------------


def test_column_map() -> None:
    rec = {"prompt": "Q?", "context": "ctx", "answer": "A."}
    cols = ColumnMap(instruction="prompt", input="context", output="answer")
    row = _one("f.jsonl", _jsonl(rec), columns=cols)
    assert (row[schema.INSTRUCTION], row[schema.INPUT], row[schema.OUTPUT]) == ("Q?", "ctx", "A.")
    assert row[schema.ID] == schema.row_id("Q?", "ctx", "A.")
    assert not _good(_one("f.jsonl", _jsonl(rec)))  # default map does not know these keys


def test_sharegpt_single_turn_has_no_messages() -> None:
    rec = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    row = _one("f.jsonl", _jsonl(rec))
    assert _good(row)
    assert (row[schema.INSTRUCTION], row[schema.INPUT], row[schema.OUTPUT]) == ("Hi?", "", "Hello.")
    assert row[schema.MESSAGES] == ""


def test_sharegpt_with_system_turn_keeps_messages_in_openai_form() -> None:
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi?"},
        {"from": "gpt", "value": "Hello."},
    ]
    row = _one("f.jsonl", _jsonl({"conversations": turns}))
    assert json.loads(row[schema.MESSAGES]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]


def test_openai_single_turn() -> None:
    rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    row = _one("f.jsonl", _jsonl(rec))
    assert _good(row) and row[schema.OUTPUT] == "4" and row[schema.MESSAGES] == ""


def test_openai_multi_turn_keeps_whole_conversation() -> None:
    msgs = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Pear."},
    ]
    row = _one("f.jsonl", _jsonl({"messages": msgs}))
    assert _good(row)
    assert (row[schema.INSTRUCTION], row[schema.OUTPUT]) == ("Name a fruit.", "Apple.")
    assert json.loads(row[schema.MESSAGES]) == msgs


def test_text_is_stored_unstripped() -> None:
    rec = {"instruction": "  Q?\r\n", "input": " in ", "output": "\tA.  "}
    row = _one("f.jsonl", _jsonl(rec))
    assert (row[schema.INSTRUCTION], row[schema.INPUT], row[schema.OUTPUT]) == ("  Q?\r\n", " in ", "\tA.  ")
    assert row[schema.ID] == schema.row_id("Q?", "in", "A.")


def test_one_megabyte_response_kept_whole() -> None:
    big = "word " * 210_000
    row = _one("f.jsonl", _jsonl({"instruction": "Ramble.", "output": big}))
    assert _good(row) and row[schema.OUTPUT] == big and len(big) > 1_000_000


def test_normalize_record_handles_parquet_style_rows() -> None:
    row = normalize_record({"instruction": "Q?", "input": None, "output": "A."}, "t.parquet:3")
    assert row[schema.SOURCE] == "t.parquet:3"
    assert "field 'input'" in row[schema.REJECT_REASON] and "null" in row[schema.REJECT_REASON]


# --- ids -----------------------------------------------------------------------------------------


def test_ids_stable_across_calls() -> None:
    data = TINY.read_bytes()
    first = [r[schema.ID] for r in parse_records("a.jsonl", data)]
    second = [r[schema.ID] for r in parse_records("b.jsonl", data)]
    assert first == second


def test_ids_differ_for_different_content() -> None:
    base = _one("f.jsonl", _jsonl(ALPACA))[schema.ID]
    for key in ("instruction", "input", "output"):
        changed = dict(ALPACA, **{key: ALPACA[key] + " more"})
        assert _one("f.jsonl", _jsonl(changed))[schema.ID] != base
    moved = {"instruction": "Say hi.", "input": "Hi!", "output": "Hi!"}
    assert _one("f.jsonl", _jsonl(moved))[schema.ID] != base


def test_same_content_same_id_across_formats() -> None:
    sharegpt = {"conversations": [{"from": "user", "value": "Say hi."}, {"from": "assistant", "value": "Hi!"}]}
    assert _one("f.jsonl", _jsonl(sharegpt))[schema.ID] == _one("f.json", json.dumps([ALPACA]).encode())[schema.ID]


# --- rejections ----------------------------------------------------------------------------------

REJECTS = [
    pytest.param(b'{"instruction": "x", "output": ', None, "invalid JSON", id="malformed-json"),
    pytest.param(b'{"instruction": "Q?", "input": ""}', "output", "is missing", id="missing-field"),
    pytest.param(b'{"instruction": null, "output": "A."}', "instruction", "is null", id="null-field"),
    pytest.param(b'{"instruction": "Q?", "output": 42}', "output", "is a number", id="numeric-field"),
    pytest.param(b'{"instruction": "Q\xff\xfe?", "output": "A."}', None, "not valid UTF-8 at byte", id="non-utf8"),
    pytest.param(b'{"instruction": "Q?", "output": ""}', "output", "empty response", id="empty-response"),
    pytest.param(b'{"instruction": " \\t\\n ", "output": "A."}', "instruction", "empty instruction", id="blank-instr"),
    pytest.param(b'["Q?", "A."]', None, "expected a JSON object", id="non-object"),
    pytest.param(
        b'{"conversations": [{"from": "human", "value": "Q?"}]}',
        "conversations",
        "no assistant reply",
        id="no-reply",
    ),
    pytest.param(
        b'{"messages": [{"role": "assistant", "content": "A."}]}',
        "messages",
        "no user turn",
        id="no-user-turn",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "Q?"}, {"role": "bot", "content": "A."}]}',
        "messages[1].role",
        "unknown role",
        id="unknown-role",
    ),
    pytest.param(b'{"question": "Q?", "answer": "A."}', None, "unknown record shape", id="unknown-shape"),
]


@pytest.mark.parametrize(("line", "field", "problem"), REJECTS)
def test_rejected_rows_are_kept_with_reason(line: bytes, field: str | None, problem: str) -> None:
    data = _jsonl(ALPACA) + line + b"\n" + _jsonl(ALPACA)
    rows = parse_records("in.jsonl", data)
    assert [_good(r) for r in rows] == [True, False, True]
    bad = rows[1]
    reason = bad[schema.REJECT_REASON]
    assert problem in reason
    if field is not None:
        assert f"field '{field}'" in reason
    assert bad[schema.ID] == "" and bad[schema.SOURCE] == "in.jsonl:2"
    assert bad[schema.RAW] and tuple(bad) == schema.CANONICAL


@pytest.mark.parametrize(("line", "field", "problem"), REJECTS)
def test_strict_mode_raises_with_path_line_and_field(line: bytes, field: str | None, problem: str) -> None:
    data = _jsonl(ALPACA) + b"\n" + line + b"\n"
    with pytest.raises(InputError) as exc:
        parse_records("data/in.jsonl", data, strict=True)
    msg = str(exc.value)
    assert msg.startswith("data/in.jsonl:3: ") and problem in msg
    if field is not None:
        assert f"field '{field}'" in msg


def test_strict_json_list_says_record() -> None:
    data = json.dumps([ALPACA, {"instruction": "Q?", "output": 1.5}]).encode()
    with pytest.raises(InputError, match=r"^f\.json: record 2: field 'output': is a number"):
        parse_records("f.json", data, strict=True)


def test_strict_mode_passes_good_files() -> None:
    assert len(parse_records(str(TINY), TINY.read_bytes(), strict=True)) == 24


def test_missing_field_lists_keys_and_keeps_recovered_text() -> None:
    row = _one("f.jsonl", b'{"instruction": "Q?", "extra": 1}\n')
    assert "'instruction'" in row[schema.REJECT_REASON] and "'extra'" in row[schema.REJECT_REASON]
    assert row[schema.INSTRUCTION] == "Q?" and row[schema.OUTPUT] == ""


def test_non_utf8_raw_is_replaced_text() -> None:
    row = _one("f.jsonl", b'{"instruction": "Q\xff\xfe?", "output": "A."}\n')
    assert row[schema.RAW] == '{"instruction": "Q\ufffd\ufffd?", "output": "A."}'
    assert "at byte 18" in row[schema.REJECT_REASON]


def test_lenient_mode_returns_every_non_blank_line() -> None:
    lines = [p.values[0] for p in REJECTS] + TINY.read_bytes().splitlines()
    data = b"\n\n".join(lines) + b"\n"
    rows = parse_records("mixed.jsonl", data)
    non_blank = [ln for ln in data.split(b"\n") if ln.strip()]
    good = sum(_good(r) for r in rows)
    assert good + (len(rows) - good) == len(non_blank) == len(REJECTS) + 24
    assert len(rows) - good == len(REJECTS)


def test_readers_imports_no_heavy_dependencies() -> None:
    import raysel.readers as readers

    tree = ast.parse(Path(readers.__file__).read_text(encoding="utf-8"))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"ray", "torch", "transformers"}
