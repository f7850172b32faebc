"""IterSelectTune (Song, Liu, Zhu, Rao 2024, arXiv 2410.13464) on Ray Data and Ray Train.

No code was released; this follows the paper (sections 3-4) and shared/DESIGN.md section 8:
- Diversity subset V: the rows' `embed` vectors (instruction + input, all-MiniLM-L6-v2 by default) are
  clustered by K-Means (cluster.k, default 100) and V takes `subset_ratio` of the rows from every cluster
  in proportion to its size (choice: the paper does not give V's size; 1.0 = every row).
- Each round ranks V's rows not yet taken by score = alpha x P(hard) (classifier) + (1 - alpha) x sim,
  where sim = the mean cosine to the sim_k nearest rows of the hard set D^H (faiss; 0 while D^H is
  empty), and takes the top `batch` rows (ties: the earlier row). Before any classifier exists, P(hard)
  is left out; with D^H also empty the batch is drawn at random within clusters, in proportion to their
  sizes (choice, as DESIGN.md says).
- Training rounds (the first training_rounds): the base model (generate.model) answers the batch; the
  judge compares its answer with the reference in both orders; the row is hard when the reference wins
  (see raysel.judge). Hard rows join D^H; every row with a verdict joins the classifier's labelled set
  (label 1 = hard, 0 = the model won or tied); rows the judge could not read are reported, never labelled.
  The classifier is retrained from its backbone on all labels so far (Ray Train) and scores V's remaining
  rows once (a Ray Data stage); inference rounds reuse those scores, so only the similarity moves.
- Inference rounds: the batch joins D^H directly, the last one cut to fill the budget exactly.
- Stop when |D^H| reaches the budget (select.ratio x rows, default 20%, or select.k), when V has no rows
  left, or after max_rounds. D^H is the selection, in the order its rows joined.

Every step of every round is a resumable file under round_<r>/ (batch, generated, judged, classifier/,
classify); a rerun skips finished steps, and the judge's persistent cache means a killed judge step is
not paid for twice. When the judge budget (judge.budget_usd) would be passed, the run stops cleanly
(BudgetReached) and resumes from the cache once the budget is raised.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import ConfigError, RunConfig, identity
from raysel.io import LIGHT_CPUS, arrow_batches, iter_parquet, with_positions, write_parquet_stream
from raysel.judge.ledger import BudgetReached
from raysel.methods import method_spec
from raysel.methods.base import MethodBase, MethodResult, Rows
from raysel.run.context import RunContext
from raysel.run.steps import Steps
from raysel.select.topk import BELOW_CUTOFF, SELECTED, Selection

if TYPE_CHECKING:
    import ray.data

ROWS_SCHEMA = pa.schema([*S.CANONICAL_SCHEMA, (S.POSITION, pa.int64())])
SUBSET_SCHEMA = pa.schema([(S.POSITION, pa.int64()), (S.CLUSTER, pa.int32()), ("in_subset", pa.bool_())])
BATCH_SCHEMA = pa.schema(
    [(S.POSITION, pa.int64()), (S.SCORE_CLASSIFIER, pa.float32()), (S.SCORE_SIMILARITY, pa.float32()),
     (S.SCORE_IST, pa.float32())]
)  # fmt: skip
GENERATED_SCHEMA = pa.schema([*ROWS_SCHEMA, *S.GENERATION_FIELDS])
JUDGED_COLUMNS = [
    S.POSITION, S.ID, S.GEN_TOKENS, S.JUDGE_VERDICT, S.JUDGE_SCORE_REF, S.JUDGE_SCORE_MODEL, S.JUDGE_RAW,
    S.JUDGE_CALLS, S.JUDGE_CACHED, S.JUDGE_PROMPT_TOKENS, S.JUDGE_COMPLETION_TOKENS, S.JUDGE_COST,
]  # fmt: skip
CLASSIFY_SCHEMA = pa.schema([(S.POSITION, pa.int64()), (S.SCORE_CLASSIFIER, pa.float32())])
LABELLED = ("reference", "model", "tie")
"""Verdicts that give the classifier a label (reference = hard = 1)."""
ROUND = "ist_round"
"""In the final scores: the round a row was taken in (-1: never taken)."""
ENTERED = "ist_entered"
"""How a selected row joined the hard set: "judge" (training round) or "classifier" (inference round)."""
IN_SUBSET = "in_subset"
NOT_HARD, UNPARSED, NOT_IN_SUBSET = "judged_not_hard", "judge_unparsed", "not_in_subset"
"""Selection reasons besides selected / below_cutoff."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(Steps.stamp(obj).encode()).hexdigest()[:12]


