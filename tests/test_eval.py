"""`raysel eval` end to end on CPU: SmolLM2 fine-tuned per training set (Ray Train), answers through the generation
stage, a loopback OpenAI-compatible judge whose verdicts the test can predict from the answers alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.cli import main

KEY_ENV = "RAYSEL_TEST_EVAL_KEY"
os.environ[KEY_ENV] = "sk-eval-test"
TESTSETS, LIMIT, HELDOUT, FULL_ROWS = ("vicuna", "koala", "sinstruct"), 2, 4, 32


def judge_score(answer: str) -> int:
    """The loopback judge's score of one answer: its length in words, in 1..10, whatever slot it sits in."""
    return max(1, min(10, len(answer.split()) // 3))


@pytest.fixture(scope="module")
def server():
    from openai_server import JudgeServer

    with JudgeServer(scorer=judge_score) as s:
        yield s


@pytest.fixture(scope="module")
def sets(shared_data: Path, ray_local, tmp_path_factory) -> dict[str, Path]:
    """full: 32 real Alpaca-GPT4 rows; sel: a real `raysel select` run's selected.jsonl from them (fake scorer:
    the file format is what matters here)."""
    d = tmp_path_factory.mktemp("eval_sets")
    rows = json.loads((shared_data / "alpaca_gpt4_1k.json").read_text())[:FULL_ROWS]
    full = d / "full.jsonl"
    full.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = d / "select"
    assert main(["select", "--input", str(full), "--output", str(run), "--backend", "fake", "--k", "8"]) == 0
    return {"full": full, "sel": run / "selected.jsonl"}


def _args(out: Path, sets: dict[str, Path], shared_data: Path, url: str) -> list[str]:
    return [
        "eval", "--output", str(out), "--train-sets", f"full={sets['full']}", f"sel={sets['sel']}", "rand=random:sel",
        "--test-dir", str(shared_data / "testsets"), "--test-sets", ",".join(TESTSETS), "--test-limit", str(LIMIT),
        "--heldout_rows", str(HELDOUT), "--train.max_steps", "2", "--train.batch_size", "4",
        "--train.micro_batch_size", "2", "--train.max_length", "128", "--train.lr", "1e-3",
        "--generate.max_new_tokens", "24", "--judge.backend", "openai", "--judge.model", "loopback-judge",
        "--judge.base_url", url, "--judge.api_key_env", KEY_ENV,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(sets, shared_data: Path, server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    assert main(_args(out, sets, shared_data, server.url)) == 0
    return out


@pytest.mark.slow  # the `evaluated` run fine-tunes models with Ray Train
def test_models_are_trained_on_their_sets_with_the_heldout_rows_left_out(evaluated: Path, sets) -> None:
    r = json.loads((evaluated / "results.json").read_text())
    ts = r["train_sets"]
    assert list(ts) == ["full", "sel", "rand"]
    assert ts["full"]["rows_read"] == FULL_ROWS and ts["full"]["heldout_removed"] == HELDOUT
    assert ts["full"]["train_rows"] == FULL_ROWS - HELDOUT
    assert ts["sel"]["rows_read"] == 8 and ts["sel"]["train_rows"] == 8 - ts["sel"]["heldout_removed"]
    assert ts["rand"]["train_rows"] == ts["sel"]["train_rows"]  # the control is as large as the selection
    for name in ts:
        summary = json.loads((evaluated / "models" / name / "train_summary.json").read_text())
        assert summary["rows"] == ts[name]["train_rows"] and summary["total_steps"] == 2
        assert (evaluated / "models" / name / "config.json").is_file()
    assert not list((evaluated / "train").glob("sft-*"))  # checkpoints go once the model is written
    h = r["heldout"]
    assert h["rows"] == HELDOUT and set(h["loss"]) == {"full", "sel", "rand"}
    assert all(0 < loss < 20 for loss in h["loss"].values())
    for name in ts:
        held = pq.read_table(evaluated / "steps" / f"heldout_{name}.parquet")
        assert held.num_rows == HELDOUT and min(held[S.N_ANSWER_TOKENS].to_pylist()) > 0


@pytest.mark.slow  # the `evaluated` run fine-tunes models with Ray Train
def test_answers_come_from_each_fine_tuned_model(evaluated: Path) -> None:
    answers = {
        n: pq.read_table(evaluated / "steps" / f"answers_{n}.parquet").to_pylist() for n in ("full", "sel", "rand")
    }
    for rows in answers.values():
        assert [r["testset"] for r in rows] == [t for t in TESTSETS for _ in range(LIMIT)]
        assert all(r[S.GENERATED].strip() and 0 < r[S.GEN_TOKENS] <= 24 for r in rows)
    # the same prompts, answered by models trained on different rows at lr 1e-3: not all the same answers
    assert [r[S.GENERATED] for r in answers["sel"]] != [r[S.GENERATED] for r in answers["full"]]


@pytest.mark.slow  # the `evaluated` run fine-tunes models with Ray Train
def test_winning_score_matches_the_verdicts_predicted_from_the_answers(evaluated: Path, server) -> None:
    r = json.loads((evaluated / "results.json").read_text())
    assert set(r["comparisons"]) == {"sel vs full", "rand vs full"}
    for name, comp in r["comparisons"].items():
        a = pq.read_table(evaluated / "steps" / f"answers_{comp['a']}.parquet").to_pylist()
        b = pq.read_table(evaluated / "steps" / f"answers_{comp['b']}.parquet").to_pylist()
        expected: dict[str, list[int]] = {t: [0, 0, 0] for t in TESTSETS}  # win, tie, lose for A
        for ra, rb in zip(a, b, strict=True):
            sa, sb = judge_score(ra[S.GENERATED]), judge_score(rb[S.GENERATED])
            expected[ra["testset"]][0 if sa > sb else 2 if sa < sb else 1] += 1
        pooled = [sum(v[i] for v in expected.values()) for i in range(3)]
        for t, (w, tie, lose) in [*expected.items(), ("all", pooled)]:
            got = comp["testsets"][t]
            assert (got["win"], got["tie"], got["lose"], got["unjudged"]) == (w, tie, lose, 0), (name, t)
            assert got["winning_score"] == pytest.approx((w - lose) / (w + tie + lose) + 1)
    judge = r["judge"]
    assert judge["calls"] + judge["cached"] == 2 * 2 * LIMIT * len(TESTSETS)  # both orders, both comparisons
    assert judge["calls"] == server.requests
    md = (evaluated / "results.md").read_text()
    assert "| sel vs full | all (pooled) |" in md and "| rand | " in md
    html = (evaluated / "report.html").read_text()
    assert html.count("<img") >= 2 and "Winning score" in html


@pytest.mark.slow  # the `evaluated` run fine-tunes models with Ray Train
def test_a_rerun_redoes_nothing(evaluated: Path, sets, shared_data: Path, server, capsys) -> None:
    before = server.requests
    assert main(_args(evaluated, sets, shared_data, server.url)) == 0
    assert server.requests == before
    timings = json.loads((evaluated / "results.json").read_text())["timings_s"]
    assert timings and all(v == "skipped (completed earlier)" for v in timings.values()), timings
    assert "| sel vs full | all (pooled) |" in capsys.readouterr().out


def test_bad_arguments_stop_before_any_work(tmp_path: Path, shared_data: Path, capsys) -> None:
    base = ["eval", "--output", str(tmp_path / "o"), "--test-dir", str(shared_data / "testsets")]
    assert main([*base, "--train-sets", "full=a.json"]) == 2
    assert "at least two training sets" in capsys.readouterr().err
    assert main([*base, "--train-sets", "full=a.json", "rand=random:sel"]) == 2
    assert "must name a set that is a file" in capsys.readouterr().err
    assert main([*base, "--train-sets", "full=a.json", "sel=b.json", "--test-sets", "vicuna,mtbench"]) == 2
    assert "mtbench" in capsys.readouterr().err
    assert main([*base, "--train-sets", "full=/nonexistent/a.json", "sel=b.json"]) == 2
    assert "/nonexistent/a.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # the `evaluated` run fine-tunes models with Ray Train
def test_the_judge_budget_stops_a_comparison_cleanly_and_the_cache_resumes_it(
    evaluated: Path, sets, shared_data: Path, server, tmp_path: Path
) -> None:
    from raysel.config import load_eval_config
    from raysel.evaluate.run import _judge
    from raysel.judge import BudgetReached

    values = {"output": str(tmp_path), "train_sets": {k: str(v) for k, v in sets.items()},
              "test_dir": str(shared_data / "testsets"), "judge.backend": "openai", "judge.model": "loopback-judge",
              "judge.base_url": server.url, "judge.api_key_env": KEY_ENV, "judge.cache": str(tmp_path / "cache"),
              "judge.price_input_per_mtok": 100.0, "judge.price_output_per_mtok": 100.0,
              "judge.concurrency": 1}  # fmt: skip
    answers = [evaluated / "steps" / f"answers_{n}.parquet" for n in ("sel", "full")]
    path, before = tmp_path / "judge_sel_vs_full.parquet", server.requests
    with pytest.raises(BudgetReached, match="--resume and a higher --judge.budget_usd"):
        # a call reserves its worst case (prompt bytes + max_tokens, ~$0.2 here) and costs ~$0.05: a few fit
        _judge(load_eval_config(None, values | {"judge.budget_usd": 0.5}), tmp_path, *answers, path)
    assert not path.exists()
    paid = server.requests
    assert 0 < paid - before < 2 * LIMIT * len(TESTSETS)  # the budget let some calls through, not all
    assert _judge(load_eval_config(None, values), tmp_path, *answers, path) == LIMIT * len(TESTSETS)
    calls = pq.read_table(path, columns=[S.JUDGE_CALLS, S.JUDGE_CACHED]).to_pydict()
    # each order of each prompt is one call or one cache hit; what the budget let through is not paid twice
    assert sum(calls[S.JUDGE_CALLS]) + sum(calls[S.JUDGE_CACHED]) == 2 * LIMIT * len(TESTSETS)
    assert sum(calls[S.JUDGE_CALLS]) == server.requests - paid and sum(calls[S.JUDGE_CACHED]) >= paid - before
