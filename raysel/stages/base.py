"""Stage contract, resources derived from the config, and apply(): the only caller of map_batches."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from raysel.backends.base import local_cores
from raysel.config import GenerateConfig, ScoreConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """How one stage runs on Ray Data: an actor pool of `concurrency` actors, each with these resources.
    num_cpus / concurrency None: not set by the user, sized from the cluster by `resolve`."""

    num_cpus: float | None
    num_gpus: float
    concurrency: int | None
    batch_size: int
    on_driver_node: bool = False
    """Place the actors on the driver's node (they write files on its disk, e.g. the judge cache); soft: a
    head node with no room for them (num_cpus 0) still runs the stage elsewhere."""

    @classmethod
    def for_backend(cls, cfg: ScoreConfig | GenerateConfig) -> StageSpec:
        """Resources from the backend, in one place: vllm takes tensor_parallel_size GPUs unless on CPU;
        hf takes one GPU on cuda and none on CPU; an explicit num_gpus wins. Any config with these fields."""
        if cfg.num_gpus is not None:
            gpus = cfg.num_gpus
        elif cfg.backend == "vllm":
            gpus = 0.0 if cfg.device == "cpu" else float(cfg.engine_kwargs.get("tensor_parallel_size", 1))
        else:
            gpus = 1.0 if cfg.device.startswith("cuda") else 0.0
        return cls(num_cpus=cfg.num_cpus, num_gpus=gpus, concurrency=cfg.concurrency, batch_size=cfg.batch_size)


class Stage(Protocol):
    """A callable class: heavy state loaded once per actor in __init__, then 1:1 batch maps."""

    requires: ClassVar[dict[str, str]]
    produces: ClassVar[dict[str, str]]

    def __init__(self, cfg: Any) -> None: ...

    # Optional: `with_spec(cls, cfg, spec) -> cfg`, the config its actors get once the pool is resolved (for
    # configs that nest the resource fields); default: `with_resources(cfg, spec)`.

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]: ...

    @classmethod
    def spec(cls, cfg: Any) -> StageSpec: ...


class MissingColumnsError(ValueError):
    """The dataset lacks columns a stage requires."""


CLOCK_COLUMNS = ("raysel_init_start", "raysel_init_s", "raysel_busy_s")
"""Timing columns a clocked stage adds (first row of each batch; NaN / 0 elsewhere), removed by StageClock.strip."""


@dataclass
class StageClock:
    """Where a stage's wall time goes: actor start (scheduling, process start, imports of Ray), model load (the
    stage's __init__), and the actors' busy time in their batches. The actors report these in CLOCK_COLUMNS of
    their batches; `strip` takes them out as the driver reads the results."""

    started: float = field(default_factory=time.time)
    init_starts: list[float] = field(default_factory=list)
    init_s: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    first_result: float | None = None

    def strip(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        import pyarrow.compute as pc

        for t in tables:
            if self.first_result is None:
                self.first_result = time.time()
            starts = t[CLOCK_COLUMNS[0]].drop_null().to_pylist()
            self.init_starts += [x for x in starts if x == x]  # NaN: not an actor's first batch
            self.init_s += [x for x in t[CLOCK_COLUMNS[1]].to_pylist() if x == x]
            self.busy_s += float(pc.sum(t[CLOCK_COLUMNS[2]]).as_py() or 0.0)
            yield t.drop_columns(list(CLOCK_COLUMNS))

    def breakdown(self, total_s: float) -> dict[str, Any]:
        """Seconds of the step: until the first actor began loading its model, the slowest model load, the
        actors' mean busy time, and the rest (the pipeline's own waits: reading, feeding, the driver's writes)."""
        if not self.init_s:
            return {}
        actors = len(self.init_s)
        start = max(0.0, min(self.init_starts) - self.started)
        load, busy = max(self.init_s), self.busy_s / actors
        return {"actors": actors, "actor_start": round(start, 3), "model_load": round(load, 3),
                "compute": round(busy, 3), "other": round(max(0.0, total_s - start - load - busy), 3),
                "first_result": round((self.first_result or self.started) - self.started, 3)}  # fmt: skip


