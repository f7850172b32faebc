"""`raysel eval`: one fine-tuned model per training set, the same recipe; answers to the test sets; both
judging orders of every comparison; the winning score and the held-out loss.

Steps (each a resumable file under <output>/steps/, redone only when its inputs change):
1. set_<name>: the training set read and parsed (bad rows counted by reason, or the first one stops the
   run with data.strict).
2. The held-out split: heldout_rows rows drawn (seeded) from the baseline set; their content ids leave every
   training set, so no model trains on them. "random:NAME" sets are a seeded sample of the baseline's
   remaining rows as large as set NAME's training rows.
3. models/<name>: raysel.train.finetune (Ray Train) of base_model on the set, the same TrainConfig and seed
   for every set (a plain HF directory with train_summary.json).
4. heldout_<name>: the model's answer-token loss on the held-out rows (the IFD scorer's conditioned loss,
   token-weighted: the SFT loss on unseen rows).
5. answers_<name>: the model answers every test prompt (the generation stage, the training template).
6. judge_<A>_vs_<B>: the judge stage compares A's and B's answers in both orders (A in the "reference"
   slot) and raysel.evaluate.winning turns the combined verdicts into win / tie / lose for A.
results.json, results.md and report.html are written last (their presence means the eval finished).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import EvalConfig, ScoreConfig, dump_yaml, identity
from raysel.evaluate.testsets import Prompt, read_testsets
from raysel.evaluate.winning import Tally, per_testset, results_table, verdict_for_a
from raysel.io import arrow_batches, expand_input, fingerprint, json_safe, write_parquet_stream
from raysel.readers import InputError
from raysel.run.context import RunContext, run_context
from raysel.run.steps import Steps

TESTSET, PROMPT_ID = "testset", "prompt_id"
PROMPTS_SCHEMA = pa.schema(
    [(S.ID, pa.string()), (TESTSET, pa.string()), (PROMPT_ID, pa.string()), (S.INSTRUCTION, pa.string()),
     (S.INPUT, pa.string())]
)  # fmt: skip
ANSWERS_SCHEMA = pa.schema([*PROMPTS_SCHEMA, *S.GENERATION_FIELDS])
A_ANSWER, B_ANSWER, FOR_A = "answer_a", "answer_b", "verdict_for_a"
JUDGED_COLUMNS = [
    S.ID, S.JUDGE_VERDICT, S.JUDGE_SCORE_REF, S.JUDGE_SCORE_MODEL, S.JUDGE_RAW, S.JUDGE_CALLS, S.JUDGE_CACHED,
    S.JUDGE_PROMPT_TOKENS, S.JUDGE_COMPLETION_TOKENS, S.JUDGE_COST,
]  # fmt: skip
HELDOUT_COLUMNS = [S.ID, S.LOSS_COND, S.N_ANSWER_TOKENS, S.REJECT_REASON]
RESULTS = ("results.json", "results.md", "report.html")


@dataclass(frozen=True)
class EvalResult:
    output: Path
    results: dict[str, Any]
    """What results.json holds."""
    table: str
    """results.md."""
    uri: str = ""
    """The eval directory as given: `output`, or the s3:// / gs:// URI it is a staging copy of."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(Steps.stamp(obj).encode()).hexdigest()[:12]


def _ids_digest(table: pa.Table) -> str:
    return hashlib.sha256("\n".join(table[S.ID].to_pylist()).encode()).hexdigest()[:16]


def _prompts_digest(table: pa.Table) -> str:
    """The test prompts' ids and text: an edited prompt with the same id is answered again."""
    cols = [table[c].to_pylist() for c in (S.ID, S.INSTRUCTION, S.INPUT)]
    return hashlib.sha256(json.dumps(cols).encode()).hexdigest()[:16]


def pair_name(a: str, b: str) -> str:
    return f"{a} vs {b}"


