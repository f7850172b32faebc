"""End to end on CPU: `raysel select` / `raysel score ifd` through Ray Data, with the fake and real models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.cli import main
from raysel.config import load_config
from raysel.driver import run
from tests.conftest import TINY_JSONL

REQUIRED = ["id", "source", "loss_cond", "loss_direct", "score_ifd", "selected", "select_reason", "rank_ifd"]


def _reference_ifd(tok, model, instruction: str, inp: str, output: str, max_length: int) -> float:
    """IFD the way the paper's released code computes it: one row, whole-text tokenization, per-token loss."""
    import torch

    from raysel.templates import build_prompt

    def mean_answer_loss(text: str, max_len: int) -> float:
        ids = tok.encode(text)[:max_len]
        start = len(tok.encode(text[: text.rfind(output)]))
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        losses = [-logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
        return float(np.mean(losses[start - 1 : len(ids) - 1]))

    prompt = build_prompt("alpaca", instruction, inp)
    prompt_len = len(tok.encode(prompt))
    direct_prefix_len = len(tok.encode("### Response:"))
    cond = mean_answer_loss(prompt + output, max_length)
    direct = mean_answer_loss("### Response:" + output, max_length - prompt_len + direct_prefix_len)
    return cond / direct


@pytest.mark.slow  # SmolLM2 on real rows
def test_select_real_model_matches_paper_formula(shared_data: Path, ray_local, tmp_path: Path) -> None:
    src = shared_data / "alpaca_gpt4_1k.json"
    out = tmp_path / "run"
    overrides = {
        "data.input": str(src),
        "output": str(out),
        "data.limit": 20,
        "score.max_length": 160,
        "select.ratio": 0.25,
    }
    result = run(load_config(None, overrides))
    counts = result.manifest["counts"]
    # No resources set: sized from the 2-CPU Ray, one actor on all of it less the light tasks' share, one
    # 1-thread forward per core, padded on CPU.
    res = result.manifest["resources"]["score"]
    assert (res["concurrency"], res["num_cpus"], res["threads"], res["packing"], res["num_gpus"]) == (
        1, 1.75, 2, False, 0.0)  # fmt: skip
    # where the score step's time went, as the actor timed itself: start, model load, its batches
    timings = result.manifest["timings_s"]
    parts = timings["score_parts"]
    assert parts["actors"] == 1 and parts["model_load"] > 0 and parts["compute"] > 0, parts
    assert parts["actor_start"] + parts["model_load"] + parts["compute"] <= timings["score"] + 0.5, parts
    assert {"ray_start", "ingest", "score", "write", "report"} <= set(timings)
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert set(REQUIRED) <= set(scores.columns)
    # ids and scores only: the text stays in the corpus (and selected.jsonl); so does the score step's file
    assert not set(S.TEXT) & set(scores.columns)
    assert not set(S.TEXT) & set(pq.read_schema(out / "steps" / "score.parquet").names)
    assert counts["read"] == 20 and counts["read"] == counts["scored"] + counts["rejected_total"]
    original = json.loads(src.read_text())[:20]
    text = {S.row_id(r["instruction"], r["input"], r["output"]): r for r in original}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysel.backends.models import resolve_model

    path = resolve_model("smollm2")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    for row in scores.head(8).itertuples():
        r = text[row.id]
        ref = _reference_ifd(tok, model, r["instruction"], r["input"], r["output"], 160)
        assert math.isclose(row.score_ifd, ref, rel_tol=1e-3), (row.id, row.score_ifd, ref)
        assert math.isclose(row.ppl_cond, math.exp(row.loss_cond), rel_tol=1e-5)

    passed = scores[scores.score_ifd <= 1]
    k = int(len(passed) * 0.25)
    expected = set(passed.sort_values("score_ifd", ascending=False, kind="stable").id[:k])
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert {r["id"] for r in selected} == expected and len(selected) == counts["selected"] == k
    # the quoted rows' text came back from the workers: the selected rows and the report's examples
    quoted = pq.read_table(out / "steps" / "texts.parquet").to_pylist()
    assert {r["id"] for r in selected} <= {q["id"] for q in quoted} <= set(scores.id)
    for q in quoted:
        assert (q["instruction"], q["output"]) == (text[q["id"]]["instruction"], text[q["id"]]["output"])
        assert scores.id[q["position"]] == q["id"]
    by_text = {(r["instruction"], r["output"]): r for r in original}
    for r in selected:  # original fields come back intact, plus id and scores
        assert by_text[(r["instruction"], r["output"])]["input"] == r["input"]
        assert r["score_ifd"] <= 1 and r["loss_cond"] > 0
    assert json.loads((out / "manifest.json").read_text())["config"]["select"]["ratio"] == 0.25
    assert load_config(out / "config.yaml").score.max_length == 160


def _write_messy_corpus(d: Path) -> int:
    d.mkdir()
    good = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."} for i in range(6)]
    lines = [json.dumps(r) for r in good]
    lines += [
        "{not json",
        json.dumps({"instruction": "No output here."}),
        json.dumps({"instruction": "Null output.", "output": None}),
        json.dumps({"instruction": "Empty response.", "output": "   "}),
        json.dumps({"instruction": "Long one.", "output": "word " * 200_000}),  # a 1 MB response
        json.dumps(good[0]),  # a duplicate
    ]
    data = "\n".join(lines).encode() + b'\n{"instruction": "bad \xff byte", "output": "x"}\n'
    (d / "a.jsonl").write_bytes(data)
    import pyarrow as pa

    pq.write_table(
        pa.Table.from_pylist([{"instruction": "From parquet.", "input": "", "output": "Yes."}]),
        d / "b.parquet",
    )
    (d / "c.json").write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}])
    )
    return len(lines) + 1 + 1 + 1


