"""raysel eval's pure parts: the test-set readers and the winning score, against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysel.evaluate.testsets import NAMES, read_testset, read_testsets
from raysel.evaluate.winning import LOSE, TIE, UNJUDGED, WIN, per_testset, tally, verdict_for_a
from raysel.judge import OrderResult, combine
from raysel.readers import InputError


def _order(a: float, b: float, a_first: bool) -> OrderResult:
    """One judging order's scores (Assistant 1, Assistant 2) for answers scored a (model A) and b (model B)."""
    return OrderResult(scores=(a, b) if a_first else (b, a))


@pytest.mark.parametrize(
    ("forward", "reverse", "verdict"),
    [  # the nine cases of the IFD authors' review_eval_score.py: each order's judge scores (A, B)
        ((8, 6), (7, 5), WIN), ((6, 6), (8, 5), WIN), ((9, 4), (7, 7), WIN),
        ((3, 6), (8, 5), TIE), ((8, 6), (5, 7), TIE), ((7, 7), (6, 6), TIE),
        ((7, 7), (5, 8), LOSE), ((4, 9), (6, 6), LOSE), ((2, 6), (5, 7), LOSE),
    ],
)  # fmt: skip
def test_two_orders_combine_as_the_authors_count_them(forward, reverse, verdict: str) -> None:
    # model A's answer goes first in the forward order (the judge's "reference" slot), second in the reverse
    row = combine(_order(*forward, a_first=True), _order(*reverse, a_first=False))
    assert verdict_for_a(row) == verdict


def test_unparsed_replies_are_unjudged_never_ties() -> None:
    row = combine(OrderResult(scores=None, reply="no scores here"), _order(8, 6, a_first=False))
    assert verdict_for_a(row) == UNJUDGED
    t = tally([WIN, WIN, LOSE, UNJUDGED])
    assert (t.total, t.unjudged, t.winning_score) == (3, 1, pytest.approx(4 / 3))


def test_winning_score_by_hand() -> None:
    # 10 prompts: 5 wins, 3 ties, 2 losses -> (5 - 2) / 10 + 1 = 1.3
    t = tally([WIN] * 5 + [TIE] * 3 + [LOSE] * 2)
    assert (t.win, t.tie, t.lose, t.total) == (5, 3, 2, 10)
    assert t.winning_score == pytest.approx(1.3)
    assert tally([LOSE] * 4).winning_score == 0.0 and tally([WIN] * 4).winning_score == 2.0
    assert tally([TIE, WIN, LOSE]).winning_score == 1.0
    with pytest.raises(ValueError, match="verdict"):
        tally(["draw"])


def test_all_pools_every_prompt_not_the_mean_of_scores() -> None:
    # vicuna: 2 wins of 2 (score 2.0); koala: 1 loss, 7 ties of 8 (score 0.875)
    # pooled: (2 - 1) / 10 + 1 = 1.1, not the mean of 2.0 and 0.875 (1.4375)
    out = per_testset({"vicuna": [WIN, WIN], "koala": [LOSE] + [TIE] * 7})
    assert out["vicuna"].winning_score == 2.0 and out["koala"].winning_score == pytest.approx(0.875)
    want = {"win": 2, "tie": 7, "lose": 1, "total": 10, "unjudged": 0, "winning_score": pytest.approx(1.1)}
    assert out["all"].to_dict() == want


def test_the_five_shared_test_sets(shared_data: Path) -> None:
    sets = read_testsets(shared_data / "testsets")
    assert {k: len(v) for k, v in sets.items()} == {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252,
                                                    "lima": 300}  # fmt: skip
    for name, prompts in sets.items():
        assert len({p.id for p in prompts}) == len(prompts), name  # ids are unique within a set
        assert all(p.testset == name and p.instruction.strip() for p in prompts)
    assert sets["vicuna"][0].instruction == "How can I improve my time management skills?"
    assert sets["vicuna"][0].id == "1" and sets["koala"][0].id == "koala_0"
    assert sets["lima"][0].id == "1" and sets["lima"][0].instruction.startswith("I'm writing a NeurIPS paper")
    with_input = [p for p in sets["sinstruct"] if p.input]
    assert with_input and all(not p.input for n in NAMES if n != "sinstruct" for p in sets[n])


def test_bad_records_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "koala.jsonl"
    path.write_text(json.dumps({"id": "k0", "prompt": "Hi?"}) + "\n" + json.dumps({"id": "k1", "text": "x"}) + "\n")
    with pytest.raises(InputError, match=r"koala.jsonl:2: a koala record needs the field 'prompt'"):
        read_testset(path)
    path.write_text("{oops\n")
    with pytest.raises(InputError, match=r"koala.jsonl:1: not valid JSON"):
        read_testset(path)
    two = {"id": "u0", "instruction": "Fix it.", "instances": [{"input": "a"}, {"input": "b"}]}
    (tmp_path / "sinstruct.jsonl").write_text(json.dumps(two) + "\n")
    with pytest.raises(InputError, match=r"sinstruct.jsonl:1: .*exactly one"):
        read_testset(tmp_path / "sinstruct.jsonl")
    with pytest.raises(InputError, match="unknown test set 'mystery'"):
        read_testset(tmp_path / "mystery.jsonl")
    with pytest.raises(InputError, match="test set 'lima' not found"):
        read_testsets(tmp_path, ["lima"])


def test_results_table_by_hand() -> None:
    from raysel.evaluate.winning import results_table

    sets = per_testset({"vicuna": [WIN, WIN, TIE], "koala": [LOSE, UNJUDGED]})
    text = results_table({"sel vs full": sets}, {"sel": 1.23456, "full": 1.5})
    rows = text.splitlines()
    assert rows[2] == "| sel vs full | vicuna | 2 | 1 | 0 | 0 | 1.667 |"
    assert rows[3] == "| sel vs full | koala | 0 | 0 | 1 | 1 | 0.000 |"
    assert rows[4] == "| sel vs full | all (pooled) | 2 | 1 | 1 | 1 | 1.250 |"  # (2 - 1) / 4 + 1
    assert rows[-2:] == ["| sel | 1.2346 |", "| full | 1.5000 |"]