def apply(
    ds: ray.data.Dataset,
    stage_cls: type[Stage],
    cfg: Any,
    keep: Sequence[str] | None = None,
    clock: StageClock | None = None,
) -> ray.data.Dataset:
    """Add `stage_cls`'s columns to every row of `ds`, in an actor pool sized by `stage_cls.spec(cfg)`.

    With `keep`, the actors return only those columns: the rest (e.g. the corpus text) never leaves them,
    and no extra task is needed to drop it. With `clock`, the actors time themselves (CLOCK_COLUMNS), and the
    caller reads the results through `clock.strip`."""
    import ray.data

    schema = ds.schema(fetch_if_missing=False)  # checked when known without running the pipeline
    names = set(schema.names) if schema is not None else set(stage_cls.requires)
    missing = sorted(set(stage_cls.requires) - names)
    if missing:
        raise MissingColumnsError(
            f"{stage_cls.__name__} needs columns {missing} that the dataset lacks (it has {sorted(names)})"
        )
    spec, cfg = resolved(stage_cls, cfg)
    _warn_if_no_room(stage_cls.__name__, spec)
    ds = _split_blocks(ds, spec.batch_size)
    extra: dict[str, Any] = {}
    if spec.on_driver_node:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        extra["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    return ds.map_batches(
        _wrapped(stage_cls, None if keep is None else tuple(keep), clock is not None),
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=spec.concurrency),
        batch_size=spec.batch_size,
        batch_format="numpy",
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        **extra,
    )


def cluster_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node of the Ray cluster; this machine alone when Ray is not running."""
    import ray

    if not ray.is_initialized():
        return [(float(local_cores()), 0.0)]
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return [(float(r.get("CPU", 0.0)), float(r.get("GPU", 0.0))) for r in nodes]


def resolve(spec: StageSpec, nodes: Sequence[tuple[float, float]]) -> StageSpec:
    """Fill what the user left unset (num_cpus, concurrency) from the cluster's nodes, (CPUs, GPUs) each, so a
    default run uses the machine it runs on; what the user set always wins.

    GPU stages: one actor per num_gpus GPUs that fit on a node (one per GPU; tensor-parallel actors take
    tensor_parallel_size each), 1 CPU each. CPU stages: actors the size of the smallest node's CPUs less the
    light read/write tasks' share (LIGHT_CPUS), as many as fit (one per node on equal nodes), so those tasks
    always find room and nothing deadlocks; with only concurrency set, the actors split a node's room between
    them; with only num_cpus set, as many actors as fit.
    An autoscaling cluster with no GPU node up yet gets 1 actor (the autoscaler adds its node): set
    concurrency to scale out further."""
    from raysel.io import LIGHT_CPUS

    if spec.num_cpus is not None and spec.concurrency is not None:
        return spec
    if spec.num_gpus > 0:
        fit = sum(int(g // spec.num_gpus) for _, g in nodes)
        return dataclasses.replace(
            spec,
            num_cpus=1.0 if spec.num_cpus is None else spec.num_cpus,
            concurrency=spec.concurrency or max(1, fit),
        )
    cpus = [c for c, _ in nodes if c > 0] or [float(local_cores())]
    num_cpus = spec.num_cpus
    if num_cpus is None:
        per_node = 1 if spec.concurrency is None else math.ceil(spec.concurrency / len(cpus))
        num_cpus = max(LIGHT_CPUS, math.floor((min(cpus) - LIGHT_CPUS) / per_node * 100) / 100)
    fit = sum(int((c - LIGHT_CPUS) // num_cpus) for c in cpus)
    return dataclasses.replace(spec, num_cpus=num_cpus, concurrency=spec.concurrency or max(1, fit))


def with_resources(cfg: Any, spec: StageSpec) -> Any:
    """`cfg` with the pool's resolved num_cpus and concurrency, when it has those fields (its actors size their
    threads from them: backends.base.cpu_threads)."""
    names = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
    if {"num_cpus", "concurrency"} <= names:
        return dataclasses.replace(cfg, num_cpus=spec.num_cpus, concurrency=spec.concurrency)
    return cfg


def resolved(
    stage_cls: type[Stage], cfg: Any, nodes: Sequence[tuple[float, float]] | None = None
) -> tuple[StageSpec, Any]:
    """The stage's pool sized from the cluster it will run on (or `nodes`), and the config its actors get."""
    spec = resolve(stage_cls.spec(cfg), cluster_nodes() if nodes is None else nodes)
    hook = getattr(stage_cls, "with_spec", None)
    return spec, hook(cfg, spec) if hook else with_resources(cfg, spec)


