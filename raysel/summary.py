"""The short report printed after a run: counts, outputs, and for the demo where each kind of pair went."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from raysel import schema as S
from raysel.driver import RunResult


def demo_breakdown(out: Path) -> dict[str, Counter]:
    """kind (clean | duplicate | mismatched, from the demo corpus) -> Counter of what happened to it."""
    kinds: dict[str, str] = {}
    for line in (out / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rid = S.row_id(rec["instruction"], rec["input"], rec["output"])
        kinds.setdefault(rid, rec["kind"])  # a duplicate's first copy is its clean original
    fate: dict[str, Counter] = {}
    scores = pq.read_table(out / "scores.parquet", columns=[S.ID, S.SOURCE, S.SELECT_REASON]).to_pylist()
    by_source = {r[S.SOURCE]: r for r in scores}
    for n, line in enumerate((out / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        rec = json.loads(line)
        row = by_source.get(f"{out / 'demo_corpus.jsonl'}:{n}")
        what = row[S.SELECT_REASON] if row else "rejected (duplicate or bad input)"
        fate.setdefault(rec["kind"], Counter())[what] += 1
    return fate


def print_summary(result: RunResult, *, demo: bool = False) -> None:
    m, out = result.manifest, result.output
    c = m["counts"]
    print(f"\nraysel: run directory {out}")
    print(
        f"  read {c['read']}  rejected {c['rejected_total']} (bad input {c['rejected_input']}, "
        f"duplicates {c['duplicates']}, unscorable {c['unscorable']})  scored {c['scored']}"
    )
    print(f"  IFD > 1 (excluded) {c['ifd_above_1']}  passed {c['passed']}  selected {c['selected']}")
    for name in ("selected.jsonl", "scores.parquet", "rejected.jsonl", "manifest.json", "config.yaml"):
        if (out / name).exists():
            print(f"  {out / name}")
    if demo and (out / "demo_corpus.jsonl").exists():
        print("  where each kind of pair went:")
        for kind, fate in sorted(demo_breakdown(out).items()):
            print(f"    {kind:<11} " + ", ".join(f"{k}: {v}" for k, v in sorted(fate.items())))
