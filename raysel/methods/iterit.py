"""IterIT (Jia et al. 2024, arXiv 2412.17365), as the authors' code runs it (JiaQiSJTU/IterIT,
src/iterative_trainer.py `data_selection`, src/data_utils.py `update`), on Ray Data and Ray Train.

Each epoch e: score IFD in its perplexity form (score_ifd_ppl) with the model as it is now: every row at
epoch 0 (the base model), then the first k x update_ratio rows of the current ranking (the model after
epoch e-1's training); rank that window (raysel.select.greedy.iterit_ranking: greedy IFD x TF-IDF picks,
then rows with IFD >= 1, then the other candidates by IFD); train one epoch on the k picks, continuing
the previous epoch's weights, optimizer and one LR schedule across all epochs. The last epoch's picks are
the selection. Every step is resumable: round_<e>/score.parquet, ranking.parquet and model/ (+ .done.json).

Departures from the released code, each on purpose: rows that cannot be scored (NaN) are rejected with
their reason instead of vanishing; scores stay float32 (the code rounds them to bfloat16, which makes
ties); the greedy loop stops when no candidate scores above 0 (the code then re-picks row 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import ConfigError, RunConfig, ScoreConfig, identity
from raysel.io import LIGHT_CPUS, arrow_batches, with_positions, write_parquet_stream
from raysel.methods import method_spec
from raysel.methods.base import MethodBase, MethodResult, Rows
from raysel.run.context import RunContext
from raysel.run.steps import Steps, without
from raysel.select.topk import BELOW_CUTOFF, IFD_ABOVE_1, SELECTED, UNSCORED, Selection

if TYPE_CHECKING:
    import ray.data

ALL_SCHEMA = pa.schema([*S.SCORED_SCHEMA, (S.POSITION, pa.int64())])
"""Epoch 0's score step: every row to score, its scores, and its position."""
SCORE_COLUMNS = (S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD, S.PPL_COND, S.PPL_DIRECT, S.SCORE_IFD_PPL)
RESCORE_SCHEMA = pa.schema(
    [(S.POSITION, pa.int64()), *((c, pa.float32()) for c in SCORE_COLUMNS), (S.N_ANSWER_TOKENS, pa.int32()),
     (S.PROMPT_TOKENS, pa.int32()), (S.REJECT_REASON, pa.string())]
)  # fmt: skip
"""A later epoch's score step: the re-scored window's positions and new scores."""
PICK = "pick"
"""1-based pick order in an epoch's ranking (0: not picked)."""
RANKING_SCHEMA = pa.schema([(S.POSITION, pa.int64()), (S.SCORE_IFD_PPL, pa.float32()), (PICK, pa.int32())])
SCORED_EPOCH = "scored_epoch"
"""In the final scores: the epoch whose model gave the row its scores."""


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(Steps.stamp(key).encode()).hexdigest()[:12]


def _in_window(batch: pa.Table, positions: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch[S.POSITION], value_set=positions))


def eos_token(cfg: ScoreConfig) -> str:
    """The scoring model's EOS text, appended to each response before TF-IDF (as the authors' code does)."""
    if cfg.backend == "fake":
        return ""
    from transformers import AutoTokenizer

    from raysel.backends.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(cfg.model)).eos_token or ""


def picks_per_epoch(cfg: RunConfig, n: int) -> int:
    """k = select.k, or floor(select.ratio x rows scored) as the authors' code counts it."""
    k = cfg.select.k if cfg.select.k is not None else math.floor(n * IterIt.spec.ratio(cfg.select.ratio))
    if k <= 0:
        raise ConfigError(
            f"iterit picks k = floor({cfg.select.ratio} x {n} rows) = 0 rows per epoch: raise select.ratio "
            "(--ratio) or set select.k (--k)"
        )
    return min(k, n)


class IterIt(MethodBase):
    spec = method_spec("iterit")

    def resources(self, cfg: RunConfig) -> dict[str, Any]:
        from raysel.methods.ifd import score_resources

        return {"score": score_resources(cfg.score)}

    def run(self, ctx: RunContext, cfg: RunConfig, rows: Rows, checked: None) -> MethodResult:
        return self.result(cfg, *run_iterit(ctx, cfg, rows.dataset, rows.key))


METHOD = IterIt()


