"""Judge stage (IterSelectTune): is the reference answer better than the target model's? Both orders, cached."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.config import JudgeConfig
from raysel.judge import Judge, question_of
from raysel.stages.base import StageSpec, with_resources


@dataclass(frozen=True, kw_only=True)
class JudgeRun:
    """What one judge pass needs besides the judge's config."""

    judge: JudgeConfig
    cache_dir: str
    """The persistent judge cache (judge.cache, or <output>/judge_cache): shared by every actor and run."""
    budget_usd: float | None = None
    """USD this pass may still spend (the driver subtracts earlier rounds' cost); split evenly between actors.
    None: no cap."""


class JudgeStage:
    """Labels each row by a pairwise judgement of its reference answer against the target model's answer.

    Input columns: id, instruction, input, output (the reference), generated (the target model's answer).
    Output columns: judge_verdict, judge_raw (str), judge_score_ref, judge_score_model (float32), judge_calls,
    judge_cached (int32), judge_prompt_tokens, judge_completion_tokens (int64), judge_cost_usd (float64).
    Resources: openai/fake 0.25 CPU per actor (I/O bound; judge.concurrency requests in flight each);
    local as the generator (judge.local); judge.actors actors. Idempotent through the persistent cache: a
    rerun pays for nothing already judged. The API key is read from the environment in the actor, never
    passed, logged or written.
    """

    requires: ClassVar[dict[str, str]] = {
        S.ID: "row id",
        S.INSTRUCTION: "instruction text",
        S.INPUT: "optional context",
        S.OUTPUT: "reference answer",
        S.GENERATED: "the target model's answer",
    }
    produces: ClassVar[dict[str, str]] = {
        S.JUDGE_VERDICT: '"reference", "model", "tie", "unparsed" or "budget"',
        S.JUDGE_SCORE_REF: "reference answer's score, mean over both orders",
        S.JUDGE_SCORE_MODEL: "model answer's score, mean over both orders",
        S.JUDGE_RAW: "raw replies (JSON list) when unparsed",
        S.JUDGE_CALLS: "calls made this run",
        S.JUDGE_CACHED: "judgements served from the cache",
        S.JUDGE_PROMPT_TOKENS: "prompt tokens of this run's calls",
        S.JUDGE_COMPLETION_TOKENS: "completion tokens of this run's calls",
        S.JUDGE_COST: "USD of this run's calls",
    }

    def __init__(self, cfg: JudgeRun) -> None:
        budget = None if cfg.budget_usd is None else cfg.budget_usd / cfg.judge.actors
        self.judge = Judge(cfg.judge, cfg.cache_dir, budget)

    @classmethod
    def spec(cls, cfg: JudgeRun) -> StageSpec:
        judge = cfg.judge
        if judge.backend == "local":
            local = StageSpec.for_backend(judge.local)  # type: ignore[arg-type]  # same resource fields
            return StageSpec(
                num_cpus=local.num_cpus, num_gpus=local.num_gpus, concurrency=judge.actors, batch_size=local.batch_size
            )
        # A batch holds 2 requests per row: 4 x concurrency rows keep every slot busy most of the batch. The
        # actors only wait on HTTP: they run on the driver's node, where the judge cache (a directory the
        # run directory holds, or judge.cache) is, so no judgement paid for is written to another node's disk.
        return StageSpec(num_cpus=0.25, num_gpus=0.0, concurrency=judge.actors, batch_size=4 * judge.concurrency,
                         on_driver_node=True)  # fmt: skip

    @classmethod
    def with_spec(cls, cfg: JudgeRun, spec: StageSpec) -> JudgeRun:
        if cfg.judge.backend != "local":
            return cfg
        local = with_resources(cfg.judge.local, spec)
        return dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, local=local))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        questions = [question_of(str(i), str(x)) for i, x in zip(batch[S.INSTRUCTION], batch[S.INPUT], strict=True)]
        rows = self.judge.judge_rows(questions, [str(o) for o in batch[S.OUTPUT]], [str(g) for g in batch[S.GENERATED]])
        out = dict(batch)
        out[S.JUDGE_VERDICT] = np.array([r.verdict for r in rows], dtype=object)
        out[S.JUDGE_SCORE_REF] = np.array([r.score_ref for r in rows], dtype=np.float32)
        out[S.JUDGE_SCORE_MODEL] = np.array([r.score_model for r in rows], dtype=np.float32)
        out[S.JUDGE_RAW] = np.array([r.raw for r in rows], dtype=object)
        out[S.JUDGE_CALLS] = np.array([r.calls for r in rows], dtype=np.int32)
        out[S.JUDGE_CACHED] = np.array([r.cached for r in rows], dtype=np.int32)
        out[S.JUDGE_PROMPT_TOKENS] = np.array([r.prompt_tokens for r in rows], dtype=np.int64)
        out[S.JUDGE_COMPLETION_TOKENS] = np.array([r.completion_tokens for r in rows], dtype=np.int64)
        out[S.JUDGE_COST] = np.array([r.cost for r in rows], dtype=np.float64)
        return out