def run_eval(cfg: EvalConfig, *, resume: bool = False, overwrite: bool = False) -> EvalResult:
    """Fine-tune, answer, judge and score every comparison of `cfg` into cfg.output (resumable)."""
    prompts = _prompts(cfg)  # a missing or malformed test set fails here, before Ray starts
    files = {n: _expand(n, p) for n, p in cfg.train_sets.items() if not p.startswith("random:")}
    with run_context(cfg.output, dump_yaml(cfg), resume=resume, overwrite=overwrite, stale=RESULTS) as ctx:
        out, steps, code = ctx.out, ctx.steps(), ctx.code
        read = {name: _read_set(cfg, steps, name, f, code) for name, f in files.items()}
        heldout, heldout_ids = _heldout(cfg, read[cfg.baseline])
        train, sets = _training_tables(cfg, read, heldout_ids)
        prompts_table = _prompts_table(prompts)
        keys: dict[str, dict[str, Any]] = {}
        models: dict[str, Path] = {}
        for name, table in train.items():
            # The model's key names the training code only: an edit elsewhere in raysel does not retrain (hours
            # on a GPU cluster); the steps after it are keyed on all of raysel's code.
            keys[name] = {"base": cfg.base_model, "template": cfg.template, "seed": cfg.seed, "code": _train_code(),
                          "train": identity(cfg.train), "rows": _ids_digest(table)}  # fmt: skip
            models[name] = _finetune(ctx, cfg, name, table, keys[name])
            sets[name]["train_summary"] = _train_summary(models[name])
        # Where actors load each fine-tuned model: its path, or its twin in a remote run directory (any node).
        uris = {name: ctx.storage_uri(model) for name, model in models.items()}
        losses = {}
        if heldout.num_rows:
            for name in models:
                key = keys[name] | {"heldout": _ids_digest(heldout), "scorer": _scorer_identity(cfg), "all_code": code}
                path = steps.run(f"heldout_{name}", key, lambda p, m=uris[name]: _heldout_loss(cfg, m, heldout, p))
                losses[name] = heldout_loss(pq.read_table(path))
        answers = {}
        used = {n for pair in cfg.pairs() for n in pair}
        for name in [n for n in train if n in used]:
            key = keys[name] | {"generate": _generation_identity(cfg), "prompts": _prompts_digest(prompts_table),
                                "all_code": code}  # fmt: skip
            answers[name] = steps.run(f"answers_{name}", key, lambda p, m=uris[name]: _answer(cfg, m, prompts_table, p))
            keys[name] = key
        comparisons, judged = {}, []
        for a, b in cfg.pairs():
            key = {"a": keys[a], "b": keys[b], "judge": identity(cfg.judge)}
            path = steps.run(f"judge_{a}_vs_{b}", key, lambda p, a=a, b=b: _judge(cfg, out, answers[a], answers[b], p))
            table = pq.read_table(path)
            judged.append(table)
            comparisons[pair_name(a, b)] = {"a": a, "b": b, "testsets": _tallies(table, cfg.test_sets)}
        results = _results(cfg, sets, heldout.num_rows, losses, comparisons, judged, ctx.timings, ctx.cluster)
        md = _markdown(cfg, results)
        (out / "results.md").write_text(md)
        (out / "results.json").write_text(json.dumps(json_safe(results), indent=2, default=str))
        _report(out)
    return EvalResult(output=out, results=results, table=md, uri=cfg.output)


def _expand(name: str, path: str) -> list[str]:
    try:
        return expand_input(path)
    except InputError as e:
        raise InputError(f"train_sets.{name} (--train-sets {name}=...): {e}") from None


def _prompts(cfg: EvalConfig) -> dict[str, list[Prompt]]:
    sets = read_testsets(Path(cfg.test_dir), cfg.test_sets)
    return {name: ps[: cfg.test_limit] if cfg.test_limit else ps for name, ps in sets.items()}


def _prompts_table(prompts: dict[str, list[Prompt]]) -> pa.Table:
    rows = [
        {S.ID: f"{p.testset}:{p.id}", TESTSET: p.testset, PROMPT_ID: p.id, S.INSTRUCTION: p.instruction,
         S.INPUT: p.input}
        for ps in prompts.values() for p in ps
    ]  # fmt: skip
    ids = [r[S.ID] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"test prompt id {dup!r} appears twice in its test set; ids must be unique")
    return pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA)


