"""IterSelectTune end to end: rounds by the spec (tiny models), rerun, resume after a kill without re-judging
(loopback OpenAI-compatible server), and the CLI with real models and the local judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.cli import main
from raysel.config import load_config
from raysel.driver import run
from raysel.select.cluster import sample_proportional
from raysel.train.classifier import HardClassifier, classifier_text, probabilities
from raysel.vectors import read_vectors
from tests.conftest import REPO_ROOT, read_tiny_rows
from tests.procs import sigkill_when

pytestmark = pytest.mark.slow  # trains classifiers with Ray Train, kills a driver, runs SmolLM2 and MiniLM

BATCH, TRAINING_ROUNDS, ALPHA = 3, 2, 0.8
KEY_ENV, SECRET = "RAYSEL_TEST_IST_KEY", "sk-ist-test-secret-4b1d"
os.environ[KEY_ENV] = SECRET  # at import, before any test starts Ray: the judge actors inherit it


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from tiny_bert import build_tiny_bert

    texts = [r[k] for r in read_tiny_rows() for k in ("instruction", "input")]
    return build_tiny_bert(tmp_path_factory.mktemp("ist_bert"), texts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny rows; the loopback judge prefers references marked GOOD (hard rows) and dislikes BAD ones."""
    path = tmp_path_factory.mktemp("ist_data") / "rows.jsonl"
    rows = read_tiny_rows()
    for i, r in enumerate(rows):
        r["output"] += [" GOOD", " BAD", ""][i % 3]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server():
    from openai_server import JudgeServer

    with JudgeServer() as s:
        yield s


def _tiny(out: Path, bert: str, corpus: Path, url: str, **extra) -> dict:
    return {
        "output": str(out),
        "data.input": str(corpus),
        "select.method": "iterselecttune",
        "select.ratio": 0.5,
        "embed.backend": "fake",
        "generate.backend": "fake",
        "generate.max_new_tokens": 8,
        "judge.backend": "openai",
        "judge.model": "loopback-judge",
        "judge.base_url": url,
        "judge.api_key_env": KEY_ENV,
        "judge.price_input_per_mtok": 2.5,
        "judge.price_output_per_mtok": 10.0,
        "classifier.model": bert,
        "classifier.epochs": 2,
        "cluster.k": 4,
        "iterselecttune.subset_ratio": 1.0,
        "iterselecttune.batch": BATCH,
        "iterselecttune.training_rounds": TRAINING_ROUNDS,
    } | extra


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert: str, corpus: Path, server, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ist") / "run"
    before = server.requests
    run(load_config(None, _tiny(out, tiny_bert, corpus, server.url)))
    assert server.requests - before == 2 * BATCH * TRAINING_ROUNDS  # both orders of every judged row, once
    return out


