"""Agreement of two IFD scorers on the same rows: rank correlations, overlap of their selections, agreement on
the IFD <= 1 filter; each with a paired bootstrap percentile interval.

Rows either scorer could not score (NaN IFD) are left out of every statistic and counted apart. The selection
is raysel's own (raysel.select.topk.select_top_ifd: the top `ratio` of the rows with IFD <= 1), so "the small
scorer recovers X% of the large scorer's picks" means what `raysel select` would have picked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from raysel.agree import METRICS
from raysel.select.topk import select_top_ifd


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    """Lower end of the bootstrap percentile interval (NaN when not computed)."""
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant or n < 2."""
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (ties in either ranking accounted for); NaN when undefined."""
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.kendalltau(a, b, variant="b").statistic)


def top_overlap(small: np.ndarray, large: np.ndarray, ratio: float) -> tuple[float, float]:
    """(Jaccard of the two selections, share of the large scorer's picks the small one also picks)."""
    s = select_top_ifd(small, ratio=ratio).selected
    g = select_top_ifd(large, ratio=ratio).selected
    both, either, picked = int((s & g).sum()), int((s | g).sum()), int(g.sum())
    return (both / either if either else float("nan"), both / picked if picked else float("nan"))


def filter_agreement(small: np.ndarray, large: np.ndarray) -> float:
    """Share of rows both scorers put on the same side of the IFD <= 1 filter."""
    return float(np.mean((small <= 1.0) == (large <= 1.0))) if len(small) else float("nan")


def _all(small: np.ndarray, large: np.ndarray, ratio: float) -> np.ndarray:
    jac, rec = top_overlap(small, large, ratio)
    return np.array([spearman(small, large), kendall(small, large), jac, rec, filter_agreement(small, large)])


def bootstrap(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    *,
    rounds: int,
    seed: int,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of fn(a, b) (a vector of statistics) over `rounds` paired resamples of the rows."""
    rng = np.random.default_rng(seed)
    n = len(a)
    draws = np.array([fn(a[idx], b[idx]) for idx in (rng.integers(0, n, n) for _ in range(rounds))])
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a statistic undefined in every resample: NaN, no noise
        return np.nanpercentile(draws, tail, axis=0), np.nanpercentile(draws, 100 - tail, axis=0)


def agreement(
    small: np.ndarray, large: np.ndarray, *, ratio: float = 0.1, rounds: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, object]:
    """Every statistic of METRICS with its interval, on the rows both scorers scored; and the row counts."""
    small, large = np.asarray(small, dtype=np.float64), np.asarray(large, dtype=np.float64)
    if small.shape != large.shape:
        raise ValueError(f"the two scorers scored different rows: {small.shape} vs {large.shape}")
    ok = np.isfinite(small) & np.isfinite(large)
    s, g = small[ok], large[ok]
    values = _all(s, g, ratio)
    low = high = np.full(len(METRICS), np.nan)
    if rounds > 0 and len(s) >= 2:
        low, high = bootstrap(lambda x, y: _all(x, y, ratio), s, g, rounds=rounds, seed=seed, level=level)
    out: dict[str, object] = {
        "rows": int(len(small)), "both_scored": int(ok.sum()),
        "unscored_small": int((~np.isfinite(small)).sum()), "unscored_large": int((~np.isfinite(large)).sum()),
        "ratio": ratio, "bootstrap_rounds": rounds, "level": level,
    }  # fmt: skip
    for i, name in enumerate(METRICS):
        out[name] = Estimate(float(values[i]), float(low[i]), float(high[i])).to_dict()
    return out


def verdict(result: dict[str, object]) -> str:
    """One line: how much of the large scorer's selection the small one recovers, and the rank correlation."""
    rec, rho = result["top_recall"], result["spearman"]
    ratio = result["ratio"]

    def pct(e: dict[str, float]) -> str:
        if np.isnan(e["value"]):
            return "n/a"
        interval = "" if np.isnan(e["low"]) else f" [{e['low']:.0%}, {e['high']:.0%}]"
        return f"{e['value']:.0%}{interval}"

    interval = "" if np.isnan(rho["low"]) else f" [{rho['low']:.2f}, {rho['high']:.2f}]"
    rho_text = "n/a" if np.isnan(rho["value"]) else f"{rho['value']:.2f}{interval}"
    return (
        f"the small scorer recovers {pct(rec)} of the large scorer's top {ratio * 100:g}%; "
        f"Spearman {rho_text} on {result['both_scored']} rows"
    )
