"""IFD / Cherry (Li et al., NAACL 2024), as the authors' code runs it: [pre-experience ->] score every row's
IFD in an actor pool -> keep the top select.ratio of the rows with IFD <= 1 (raysel.select.topk, applied by
raysel.outputs when the run writes its files).

The arithmetic is raysel.ifd; the scoring actors are raysel.stages.score; the pre-experienced scorer is
raysel.methods.pre_experience; the manifest's "scorer" section (and the agreement run that lets a small
scorer stand in for the trained model) is raysel.agree.lineage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa

from raysel import schema as S
from raysel.agree.lineage import read_agreement, scorer_section
from raysel.config import RunConfig, ScoreConfig, identity
from raysel.io import arrow_batches, write_parquet_stream
from raysel.methods import method_spec
from raysel.methods.base import MethodBase, MethodResult, Rows
from raysel.methods.pre_experience import embed_config, pre_experience
from raysel.run.context import RunContext
from raysel.run.steps import without


def score_resources(score: ScoreConfig) -> dict[str, Any]:
    """The scoring pool as resolved from the cluster (stages.base.resolve), as the manifest records it."""
    from raysel.stages.base import stage_resources
    from raysel.stages.score import IfdScoreStage

    return {**stage_resources(IfdScoreStage, score), "packing": score.packing}


class Ifd(MethodBase):
    spec = method_spec("ifd")

    def check(self, cfg: RunConfig) -> dict[str, Any] | None:
        """select.agreement's agreement.json, or one found in the run's lineage (None: no agreement run)."""
        return read_agreement(cfg)

    def resources(self, cfg: RunConfig) -> dict[str, Any]:
        pools = {"score": score_resources(cfg.score)}
        if cfg.pre_experience.enabled:
            from raysel.stages.base import stage_resources
            from raysel.stages.embed import EmbedStage

            pools["pre_embed"] = stage_resources(EmbedStage, embed_config(cfg))
        return pools

    def run(self, ctx: RunContext, cfg: RunConfig, rows: Rows, checked: dict[str, Any] | None) -> MethodResult:
        from raysel.stages.base import StageClock, apply
        from raysel.stages.score import IfdScoreStage

        steps = ctx.steps()
        score_cfg, sections = cfg.score, {"scorer": scorer_section(cfg, checked)}
        if cfg.pre_experience.enabled and rows.count:
            model, sections["pre_experience"] = pre_experience(ctx, cfg, steps, rows.dataset, rows.key)
            # The run directory's twin in a remote store when there is one: scoring actors on other nodes load it.
            score_cfg = dataclasses.replace(cfg.score, model=ctx.storage_uri(model))
        sections["resources"] = self.resources(cfg)
        pre_key = sections.get("pre_experience", {}).get("key")
        score_key = rows.key | {"score": identity(score_cfg), "pre": pre_key}
        clock = StageClock()

        def score(path: Path) -> int:
            if not rows.count:  # nothing to score: no model start
                return write_parquet_stream([], path, S.IFD_SCORES_SCHEMA)

            def tables(done: pa.Array | None, offset: int):
                # The workers drop the text: only ids and scores reach the driver (outputs.write_texts reads
                # back the few rows whose text the outputs quote).
                ds = apply(without(rows.dataset(), done), IfdScoreStage, score_cfg, S.IFD_SCORES_SCHEMA.names, clock)
                return clock.strip(arrow_batches(ds))

            return steps.stream(path, score_key, tables, S.IFD_SCORES_SCHEMA, part_rows=cfg.checkpoint_rows)

        scored = steps.run("score", score_key, score)
        if isinstance(ctx.timings.get("score"), float) and (parts := clock.breakdown(ctx.timings["score"])):
            ctx.timings["score_parts"] = parts
        return MethodResult(scored=scored, selection=None, sections=sections)


METHOD = Ifd()
