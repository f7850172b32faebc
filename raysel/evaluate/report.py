"""report.html of an eval directory: the results table, winning scores and verdicts per test set, held-out
losses, training sets, judge cost and example answer pairs. Drawn from results.json and the judge steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raysel import __version__, html

N_EXAMPLES = 6


def write_eval_report(out: Path) -> Path:
    """Write out/report.html from out/results.json and return its path."""
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    parts = [
        f"<h1>raysel eval: {html.escape(out.name)}</h1>",
        html.note(
            f"raysel {__version__}; base model {results['base_model']}, template {results['template']}; "
            f"finished {results.get('finished', '')}"
        ),  # fmt: skip
        "<h2>Winning score</h2>",
        html.note(
            "For the first model of each comparison: (wins - losses) / prompts judged + 1. Above 1 it beats "
            "the second model; 1 is a draw. Both judging orders are combined per prompt (the IFD paper's rule)."
        ),
        _scores_plot(results),
        _results_table(results),
        "<h2>Held-out loss</h2>",
        _heldout(results),
        "<h2>Training sets</h2>",
        _sets(results),
        "<h2>Judge</h2>",
        html.kv((k, v) for k, v in results.get("judge", {}).items() if not isinstance(v, dict))
        if results.get("judge")
        else html.note("no comparison judged"),
        "<h2>Examples</h2>",
        _examples(out, results),
        "<h2>Config</h2>",
        f"<pre>{html.escape(json.dumps(html.redact(results.get('config', {})), indent=1, default=str))}</pre>",
    ]
    title = html.escape(f"raysel eval {out.name}")
    page = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
    page += f"<style>{html.CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _scores_plot(results: dict[str, Any]) -> str:
    comps = results["comparisons"]
    if not comps:
        return html.note("no comparison")
    sets = list(next(iter(comps.values()))["testsets"])
    axes = html.axes(max(4.0, 1.1 * len(sets) * max(1, len(comps)) ** 0.5 + 2), 2.8, 1, 2)
    ax, stack = axes[0][0], axes[0][1]
    width = 0.8 / len(comps)
    x = np.arange(len(sets))
    for i, (name, c) in enumerate(comps.items()):
        ws = [c["testsets"][s]["winning_score"] for s in sets]
        ax.bar(x + i * width - 0.4 + width / 2, [np.nan if w is None else w for w in ws], width, label=name)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, sets, rotation=30)
    ax.set_ylim(0, 2)
    html.label(ax, "test set", "winning score", legend=True)
    names = list(comps)
    for j, (verdict, color) in enumerate((("win", "tab:green"), ("tie", "tab:gray"), ("lose", "tab:red"))):
        vals = [comps[n]["testsets"]["all"][verdict] for n in names]
        bottom = [sum(comps[n]["testsets"]["all"][v] for v in ("win", "tie", "lose")[:j]) for n in names]
        stack.barh(names, vals, left=bottom, color=color, label=verdict)
    html.label(stack, "prompts (all test sets)", "", legend=True)
    return html.img(ax.figure, "winning score per test set, and win / tie / lose over all test sets")


def _results_table(results: dict[str, Any]) -> str:
    rows = []
    for name, c in results["comparisons"].items():
        for ts, t in c["testsets"].items():
            rows.append([name, "all (pooled)" if ts == "all" else ts, t["win"], t["tie"], t["lose"], t["unjudged"],
                         t["winning_score"]])  # fmt: skip
    return html.table(["comparison", "test set", "win", "tie", "lose", "unjudged", "winning score"], rows)


def _heldout(results: dict[str, Any]) -> str:
    h = results["heldout"]
    if not h["loss"]:
        return html.note("no held-out rows (heldout_rows = 0)")
    names = list(h["loss"])
    axes = html.axes(1.2 + 0.8 * len(names), 2.4)
    ax = axes[0][0]
    ax.bar(names, [h["loss"][n] for n in names], color="tab:blue")
    html.label(ax, "model (training set)", "held-out loss")
    note = html.note(f"Mean answer-token loss on {h['rows']} rows drawn from '{h['from']}' and left out of every "
                     "training set (lower is better).")  # fmt: skip
    return note + html.row(
        html.img(ax.figure, "held-out loss per model"),
        html.table(["model", "held-out loss"], [[n, h["loss"][n]] for n in names]),
    )


def _sets(results: dict[str, Any]) -> str:
    keys = ("source", "rows_read", "rejected", "heldout_removed", "train_rows")
    rows = []
    for name, s in results["train_sets"].items():
        summary = s.get("train_summary", {})
        rows.append([name, *(s.get(k) for k in keys), summary.get("total_steps"), summary.get("loss")])
    return html.table(["set", *keys, "steps", "last train loss"], rows)


def _examples(out: Path, results: dict[str, Any]) -> str:
    parts = []
    for name, c in results["comparisons"].items():
        path = out / "steps" / f"judge_{c['a']}_vs_{c['b']}.parquet"
        if not path.is_file():
            continue
        t = pq.read_table(path).slice(0, N_EXAMPLES).to_pylist()
        rows = [[r["id"], *(html.clip(r[k]) for k in ("instruction", "answer_a", "answer_b")), r["verdict_for_a"]]
                for r in t]  # fmt: skip
        parts.append(f"<h3>{html.escape(name)}</h3>" + html.table(
            ["prompt", "instruction", f"{c['a']}'s answer", f"{c['b']}'s answer", f"verdict for {c['a']}"], rows,
            {1: "text", 2: "text", 3: "text"}))  # fmt: skip
    return "".join(parts) or html.note("no judged pairs")
