"""A run killed in the middle of a map step resumes from that step's parts, with the uninterrupted output.

(Killed mid-round: tests/methods/test_iterit.py and tests/methods/test_iterselecttune.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysel.cli import main
from tests.conftest import REPO_ROOT, TINY_JSONL
from tests.procs import sigkill_when

pytestmark = pytest.mark.slow  # SIGKILLs a driver mid-scoring and resumes it

TINY = TINY_JSONL
ARGS = ["--backend", "fake", "--k", "6", "--score.batch_size", "2", "--score.concurrency", "1"]
ARGS += ["--checkpoint_rows", "4"]

KILLED = """
import os, sys, ray
ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": {"RAYSEL_FAKE_DELAY_S": "0.4"}})
from raysel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _select(out: Path) -> list[str]:
    return ["select", "--input", str(TINY), "--output", str(out), *ARGS]


def test_killed_mid_scoring_resumes_from_its_parts(ray_local, tmp_path: Path, capsys) -> None:
    ref = tmp_path / "uninterrupted"
    assert main(_select(ref)) == 0
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    repo = REPO_ROOT
    proc = subprocess.Popen([sys.executable, str(script), *_select(out)], cwd=repo, env=env, start_new_session=True)
    parts = out / "steps" / "score.parts"
    # (scoring 24 rows 2 at a time, 0.4 s a batch, takes about 5 s)
    sigkill_when(proc, lambda: len(list(parts.glob("part-*.parquet"))) >= 2, timeout=300)
    done = sorted(parts.glob("part-*.parquet"))
    scored_before = sum(pq.read_metadata(p).num_rows for p in done)
    assert len(done) >= 2 and 0 < scored_before < 21, "the run was not killed in the middle of scoring"
    assert not (out / "steps" / "score.done.json").exists() and not (out / "manifest.json").exists()
    capsys.readouterr()

    assert main(_select(out)) == 0  # the same command again: it continues the run (same config)
    log = capsys.readouterr().out
    assert f"score.parquet: resuming after {scored_before} rows in {len(done)} parts" in log
    assert not parts.exists()  # joined into steps/score.parquet
    for name in ("selected.jsonl", "rejected.jsonl"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    assert pq.read_table(out / "scores.parquet").equals(pq.read_table(ref / "scores.parquet"))
    assert pq.read_table(out / "steps" / "score.parquet").equals(pq.read_table(ref / "steps" / "score.parquet"))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == json.loads((ref / "manifest.json").read_text())["counts"] and counts["selected"] == 6
