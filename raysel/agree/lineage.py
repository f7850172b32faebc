"""The manifest's "scorer" section: which model scored, which will be trained, and the agreement run that
says the first can stand in for the second.

The agreement run is select.agreement when given. Otherwise raysel looks in the run's lineage, the output
directory's parent, where a project keeps its runs side by side (runs/agree-small-vs-7b, runs/select-10pct):
the newest `raysel agree` directory whose pair is (score.model, target model) is used, and named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysel.config import ConfigError, RunConfig

COPIED = ("verdict", "rows", "both_scored", "ratio", "spearman", "kendall", "top_jaccard", "top_recall",
          "filter_agreement")  # fmt: skip


def _pair(agreement: dict[str, Any]) -> tuple[Any, Any]:
    return agreement.get("small", {}).get("model"), agreement.get("large", {}).get("model")


def _target(cfg: RunConfig) -> str:
    return cfg.select.target_model or cfg.score.model


def _discover(cfg: RunConfig) -> dict[str, Any] | None:
    """The newest agreement run for this pair beside the output directory (local outputs only)."""
    if "://" in cfg.output:
        return None
    out = Path(cfg.output).resolve()
    pair, found = (cfg.score.model, _target(cfg)), []
    for path in out.parent.glob("*/agreement.json"):
        if path.parent == out:
            continue
        try:
            agreement = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # an unreadable file beside the run is not this run's concern
        if isinstance(agreement, dict) and _pair(agreement) == pair:
            found.append((path.stat().st_mtime, str(path.parent), agreement))
    if not found:
        return None
    _, where, agreement = max(found, key=lambda f: (f[0], f[1]))
    print(f"[raysel] scorer agreement: using {where} ({pair[0]} standing in for {pair[1]})")
    return agreement | {"dir": where}


def read_agreement(cfg: RunConfig) -> dict[str, Any] | None:
    """select.agreement's agreement.json (checked before any work); else one found in the lineage; else None.
    The returned dict carries the directory under "dir"."""
    if cfg.select.method != "ifd":
        return None
    if cfg.select.agreement is None:
        return _discover(cfg)
    path = Path(cfg.select.agreement) / "agreement.json"
    if not path.is_file():
        raise ConfigError(
            f"select.agreement: {path} does not exist; give the output directory of a finished `raysel agree` run"
        )
    return json.loads(path.read_text()) | {"dir": cfg.select.agreement}


def scorer_section(cfg: RunConfig, agreement: dict[str, Any] | None) -> dict[str, Any]:
    """Scorer and target models; the agreement's figures, and whether its pair is this run's."""
    target = _target(cfg)
    out: dict[str, Any] = {"model": cfg.score.model, "target_model": target, "same": target == cfg.score.model}
    if agreement is not None:
        pair = _pair(agreement)
        out["agreement"] = {"dir": agreement["dir"], "small": pair[0], "large": pair[1],
                            "matches": pair == (cfg.score.model, target),
                            **{k: agreement[k] for k in COPIED if k in agreement}}  # fmt: skip
        if not out["agreement"]["matches"]:
            print(f"[raysel] warning: select.agreement compares {pair[0]} with {pair[1]}, not this run's scorer "
                  f"{cfg.score.model} with target {target}")  # fmt: skip
    return out
