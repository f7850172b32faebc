"""Stage pools sized from the cluster when the user sets no resources (stages.base.resolve)."""

from __future__ import annotations

import dataclasses

import pytest

from raysel.backends.base import cpu_threads
from raysel.config import ClassifierConfig, EmbedConfig, GenerateConfig, JudgeConfig, ScoreConfig
from raysel.io import LIGHT_CPUS
from raysel.stages.base import resolve, resolved
from raysel.stages.classify import ClassifyRun, ClassifyStage
from raysel.stages.embed import EmbedStage
from raysel.stages.generate import GenerateStage
from raysel.stages.judge import JudgeRun, JudgeStage
from raysel.stages.score import IfdScoreStage


def _pool(stage, cfg, nodes):
    return resolved(stage, cfg, nodes)


@pytest.mark.parametrize(
    ("nodes", "concurrency", "num_cpus", "threads"),
    [
        ([(2.0, 0.0)], 1, 1.75, 2),  # this project's machine: one actor, both cores, room for the read tasks
        ([(16.0, 0.0)], 1, 15.75, 16),
        ([(0.0, 0.0), (8.0, 0.0), (8.0, 0.0), (8.0, 0.0)], 3, 7.75, 8),  # a head with no CPUs takes no actor
        ([(2.0, 0.0), (8.0, 0.0)], 5, 1.75, 2),  # actors the smallest node's size, as many as fit: 1 + 4
        ([(1.0, 0.0)], 1, 0.75, 1),
    ],
)
def test_cpu_defaults_use_every_node(nodes, concurrency, num_cpus, threads) -> None:
    spec, actor_cfg = _pool(IfdScoreStage, ScoreConfig(), nodes)
    assert (spec.concurrency, spec.num_cpus, spec.num_gpus) == (concurrency, num_cpus, 0.0)
    assert cpu_threads(actor_cfg) == threads
    # nothing deadlocks: the actors fit the nodes with room left on each for the light tasks
    assert sum(int((c - LIGHT_CPUS) // spec.num_cpus) for c, _ in nodes if c > 0) >= spec.concurrency


def test_explicit_settings_win() -> None:
    nodes = [(8.0, 0.0), (8.0, 0.0)]
    both = ScoreConfig(concurrency=3, num_cpus=0.5, threads=4)
    spec, cfg = _pool(IfdScoreStage, both, nodes)
    assert (spec.concurrency, spec.num_cpus, cpu_threads(cfg)) == (3, 0.5, 4)
    spec, cfg = _pool(IfdScoreStage, ScoreConfig(concurrency=3), nodes)  # 2 actors on one node split its room
    assert (spec.concurrency, spec.num_cpus, cpu_threads(cfg)) == (3, 3.87, 4)
    spec, _ = _pool(IfdScoreStage, ScoreConfig(num_cpus=2.0), nodes)  # as many 2-CPU actors as fit beside the tasks
    assert (spec.concurrency, spec.num_cpus) == (6, 2.0)


def test_gpu_stages_take_one_actor_per_gpu() -> None:
    nodes = [(0.0, 0.0), (32.0, 8.0), (32.0, 8.0)]
    spec, _ = _pool(IfdScoreStage, ScoreConfig(device="cuda"), nodes)
    assert (spec.concurrency, spec.num_gpus, spec.num_cpus) == (16, 1.0, 1.0)
    tp = ScoreConfig(backend="vllm", device="cuda", engine_kwargs={"tensor_parallel_size": 4})
    spec, _ = _pool(IfdScoreStage, tp, nodes)
    assert (spec.concurrency, spec.num_gpus) == (4, 4.0)  # tensor-parallel actors each fit on one node
    spec, _ = _pool(EmbedStage, EmbedConfig(device="cuda"), nodes)
    assert spec.concurrency == 16
    # an autoscaling cluster with no GPU node up yet: one actor, whose GPU request adds the node
    spec, _ = _pool(IfdScoreStage, ScoreConfig(device="cuda"), [(4.0, 0.0)])
    assert spec.concurrency == 1


def test_every_map_stage_resolves() -> None:
    nodes = [(4.0, 0.0)]
    for stage, cfg in [(EmbedStage, EmbedConfig()), (GenerateStage, GenerateConfig(max_new_tokens=8))]:
        spec, actor_cfg = _pool(stage, cfg, nodes)
        assert (spec.concurrency, spec.num_cpus, cpu_threads(actor_cfg)) == (1, 3.75, 4), stage.__name__
    spec, run = _pool(ClassifyStage, ClassifyRun(classifier=ClassifierConfig(), path="m"), nodes)
    assert (spec.concurrency, spec.num_cpus, run.classifier.num_cpus) == (1, 3.75, 3.75)
    judge = JudgeRun(judge=JudgeConfig(backend="local", actors=2), cache_dir="c")
    spec, run = _pool(JudgeStage, judge, nodes)  # judge.actors is explicit: the two actors split the node
    assert (spec.concurrency, spec.num_cpus, run.judge.local.num_cpus, cpu_threads(run.judge.local)) == (
        2,
        1.87,
        1.87,
        2,
    )
    remote = JudgeRun(judge=JudgeConfig(backend="fake"), cache_dir="c")
    spec, run = _pool(JudgeStage, remote, nodes)  # HTTP-bound actors keep their fixed light share
    assert (spec.num_cpus, run) == (0.25, remote)


def test_unresolved_spec_is_visible() -> None:
    spec = IfdScoreStage.spec(ScoreConfig())
    assert (spec.concurrency, spec.num_cpus) == (None, None)
    assert resolve(dataclasses.replace(spec, concurrency=2, num_cpus=1.0), [(2.0, 0.0)]) == dataclasses.replace(
        spec, concurrency=2, num_cpus=1.0
    )