def _read_set(cfg: EvalConfig, steps: Steps, name: str, files: list[str], code: str) -> pa.Table:
    """The set's good rows (canonical columns, in file order); its rejected rows stop the run with
    data.strict, else are counted (by reason) into the table's metadata."""
    from raysel.io import read_corpus

    data = dataclasses.replace(cfg.data, input=cfg.train_sets[name])
    key = {"data": data, "files": fingerprint(files), "code": code}

    def build(path: Path) -> int:
        return write_parquet_stream(arrow_batches(read_corpus(data, files)), path, S.CANONICAL_SCHEMA)

    table = pq.read_table(steps.run(f"set_{name}", key, build))
    bad = table.filter(pc.not_equal(table[S.REJECT_REASON], ""))
    if bad.num_rows and cfg.data.strict:
        raise InputError(
            f"{bad[S.SOURCE][0].as_py()}: {bad[S.REJECT_REASON][0].as_py()} (training set {name!r}; data.strict is "
            f"on: fix the row, or drop --data.strict to leave bad rows out; {bad.num_rows} bad rows in all)"
        )
    good = table.filter(pc.equal(table[S.REJECT_REASON], ""))
    if good.num_rows == 0:
        first = f"; the first: {bad[S.SOURCE][0].as_py()}: {bad[S.REJECT_REASON][0].as_py()}" if bad.num_rows else ""
        raise InputError(
            f"training set {name!r} ({cfg.train_sets[name]}) has no usable row ({bad.num_rows} rejected{first}); "
            "data.columns maps the fields of every set"
        )
    reasons: dict[str, int] = {}
    for r in bad[S.REJECT_REASON].to_pylist():
        reason = r.split(":")[0] if r.startswith("field ") else r
        reasons[reason] = reasons.get(reason, 0) + 1
    meta = {"rows_read": table.num_rows, "rejected": bad.num_rows, "rejected_by_reason": reasons,
            "rejected_examples": bad.select([S.SOURCE, S.REJECT_REASON]).slice(0, 5).to_pylist()}  # fmt: skip
    return good.replace_schema_metadata({"raysel": json.dumps(meta)})


def _set_meta(table: pa.Table) -> dict[str, Any]:
    return json.loads((table.schema.metadata or {}).get(b"raysel", b"{}"))


def _heldout(cfg: EvalConfig, baseline: pa.Table) -> tuple[pa.Table, set[str]]:
    """heldout_rows rows of the baseline set drawn with the seed (in file order), and their content ids."""
    k = cfg.heldout_rows
    if k == 0:
        return baseline.slice(0, 0), set()
    if k >= baseline.num_rows:
        raise InputError(
            f"heldout_rows={k} leaves no training row in the baseline set {cfg.baseline!r} ({baseline.num_rows} rows); "
            "lower --heldout_rows (0 = no held-out loss)"
        )
    rng = np.random.default_rng([cfg.seed, 1])
    picks = np.sort(rng.choice(baseline.num_rows, size=k, replace=False))
    heldout = baseline.take(pa.array(picks))
    return heldout, set(heldout[S.ID].to_pylist())


def _training_tables(
    cfg: EvalConfig, read: dict[str, pa.Table], heldout_ids: set[str]
) -> tuple[dict[str, pa.Table], dict[str, dict[str, Any]]]:
    """Each set's training rows (held-out content removed) and what results.json says of each set."""
    held = pa.array(sorted(heldout_ids), pa.string())
    train: dict[str, pa.Table] = {}
    sets: dict[str, dict[str, Any]] = {}
    for name, table in read.items():
        kept = table.filter(pc.invert(pc.is_in(table[S.ID], value_set=held)))
        train[name] = kept
        sets[name] = {
            "source": cfg.train_sets[name],
            **_set_meta(table),
            "heldout_removed": table.num_rows - kept.num_rows,
        }
    for name, src in cfg.train_sets.items():
        if not src.startswith("random:"):
            continue
        like, pool = src.removeprefix("random:"), train[cfg.baseline]
        n = train[like].num_rows
        if n > pool.num_rows:
            raise InputError(
                f"train_sets.{name} = {src}: set {like!r} has {n} training rows, more than the baseline "
                f"{cfg.baseline!r} has ({pool.num_rows}) to sample from"
            )
        rng = np.random.default_rng([cfg.seed, 2, *name.encode()])
        train[name] = pool.take(pa.array(np.sort(rng.choice(pool.num_rows, size=n, replace=False))))
        sets[name] = {"source": src, "rows_read": n, "rejected": 0, "heldout_removed": 0}
    for name in cfg.train_sets:  # in the config's order
        sets[name]["train_rows"] = train[name].num_rows
        if train[name].num_rows == 0:
            raise InputError(
                f"training set {name!r} has no row left once the {len(heldout_ids)} held-out rows are taken out "
                "(every row of it is held out); lower --heldout_rows or use a larger set"
            )
    return {n: train[n] for n in cfg.train_sets}, {n: sets[n] for n in cfg.train_sets}


