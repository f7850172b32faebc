"""report.html for a run directory: counts, score distributions, rounds, cluster coverage, costs, timings, examples.

Run: ``raysel report RUN_DIR`` (or ``write_report(Path(RUN_DIR))``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import __version__, html
from raysel import schema as S
from raysel.agree import METRICS
from raysel.io import iter_parquet, read_columns, take_rows
from raysel.methods import METHODS

PLOTTED = (
    S.SCORE_IFD, S.SCORE_IFD_PPL, S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_CLASSIFIER, S.SCORE_SIMILARITY, S.SCORE_IST,
    S.JUDGE_SCORE_REF, S.JUDGE_SCORE_MODEL,
)  # fmt: skip
"""Score columns given a histogram, when scores.parquet has them."""
IFD_LIKE = (S.SCORE_IFD, S.SCORE_IFD_PPL)
TEXT_STEPS = ("steps/texts.parquet", "steps/score.parquet", "steps/iterit_scores.parquet", "steps/ist_scores.parquet",
              "scores.parquet")  # fmt: skip
"""Where the text of scored rows is looked for when the manifest names no "texts" table (runs of older
versions kept it in the score step and scores.parquet)."""
N_EXAMPLES = 10


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (self-contained: plots embedded as PNG) and return its path."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    scores = _read_scores(run_dir / "scores.parquet")
    parts = [
        _header(run_dir, manifest, scores), _distributions(scores), _rounds(manifest), _coverage(run_dir, scores),
        _reasons(manifest, scores), _scorer(manifest), _judge(manifest), _timings(manifest),
        _examples(run_dir, manifest, scores),
        _config(manifest),
    ]  # fmt: skip
    title = html.escape(f"raysel report: {run_dir.name}")
    page = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
    page += f"<style>{html.CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _read_scores(path: Path) -> pa.Table:
    """The numeric score and selection columns of scores.parquet: no text, no ids (those of the rows shown
    are read by position), the select reason dictionary-encoded."""
    if not path.is_file():
        return pa.table({S.SELECTED: pa.array([], pa.bool_())})
    names = pq.read_schema(path).names
    wanted = [c for c in (*PLOTTED, S.SELECTED, S.SELECT_REASON, S.RANK_IFD, S.CLUSTER) if c in names]
    return read_columns(path, wanted or [names[0]], dictionary=[S.SELECT_REASON] if S.SELECT_REASON in names else None)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64)


def _selected(scores: pa.Table) -> np.ndarray | None:
    """The selected mask, or None for a score-only run."""
    col = scores[S.SELECTED] if S.SELECTED in scores.column_names else None
    return None if col is None else col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def _method(manifest: dict[str, Any]) -> str:
    return str(manifest.get("config", {}).get("select", {}).get("method", "ifd"))


def texts_of(run_dir: Path, manifest: dict[str, Any], ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """instruction / input / output of the rows `ids` only, from the manifest's "texts" table (else a known
    step file), read batch by batch and filtered in Arrow: the corpus text never becomes Python objects."""
    named = manifest.get("tables", {}).get("texts")
    paths = [run_dir / rel for rel in ([named] if named else []) + list(TEXT_STEPS)]
    schemas = {p: pq.read_schema(p).names for p in paths if p.is_file()}
    path = next((p for p, n in schemas.items() if S.ID in n and (S.INSTRUCTION in n or S.RAW in n)), None)
    if path is None or not ids:
        return {}
    fields = [c for c in (S.INSTRUCTION, S.INPUT, S.OUTPUT) if c in schemas[path]]
    wanted = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, dict[str, str]] = {}
    for t in iter_parquet(path, columns=[S.ID, *(fields or [S.RAW])], batch_size=8192):
        for row in t.filter(pc.is_in(t[S.ID], value_set=wanted)).to_pylist():
            found.setdefault(row[S.ID], row if fields else _from_raw(row[S.RAW]))
        if len(found) == len(wanted):
            break
    return found


def _from_raw(raw: str) -> dict[str, str]:
    """instruction / input / output from the original record's JSON (the whole record when it has none)."""
    try:
        rec = json.loads(raw)
    except (TypeError, ValueError):
        rec = None
    if not isinstance(rec, dict) or not any(k in rec for k in (S.INSTRUCTION, S.OUTPUT)):
        return {S.INSTRUCTION: str(raw), S.INPUT: "", S.OUTPUT: ""}
    return {k: str(rec.get(k) or "") for k in (S.INSTRUCTION, S.INPUT, S.OUTPUT)}


