"""IterIT end to end: epochs of re-scoring with the model being trained, greedy picks, resume after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raysel import schema as S
from raysel.cli import main
from raysel.config import load_config
from raysel.driver import run
from raysel.methods.iterit import PICK
from raysel.select.greedy import iterit_ranking
from tests.conftest import REPO_ROOT, TINY_JSONL
from tests.procs import sigkill_when

pytestmark = pytest.mark.slow  # fine-tunes with Ray Train every epoch, kills a driver, runs SmolLM2

ROUND_STEPS = ("score", "ranking", "model")


def _tiny(out: Path, model: str, **extra) -> dict:
    return {
        "output": str(out),
        "data.input": str(TINY_JSONL),
        "score.model": model,
        "score.max_length": 64,
        "select.method": "iterit",
        "select.k": 4,
        "iterit.epochs": 2,
        "iterit.update_ratio": 3,
        "train.lr": 1e-2,
        "train.batch_size": 2,
        "train.micro_batch_size": 2,
        "train.checkpoint_every": 1,
    } | extra


@pytest.fixture(scope="module")
def uninterrupted(tiny_hf_model: str, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iterit") / "run"
    run(load_config(None, _tiny(out, tiny_hf_model)))
    return out


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_epochs_rescore_with_the_trained_model_and_rank_as_the_authors(uninterrupted: Path, tiny_hf_model) -> None:
    out = uninterrupted
    manifest = json.loads((out / "manifest.json").read_text())
    it, counts = manifest["iterit"], manifest["counts"]
    for e in (0, 1):
        for name in ROUND_STEPS:
            assert (out / f"round_{e}" / f"{name}.done.json").is_file(), (e, name)
    every = pq.read_table(out / "round_0" / "score.parquet")
    n = every.num_rows
    assert it["k"] == 4 and it["rows"] == n == counts["to_score"]
    assert every[S.POSITION].to_pylist() == list(range(n))
    # Epoch 0 ranks every row exactly as iterit_ranking does over the base model's scores and the
    # responses + EOS (the tiny tokenizer's EOS is "[EOS]").
    scores0 = every[S.SCORE_IFD_PPL].to_numpy()
    texts = [t + "[EOS]" for t in every[S.OUTPUT].to_pylist()]
    order0, picks0 = iterit_ranking(scores0, texts, 4)
    ranking0 = pq.read_table(out / "round_0" / "ranking.parquet")
    assert ranking0[S.POSITION].to_pylist() == order0.tolist()
    assert ranking0[PICK].to_pylist()[: len(picks0)] == list(range(1, len(picks0) + 1))
    assert (scores0[picks0] < 1).all() and len(picks0) == 4
    # The complexity is exp(loss_cond) / exp(loss_direct).
    lc, ld = every[S.LOSS_COND].to_numpy(), every[S.LOSS_DIRECT].to_numpy()
    np.testing.assert_allclose(scores0, np.exp(lc.astype(np.float64) - ld), rtol=1e-5)
    # Epoch 1 re-scores the first k x update_ratio rows of epoch 0's ranking with the model trained on
    # epoch 0's picks: their scores moved; the rest of the ranking is untouched.
    rescored = pq.read_table(out / "round_1" / "score.parquet")
    window = order0[:12]
    assert sorted(rescored[S.POSITION].to_pylist()) == sorted(window.tolist())
    new = dict(zip(rescored[S.POSITION].to_pylist(), rescored[S.SCORE_IFD_PPL].to_pylist(), strict=True))
    assert max(abs(new[p] - scores0[p]) for p in window) > 1e-4
    ranking1 = pq.read_table(out / "round_1" / "ranking.parquet")
    assert ranking1[S.POSITION].to_pylist()[12:] == order0[12:].tolist()
    scores1 = scores0.copy()
    scores1[list(new)] = list(new.values())
    order1, picks1 = iterit_ranking(scores1[window], [texts[p] for p in window], 4)
    assert ranking1[S.POSITION].to_pylist()[:12] == window[order1].tolist()
    # Training continued across epochs: one LR schedule, steps counted on from epoch 0's.
    spe = it["train_steps_per_epoch"]
    e0, e1 = it["epochs"]
    assert e0["train"]["step"] == spe == 2 and e1["train"]["step"] == spe + -(-len(picks1) // 2)
    assert it["model"] == str(out / "round_1" / "model")
    trained0, trained1 = _weights(out / "round_0" / "model"), _weights(out / "round_1" / "model")
    assert any(not torch.equal(trained0[k], trained1[k]) for k in trained0)
    # The selection is the last epoch's picks; scores.parquet carries each row's latest scores.
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    ids = every[S.ID].to_pylist()
    assert sorted(r[S.ID] for r in selected) == sorted(ids[p] for p in window[picks1])
    final = pq.read_table(out / "scores.parquet")
    assert final.column("scored_epoch").to_numpy()[window].tolist() == [1] * 12
    assert final[S.SELECTED].to_numpy().sum() == len(selected) == counts["selected"]
    assert counts["read"] == counts["scored"] + counts["rejected_total"]


def test_a_rerun_redoes_nothing(uninterrupted: Path, tiny_hf_model: str) -> None:
    before = (uninterrupted / "selected.jsonl").read_text()
    again = run(load_config(None, _tiny(uninterrupted, tiny_hf_model)))
    timings = again.manifest["timings_s"]
    for e in (0, 1):
        for name in ROUND_STEPS:
            assert timings[f"round_{e}/{name}"] == "skipped (completed earlier)"
    assert (uninterrupted / "selected.jsonl").read_text() == before


KILLED = """
import json, sys
from raysel.config import load_config
from raysel.driver import run
run(load_config(None, json.loads(sys.argv[1])))
"""


def test_a_killed_run_resumes_from_the_last_finished_step(
    uninterrupted: Path, tiny_hf_model: str, ray_local, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    repo = REPO_ROOT
    cmd = [sys.executable, str(script), json.dumps(_tiny(out, tiny_hf_model))]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, start_new_session=True)
    marker = out / "round_1" / "score.done.json"
    sigkill_when(proc, marker.exists)
    assert marker.exists() and not (out / "manifest.json").exists(), "the run was not killed in epoch 1"
    resumed = run(load_config(None, _tiny(out, tiny_hf_model)))
    timings = resumed.manifest["timings_s"]
    for name in (*(f"round_0/{s}" for s in ROUND_STEPS), "round_1/score"):
        assert timings[name] == "skipped (completed earlier)", name
    assert isinstance(timings["round_1/model"], float)
    # The resumed run ends where the uninterrupted one did: same picks, scores and final weights.
    for name in ("selected.jsonl", "rejected.jsonl"):
        assert (out / name).read_text() == (uninterrupted / name).read_text(), name
    a, b = pq.read_table(out / "scores.parquet"), pq.read_table(uninterrupted / "scores.parquet")
    assert a.drop_columns([]).equals(b)
    ref, got = _weights(uninterrupted / "round_1" / "model"), _weights(out / "round_1" / "model")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_baseline_selects_once_and_trains_every_epoch_on_it(tiny_hf_model: str, ray_local, tmp_path: Path) -> None:
    res = run(load_config(None, _tiny(tmp_path / "run", tiny_hf_model, **{"iterit.strategy": "baseline"})))
    out, it = res.output, res.manifest["iterit"]
    assert not (out / "round_1" / "score.parquet").exists() and not (out / "round_1" / "ranking.parquet").exists()
    assert [e["rescored"] for e in it["epochs"]] == [it["rows"], 0]
    picks0 = pq.read_table(out / "round_0" / "ranking.parquet")
    ids = pq.read_table(out / "round_0" / "score.parquet")[S.ID].to_pylist()
    first = [ids[p] for p, k in zip(picks0[S.POSITION].to_pylist(), picks0[PICK].to_pylist(), strict=True) if k]
    selected = [json.loads(line)[S.ID] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert sorted(selected) == sorted(first)
    assert it["epochs"][1]["train"]["step"] == 2 * it["train_steps_per_epoch"]


def test_cli_iterit_real_model(ray_local, shared_data: Path, tmp_path: Path, capsys) -> None:
    """The acceptance run: `raysel select --method iterit` with SmolLM2-135M on real rows, all epochs on CPU."""
    from raysel.methods.iterit import eos_token

    out = tmp_path / "run"
    argv = [
        "select", "--method", "iterit", "--input", str(shared_data / "alpaca_gpt4_1k.json"), "--output", str(out),
        "--limit", "16", "--k", "3", "--max-length", "192", "--iterit.epochs", "2", "--iterit.update_ratio", "2",
        "--train.batch_size", "3", "--train.micro_batch_size", "3", "--train.lr", "1e-4", "--train.max_length", "192",
        "--train.warmup_ratio", "0",
        "--score.batch_size", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    it, counts = manifest["iterit"], manifest["counts"]
    assert manifest["config"]["score"]["template"] == "iterit" and len(it["epochs"]) == 2
    every = pq.read_table(out / "round_0" / "score.parquet")
    assert every.num_rows == 16 and np.isfinite(every[S.SCORE_IFD_PPL].to_numpy()).all()
    # Epoch 1 re-scored 6 rows with the model trained in epoch 0, and its scores moved.
    rescored = pq.read_table(out / "round_1" / "score.parquet")
    pos = rescored[S.POSITION].to_numpy()
    assert len(pos) == 6
    before, after = every[S.SCORE_IFD_PPL].to_numpy()[pos], rescored[S.SCORE_IFD_PPL].to_numpy()
    assert np.abs(after - before).max() > 1e-4
    eos = eos_token(load_config(None, {"output": "x", "data.input": "y"}).score)
    assert eos == "<|im_end|>"
    texts = [t + eos for t in every[S.OUTPUT].to_pylist()]
    order0, _ = iterit_ranking(every[S.SCORE_IFD_PPL].to_numpy(), texts, 3)
    assert pq.read_table(out / "round_0" / "ranking.parquet")[S.POSITION].to_pylist() == order0.tolist()
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert 0 < len(selected) <= 3 and all(r[S.SCORE_IFD_PPL] < 1 for r in selected)
    assert it["epochs"][1]["train"]["step"] > it["epochs"][0]["train"]["step"]
    assert (out / "round_1" / "model" / "config.json").is_file()
    assert counts["read"] == counts["scored"] + counts["rejected_total"] == 16
    assert "iterit" in capsys.readouterr().out
