"""Tests for raysel.demo_corpus: the offline demo corpus built from stdlib docstrings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from raysel import demo_corpus
from raysel.demo_corpus import MAX_CHARS, MIN_CHARS, build_corpus, write_corpus

KEYS = {"instruction", "input", "output", "kind"}


def _named(row: dict[str, str]) -> str:
    """Return the qualified name of the object a row's prompt asks about."""
    quoted = re.search(r"`([^`]+)`", row["instruction"])
    return quoted.group(1) if quoted else row["input"].split("(")[0]


def _repo_root() -> str:
    """Return the directory that holds the raysel package."""
    return str(Path(demo_corpus.__file__).resolve().parents[1])


def _triple(row: dict[str, str]) -> tuple[str, str, str]:
    return row["instruction"], row["input"], row["output"]


def test_same_seed_gives_identical_rows() -> None:
    assert build_corpus(150, seed=3) == build_corpus(150, seed=3)


def test_different_seed_gives_different_rows() -> None:
    assert build_corpus(150, seed=0) != build_corpus(150, seed=1)


def test_stable_across_processes_with_different_hash_seeds() -> None:
    code = "import json; from raysel.demo_corpus import build_corpus; print(json.dumps(build_corpus(60)))"
    outs = []
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "PATH": ""}
        args = [sys.executable, "-c", code]
        done = subprocess.run(args, env=env, cwd=_repo_root(), capture_output=True, text=True, check=True)
        outs.append(json.loads(done.stdout))
    assert outs[0] == outs[1] == build_corpus(60)


@pytest.mark.parametrize("n", [0, 1, 7, 200, 500])
def test_exact_row_count_and_keys(n: int) -> None:
    rows = build_corpus(n)
    assert len(rows) == n
    assert all(set(row) == KEYS and all(isinstance(v, str) for v in row.values()) for row in rows)


@pytest.mark.parametrize(("n", "dup", "mis"), [(200, 0.05, 0.1), (333, 0.2, 0.15), (50, 0.0, 0.0)])
def test_kind_counts_match_rates(n: int, dup: float, mis: float) -> None:
    kinds = Counter(row["kind"] for row in build_corpus(n, duplicate_rate=dup, mismatch_rate=mis))
    assert kinds["duplicate"] == round(n * dup)
    assert kinds["mismatched"] == round(n * mis)
    assert kinds["clean"] == n - round(n * dup) - round(n * mis)
    assert set(kinds) <= {"clean", "duplicate", "mismatched"}


def test_duplicates_copy_a_clean_row() -> None:
    rows = build_corpus(300, seed=5, duplicate_rate=0.1)
    clean = {_triple(row) for row in rows if row["kind"] == "clean"}
    dups = [row for row in rows if row["kind"] == "duplicate"]
    assert len(dups) == 30
    assert all(_triple(row) in clean for row in dups)
    assert len(clean) == sum(row["kind"] == "clean" for row in rows), "clean rows must be distinct"


def test_mismatched_output_is_not_the_named_objects_doc() -> None:
    docs = {obj["name"]: obj["doc"] for obj in demo_corpus._candidates()}
    rows = build_corpus(300, seed=2, mismatch_rate=0.2)
    mismatched = [row for row in rows if row["kind"] == "mismatched"]
    assert len(mismatched) == 60
    for row in mismatched:
        name = _named(row)
        assert name in docs
        assert row["output"] != docs[name]
        assert row["output"] in docs.values()


def test_clean_output_documents_the_named_object() -> None:
    docs = {obj["name"]: obj["doc"] for obj in demo_corpus._candidates()}
    for row in build_corpus(200, seed=4):
        if row["kind"] == "clean":
            assert row["output"].endswith(docs[_named(row)])


def test_outputs_non_empty_and_within_bounds() -> None:
    rows = build_corpus(500, seed=9)
    assert all(MIN_CHARS <= len(row["output"]) <= MAX_CHARS for row in rows)
    assert all(row["instruction"].strip() and row["output"].strip() for row in rows)
    assert any(row["input"] for row in rows) and any(not row["input"] for row in rows)
    assert any(row["output"].startswith("Signature: `") for row in rows)


def test_fast_enough() -> None:
    start = time.perf_counter()
    build_corpus(500, seed=11)
    assert time.perf_counter() - start < 2.0


def test_no_warnings_emitted(recwarn: pytest.WarningsRecorder) -> None:
    demo_corpus._candidates.cache_clear()
    build_corpus(100, seed=1)
    assert len(recwarn) == 0


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        build_corpus(10, duplicate_rate=0.8, mismatch_rate=0.5)
    with pytest.raises(ValueError):
        build_corpus(10**6)


def test_write_corpus_writes_jsonl_and_counts(tmp_path) -> None:
    path = tmp_path / "sub" / "corpus.jsonl"
    counts = write_corpus(path, 120, seed=7)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 120
    rows = [json.loads(line) for line in lines]
    assert rows == build_corpus(120, seed=7)
    kinds = Counter(row["kind"] for row in rows)
    expected = {"rows": 120, "clean": kinds["clean"], "duplicates": kinds["duplicate"]}
    assert counts == {**expected, "mismatched": kinds["mismatched"]}
    assert counts["duplicates"] == round(120 * 0.05) and counts["mismatched"] == round(120 * 0.1)
