"""Pairwise verdicts -> win / tie / lose -> the winning score.

The judge compares the two models' answers twice, once in each order (position bias). Per prompt, each
order says model A won (+1), tied (0) or lost (-1); the prompt is a win for A when the two orders sum to
more than zero, a tie at zero, a loss below. This is the table of the IFD authors' released evaluation
(tianyi-lab/Cherry_LLM, evaluation/generation/review_eval_score.py, `get_scores_all`: win+win, win+tie
and tie+win are wins; win+lose, lose+win and tie+tie are ties; the rest losses).

Winning score = (wins - losses) / prompts + 1, in [0, 2]; 1 means as good as the baseline (IFD paper,
Li et al. NAACL 2024, the evaluation-metric paragraph; the released code's `cal_rate`, which pools all
test sets). IterSelectTune (Song et al. 2024) reports the same score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WIN, TIE, LOSE = "win", "tie", "lose"


def order_outcome(score_a: float, score_b: float) -> int:
    """+1 when the judge scored A higher in this order, 0 on a tie, -1 when lower."""
    return (score_a > score_b) - (score_a < score_b)


def combine(forward: int, reverse: int) -> str:
    """The prompt's verdict for A from its two orders' outcomes (each +1 / 0 / -1, already from A's side)."""
    for v in (forward, reverse):
        if v not in (-1, 0, 1):
            raise ValueError(f"an order's outcome is +1, 0 or -1, not {v!r}")
    total = forward + reverse
    return WIN if total > 0 else LOSE if total < 0 else TIE


@dataclass(frozen=True)
class Tally:
    win: int
    tie: int
    lose: int

    @property
    def total(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float:
        """(wins - losses) / prompts + 1; NaN for no prompts."""
        return (self.win - self.lose) / self.total + 1 if self.total else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"win": self.win, "tie": self.tie, "lose": self.lose, "total": self.total,
                "winning_score": self.winning_score}  # fmt: skip


def tally(verdicts: Iterable[str]) -> Tally:
    counts = {WIN: 0, TIE: 0, LOSE: 0}
    for v in verdicts:
        if v not in counts:
            raise ValueError(f"a verdict is {WIN!r}, {TIE!r} or {LOSE!r}, not {v!r}")
        counts[v] += 1
    return Tally(counts[WIN], counts[TIE], counts[LOSE])


def per_testset(verdicts: Mapping[str, Iterable[str]]) -> dict[str, Tally]:
    """A tally per test set, plus "all": every prompt pooled (the papers' headline number)."""
    out = {name: tally(v) for name, v in verdicts.items()}
    out["all"] = Tally(*(sum(getattr(t, f) for t in out.values()) for f in (WIN, TIE, LOSE)))
    return out