def _at(batch: pa.Table, positions: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch[S.POSITION], value_set=positions))


def _rows_at(rows_path: Path, positions: np.ndarray) -> ray.data.Dataset:
    """The rows at `positions` (canonical columns + position), streamed from the run's copy of the corpus."""
    import ray.data

    ds = ray.data.read_parquet(str(rows_path), num_cpus=LIGHT_CPUS)
    return ds.map_batches(
        _at, fn_kwargs={"positions": pa.array(np.sort(positions))}, batch_format="pyarrow", num_cpus=LIGHT_CPUS
    )


def budget_rows(cfg: RunConfig, n: int) -> int:
    """|D^H| to reach: select.k, or floor(select.ratio x rows) (at least 1)."""
    if cfg.select.k is not None:
        return min(cfg.select.k, n)
    return max(1, math.floor(IterSelectTune.spec.ratio(cfg.select.ratio) * n))


def batch_rows(cfg: RunConfig, n: int) -> int:
    ist = cfg.iterselecttune
    return ist.batch if ist.batch is not None else max(1, round(ist.batch_ratio * n))


def cache_dir(cfg: RunConfig, out: Path) -> Path:
    return Path(cfg.judge.cache) if cfg.judge.cache else out / "judge_cache"


class IterSelectTune(MethodBase):
    spec = method_spec("iterselecttune")

    def resources(self, cfg: RunConfig) -> dict[str, Any]:
        from raysel.stages.base import stage_resources
        from raysel.stages.classify import ClassifyRun, ClassifyStage
        from raysel.stages.embed import EmbedStage
        from raysel.stages.generate import GenerateStage
        from raysel.stages.judge import JudgeRun, JudgeStage

        return {
            "embed": stage_resources(EmbedStage, cfg.embed),
            "generate": stage_resources(GenerateStage, cfg.generate),
            "classify": stage_resources(ClassifyStage, ClassifyRun(classifier=cfg.classifier, path="")),
            "judge": stage_resources(JudgeStage, JudgeRun(judge=cfg.judge, cache_dir="")),
        }

    def run(self, ctx: RunContext, cfg: RunConfig, rows: Rows, checked: None) -> MethodResult:
        return self.result(cfg, *run_iterselecttune(ctx, cfg, rows.dataset, rows.key))


METHOD = IterSelectTune()


