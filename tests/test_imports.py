"""Importing raysel's light modules must not pull in torch, transformers, vllm or ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "vllm", "ray")


def _loaded_after(imports: str) -> list[str]:
    code = f"import {imports}; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return eval(proc.stdout.strip().splitlines()[-1])  # a printed list of str


def test_light_modules_load_no_engine() -> None:
    mods = (
        "raysel, raysel.config, raysel.cli, raysel.readers, raysel.select.topk, raysel.templates, "
        "raysel.ifd, raysel.schema"
    )
    assert _loaded_after(mods) == []


@pytest.mark.parametrize(
    "module",
    ["raysel", "raysel.stages.base", "raysel.stages.score", "raysel.backends.base", "raysel.driver", "raysel.methods",
     "raysel.methods.ifd", "raysel.methods.iterit", "raysel.methods.iterselecttune", "raysel.run.context",
     "raysel.judge", "raysel.html", "raysel.report"],
)  # fmt: skip
def test_module_loads_no_engine(module: str) -> None:
    assert _loaded_after(module) == []
