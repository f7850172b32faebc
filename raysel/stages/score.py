"""IFD scoring stage: answer losses with and without the instruction, per row, in an actor pool."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.backends.base import make_scorer
from raysel.config import ScoreConfig
from raysel.ifd import IfdScore, direct_budget, ifd_score
from raysel.stages.base import StageSpec
from raysel.templates import DIRECT_PREFIX, ITERIT_SYSTEM, build_prompt, iterit_user


class IfdScoreStage:
    """Scores Instruction-Following Difficulty with the configured backend.

    Input columns: instruction, input, output. Output columns: loss_cond, loss_direct, score_ifd,
    ppl_cond, ppl_direct, score_ifd_ppl (float32; NaN when unscorable), n_answer_tokens, prompt_tokens (int32),
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
        S.SCORE_IFD_PPL: "exp(loss_cond) / exp(loss_direct), IterIT's complexity",
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
        if self.cfg.template == "iterit":
            scores = self._iterit(batch)
        else:
            scores = self._cherry(batch)
        out = dict(batch)
        for col, attr in (
            (S.LOSS_COND, "loss_cond"),
            (S.LOSS_DIRECT, "loss_direct"),
            (S.SCORE_IFD, "ifd"),
            (S.PPL_COND, "ppl_cond"),
            (S.PPL_DIRECT, "ppl_direct"),
            (S.SCORE_IFD_PPL, "ifd_ppl"),
        ):
            out[col] = np.array([getattr(s, attr) for s in scores], dtype=np.float32)
        out[S.N_ANSWER_TOKENS] = np.array([s.n_answer_tokens for s in scores], dtype=np.int32)
        out[S.PROMPT_TOKENS] = np.array([s.prompt_tokens for s in scores], dtype=np.int32)
        out[S.REJECT_REASON] = np.array([s.reject_reason for s in scores], dtype=object)
        return out

    def _cherry(self, batch: dict[str, Any]) -> list[IfdScore]:
        """The IFD code's texts: template(prompt) + output, and DIRECT_PREFIX + output."""
        cfg, n = self.cfg, len(batch[S.OUTPUT])
        outputs = [str(x) for x in batch[S.OUTPUT]]
        prompts = [
            build_prompt(cfg.template, str(ins), str(inp), self.scorer.chat_prompt)
            for ins, inp in zip(batch[S.INSTRUCTION], batch[S.INPUT], strict=True)
        ]
        cond = self.scorer.score(prompts, outputs, max_length=cfg.max_length)
        budgets = [direct_budget(c, cfg.max_length) for c in cond]
        direct = self.scorer.score([DIRECT_PREFIX] * n, outputs, max_length=cfg.max_length, max_answer_tokens=budgets)
        return [ifd_score(c, d, cfg.max_length) for c, d in zip(cond, direct, strict=True)]

    def _iterit(self, batch: dict[str, Any]) -> list[IfdScore]:
        """IterIT's texts (JiaQiSJTU/IterIT src/data_utils.py): the whole chat (system, user, assistant) and
        the chat template of the assistant turn alone, both tokenized without added special tokens. The
        answer runs from the output's start to the end of the text (end-of-turn tokens included), and both
        texts score the same answer tokens: if the direct text's window keeps fewer, the conditioned one is
        rescored with as many."""
        cfg, chat = self.cfg, self.scorer.chat_text
        split: list[tuple[str, str, str, str] | None] = []
        for ins, inp, output in zip(batch[S.INSTRUCTION], batch[S.INPUT], batch[S.OUTPUT], strict=True):
            answer = [{"role": "assistant", "content": str(output)}]
            user = [
                {"role": "system", "content": ITERIT_SYSTEM},
                {"role": "user", "content": iterit_user(str(ins), str(inp))},
            ]
            whole, alone = chat(user + answer), chat(answer)
            c, d = whole.rfind(str(output)), alone.rfind(str(output))
            split.append(None if c < 0 or d < 0 else (whole[:c], whole[c:], alone[:d], alone[d:]))
        todo = [i for i, s in enumerate(split) if s is not None]
        texts = [split[i] for i in todo]
        common = {"max_length": cfg.max_length, "add_special_tokens": False}
        cond = self.scorer.score([t[0] for t in texts], [t[1] for t in texts], **common)
        direct = self.scorer.score(
            [t[2] for t in texts], [t[3] for t in texts], max_answer_tokens=[c.n_tokens for c in cond], **common
        )
        short = [j for j, (c, d) in enumerate(zip(cond, direct, strict=True)) if 0 < d.n_tokens < c.n_tokens]
        if short:
            again = self.scorer.score(
                [texts[j][0] for j in short], [texts[j][1] for j in short],
                max_answer_tokens=[direct[j].n_tokens for j in short], **common,
            )  # fmt: skip
            for j, c in zip(short, again, strict=True):
                cond[j] = c
        scores: list[IfdScore] = [_unlocated()] * len(split)
        for i, c, d in zip(todo, cond, direct, strict=True):
            scores[i] = ifd_score(c, d, cfg.max_length)
        return scores


def _unlocated() -> IfdScore:
    nan = float("nan")
    reason = "the model's chat template changed the response text: its answer tokens cannot be located"
    return IfdScore(nan, nan, nan, nan, nan, nan, 0, 0, reason)
