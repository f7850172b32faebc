"""The fine-tuning LR schedule: transformers' warmup + cosine, with a warmup that never covers the last step."""

from __future__ import annotations

import pytest
import torch

from raysel.config import TrainConfig
from raysel.train.sft import cosine_schedule


def _lrs(total: int, ratio: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = cosine_schedule(opt, TrainConfig(lr=1e-3, warmup_ratio=ratio), total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_a_one_step_run_trains_at_the_full_rate() -> None:
    assert _lrs(1, 0.03) == [pytest.approx(1e-3)]  # transformers' own warmup would give [0.0]: no training at all


def test_longer_runs_keep_the_transformers_schedule() -> None:
    lrs = _lrs(100, 0.03)  # ceil(3.0) = 3 warmup steps: 0, 1/3, 2/3 of the rate, then cosine to ~0
    assert lrs[:4] == [0.0, pytest.approx(1e-3 / 3), pytest.approx(2e-3 / 3), pytest.approx(1e-3)]
    assert lrs[-1] < 1e-6 and lrs == sorted(lrs[:4]) + lrs[4:]
    assert _lrs(2, 0.5) == [0.0, pytest.approx(1e-3)]
