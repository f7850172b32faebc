"""The manifest's "scorer" section: which model scored, which will be trained, and the agreement run that
says the first can stand in for the second.

The agreement run is select.agreement when given. Otherwise raysel looks in the run's lineage: the output
directory's parent (local or in a bucket), where a project keeps its runs side by side (runs/agree-small-vs-7b,
runs/select-10pct). The newest `raysel agree` directory whose pair is (score.model, target model) is used,
and named in the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysel.agree import METRICS
from raysel.config import ConfigError, RunConfig, identity
from raysel.io import json_safe

COPIED = ("verdict", "rows", "both_scored", "ratio", *METRICS)


def _pair(agreement: dict[str, Any]) -> tuple[Any, Any]:
    return agreement.get("small", {}).get("model"), agreement.get("large", {}).get("model")


def _as_json(obj: Any) -> Any:
    """obj as agreement.json holds it after a round trip (tuples as lists, NaN as null)."""
    return json.loads(json.dumps(json_safe(obj), default=str))


def _target(cfg: RunConfig) -> str:
    return cfg.select.target_model or cfg.score.model


def _fs(uri: str) -> tuple[Any, str]:
    """pyarrow FileSystem and path of a local or remote (s3://, gs://) directory."""
    import pyarrow.fs as pafs

    from raysel.run.rundir import is_remote

    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), Path(uri).resolve().as_posix()


def _read(fs: Any, path: str) -> dict[str, Any] | None:
    """An agreement.json's content, or None when it is absent or not an agreement."""
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _discover(cfg: RunConfig) -> dict[str, Any] | None:
    """The newest agreement run for this pair beside the output directory (local or in a bucket)."""
    import pyarrow.fs as pafs

    fs, out = _fs(cfg.output)
    parent = out.rstrip("/").rpartition("/")[0]
    if not parent:
        return None
    prefix = cfg.output.rstrip("/").rpartition("/")[0] if "://" in cfg.output else parent
    pair, found = (cfg.score.model, _target(cfg)), []
    try:
        siblings = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return None  # an unlistable parent (a bucket root without list rights): nothing to discover
    for info in siblings:
        if info.type != pafs.FileType.Directory or info.path.rstrip("/") == out.rstrip("/"):
            continue
        path = f"{info.path}/agreement.json"
        stat = fs.get_file_info(path)
        agreement = _read(fs, path) if stat.type == pafs.FileType.File else None
        if agreement is not None and _pair(agreement) == pair:
            found.append((stat.mtime_ns or 0, f"{prefix}/{info.base_name}", agreement))
    if not found:
        return None
    _, where, agreement = max(found, key=lambda f: (f[0], f[1]))
    print(f"[raysel] scorer agreement: using {where} ({pair[0]} standing in for {pair[1]})")
    return agreement | {"dir": where}


def read_agreement(cfg: RunConfig) -> dict[str, Any] | None:
    """select.agreement's agreement.json (checked before any work); else one found in the lineage; else None.
    The returned dict carries the directory under "dir"."""
    if cfg.select.agreement is None:
        return _discover(cfg)
    fs, root = _fs(cfg.select.agreement)
    agreement = _read(fs, f"{root.rstrip('/')}/agreement.json")
    if agreement is None:
        where = f"{cfg.select.agreement.rstrip('/')}/agreement.json"
        raise ConfigError(
            f"select.agreement: {where} does not exist or is not JSON; give the output directory of a finished "
            "`raysel agree` run"
        )
    return agreement | {"dir": cfg.select.agreement}


def scorer_section(cfg: RunConfig, agreement: dict[str, Any] | None) -> dict[str, Any]:
    """Scorer and target models; the agreement's figures, and whether its pair is this run's."""
    target = _target(cfg)
    out: dict[str, Any] = {"model": cfg.score.model, "target_model": target, "same": target == cfg.score.model}
    if agreement is not None:
        pair = _pair(agreement)
        measured_on = agreement.get("data", {}).get("input")
        settings = agreement.get("small", {}).get("scoring")
        out["agreement"] = {"dir": agreement["dir"], "small": pair[0], "large": pair[1],
                            "matches": pair == (cfg.score.model, target), "corpus": measured_on,
                            "same_corpus": measured_on == cfg.data.input,
                            "same_scoring": settings == _as_json(identity(cfg.score)),
                            **{k: agreement[k] for k in COPIED if k in agreement}}  # fmt: skip
        a = out["agreement"]
        if not a["matches"]:
            print(f"[raysel] warning: select.agreement compares {pair[0]} with {pair[1]}, not this run's scorer "
                  f"{cfg.score.model} with target {target}")  # fmt: skip
        if not a["same_corpus"]:
            print(f"[raysel] note: the scorer agreement was measured on {measured_on}, this run selects from "
                  f"{cfg.data.input}")  # fmt: skip
        if not a["same_scoring"]:
            print("[raysel] note: the scorer agreement's small scorer had other settings (template, max_length, "
                  f"backend, dtype ...) than this run's score section; see {a['dir']}/config.yaml")  # fmt: skip
    return out
