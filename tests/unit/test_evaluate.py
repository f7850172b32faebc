"""raysel eval's pure parts: the test-set readers and the winning score, against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysel.evaluate.testsets import NAMES, read_testset, read_testsets
from raysel.evaluate.winning import LOSE, TIE, WIN, combine, order_outcome, per_testset, tally
from raysel.readers import InputError


@pytest.mark.parametrize(
    ("forward", "reverse", "verdict"),
    [  # the nine cases of the IFD authors' review_eval_score.py, from model A's side
        (1, 1, WIN), (0, 1, WIN), (1, 0, WIN),
        (-1, 1, TIE), (1, -1, TIE), (0, 0, TIE),
        (0, -1, LOSE), (-1, 0, LOSE), (-1, -1, LOSE),
    ],
)  # fmt: skip
def test_two_orders_combine_as_the_authors_count_them(forward: int, reverse: int, verdict: str) -> None:
    assert combine(forward, reverse) == verdict


def test_order_outcome_from_judge_scores() -> None:
    # scores are (A, B) as the judge gave them in that order; the reverse order is already mapped back to A
    assert [order_outcome(8, 6), order_outcome(7, 7), order_outcome(5.5, 9)] == [1, 0, -1]
    with pytest.raises(ValueError, match="outcome"):
        combine(2, 0)


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
    assert out["all"].to_dict() == {"win": 2, "tie": 7, "lose": 1, "total": 10, "winning_score": pytest.approx(1.1)}


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
