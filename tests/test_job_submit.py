"""`ray job submit` runs `raysel select` on a cluster with raysel shipped in the job's runtime_env (--working-dir).

A loopback head with the job server (dashboard) + one worker node. The working dir is a temp copy of the raysel
package, a job file and a small entry script, as `--working-dir .` ships a checkout (raysel/ + jobs/) in production.
The entry reports where the driver and a task on the worker node imported raysel from, then runs the real CLI
(`raysel.cli.main`, what the `raysel` console script calls): both must be the runtime_env's copy, not the venv's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.loopback import BIN, loopback_cluster

pytestmark = pytest.mark.slow  # starts a loopback Ray cluster with the job server

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny_instructions.jsonl"

ENTRY = '''"""Job entry: report where raysel comes from (driver, a task on the worker node), then run `raysel`."""
import json, os, sys

import ray
import raysel
from raysel.cli import main


@ray.remote(num_cpus=0, resources={"loopback_worker": 0.001})
def on_worker():
    import raysel

    return {"raysel": raysel.__file__, "node": ray.get_runtime_context().get_node_id(),
            "mark": os.environ.get("RAYSEL_JOB_MARK")}


ray.init()
where = {"driver": {"raysel": raysel.__file__, "node": ray.get_runtime_context().get_node_id(),
                    "excluded_shipped": os.path.exists("unused")},
         "worker": ray.get(on_worker.remote())}
print("RAYSEL_WHERE " + json.dumps(where), flush=True)
sys.exit(main(sys.argv[1:]))
'''

JOB = """# tiny_fake: the job file the test's working dir ships (relative --config resolves in the job's cwd).
# Launch:   ray job submit --working-dir DIR -- python entry.py select --config jobs/tiny_fake.yaml
seed: 0
data:
  input: {input}
score:
  backend: fake
  concurrency: 2
  num_cpus: 0.5
select:
  method: ifd
  k: 4
"""


def _working_dir(root: Path) -> Path:
    wd = root / "job"
    shutil.copytree(REPO / "raysel", wd / "raysel", ignore=shutil.ignore_patterns("__pycache__"))
    (wd / "jobs").mkdir()
    (wd / "jobs" / "tiny_fake.yaml").write_text(JOB.format(input=TINY))
    (wd / "entry.py").write_text(ENTRY)
    (wd / "unused").mkdir()  # excluded by the runtime_env's "excludes"
    (wd / "unused" / "data.txt").write_text("not needed by the job\n")
    return wd


def test_job_submit_runs_raysel_from_runtime_env(tmp_path: Path) -> None:
    wd = _working_dir(tmp_path)
    out = tmp_path / "run"  # absolute: the job's cwd is Ray's copy of the working dir
    mark = uuid.uuid4().hex
    job_id = f"raysel-test-{mark[:8]}"
    runtime_env = {"excludes": ["unused/"], "env_vars": {"RAYSEL_JOB_MARK": mark}}  # + working_dir from the flag
    with loopback_cluster(tmp_path, workers=1, dashboard=True, worker_resources={"loopback_worker": 1}) as cluster:
        ray = str(BIN / "ray")
        submit = [
            ray, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id,
            "--working-dir", str(wd), "--runtime-env-json", json.dumps(runtime_env),
            "--", "python", "entry.py", "select", "--config", "jobs/tiny_fake.yaml", "--output", str(out),
        ]  # fmt: skip
        proc = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]  # submit waits: 0 = the job succeeded
        # What a user runs after `ray job submit --no-wait`, or later: the job's logs, kept by the job server.
        logs = subprocess.run(
            [ray, "job", "logs", "--address", cluster.dashboard_url, job_id],
            env=cluster.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        resources = cluster.ray_tmp

    # The driver's summary reached the job's logs.
    assert f"raysel: run directory {out}" in logs.stdout, logs.stdout[-3000:]
    where = json.loads(logs.stdout.split("RAYSEL_WHERE ", 1)[1].splitlines()[0])
    for role in ("driver", "worker"):
        path = Path(where[role]["raysel"])
        # Imported from the working dir Ray unpacked on that node, not from the venv's (editable) install.
        assert path.is_relative_to(resources) and "working_dir_files" in path.parts, (role, path)
        assert not path.is_relative_to(REPO), (role, path)
    assert where["worker"]["node"] != where["driver"]["node"]  # the other node got the package too
    # --runtime-env-json merged with --working-dir: its env_vars reached the worker, its excludes the upload.
    assert where["worker"]["mark"] == mark and not where["driver"]["excluded_shipped"]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 24 and manifest["counts"]["selected"] == 4
    assert manifest["ray"]["nodes"] == 2 and manifest["ray"]["address"].endswith(
        ":" + cluster.address.rsplit(":", 1)[1]
    )
    rows = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["id"] and r["instruction"] for r in rows)
