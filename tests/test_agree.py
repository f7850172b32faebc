"""`raysel agree` end to end on CPU: one seeded sample scored by two scorers through the IFD stage, each in its
own actor pool; the statistics on what they scored."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.agree.stats import spearman
from raysel.cli import main


@pytest.mark.slow  # SmolLM2 scores real rows twice
def test_smollm2_against_itself_agrees_exactly(ray_local, shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "agree"
    args = ["agree", "--input", str(shared_data / "alpaca_gpt4_1k.json"), "--output", str(out), "--small", "smollm2",
            "--large", "smollm2", "--sample", "10", "--ratio", "0.3", "--seed", "4", "--data.limit", "60",
            "--small.max_length", "256", "--large.max_length", "256", "--bootstrap", "50"]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "agreement.json").read_text())
    assert (r["rows"], r["both_scored"], r["corpus_rows"]) == (10, 10, 60)
    for name in ("spearman", "kendall", "top_jaccard", "top_recall", "filter_agreement"):
        assert r[name]["value"] == pytest.approx(1.0) and r[name]["low"] == pytest.approx(1.0), name
    small = pq.read_table(out / "steps" / "score_small.parquet")
    large = pq.read_table(out / "steps" / "score_large.parquet")
    assert small[S.SCORE_IFD].to_pylist() == large[S.SCORE_IFD].to_pylist()
    assert small.num_rows == 10 and all(0 < x < 5 for x in small[S.SCORE_IFD].to_pylist())
    assert r["small"]["tokens"] == r["large"]["tokens"] > 0 and r["small"]["rows_per_s"] > 0
    assert "recovers 100% [100%, 100%]" in capsys.readouterr().out
    assert "<img" in (out / "report.html").read_text()


@pytest.mark.slow  # ~25 s here: three full `raysel agree` runs on Ray
def test_two_different_scorers_and_the_seeded_sample(ray_local, tmp_path: Path) -> None:
    """The fake scorer against SmolLM2-sized nothing: plumbing, the sample and the statistics' inputs."""
    rows = [{"instruction": f"task {i} " + "word " * (i % 7), "input": "", "output": f"answer {i} " * (1 + i % 5)}
            for i in range(40)]  # fmt: skip
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["agree", "--input", str(corpus), "--sample", "25", "--large.backend", "fake", "--small.backend", "fake",
            "--small.template", "wiz", "--bootstrap", "20"]  # fmt: skip
    assert main([*base, "--output", str(tmp_path / "a")]) == 0
    assert main([*base, "--output", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "agreement.json").read_text())
    assert a == {**json.loads((tmp_path / "b" / "agreement.json").read_text()), "timings_s": a["timings_s"],
                 "small": a["small"], "large": a["large"], "ray": a["ray"]}  # fmt: skip  # same seed, same result
    small = pq.read_table(tmp_path / "a" / "steps" / "score_small.parquet")[S.SCORE_IFD].to_numpy()
    large = pq.read_table(tmp_path / "a" / "steps" / "score_large.parquet")[S.SCORE_IFD].to_numpy()
    assert len(small) == 25 and not np.array_equal(small, large)  # the templates differ, so the scores do
    assert a["spearman"]["value"] == pytest.approx(spearman(small.astype(float), large.astype(float)))
    # another ratio reuses both scores (no scorer starts) and still reports the costs measured when they ran
    assert main([*base, "--output", str(tmp_path / "a"), "--ratio", "0.3", "--resume"]) == 0
    again = json.loads((tmp_path / "a" / "agreement.json").read_text())
    assert again["timings_s"]["score_small"].startswith("skipped") and again["ratio"] == 0.3
    assert again["small"] == a["small"] and again["large"] == a["large"] and a["small"]["rows_per_s"] > 0
    assert a["small"]["scoring"]["template"] == "wiz" and a["data"]["input"] == str(corpus)


@pytest.mark.slow  # ~30 s here: seven full agree/select runs on Ray
def test_a_selection_scored_by_a_small_model_carries_its_agreement(ray_local, tmp_path: Path, capsys) -> None:
    rows = [{"instruction": f"task {i} " + "word " * (i % 7), "input": "", "output": f"answer {i} " * (1 + i % 5)}
            for i in range(30)]  # fmt: skip
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    agree = tmp_path / "agree"
    assert main(["agree", "--input", str(corpus), "--output", str(agree), "--small", "tiny-scorer", "--large",
                 "big-target", "--small.backend", "fake", "--large.backend", "fake", "--large.template", "wiz",
                 "--bootstrap", "20"]) == 0  # fmt: skip
    select = ["select", "--input", str(corpus), "--backend", "fake", "--scorer-model", "tiny-scorer", "--k", "5"]
    assert main([*select, "--output", str(tmp_path / "s"), "--target-model", "big-target",
                 "--agreement", str(agree)]) == 0  # fmt: skip
    scorer = json.loads((tmp_path / "s" / "manifest.json").read_text())["scorer"]
    figures = json.loads((agree / "agreement.json").read_text())
    assert scorer["model"] == "tiny-scorer" and scorer["target_model"] == "big-target" and not scorer["same"]
    assert scorer["agreement"]["matches"] and scorer["agreement"]["top_recall"] == figures["top_recall"]
    assert scorer["agreement"]["verdict"] == figures["verdict"]
    assert scorer["agreement"]["same_corpus"] and scorer["agreement"]["same_scoring"]
    # measured with other scorer settings: recorded and noted
    assert main([*select, "--output", str(tmp_path / "s1"), "--target-model", "big-target", "--agreement",
                 str(agree), "--max-length", "64"]) == 0  # fmt: skip
    assert not json.loads((tmp_path / "s1" / "manifest.json").read_text())["scorer"]["agreement"]["same_scoring"]
    assert "small scorer had other settings" in capsys.readouterr().out
    # the pair of another agreement run is recorded as not matching, with a warning
    assert main([*select, "--output", str(tmp_path / "s2"), "--target-model", "other", "--agreement", str(agree)]) == 0
    assert not json.loads((tmp_path / "s2" / "manifest.json").read_text())["scorer"]["agreement"]["matches"]
    assert "not this run's scorer tiny-scorer with target other" in capsys.readouterr().out
    # without --agreement, the run's lineage (the runs beside its output) is searched for this pair's agreement
    assert main([*select, "--output", str(tmp_path / "s4"), "--target-model", "big-target"]) == 0
    found = json.loads((tmp_path / "s4" / "manifest.json").read_text())["scorer"]["agreement"]
    assert found["dir"] == str(agree.resolve()) and found["matches"] and found["verdict"] == figures["verdict"]
    assert f"scorer agreement: using {agree.resolve()}" in capsys.readouterr().out
    page = (tmp_path / "s4" / "report.html").read_text()
    assert "<h2>Scorer agreement</h2>" in page and html.escape(figures["verdict"]) in page
    assert main([*select, "--output", str(tmp_path / "s5"), "--target-model", "unmeasured"]) == 0
    assert "agreement" not in json.loads((tmp_path / "s5" / "manifest.json").read_text())["scorer"]
    assert "the stand-in is unchecked" in (tmp_path / "s5" / "report.html").read_text()
    # a directory without agreement.json stops before any work
    assert main([*select, "--output", str(tmp_path / "s3"), "--agreement", str(tmp_path)]) == 2
    assert "agreement.json does not exist" in capsys.readouterr().err and not (tmp_path / "s3").exists()