def _header(run_dir: Path, manifest: dict[str, Any], scores: pa.Table) -> str:
    cfg, c = manifest.get("config", {}), manifest.get("counts", {})
    mode = "selection" if _selected(scores) is not None else "scores only (no selection)"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = [
        ("method", f"{_method(manifest)} ({mode})"), ("input", cfg.get("data", {}).get("input", "?")),
        ("run directory", str(run_dir.resolve())), ("raysel version", manifest.get("raysel_version", __version__)),
        ("config hash", manifest.get("config_hash", "?")), ("report written", when),
    ]  # fmt: skip
    out = c.get("selected", 0) if mode == "selection" else c.get("scored", 0)
    summary = f"in {c.get('read', '?')} / out {out} / rejected {c.get('rejected_total', '?')}"
    if not manifest:
        summary = "manifest.json is missing: the run did not finish"
    head = f"<h1>raysel report: {html.escape(run_dir.name)}</h1><p><b>{html.escape(summary)}</b></p>"
    return head + html.row(html.kv(meta), html.table(["count", "rows"], c.items()) if c else "")


def _distributions(scores: pa.Table) -> str:
    head = "<h2>Score distributions</h2>"
    cols = [c for c in PLOTTED if c in scores.column_names and np.isfinite(_floats(scores, c)).any()]
    if not scores.num_rows or not cols:
        return head + html.note("no rows scored")
    sel = _selected(scores)
    ncols = min(3, len(cols))
    nrows = -(-len(cols) // ncols)
    axes = html.axes(4.2 * ncols, 2.8 * nrows, nrows, ncols).ravel()
    for ax in axes[len(cols) :]:
        ax.set_axis_off()
    for ax, name in zip(axes, cols, strict=False):
        _histogram(ax, _floats(scores, name), sel, name)
    legend = "each group as shares of its own rows" if sel is not None else "all scored rows (no selection)"
    return head + html.note(f"{legend}; NaN (unscored) rows left out") + html.img(axes[0].figure, "score histograms")


def _histogram(ax: Any, values: np.ndarray, sel: np.ndarray | None, name: str) -> None:
    finite = np.isfinite(values)
    # A few extreme rows (IFD's perplexity form reaches 1e3) would squash the rest into one bar.
    clip = finite.sum() > 200
    lo, hi = np.percentile(values[finite], [0.5, 99.5]) if clip else (values[finite].min(), values[finite].max())
    bins = np.histogram_bin_edges(values[finite], bins=30, range=(lo, hi) if hi > lo else None)
    groups = [(finite, "#4878a8", "scored", "stepfilled")]
    if sel is not None:
        groups = [
            (finite & ~sel, "#b0b0b0", "not selected", "stepfilled"),
            (finite & sel, "#d9622b", "selected", "step"),
        ]
    for mask, color, label, kind in groups:  # each group's shares: a small selection stays visible
        v = values[mask]
        ax.hist(v, bins=bins, weights=np.full(len(v), 1 / max(len(v), 1)), color=color, histtype=kind, linewidth=1.8,
                label=label)  # fmt: skip
    if name in IFD_LIKE:
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="IFD = 1")
    ax.set_title(f"{name} (middle 99%)" if clip else name, fontsize=10)
    html.label(ax, "", "share of rows", legend=True)


def _rounds(manifest: dict[str, Any]) -> str:
    head = "<h2>Rounds</h2>"
    it, ist = manifest.get("iterit"), manifest.get("iterselecttune")
    if it:
        info = f"IterIT: k {it.get('k')} of {it.get('rows')} rows per epoch, strategy {it.get('strategy')}"
        return head + html.note(info) + html.records_table(it["epochs"]) + _bars(it["epochs"], "epoch", "picked")
    if ist:
        info = (f"IterSelectTune: subset {ist.get('subset')} of {ist.get('rows')} rows, budget {ist.get('budget')}, "
                f"batch {ist.get('batch')}; stopped: {ist.get('stop')}")  # fmt: skip
        return head + html.note(info) + html.records_table(ist["rounds"]) + _bars(ist["rounds"], "round", "hard_added")
    return head + html.note("one pass: this method has no rounds")


def _bars(records: Sequence[dict[str, Any]], key: str, added: str) -> str:
    if not records:
        return ""
    ax = html.axes(min(10.0, 0.4 * len(records) + 1.5), 1.8)[0, 0]
    ax.bar([str(r.get(key)) for r in records], [r.get(added, 0) for r in records], color="#4878a8")
    html.label(ax, key, f"rows ({added})")
    return html.img(ax.figure, f"rows added per {key}")


