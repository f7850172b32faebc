"""Pairwise verdicts -> win / tie / lose -> the winning score.

The judge (raysel.judge, the same one IterSelectTune uses) compares model A's and model B's answers twice,
once in each order, and `judge.combine` joins the two orders: A wins when an order prefers A and none
prefers B, loses in the mirror case, ties otherwise. That is the table of the IFD authors' released
evaluation (tianyi-lab/Cherry_LLM, evaluation/generation/review_eval_score.py, `get_scores_all`: win+win,
win+tie and tie+win are wins; win+lose, lose+win and tie+tie ties; the rest losses). Model A's answer
takes the judge's "reference" slot, model B's the "model" slot.

Winning score = (wins - losses) / prompts + 1, in [0, 2]; 1 means as good as B. The IFD paper (Li et al.,
NAACL 2024) defines the two-order win / tie / lose rule in section 3.3.1 ("Pair-wise Comparison") and the
score, (Num(Win) - Num(Lose)) / Num(All) + 1 counted over all five test sets, in section 4.1 ("Main
Results", Figure 3); the released code's `cal_rate` pools the test sets' prompts the same way. IterSelectTune
(Song et al. 2024) reports a winning score on the same test sets; raysel follows the IFD paper's definition
(its text is the one checked). Prompts the judge could not score (an unparsed
reply, the budget) are counted apart and left out of the score, never counted as ties.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from raysel.judge import RowVerdict

WIN, TIE, LOSE, UNJUDGED = "win", "tie", "lose", "unjudged"
_FOR_A = {"reference": WIN, "model": LOSE, "tie": TIE}


def verdict_for_a(row: RowVerdict | str) -> str:
    """Model A's verdict on one prompt from the judge's two-order verdict (A in the "reference" slot)."""
    return _FOR_A.get(row if isinstance(row, str) else row.verdict, UNJUDGED)


@dataclass(frozen=True)
class Tally:
    win: int
    tie: int
    lose: int
    unjudged: int = 0

    @property
    def total(self) -> int:
        """Prompts judged (the unjudged are not in the score)."""
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float:
        """(wins - losses) / prompts + 1; NaN for no prompt judged."""
        return (self.win - self.lose) / self.total + 1 if self.total else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"win": self.win, "tie": self.tie, "lose": self.lose, "total": self.total,
                "unjudged": self.unjudged, "winning_score": self.winning_score}  # fmt: skip


def tally(verdicts: Iterable[str]) -> Tally:
    counts = {WIN: 0, TIE: 0, LOSE: 0, UNJUDGED: 0}
    for v in verdicts:
        if v not in counts:
            raise ValueError(f"a verdict is {WIN!r}, {TIE!r}, {LOSE!r} or {UNJUDGED!r}, not {v!r}")
        counts[v] += 1
    return Tally(counts[WIN], counts[TIE], counts[LOSE], counts[UNJUDGED])


def per_testset(verdicts: Mapping[str, Iterable[str]]) -> dict[str, Tally]:
    """A tally per test set, plus "all": every prompt pooled (the papers' headline number)."""
    out = {name: tally(v) for name, v in verdicts.items()}
    out["all"] = Tally(*(sum(getattr(t, f) for t in out.values()) for f in (WIN, TIE, LOSE, UNJUDGED)))
    return out


def results_table(pairs: Mapping[str, Mapping[str, Tally]], heldout_loss: Mapping[str, float] | None = None) -> str:
    """Markdown: one row per comparison ("sel vs full") and test set, the pooled "all" last; then the
    held-out loss of each fine-tuned model when given."""
    lines = [
        "| comparison | test set | win | tie | lose | unjudged | winning score |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for pair, sets in pairs.items():
        for name in [*(n for n in sets if n != "all"), *(["all"] if "all" in sets else [])]:
            t = sets[name]
            shown = "all (pooled)" if name == "all" else name
            score = f"{t.winning_score:.3f}" if t.total else "n/a (none judged)"
            lines.append(f"| {pair} | {shown} | {t.win} | {t.tie} | {t.lose} | {t.unjudged} | {score} |")
    if heldout_loss:
        lines += ["", "| model | held-out loss |", "|---|---:|"]
        lines += [f"| {name} | {loss:.4f} |" for name, loss in heldout_loss.items()]
    return "\n".join(lines) + "\n"
