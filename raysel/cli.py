"""The `raysel` command: select, score, report, eval, agree, demo. Every flag is a config field (--score.batch_size 8).

Run: raysel select --method ifd --input data.json --output runs/x --ratio 0.1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raysel.config import ConfigError, RunConfig, load_config
from raysel.methods import METHODS, ratio_help
from raysel.readers import InputError

# Short flags and the config field each one sets.
SHORTCUTS = {
    "input": "data.input",
    "output": "output",
    "method": "select.method",
    "ratio": "select.ratio",
    "k": "select.k",
    "model": "score.model",
    "backend": "score.backend",
    "template": "score.template",
    "max_length": "score.max_length",
    "limit": "data.limit",
    "seed": "seed",
    "scorer_model": "score.model",
    "target_model": "select.target_model",
    "agreement": "select.agreement",
}


def _common(p: argparse.ArgumentParser, *, selecting: bool) -> None:
    p.add_argument("--config", help="YAML job file (jobs/*.yaml); flags override it")
    p.add_argument("--input", help="corpus: file, directory, glob or s3:// / gs:// URI")
    p.add_argument("--output", help="run directory: a path, or an s3:// / gs:// URI")
    p.add_argument("--resume", action="store_true", help="continue the run in --output even though its config changed")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --output and start again")
    p.add_argument("--model", help="'smollm2' (default, offline), an HF id or a local path")
    p.add_argument("--backend", help="hf (default) | vllm | fake")
    p.add_argument("--template", help="alpaca (default) | wiz | chat")
    p.add_argument("--max-length", dest="max_length", help="token window (default 512)")
    p.add_argument("--limit", help="read at most N rows")
    p.add_argument("--seed")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of rejecting it")
    p.add_argument(
        "--dedup",
        nargs="?",
        const="",
        metavar="COSINE",
        help="keep one row of each exact and near-duplicate group (near: embedding cosine >= COSINE, default 0.95)",
    )
    p.add_argument(
        "--pre-experience",
        dest="pre_experience",
        action="store_true",
        help="IFD with a pre-experienced model: K-Means sample -> brief SFT -> score with it (the paper's pipeline)",
    )
    if selecting:
        methods = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        p.add_argument("--method", help=f"{methods} (default ifd)")
        p.add_argument(
            "--scorer-model",
            dest="scorer_model",
            help="ifd: score with this (smaller) model; the model to be trained is then --target-model, else "
            "--model, else the job file's score.model",
        )
        p.add_argument("--target-model", dest="target_model", help="ifd: the model the selection will train (manifest)")
        p.add_argument("--agreement", help="ifd: a `raysel agree` directory for the scorer / target pair (manifest)")
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            "--ratio",
            help=ratio_help(),
        )
        group.add_argument("--k", help="keep this many rows")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("select", help="score and select a training subset"), selecting=True)
    score = sub.add_parser("score", help="score every row, no selection")
    score.add_argument("metric", choices=["ifd"])
    _common(score, selecting=False)
    report = sub.add_parser("report", help="(re)write RUN_DIR/report.html from a finished run")
    report.add_argument("run_dir", help="a run directory (local path)")
    ev = sub.add_parser("eval", help="fine-tune a model per training set, answer the test sets, judge the pairs")
    ev.add_argument("--config", help="YAML eval file (jobs/eval/*.yaml); flags override it")
    ev.add_argument("--output", help="eval directory: a path, or an s3:// / gs:// URI")
    ev.add_argument("--train-sets", dest="train_sets", nargs="+", metavar="NAME=PATH",
                    help="training sets: NAME=corpus (a run's selected.jsonl, JSON, JSONL, Parquet) or "
                         "NAME=random:OTHER (a seeded random sample of the baseline, as large as OTHER)")  # fmt: skip
    ev.add_argument("--baseline", help="the set the others are compared against (default full)")
    ev.add_argument("--base-model", dest="base_model", help="model every set fine-tunes (default smollm2)")
    ev.add_argument("--test-sets", dest="test_sets", help="comma-separated: vicuna,koala,wizardlm,sinstruct,lima")
    ev.add_argument("--test-dir", dest="test_dir", help="directory of the test sets' <name>.jsonl files")
    ev.add_argument("--test-limit", dest="test_limit", help="answer only the first N prompts of each test set")
    ev.add_argument("--resume", action="store_true", help="continue the eval in --output though its config changed")
    ev.add_argument("--overwrite", action="store_true", help="delete the eval in --output and start again")
    ev.add_argument("--seed")
    ag = sub.add_parser("agree", help="can a small scorer stand in for the large one? score a sample with both")
    ag.add_argument("--config", help="YAML file of AgreeConfig fields; flags override it")
    ag.add_argument("--input", help="corpus: file, directory, glob or s3:// / gs:// URI")
    ag.add_argument("--output", help="agreement directory")
    ag.add_argument("--small", help="the cheap scorer's model (small.model)")
    ag.add_argument("--large", help="the scorer it stands in for (large.model)")
    ag.add_argument("--sample", help="rows drawn from the corpus (default 2000)")
    ag.add_argument("--ratio", help="the selections compared: top ratio of rows with IFD <= 1 (default 0.1)")
    ag.add_argument("--template", help="prompt template of both scorers (alpaca, wiz, chat)")
    ag.add_argument("--bootstrap", help="paired bootstrap resamples for the 95%% intervals (default 1000)")
    ag.add_argument("--seed")
    ag.add_argument("--resume", action="store_true", help="continue the run in --output though its config changed")
    ag.add_argument("--overwrite", action="store_true", help="delete the run in --output and start again")
    demo = sub.add_parser("demo", help="build a corpus offline from Python's docs and select from it")
    demo.add_argument("--output", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--rows", type=int, default=160, help="rows in the demo corpus (default 160)")
    demo.add_argument("--input", help="select from this corpus instead of the built one")
    demo.add_argument("--model", help="scoring model (default smollm2)")
    return parser


def _overrides(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Shortcut flags plus any `--section.field value` pairs, as dotted config keys."""
    values = {SHORTCUTS[k]: v for k, v in vars(args).items() if k in SHORTCUTS and v is not None}
    for key, other in (("select.k", "select.ratio"), ("select.ratio", "select.k")):
        if key in values and other not in values:
            values[other] = None  # --k on a job file that sets a ratio (or the reverse) replaces it
    if getattr(args, "strict", False):
        values["data.strict"] = True
    if getattr(args, "pre_experience", False):
        values["pre_experience.enabled"] = True
    if getattr(args, "dedup", None) is not None:
        values |= {"data.dedupe": True, "data.near_dedupe": True}
        if args.dedup != "":
            values["data.near_dup"] = args.dedup
    it = iter(extra)
    for flag in it:
        if not flag.startswith("--"):
            raise ConfigError(f"unexpected argument {flag!r}: config overrides look like --score.batch_size 32")
        key, eq, value = flag[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ConfigError(f"--{key} needs a value")
        values[key.replace("-", "_")] = value
    return values


def _trained_model(args: argparse.Namespace, values: dict[str, Any]) -> dict[str, Any]:
    """--scorer-model replaces score.model; the model it replaces (--model, else the job file's score.model) is
    then the one to be trained, unless --target-model names another."""
    scorer = getattr(args, "scorer_model", None)
    if scorer is None or values.get("select.target_model") is not None:
        return values
    trained = args.model
    if trained is None and args.config:
        from raysel.config import config_tree

        tree = config_tree(args.config, None)
        trained = tree.get("score", {}).get("model") if isinstance(tree.get("score"), dict) else None
    if trained is not None and str(trained) != scorer:
        values["select.target_model"] = str(trained)
    return values


def _demo(args: argparse.Namespace, extra: list[str]) -> RunConfig:
    from pathlib import Path

    from raysel.demo_corpus import write_corpus

    values = {
        "output": args.output,
        "select.ratio": 0.15,
        "score.max_length": 256,
        "score.concurrency": 2,
        "score.num_cpus": 0.75,
        "score.batch_size": 16,
    }
    if args.input:
        values["data.input"] = args.input
    else:
        corpus = Path(args.output) / "demo_corpus.jsonl"
        counts = write_corpus(corpus, args.rows, seed=0)
        print(f"[raysel] demo corpus {corpus}: {counts}")
        values["data.input"] = str(corpus)
    if args.model:
        values["score.model"] = args.model
    return load_config(None, values | _overrides(argparse.Namespace(), extra))


def _user_error(e: BaseException | None) -> BaseException | None:
    """The ConfigError/InputError behind `e`, unwrapping the exceptions Ray wraps worker errors in."""
    for _ in range(16):
        if e is None or isinstance(e, (ConfigError, InputError)):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def _eval_overrides(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in ("output", "baseline", "base_model", "test_dir", "test_limit", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.test_sets is not None:
        values["test_sets"] = args.test_sets
    if args.train_sets:
        sets = {}
        for item in args.train_sets:
            name, eq, path = item.partition("=")
            if not eq or not name or not path:
                raise ConfigError(f"--train-sets {item!r}: expected NAME=PATH (or NAME=random:OTHER)")
            sets[name] = path
        values["train_sets"] = sets
    values |= _overrides(argparse.Namespace(), extra)
    for key in ("compare", "test_sets"):  # lists, comma-separated on the command line
        if isinstance(values.get(key), str):
            values[key] = [t.strip() for t in values[key].split(",") if t.strip()]
    return values


def _failed(e: Exception) -> int:
    """Exit code of a command that raised: 3 when the judge budget stopped it, 2 for a user error (config,
    input), both printed; anything else is a bug and propagates."""
    from raysel.judge import BudgetReached

    if isinstance(e, BudgetReached):
        print(f"raysel: stopped: {e}", file=sys.stderr)
        return 3
    user_error = _user_error(e)
    if user_error is None:
        raise e
    print(f"raysel: error: {user_error}", file=sys.stderr)
    return 2


def _eval(args: argparse.Namespace, extra: list[str]) -> int:
    from raysel.config import load_eval_config

    try:
        cfg = load_eval_config(args.config, _eval_overrides(args, extra))
        from raysel.evaluate.run import run_eval

        result = run_eval(cfg, resume=args.resume, overwrite=args.overwrite)
    except Exception as e:
        return _failed(e)
    print(result.table, end="")
    print(f"raysel: wrote results.md, results.json and report.html in {result.uri or result.output}")
    return 0


def _agree(args: argparse.Namespace, extra: list[str]) -> int:
    from raysel.config import load_agree_config

    flags = {"input": "data.input", "output": "output", "small": "small.model", "large": "large.model",
             "sample": "sample", "ratio": "ratio", "seed": "seed", "bootstrap": "bootstrap"}  # fmt: skip
    values = {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None}
    if args.template is not None:
        values |= {"small.template": args.template, "large.template": args.template}
    try:
        cfg = load_agree_config(args.config, values | _overrides(argparse.Namespace(), extra))
        from raysel.agree.run import run_agree

        result = run_agree(cfg, resume=args.resume, overwrite=args.overwrite)
    except Exception as e:
        return _failed(e)
    print(f"raysel: {result.result['verdict']}")
    print(f"raysel: wrote agreement.json and report.html in {cfg.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    if args.command == "report":
        return _report(args.run_dir, extra)
    if args.command == "eval":
        return _eval(args, extra)
    if args.command == "agree":
        return _agree(args, extra)
    try:
        if args.command == "demo":
            cfg = _demo(args, extra)
        else:
            cfg = load_config(args.config, _trained_model(args, _overrides(args, extra)))
        from raysel.driver import run

        result = run(
            cfg,
            select=args.command != "score",
            resume=getattr(args, "resume", False),
            overwrite=getattr(args, "overwrite", False),
        )
    except Exception as e:
        return _failed(e)
    from raysel.summary import print_summary

    print_summary(result, demo=args.command == "demo")
    return 0


def _report(run_dir: str, extra: list[str]) -> int:
    from pathlib import Path

    from raysel.report import write_report

    if extra:
        print(f"raysel: error: unexpected arguments {' '.join(extra)}", file=sys.stderr)
        return 2
    if not (Path(run_dir) / "manifest.json").is_file():
        print(f"raysel: error: {run_dir} holds no finished run (no manifest.json): run `raysel select` first, "
              "or let it finish", file=sys.stderr)  # fmt: skip
        return 2
    print(f"raysel: wrote {write_report(Path(run_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
