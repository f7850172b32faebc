"""cluster.yaml is a launcher config `ray up` accepts, with the shape raysel's cluster jobs need.

`ray up` fills the config out with the provider's defaults and validates it against the JSON schema Ray ships
(ray/autoscaler/ray-schema.json) before it talks to the cloud: the test runs those same steps offline, then checks
what the schema cannot: a CPU head, a GPU group that scales from 0, raysel[gpu] installed on every node, and room
for every jobs/cluster/*.yaml run (GPUs, CPUs per actor).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raysel.config import load_config
from raysel.stages.base import StageSpec, resolve
from raysel.stages.embed import EmbedStage

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
CLUSTER_JOBS = sorted((REPO / "jobs" / "cluster").glob("*.yaml"))


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _gpu_groups(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in cluster["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


def test_schema_and_ray_up_validation(cluster: dict[str, Any]) -> None:
    jsonschema.validate(cluster, SCHEMA)  # the file as written: no unknown or mistyped key
    full = prepare_config(copy.deepcopy(cluster))  # what `ray up` does first: provider defaults, merged commands
    validate_config(full)  # then its checks: schema again, head_node_type known, sum(min_workers) <= max_workers


def test_schema_is_strict(cluster: dict[str, Any]) -> None:
    """The schema check above is not vacuous: a misspelt node-type key fails it."""
    bad = copy.deepcopy(cluster)
    group = next(iter(_gpu_groups(bad).values()))
    group["min_worker"] = group.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(bad, SCHEMA)


def test_cpu_head_and_gpu_group_from_zero(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0, "the head is a CPU node"
    assert head.get("max_workers", 0) == 0
    groups = _gpu_groups(cluster)
    assert groups, "a node type with GPU resources"
    for name, group in groups.items():
        assert group["min_workers"] == 0, f"{name}: GPU nodes exist only while work waits for them"
        assert 0 < group["max_workers"] <= cluster["max_workers"], name
    assert sum(t.get("max_workers", 0) for t in groups.values()) >= 8, "room for the *_8gpu jobs"


def test_every_node_installs_raysel_gpu(cluster: dict[str, Any]) -> None:
    full = prepare_config(copy.deepcopy(cluster))
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both
        installs = [c for c in full[key] if "pip install" in c and "raysel[gpu]" in c]
        assert installs, f"{key}: no `pip install ...raysel[gpu]`"
    for remote, local in cluster.get("file_mounts", {}).items():
        if not local.startswith("~"):  # ~/...: the user's own files (secrets), not the repo's
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} (relative to the repo root)"
        if any(f"{remote}[gpu]" in c for c in full["worker_setup_commands"]):
            assert {".venv", ".git"} <= set(cluster.get("rsync_exclude", [])), "do not sync the venv or .git"


def test_start_commands(cluster: dict[str, Any]) -> None:
    head = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    port = head.split("--port=")[1].split()[0]
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{port}" in worker


@pytest.mark.parametrize("path", CLUSTER_JOBS, ids=[p.name for p in CLUSTER_JOBS])
def test_cluster_job_fits(cluster: dict[str, Any], path: Path) -> None:
    """Every actor pool and Ray Train run of a jobs/cluster file can be placed on the GPU group: resources as
    raysel asks Ray for them (StageSpec), against what the nodes offer."""
    cfg = load_config(path)
    groups = _gpu_groups(cluster).values()
    gpus = sum(t["resources"]["GPU"] * t["max_workers"] for t in groups)
    node_cpus = max(t["resources"]["CPU"] for t in groups)
    node_gpus = max(t["resources"]["GPU"] for t in groups)
    nodes = [
        (float(t["resources"]["CPU"]), float(t["resources"]["GPU"])) for t in groups for _ in range(t["max_workers"])
    ]
    pools = {"score": StageSpec.for_backend(cfg.score), "generate": StageSpec.for_backend(cfg.generate)}
    pools["embed"] = EmbedStage.spec(cfg.embed)
    pools = {name: resolve(spec, nodes) for name, spec in pools.items()}  # unset resources: from the scaled cluster
    for name, spec in pools.items():
        assert spec.num_gpus <= node_gpus and spec.num_cpus <= node_cpus, f"{name}: one actor must fit on one node"
        assert spec.concurrency * spec.num_gpus <= gpus, f"{name}: {spec.concurrency} actors need more GPUs"
    for name, train in {"train": cfg.train, "classifier": cfg.classifier}.items():
        if train.use_gpu:
            assert train.num_workers <= gpus and train.cpus_per_worker <= node_cpus, name
    named = re.search(r"_(\d+)gpu", path.stem)  # <data>_<model>_<method>_<N>gpu: N GPUs for the main GPU pool
    main_pool = pools["generate" if cfg.select.method == "iterselecttune" else "score"]
    if named:
        assert main_pool.concurrency * main_pool.num_gpus == int(named[1]) <= gpus, path.name
    assert cfg.output.startswith(("s3://", "gs://")), "cluster runs write their run directory to shared storage"
