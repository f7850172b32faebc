"""Unit tests for raysel.select.topk.select_top_ifd: the paper's IFD <= 1 filter and top-k cut."""

from __future__ import annotations

import numpy as np
import pytest

from raysel.select.topk import BELOW_CUTOFF, IFD_ABOVE_1, SELECTED, UNSCORED, select_top_ifd

NAN = float("nan")


def test_excludes_above_one_keeps_exactly_one() -> None:
    ifd = np.array([1.0, 1.0000001, 0.5, 3.0, 0.9])
    sel = select_top_ifd(ifd, k=10)
    assert sel.passed == 3
    assert sel.selected.tolist() == [True, False, True, False, True]
    assert sel.reason.tolist() == [SELECTED, IFD_ABOVE_1, SELECTED, IFD_ABOVE_1, SELECTED]
    # exactly 1.0 is the top of the pool
    assert sel.rank.tolist() == [1, 0, 3, 0, 2]


def test_nan_and_inf_rows_are_unscored() -> None:
    ifd = np.array([NAN, 0.4, np.inf, 0.8, -np.inf])
    sel = select_top_ifd(ifd, k=5)
    assert sel.reason.tolist() == [UNSCORED, SELECTED, UNSCORED, SELECTED, UNSCORED]
    assert sel.passed == 2
    assert not sel.selected[[0, 2, 4]].any()
    assert sel.rank.tolist() == [0, 2, 0, 1, 0]


@pytest.mark.parametrize(
    ("passed", "ratio"), [(10, 0.3), (100, 0.29), (7, 0.5), (9, 0.1), (3, 0.2), (57, 0.07), (41, 1.0)]
)
def test_k_is_int_of_ratio_times_passed(passed: int, ratio: float) -> None:
    # data_by_IFD.py: sample_num = int(len(mean_rate_list) * sample_rate), after dropping IFD > 1.
    rng = np.random.default_rng(passed)
    ifd = np.concatenate([rng.uniform(0.01, 1.0, passed), rng.uniform(1.01, 5.0, 13), [NAN] * 4])
    rng.shuffle(ifd)
    sel = select_top_ifd(ifd, ratio=ratio)
    assert sel.passed == passed
    assert int(sel.selected.sum()) == int(ratio * passed)


def test_default_ratio_is_one_tenth() -> None:
    ifd = np.linspace(0.01, 0.99, 50).tolist() + [2.0] * 30
    sel = select_top_ifd(np.array(ifd))
    assert sel.passed == 50
    assert int(sel.selected.sum()) == 5
    # the five highest IFD values <= 1 are the last five of the linspace
    assert np.flatnonzero(sel.selected).tolist() == [45, 46, 47, 48, 49]


def test_small_pool_ratio_can_select_nothing() -> None:
    sel = select_top_ifd(np.array([0.5, 0.6, 0.7]), ratio=0.1)
    assert sel.passed == 3 and not sel.selected.any()
    assert set(sel.reason.tolist()) == {BELOW_CUTOFF}
    assert sel.rank.tolist() == [3, 2, 1]


def test_absolute_k_capped_at_passed() -> None:
    ifd = np.array([0.2, 1.5, 0.7, NAN])
    sel = select_top_ifd(ifd, k=100)
    assert sel.selected.tolist() == [True, False, True, False]
    sel = select_top_ifd(ifd, k=1)
    assert sel.selected.tolist() == [False, False, True, False]


def test_k_wins_over_default_ratio() -> None:
    ifd = np.linspace(0.1, 0.9, 9)
    assert int(select_top_ifd(ifd, k=4).selected.sum()) == 4


def test_ties_broken_by_input_position() -> None:
    ifd = np.array([0.5, 0.9, 0.5, 0.9, 0.5, 0.9])
    sel = select_top_ifd(ifd, k=2)
    assert np.flatnonzero(sel.selected).tolist() == [1, 3]
    assert sel.rank.tolist() == [4, 1, 5, 2, 6, 3]
    sel = select_top_ifd(ifd, k=4)
    assert np.flatnonzero(sel.selected).tolist() == [0, 1, 3, 5]


def test_rank_numbering_and_reasons() -> None:
    ifd = np.array([0.3, NAN, 0.95, 1.2, 0.6, 0.1])
    sel = select_top_ifd(ifd, k=2)
    assert sel.rank.dtype == np.int64
    assert sel.rank.tolist() == [3, 0, 1, 0, 2, 4]
    assert sorted(sel.rank[sel.rank > 0].tolist()) == list(range(1, sel.passed + 1))
    assert sel.reason.tolist() == [BELOW_CUTOFF, UNSCORED, SELECTED, IFD_ABOVE_1, SELECTED, BELOW_CUTOFF]
    assert sel.selected.dtype == bool
    # selected rows are exactly the ranks 1..k
    assert (sel.selected == ((sel.rank >= 1) & (sel.rank <= 2))).all()


def test_result_is_pure_function_of_scores() -> None:
    rng = np.random.default_rng(0)
    ifd = rng.uniform(0, 1.5, 200).round(2)  # many ties
    a, b = select_top_ifd(ifd, ratio=0.25), select_top_ifd(ifd.copy(), ratio=0.25)
    assert (a.selected == b.selected).all() and (a.rank == b.rank).all()
    # every selected IFD >= every passed-but-not-selected IFD
    below = a.reason == BELOW_CUTOFF
    assert below.any() and a.selected.any()
    assert ifd[a.selected].min() >= ifd[below].max()


def test_empty_and_all_unscored() -> None:
    sel = select_top_ifd(np.array([]), ratio=0.5)
    assert sel.passed == 0 and sel.selected.size == 0
    sel = select_top_ifd(np.array([NAN, NAN]), k=3)
    assert sel.passed == 0 and not sel.selected.any() and sel.reason.tolist() == [UNSCORED, UNSCORED]
