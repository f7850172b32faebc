"""The selection methods, one module each, and the registry the config, CLI, driver, outputs and report consult.

A method is a MethodSpec here (what it is called, what select.ratio means for it and its default, the column
its ranking is read from) plus a module exposing METHOD, an object with the raysel.methods.base.Method
protocol. Adding a method is one module and one line in METHODS. Importing this package loads no engine and
none of the method modules: MethodSpec.load imports the implementation when a run needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raysel import schema as S
from raysel.select.topk import DEFAULT_RATIO

if TYPE_CHECKING:
    from raysel.methods.base import Method


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    """One line for --help."""
    ratio_means: str
    """What select.ratio is for this method (--help)."""
    default_ratio: float
    """select.ratio when neither select.ratio nor select.k is given."""
    ratio_in_config: bool
    """Whether that default is written into the resolved config (config.yaml); IFD applies it at selection
    time and leaves select.ratio unset, as its runs always have."""
    rank_column: str
    """The score the method ranks by (report plots, examples)."""
    score_template: str | None
    """score.template when the user gives none (None: the score section's own default)."""
    module: str
    """The module whose METHOD implements it."""
    no_pre_experience: str | None = None
    """Why pre_experience cannot be enabled with this method (None: it can)."""

    def ratio(self, ratio: float | None) -> float:
        """select.ratio as this method reads it: the given value, else the method's default."""
        return self.default_ratio if ratio is None else ratio

    def load(self) -> Method:
        return importlib.import_module(self.module).METHOD


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec(
            name="ifd",
            summary="Cherry / IFD (Li et al. 2024), optionally with a pre-experienced scorer",
            ratio_means="keep this fraction of the rows with IFD <= 1",
            default_ratio=DEFAULT_RATIO,
            ratio_in_config=False,
            rank_column=S.SCORE_IFD,
            score_template=None,
            module="raysel.methods.ifd",
        ),
        MethodSpec(
            name="iterit",
            summary="IterIT (Jia et al. 2024): IFD x TF-IDF, re-scored by the model being tuned each epoch",
            ratio_means="k = floor(ratio x rows scored) picks per epoch",
            default_ratio=0.05,
            ratio_in_config=True,
            rank_column=S.SCORE_IFD_PPL,
            score_template="iterit",
            module="raysel.methods.iterit",
            no_pre_experience="iterit trains its own model each epoch",
        ),
        MethodSpec(
            name="iterselecttune",
            summary="IterSelectTune (Song et al. 2024): judge-labelled hard rows, a classifier, similarity",
            ratio_means="the budget: this fraction of the rows joins the hard set",
            default_ratio=0.2,
            ratio_in_config=True,
            rank_column=S.SCORE_IST,
            score_template=None,
            module="raysel.methods.iterselecttune",
            no_pre_experience="iterselecttune does not score IFD",
        ),
    )
}
"""Every method raysel runs, by select.method."""


def method_spec(name: str) -> MethodSpec:
    """The registry entry of `name` (KeyError names the known methods)."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown selection method {name!r}: one of {', '.join(METHODS)}") from None


def ratio_help() -> str:
    """select.ratio for every method, with its default (CLI help)."""
    return "; ".join(f"{m.name}: {m.ratio_means} (default {m.default_ratio})" for m in METHODS.values())
