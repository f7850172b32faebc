"""Parse JSON and JSONL instruction files into canonical rows, keeping bad records with a reject reason."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any

from raysel import schema

_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SHAREGPT_KEY = "conversations"
OPENAI_KEY = "messages"  # the OpenAI chat format's record key, not the schema.MESSAGES column
_SHAPES = {SHAREGPT_KEY: ("from", "value"), OPENAI_KEY: ("role", "content")}  # -> (role key, text key)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class InputError(ValueError):
    """Raised in strict mode: the message names file, line, field and what to do."""


class _Problem(Exception):
    """One bad record: which field (if any), what is wrong, and how to fix it."""

    def __init__(self, field: str | None, problem: str, fix: str) -> None:
        prefix = f"field '{field}': " if field else ""
        self.reason = f"{prefix}{problem}. {fix}"
        super().__init__(self.reason)


@dataclass(frozen=True, kw_only=True)
class ColumnMap:
    """Which keys of an Alpaca-like record hold the instruction, the optional input and the output."""

    instruction: str = schema.INSTRUCTION
    input: str = schema.INPUT
    output: str = schema.OUTPUT


DEFAULT_COLUMNS = ColumnMap()


def detect_format(path: str) -> str:
    """Return ``"json"``, ``"jsonl"`` or ``"parquet"`` from the extension; ``InputError`` for others."""
    lower = path.lower()
    for ext, fmt in _FORMATS.items():
        if lower.endswith(ext):
            return fmt
    raise InputError(f"{path}: unsupported file extension. Use one of {', '.join(_FORMATS)}")


def parse_records(
    path: str, data: bytes, *, columns: ColumnMap = DEFAULT_COLUMNS, strict: bool = False
) -> list[dict[str, str]]:
    """Turn one JSON or JSONL file's bytes into canonical rows; bad rows are kept, with a reject reason.

    Args:
        path: The file's path: picks the format, prefixes ``source`` and messages.
        data: The file's bytes.
        columns: Keys of Alpaca-like records.
        strict: Raise on the first bad row instead of returning it rejected.

    Raises:
        InputError: the first bad row in strict mode; Parquet or unknown extensions.
    """
    fmt = detect_format(path)
    if fmt == "parquet":
        raise InputError(f"{path}: Parquet is read with pyarrow. Pass each row to normalize_record")
    base = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[base:]
    if fmt == "jsonl":
        return _parse_lines(path, data, columns, strict, base)
    return _parse_json(path, data, columns, strict, base)


def normalize_record(
    rec: Any, source: str, *, columns: ColumnMap = DEFAULT_COLUMNS, strict: bool = False, where: str = ""
) -> dict[str, str]:
    """Validate one decoded record (Alpaca, ShareGPT or OpenAI messages) into a canonical row.

    Rejected rows have ``id == ""`` and a non-empty ``reject_reason``; recovered text is kept.

    Args:
        rec: The decoded record (valid records are dicts).
        source: ``<file>:<n>`` stored in the row.
        columns: Keys of Alpaca-like records.
        strict: Raise ``InputError`` instead of returning a rejected row.
        where: Location for strict-mode messages; "" means ``source``.
    """
    row = dict.fromkeys(schema.CANONICAL, "") | {schema.SOURCE: source, schema.RAW: _dumps(rec)}
    try:
        _extract(rec, columns, row)
    except _Problem as problem:
        return _rejected(row, problem, where or source, strict)
    row[schema.ID] = schema.row_id(row[schema.INSTRUCTION], row[schema.INPUT], row[schema.OUTPUT])
    return row


def _dumps(obj: Any) -> str:
    """Compact JSON text, non-ASCII kept as is; values JSON cannot hold become their ``str``."""
    return json.dumps(obj, ensure_ascii=False, default=str)


def _rejected(row: dict[str, str], problem: _Problem, where: str, strict: bool) -> dict[str, str]:
    """Mark ``row`` rejected, or raise ``InputError`` in strict mode."""
    if strict:
        raise InputError(f"{where}: {problem.reason}") from None
    row.update({schema.ID: "", schema.MESSAGES: "", schema.REJECT_REASON: problem.reason})
    return row


def _unparsed(source: str, where: str, raw: str, problem: _Problem, strict: bool) -> dict[str, str]:
    """A rejected row for text that could not be decoded into a record."""
    row = dict.fromkeys(schema.CANONICAL, "") | {schema.SOURCE: source, schema.RAW: raw}
    return _rejected(row, problem, where, strict)


def _utf8_problem(data: bytes, base: int) -> _Problem | None:
    """The problem with ``data`` if it is not UTF-8 (``base`` = file offset of ``data``), else None."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return _Problem(None, f"not valid UTF-8 at byte {base + err.start}", "Re-encode the file as UTF-8")
    return None