def run_iterit(
    ctx: RunContext, cfg: RunConfig, rows: Callable[[], ray.data.Dataset], key: dict[str, Any]
) -> tuple[Path, Selection, dict[str, Any]]:
    """All epochs (or what a rerun has left of them); `rows()` builds the dataset of rows to score and
    `key` identifies them. Returns every row with its latest scores (ALL_SCHEMA + scored_epoch), the last
    epoch's picks (rank = place in the final ranking) and the manifest's "iterit" section."""
    from raysel.select.greedy import iterit_ranking
    from raysel.stages.base import apply
    from raysel.stages.score import IfdScoreStage

    it, score_cfg = cfg.iterit, cfg.score
    key = key | {"method": "iterit", "score": identity(score_cfg)}
    first = ctx.steps("round_0")

    def score_all(path: Path) -> int:
        def tables(done, offset: int):
            scored = apply(without(rows(), done), IfdScoreStage, score_cfg)
            return with_positions(arrow_batches(scored), S.SCORED_SCHEMA.names, start=offset)

        return first.stream(path, key, tables, ALL_SCHEMA, part_rows=cfg.checkpoint_rows)

    every = first.run("score", key, score_all)
    base = pq.read_table(every, columns=[S.SCORE_IFD_PPL])
    n = base.num_rows
    if n == 0:
        raise ValueError("iterit has no rows to select from: every row was rejected before scoring")
    k = picks_per_epoch(cfg, n)
    scores = base[S.SCORE_IFD_PPL].to_numpy(zero_copy_only=False).astype(np.float32)
    steps_per_epoch = _train_steps(cfg, k)
    eos = eos_token(score_cfg)
    order = np.arange(n, dtype=np.int64)  # epoch 0 ranks every row, in input order
    picks = np.zeros(0, dtype=np.int64)
    checkpoint, model, epochs = None, None, []
    rescored_files: list[tuple[int, Path]] = []
    for e in range(it.epochs):
        steps = ctx.steps(f"round_{e}")
        record: dict[str, Any] = {"epoch": e}
        if e > 0 and it.strategy == "baseline":
            record["rescored"] = 0  # the selection of epoch 0 trains every epoch
        else:
            count = len(order) if e == 0 or it.update_ratio <= 1 else min(len(order), int(k * it.update_ratio))
            window = order[:count]
            if e > 0:
                rescore_cfg = dataclasses.replace(score_cfg, model=ctx.storage_uri(model))
                path = steps.run("score", key, lambda p, w=window, c=rescore_cfg: _rescore(every, w, c, p))
                rescored_files.append((e, path))
                t = pq.read_table(path, columns=[S.POSITION, S.SCORE_IFD_PPL])
                scores[t[S.POSITION].to_numpy()] = t[S.SCORE_IFD_PPL].to_numpy(zero_copy_only=False)
            key = key | {"epoch": e, "window": count, "k": k, "iterit": it, "eos": eos}

            def rank(path: Path, w: np.ndarray = window, count: int = count, before: np.ndarray = order) -> int:
                texts = pq.read_table(every, columns=[S.OUTPUT])[S.OUTPUT].take(pa.array(w)).to_pylist()
                new, chosen = iterit_ranking(
                    scores[w], [t + eos for t in texts], k, decay=it.decay, diversity=it.diversity
                )
                ranked = np.concatenate([w[new], before[count:]])
                pick = np.zeros(len(ranked), dtype=np.int32)
                pick[: len(chosen)] = np.arange(1, len(chosen) + 1)
                table = pa.table([pa.array(ranked), pa.array(scores[ranked]), pa.array(pick)], schema=RANKING_SCHEMA)
                pq.write_table(table, path)
                return table.num_rows

            ranking = pq.read_table(steps.run("ranking", key, rank))
            order = ranking[S.POSITION].to_numpy()
            chosen = ranking[PICK].to_numpy()
            picks = order[: int((chosen > 0).sum())]
            record |= {"rescored": count, **_window_counts(scores[window])}
        record["picked"] = len(picks)
        if not len(picks):
            raise ValueError(
                f"iterit epoch {e}: no row has an IFD below 1 and a non-empty response, so nothing can be picked "
                "to train on (see scores.parquet of round_0)"
            )
        if epochs:
            record["kept_from_previous_epoch"] = int(np.isin(picks, epochs[-1]["_picks"]).sum())
        key = key | {"epoch": e, "train": cfg.train, "epochs": it.epochs, "picks": _digest({"p": picks.tolist()})}
        model = steps.run(
            "model", key,
            lambda p, pk=picks, ck=checkpoint, ep=e: _train(ctx, cfg, every, pk, ck, ep, steps_per_epoch, p),
            suffix="",
        )  # fmt: skip
        summary = json.loads((model / "train_summary.json").read_text())
        checkpoint = summary["checkpoint"]
        record["train"] = {k_: summary[k_] for k_ in ("rows", "skipped_rows", "loss", "step", "lr") if k_ in summary}
        epochs.append(record | {"_picks": picks})
        print(f"[raysel] iterit epoch {e}: {record}", flush=True)
    final = ctx.steps().run("iterit_scores", key, lambda p: _final_scores(every, rescored_files, p))
    selection = _selection(n, order, picks, scores)
    section = {
        "k": k,
        "rows": n,
        "epochs": [{k_: v for k_, v in r.items() if k_ != "_picks"} for r in epochs],
        "model": str(model),
        "train_steps_per_epoch": steps_per_epoch,
        "strategy": it.strategy,
        "update_ratio": it.update_ratio,
    }
    return final, selection, section