def test_bad_input_is_counted_and_reported_never_lost(ray_local, tmp_path: Path) -> None:
    n = _write_messy_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    rc = main(
        [
            "select",
            "--input",
            f"file://{tmp_path}/corpus/*",
            "--output",
            str(out),
            "--backend",
            "fake",
            "--k",
            "3",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["read"] == n == c["scored"] + c["rejected_total"]
    assert c["rejected_input"] == 5 and c["duplicates"] == 1 and c["selected"] <= 3
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == c["rejected_total"]
    reasons = " | ".join(r["reason"] for r in rejected)
    for needle in ("JSON", "'output'", "null", "empty", "UTF-8", "duplicate of"):
        assert needle in reasons, needle
    assert all(r["source"] for r in rejected)
    scores = pq.read_table(out / "scores.parquet").to_pandas().set_index("source")
    long_row = scores.loc[f"{tmp_path}/corpus/a.jsonl:11"]
    assert long_row.n_answer_tokens > 0  # truncated to score
    assert np.isfinite(scores.loc[f"{tmp_path}/corpus/b.parquet:1"].score_ifd)
    assert np.isfinite(scores.loc[f"{tmp_path}/corpus/c.json:1"].score_ifd)
    # the report quotes its 10 highest and lowest rows (here all 9 scored): their text came back whole
    texts = pq.read_table(out / "steps" / "texts.parquet").to_pandas().set_index("source")
    assert len(texts) == c["scored"] and list(texts.position) == list(range(c["scored"]))
    assert texts.loc[f"{tmp_path}/corpus/a.jsonl:11"].output == "word " * 200_000
    assert {texts.loc[f"{tmp_path}/corpus/{f}"].instruction for f in ("b.parquet:1", "c.json:1")} == {
        "From parquet.",
        "Hi",
    }


def test_strict_mode_stops_with_file_line_and_field(ray_local, tmp_path: Path, capsys) -> None:
    _write_messy_corpus(tmp_path / "corpus")
    rc = main(
        [
            "select",
            "--input",
            str(tmp_path / "corpus" / "a.jsonl"),
            "--output",
            str(tmp_path / "run"),
            "--backend",
            "fake",
            "--strict",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "a.jsonl:7" in err and "JSON" in err


@pytest.mark.slow  # ~17 s here: two full runs on Ray
def test_rerun_skips_completed_steps_with_identical_outputs(ray_local, tmp_path: Path) -> None:
    src = TINY_JSONL
    args = ["select", "--input", str(src), "--output", str(tmp_path), "--backend", "fake", "--ratio", "0.5"]
    assert main(args) == 0
    first = {p: (tmp_path / p).read_bytes() for p in ("selected.jsonl", "rejected.jsonl", "scores.parquet")}
    assert main(args) == 0
    timings = json.loads((tmp_path / "manifest.json").read_text())["timings_s"]
    assert str(timings["score"]).startswith("skipped") and str(timings["ingest"]).startswith("skipped")
    assert first == {p: (tmp_path / p).read_bytes() for p in first}
    # Another config in the same directory is refused (nothing touched) unless --resume or --overwrite.
    assert main([*args, "--score.batch_size", "4"]) == 2
    assert first == {p: (tmp_path / p).read_bytes() for p in first}
    assert main([*args, "--resume", "--score.batch_size", "4", "--score.concurrency", "2"]) == 0  # resources only
    timings = json.loads((tmp_path / "manifest.json").read_text())["timings_s"]
    assert str(timings["score"]).startswith("skipped")
    assert main([*args, "--resume", "--template", "wiz"]) == 0  # a changed scoring config scores again
    timings = json.loads((tmp_path / "manifest.json").read_text())["timings_s"]
    assert isinstance(timings["score"], float) and str(timings["ingest"]).startswith("skipped")


def test_score_ifd_writes_scores_only(ray_local, tmp_path: Path) -> None:
    src = TINY_JSONL
    assert main(["score", "ifd", "--input", str(src), "--output", str(tmp_path), "--backend", "fake"]) == 0
    table = pq.read_table(tmp_path / "scores.parquet")
    assert {S.ID, S.SOURCE, S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD} <= set(table.column_names)
    assert S.SELECTED not in table.column_names and not set(S.TEXT) & set(table.column_names)
    assert not (tmp_path / "selected.jsonl").exists()
    assert np.isfinite(table[S.SCORE_IFD].to_numpy()).all()


@pytest.mark.parametrize("content", [b"", b"{broken\n" + json.dumps({"instruction": "x", "output": ""}).encode()])
def test_corpus_with_nothing_to_score_still_reports(ray_local, tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    out = tmp_path / "run"
    assert main(["select", "--input", str(src), "--output", str(out), "--backend", "fake"]) == 0
    c = json.loads((out / "manifest.json").read_text())["counts"]
    n_lines = len(content.splitlines())
    assert c["read"] == c["rejected_total"] == n_lines and c["scored"] == c["selected"] == 0
    assert pq.read_table(out / "scores.parquet").num_rows == 0
    assert len((out / "rejected.jsonl").read_text().splitlines()) == n_lines


def test_quoted_text_is_the_text_that_was_scored(ray_local, tmp_path: Path) -> None:
    """steps/texts.parquet comes from a second read of the corpus: each row must be the one scored at its
    position (same source and content id), else the run stops instead of pairing scores with other text."""
    import pyarrow as pa
    import ray.data

    from raysel.outputs import write_texts

    ids, sources = [c * 32 for c in "abc"], ["f.jsonl:1", "f.jsonl:2", "f.jsonl:3"]
    scored = tmp_path / "scored.parquet"
    pq.write_table(pa.table({S.ID: ids, S.SOURCE: sources, S.REJECT_REASON: [""] * 3}), scored)

    def corpus(row_ids: list[str]):
        cols = {S.ID: row_ids, S.SOURCE: sources, S.INSTRUCTION: ["q1", "q2", "q3"], S.INPUT: [""] * 3,
                S.OUTPUT: ["a1", "a2", "a3"], S.RAW: ['{"n": 1}', '{"n": 2}', '{"n": 3}']}  # fmt: skip
        return lambda: ray.data.from_arrow(pa.table(cols))

    assert write_texts(scored, corpus(ids), np.array([0, 2]), tmp_path / "texts.parquet") == 2
    texts = pq.read_table(tmp_path / "texts.parquet").to_pylist()
    assert [(t["position"], t["id"], t["instruction"], t["raw"]) for t in texts] == [
        (0, ids[0], "q1", '{"n": 1}'), (2, ids[2], "q3", '{"n": 3}')]  # fmt: skip
    edited = [ids[0], ids[1], "d" * 32]  # line 3 rewritten in place after it was scored
    with pytest.raises(RuntimeError, match="input changed during the run"):
        write_texts(scored, corpus(edited), np.array([0, 2]), tmp_path / "texts2.parquet")
    assert not (tmp_path / "texts2.parquet").exists()


@pytest.mark.slow  # ~16 s here: two full runs on Ray
def test_small_local_corpus_parsed_by_the_driver_gives_the_same_run(ray_local, tmp_path: Path) -> None:
    """A local corpus under LOCAL_READ_BYTES is parsed once by the driver (no Ray Data read passes); the same
    files through Ray Data's read tasks (a file:// URI is read as remote) give the same run, file for file."""
    from raysel.config import DataConfig
    from raysel.io import parse_locally

    _write_messy_corpus(tmp_path / "corpus")
    assert parse_locally(DataConfig(input="x"), [str(tmp_path / "corpus" / "a.jsonl")]) is not None
    assert parse_locally(DataConfig(input="x"), [f"file://{tmp_path}/corpus/a.jsonl"]) is None
    runs = {}
    for name, src in (("ray", f"file://{tmp_path}/corpus/*"), ("local", f"{tmp_path}/corpus/*")):
        out = tmp_path / name
        assert main(["select", "--input", src, "--output", str(out), "--backend", "fake", "--k", "3"]) == 0
        runs[name] = out
    for name in ("scores.parquet", "steps/texts.parquet", "steps/ingest.parquet"):
        a, b = (pq.read_table(runs[r] / name) for r in ("ray", "local"))
        assert a.equals(b), name
    for name in ("rejected.jsonl", "selected.jsonl"):
        assert (runs["ray"] / name).read_text() == (runs["local"] / name).read_text(), name
    counts = [json.loads((runs[r] / "manifest.json").read_text())["counts"] for r in ("ray", "local")]
    assert counts[0] == counts[1]
