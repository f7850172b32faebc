"""Embedding stage: one sentence vector per row (instruction, instruction + input, response or prompt)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.backends.base import make_embedder
from raysel.config import EmbedConfig
from raysel.stages.base import StageSpec
from raysel.templates import build_prompt


def embed_text(cfg: EmbedConfig, instruction: str, input: str, output: str, chat=None) -> str:
    """The text that `cfg.column` names for one row."""
    if cfg.column == "instruction":
        return instruction
    if cfg.column == "instruction_input":
        return instruction if input == "" else instruction + "\n" + input
    if cfg.column == "output":
        return output
    return build_prompt(cfg.template, instruction, input, chat)


class EmbedStage:
    """Embeds each row's `cfg.column` text with the configured encoder.

    Input columns: instruction, input, output. Output columns: embedding (float32 [n, d] array, L2-normalized),
    ppl_text (float32; perplexity under a causal-LM embedder, NaN for encoders). Resources: cfg.num_cpus per
    actor, one GPU on cuda. Idempotent: a pure function of the row and the model, whatever the batch.
    """

    requires: ClassVar[dict[str, str]] = {
        S.INSTRUCTION: "instruction text",
        S.INPUT: "optional context",
        S.OUTPUT: "response",
    }
    produces: ClassVar[dict[str, str]] = {
        S.EMBEDDING: "L2-normalized float32 sentence vector",
        S.PPL_TEXT: "perplexity of the embedded text (causal-LM embedders; NaN otherwise)",
    }

    def __init__(self, cfg: EmbedConfig) -> None:
        self.cfg = cfg
        self.embedder = make_embedder(cfg)

    @classmethod
    def spec(cls, cfg: EmbedConfig) -> StageSpec:
        gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if cfg.device.startswith("cuda") else 0.0)
        return StageSpec(num_cpus=cfg.num_cpus, num_gpus=gpus, concurrency=cfg.concurrency, batch_size=cfg.batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [
            embed_text(self.cfg, str(ins), str(inp), str(out), self.embedder.chat_prompt)
            for ins, inp, out in zip(batch[S.INSTRUCTION], batch[S.INPUT], batch[S.OUTPUT], strict=True)
        ]
        result = self.embedder.embed(texts)
        out = dict(batch)
        out[S.EMBEDDING] = np.ascontiguousarray(result.vectors, dtype=np.float32)
        out[S.PPL_TEXT] = result.ppl.astype(np.float32)
        return out
