"""Generation stage: the target model answers each row's instruction (and input), in an actor pool."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.backends.base import GenParams, make_generator
from raysel.config import GenerateConfig
from raysel.stages.base import StageSpec
from raysel.templates import build_prompt


def user_text(instruction: str, input: str) -> str:
    """The user turn: the instruction, then the input after a blank line when there is one."""
    return instruction if input == "" else instruction + "\n\n" + input


class GenerateStage:
    """Answers each row with the configured generator: the user turn in the model's chat template, or the
    instruction (+ input) in a text template (generate.template, as a model fine-tuned with it was trained).

    Input columns: instruction, input. Output columns: generated (str), gen_prompt_tokens, gen_tokens (int32),
    gen_finish (str: "stop", "length", prefixed "truncated_prompt:" when the prompt was cut). Resources:
    StageSpec.for_backend. Idempotent: greedy answers are a pure function of the row and the model, whatever
    the batch; sampled ones are too, seeded per (generate.seed, prompt), up to float ties.
    """

    requires: ClassVar[dict[str, str]] = {
        S.INSTRUCTION: "instruction text",
        S.INPUT: "optional context ('' when none)",
    }
    produces: ClassVar[dict[str, str]] = {
        S.GENERATED: "the target model's answer",
        S.GEN_PROMPT_TOKENS: "chat-templated prompt tokens the model saw",
        S.GEN_TOKENS: "tokens generated (end-of-turn token included)",
        S.GEN_FINISH: "why generation stopped",
    }

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        self.params = GenParams.of(cfg)
        self.generator = make_generator(cfg)

    @classmethod
    def spec(cls, cfg: GenerateConfig) -> StageSpec:
        return StageSpec.for_backend(cfg)

    def _prompt(self, instruction: str, input: str) -> str:
        if self.cfg.template == "chat":
            return self.generator.chat_prompt(user_text(instruction, input), self.cfg.system)
        return self.generator.text_prompt(build_prompt(self.cfg.template, instruction, input))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prompts = [
            self._prompt(str(ins), str(inp)) for ins, inp in zip(batch[S.INSTRUCTION], batch[S.INPUT], strict=True)
        ]
        gens = self.generator.generate(prompts, self.params)
        out = dict(batch)
        out[S.GENERATED] = np.array([g.text for g in gens], dtype=object)
        out[S.GEN_PROMPT_TOKENS] = np.array([g.prompt_tokens for g in gens], dtype=np.int32)
        out[S.GEN_TOKENS] = np.array([g.output_tokens for g in gens], dtype=np.int32)
        out[S.GEN_FINISH] = np.array([g.finish_reason for g in gens], dtype=object)
        return out
