"""Every job file under jobs/ (recursive) loads and validates, and opens with a header naming its launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysel.config import AgreeConfig, EvalConfig, RunConfig, load_agree_config, load_config, load_eval_config

JOBS = Path(__file__).resolve().parents[1] / "jobs"
JOB_FILES = sorted(JOBS.rglob("*.yaml")) if JOBS.is_dir() else []


def test_there_are_job_files() -> None:
    assert JOB_FILES, f"no jobs/**/*.yaml under {JOBS}"


@pytest.mark.parametrize("path", JOB_FILES, ids=[str(p.relative_to(JOBS)) for p in JOB_FILES])
def test_job_loads(path: Path) -> None:
    if path.parent.name == "eval":  # `raysel eval` files
        ev = load_eval_config(path)
        assert isinstance(ev, EvalConfig) and ev.output and len(ev.pairs()) >= 1
        return
    if path.parent.name == "agree":  # `raysel agree` files
        ag = load_agree_config(path)
        assert isinstance(ag, AgreeConfig) and ag.output and ag.data.input and ag.small.model != ag.large.model
        return
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.output and cfg.data.input


@pytest.mark.parametrize("path", JOB_FILES, ids=[str(p.relative_to(JOBS)) for p in JOB_FILES])
def test_job_header(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("#"), f"{path.name}: the first line must be a comment header"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("raysel" in line for line in header), f"{path.name}: the header must give the raysel launch command"
