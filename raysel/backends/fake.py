"""Deterministic dependency-free scorer and embedder for plumbing tests only: never a source of real scores."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence

import numpy as np

from raysel.backends.base import Embeddings, Generation, GenParams, TokenLoss
from raysel.config import EmbedConfig, GenerateConfig, ScoreConfig


def _tokens(text: str) -> list[str]:
    return text.split()


def _pace() -> None:
    """Sleep RAYSEL_FAKE_DELAY_S per batch: tests that kill a run mid-stage need a stage that takes a while."""
    delay = float(os.environ.get("RAYSEL_FAKE_DELAY_S") or 0)
    if delay > 0:
        time.sleep(delay)


def _token_nll(context: str, token: str) -> float:
    # A pseudo-loss in (0.5, 4.5) that depends on a little context, so conditioning changes it.
    digest = hashlib.blake2b(f"{context[-32:]}|{token}".encode(), digest_size=4).digest()
    return 0.5 + 4.0 * int.from_bytes(digest, "little") / 2**32


class FakeLossScorer:
    """Whitespace "tokens" and hashed per-token losses; same contract as the real scorers."""

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        head = f"<|system|>{system}\n" if system else ""
        return f"{head}<|user|>{user}\n<|assistant|>"

    def chat_text(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>\n" for m in messages)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int,
        max_answer_tokens: Sequence[int] | None = None,
        add_special_tokens: bool = True,
    ) -> list[TokenLoss]:
        _pace()
        out = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            n_prompt = len(_tokens(prompt))
            answer = _tokens(response)[: max(0, max_length - n_prompt)]
            if max_answer_tokens is not None:
                answer = answer[: max(0, max_answer_tokens[i])]
            context, total = prompt, 0.0
            for tok in answer:
                total += _token_nll(context, tok)
                context += " " + tok
            out.append(TokenLoss(nll_sum=total, n_tokens=len(answer), prompt_tokens=n_prompt))
        return out


class FakeEmbedder:
    """Hashed pseudo-random unit vectors (identical texts get identical vectors); plumbing tests only."""

    dim = 16

    def __init__(self, cfg: EmbedConfig) -> None:
        self.cfg = cfg

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return FakeLossScorer.chat_prompt(self, user, system)  # type: ignore[arg-type]

    def embed(self, texts: Sequence[str]) -> Embeddings:
        _pace()
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            vectors[i] = np.random.default_rng(seed).standard_normal(self.dim)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ppl = np.array([1.0 + len(t.split()) for t in texts], dtype=np.float32)
        return Embeddings(vectors=vectors, ppl=ppl)


class FakeGenerator:
    """Answers with hashed pseudo-words (whitespace "tokens"), deterministic per (prompt, seed); plumbing only."""

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return FakeLossScorer.chat_prompt(self, user, system)  # type: ignore[arg-type]

    def text_prompt(self, text: str) -> str:
        return text

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Generation]:
        out = []
        for prompt in prompts:
            words = _tokens(prompt)
            cut = len(words) > params.max_prompt_tokens
            words = words[-params.max_prompt_tokens :]
            key = f"{params.seed}|{params.temperature}|{' '.join(words)}".encode()
            rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
            n = int(rng.integers(1, 2 * params.max_new_tokens + 1))  # about half stop before the limit
            length = n > params.max_new_tokens
            n = min(n, params.max_new_tokens)
            text = " ".join(f"w{int(x)}" for x in rng.integers(0, 1000, size=n))
            reason = ("truncated_prompt:" if cut else "") + ("length" if length else "stop")
            out.append(Generation(text=text, prompt_tokens=len(words), output_tokens=n, finish_reason=reason))
        return out
