"""Stage contract, resources derived from the config, and apply(): the only caller of map_batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from raysel.config import ScoreConfig

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """How one stage runs on Ray Data: an actor pool of `concurrency` actors, each with these resources."""

    num_cpus: float
    num_gpus: float
    concurrency: int
    batch_size: int

    @classmethod
    def for_backend(cls, cfg: ScoreConfig) -> StageSpec:
        """Resources from the backend, in one place: vllm takes tensor_parallel_size GPUs unless on CPU;
        hf takes one GPU on cuda and none on CPU; an explicit score.num_gpus wins."""
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


def apply(ds: ray.data.Dataset, stage_cls: type[Stage], cfg: Any) -> ray.data.Dataset:
    """Add `stage_cls`'s columns to every row of `ds`, in an actor pool sized by `stage_cls.spec(cfg)`."""
    import ray.data

    names = set(ds.schema(fetch_if_missing=True).names)
    missing = sorted(set(stage_cls.requires) - names)
    if missing:
        raise MissingColumnsError(
            f"{stage_cls.__name__} needs columns {missing} that the dataset lacks (it has {sorted(names)})"
        )
    spec = stage_cls.spec(cfg)
    return ds.map_batches(
        stage_cls,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=spec.concurrency),
        batch_size=spec.batch_size,
        batch_format="numpy",
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
    )
