"""The manifest's "scorer" section: which model scored, which will be trained, and the agreement run that
says the first can stand in for the second (select.agreement)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysel.config import ConfigError, RunConfig

COPIED = ("verdict", "rows", "both_scored", "ratio", "spearman", "kendall", "top_jaccard", "top_recall",
          "filter_agreement")  # fmt: skip


def read_agreement(cfg: RunConfig) -> dict[str, Any] | None:
    """select.agreement's agreement.json (checked before any work), or None when not given."""
    if cfg.select.agreement is None:
        return None
    path = Path(cfg.select.agreement) / "agreement.json"
    if not path.is_file():
        raise ConfigError(
            f"select.agreement: {path} does not exist; give the output directory of a finished `raysel agree` run"
        )
    return json.loads(path.read_text())


def scorer_section(cfg: RunConfig, agreement: dict[str, Any] | None) -> dict[str, Any]:
    """Scorer and target models; the agreement's figures, and whether its pair is this run's."""
    target = cfg.select.target_model or cfg.score.model
    out: dict[str, Any] = {"model": cfg.score.model, "target_model": target, "same": target == cfg.score.model}
    if agreement is not None:
        pair = (agreement.get("small", {}).get("model"), agreement.get("large", {}).get("model"))
        out["agreement"] = {"dir": cfg.select.agreement, "small": pair[0], "large": pair[1],
                            "matches": pair == (cfg.score.model, target),
                            **{k: agreement[k] for k in COPIED if k in agreement}}  # fmt: skip
        if not out["agreement"]["matches"]:
            print(f"[raysel] warning: select.agreement compares {pair[0]} with {pair[1]}, not this run's scorer "
                  f"{cfg.score.model} with target {target}")  # fmt: skip
    return out
