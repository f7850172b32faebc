"""IFD arithmetic (Li et al., NAACL 2024): pure functions over per-row answer losses, no engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raysel.backends.base import TokenLoss


@dataclass(frozen=True)
class IfdScore:
    loss_cond: float
    """Mean NLL of the answer tokens given the templated instruction."""
    loss_direct: float
    """Mean NLL of the same answer tokens after DIRECT_PREFIX alone."""
    ifd: float
    """loss_cond / loss_direct: the ratio of mean losses that data_by_IFD.py ranks by."""
    ppl_cond: float
    ppl_direct: float
    ifd_ppl: float
    """exp(loss_cond) / exp(loss_direct), computed as exp(loss_cond - loss_direct): IterIT's complexity."""
    n_answer_tokens: int
    prompt_tokens: int
    reject_reason: str
    """"" when scored; otherwise why the row could not be scored (its scores are NaN)."""


def direct_budget(cond: TokenLoss, max_length: int) -> int:
    """Answer tokens the direct text may score: the ones the conditioned text kept in its window.

    The released code truncates the direct text at max_length - prompt_len + (direct prefix tokens),
    hard-coding the LLaMA prefix count; bounding the answer tokens is the same rule for any tokenizer.
    """
    return max(0, max_length - cond.prompt_tokens)


def ifd_score(cond: TokenLoss, direct: TokenLoss, max_length: int) -> IfdScore:
    """Combine the two losses of one row; rows that cannot be scored get NaN and a reason."""
    nan = float("nan")
    reason = ""
    if cond.prompt_tokens >= max_length:
        reason = (
            f"prompt fills the window: {cond.prompt_tokens} prompt tokens >= max_length {max_length}; "
            "raise score.max_length to score this row"
        )
    elif cond.n_tokens == 0 or direct.n_tokens == 0:
        reason = "no answer tokens to score"
    elif direct.nll_sum == 0.0:
        reason = "answer alone has zero loss: IFD undefined"
    elif not (math.isfinite(cond.nll_sum) and math.isfinite(direct.nll_sum)):
        reason = "the model gave a non-finite loss (overflow or a zero-probability token)"
    if reason:
        return IfdScore(nan, nan, nan, nan, nan, nan, cond.n_tokens, cond.prompt_tokens, reason)
    loss_cond = cond.nll_sum / cond.n_tokens
    loss_direct = direct.nll_sum / direct.n_tokens
    return IfdScore(
        loss_cond=loss_cond,
        loss_direct=loss_direct,
        ifd=loss_cond / loss_direct,
        ppl_cond=math.exp(loss_cond),
        ppl_direct=math.exp(loss_direct),
        ifd_ppl=math.exp(loss_cond - loss_direct),
        n_answer_tokens=cond.n_tokens,
        prompt_tokens=cond.prompt_tokens,
        reject_reason="",
    )
