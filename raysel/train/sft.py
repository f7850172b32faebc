"""Causal-LM SFT without Ray: prompt-masked examples, per-step batches, the masked-loss step, LoRA, HF export.

Imports only torch and numpy at module level (transformers and peft inside functions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # not at runtime: this module runs where only torch and transformers are installed
    import pyarrow as pa

    from raysel.config import TrainConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a token that carries no loss (prompt and padding), as transformers and torch count it."""
MAX_GRAD_NORM = 1.0
"""Gradient clipping norm: transformers' Trainer default, which the Alpaca / Cherry recipes train with."""


def sft_examples(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int, add_special_tokens: bool = True
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels of prompt + response + eos, truncated to max_length (the head is kept).

    The answer starts where the scorer's does (raysel.backends.spans.answer_spans: the whole text is
    tokenized, the answer starts at len(tokenizer(prompt))). Labels are IGNORE_INDEX on the prompt tokens
    and equal to the ids on the answer and eos; a row whose answer was truncated away has no label left.
    add_special_tokens=False: the prompts carry their own (IterIT's chat texts, as its code tokenizes them).
    """
    from raysel.backends.spans import answer_spans

    eos = tokenizer.eos_token or ""
    responses = [r + eos for r in responses]
    ids, starts, _ = answer_spans(tokenizer, prompts, responses, max_length, None, add_special_tokens)
    return [(row, [IGNORE_INDEX] * min(s, len(row)) + row[s:]) for row, s in zip(ids, starts, strict=True)]


def table_examples(tokenizer: Any, rows: pa.Table, template: str, max_length: int) -> tuple[SftData, int]:
    """Prompt-masked examples of a table's rows (instruction, input, output) that keep at least one answer
    token, and how many did not (logged)."""
    from raysel import schema
    from raysel.backends.spans import render_chat
    from raysel.templates import build_prompt

    cols = [rows.column(c).to_pylist() for c in (schema.INSTRUCTION, schema.INPUT, schema.OUTPUT)]
    prompts = [
        build_prompt(template, i, x, lambda u, system=None: render_chat(tokenizer, u, system))
        for i, x in zip(*cols[:2], strict=True)
    ]
    examples = sft_examples(tokenizer, prompts, cols[2], max_length, add_special_tokens=template != "iterit")
    kept = [e for e in examples if any(y != IGNORE_INDEX for y in e[1])]
    skipped = len(examples) - len(kept)
    if skipped:
        logger.warning("%d of %d rows have no answer token left within max_length=%d", skipped, len(rows), max_length)
    if not kept:
        raise ValueError(f"no row has an answer token within train.max_length={max_length}; raise it")
    return SftData.from_examples(kept), skipped


@dataclass(frozen=True)
class SftData:
    """Training examples packed flat (cheap to ship to workers): row i is ids[offsets[i]:offsets[i+1]],
    its labels are the ids from starts[i] on."""

    ids: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray

    @classmethod
    def from_examples(cls, examples: Sequence[tuple[list[int], list[int]]]) -> SftData:
        lengths = [len(ids) for ids, _ in examples]
        starts = [next((j for j, y in enumerate(lab) if y != IGNORE_INDEX), len(lab)) for _, lab in examples]
        flat = [t for ids, _ in examples for t in ids]
        return cls(
            ids=np.asarray(flat, dtype=np.int64),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
            starts=np.asarray(starts, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.starts)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def answer_tokens(self) -> np.ndarray:
        """Tokens that carry loss, per row."""
        return self.lengths() - self.starts

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.ids, self.offsets, self.starts):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def collate(self, rows: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids and labels (IGNORE_INDEX on prompt and padding) of the given rows."""
        width = int(max(self.offsets[i + 1] - self.offsets[i] for i in rows))
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for b, i in enumerate(rows):
            row = torch.tensor(self.ids[self.offsets[i] : self.offsets[i + 1]])  # a copy: Ray's arrays are read-only
            input_ids[b, : len(row)] = row
            labels[b, self.starts[i] : len(row)] = row[self.starts[i] :]
        return input_ids, labels


def steps_per_epoch(n_rows: int, world_size: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n_rows / world_size) / batch_size)


