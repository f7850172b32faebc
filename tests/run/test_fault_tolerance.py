"""A worker node lost in the middle of scoring costs only its in-flight work: the run completes, every row
scored once, nothing lost, and the same selection as a run on a healthy cluster.

Three nodes on loopback: a head with no CPUs (it hosts only the driver), two workers. The scoring actors
and read tasks can only run on the workers; one worker is SIGKILLed (raylet, object store, workers) while
the score step streams, and Ray's actor restarts and task retries / lineage reconstruction recover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raysel.cli import main
from raysel.demo_corpus import write_corpus
from tests.conftest import REPO_ROOT
from tests.loopback import loopback_cluster

pytestmark = pytest.mark.slow  # starts a loopback Ray cluster and kills a worker node mid-run

DRIVER = """
import os, sys, ray
ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": {"RAYSEL_FAKE_DELAY_S": "0.25"}})
from raysel.cli import main
sys.exit(main(sys.argv[1:]))
"""
ARGS = ["--backend", "fake", "--ratio", "0.2", "--score.batch_size", "4", "--score.concurrency", "2",
        "--score.num_cpus", "0.5", "--checkpoint_rows", "8"]  # fmt: skip


def test_losing_a_worker_node_mid_scoring_loses_no_row(ray_local, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 160, seed=1)
    ref = tmp_path / "healthy"
    assert main(["select", "--input", str(corpus), "--output", str(ref), *ARGS]) == 0  # the test's own local Ray
    out = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    repo = REPO_ROOT
    with loopback_cluster(tmp_path, workers=2, head_cpus=0, worker_cpus=2) as cluster:
        env = cluster.env | {"RAY_ADDRESS": cluster.address}
        log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(script), "select", "--input", str(corpus), "--output", str(out), *ARGS]
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        parts = out / "steps" / "score.parts"
        deadline = time.monotonic() + 240
        while not list(parts.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        cluster.kill_worker(0)  # mid-scoring: rows are still being scored (0.25 s a batch of 4)
        try:
            code = proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            log.close()
        text = (tmp_path / "driver.log").read_text()
        assert code == 0, text[-4000:]
        assert cluster.alive_nodes() == 2  # the lost worker stayed lost: the run finished on what was left
    manifest = json.loads((out / "manifest.json").read_text())
    healthy = json.loads((ref / "manifest.json").read_text())
    assert manifest["ray"]["nodes"] == 3 and manifest["counts"] == healthy["counts"]
    scored = pq.read_table(out / "steps" / "score.parquet", columns=["id", "source"])
    assert scored.num_rows == healthy["counts"]["to_score"]
    assert len(pc.unique(scored["source"])) == scored.num_rows  # every row once: none lost, none twice
    for name in ("selected.jsonl", "rejected.jsonl"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    assert pq.read_table(out / "scores.parquet").equals(pq.read_table(ref / "scores.parquet"))