def run_iterselecttune(
    ctx: RunContext, cfg: RunConfig, rows: Callable[[], ray.data.Dataset], key: dict[str, Any]
) -> tuple[Path, Selection, dict[str, Any]]:
    """All rounds (or what a rerun has left of them); `rows()` builds the dataset of rows and `key` identifies them.
    Returns every row with its IterSelectTune columns, the hard set as the selection, and the manifest's
    "iterselecttune" section."""
    from raysel.select.cluster import NearestSimilarity
    from raysel.vectors import embed_rows, read_vectors

    ist, out = cfg.iterselecttune, ctx.out
    base = ctx.steps()
    key = key | {"method": "iterselecttune"}
    rows_path = base.run(
        "ist_rows",
        key,
        lambda p: write_parquet_stream(with_positions(arrow_batches(rows()), S.CANONICAL_SCHEMA.names), p, ROWS_SCHEMA),
    )
    n = pq.ParquetFile(rows_path).metadata.num_rows
    if n == 0:
        raise ValueError("iterselecttune has no rows to select from: every row was rejected before it")

    def embed(path: Path) -> int:
        import ray.data

        return embed_rows(
            ray.data.read_parquet(str(rows_path), num_cpus=LIGHT_CPUS), cfg.embed, path, key, cfg.checkpoint_rows, base
        )

    key = key | {"embed": cfg.embed}
    vectors = read_vectors(base.run("ist_embed", key, embed))
    key = key | {"cluster": cfg.cluster, "seed": cfg.seed, "subset_ratio": ist.subset_ratio}
    subset = pq.read_table(base.run("ist_subset", key, lambda p: _subset(cfg, vectors, p)))
    labels = subset[S.CLUSTER].to_numpy()
    in_subset = subset[IN_SUBSET].to_numpy(zero_copy_only=False)
    budget, batch = budget_rows(cfg, n), batch_rows(cfg, n)
    if ist.training_rounds and batch < 1:
        raise ConfigError("iterselecttune.batch must be at least 1 row")

    decided = Decisions.start(n)  # what the rounds decide, rebuilt from the step files on a rerun
    p_hard = np.full(n, np.nan, dtype=np.float32)  # the latest classifier's P(hard)
    space = Space(labels=labels, vectors=vectors, sim=NearestSimilarity(vectors.shape[1], k=ist.sim_k))
    classifier: Path | None = None
    history = _digest(key)
    rounds: list[dict[str, Any]] = []
    stop = "budget reached"
    r = 0
    while len(decided.hard) < budget:
        if ist.max_rounds is not None and r >= ist.max_rounds:
            stop = f"max_rounds ({ist.max_rounds}) reached"
            break
        candidates = np.flatnonzero(in_subset & (decided.taken_round < 0))
        if not len(candidates):
            stop = "diversity subset exhausted before the budget"
            break
        training = r < ist.training_rounds
        size = min(batch if training else min(batch, budget - len(decided.hard)), len(candidates))
        steps = ctx.steps(f"round_{r}")
        rkey = {"history": history, "round": r, "ist": ist, "training": training, "size": size}
        record: dict[str, Any] = {"round": r, "kind": "training" if training else "inference",
                                  "candidates": len(candidates)}  # fmt: skip
        if classifier is not None and not np.isfinite(p_hard[candidates]).all():
            ckey = rkey | {"classifier": _digest(json.loads((classifier / "classifier.json").read_text()))}
            path = steps.run("classify", ckey, lambda p, c=candidates, m=classifier: _classify(cfg, rows_path, c, m, p))
            t = pq.read_table(path)
            p_hard[t[S.POSITION].to_numpy()] = t[S.SCORE_CLASSIFIER].to_numpy(zero_copy_only=False)
        model = p_hard if classifier is not None else None
        draw = Draw(round=r, candidates=candidates, size=size)
        take = pq.read_table(steps.run("batch", rkey, lambda p, d=draw, m=model: _choose(cfg, d, space, m, p)))
        positions = decided.took(take, r)
        record["batch"] = len(positions)
        if training:
            gkey = rkey | {"generate": identity(cfg.generate)}
            generated = steps.run("generate", gkey, lambda p, pos=positions: _generate(cfg, rows_path, pos, p))
            jkey = gkey | {"judge": identity(cfg.judge)}
            judged = pq.read_table(steps.run("judge", jkey, lambda p, g=generated: _judge(cfg, out, g, p)))
            new_hard = decided.judged(judged)
            record["generated_tokens"] = int(judged[S.GEN_TOKENS].to_numpy().sum())
            record["judge"] = _judge_counts(judged)
            if decided.labelled:
                labelled = list(decided.labelled)
                lkey = rkey | {"labels": _digest(labelled), "classifier": cfg.classifier}
                classifier = steps.run(
                    "classifier", lkey, lambda p, lab=labelled, k=lkey: _train(ctx, cfg, rows_path, lab, k, p),
                    suffix="",
                )  # fmt: skip
                record["classifier"] = json.loads((classifier / "classifier.json").read_text())
                p_hard[:] = np.nan  # the new classifier scores the remaining rows next round
        else:
            new_hard = decided.joined(positions)
        space.sim.add(vectors[new_hard])
        record |= {"hard_added": len(new_hard), "hard_total": len(decided.hard)}
        rounds.append(record)
        history = _digest({"prev": history, "batch": positions.tolist(), "hard": new_hard.tolist()})
        taken = f"took {len(positions)} of {len(candidates)} candidates"
        print(f"[raysel] iterselecttune round {r} ({record['kind']}): {taken}, {len(new_hard)} joined the hard set "
              f"({len(decided.hard)}/{budget})", flush=True)  # fmt: skip
        r += 1

    columns = {S.CLUSTER: pa.array(labels, pa.int32()), IN_SUBSET: pa.array(in_subset), **decided.columns()}
    scored = base.run("ist_scores", {"history": history, "key": key}, lambda p: _final(rows_path, p, columns))
    hard, entered = decided.hard, decided.entered
    selection = _selection(n, hard, in_subset, decided.taken_round, decided.verdict)
    section = _section(cfg, n, int(in_subset.sum()), budget, batch, rounds, hard, entered, stop, classifier)
    labels = sum(v for r in rounds for k, v in r.get("judge", {}).get("verdicts", {}).items() if k in LABELLED)
    if ist.training_rounds and not labels:
        section["warning"] = (
            "the judge gave no readable verdict in any training round: no classifier was trained, and the "
            "selection rests on diversity and similarity alone (see judge_raw in round_*/judge.parquet; use a "
            "stronger judge)"
        )
        print(f"[raysel] warning: {section['warning']}", flush=True)
    if cfg.judge.backend == "openai":  # what the cache records as paid, killed attempts included
        section["judge"]["cache_spent_usd"] = round(judge_spent(cfg, out), 6)
    return scored, selection, section