def _parse_lines(path: str, data: bytes, columns: ColumnMap, strict: bool, base: int) -> list[dict[str, str]]:
    """JSONL: one row per non-blank line; ``source`` is the 1-based line number."""
    rows, offset = [], base
    for n, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            rows.append(_parse_line(f"{path}:{n}", line.removesuffix(b"\r"), offset, columns, strict))
        offset += len(line) + 1
    return rows


def _parse_line(source: str, line: bytes, offset: int, columns: ColumnMap, strict: bool) -> dict[str, str]:
    """One JSONL line (``offset`` = its byte offset in the file) as a canonical row."""
    text = line.decode("utf-8", errors="replace")
    problem = _utf8_problem(line, offset)
    if problem is None:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            problem = _Problem(None, f"invalid JSON ({err})", "Make the line one complete JSON object")
    if problem is not None:
        return _unparsed(source, source, text, problem, strict)
    return normalize_record(rec, source, columns=columns, strict=strict)


def _parse_json(path: str, data: bytes, columns: ColumnMap, strict: bool, base: int) -> list[dict[str, str]]:
    """A JSON list of records (or one record); falls back to JSONL when the file is JSON lines."""
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        if _looks_like_jsonl(text):
            return _parse_lines(path, data, columns, strict, base)
        fix = "Make the file one JSON list of records, or one JSON object per line"
        problem = _utf8_problem(data, base) or _Problem(None, f"invalid JSON ({err})", fix)
        return [_unparsed(f"{path}:1", path, text, problem, strict)]
    if problem := _utf8_problem(data, base):
        return [_unparsed(f"{path}:1", path, text, problem, strict)]
    records = doc if isinstance(doc, list) else [doc]
    return [
        normalize_record(rec, f"{path}:{i}", columns=columns, strict=strict, where=f"{path}: record {i}")
        for i, rec in enumerate(records, start=1)
    ]


def _looks_like_jsonl(text: str) -> bool:
    """True when the text starts with ``{`` and some line is a JSON object on its own."""
    if not text.lstrip().startswith("{"):
        return False
    for line in text.split("\n"):
        try:
            if isinstance(json.loads(line), dict):
                return True
        except json.JSONDecodeError:
            pass
    return False


def _type_name(value: Any) -> str:
    """A JSON name for ``value``'s type, for messages."""
    names = {
        type(None): "null",
        bool: "boolean",
        int: "number",
        float: "number",
        dict: "object",
        list: "list",
    }
    return names.get(type(value), type(value).__name__)


def _need_str(rec: dict[str, Any], key: str, field: str | None = None) -> str:
    """``rec[key]`` if it is a string; otherwise a problem naming ``field`` (default ``key``)."""
    if key not in rec:
        raise _Problem(field or key, "is missing", f"Add '{key}'")
    value = rec[key]
    if value is None:
        raise _Problem(field or key, "is null", 'Give it a string value ("" when empty)')
    if not isinstance(value, str):
        raise _Problem(field or key, f"is a {_type_name(value)}, expected a string", "Store it as text")
    return value