def _clusters(run_dir: Path, scores: pa.Table) -> np.ndarray | None:
    """Each scored row's K-Means cluster (-1: none), from scores.parquet or the pre-experience step."""
    if S.CLUSTER in scores.column_names:
        return scores[S.CLUSTER].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    path = run_dir / "steps" / "pre_cluster.parquet"
    if not path.is_file() or not scores.num_rows:
        return None
    table = read_columns(path, [S.ID, S.CLUSTER])
    ids = read_columns(run_dir / "scores.parquet", [S.ID])[S.ID]
    at = pc.index_in(ids, value_set=table[S.ID]).fill_null(-1).to_numpy(zero_copy_only=False)
    labels = table[S.CLUSTER].to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(at >= 0, labels[np.maximum(at, 0)], -1)


def _coverage(run_dir: Path, scores: pa.Table) -> str:
    head = "<h2>Cluster coverage</h2>"
    labels = _clusters(run_dir, scores)
    if labels is None or not (labels >= 0).any():
        return head + html.note("this run has no per-row cluster assignments (no K-Means step)")
    sel = _selected(scores)
    k = int(labels.max()) + 1
    known = labels >= 0
    corpus = np.bincount(labels[known], minlength=k) / known.sum()
    ax, x = html.axes(min(12.0, max(4.0, 0.25 * k + 2)), 2.6)[0, 0], np.arange(k)
    ax.bar(x - 0.2, corpus, width=0.4, color="#aaaaaa", label="corpus")
    line = f"{k} clusters over {int(known.sum())} rows"
    if sel is not None and (sel & known).any():
        chosen = np.bincount(labels[sel & known], minlength=k) / (sel & known).sum()
        ax.bar(x + 0.2, chosen, width=0.4, color="#d9622b", label="selection")
        line += f"; the selection covers {int((chosen > 0).sum())} of them"
    ax.set_xticks(x if k <= 30 else x[:: -(-k // 30)])
    html.label(ax, "cluster", "share of rows", legend=True)
    return head + html.note(line) + html.img(ax.figure, "cluster shares")


def _reasons(manifest: dict[str, Any], scores: pa.Table) -> str:
    head = "<h2>Rejected rows and selection reasons</h2>"
    rejected = manifest.get("rejected_by_reason", {})
    left = (
        html.table(["rejected before selection", "rows"], rejected.items())
        if rejected
        else html.note("no rows rejected")
    )
    right = ""
    if S.SELECT_REASON in scores.column_names and scores.num_rows:
        counts = pc.value_counts(scores[S.SELECT_REASON]).to_pylist()
        right = html.table(["select_reason", "rows"], sorted((c["values"], c["counts"]) for c in counts))
    return head + html.row(left, right)


def _scorer(manifest: dict[str, Any]) -> str:
    """IFD scored by a model other than the one to be trained: the pair, and the agreement run behind it."""
    scorer = manifest.get("scorer")
    if not scorer or (scorer.get("same") and "agreement" not in scorer):
        return ""
    head = "<h2>Scorer agreement</h2>"
    pairs = [("scorer", scorer["model"]), ("target model", scorer["target_model"])]
    agreement = scorer.get("agreement")
    if agreement is None:
        return head + html.kv(pairs) + html.note("no `raysel agree` run for this pair: the stand-in is unchecked")
    pairs += [("verdict", agreement.get("verdict")), ("agreement run", agreement["dir"])]
    pairs += [(k, agreement.get(k)) for k in ("matches", "same_corpus", "same_scoring")]
    stats = [(k, agreement[k]) for k in METRICS if isinstance(agreement.get(k), dict)]
    table = html.table(
        ["statistic", "value", "95% low", "95% high"], [[k, v["value"], v["low"], v["high"]] for k, v in stats]
    )
    return head + html.row(html.kv(pairs), table)


def _judge(manifest: dict[str, Any]) -> str:
    head = "<h2>Judge and API cost</h2>"
    judge = manifest.get("iterselecttune", {}).get("judge")
    if not judge:
        return head + html.note("this method calls no judge")
    return head + html.kv((k, html.inline(v)) for k, v in judge.items())


def _timings(manifest: dict[str, Any]) -> str:
    head = "<h2>Timings</h2>"
    timings = manifest.get("timings_s", {})
    if not timings:
        return head + html.note("no timings recorded")
    table = html.table(["stage", "seconds"], timings.items())
    timed = [(k, float(v)) for k, v in timings.items() if isinstance(v, int | float)]
    if not timed:
        return head + table
    ax = html.axes(6.0, 0.3 * len(timed) + 0.8)[0, 0]
    ax.barh([k for k, _ in timed][::-1], [v for _, v in timed][::-1], color="#4878a8")
    html.label(ax, "seconds", "")
    return head + html.row(table, html.img(ax.figure, "timings"))


def _main_score(manifest: dict[str, Any], scores: pa.Table) -> tuple[str, np.ndarray] | None:
    """What the method ranks by (its registry entry's rank_column: score_ifd, score_ifd_ppl, score_ist); a
    method that scores no IFD falls back on minus its rank when no row has that score."""
    spec, names = METHODS.get(_method(manifest)), scores.column_names
    name = spec.rank_column if spec else S.SCORE_IFD
    if name in names and np.isfinite(_floats(scores, name)).any():
        return name, _floats(scores, name)
    if S.SCORE_IFD not in names and S.RANK_IFD in names:
        rank = _floats(scores, S.RANK_IFD)
        return "rank", np.where(rank > 0, -rank, np.nan)
    return None


def example_rows(method: str, scores: pa.Table) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
    """The score the method ranks by, its values, and the positions of the N_EXAMPLES highest and lowest
    scored rows (None when no row has a score). The run's outputs keep these rows' text for the report."""
    main = _main_score({"config": {"select": {"method": method}}}, scores)
    finite = np.flatnonzero(np.isfinite(main[1])) if main else []
    if not len(finite):
        return None
    name, values = main
    order = finite[np.argsort(-values[finite], kind="stable")]
    return name, values, order[:N_EXAMPLES], order[::-1][:N_EXAMPLES]


def example_positions(method: str, scores_path: Path) -> np.ndarray:
    """Sorted positions of the rows the report quotes, from scores.parquet (empty when none is scored);
    reads only the column(s) the method ranks by."""
    names = pq.read_schema(scores_path).names
    wanted = [c for c in (S.SCORE_IFD, S.SCORE_IFD_PPL, S.SCORE_IST, S.RANK_IFD) if c in names]
    picked = example_rows(method, read_columns(scores_path, wanted))
    return np.unique(np.concatenate(picked[2:])) if picked else np.zeros(0, np.int64)


def _examples(run_dir: Path, manifest: dict[str, Any], scores: pa.Table) -> str:
    head = "<h2>Examples</h2>"
    picked = example_rows(_method(manifest), scores)
    if picked is None:
        return head + html.note("no rows scored")
    name, values, top, bottom = picked
    shown = np.unique(np.concatenate([top, bottom]))
    at = dict(zip(shown.tolist(), take_rows(run_dir / "scores.parquet", shown, [S.ID])[S.ID].to_pylist(), strict=True))
    texts = texts_of(run_dir, manifest, list(at.values()))  # at most 20 rows
    if not texts:
        head += html.note("the text of scored rows is not in this run directory")
    tables = [
        _example_table(scores, rows, [at[i] for i in rows.tolist()], name, values, texts) for rows in (top, bottom)
    ]
    high, low = ("best", "worst") if name == "rank" else ("highest", "lowest")
    name = html.escape(name)
    return head + f"<h3>{len(top)} {high} {name}</h3>{tables[0]}<h3>{len(bottom)} {low} {name}</h3>{tables[1]}"


def _example_table(
    scores: pa.Table, rows: np.ndarray, ids: list[str], name: str, values: np.ndarray, texts: dict
) -> str:
    picked = scores.take(pa.array(rows))
    reasons = picked[S.SELECT_REASON].to_pylist() if S.SELECT_REASON in picked.column_names else [""] * len(rows)
    shown = -values[rows] if name == "rank" else values[rows]
    fields = (S.INSTRUCTION, S.INPUT, S.OUTPUT)
    out = [
        [rid, float(v), why, *(html.clip(str(texts.get(rid, {}).get(c) or "")) for c in fields)]
        for rid, v, why in zip(ids, shown, reasons, strict=True)
    ]
    header = ["id", name, "select_reason", "instruction", "input", "output"]
    return html.table(header, out, {0: "id", 3: "text", 4: "text", 5: "text"})


def _config(manifest: dict[str, Any]) -> str:
    cfg = manifest.get("config")
    if not cfg:
        return ""
    rows = ((k, html.inline(v)) for k, v in html.redact(cfg).items())
    return f"<h2>Config</h2><details><summary>resolved config</summary>{html.kv(rows)}</details>"