def _train_code() -> str:
    """Hash of the code that makes a fine-tuned model from its rows (trainer, templates, model loading)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted([*(root / "train").glob("*.py"), root / "templates.py", root / "backends" / "models.py"]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _generation_identity(cfg: EvalConfig) -> dict[str, Any]:
    return identity(dataclasses.replace(cfg.generate, model="", template=cfg.template, system=None))


def _scorer_identity(cfg: EvalConfig) -> dict[str, Any]:
    return identity(dataclasses.replace(_score_cfg(cfg, ""), model=""))


def _finetune(ctx: RunContext, cfg: EvalConfig, name: str, table: pa.Table, key: dict[str, Any]) -> Path:
    from raysel.train.finetune import finetune

    out = ctx.out

    def build(path: Path) -> int:
        rows, run = table.select([S.INSTRUCTION, S.INPUT, S.OUTPUT]), f"sft-{name}-{_digest(key)}"
        finetune(cfg.train, model=cfg.base_model, rows=rows, template=cfg.template, output_dir=path,
                 storage_path=ctx.storage_uri(out / "train"), name=run, seed=cfg.seed)  # fmt: skip
        # The model is written: its training checkpoints (weights + optimizer state, several times the
        # model's size) only served a resume. A remote run directory's checkpoints are left in the bucket.
        shutil.rmtree(out / "train" / run, ignore_errors=True)
        return rows.num_rows

    return ctx.steps("models").run(name, key, build, suffix="")


def _train_summary(model: Path) -> dict[str, Any]:
    from raysel.train.finetune import SUMMARY

    path = model / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def _score_cfg(cfg: EvalConfig, model: str) -> ScoreConfig:
    """The held-out scorer: the generation engine's device, the training template and window."""
    gen = cfg.generate
    return ScoreConfig(
        model=model, backend="fake" if gen.backend == "fake" else "hf", template=cfg.template,
        max_length=cfg.train.max_length, batch_size=16, device=gen.device, dtype=gen.dtype, num_cpus=gen.num_cpus,
        num_gpus=gen.num_gpus if gen.backend == "hf" else None, concurrency=gen.concurrency,
    )  # fmt: skip


def _heldout_loss(cfg: EvalConfig, model: str, heldout: pa.Table, path: Path) -> int:
    import ray.data

    from raysel.stages.base import apply
    from raysel.stages.score import IfdScoreStage

    ds = ray.data.from_arrow(heldout.select([S.ID, S.INSTRUCTION, S.INPUT, S.OUTPUT]).replace_schema_metadata())
    return write_parquet_stream(arrow_batches(apply(ds, IfdScoreStage, _score_cfg(cfg, model), HELDOUT_COLUMNS)), path)


