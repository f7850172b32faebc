"""Backend protocols (plain dataclasses in, plain values out) and the one place that picks an engine."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raysel.config import ClassifierConfig, EmbedConfig, GenerateConfig, ScoreConfig


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


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one generate() call (the judge's local backend uses its own)."""

    max_new_tokens: int
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    seed: int = 0
    """Seed of the sampling RNG (with temperature > 0): the same prompts and seed give the same texts."""
    max_prompt_tokens: int = 1024
    """Longer prompts keep their last max_prompt_tokens tokens."""

    @classmethod
    def of(cls, cfg: GenerateConfig) -> GenParams:
        return cls(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed, cfg.max_prompt_tokens)


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    text: str
    """The decoded answer, special tokens removed, not including the prompt."""
    prompt_tokens: int
    """Prompt tokens the model saw (after truncation)."""
    output_tokens: int
    """Tokens generated (the end-of-turn token included when generated)."""
    finish_reason: str
    """"stop" (end-of-sequence) or "length" (max_new_tokens); prefixed "truncated_prompt:" when cut."""


class Generator(Protocol):
    """Answers prompts. Prompts are complete texts (chat template applied by chat_prompt, special tokens
    included), tokenized with add_special_tokens=False. Greedy results never depend on batch composition."""

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Generation]: ...

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """The model's chat template around one user turn, ending where the assistant's answer starts."""
        ...

    def text_prompt(self, text: str) -> str:
        """A plain-text prompt (alpaca template) with the special tokens the tokenizer would add (its BOS)."""
        ...


def local_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(cfg: ScoreConfig | GenerateConfig | EmbedConfig | ClassifierConfig) -> int:
    """1-thread forwards run side by side per CPU actor: `threads` when set, else one per CPU the actor reserves
    (num_cpus rounded up, as stages.base.resolve sized it from its node), else (outside a Ray pool, num_cpus
    unset) this machine's cores split between `concurrency` actors."""
    explicit = getattr(cfg, "threads", None)
    if explicit:
        return explicit
    if cfg.num_cpus is not None:
        return max(1, math.ceil(cfg.num_cpus))
    return max(1, local_cores() // (cfg.concurrency or 1))


def make_generator(cfg: GenerateConfig) -> Generator:
    """Build the configured generator; the engine is imported here, never at raysel import time."""
    if cfg.backend == "hf":
        from raysel.backends.hf_generate import HfGenerator

        return HfGenerator(cfg)
    if cfg.backend == "vllm":
        from raysel.backends.vllm import VllmGenerator

        return VllmGenerator(cfg)
    from raysel.backends.fake import FakeGenerator

    return FakeGenerator(cfg)


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
