"""Backend protocols (plain dataclasses in, plain values out) and the one place that picks an engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raysel.config import EmbedConfig, ScoreConfig


@dataclass(frozen=True)
class TokenLoss:
    """Answer-token negative log-likelihood of one (prompt, response) text."""

    nll_sum: float
    """Sum of -log p(token) over the scored answer tokens (natural log)."""
    n_tokens: int
    """Answer tokens scored (after truncation); 0 means nothing could be scored."""
    prompt_tokens: int
    """Tokens before the answer: len(encode(prompt)), special tokens included, as the IFD code counts it."""


@dataclass(frozen=True)
class Embeddings:
    """Sentence vectors of a batch of texts."""

    vectors: np.ndarray
    """float32 [n, d], L2-normalized."""
    ppl: np.ndarray
    """float32 [n]: perplexity of each text under a causal LM embedder (NaN for encoders)."""


class Embedder(Protocol):
    """Embeds texts; results never depend on batch composition."""

    dim: int

    def embed(self, texts: Sequence[str]) -> Embeddings: ...

    def chat_prompt(self, user: str, system: str | None = None) -> str: ...


class LossScorer(Protocol):
    """Scores the response given the prompt, with the text tokenized whole (prompt + response)."""

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int,
        max_answer_tokens: Sequence[int] | None = None,
        add_special_tokens: bool = True,
    ) -> list[TokenLoss]:
        """Per row: the text prompt+response is truncated to `max_length` tokens, and at most
        `max_answer_tokens[i]` answer tokens are scored. add_special_tokens=False: the texts carry their own
        (IterIT's chat texts). Results never depend on batch composition."""
        ...

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """The model's chat template around one user turn, ending where the assistant's answer starts."""
        ...

    def chat_text(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's chat template over whole turns (role, content), no generation prompt."""
        ...


def make_scorer(cfg: ScoreConfig) -> LossScorer:
    """Build the configured scorer; the engine is imported here, never at raysel import time."""
    if cfg.backend == "hf":
        from raysel.backends.hf import HfLossScorer

        return HfLossScorer(cfg)
    if cfg.backend == "vllm":
        from raysel.backends.vllm import VllmLossScorer

        return VllmLossScorer(cfg)
    from raysel.backends.fake import FakeLossScorer

    return FakeLossScorer(cfg)


def make_embedder(cfg: EmbedConfig) -> Embedder:
    """Build the configured embedder; the engine is imported here, never at raysel import time."""
    if cfg.backend == "hf":
        from raysel.backends.hf_embed import HfEmbedder

        return HfEmbedder(cfg)
    if cfg.backend == "vllm":
        from raysel.backends.vllm import VllmEmbedder

        return VllmEmbedder(cfg)
    from raysel.backends.fake import FakeEmbedder

    return FakeEmbedder(cfg)