def _subset(cfg: RunConfig, vectors: np.ndarray, path: Path) -> int:
    """K-Means over the rows' vectors, then V: subset_ratio of the rows, proportional per cluster."""
    from raysel.select.cluster import assign, kmeans_fit, sample_proportional

    n = len(vectors)
    c = cfg.cluster
    centroids = kmeans_fit(vectors, min(c.k, n), seed=cfg.seed, niter=c.niter, train_sample=c.train_sample)
    labels, _ = assign(vectors, centroids)
    ratio = cfg.iterselecttune.subset_ratio
    keep = np.zeros(n, dtype=bool)
    keep[np.arange(n) if ratio >= 1 else sample_proportional(labels, math.ceil(ratio * n), seed=cfg.seed)] = True
    table = pa.table([pa.array(np.arange(n, dtype=np.int64)), pa.array(labels, pa.int32()), pa.array(keep)],
                     schema=SUBSET_SCHEMA)  # fmt: skip
    pq.write_table(table, path)
    return n


@dataclass
class Decisions:
    """What the rounds decided for each of the n rows (rebuilt from the step files on a rerun)."""

    taken_round: np.ndarray
    """The round a row was taken in (-1: never taken)."""
    entered: np.ndarray
    """How a row joined the hard set: "judge", "classifier", or "" (it did not)."""
    verdict: np.ndarray
    score_ref: np.ndarray
    score_model: np.ndarray
    gen_tokens: np.ndarray
    at_take: dict[str, np.ndarray]
    """The classifier, similarity and combined scores a row had when it was taken."""
    hard: list[int] = field(default_factory=list)
    """D^H, in the order its rows joined (the selection)."""
    labelled: list[tuple[int, int]] = field(default_factory=list)
    """(position, 1 = hard / 0 = not) of every row the judge gave a verdict: the classifier's training set."""

    @classmethod
    def start(cls, n: int) -> Decisions:
        return cls(
            taken_round=np.full(n, -1, dtype=np.int32),
            entered=np.full(n, "", dtype=object),
            verdict=np.full(n, "", dtype=object),
            score_ref=np.full(n, np.nan, dtype=np.float32),
            score_model=np.full(n, np.nan, dtype=np.float32),
            gen_tokens=np.full(n, -1, dtype=np.int32),
            at_take={c: np.full(n, np.nan, dtype=np.float32) for c in (S.SCORE_CLASSIFIER, S.SCORE_SIMILARITY,
                                                                       S.SCORE_IST)},
        )  # fmt: skip

    def took(self, take: pa.Table, r: int) -> np.ndarray:
        """Record round r's batch (BATCH_SCHEMA); returns its positions."""
        positions = take[S.POSITION].to_numpy()
        for c in self.at_take:
            self.at_take[c][positions] = take[c].to_numpy(zero_copy_only=False)
        self.taken_round[positions] = r
        return positions

    def judged(self, judged: pa.Table) -> np.ndarray:
        """Record a training round's verdicts; the rows the reference won join the hard set (returned, sorted)."""
        pos = judged[S.POSITION].to_numpy()
        v = np.array(judged[S.JUDGE_VERDICT].to_pylist(), dtype=object)
        self.verdict[pos] = v
        self.score_ref[pos] = judged[S.JUDGE_SCORE_REF].to_numpy(zero_copy_only=False)
        self.score_model[pos] = judged[S.JUDGE_SCORE_MODEL].to_numpy(zero_copy_only=False)
        self.gen_tokens[pos] = judged[S.GEN_TOKENS].to_numpy(zero_copy_only=False)
        self.labelled += [(int(p), int(x == "reference")) for p, x in zip(pos, v, strict=True) if x in LABELLED]
        return self.join(np.sort(pos[v == "reference"]), "judge")

    def joined(self, positions: np.ndarray) -> np.ndarray:
        """An inference round: its whole batch joins the hard set (returned, sorted)."""
        return self.join(np.sort(positions), "classifier")

    def join(self, rows: np.ndarray, how: str) -> np.ndarray:
        self.entered[rows] = how
        self.hard += rows.tolist()
        return rows

    def columns(self) -> dict[str, pa.Array]:
        """The method's columns of the final scores (ROUND, ENTERED, the scores at take, the judge's)."""
        return {
            ROUND: pa.array(self.taken_round), ENTERED: pa.array(self.entered.tolist(), pa.string()),
            **{c: pa.array(v) for c, v in self.at_take.items()},
            S.JUDGE_VERDICT: pa.array(self.verdict.tolist(), pa.string()), S.JUDGE_SCORE_REF: pa.array(self.score_ref),
            S.JUDGE_SCORE_MODEL: pa.array(self.score_model), S.GEN_TOKENS: pa.array(self.gen_tokens),
        }  # fmt: skip


