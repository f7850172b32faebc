"""Unit tests for raysel.ifd: IFD arithmetic on hand-built TokenLoss values, reasons, direct budget."""

from __future__ import annotations

import math

import pytest

from raysel.backends.base import TokenLoss
from raysel.ifd import IfdScore, direct_budget, ifd_score


def test_ifd_arithmetic() -> None:
    cond = TokenLoss(nll_sum=6.0, n_tokens=4, prompt_tokens=20)
    direct = TokenLoss(nll_sum=10.0, n_tokens=5, prompt_tokens=3)
    s = ifd_score(cond, direct, max_length=512)
    assert isinstance(s, IfdScore)
    assert s.loss_cond == pytest.approx(1.5)
    assert s.loss_direct == pytest.approx(2.0)
    assert s.ifd == pytest.approx(0.75)
    assert s.ppl_cond == pytest.approx(math.exp(1.5))
    assert s.ppl_direct == pytest.approx(math.exp(2.0))
    assert s.n_answer_tokens == 4
    assert s.prompt_tokens == 20
    assert s.reject_reason == ""


def test_ifd_above_one_is_kept_as_a_score() -> None:
    s = ifd_score(TokenLoss(9.0, 3, 5), TokenLoss(3.0, 3, 2), max_length=64)
    assert s.ifd == pytest.approx(3.0) and s.reject_reason == ""


def _unscored(s: IfdScore) -> bool:
    return all(math.isnan(v) for v in (s.loss_cond, s.loss_direct, s.ifd, s.ppl_cond, s.ppl_direct))


@pytest.mark.parametrize("prompt_tokens", [64, 65, 1000])
def test_prompt_fills_window(prompt_tokens: int) -> None:
    s = ifd_score(TokenLoss(0.0, 0, prompt_tokens), TokenLoss(0.0, 0, 3), max_length=64)
    assert _unscored(s)
    assert "max_length" in s.reject_reason and "prompt fills the window" in s.reject_reason
    assert str(prompt_tokens) in s.reject_reason
    assert s.prompt_tokens == prompt_tokens and s.n_answer_tokens == 0


def test_prompt_one_below_window_with_answer_is_scored() -> None:
    s = ifd_score(TokenLoss(2.0, 1, 63), TokenLoss(4.0, 1, 3), max_length=64)
    assert s.reject_reason == "" and s.ifd == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("cond", "direct"),
    [(TokenLoss(0.0, 0, 10), TokenLoss(5.0, 2, 3)), (TokenLoss(5.0, 2, 10), TokenLoss(0.0, 0, 3))],
)
def test_zero_answer_tokens(cond: TokenLoss, direct: TokenLoss) -> None:
    s = ifd_score(cond, direct, max_length=512)
    assert _unscored(s)
    assert s.reject_reason == "no answer tokens to score"


def test_zero_direct_loss_is_undefined() -> None:
    s = ifd_score(TokenLoss(1.0, 2, 10), TokenLoss(0.0, 2, 3), max_length=512)
    assert _unscored(s) and "zero loss" in s.reject_reason


@pytest.mark.parametrize(("max_length", "prompt", "budget"), [(512, 20, 492), (64, 64, 0), (64, 80, 0), (16, 1, 15)])
def test_direct_budget(max_length: int, prompt: int, budget: int) -> None:
    assert direct_budget(TokenLoss(1.0, 3, prompt), max_length) == budget
