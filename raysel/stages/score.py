"""IFD scoring stage: answer losses with and without the instruction, per row, in an actor pool."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.backends.base import make_scorer
from raysel.config import ScoreConfig
from raysel.ifd import direct_budget, ifd_score
from raysel.stages.base import StageSpec
from raysel.templates import DIRECT_PREFIX, build_prompt


class IfdScoreStage:
    """Scores Instruction-Following Difficulty with the configured backend.

    Input columns: instruction, input, output. Output columns: loss_cond, loss_direct, score_ifd,
    ppl_cond, ppl_direct (float32; NaN when unscorable), n_answer_tokens, prompt_tokens (int32),
    reject_reason (why a row could not be scored; "" otherwise). Resources: StageSpec.for_backend.
    Idempotent: a pure function of the row and the model, whatever the batch.
    """

    requires: ClassVar[dict[str, str]] = {
        S.INSTRUCTION: "instruction text",
        S.INPUT: "optional context",
        S.OUTPUT: "response to score",
    }
    produces: ClassVar[dict[str, str]] = {
        S.LOSS_COND: "mean answer NLL given the templated instruction",
        S.LOSS_DIRECT: "mean answer NLL after '### Response:' alone",
        S.SCORE_IFD: "loss_cond / loss_direct",
        S.PPL_COND: "exp(loss_cond)",
        S.PPL_DIRECT: "exp(loss_direct)",
        S.N_ANSWER_TOKENS: "answer tokens scored",
        S.PROMPT_TOKENS: "tokens before the answer in the conditioned text",
        S.REJECT_REASON: "why the row could not be scored, or ''",
    }

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        self.scorer = make_scorer(cfg)

    @classmethod
    def spec(cls, cfg: ScoreConfig) -> StageSpec:
        return StageSpec.for_backend(cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        cfg, n = self.cfg, len(batch[S.OUTPUT])
        outputs = [str(x) for x in batch[S.OUTPUT]]
        prompts = [
            build_prompt(cfg.template, str(ins), str(inp), self.scorer.chat_prompt)
            for ins, inp in zip(batch[S.INSTRUCTION], batch[S.INPUT], strict=True)
        ]
        cond = self.scorer.score(prompts, outputs, max_length=cfg.max_length)
        budgets = [direct_budget(c, cfg.max_length) for c in cond]
        direct = self.scorer.score([DIRECT_PREFIX] * n, outputs, max_length=cfg.max_length, max_answer_tokens=budgets)
        scores = [ifd_score(c, d, cfg.max_length) for c, d in zip(cond, direct, strict=True)]
        out = dict(batch)
        for col, attr in (
            (S.LOSS_COND, "loss_cond"),
            (S.LOSS_DIRECT, "loss_direct"),
            (S.SCORE_IFD, "ifd"),
            (S.PPL_COND, "ppl_cond"),
            (S.PPL_DIRECT, "ppl_direct"),
        ):
            out[col] = np.array([getattr(s, attr) for s in scores], dtype=np.float32)
        out[S.N_ANSWER_TOKENS] = np.array([s.n_answer_tokens for s in scores], dtype=np.int32)
        out[S.PROMPT_TOKENS] = np.array([s.prompt_tokens for s in scores], dtype=np.int32)
        out[S.REJECT_REASON] = np.array([s.reject_reason for s in scores], dtype=object)
        return out
