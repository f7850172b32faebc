"""IFD with pre-experience and near-duplicate removal, end to end through Ray Data and Ray Train on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.cli import main
from raysel.config import load_config
from raysel.driver import run
from tests.conftest import TINY_JSONL

pytestmark = pytest.mark.slow  # embeds with MiniLM, fine-tunes with Ray Train, runs SmolLM2

PRE_STEPS = ("pre_embed", "pre_cluster", "pre_sample", "pre_model")


def _tiny_pre(tmp_path: Path, model: str, **extra) -> dict:
    return {
        "output": str(tmp_path / "run"),
        "data.input": str(TINY_JSONL),
        "score.model": model,
        "score.max_length": 64,
        "pre_experience.enabled": True,
        "pre_experience.per_cluster": 3,
        "cluster.k": 3,
        "train.max_steps": 4,
        "train.lr": 1e-2,
        "train.batch_size": 4,
        "train.micro_batch_size": 2,
        "train.checkpoint_every": 2,
    } | extra


def test_pre_experience_pipeline_on_tiny_model(tiny_hf_model: str, ray_local, tmp_path: Path) -> None:
    from raysel.select.cluster import sample_middle_band

    cfg = load_config(None, _tiny_pre(tmp_path, tiny_hf_model))
    res = run(cfg)
    out, pre = res.output, res.manifest["pre_experience"]
    for name in PRE_STEPS:
        assert (out / "steps" / f"{name}.done.json").is_file(), name
    # The sample is the paper's sampler applied to the clusters and perplexities the run recorded.
    clusters = pq.read_table(out / "steps" / "pre_cluster.parquet")
    labels = clusters[S.CLUSTER].to_numpy()
    ppl = clusters[S.PPL_TEXT].to_numpy()
    assert len(np.unique(labels)) == 3 and np.isfinite(ppl).all()
    picked = sample_middle_band(labels, ppl, 3, low_pct=25, high_pct=75)
    sampled = pq.read_table(out / "steps" / "pre_sample.parquet")
    assert sampled[S.ID].to_pylist() == clusters[S.ID].take(picked).to_pylist()
    assert pre["sampled_rows"] == len(picked) == sampled.num_rows and pre["clusters"] == 3
    # IFD was scored with the fine-tuned model: it differs from the base model's scores.
    model_dir = out / "steps" / "pre_model"
    assert (model_dir / "config.json").is_file() and pre["model"] == str(model_dir)
    assert pre["train"]["rows"] == len(picked) and pre["train"]["step"] == 4
    base = run(load_config(None, _tiny_pre(tmp_path, tiny_hf_model, output=str(tmp_path / "base")) | {
        "pre_experience.enabled": False}))  # fmt: skip
    ifd_pre = pq.read_table(out / "scores.parquet")[S.SCORE_IFD].to_numpy()
    ifd_base = pq.read_table(base.output / "scores.parquet")[S.SCORE_IFD].to_numpy()
    assert ifd_pre.shape == ifd_base.shape and np.nanmax(np.abs(ifd_pre - ifd_base)) > 1e-3
    c = res.manifest["counts"]
    assert c["read"] == c["scored"] + c["rejected_total"] and c["selected"] > 0
    # A rerun of the same command redoes nothing and gives the same selection.
    again = run(cfg)
    assert all(again.manifest["timings_s"][n] == "skipped (completed earlier)" for n in (*PRE_STEPS, "score"))
    assert (out / "selected.jsonl").read_text() == (again.output / "selected.jsonl").read_text()
    # Another training config on the same run directory trains a model of its own (not the old checkpoints).
    other = run(load_config(None, _tiny_pre(tmp_path, tiny_hf_model, **{"train.lr": 5e-3})), resume=True)
    assert other.manifest["timings_s"]["pre_embed"] == "skipped (completed earlier)"
    assert isinstance(other.manifest["timings_s"]["pre_model"], float)
    assert len(list((out / "train").iterdir())) == 2


def test_near_duplicates_reported_then_removed(ray_local, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in TINY_JSONL.read_text().splitlines() if line.strip()]
    # Same meaning, different content ids: a lower-cased copy (the encoder is uncased) and an added "!".
    near = [
        dict(rows[0], instruction=rows[0]["instruction"].lower()),
        dict(rows[2], instruction=rows[2]["instruction"] + "!"),
    ]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows + near))
    n = len(rows) + 2
    base = {"data.input": str(src), "score.backend": "fake", "data.near_dup": 0.95, "embed.column": "instruction"}
    # Reported only: every row is still scored.
    rep = run(load_config(None, base | {"output": str(tmp_path / "report")})).manifest
    assert rep["duplicates"]["near"]["extra_copies"] >= 2 and rep["counts"]["near_duplicates"] == 0
    # Another threshold reuses the embeddings: only the grouping is redone.
    looser = run(load_config(None, base | {"output": str(tmp_path / "report"), "data.near_dup": 0.9}), resume=True)
    looser = looser.manifest
    assert looser["timings_s"]["embed"] == "skipped (completed earlier)"
    assert looser["duplicates"]["near"]["extra_copies"] >= rep["duplicates"]["near"]["extra_copies"]
    # Removed: the later copy of each group is rejected, naming the first.
    assert main(["select", "--input", str(src), "--output", str(tmp_path / "dedup"), "--backend", "fake",
                 "--dedup", "0.95", "--embed.column", "instruction"]) == 0  # fmt: skip
    man = json.loads((tmp_path / "dedup" / "manifest.json").read_text())
    rejected = [json.loads(line) for line in (tmp_path / "dedup" / "rejected.jsonl").read_text().splitlines()]
    near_rej = {r[S.SOURCE]: r["reason"] for r in rejected if r["reason"].startswith("near_duplicate")}
    assert f"{src}:{n - 1}" in near_rej and near_rej[f"{src}:{n - 1}"].startswith(f"near_duplicate of {src}:1 ")
    assert f"{src}:{n}" in near_rej
    c = man["counts"]
    assert c["near_duplicates"] == len(near_rej) and c["read"] == c["scored"] + c["rejected_total"]


def test_cli_pre_experience_real_model(shared_data: Path, ray_local, tmp_path: Path) -> None:
    """The issue's acceptance run: `raysel select --method ifd --pre-experience` on real rows, SmolLM2."""
    out = tmp_path / "pre"
    argv = ["select", "--method", "ifd", "--pre-experience", "--input", str(shared_data / "alpaca_gpt4_1k.json"),
            "--output", str(out), "--limit", "24", "--max-length", "128", "--ratio", "0.25", "--cluster.k", "3",
            "--pre_experience.per_cluster", "2", "--train.max_length", "128", "--train.lr", "1e-4",
            "--score.threads", "2"]  # fmt: skip
    assert main(argv) == 0
    man = json.loads((out / "manifest.json").read_text())
    pre, c = man["pre_experience"], man["counts"]
    sampled = pq.read_table(out / "steps" / "pre_sample.parquet")
    # At most 2 per cluster (fewer where a cluster's perplexity band is small, as in the paper's sampler).
    assert pre["clusters"] == 3 and 3 <= pre["sampled_rows"] == sampled.num_rows == pre["train"]["rows"] <= 6
    assert pre["train"]["total_steps"] == pre["train"]["step"] == 1  # one epoch at batch 8, as the paper (1 epoch)
    assert c["read"] == 24 == c["scored"] + c["rejected_total"]
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == c["selected"] == int(0.25 * c["passed"]) > 0
    assert all(r["score_ifd"] <= 1 for r in selected)
    # Issue 9's real, imperfect pair: the base SmolLM2 standing in for the pre-experienced one, on one sample.
    agree = tmp_path / "agree"
    pre_model = out / "steps" / "pre_model"
    argv = ["agree", "--input", str(shared_data / "alpaca_gpt4_1k.json"), "--output", str(agree), "--data.limit",
            "24", "--sample", "12", "--ratio", "0.25", "--small", "smollm2", "--large", str(pre_model),
            "--small.max_length", "128", "--large.max_length", "128", "--small.threads", "2", "--large.threads", "2",
            "--bootstrap", "50"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((agree / "agreement.json").read_text())
    assert (r["rows"], r["both_scored"], r["small"]["model"], r["large"]["model"]) == (
        12,
        12,
        "smollm2",
        str(pre_model),
    )
    small = pq.read_table(agree / "steps" / "score_small.parquet")[S.SCORE_IFD].to_numpy()
    large = pq.read_table(agree / "steps" / "score_large.parquet")[S.SCORE_IFD].to_numpy()
    assert not np.allclose(small, large, rtol=0, atol=1e-6)  # one step of SFT moved the scores
    for name in ("spearman", "kendall", "top_jaccard", "top_recall", "filter_agreement"):
        assert -1 <= r[name]["low"] <= r[name]["high"] <= 1 and -1 <= r[name]["value"] <= 1, name
    assert r["small"]["tokens"] == r["large"]["tokens"] > 0  # one tokenizer, the same rows
    assert r["verdict"].startswith("the small scorer recovers")