@dataclass
class Space:
    """The rows as vectors: their clusters, their vectors, and the similarity index of the hard set so far."""

    labels: np.ndarray
    vectors: np.ndarray
    sim: Any
    """raysel.select.cluster.NearestSimilarity over D^H's vectors."""


@dataclass(frozen=True)
class Draw:
    """One round's draw: `size` rows out of `candidates` (V's rows not yet taken)."""

    round: int
    candidates: np.ndarray
    size: int


def _choose(cfg: RunConfig, draw: Draw, space: Space, p_hard: np.ndarray | None, path: Path) -> int:
    """The round's batch: the top `size` candidates by alpha x P(hard) + (1 - alpha) x similarity (P(hard) left
    out while no classifier exists, `p_hard` None)."""
    from raysel.select.cluster import sample_proportional

    alpha, candidates, size = cfg.iterselecttune.alpha, draw.candidates, draw.size
    similarity = space.sim.score(space.vectors[candidates])
    have_classifier = p_hard is not None
    model = p_hard[candidates] if have_classifier else np.full(len(candidates), np.nan, dtype=np.float32)
    if have_classifier:
        score = (alpha * model.astype(np.float64) + (1 - alpha) * similarity).astype(np.float32)
    else:
        score = similarity
    if not have_classifier and len(space.sim) == 0:  # nothing to rank by yet: random within clusters
        chosen = sample_proportional(space.labels[candidates], size, seed=cfg.seed + draw.round)
        score = np.full(len(candidates), np.nan, dtype=np.float32)
    else:
        chosen = np.lexsort((candidates, -score))[:size]  # highest score first, ties to the earlier row
    table = pa.table(
        [pa.array(candidates[chosen]), pa.array(model[chosen]), pa.array(similarity[chosen]), pa.array(score[chosen])],
        schema=BATCH_SCHEMA,
    )
    pq.write_table(table, path)
    return table.num_rows