def heldout_loss(table: pa.Table) -> float:
    """Mean loss per answer token over the scorable held-out rows (NaN when none is)."""
    loss = table[S.LOSS_COND].to_numpy(zero_copy_only=False).astype(np.float64)
    n = table[S.N_ANSWER_TOKENS].to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(loss) & (n > 0)
    return float((loss[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")


def _answer(cfg: EvalConfig, model: str, prompts: pa.Table, path: Path) -> int:
    import ray.data

    from raysel.stages.base import apply
    from raysel.stages.generate import GenerateStage

    # The training template and no system prompt: the answers are prompted as the model was trained.
    gen = dataclasses.replace(cfg.generate, model=model, template=cfg.template, system=None)
    ds = apply(ray.data.from_arrow(prompts), GenerateStage, gen, ANSWERS_SCHEMA.names)
    return write_parquet_stream((t.cast(ANSWERS_SCHEMA) for t in arrow_batches(ds)), path, ANSWERS_SCHEMA)


def _judge(cfg: EvalConfig, out: Path, a: Path, b: Path, path: Path) -> int:
    """Both orders of every prompt, A's answer in the judge's reference slot; BudgetReached when the judge
    budget ran out (the step stays unfinished; the judgements made are cached)."""
    import ray.data

    from raysel.judge import BudgetReached, cache_spend
    from raysel.stages.base import apply
    from raysel.stages.judge import JudgeRun, JudgeStage

    ta, tb = pq.read_table(a), pq.read_table(b)
    if not ta[S.ID].equals(tb[S.ID]):
        raise RuntimeError(f"{a.name} and {b.name} answer different prompts: delete both and rerun")
    pairs = ta.select([S.ID, TESTSET, S.INSTRUCTION, S.INPUT])
    pairs = pairs.append_column(S.OUTPUT, ta[S.GENERATED]).append_column(S.GENERATED, tb[S.GENERATED])
    cache = Path(cfg.judge.cache) if cfg.judge.cache else out / "judge_cache"
    left = None if cfg.judge.budget_usd is None else max(0.0, cfg.judge.budget_usd - cache_spend(cache))
    run = JudgeRun(judge=cfg.judge, cache_dir=str(cache), budget_usd=left)
    ds = apply(ray.data.from_arrow(pairs), JudgeStage, run, JUDGED_COLUMNS)
    judged = pa.concat_tables([t.select(JUDGED_COLUMNS) for t in arrow_batches(ds)])
    if not judged[S.ID].equals(pairs[S.ID]):
        raise RuntimeError("the judge stage returned its rows out of order")
    unjudged = pc.sum(pc.equal(judged[S.JUDGE_VERDICT], "budget")).as_py() or 0
    if unjudged:
        raise BudgetReached(
            f"the judge budget (judge.budget_usd = {cfg.judge.budget_usd} USD, {cache_spend(cache):.4f} spent) ran "
            f"out with {unjudged} of {judged.num_rows} prompts of {path.stem} not judged. Every judgement made is "
            "cached: rerun the same command with --resume and a higher --judge.budget_usd to go on"
        )
    for_a = [verdict_for_a(v) for v in judged[S.JUDGE_VERDICT].to_pylist()]
    table = pa.table({S.ID: pairs[S.ID], TESTSET: pairs[TESTSET], S.INSTRUCTION: pairs[S.INSTRUCTION],
                      S.INPUT: pairs[S.INPUT], A_ANSWER: pairs[S.OUTPUT], B_ANSWER: pairs[S.GENERATED],
                      FOR_A: pa.array(for_a, pa.string())})  # fmt: skip
    for name in JUDGED_COLUMNS[1:]:
        table = table.append_column(name, judged[name])
    return write_parquet_stream([table], path)


def _tallies(judged: pa.Table, order: list[str]) -> dict[str, dict[str, Any]]:
    by_set: dict[str, list[str]] = {name: [] for name in order}
    for testset, v in zip(judged[TESTSET].to_pylist(), judged[FOR_A].to_pylist(), strict=True):
        by_set[testset].append(v)
    return {name: t.to_dict() for name, t in per_testset(by_set).items()}


def _results(cfg, sets, heldout_rows, losses, comparisons, judged, timings, cluster) -> dict[str, Any]:
    from raysel.judge import judge_accounting

    judge = {}
    if judged:
        columns = pa.concat_tables(judged)
        judge = judge_accounting(cfg.judge, {c: columns[c].to_pylist() for c in JUDGED_COLUMNS[1:]})
    return {
        "base_model": cfg.base_model,
        "template": cfg.template,
        "test_sets": cfg.test_sets,
        "train_sets": sets,
        "heldout": {"rows": heldout_rows, "from": cfg.baseline, "loss": losses},
        "comparisons": comparisons,
        "judge": judge,
        "timings_s": timings,
        "ray": cluster,
        "config": cfg.to_dict(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _markdown(cfg: EvalConfig, results: dict[str, Any]) -> str:
    pairs = {
        name: {ts: Tally(t["win"], t["tie"], t["lose"], t["unjudged"]) for ts, t in c["testsets"].items()}
        for name, c in results["comparisons"].items()
    }
    sizes = ", ".join(f"{n} {s['train_rows']} rows" for n, s in results["train_sets"].items())
    head = (
        f"# raysel eval: {cfg.base_model}, fine-tuned per training set ({sizes})\n\n"
        "Winning score = (wins - losses) / prompts judged + 1 for the first model of each comparison "
        "(> 1: it beats the second); both judging orders combined per prompt.\n\n"
    )
    return head + results_table(pairs, results["heldout"]["loss"] or None)


def _report(out: Path) -> None:
    try:
        from raysel.evaluate.report import write_eval_report

        write_eval_report(out)
    except Exception as e:  # noqa: BLE001
        print(f"[raysel] report.html not written ({type(e).__name__}: {e})")
