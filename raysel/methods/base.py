"""What a selection method is given and what it returns (raysel.driver runs every method through this)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ray.data

    from raysel.config import RunConfig
    from raysel.methods import MethodSpec
    from raysel.run.context import RunContext
    from raysel.select.topk import Selection


@dataclass(frozen=True)
class Rows:
    """The rows a method selects from: those read and parsed, less the duplicates dropped."""

    dataset: Callable[[], ray.data.Dataset]
    """Builds the dataset of the rows, in input order (each call reads them again: nothing is held)."""
    key: dict[str, Any]
    """Identifies them (input files, data settings, code, the duplicates dropped): every step key starts here."""
    count: int
    """How many there are."""


@dataclass(frozen=True)
class MethodResult:
    scored: Path
    """Every row with the method's columns, in the order of Rows.dataset (the run's scores.parquet comes from it)."""
    selection: Selection | None
    """The method's choice; None: the top select.ratio of `scored` by IFD among rows with IFD <= 1."""
    sections: dict[str, Any]
    """The method's manifest sections, in order (e.g. "iterit", "resources")."""


class Method(Protocol):
    spec: MethodSpec

    def check(self, cfg: RunConfig) -> Any:
        """Read and check what the method needs from outside the corpus before the run directory is claimed or
        Ray starts (a wrong path fails in a second, not after the scoring); run() gets it back."""
        ...

    def resources(self, cfg: RunConfig) -> dict[str, Any]:
        """Every actor pool the method starts, as resolved from the cluster (the manifest's "resources")."""
        ...

    def run(self, ctx: RunContext, cfg: RunConfig, rows: Rows, checked: Any) -> MethodResult:
        """Run (or resume) the method's steps in the run's context."""
        ...


class MethodBase:
    """What most methods share: nothing to check before the run, and manifest sections of the same shape."""

    spec: MethodSpec

    def check(self, cfg: RunConfig) -> Any:
        return None

    def resources(self, cfg: RunConfig) -> dict[str, Any]:
        raise NotImplementedError

    def result(self, cfg: RunConfig, scored: Path, selection: Selection | None, section: Any) -> MethodResult:
        """The method's result, its manifest sections being its own (under its name) and then its pools."""
        return MethodResult(scored, selection, {self.spec.name: section, "resources": self.resources(cfg)})
