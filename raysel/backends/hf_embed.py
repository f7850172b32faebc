"""transformers embedder: sentence encoders (pooled, as sentence-transformers does) and causal LMs (the IFD
paper's pre-experience vectors: mean of the last hidden layer, plus the text's perplexity)."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from raysel.backends.base import Embeddings, cpu_threads
from raysel.backends.hf import pack_by_length
from raysel.backends.models import resolve_model
from raysel.backends.spans import TokenizerPrompts
from raysel.config import EmbedConfig

# Padded tokens per forward pass. Short sentences gain from batching even on CPU (unlike 512-token IFD rows).
_CPU_TOKEN_BUDGET = 4096
_GPU_TOKEN_BUDGET = 65536


def _pooling(path: str) -> str:
    """Pooling "cls" or "mean", from a sentence-transformers model's 1_Pooling/config.json (mean when absent)."""
    conf = Path(path) / "1_Pooling" / "config.json"
    if conf.is_file() and json.loads(conf.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


class HfEmbedder(TokenizerPrompts):
    """Embedder on transformers (CPU or CUDA).

    Encoders: tokens mean-pooled under the attention mask (or the CLS token, as the model's
    sentence-transformers config says), then L2-normalized: the vectors of sentence-transformers' encode().
    Causal LMs: the mean of the last hidden layer over all tokens of the text, as the IFD paper's
    data_analysis.py (--mod pre) computes it, L2-normalized here (the paper clusters the raw means), and
    the text's perplexity exp(mean NLL of tokens 2..n), which the paper's per-cluster sampler bands on.
    """

    def __init__(self, cfg: EmbedConfig) -> None:
        self.cfg = cfg
        path = resolve_model(cfg.model)
        archs = AutoConfig.from_pretrained(path).architectures or []
        self.causal = any(a.endswith("ForCausalLM") for a in archs)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        loader = AutoModelForCausalLM if self.causal else AutoModel
        self.model = loader.from_pretrained(path, dtype=getattr(torch, cfg.dtype)).to(cfg.device).eval()
        self.pooling = "mean" if self.causal else _pooling(path)
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        self.budget = _CPU_TOKEN_BUDGET if cfg.device == "cpu" else _GPU_TOKEN_BUDGET
        self._pool = None
        if cfg.device == "cpu":  # side-by-side 1-thread forwards: see HfLossScorer
            torch.set_num_threads(1)
            threads = cpu_threads(cfg)
            if threads > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="raysel-embed")

    def embed(self, texts: Sequence[str]) -> Embeddings:
        ids = [row[: self.cfg.max_length] or [self.pad_id] for row in self.tokenizer(list(texts))["input_ids"]]
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        ppl = np.full(len(ids), np.nan, dtype=np.float32)
        batches = pack_by_length([len(r) for r in ids], max(self.budget, self.cfg.max_length))
        run = self._pool.map if self._pool else map
        for rows, (vec, p) in zip(batches, run(lambda b: self._forward([ids[i] for i in b]), batches), strict=True):
            vectors[rows] = vec
            ppl[rows] = p
        return Embeddings(vectors=vectors, ppl=ppl)

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(r) for r in rows)
        dev = self.cfg.device
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        ppl = torch.full((len(rows),), float("nan"))
        if self.causal:
            # Right padding, no mask: causal attention keeps real tokens from seeing the pads after them.
            hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
            ppl = self._perplexity(hidden, input_ids, mask)
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy(), ppl.cpu().numpy()

    def _perplexity(self, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """exp(mean NLL of tokens 1..n-1 given the ones before), per row; NaN for a one-token text."""
        logits = self.model.get_output_embeddings()(hidden[:, :-1]).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        m = mask[:, 1:].to(nll.dtype)
        count = m.sum(1)
        return torch.where(count > 0, torch.exp((nll * m).sum(1) / count.clamp(min=1)), float("nan")).float()