def _classify(cfg: RunConfig, rows_path: Path, candidates: np.ndarray, model: Path, path: Path) -> int:
    from raysel.stages.base import apply
    from raysel.stages.classify import ClassifyRun, ClassifyStage

    ds = apply(_rows_at(rows_path, candidates), ClassifyStage, ClassifyRun(classifier=cfg.classifier, path=str(model)))
    tables = (t.select(CLASSIFY_SCHEMA.names).cast(CLASSIFY_SCHEMA) for t in arrow_batches(ds))
    return write_parquet_stream(tables, path, CLASSIFY_SCHEMA)


def _generate(cfg: RunConfig, rows_path: Path, positions: np.ndarray, path: Path) -> int:
    from raysel.stages.base import apply
    from raysel.stages.generate import GenerateStage

    ds = apply(_rows_at(rows_path, positions), GenerateStage, cfg.generate)
    tables = (t.select(GENERATED_SCHEMA.names).cast(GENERATED_SCHEMA) for t in arrow_batches(ds))
    return write_parquet_stream(tables, path, GENERATED_SCHEMA)


def judge_spent(cfg: RunConfig, out: Path) -> float:
    """USD spent so far by calls recorded in the judge cache (killed attempts included)."""
    from raysel.judge import cache_spend

    return cache_spend(cache_dir(cfg, out))


def _judge(cfg: RunConfig, out: Path, generated: Path, path: Path) -> int:
    """Judge the round's answers; raises BudgetReached (the step stays unfinished) when the budget ran out."""
    import ray.data

    from raysel.stages.base import apply
    from raysel.stages.judge import JudgeRun, JudgeStage

    left = None
    if cfg.judge.budget_usd is not None:
        left = max(0.0, cfg.judge.budget_usd - judge_spent(cfg, out))
    run = JudgeRun(judge=cfg.judge, cache_dir=str(cache_dir(cfg, out)), budget_usd=left)
    ds = apply(ray.data.read_parquet(str(generated), num_cpus=LIGHT_CPUS), JudgeStage, run)
    rows = write_parquet_stream((t.select(JUDGED_COLUMNS) for t in arrow_batches(ds)), path)
    verdicts = pq.read_table(path, columns=[S.JUDGE_VERDICT])[S.JUDGE_VERDICT].to_pylist()
    unjudged = sum(v == "budget" for v in verdicts)
    if unjudged:
        raise BudgetReached(
            f"the judge budget (judge.budget_usd = {cfg.judge.budget_usd} USD, {judge_spent(cfg, out):.4f} spent) "
            f"ran out with {unjudged} of {len(verdicts)} rows of {path.parent.name} not judged. Every judgement "
            "made is cached: rerun the same command with --resume and a higher --judge.budget_usd to go on"
        )
    return rows


def _judge_counts(judged: pa.Table) -> dict[str, Any]:
    verdicts: dict[str, int] = {}
    for v in judged[S.JUDGE_VERDICT].to_pylist():
        verdicts[v] = verdicts.get(v, 0) + 1

    def total(c: str) -> Any:
        return pc.sum(judged[c]).as_py() or 0

    return {
        "verdicts": verdicts,
        "calls": total(S.JUDGE_CALLS),
        "cached": total(S.JUDGE_CACHED),
        "prompt_tokens": total(S.JUDGE_PROMPT_TOKENS),
        "completion_tokens": total(S.JUDGE_COMPLETION_TOKENS),
        "cost_usd": round(float(total(S.JUDGE_COST)), 6),
    }