def stage_resources(stage_cls: type[Stage], cfg: Any) -> dict[str, Any]:
    """The pool as it will run, for the manifest: resolved spec, and the torch threads of each CPU actor."""
    from raysel.backends.base import cpu_threads

    spec, actor_cfg = resolved(stage_cls, cfg)
    direct = dataclasses.is_dataclass(actor_cfg) and hasattr(actor_cfg, "num_cpus")
    threads = cpu_threads(actor_cfg) if direct and getattr(actor_cfg, "device", "cpu") == "cpu" else None
    return {**dataclasses.asdict(spec), "threads": threads}


def _wrapped(stage_cls: type[Stage], keep: tuple[str, ...] | None, timed: bool) -> type[Stage]:
    """`stage_cls` whose batches come out cut to the `keep` columns, and with `timed`, carrying CLOCK_COLUMNS
    (same name in Ray Data's progress)."""
    if keep is None and not timed:
        return stage_cls

    def __init__(self, cfg: Any) -> None:
        t0, start = time.time(), time.perf_counter()
        stage_cls.__init__(self, cfg)
        self._raysel_init = (t0, time.perf_counter() - start)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        out = stage_cls.__call__(self, batch)
        if keep is not None:
            out = {name: out[name] for name in keep}
        if timed:
            n = len(next(iter(out.values()))) if out else 0
            columns = [np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)]
            if n:
                if self._raysel_init is not None:  # this actor's first batch carries its start and load time
                    columns[0][0], columns[1][0] = self._raysel_init
                    self._raysel_init = None
                columns[2][0] = time.perf_counter() - start
            out = {**out, **dict(zip(CLOCK_COLUMNS, columns, strict=True))}
        return out

    body: dict[str, Any] = {"__call__": __call__}
    if timed:
        body["__init__"] = __init__
    return type(stage_cls.__name__, (stage_cls,), body)


def _warn_if_no_room(name: str, spec: StageSpec) -> None:
    """A pool that takes every CPU leaves none for the read tasks that feed it: on a fixed-size cluster the
    stage then waits forever (shared/notes/ray-data-llm-on-cpu.md, pitfall 2). Said before it happens."""
    import ray

    from raysel.io import LIGHT_CPUS

    cpus = ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else 0.0
    need = spec.concurrency * spec.num_cpus + LIGHT_CPUS
    if 0 < cpus < need:
        print(
            f"[raysel] warning: {name} asks {spec.concurrency} actors x {spec.num_cpus} CPUs, and the read tasks "
            f"{LIGHT_CPUS} more, but the cluster has {cpus:g} CPUs: unless the autoscaler adds nodes it will wait "
            "forever; lower the stage's concurrency or num_cpus",
            flush=True,
        )


def _split_blocks(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """Stream the rows into blocks of one batch each, so every actor of the pool gets work.

    A file parses into one block, which would otherwise go to a single actor while the pool idles.
    Ray's streaming repartition asks 1 CPU per task and takes no resource argument; beside whole-CPU
    actors on a small machine that deadlocks (shared/notes/ray-data-llm-on-cpu.md, pitfall 2), so its
    logical operator is given the light tasks' share. Workaround in this one place until Ray exposes it.
    """
    from raysel.io import LIGHT_CPUS

    ds = ds.repartition(target_num_rows_per_block=rows)
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    if isinstance(getattr(op, "ray_remote_args", None), dict):
        op.ray_remote_args["num_cpus"] = LIGHT_CPUS
    return ds
