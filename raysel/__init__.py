"""raysel: pick the instruction-tuning data worth training on, with Ray. Importing it loads no engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from raysel.config import RunConfig
    from raysel.driver import RunResult


def select(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run selection as configured (the Python twin of `raysel select [--resume | --overwrite]`); see
    raysel.driver.run."""
    from raysel.driver import run

    return run(cfg, select=True, resume=resume, overwrite=overwrite)


__all__ = ["select", "__version__"]
