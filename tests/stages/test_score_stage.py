"""IfdScoreStage called directly on dict batches (no Ray): fake backend plumbing, then hf on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysel import schema as S
from raysel.config import ScoreConfig
from raysel.stages.score import IfdScoreStage
from raysel.templates import DIRECT_PREFIX, build_prompt

FLOATS = (S.LOSS_COND, S.LOSS_DIRECT, S.SCORE_IFD, S.PPL_COND, S.PPL_DIRECT)
INTS = (S.N_ANSWER_TOKENS, S.PROMPT_TOKENS)


def _batch(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    cols = (S.INSTRUCTION, S.INPUT, S.OUTPUT)
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in cols}
    batch[S.ID] = np.array([f"row{i}" for i in range(len(rows))], dtype=object)
    return batch


def _check_consistent(out: dict[str, np.ndarray]) -> None:
    ok = out[S.REJECT_REASON] == ""
    np.testing.assert_allclose(out[S.SCORE_IFD][ok], (out[S.LOSS_COND] / out[S.LOSS_DIRECT])[ok], rtol=1e-5)
    np.testing.assert_allclose(out[S.PPL_COND][ok], np.exp(out[S.LOSS_COND][ok]), rtol=1e-5)
    np.testing.assert_allclose(out[S.PPL_DIRECT][ok], np.exp(out[S.LOSS_DIRECT][ok]), rtol=1e-5)
    for col in FLOATS:
        assert np.isfinite(out[col][ok]).all() and np.isnan(out[col][~ok]).all()


# --- fake backend -------------------------------------------------------------------------------------


def test_fake_columns_dtypes_and_rows(tiny_rows) -> None:
    batch = _batch(tiny_rows)
    out = IfdScoreStage(ScoreConfig(backend="fake"))(batch)
    assert set(out) == set(batch) | set(IfdScoreStage.produces)
    assert set(IfdScoreStage.requires) == {S.INSTRUCTION, S.INPUT, S.OUTPUT}
    for col in FLOATS:
        assert out[col].dtype == np.float32 and len(out[col]) == len(tiny_rows)
    for col in INTS:
        assert out[col].dtype == np.int32 and len(out[col]) == len(tiny_rows)
    assert out[S.REJECT_REASON].dtype == object
    assert (out[S.ID] == batch[S.ID]).all() and (out[S.OUTPUT] == batch[S.OUTPUT]).all()
    assert (out[S.REJECT_REASON] == "").all()
    assert (out[S.N_ANSWER_TOKENS] == [len(r["output"].split()) for r in tiny_rows]).all()
    _check_consistent(out)


def test_fake_prompt_filling_window_is_unscorable() -> None:
    long_instruction = " ".join(f"w{i}" for i in range(20))
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi there, friend."},
        {"instruction": long_instruction, "input": "", "output": "Some answer here."},
    ]
    out = IfdScoreStage(ScoreConfig(backend="fake", template="wiz", max_length=16))(_batch(rows))
    assert out[S.REJECT_REASON][0] == ""
    assert "max_length 16" in out[S.REJECT_REASON][1] and "prompt fills the window" in out[S.REJECT_REASON][1]
    assert out[S.PROMPT_TOKENS].tolist() == [4, 22]
    assert all(math.isnan(out[c][1]) for c in FLOATS)
    _check_consistent(out)


def test_fake_answer_truncated_to_window_in_both_texts() -> None:
    rows = [{"instruction": "a b", "input": "", "output": " ".join(f"t{i}" for i in range(40))}]
    stage = IfdScoreStage(ScoreConfig(backend="fake", template="wiz", max_length=16))
    out = stage(_batch(rows))
    # wiz prompt "a b\n\n### Response:" is 4 whitespace tokens: 12 answer tokens fit the window
    assert out[S.PROMPT_TOKENS][0] == 4 and out[S.N_ANSWER_TOKENS][0] == 12
    direct = stage.scorer.score([DIRECT_PREFIX], [rows[0]["output"]], max_length=16, max_answer_tokens=[12])[0]
    assert direct.n_tokens == 12
    assert out[S.LOSS_DIRECT][0] == pytest.approx(direct.nll_sum / 12, rel=1e-6)


def test_fake_is_batch_invariant(tiny_rows) -> None:
    stage = IfdScoreStage(ScoreConfig(backend="fake"))
    whole = stage(_batch(tiny_rows))
    for i in (0, 5, 23):
        one = stage(_batch([tiny_rows[i]]))
        assert one[S.SCORE_IFD][0] == whole[S.SCORE_IFD][i]


# --- hf backend on the tiny random model ------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(tiny_hf_model):
    from raysel.backends.hf import HfLossScorer

    return HfLossScorer(ScoreConfig(backend="hf", model=tiny_hf_model, max_length=128, token_budget=8192))


def _manual_token_nll(scorer, prompt: str, response: str) -> tuple[list[float], int]:
    """Per-answer-token NLL from one plain full forward (no packing, no answer-only logits)."""
    import torch

    ids = scorer.tokenizer(prompt + response)["input_ids"]
    start = len(scorer.tokenizer(prompt)["input_ids"])
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = scorer.model(input_ids=x).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    return nll[start - 1 :].tolist(), start


def _prompts(rows) -> tuple[list[str], list[str]]:
    return [build_prompt("alpaca", r["instruction"], r["input"]) for r in rows], [r["output"] for r in rows]


def test_hf_scores_answer_tokens_only(scorer, tiny_rows) -> None:
    prompts, responses = _prompts(tiny_rows[:6])
    losses = scorer.score(prompts, responses, max_length=128)
    for loss, p, r in zip(losses, prompts, responses, strict=True):
        token_nll, start = _manual_token_nll(scorer, p, r)
        assert loss.prompt_tokens == start
        assert loss.n_tokens == len(token_nll) > 0
        assert loss.nll_sum / loss.n_tokens == pytest.approx(np.mean(token_nll), abs=1e-4)


def test_hf_batch_invariance(tiny_hf_model, scorer, tiny_rows) -> None:
    from raysel.backends.hf import HfLossScorer

    prompts, responses = _prompts(tiny_rows)
    together = scorer.score(prompts, responses, max_length=128)
    small = HfLossScorer(ScoreConfig(backend="hf", model=tiny_hf_model, max_length=128, token_budget=128))
    packed_small = small.score(prompts, responses, max_length=128)
    one_by_one = [scorer.score([p], [r], max_length=128)[0] for p, r in zip(prompts, responses, strict=True)]
    for a, b, c in zip(together, packed_small, one_by_one, strict=True):
        assert a.n_tokens == b.n_tokens == c.n_tokens and a.prompt_tokens == b.prompt_tokens == c.prompt_tokens
        assert b.nll_sum / b.n_tokens == pytest.approx(a.nll_sum / a.n_tokens, abs=1e-4)
        assert c.nll_sum / c.n_tokens == pytest.approx(a.nll_sum / a.n_tokens, abs=1e-4)


def test_hf_max_answer_tokens_and_window_truncation(scorer, tiny_rows) -> None:
    prompts, responses = _prompts(tiny_rows[:3])
    full = [_manual_token_nll(scorer, p, r) for p, r in zip(prompts, responses, strict=True)]
    losses = scorer.score(prompts, responses, max_length=128, max_answer_tokens=[2, 0, 1000])
    assert [x.n_tokens for x in losses] == [2, 0, len(full[2][0])]
    assert losses[0].nll_sum == pytest.approx(sum(full[0][0][:2]), abs=1e-4)
    assert losses[1].nll_sum == 0.0
    # the window cuts the answer: max_length = prompt + 3 keeps 3 answer tokens
    start = full[0][1]
    cut = scorer.score(prompts[:1], responses[:1], max_length=start + 3)[0]
    assert cut.n_tokens == 3 and cut.nll_sum == pytest.approx(sum(full[0][0][:3]), abs=1e-4)
    # a prompt longer than the window scores nothing but still reports its length
    over = scorer.score(prompts[:1], responses[:1], max_length=start - 2)[0]
    assert over.n_tokens == 0 and over.prompt_tokens == start


def test_hf_empty_prompt_scores_from_token_1(scorer) -> None:
    import torch

    response = "The capital of France is Paris."
    ids = scorer.tokenizer(response)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = scorer.model(input_ids=x).logits[0].float()
    expected = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
    loss = scorer.score([""], [response], max_length=128)[0]
    assert loss.prompt_tokens == 1  # scoring starts at token 1: token 0 has nothing to predict it
    assert loss.n_tokens == len(ids) - 1  # token 0 has nothing before it to predict it
    assert loss.nll_sum == pytest.approx(expected, abs=1e-4)


def test_hf_stage_end_to_end(tiny_hf_model, scorer, tiny_rows) -> None:
    cfg = ScoreConfig(backend="hf", model=tiny_hf_model, max_length=128)
    out = IfdScoreStage(cfg)(_batch(tiny_rows[:8]))
    assert (out[S.REJECT_REASON] == "").all()
    _check_consistent(out)
    prompts, responses = _prompts(tiny_rows[:8])
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        cond, start = _manual_token_nll(scorer, p, r)
        direct, _ = _manual_token_nll(scorer, DIRECT_PREFIX, r)
        assert out[S.PROMPT_TOKENS][i] == start and out[S.N_ANSWER_TOKENS][i] == len(cond)
        assert out[S.LOSS_COND][i] == pytest.approx(np.mean(cond), abs=1e-4)
        assert out[S.LOSS_DIRECT][i] == pytest.approx(np.mean(direct[: 128 - start]), abs=1e-4)


def test_hf_chat_template_path(tiny_hf_model, scorer, tiny_rows) -> None:
    rows = [r for r in tiny_rows if r["input"]][:2] + [r for r in tiny_rows if not r["input"]][:2]
    out = IfdScoreStage(ScoreConfig(backend="hf", model=tiny_hf_model, template="chat", max_length=128))(_batch(rows))
    assert (out[S.REJECT_REASON] == "").all()
    for i, r in enumerate(rows):
        user = r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")
        prompt = f"<|user|>\n{user}\n<|assistant|>\n"
        assert scorer.chat_prompt(user) == prompt
        cond, start = _manual_token_nll(scorer, prompt, r["output"])
        assert out[S.PROMPT_TOKENS][i] == start
        assert out[S.LOSS_COND][i] == pytest.approx(np.mean(cond), abs=1e-4)
    alpaca = IfdScoreStage(ScoreConfig(backend="hf", model=tiny_hf_model, max_length=128))(_batch(rows))
    assert (alpaca[S.PROMPT_TOKENS] != out[S.PROMPT_TOKENS]).all()


def test_hf_packed_equals_one_row_at_a_time(tiny_hf_model, scorer, tiny_rows) -> None:
    """Padding-free packed scoring gives the one-row loop's losses to 1e-5 (fp32): rows of mixed lengths, an
    empty prompt, rows cut at max_length, answer-token caps, and several bins per forward."""
    from raysel.backends.hf import HfLossScorer

    prompts, responses = _prompts(tiny_rows)
    prompts, responses = ["", *prompts, prompts[0] * 6], ["Paris is the capital.", *responses, responses[0]]
    caps = [1000] * len(prompts)
    caps[2] = 3
    for budget in (64, 256):
        packed = HfLossScorer(
            ScoreConfig(backend="hf", model=tiny_hf_model, max_length=64, token_budget=budget, packing=True)
        )
        got = packed.score(prompts, responses, max_length=64, max_answer_tokens=caps)
        for p, r, cap, g in zip(prompts, responses, caps, got, strict=True):
            one = scorer.score([p], [r], max_length=64, max_answer_tokens=[cap])[0]
            assert (g.n_tokens, g.prompt_tokens) == (one.n_tokens, one.prompt_tokens)
            assert g.nll_sum == pytest.approx(one.nll_sum, abs=1e-5 * max(1, one.n_tokens))
    assert any(x.n_tokens == 0 for x in got) and got[0].prompt_tokens == 1  # a prompt over the window; empty prompt
