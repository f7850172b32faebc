"""The same `raysel select` runs unchanged against a RAY_ADDRESS cluster (a loopback head + one worker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# A throwaway loopback cluster: no usage stats, and no token auth (Ray 2.60 turns it on for `ray start`).
ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
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
        env=ENV,
    )


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_until_up(head: subprocess.Popen, address: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"the Ray head exited:\n{log.read_text()[-3000:]}")
        status = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={address}"], capture_output=True, timeout=60, env=ENV
        )
        if status.returncode == 0:
            return
        time.sleep(2)
    pytest.fail(f"the Ray head did not come up in 90 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def loopback_cluster(tmp_path: Path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep for its temp dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    head = _start(
        [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={ray_tmp}",
        ],
        tmp_path,
        "head",
    )
    procs = [head]
    try:
        _wait_until_up(head, address, tmp_path / "head.log")
        procs.append(_start([f"--address={address}", "--num-cpus=1"], tmp_path, "worker"))
        deadline = time.monotonic() + 60  # until the worker has joined
        while time.monotonic() < deadline and "2 node" not in _nodes(address):
            time.sleep(2)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _nodes(address: str) -> str:
    code = f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(len(ray.nodes()), 'node')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    return out.stdout


def test_select_against_ray_address(loopback_cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = ENV | {"RAY_ADDRESS": loopback_cluster}
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
    port = loopback_cluster.rsplit(":", 1)[1]  # Ray reports the node's own IP for the GCS, same port
    assert manifest["ray"]["address"].endswith(f":{port}") and manifest["ray"]["nodes"] == 2
