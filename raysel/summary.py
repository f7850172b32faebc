"""The short report printed after a run: counts, outputs, and for the demo where each kind of pair went."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.driver import RunResult
from raysel.io import read_columns
from raysel.report import texts_of


def demo_breakdown(out: Path) -> dict[str, Counter]:
    """For the demo corpus: what happened to the clean pairs, the mismatched pairs and the extra copies."""
    kinds: dict[str, str] = {}
    for line in (out / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rid = S.row_id(rec["instruction"], rec["input"], rec["output"])
        kinds[rid] = "mismatched" if rec["kind"] == "mismatched" else "clean"
    fate: dict[str, Counter] = {"clean": Counter(), "mismatched": Counter(), "extra copies": Counter()}
    for row in pq.read_table(out / "scores.parquet", columns=[S.ID, S.SELECT_REASON]).to_pylist():
        fate[kinds[row[S.ID]]][row[S.SELECT_REASON]] += 1
    for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines():
        if json.loads(line)["stage"] == "dedupe":
            fate["extra copies"]["removed as duplicate"] += 1
    return fate


def print_summary(result: RunResult, *, demo: bool = False) -> None:
    m, out = result.manifest, result.output
    c = m["counts"]
    print(f"\nraysel: run directory {result.uri or out}")
    print(
        f"  read {c['read']}  rejected {c['rejected_total']} (bad input {c['rejected_input']}, "
        f"duplicates {c['duplicates']}, near duplicates {c.get('near_duplicates', 0)}, "
        f"unscorable {c['unscorable']})  scored {c['scored']}"
    )
    near = m.get("duplicates", {}).get("near")
    if near:
        groups, extra = near["groups"], near["extra_copies"]
        print(f"  near-duplicate groups (cosine >= {near['threshold']}): {groups}, extra rows {extra}")
    pre = m.get("pre_experience")
    if pre:
        train = pre.get("train", {})
        print(
            f"  pre-experience: {pre['sampled_rows']} rows from {pre['clusters_sampled']} of {pre['clusters']} "
            "clusters, "
            f"{train.get('step', '?')} SFT steps (final loss {train.get('loss', float('nan')):.3f}) -> {pre['model']}"
        )
    it = m.get("iterit")
    if it:
        print(f"  iterit: k {it['k']} of {it['rows']} rows per epoch, {it['strategy']}")
        for e in it["epochs"]:
            t = e.get("train", {})
            print(
                f"    epoch {e['epoch']}: re-scored {e['rescored']}, candidates (IFD < 1) {e.get('candidates', '-')}, "
                f"picked {e['picked']}, trained to step {t.get('step', '?')} (loss {t.get('loss', float('nan')):.3f})"
            )
        print(f"  model: {it['model']}")
    ist = m.get("iterselecttune")
    if ist:
        j = ist["judge"]
        print(f"  iterselecttune: diversity subset {ist['subset']} of {ist['rows']} rows, budget {ist['budget']}, "
              f"batch {ist['batch']}; stopped: {ist['stop']}")  # fmt: skip
        for r in ist["rounds"]:
            judged = r.get("judge")
            verdicts = ", ".join(f"{k} {v}" for k, v in sorted(judged["verdicts"].items())) if judged else ""
            print(
                f"    round {r['round']} ({r['kind']}): took {r['batch']} of {r['candidates']}, "
                f"+{r['hard_added']} hard (total {r['hard_total']})" + (f"; judge: {verdicts}" if judged else "")
            )
        print(f"  selected {ist['selected']}: {ist['rows_by_judge']} by the judge, "
              f"{ist['rows_by_classifier']} by the inference rounds; judge {j['model']}: {j['calls']} calls, "
              f"{j['judgements']} judgements "
              f"({j['judgements_if_every_candidate']} to judge every candidate), ${j['cost_usd']:.4f}")  # fmt: skip
    if (out / "selected.jsonl").exists() and not ist:
        above = "IFD >= 1" if it else "IFD > 1"
        print(f"  {above} (excluded) {c['ifd_above_1']}  passed {c['passed']}  selected {c['selected']}")
    where = result.uri.rstrip("/") if "://" in result.uri else str(out)  # a remote run's files are in the bucket
    for name in ("selected.jsonl", "scores.parquet", "rejected.jsonl", "report.html", "manifest.json", "config.yaml"):
        if (out / name).exists():
            print(f"  {where}/{name}")
    if demo and (out / "demo_corpus.jsonl").exists():
        print("  where each kind of pair in the demo corpus went:")
        for kind, fate in sorted(demo_breakdown(out).items()):
            print(f"    {kind:<12} " + ", ".join(f"{k}: {v}" for k, v in sorted(fate.items())))
    _print_top(out, m)


def _print_top(out: Path, manifest: dict, n: int = 3) -> None:
    """The highest-IFD selected rows: what the model found hardest to answer without its instruction."""
    if not (out / "selected.jsonl").exists() or not {S.SCORE_IFD, S.SELECTED} <= set(
        pq.read_schema(out / "scores.parquet").names
    ):
        return
    t = read_columns(out / "scores.parquet", [S.ID, S.SCORE_IFD, S.SELECTED])
    selected = t[S.SELECTED].to_numpy(zero_copy_only=False).astype(bool)
    ifd = np.where(selected, t[S.SCORE_IFD].to_numpy(zero_copy_only=False).astype(np.float64), -np.inf)
    top = np.argsort(-ifd, kind="stable")[:n]
    top = top[selected[top]]
    ids = t[S.ID].take(pa.array(top)).to_pylist()
    texts = texts_of(out, manifest, ids)  # only the n shown rows' text is read
    for i, rid in zip(top.tolist(), ids, strict=True):
        print(f"  top pick, IFD {ifd[i]:.3f}: {texts.get(rid, {}).get(S.INSTRUCTION, '')[:90]!r}")
