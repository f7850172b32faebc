"""A throwaway Ray cluster on 127.0.0.1 for tests: a head (optionally with the dashboard/job server) + worker nodes.

Every node is a `ray start --block` in its own session (process group), so a test ends exactly the processes it
started (never `ray stop`), and a fault-tolerance test can SIGKILL one worker node. Every port Ray would otherwise
take by default (6379, 8265, 52365, 10001) is a free one, so clusters of concurrent test runs never meet.

    with loopback_cluster(tmp_path, workers=2, dashboard=True) as cluster:
        env = cluster.env | {"RAY_ADDRESS": cluster.address}
        ...
        cluster.kill_worker(0)
        cluster.wait_for_nodes(2)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = os.environ | {
    "RAY_USAGE_STATS_ENABLED": "0",
    # No token auth: Ray 2.60 turns it on for `ray start` when ~/.ray/auth_token exists (a local ray.init() writes
    # one), and every process of the cluster would then need the token.
    "RAY_AUTH_MODE": "disabled",
    # SIGTERM stops a node at once: by default a node first drains for up to 30 s (slow teardown, nothing to keep).
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "PATH": f"{BIN}:{os.environ['PATH']}",  # jobs' `python` / `raysel` entrypoints: this venv's
}

# Counts the nodes the GCS reports alive, in a fresh interpreter: the test process may hold its own ray.init().
_ALIVE = """
import sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
print(sum(1 for info in infos.values() if info.state == GcsNodeInfo.ALIVE))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoopbackCluster:
    """A running loopback cluster: `address` is the GCS ("127.0.0.1:P"), what RAY_ADDRESS takes."""

    tmp: Path
    """Where the nodes' logs go (head.log, worker<i>.log)."""
    ray_tmp: Path
    """Ray's temp dir (sessions, sockets, runtime_env resources): short, under /tmp."""
    address: str
    head: subprocess.Popen
    dashboard_url: str | None = None
    """http://127.0.0.1:D, the job server's address for `ray job submit --address` (None without the dashboard)."""
    workers: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))
    """The environment the nodes run with; give it to drivers and `ray job` commands too."""

    def add_worker(self, cpus: int = 1, resources: dict[str, float] | None = None) -> subprocess.Popen:
        """Start one worker node joining this head (does not wait for it: see wait_for_nodes)."""
        # Its own temp dir, as on a machine of its own: nodes sharing one would share runtime_env directories, and a
        # node deleting a working_dir it no longer uses would pull it from under another node's job driver.
        temp = self.ray_tmp / f"w{len(self.workers)}"
        args = [f"--address={self.address}", f"--num-cpus={cpus}", f"--temp-dir={temp}", *_agent_ports()]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        proc = _start(args, self.tmp / f"worker{len(self.workers)}.log", self.env)
        self.workers.append(proc)
        return proc

    def alive_nodes(self) -> int:
        """Nodes the GCS reports alive (-1 while it does not answer)."""
        cmd = [sys.executable, "-c", _ALIVE, self.address]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=self.env)
        except subprocess.TimeoutExpired:
            return -1
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else -1

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        """Wait until exactly n nodes are alive (after a kill: until the GCS has marked the node dead)."""
        deadline = time.monotonic() + timeout
        alive = -1
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"the Ray head exited:\n{self.log('head')}")
            alive = self.alive_nodes()
            if alive == n:
                return
            time.sleep(1)
        logs = "\n".join(self.log(f"worker{i}") for i in range(len(self.workers)))
        raise TimeoutError(f"{alive} of {n} nodes alive after {timeout:.0f} s:\n{self.log('head')}\n{logs}")

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker node i: its raylet, object store, agents and Ray workers at once, as a lost machine."""
        _signal_group(self.workers[i], signal.SIGKILL)
        self.workers[i].wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """End every node by its process group (workers first), then remove Ray's temp dir."""
        for proc in [*reversed(self.workers), self.head]:
            _stop(proc)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def start_head(
    tmp: Path, *, cpus: int = 1, dashboard: bool = False, resources: dict[str, float] | None = None
) -> LoopbackCluster:
    """Start a head node on 127.0.0.1 (free ports); returns once its GCS answers."""
    port = free_port()
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep for its temp dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    args = [
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={cpus}",
        f"--temp-dir={ray_tmp}",
        f"--ray-client-server-port={free_port()}",
        *_agent_ports(),
    ]
    dashboard_url = None
    if dashboard:
        dashboard_port = free_port()
        args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    else:
        args.append("--include-dashboard=false")
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    head = _start(args, tmp / "head.log", ENV)
    cluster = LoopbackCluster(tmp, ray_tmp, f"127.0.0.1:{port}", head, dashboard_url)
    try:
        cluster.wait_for_nodes(1)
        if dashboard_url:
            _wait_for_http(f"{dashboard_url}/api/version", head, cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def loopback_cluster(
    tmp_path: Path,
    workers: int = 1,
    head_cpus: int = 1,
    worker_cpus: int = 1,
    dashboard: bool = False,
    worker_resources: dict[str, float] | None = None,
    head_resources: dict[str, float] | None = None,
) -> Iterator[LoopbackCluster]:
    """A head + `workers` worker nodes, all alive when the block starts; every node ended when it leaves."""
    cluster = start_head(tmp_path, cpus=head_cpus, dashboard=dashboard, resources=head_resources)
    try:
        for _ in range(workers):
            cluster.add_worker(worker_cpus, worker_resources)
        cluster.wait_for_nodes(1 + workers)
        yield cluster
    finally:
        cluster.stop()


def _agent_ports() -> list[str]:
    # The dashboard agent listens on 52365 by default: two nodes on one host (or two test runs) would collide.
    return [f"--dashboard-agent-listen-port={free_port()}"]


def _start(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start --block` in its own session, so the test ends exactly its process group."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def _signal_group(proc: subprocess.Popen, sig: int, *, session: bool = True) -> None:
    """Signal the node's process group and (session=True) the Ray workers of its session, which Ray moves to
    process groups of their own."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # start_new_session: the group and session ids are the leader's pid
    for pid in _session_pids(proc.pid) if session else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (Linux /proc; elsewhere none, and the group signal has to do)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            if int(fields[3]) == sid:
                pids.append(int(stat.parent.name))
    return pids


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the node's group (ray start --block stops its processes), then SIGKILL whatever is left of it."""
    _signal_group(proc, signal.SIGTERM, session=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _wait_for_http(url: str, head: subprocess.Popen, cluster: LoopbackCluster, timeout: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"the Ray head exited:\n{cluster.log('head')}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s:\n{cluster.log('head')}")
