"""The run kernel every command opens (raysel.run.context), without Ray: the directory is claimed, stale results
are removed, steps are timed into the context and land under the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysel.config import ConfigError
from raysel.run import context


@pytest.fixture
def no_ray(monkeypatch) -> None:
    monkeypatch.setattr(context, "init_ray", lambda: {"nodes": 0})


def test_context_claims_the_directory_and_wires_the_steps(tmp_path: Path, no_ray) -> None:
    out = tmp_path / "run"
    with context.run_context(str(out), "a: 1\n", resume=False, overwrite=False, stale=["manifest.json"]) as ctx:
        assert ctx.out == out and (out / "config.yaml").read_text() == "a: 1\n"
        assert ctx.cluster == {"nodes": 0} and len(ctx.code) == 16 and ctx.ray_start >= 0
        (out / "manifest.json").write_text("{}")
        ctx.steps().run("s", {"k": 1}, lambda p: p.write_text("x") or 1, suffix=".txt")
        ctx.steps("round_0").run("s", {"k": 1}, lambda p: p.write_text("y") or 1, suffix=".txt")
    assert (out / "steps" / "s.txt").read_text() == "x" and (out / "round_0" / "s.txt").read_text() == "y"
    assert {"s", "round_0/s"} <= set(ctx.timings)
    assert ctx.storage_uri(out / "train") == str((out / "train").resolve())
    # the same config continues the run, and an earlier run's manifest is removed before any work
    with context.run_context(str(out), "a: 1\n", resume=False, overwrite=False, stale=["manifest.json"]) as ctx:
        assert not (out / "manifest.json").exists()
        ctx.steps().run("s", {"k": 1}, lambda p: pytest.fail("a finished step runs again"), suffix=".txt")
    # another config is refused before anything is touched
    with pytest.raises(ConfigError, match="different config"):
        with context.run_context(str(out), "a: 2\n", resume=False, overwrite=False):
            pytest.fail("entered")


def test_the_code_hash_follows_the_code_not_the_presentation() -> None:
    assert context.code_hash() == context.code_hash()
    assert {"report.py", "html.py", "summary.py"} <= context.PRESENTATION
    assert (context.PACKAGE / "driver.py").is_file()
