"""benchmarks/gpu_score.py on CPU, shrunken models: every requested mode runs; fp32 batching ranks as the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data"
MODES = ["loop", "padded", "packed", "packed-bf16"]


@pytest.mark.slow  # ~12 s here: the benchmark script in a subprocess, 4 modes
def test_gpu_score_bench_cpu_shrink(tmp_path: Path) -> None:
    if not (DATA / "alpaca_gpt4_1k.json").is_file():
        pytest.skip(f"{DATA} is absent")
    out = tmp_path / "gpu_score.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_score.py"), "--shrink", "--rows", "12"]
    cmd += ["--shapes", "qwen2.5-0.5b", "--modes", ",".join(MODES), "--device", "cpu", "--warmup", "2"]
    proc = subprocess.run(cmd + ["--json", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    modes = result["shapes"]["qwen2.5-0.5b"]["modes"]
    assert set(modes) == set(MODES)
    for name in MODES:
        assert "error" not in modes[name], modes[name]
        assert modes[name]["rows_per_s"] > 0 and modes[name]["tokens_per_s"] > 0
    for name in ("padded", "packed"):
        assert modes[name]["spearman_vs_loop"] >= 0.999, modes[name]
    assert result["shapes"]["qwen2.5-0.5b"]["rows_scored"] >= 10
