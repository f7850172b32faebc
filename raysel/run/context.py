"""One run's context, opened and closed in one place for `raysel select`, `agree` and `eval`: the run
directory claimed (raysel.run.rundir), Ray joined or started, the hash of the code that makes the steps, and
the steps' timings. Everything a run writes goes through the context's RunDir; there is no module state."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysel.run.rundir import RunDir, open_run
from raysel.run.steps import Steps

PACKAGE = Path(__file__).resolve().parents[1]
"""raysel's source directory."""
PRESENTATION = {"report.py", "summary.py", "html.py"}
"""Modules that only present finished results: editing them does not redo a run's steps."""


def code_hash() -> str:
    """Hash of raysel's own source: a completed step is reused only by the code that made it."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name not in PRESENTATION:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def init_ray() -> dict[str, Any]:
    """Join RAY_ADDRESS if set, else start a local Ray; keep row order so results are deterministic."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Ray 2.60's V2 read_parquet lists files in a task that asks a whole CPU whatever num_cpus the read is
    # given; beside actors sized to their node (less the light tasks' 0.25) it would wait forever. The V1 reader
    # runs every task at the num_cpus raysel passes (LIGHT_CPUS).
    ctx.use_datasource_v2 = False
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len(alive),
        "cpus": ray.cluster_resources().get("CPU", 0),
        "gpus": ray.cluster_resources().get("GPU", 0),
    }


@dataclass
class RunContext:
    """What every step of a run needs besides its config."""

    rundir: RunDir
    cluster: dict[str, Any]
    """The Ray cluster the run joined (address, nodes, CPUs, GPUs), as the manifest records it."""
    code: str
    """code_hash() at the start of the run: part of every step's key."""
    ray_start: float = 0.0
    """Seconds it took to join or start Ray (fixed cost: `raysel select` puts it in its breakdown)."""
    timings: dict[str, Any] = field(default_factory=dict)
    """Seconds per step (shared by every Steps of the run), plus the run's own phases."""

    @property
    def out(self) -> Path:
        """Where the run reads and writes (the run directory, or the local staging copy of a remote one)."""
        return self.rundir.local

    def steps(self, dir: str | None = None) -> Steps:
        """The steps under <out>/steps/, or under <out>/<dir>/ (IterIT's round_<e>/), timed into `timings`."""
        return Steps(self.out, None if dir is None else self.out / dir, self.timings, self.rundir.sync)

    def storage_uri(self, local: Path | str) -> str:
        """Where Ray Train keeps checkpoints for a path of this run (see RunDir.storage_uri)."""
        return self.rundir.storage_uri(local)


@contextmanager
def run_context(
    output: str, config_text: str, *, resume: bool, overwrite: bool, stale: Iterable[str] = ()
) -> Iterator[RunContext]:
    """Claim `output` for a run with this resolved config (YAML text), remove the files of `stale` (an earlier
    run's results must not pass for this one's), start Ray; on a clean exit, upload what is left to upload."""
    rd = open_run(output, config_text, resume=resume, overwrite=overwrite)
    for name in stale:
        (rd.local / name).unlink(missing_ok=True)
    start = time.perf_counter()
    cluster = init_ray()
    ray_start = round(time.perf_counter() - start, 3)
    yield RunContext(rundir=rd, cluster=cluster, code=code_hash(), ray_start=ray_start)
    rd.sync()
