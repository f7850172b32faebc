"""transformers generator: length-sorted, left-padded batches; greedy or per-row seeded sampling."""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList

from raysel.backends.base import Generation, GenParams, cpu_threads
from raysel.backends.models import resolve_model
from raysel.backends.spans import TokenizerPrompts
from raysel.config import GenerateConfig

TRUNCATED = "truncated_prompt:"


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each complete prompt (no added special tokens), keeping its last max_prompt_tokens tokens.

    Truncated by hand, on the left (the generation prompt sits at the end): tokenizers differ in
    truncation_side. Shared by every real generator so they all see the same tokens.
    """
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} tokenizes to nothing: a generator needs at least one prompt token")
    return [row[-max_prompt_tokens:] for row in rows], [len(row) > max_prompt_tokens for row in rows]


def eos_ids(tokenizer, generation_config: GenerationConfig | None) -> list[int]:
    """End-of-sequence ids: the generation config's (an int or a list) and the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def to_generations(
    tokenizer,
    new_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[Sequence[int]],
    cut: Sequence[bool],
    reasons: Sequence[str],
) -> list[Generation]:
    """Generations from the new token ids of each row (ending at and including its EOS when it stopped).

    An answer cut at max_new_tokens can end inside a multi-byte character, which decodes to U+FFFD: dropped,
    as vLLM's incremental detokenizer does, so both backends give the same text."""
    texts = tokenizer.batch_decode([list(r) for r in new_ids], skip_special_tokens=True) if new_ids else []
    texts = [t.rstrip("\ufffd") if r == "length" else t for t, r in zip(texts, reasons, strict=True)]
    return [
        Generation(text=text, prompt_tokens=len(p), output_tokens=len(n), finish_reason=(TRUNCATED if c else "") + r)
        for text, n, p, c, r in zip(texts, new_ids, prompt_ids, cut, reasons, strict=True)
    ]


def row_seed(seed: int, ids: Sequence[int]) -> int:
    """A sampling seed per (seed, prompt tokens): the row's answer is the same whatever batch it is in."""
    digest = hashlib.blake2b(f"{seed}|{','.join(map(str, ids))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RowSampler:
    """Samples each row from its own seeded torch generator (temperature, then top-p), as a logits processor
    that leaves only the drawn token: greedy decoding then picks it. transformers' own sampling draws the
    whole batch from the global RNG, so a row's answer would depend on its batch."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]) -> None:
        self.temperature, self.top_p, self.seeds = temperature, top_p, list(seeds)
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # keeps the token that crosses top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        picks = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(-1, picks[:, None], 0.0)


class IdsGenerator(TokenizerPrompts):
    """generate() for engines that generate from token ids (`generate_ids`): prompts encoded and cut to
    max_prompt_tokens, answers decoded, the same way for every engine."""

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Generation]:
        ids, cut = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens)
        new_ids, reasons = self.generate_ids(ids, params)
        return to_generations(self.tokenizer, new_ids, ids, cut, reasons)

    def generate_ids(self, ids: Sequence[Sequence[int]], params: GenParams) -> tuple[list[list[int]], list[str]]:
        raise NotImplementedError


class HfGenerator(IdsGenerator):
    """Generator on transformers `generate`. Greedy answers are those of one-row-at-a-time generation."""

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        # On CPU, sub-batches run side by side in 1-thread generates, one per CPU, as HfLossScorer does: a
        # small model's matmuls scale poorly across threads, and a team of OpenMP threads stalls whenever
        # one of them loses its core (Ray's own processes take slices of a small machine's cores).
        self.threads = cpu_threads(cfg) if cfg.device == "cpu" else 1
        self._pool = None
        if cfg.device == "cpu":
            torch.set_num_threads(1)
            if self.threads > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="raysel-gen")
        path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        self.model = model.to(cfg.device).eval()
        self.eos = eos_ids(self.tokenizer, self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos[0] if self.eos else 0)
        # transformers fills every unset generate() option from the checkpoint's generation_config
        # (repetition penalties, top_k=50...): a clean one makes greedy plain argmax and sampling
        # temperature + top-p only, as in vLLM.
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos or None, pad_token_id=self.pad_id)

    def generate_ids(self, ids: Sequence[Sequence[int]], params: GenParams) -> tuple[list[list[int]], list[str]]:
        """New token ids per prompt (token ids in; the EOS included when it stopped) and "stop" / "length".

        Runs sub-batches of at most cfg.batch_size prompts of similar length (less padding), at least one
        per thread."""
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        size = max(1, min(self.cfg.batch_size, math.ceil(len(ids) / self.threads)))
        batches = [order[start : start + size] for start in range(0, len(order), size)]

        def run(rows: list[int]) -> list[list[int]]:
            return self._generate([ids[i] for i in rows], params)

        out: list[list[int]] = [[] for _ in ids]
        for rows, news in zip(batches, self._pool.map(run, batches) if self._pool else map(run, batches), strict=True):
            for i, new in zip(rows, news, strict=True):
                out[i] = new
        return out, ["stop" if row and row[-1] in self.eos else "length" for row in out]

    @torch.inference_mode()
    def _generate(self, rows: list[Sequence[int]], params: GenParams) -> list[list[int]]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
        # transformers derives position ids from the mask: a left-padded row sees the positions it has alone.
        processors = LogitsProcessorList()
        if params.temperature > 0:
            seeds = [row_seed(params.seed, r) for r in rows]
            processors.append(RowSampler(params.temperature, params.top_p, seeds))
        dev = self.cfg.device
        seqs = self.model.generate(
            input_ids=input_ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=params.max_new_tokens,
            do_sample=False, logits_processor=processors,
        )  # fmt: skip
        return [_until_eos(row, self.eos) for row in seqs[:, width:].tolist()]


def _until_eos(row: list[int], eos: Sequence[int]) -> list[int]:
    """The generated tokens up to and including the first EOS (transformers pads finished rows after it)."""
    for j, tok in enumerate(row):
        if tok in eos:
            return row[: j + 1]
    return row