def _sim(cands: np.ndarray, hard: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean cosine of each candidate to its min(k, |hard|) nearest hard rows, by brute force."""
    if not len(hard):
        return np.zeros(len(cands))
    top = -np.sort(-(cands @ hard.T), axis=1)[:, : min(k, len(hard))]
    return top.mean(axis=1)


def test_rounds_follow_the_spec(uninterrupted: Path) -> None:
    out = uninterrupted
    m = json.loads((out / "manifest.json").read_text())
    ist, counts = m["iterselecttune"], m["counts"]
    n = ist["rows"]
    assert n == counts["to_score"] >= 18 and ist["subset"] == n and ist["budget"] == n // 2
    rows = pq.read_table(out / "steps" / "ist_rows.parquet")
    vectors = read_vectors(out / "steps" / "ist_embed.parquet")
    labels = pq.read_table(out / "steps" / "ist_subset.parquet")[S.CLUSTER].to_numpy()
    pairs = zip(rows[S.INSTRUCTION].to_pylist(), rows[S.INPUT].to_pylist(), strict=True)
    texts = [classifier_text(i, x) for i, x in pairs]
    taken = np.zeros(n, dtype=bool)
    hard: list[int] = []
    labelled: dict[int, int] = {}
    p_hard = None
    for r, record in enumerate(ist["rounds"]):
        batch = pq.read_table(out / f"round_{r}" / "batch.parquet")
        got = batch[S.POSITION].to_numpy()
        cands = np.flatnonzero(~taken)
        assert record["candidates"] == len(cands)
        if r == 0:  # no classifier, no hard set: random within clusters, proportional to their sizes
            want = cands[sample_proportional(labels[cands], BATCH, seed=0)]
            assert sorted(got) == sorted(want)
        else:
            sim = _sim(vectors[cands], vectors[hard])
            score = ALPHA * p_hard[cands] + (1 - ALPHA) * sim
            size = BATCH if r < TRAINING_ROUNDS else min(BATCH, ist["budget"] - len(hard))
            want = cands[np.lexsort((cands, -score))[:size]]
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(batch[S.SCORE_IST].to_numpy(), np.sort(score)[::-1][:size], atol=1e-5)
        taken[got] = True
        if r < TRAINING_ROUNDS:
            assert record["kind"] == "training"
            judged = pq.read_table(out / f"round_{r}" / "judge.parquet")
            assert sorted(judged[S.POSITION].to_pylist()) == sorted(got)
            verdicts = dict(zip(judged[S.POSITION].to_pylist(), judged[S.JUDGE_VERDICT].to_pylist(), strict=True))
            assert set(verdicts.values()) <= {"reference", "model", "tie"}
            for pos, v in verdicts.items():  # the loopback judge prefers GOOD references and dislikes BAD ones
                ref = rows[S.OUTPUT][pos].as_py()
                assert v == ("reference" if "GOOD" in ref else "model" if "BAD" in ref else "tie"), (ref, v)
            assert record["judge"]["calls"] == 2 * len(got)  # both orders, nothing cached
            new = sorted(p for p, v in verdicts.items() if v == "reference")
            labelled |= {p: int(v == "reference") for p, v in verdicts.items()}
            meta = json.loads((out / f"round_{r}" / "classifier" / "classifier.json").read_text())
            assert meta["rows"] == len(labelled) and meta["positives"] == sum(labelled.values())
            model, tok = HardClassifier.load(out / f"round_{r}" / "classifier")
            p_hard = probabilities(model, tok, texts, max_length=128)
        else:
            assert record["kind"] == "inference" and "judge" not in record
            new = sorted(got)
            assert not (out / f"round_{r}" / "generate.parquet").exists()
        if r == TRAINING_ROUNDS:  # the last classifier scored the remaining rows once, for every later round
            classify = pq.read_table(out / f"round_{r}" / "classify.parquet")
            np.testing.assert_allclose(
                classify[S.SCORE_CLASSIFIER].to_numpy(), p_hard[classify[S.POSITION].to_numpy()], atol=1e-5
            )
        elif r > TRAINING_ROUNDS:
            assert not (out / f"round_{r}" / "classify.parquet").exists()
        hard += new
        assert record["hard_added"] == len(new) and record["hard_total"] == len(hard)
    assert len(hard) == ist["budget"] == ist["selected"] and ist["stop"] == "budget reached"
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    ids = rows[S.ID].to_numpy(zero_copy_only=False)
    assert sorted(r[S.ID] for r in selected) == sorted(ids[hard])
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    reasons = scores[S.SELECT_REASON].value_counts().to_dict()
    not_hard = sum(1 - v for v in labelled.values())
    budget = ist["budget"]
    assert reasons == {"selected": budget, "judged_not_hard": not_hard, "below_cutoff": n - budget - not_hard}
    assert ist["rows_by_judge"] + ist["rows_by_classifier"] == budget
    assert ist["rows_by_judge"] == sum(labelled.values())
    assert ist["judge"]["judgements"] == 2 * BATCH * TRAINING_ROUNDS
    assert ist["judge"]["judgements_if_every_candidate"] == 2 * n
    assert counts["read"] == counts["rejected_total"] + counts["scored"]
    judge = ist["judge"]  # token and dollar accounting: the server's usage at the configured prices
    assert judge["prompt_tokens"] > 0 and judge["completion_tokens"] > 0
    want = (judge["prompt_tokens"] * 2.5 + judge["completion_tokens"] * 10.0) / 1e6
    assert judge["cost_usd"] == pytest.approx(want, rel=1e-6)
    # The key reached the server, and is written nowhere in the run directory.
    for path in out.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_rerun_redoes_nothing(uninterrupted: Path, tiny_bert: str, corpus: Path, server) -> None:
    before = server.requests
    again = run(load_config(None, _tiny(uninterrupted, tiny_bert, corpus, server.url)))
    assert server.requests == before  # no judge call
    timings = again.manifest["timings_s"]
    steps = [k for k in timings if k not in ("ray_start", "ingest", "write", "report")]  # the rest: skipped
    assert steps and all(timings[k] == "skipped (completed earlier)" for k in steps), timings
    assert again.manifest["iterselecttune"]["judge"]["calls"] == 2 * BATCH * TRAINING_ROUNDS  # recorded, not redone
    assert f"Bearer {SECRET}" in server.auth


KILLED = """
import json, sys
from raysel.config import load_config
from raysel.driver import run
run(load_config(None, json.loads(sys.argv[1])))
"""


def test_a_killed_run_resumes_without_rejudging(
    uninterrupted: Path, tiny_bert: str, corpus: Path, server, ray_local, tmp_path: Path
) -> None:
    """SIGKILL the driver in round 1's judge step (after round 0 and part of round 1 were judged): the rerun
    asks the judge only what the cache lacks and ends exactly where the uninterrupted run did."""
    from raysel.judge import cache_records

    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    repo = REPO_ROOT
    cmd = [sys.executable, str(script), json.dumps(_tiny(out, tiny_bert, corpus, server.url, **{
        "judge.concurrency": 1}))]  # fmt: skip
    server.delay_s = 0.3  # one judgement at a time, slowly: the kill lands between calls of round 1
    start = server.requests
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sigkill_when(proc, lambda: server.requests - start >= 2 * BATCH + 2, poll_s=0.05)
    finally:
        server.delay_s = 0.0
    log.close()
    assert "[raysel] step round_0/judge" in (tmp_path / "driver.log").read_text()  # the driver's own log
    assert (out / "round_0" / "judge.done.json").exists() and not (out / "round_1" / "judge.done.json").exists()
    cached = len(list(cache_records(out / "judge_cache")))
    assert 2 * BATCH + 1 <= cached < 2 * BATCH * TRAINING_ROUNDS
    before = server.requests
    resumed = run(load_config(None, _tiny(out, tiny_bert, corpus, server.url)), resume=True)  # concurrency differs
    assert server.requests - before == 2 * BATCH * TRAINING_ROUNDS - cached  # nothing judged twice
    timings = resumed.manifest["timings_s"]
    for name in ("round_0/batch", "round_0/generate", "round_0/judge", "round_0/classifier", "round_1/generate"):
        assert timings[name] == "skipped (completed earlier)", name
    for name in ("selected.jsonl", "rejected.jsonl"):
        assert (out / name).read_text() == (uninterrupted / name).read_text(), name
    a, b = (pq.read_table(d / "scores.parquet").to_pandas() for d in (out, uninterrupted))
    assert a.equals(b)  # NaN-aware: rows never scored keep NaN in both
    # The key reached the judge server only: not the run directory (config, manifest, cache, report), not the
    # driver's output, not the logs of Ray's workers (where the judge actors ran).
    assert f"Bearer {SECRET}" in server.auth and (out / "report.html").is_file()
    node = ray_local._private.worker._global_node
    for path in [tmp_path / "driver.log", *out.rglob("*"), *Path(node.get_logs_dir_path()).rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_cli_local_judge_real_models(ray_local, shared_data: Path, tmp_path: Path, capsys) -> None:
    """Acceptance: `raysel select --method iterselecttune` through the CLI on real rows, SmolLM2 answering and
    judging locally, all-MiniLM-L6-v2 embedding and classifying."""
    out = tmp_path / "run"
    code = main([
        "select", "--method", "iterselecttune", "--input", str(shared_data / "alpaca_gpt4_1k.json"),
        "--output", str(out), "--ratio", "0.5", "--data.limit", "16", "--cluster.k", "4",
        "--iterselecttune.subset_ratio", "1.0", "--iterselecttune.batch", "4", "--iterselecttune.training_rounds", "2",
        "--generate.max_new_tokens", "24", "--judge.backend", "local", "--classifier.epochs", "1",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    ist = m["iterselecttune"]
    assert ist["rows"] == 16 and ist["budget"] == 8 and ist["selected"] == 8
    assert [r["kind"] for r in ist["rounds"][:2]] == ["training", "training"]
    for r in range(2):
        gen = pq.read_table(out / f"round_{r}" / "generate.parquet").to_pylist()
        assert len(gen) == 4 and all(g[S.GENERATED].strip() and 0 < g[S.GEN_TOKENS] <= 24 for g in gen)
        judged = pq.read_table(out / f"round_{r}" / "judge.parquet").to_pylist()
        for j in judged:  # a verdict with both scores, or "unparsed" with the raw replies: never a silent label
            if j[S.JUDGE_VERDICT] == "unparsed":
                assert j[S.JUDGE_RAW] and np.isnan(j[S.JUDGE_SCORE_REF])
            else:
                assert j[S.JUDGE_VERDICT] in ("reference", "model", "tie")
                assert 1 <= j[S.JUDGE_SCORE_REF] <= 10 and 1 <= j[S.JUDGE_SCORE_MODEL] <= 10
        assert ist["rounds"][r]["judge"]["calls"] == 8 and ist["rounds"][r]["judge"]["cost_usd"] == 0
        assert sum(ist["rounds"][r]["judge"]["verdicts"].values()) == 4
    # SmolLM2-135M rarely writes a readable pair of scores: its unreadable verdicts label nothing, and the
    # classifier is trained only once some row has a label.
    labelled = sum(v for r in ist["rounds"][:2] for k, v in r["judge"]["verdicts"].items() if k != "unparsed")
    assert (out / "round_1" / "classifier" / "classifier.json").exists() == (labelled > 0)
    selected = (out / "selected.jsonl").read_text().splitlines()
    assert len(selected) == 8 and ist["rows_by_judge"] + ist["rows_by_classifier"] == 8
    assert "iterselecttune: diversity subset 16 of 16 rows" in printed
