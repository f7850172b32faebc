"""The same `raysel select` runs unchanged against a RAY_ADDRESS cluster (a loopback head + one worker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.loopback import BIN, loopback_cluster

pytestmark = pytest.mark.slow  # starts a loopback Ray cluster (head + worker processes)

TINY = Path(__file__).parent / "assets" / "tiny_instructions.jsonl"


def test_select_against_ray_address(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with loopback_cluster(tmp_path, workers=1) as cluster:
        env = cluster.env | {"RAY_ADDRESS": cluster.address}
        cmd = [
            str(BIN / "raysel"),
            "select",
            "--input",
            str(TINY),
            "--output",
            str(out),
            "--backend",
            "fake",
            "--k",
            "4",
            "--score.concurrency",
            "2",
            "--score.num_cpus",
            "0.5",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 4 and manifest["counts"]["read"] == 24
    # The driver joined the running two-node cluster, not a fresh local Ray.
    port = cluster.address.rsplit(":", 1)[1]  # Ray reports the node's own IP for the GCS, same port
    assert manifest["ray"]["address"].endswith(f":{port}") and manifest["ray"]["nodes"] == 2
