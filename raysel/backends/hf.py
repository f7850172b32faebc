"""transformers loss scorer: length-sorted, token-budgeted right-padded batches; logits only on answer tokens."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raysel.backends.base import TokenLoss, cpu_threads
from raysel.backends.models import resolve_model
from raysel.backends.spans import TokenizerPrompts, answer_spans, token_losses
from raysel.config import ScoreConfig


def pack_by_length(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Row indexes grouped into batches of similar length whose padded size stays within token_budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pack_bins(lengths: Sequence[int], width: int, token_budget: int) -> list[list[list[int]]]:
    """Rows packed first-fit-decreasing into bins of at most `width` tokens, and bins grouped into forwards of at
    most token_budget // width bins: [forward][bin] -> row indexes. Deterministic for given lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), None)
        if j is None:
            bins.append([i])
            room.append(width - lengths[i])
        else:
            bins[j].append(i)
            room[j] -= lengths[i]
    per = max(1, token_budget // width)
    return [bins[k : k + per] for k in range(0, len(bins), per)]


class HfLossScorer(TokenizerPrompts):
    """LossScorer on transformers (CPU or CUDA). Scores agree with a one-row-at-a-time loop to float error."""

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        # On CPU, several 1-thread forwards side by side beat one multi-threaded forward on a small model's
        # matmuls (measured: 2 x 1 thread gives 1.23x the tokens/s of 1 x 2 threads on this project's
        # 2-core machine); torch releases the GIL inside its kernels, so threads of one process do it.
        threads = cpu_threads(cfg)
        self._pool = None
        if cfg.device == "cpu":
            torch.set_num_threads(1)
            if threads > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="raysel-hf")
        path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        model = model.to(cfg.device).eval()
        if cfg.quantize != "none":
            from raysel.backends.quant import calibration_ids, quantize

            model = quantize(model, cfg.quantize, calibration=calibration_ids(self.tokenizer))
        self.model = model
        # Logits for answer positions only: the vocab projection is a large share of a small model's
        # FLOPs. Models that post-process logits (softcapping, scaling) take the full forward instead.
        conf = model.config
        self._fast = not (getattr(conf, "final_logit_softcapping", None) or getattr(conf, "logit_scale", None))
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0

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
        nll = [0.0] * len(ids)
        todo = [i for i in range(len(ids)) if ends[i] > starts[i]]
        lengths = [ends[i] for i in todo]
        if self.cfg.packing:
            # Padding-free: several rows share one sequence, each with its own positions and attention.
            packs = pack_bins(lengths, max_length, self.cfg.token_budget)  # every row fits: ends <= max_length
            batches = [[[todo[j] for j in b] for b in fwd] for fwd in packs]

            def forward(bins: list[list[int]]) -> list[float]:
                return self._forward_packed([[(ids[i][: ends[i]], starts[i]) for i in b] for b in bins])

        else:
            batches = [[todo[j] for j in b] for b in pack_by_length(lengths, self.cfg.token_budget)]

            def forward(rows: list[int]) -> list[float]:
                return self._forward([ids[i][: ends[i]] for i in rows], [starts[i] for i in rows])

        sums = self._pool.map(forward, batches) if self._pool else map(forward, batches)
        for rows, batch_sums in zip(batches, sums, strict=True):
            flat = [i for b in rows for i in b] if self.cfg.packing else rows
            for i, s in zip(flat, batch_sums, strict=True):
                nll[i] = s
        return token_losses(nll, starts, ends)

    @torch.inference_mode()
    def _forward_packed(self, bins: list[list[tuple[list[int], int]]]) -> list[float]:
        """One forward over packed bins: position ids restart at 0 for each row, and transformers confines each
        row's attention to itself (block-diagonal causal mask, found from the position ids). Sums in row order."""
        width = max(sum(len(r) for r, _ in b) for b in bins)
        input_ids = torch.full((len(bins), width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(bins), width), dtype=torch.long)
        b_idx, pos = [], []
        for b, rows in enumerate(bins):
            offset = 0
            for row, start in rows:
                n = len(row)
                input_ids[b, offset : offset + n] = torch.tensor(row)
                position_ids[b, offset : offset + n] = torch.arange(n)
                b_idx += [b] * (n - start)
                pos += range(offset + start - 1, offset + n - 1)
                offset += n
            # The pads restart their positions too: a row of their own, which no real token attends to.
            position_ids[b, offset:] = torch.arange(width - offset)
        counts = [len(row) - start for rows in bins for row, start in rows]
        row_of = [k for k, c in enumerate(counts) for _ in range(c)]
        # No cache: transformers derives the per-row mask from the position ids only when there is none.
        return self._answer_nll(input_ids, b_idx, pos, row_of, len(counts), position_ids=position_ids, use_cache=False)

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], starts: list[int]) -> list[float]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        b_idx, pos = [], []
        for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
            input_ids[b, : len(row)] = torch.tensor(row)
            b_idx += [b] * (len(row) - start)
            pos += range(start - 1, len(row) - 1)  # hidden state at p predicts token p + 1
        # No attention mask: with right padding, causal attention never lets a real token see a pad (pads
        # come after it), and positions start at 0 as unpadded. Without a mask SDPA takes its fused causal
        # kernel; a padding mask forces the slower masked path.
        return self._answer_nll(input_ids, b_idx, pos, b_idx, len(rows))

    def _answer_nll(self, input_ids, b_idx: list[int], pos: list[int], row_of: list[int], n: int, **kw) -> list[float]:
        """Per-row sums of -log p(token at p + 1) from the hidden state at (b, p): the vocabulary projection on
        those positions only (the full logits for models that post-process them)."""
        dev = self.cfg.device
        input_ids = input_ids.to(dev)
        kw = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        b_t, p_t = torch.tensor(b_idx, device=dev), torch.tensor(pos, device=dev)
        if self._fast:
            hidden = self.model.base_model(input_ids=input_ids, **kw).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[b_t, p_t])
        else:
            logits = self.model(input_ids=input_ids, **kw).logits[b_t, p_t]
        token_nll = torch.nn.functional.cross_entropy(logits.float(), input_ids[b_t, p_t + 1], reduction="none")
        sums = torch.zeros(n, dtype=torch.float64, device=dev)
        return sums.index_add_(0, torch.tensor(row_of, device=dev), token_nll.double()).tolist()