def _train(
    ctx: RunContext, cfg: RunConfig, rows_path: Path, labelled: list[tuple[int, int]], key: dict, path: Path
) -> int:
    """Retrain the classifier from its backbone on every label so far (Ray Train)."""
    from raysel.train.classifier import classifier_text, train_classifier

    positions = np.array([p for p, _ in labelled], dtype=np.int64)
    table = pq.read_table(rows_path, columns=[S.INSTRUCTION, S.INPUT]).take(pa.array(positions))
    texts = [classifier_text(i, x) for i, x in zip(table[S.INSTRUCTION].to_pylist(), table[S.INPUT].to_pylist(),
                                                    strict=True)]  # fmt: skip
    storage = ctx.storage_uri(ctx.out / "train")
    train_classifier(cfg.classifier, texts, [y for _, y in labelled], output_dir=path, storage_path=storage,
                     name=f"classifier-{path.parent.name}-{_digest(key)}", seed=cfg.seed)  # fmt: skip
    return len(texts)


def _final(rows_path: Path, path: Path, columns: dict[str, pa.Array]) -> int:
    """The run's rows with the method's columns, batch by batch (the corpus text never sits in memory whole)."""

    def tables() -> Iterator[pa.Table]:
        offset = 0
        for t in iter_parquet(rows_path, batch_size=65536):
            for name, values in columns.items():
                t = t.append_column(name, values.slice(offset, t.num_rows))
            offset += t.num_rows
            yield t

    return write_parquet_stream(tables(), path)


def _selection(
    n: int, hard: list[int], in_subset: np.ndarray, taken_round: np.ndarray, verdict: np.ndarray
) -> Selection:
    selected = np.zeros(n, dtype=bool)
    selected[hard] = True
    rank = np.zeros(n, dtype=np.int64)
    rank[hard] = np.arange(1, len(hard) + 1)
    reason = np.full(n, BELOW_CUTOFF, dtype=object)
    reason[~in_subset] = NOT_IN_SUBSET
    reason[(taken_round >= 0) & np.isin(verdict, ["model", "tie"])] = NOT_HARD
    reason[(taken_round >= 0) & (verdict == "unparsed")] = UNPARSED
    reason[selected] = SELECTED
    return Selection(selected=selected, reason=reason, rank=rank, passed=int(in_subset.sum()))


def _section(cfg, n, subset, budget, batch, rounds, hard, entered, stop, classifier) -> dict[str, Any]:
    judged = [r["judge"] for r in rounds if "judge" in r]
    calls = sum(j["calls"] for j in judged)
    made = calls + sum(j["cached"] for j in judged)
    by_judge = int((entered == "judge").sum())
    return {
        "rows": n,
        "subset": subset,
        "budget": budget,
        "batch": batch,
        "alpha": cfg.iterselecttune.alpha,
        "training_rounds": cfg.iterselecttune.training_rounds,
        "rounds": rounds,
        "stop": stop,
        "selected": len(hard),
        "rows_by_judge": by_judge,
        "rows_by_classifier": int((entered == "classifier").sum()),
        "judge": {
            "backend": cfg.judge.backend,
            "model": {"openai": cfg.judge.model, "local": cfg.judge.local.model}.get(cfg.judge.backend, "fake"),
            "calls": calls,
            "judgements": made,
            "cost_usd": round(sum(j["cost_usd"] for j in judged), 6),
            "prompt_tokens": sum(j["prompt_tokens"] for j in judged),
            "completion_tokens": sum(j["completion_tokens"] for j in judged),
            # The method's saving: it judges a few batches, not every candidate (2 orders per row).
            "judgements_per_selected_row": round(made / len(hard), 4) if hard else None,
            "judgements_if_every_candidate": 2 * subset,
        },
        "classifier": str(classifier) if classifier else None,
    }
