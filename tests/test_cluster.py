"""The same `raysel select` runs unchanged against a RAY_ADDRESS cluster (a loopback head + one worker)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TINY = Path(__file__).parent / "assets" / "tiny_instructions.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    """`ray start --block` in its own session, so the test ends exactly its process group."""
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", *args],
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"},
    )


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def loopback_cluster(tmp_path: Path):
    port = _free_port()
    tmp = tmp_path / "ray"
    tmp.mkdir()
    head = _start(
        [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={tmp}",
        ],
        tmp_path,
        "head",
    )
    procs = [head]
    try:
        time.sleep(6)
        procs.append(_start([f"--address=127.0.0.1:{port}", "--num-cpus=1"], tmp_path, "worker"))
        time.sleep(6)
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            _stop(p)


def test_select_against_ray_address(loopback_cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = os.environ | {"RAY_ADDRESS": loopback_cluster, "RAY_USAGE_STATS_ENABLED": "0"}
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
    assert manifest["ray"]["address"] == loopback_cluster and manifest["ray"]["nodes"] == 2
