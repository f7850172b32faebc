"""IFD selection as the paper's data_by_IFD.py does it: drop IFD > 1, keep the top k of the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SELECTED = "selected"
UNSCORED = "unscored"
IFD_ABOVE_1 = "ifd_above_1"
BELOW_CUTOFF = "below_cutoff"
DEFAULT_RATIO = 0.1
"""The fraction kept when neither ratio nor k is given (data_by_IFD.py's default; IFD's in raysel.methods)."""


@dataclass(frozen=True)
class Selection:
    selected: np.ndarray
    """bool per row."""
    reason: np.ndarray
    """Per row: selected | unscored | ifd_above_1 | below_cutoff."""
    rank: np.ndarray
    """1-based rank by IFD among rows that passed the filter (0 for the others)."""
    passed: int
    """Rows with a finite IFD <= 1 (the pool that ratio is a fraction of)."""


def select_top_ifd(ifd: np.ndarray, *, ratio: float | None = None, k: int | None = None) -> Selection:
    """Keep the highest-IFD rows among those with IFD <= 1.

    k = int(ratio x passed) as data_by_IFD.py counts it, or an absolute k (capped at passed). Ties are
    broken by input position (earlier first), so the result is a pure function of the scores.
    """
    ifd = np.asarray(ifd)
    if ifd.dtype != np.float32:  # float32 scores (as scored and stored) are ranked as they are: no copy
        ifd = ifd.astype(np.float64, copy=False)
    n = len(ifd)
    finite = np.isfinite(ifd)
    ok = finite & (ifd <= 1.0)
    passed = int(ok.sum())
    if k is None:
        k = int(passed * (DEFAULT_RATIO if ratio is None else ratio))
    k = min(k, passed)
    pool = np.flatnonzero(ok)
    order = pool[np.argsort(-ifd[pool], kind="stable")]  # IFD descending; stable: then position ascending
    del pool
    rank = np.zeros(n, dtype=np.int64)
    rank[order] = np.arange(1, passed + 1)
    selected = np.zeros(n, dtype=bool)
    selected[order[:k]] = True
    reason = np.full(n, BELOW_CUTOFF, dtype=object)
    reason[~finite] = UNSCORED
    reason[finite & ~ok] = IFD_ABOVE_1
    reason[selected] = SELECTED
    return Selection(selected=selected, reason=reason, rank=rank, passed=passed)