def step_rows(n_rows: int, step: int, *, world_size: int, rank: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows this rank trains on at optimizer step `step` (0-based): a function of (seed, step) only.

    Each epoch is a permutation seeded by (seed, epoch), padded by wrapping around to a multiple of the
    world size (as torch's DistributedSampler pads) and dealt round-robin to the ranks, so every rank runs
    the same number of steps. Since nothing depends on earlier steps, a resumed run gets the same batches.
    """
    epoch, k = divmod(step, steps_per_epoch(n_rows, world_size, batch_size))
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    shard = np.resize(perm, math.ceil(n_rows / world_size) * world_size)[rank::world_size]
    return shard[k * batch_size : (k + 1) * batch_size]


def init_seed(seed: int) -> int:
    """Torch seed for the adapters' init: the same on every rank, and never one of step_seed's (a two-entry
    sequence, where step_seed's have three)."""
    return int(np.random.SeedSequence([seed, 1 << 32]).generate_state(1)[0])


def step_seed(seed: int, rank: int, step: int) -> int:
    """Torch seed for one rank's step (dropout): resuming needs no saved RNG state."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: SftData,
    rows: np.ndarray,
    *,
    micro_batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: AbstractContextManager | None = None,
) -> tuple[float, int]:
    """One optimizer step over `rows` in micro-batches; returns (summed answer-token NLL, answer tokens).

    The loss is the mean over every answer token of the step (not a mean of micro-batch means), so
    gradient accumulation gives the gradient one big batch would. Rows are grouped by length to pad less.
    """
    n_tokens = int(data.answer_tokens()[rows].sum())
    order = sorted(rows.tolist(), key=lambda i: -(data.offsets[i + 1] - data.offsets[i]))
    chunks = [order[j : j + micro_batch_size] for j in range(0, len(order), micro_batch_size)]
    nll_sum = 0.0
    for j, chunk in enumerate(chunks):
        # Under DDP, all-reduce the gradients only once per step, after the last micro-batch.
        sync = j == len(chunks) - 1 or not hasattr(model, "no_sync")
        input_ids, labels = (t.to(device) for t in data.collate(chunk, pad_id))
        with nullcontext() if sync else model.no_sync():
            # No attention mask: with right padding, causal attention never lets a real token see a pad.
            with autocast or nullcontext():
                logits = model(input_ids=input_ids).logits
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum"
            )
            (nll / max(n_tokens, 1)).backward()
        nll_sum += nll.item()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return nll_sum, n_tokens


def cosine_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """Linear warmup over ceil(warmup_ratio x total) steps, then cosine decay to 0 (transformers' schedule),
    except that the warmup leaves the last step out: transformers' first warmup step has LR 0, so a 1-step run
    (a small pre-experience sample at batch 8) would return the model unchanged."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = min(math.ceil(cfg.warmup_ratio * total_steps), max(total_steps - 1, 0))
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def load_model(path: str, cfg: TrainConfig, seed: int = 0) -> torch.nn.Module:
    """float32 master weights (bfloat16 is autocast on GPU), wrapped in LoRA adapters for method "lora".

    The adapters' random init (peft draws lora_A from torch's global RNG) is a function of `seed`: without
    it, a run's result hung on whatever a reused Ray worker process had drawn before.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    # "all-linear": every Linear of the blocks (q/k/v/o and gate/up/down on Llama and Qwen), not the LM head.
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets or "all-linear",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed))
        return get_peft_model(model, lora)


def trainable_state(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: every weight (full) or the adapter (LoRA), on CPU."""
    if cfg.method == "lora":
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items()}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: TrainConfig) -> None:
    if cfg.method == "lora":
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint adapter has unexpected keys: {result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(state)


def merged_model(path: str, cfg: TrainConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The base model with the trained weights in, LoRA merged: a plain transformers model (float32)."""
    model = load_model(path, cfg)
    load_trainable_state(model, state, cfg)
    return model.merge_and_unload() if cfg.method == "lora" else model


def save_hf(model: torch.nn.Module, tokenizer: Any, out: Path, extra: dict[str, dict]) -> None:
    """Write model, tokenizer and extra JSON files (name -> content) as one HF directory, atomically: into a
    temp dir beside `out`, then renamed (a previous `out` is replaced; it is missing only between two renames)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, content in extra.items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
