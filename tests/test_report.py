"""report.html: every section, embedded PNGs only, escaped row text, for each kind of run; rendered in Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel import schema as S
from raysel.config import load_config
from raysel.driver import run
from raysel.report import write_report
from tests.conftest import read_tiny_rows

SCRIPT = "<script>alert(1)</script>"
HEADINGS = (
    "Score distributions", "Rounds", "Cluster coverage", "Rejected rows and selection reasons", "Judge and API cost",
    "Timings", "Examples",
)  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """12 tiny rows and one full of markup: at most 20 rows are scored, so every row is in the example tables."""
    rows = read_tiny_rows()[:12] + [
        {"instruction": f"Repeat the tag {SCRIPT}", "input": "<b>x</b> & y", "output": SCRIPT}
    ]
    path = tmp_path_factory.mktemp("report_data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(out: Path, corpus: Path, select: bool = True, **extra) -> Path:
    overrides = {"data.input": str(corpus), "output": str(out), "score.backend": "fake", "select.k": 4}
    run(load_config(None, overrides | extra), select=select)
    return out


@pytest.fixture(scope="module")
def ifd_run(ray_local, corpus: Path, tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("report") / "ifd", corpus)


@pytest.fixture(scope="module")
def iterit_run(ray_local, corpus: Path, tiny_hf_model: str, tmp_path_factory) -> Path:
    extra = {"score.model": tiny_hf_model, "select.method": "iterit", "select.k": 2, "iterit.epochs": 1,
             "train.batch_size": 2, "train.micro_batch_size": 2}  # fmt: skip
    return _run(tmp_path_factory.mktemp("report") / "iterit", corpus, **extra)


def _checked(run_dir: Path) -> str:
    """Write the report and check what every report must satisfy; returns its text."""
    path = write_report(run_dir)
    assert path == run_dir / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.I)
    assert not [u for u in links if not u.startswith("data:image/png;base64,")], links
    assert "http://" not in page and "https://" not in page
    for data in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(data, validate=True).startswith(PNG_MAGIC)
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page, heading
    assert SCRIPT not in page and "<b>x</b>" not in page
    return page


def _example_ids(page: str) -> tuple[list[str], list[str]]:
    """The ids in the highest and the lowest examples tables, in order."""
    _, high, low = page.split("<h3>")[:3]
    return tuple(re.findall(r'<td class="id">([0-9a-f]+)</td>', part) for part in (high, low))


def _expected(run_dir: Path, column: str) -> tuple[list[str], list[str]]:
    t = pq.read_table(run_dir / "scores.parquet", columns=[S.ID, column]).to_pylist()
    t = [r for r in t if r[column] is not None and np.isfinite(r[column])]
    high = sorted(t, key=lambda r: -r[column])[:10]
    return [r[S.ID] for r in high], [r[S.ID] for r in sorted(t, key=lambda r: r[column])[:10]]


def test_ifd_run_report(ifd_run: Path) -> None:
    page = _checked(ifd_run)
    manifest = json.loads((ifd_run / "manifest.json").read_text())
    assert manifest["config_hash"] in page and "ifd (selection)" in page
    c = manifest["counts"]
    assert f"in {c['read']} / out {c['selected']} / rejected {c['rejected_total']}" in page
    assert len(re.findall(r"<img ", page)) == 2  # score histograms + timings
    assert "no per-row cluster assignments" in page and "calls no judge" in page
    high, low = _example_ids(page)
    assert (high, low) == _expected(ifd_run, S.SCORE_IFD)
    assert "10 highest score_ifd" in page and "10 lowest score_ifd" in page
    # The markup row is shown, escaped, with its text from the run directory.
    assert "Repeat the tag &lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;x&lt;/b&gt; &amp; y" in page
    assert "What is the capital of France?" in page
    for reason in ("selected", "ifd_above_1"):
        assert f"<td>{reason}</td>" in page


def test_score_only_run_report(ray_local, corpus: Path, tmp_path: Path) -> None:
    out = _run(tmp_path / "score", corpus, select=False)
    page = _checked(out)
    assert "scores only (no selection)" in page and "all scored rows (no selection)" in page
    assert _example_ids(page) == _expected(out, S.SCORE_IFD)


def test_run_with_no_rows_scored(ray_local, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    page = _checked(_run(tmp_path / "run", empty))
    assert page.count("no rows scored") == 2  # the distributions and the examples
    assert "<h3>" not in page


@pytest.mark.slow  # the iterit run fine-tunes with Ray Train
def test_iterit_run_report(iterit_run: Path) -> None:
    page = _checked(iterit_run)
    epochs = json.loads((iterit_run / "manifest.json").read_text())["iterit"]["epochs"]
    assert "iterit (selection)" in page and "IterIT: k 2" in page
    assert "<th>picked</th>" in page and "<th>train</th>" in page and len(epochs) == 1
    assert "round_0/model" in page  # the epoch's training step, timed
    assert _example_ids(page) == _expected(iterit_run, S.SCORE_IFD_PPL)  # what IterIT ranks by
    assert len(re.findall(r"<img ", page)) == 3  # histograms, picks per epoch, timings


def test_clusters_judge_and_secrets(ifd_run: Path, tmp_path: Path) -> None:
    """Cluster coverage from the pre-experience step, then an IterSelectTune-shaped run (clusters in
    scores.parquet, rounds, judge cost); config keys that could hold a secret never reach the page."""
    out = shutil.copytree(ifd_run, tmp_path / "run")
    ids = pq.read_table(out / "scores.parquet", columns=[S.ID])[S.ID]
    clusters = pa.array(np.arange(len(ids)) % 3, pa.int32())
    pq.write_table(pa.table({S.ID: ids, S.CLUSTER: clusters}), out / "steps" / "pre_cluster.parquet")
    page = _checked(out)
    assert f"3 clusters over {len(ids)} rows; the selection covers" in page and 'alt="cluster shares"' in page

    scores = pq.read_table(out / "scores.parquet")
    ist = np.linspace(0.9, 0.1, scores.num_rows).astype(np.float32)
    scores = scores.append_column(S.CLUSTER, clusters).append_column(S.SCORE_IST, pa.array(ist))
    pq.write_table(scores, out / "scores.parquet")
    (out / "steps" / "pre_cluster.parquet").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["select"]["method"] = "iterselecttune"
    manifest["config"]["judge"] |= {"api_key_env": "MY_KEY_ENV", "api_key": "sk-LEAK-1", "password": "pw-LEAK-2"}
    manifest["config"]["hf_token"] = "hf-LEAK-3"
    judge = {"backend": "openai", "model": "gpt-x", "calls": 12, "cost_usd": 0.0123, "prompt_tokens": 999}
    rounds = [{"round": 0, "kind": "training", "candidates": 13, "batch": 3, "judge": {"verdicts": {"tie": 2}},
               "hard_added": 2, "hard_total": 2}, {"round": 1, "kind": "inference", "candidates": 10, "batch": 3,
               "hard_added": 3, "hard_total": 5}]  # fmt: skip
    manifest["iterselecttune"] = {"rows": 13, "subset": 13, "budget": 5, "batch": 3, "stop": "budget reached",
                                  "rounds": rounds, "judge": judge}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    page = _checked(out)
    assert "iterselecttune (selection)" in page and "IterSelectTune: subset 13 of 13 rows" in page
    assert "<th>hard_added</th>" in page and "verdicts (tie 2)" in page
    assert '<th>cost_usd</th><td class="num">0.0123</td>' in page and "gpt-x" in page
    assert f"3 clusters over {scores.num_rows} rows" in page
    assert _example_ids(page) == _expected(out, S.SCORE_IST)
    assert "MY_KEY_ENV" in page and not re.search("LEAK", page)


def test_text_comes_from_the_manifest_texts_table(ifd_run: Path, tmp_path: Path) -> None:
    """Only `id` and `raw` (the original record as JSON) are needed; the rows shown are read by id."""
    out = shutil.copytree(ifd_run, tmp_path / "run")
    rows = pq.read_table(out / "steps" / "texts.parquet", columns=[S.ID, S.RAW]).to_pylist()
    raw = [
        json.dumps(json.loads(r[S.RAW]) | {"instruction": "RAW " + json.loads(r[S.RAW])["instruction"]}) for r in rows
    ]
    (out / "tables").mkdir()
    pq.write_table(pa.table({S.ID: [r[S.ID] for r in rows], S.RAW: raw}), out / "tables" / "scored.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"tables": {"texts": "tables/scored.parquet"}}))
    page = _checked(out)
    assert "RAW What is the capital of France?" in page and "RAW Repeat the tag &lt;script&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page


def _screenshot(report: Path, png: Path, tmp: Path) -> np.ndarray:
    import matplotlib.image

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp}", "--window-size=1280,3000", f"--screenshot={png}", report.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), f"chromium wrote no screenshot of {report}"
    return matplotlib.image.imread(png)


@pytest.mark.slow  # the iterit run fine-tunes with Ray Train; Chromium renders
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} to render report.html")
def test_report_renders_in_headless_chromium(ifd_run: Path, iterit_run: Path, tmp_path: Path) -> None:
    for name, run_dir in (("ifd", ifd_run), ("iterit", iterit_run)):
        pixels = _screenshot(write_report(run_dir), tmp_path / f"{name}.png", tmp_path / f"chromium_{name}")
        assert pixels.shape[:2] == (3000, 1280)
        gray = pixels[..., :3].mean(axis=-1)
        assert gray.std() > 0.05, f"{name}: the screenshot is blank"
        assert (gray < 0.5).mean() > 0.005, f"{name}: hardly any dark (text) pixels"