def _check_text(row: dict[str, str], instruction_field: str, output_field: str) -> None:
    """Reject empty or whitespace-only instruction and response."""
    if not row[schema.INSTRUCTION].strip():
        raise _Problem(instruction_field, "empty instruction", "Write the instruction or drop the record")
    if not row[schema.OUTPUT].strip():
        raise _Problem(output_field, "empty response", "Write the response or drop the record")


def _extract(rec: Any, columns: ColumnMap, row: dict[str, str]) -> None:
    """Fill ``row``'s text fields from ``rec`` by record kind; raise ``_Problem`` when it is bad."""
    if not isinstance(rec, dict):
        problem = f"record is a {_type_name(rec)}, expected a JSON object"
        raise _Problem(None, problem, "Write one object per record")
    if columns.instruction in rec or columns.output in rec:
        return _from_alpaca(rec, columns, row)
    for key in _SHAPES:
        if key in rec:
            return _from_conversation(rec, key, row)
    alpaca = f"'{columns.instruction}' and '{columns.output}' (Alpaca)"
    expected = f"{alpaca}, '{SHAREGPT_KEY}' (ShareGPT) or '{OPENAI_KEY}' (OpenAI)"
    problem = f"unknown record shape: expected keys {expected}; record has keys {sorted(rec)}"
    raise _Problem(None, problem, "Rename the keys or set the column mapping")


def _from_alpaca(rec: dict[str, Any], columns: ColumnMap, row: dict[str, str]) -> None:
    """Alpaca record: instruction and output required, input optional (default "")."""
    keys = (columns.instruction, columns.input, columns.output)
    pairs = tuple(zip((schema.INSTRUCTION, schema.INPUT, schema.OUTPUT), keys, strict=True))
    for column, key in pairs:
        if isinstance(rec.get(key), str):
            row[column] = rec[key]
    for key in (columns.instruction, columns.output):
        if key not in rec:
            problem = f"is missing; record has keys {sorted(rec)}"
            raise _Problem(key, problem, f"Add '{key}' or set the column mapping")
    for column, key in pairs:
        if key in rec:
            row[column] = _need_str(rec, key)
    _check_text(row, columns.instruction, columns.output)


def _turns(rec: dict[str, Any], key: str) -> list[dict[str, str]]:
    """The conversation under ``key`` in OpenAI form ``[{"role", "content"}, ...]``."""
    role_key, text_key = _SHAPES[key]
    turns = rec[key]
    if not isinstance(turns, list):
        fix = f"Store the conversation as a list of {{'{role_key}', '{text_key}'}} objects"
        raise _Problem(key, f"is a {_type_name(turns)}, expected a list of turns", fix)
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _Problem(where, f"is a {_type_name(turn)}, expected an object", "Make each turn an object")
        who = turn.get(role_key)
        role = _ROLES.get(who) if isinstance(who, str) else None
        if role is None:
            raise _Problem(f"{where}.{role_key}", f"unknown role {who!r}", f"Use one of {sorted(_ROLES)}")
        out.append({"role": role, "content": _need_str(turn, text_key, f"{where}.{text_key}")})
    return out


def _from_conversation(rec: dict[str, Any], key: str, row: dict[str, str]) -> None:
    """ShareGPT or OpenAI record: first user turn and the first assistant reply after it."""
    turns = _turns(rec, key)
    text_key = _SHAPES[key][1]
    roles = [turn["role"] for turn in turns]
    if "user" not in roles:
        raise _Problem(key, "conversation has no user turn", "Add a user turn or drop the record")
    u = roles.index("user")
    row[schema.INSTRUCTION] = turns[u]["content"]
    if "assistant" not in roles[u + 1 :]:
        problem = "conversation has no assistant reply after the first user turn"
        raise _Problem(key, problem, "Add the assistant reply or drop the record")
    a = roles.index("assistant", u + 1)
    row[schema.OUTPUT] = turns[a]["content"]
    _check_text(row, f"{key}[{u}].{text_key}", f"{key}[{a}].{text_key}")
    if roles.count("user") > 1 or roles.count("assistant") > 1 or "system" in roles:
        row[schema.MESSAGES] = _dumps(turns)