def _window_counts(window_scores: np.ndarray) -> dict[str, int]:
    finite = np.isfinite(window_scores)
    return {
        "unscorable": int((~finite).sum()),
        "candidates": int((finite & (window_scores < 1)).sum()),
        "ifd_at_least_1": int((finite & (window_scores >= 1)).sum()),
    }


def _rescore(every: Path, window: np.ndarray, cfg: ScoreConfig, path: Path) -> int:
    """Scores of the window's rows with `cfg.model` (the model being trained), in an actor pool."""
    import ray.data

    from raysel.stages.base import apply
    from raysel.stages.score import IfdScoreStage

    ds = ray.data.read_parquet(str(every), columns=[S.POSITION, S.INSTRUCTION, S.INPUT, S.OUTPUT], num_cpus=LIGHT_CPUS)
    ds = ds.map_batches(
        _in_window, fn_kwargs={"positions": pa.array(np.sort(window))}, batch_format="pyarrow", num_cpus=LIGHT_CPUS
    )
    tables = (t.select(RESCORE_SCHEMA.names).cast(RESCORE_SCHEMA) for t in arrow_batches(apply(ds, IfdScoreStage, cfg)))
    return write_parquet_stream(tables, path, RESCORE_SCHEMA)


def _train_steps(cfg: RunConfig, k: int) -> int:
    from raysel.train.sft import steps_per_epoch

    t = cfg.train
    return t.max_steps or t.epochs * steps_per_epoch(k, t.num_workers, t.batch_size)


def _train(
    ctx: RunContext,
    cfg: RunConfig,
    every: Path,
    picks: np.ndarray,
    checkpoint: str | None,
    epoch: int,
    per_epoch: int,
    path: Path,
) -> int:
    """One epoch of SFT on the picks, continuing the previous epoch's run (one LR schedule over all epochs)."""
    from raysel.train.finetune import finetune

    columns = [S.ID, S.INSTRUCTION, S.INPUT, S.OUTPUT, S.SOURCE]
    rows = pq.read_table(every, columns=columns).take(pa.array(picks))
    name = f"iterit-epoch{epoch}-{_digest({'checkpoint': checkpoint, 'picks': picks.tolist(), 'cfg': cfg.train})}"
    finetune(
        cfg.train, model=cfg.score.model, rows=rows, template=cfg.score.template, output_dir=path,
        storage_path=ctx.storage_uri(path.parent.parent / "train"), name=name, seed=cfg.seed, resume_from=checkpoint,
        schedule_steps=cfg.iterit.epochs * per_epoch,
    )  # fmt: skip
    return rows.num_rows


def _final_scores(every: Path, rescored: list[tuple[int, Path]], path: Path) -> int:
    """Epoch 0's rows with each row's latest scores, the epoch that gave them, and why it is unscorable."""
    table = pq.read_table(every)
    n = table.num_rows
    cols = {c: table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in SCORE_COLUMNS}
    ints = {c: table[c].to_numpy(zero_copy_only=False).astype(np.int32) for c in (S.N_ANSWER_TOKENS, S.PROMPT_TOKENS)}
    reasons = np.array(table[S.REJECT_REASON].to_pylist(), dtype=object)
    epoch_of = np.zeros(n, dtype=np.int32)
    for e, file in rescored:
        t = pq.read_table(file)
        pos = t[S.POSITION].to_numpy()
        for c in SCORE_COLUMNS:
            cols[c][pos] = t[c].to_numpy(zero_copy_only=False)
        for c in ints:
            ints[c][pos] = t[c].to_numpy(zero_copy_only=False)
        why = np.array(t[S.REJECT_REASON].to_pylist(), dtype=object)
        reasons[pos] = [f"epoch {e}: {r}" if r else "" for r in why]
        epoch_of[pos] = e
    for c, v in (cols | ints).items():
        table = table.set_column(table.schema.get_field_index(c), c, pa.array(v))
    at = table.schema.get_field_index(S.REJECT_REASON)
    table = table.set_column(at, S.REJECT_REASON, pa.array(reasons.tolist(), pa.string()))
    table = table.append_column(SCORED_EPOCH, pa.array(epoch_of))
    pq.write_table(table, path)
    return n


def _selection(n: int, order: np.ndarray, picks: np.ndarray, scores: np.ndarray) -> Selection:
    selected = np.zeros(n, dtype=bool)
    selected[picks] = True
    rank = np.zeros(n, dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    finite = np.isfinite(scores)
    reason = np.full(n, BELOW_CUTOFF, dtype=object)
    reason[~finite] = UNSCORED
    reason[finite & (scores >= 1)] = IFD_ABOVE_1
    reason[selected] = SELECTED
    return Selection(selected=selected, reason=reason, rank=rank, passed=int((finite & (scores < 1)).sum()))
