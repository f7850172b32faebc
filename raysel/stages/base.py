"""Stage contract, resources derived from the config, and apply(): the only caller of map_batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from raysel.config import GenerateConfig, ScoreConfig

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """How one stage runs on Ray Data: an actor pool of `concurrency` actors, each with these resources."""

    num_cpus: float
    num_gpus: float
    concurrency: int
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

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]: ...

    @classmethod
    def spec(cls, cfg: Any) -> StageSpec: ...


class MissingColumnsError(ValueError):
    """The dataset lacks columns a stage requires."""


def apply(
    ds: ray.data.Dataset, stage_cls: type[Stage], cfg: Any, keep: Sequence[str] | None = None
) -> ray.data.Dataset:
    """Add `stage_cls`'s columns to every row of `ds`, in an actor pool sized by `stage_cls.spec(cfg)`.

    With `keep`, the actors return only those columns: the rest (e.g. the corpus text) never leaves them,
    and no extra task is needed to drop it."""
    import ray.data

    schema = ds.schema(fetch_if_missing=False)  # checked when known without running the pipeline
    names = set(schema.names) if schema is not None else set(stage_cls.requires)
    missing = sorted(set(stage_cls.requires) - names)
    if missing:
        raise MissingColumnsError(
            f"{stage_cls.__name__} needs columns {missing} that the dataset lacks (it has {sorted(names)})"
        )
    spec = stage_cls.spec(cfg)
    _warn_if_no_room(stage_cls.__name__, spec)
    ds = _split_blocks(ds, spec.batch_size)
    extra: dict[str, Any] = {}
    if spec.on_driver_node:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        extra["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    return ds.map_batches(
        stage_cls if keep is None else _keeping(stage_cls, tuple(keep)),
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=spec.concurrency),
        batch_size=spec.batch_size,
        batch_format="numpy",
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        **extra,
    )


def _keeping(stage_cls: type[Stage], keep: tuple[str, ...]) -> type[Stage]:
    """`stage_cls` whose batches come out cut to the `keep` columns (same name in Ray Data's progress)."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = stage_cls.__call__(self, batch)
        return {name: out[name] for name in keep}

    return type(stage_cls.__name__, (stage_cls,), {"__call__": __call__})


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
