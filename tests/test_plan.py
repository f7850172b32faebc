"""The scoring plan on Ray Data: map_batches arguments, resources per backend, column checks, a fake run."""

from __future__ import annotations

import numpy as np
import pytest

from raysel import schema as S
from raysel.config import ScoreConfig
from raysel.stages.base import MissingColumnsError, StageSpec, apply
from raysel.stages.score import IfdScoreStage

COLS = (S.INSTRUCTION, S.INPUT, S.OUTPUT)


def _key(row: dict) -> tuple[str, ...]:
    return tuple(row[c] for c in COLS)


@pytest.fixture
def tiny_ds(ray_local, tiny_rows):
    import ray.data

    return ray.data.from_items([{c: r[c] for c in COLS} for r in tiny_rows])


def test_plan_without_executing(tiny_ds) -> None:
    from ray.data import ActorPoolStrategy
    from ray.data._internal.logical.operators.map_operator import MapBatches

    cfg = ScoreConfig(backend="fake", concurrency=2, batch_size=8, num_cpus=0.5)
    out = apply(tiny_ds, IfdScoreStage, cfg)
    op = out._logical_plan.dag
    assert isinstance(op, MapBatches)
    assert op.fn is IfdScoreStage
    assert op.fn_constructor_kwargs == {"cfg": cfg}
    assert isinstance(op.compute, ActorPoolStrategy)
    assert (op.compute.min_size, op.compute.max_size) == (2, 2)
    assert op.batch_size == 8
    assert op.batch_format == "numpy"
    assert op.ray_remote_args["num_cpus"] == 0.5
    assert op.ray_remote_args["num_gpus"] == 0
    # one stage on top of the source, nothing executed yet
    assert len(op.input_dependencies) == 1 and not isinstance(op.input_dependencies[0], MapBatches)
    assert out._current_executor is None and not out._has_computed_output()


def test_plan_gpu_resources_reach_map_batches(tiny_ds) -> None:
    cfg = ScoreConfig(backend="vllm", device="cuda", engine_kwargs={"tensor_parallel_size": 2}, concurrency=3)
    op = apply(tiny_ds, IfdScoreStage, cfg)._logical_plan.dag  # built lazily: vllm is never loaded
    assert op.ray_remote_args["num_gpus"] == 2.0
    assert (op.compute.min_size, op.compute.max_size) == (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "gpus"),
    [
        ({"backend": "vllm", "device": "cuda", "engine_kwargs": {"tensor_parallel_size": 2}}, 2.0),
        ({"backend": "vllm", "device": "cuda"}, 1.0),
        ({"backend": "vllm", "device": "cpu", "engine_kwargs": {"tensor_parallel_size": 2}}, 0.0),
        ({"backend": "hf", "device": "cuda"}, 1.0),
        ({"backend": "hf", "device": "cuda:1"}, 1.0),
        ({"backend": "hf", "device": "cpu"}, 0.0),
        ({"backend": "fake"}, 0.0),
        (
            {
                "backend": "vllm",
                "device": "cuda",
                "engine_kwargs": {"tensor_parallel_size": 2},
                "num_gpus": 0.5,
            },
            0.5,
        ),
        ({"backend": "hf", "device": "cpu", "num_gpus": 1.0}, 1.0),
    ],
)
def test_stage_spec_for_backend(kwargs: dict, gpus: float) -> None:
    cfg = ScoreConfig(num_cpus=3.0, concurrency=4, batch_size=16, **kwargs)
    spec = StageSpec.for_backend(cfg)
    assert spec == StageSpec(num_cpus=3.0, num_gpus=gpus, concurrency=4, batch_size=16)
    assert IfdScoreStage.spec(cfg) == spec


def test_missing_column_is_named(tiny_ds) -> None:
    with pytest.raises(MissingColumnsError, match=r"IfdScoreStage needs columns \['output'\]"):
        apply(tiny_ds.drop_columns([S.OUTPUT]), IfdScoreStage, ScoreConfig(backend="fake"))


def test_fake_apply_end_to_end(tiny_ds, tiny_rows) -> None:
    cfg = ScoreConfig(backend="fake", concurrency=1, batch_size=8, num_cpus=0.5)
    rows = apply(tiny_ds, IfdScoreStage, cfg).take_all()
    assert len(rows) == len(tiny_rows)
    assert set(rows[0]) == set(COLS) | set(IfdScoreStage.produces)
    by_text = {_key(r): r for r in rows}  # row order is not guaranteed
    direct = IfdScoreStage(cfg)({c: np.array([r[c] for r in tiny_rows], dtype=object) for c in COLS})
    for i, r in enumerate(tiny_rows):
        got = by_text[_key(r)]
        assert got[S.REJECT_REASON] == ""
        assert got[S.SCORE_IFD] == pytest.approx(float(direct[S.SCORE_IFD][i]), rel=1e-6)
        assert got[S.N_ANSWER_TOKENS] == direct[S.N_ANSWER_TOKENS][i]
