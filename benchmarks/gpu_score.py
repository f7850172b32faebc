"""IFD scoring throughput on real model shapes: a paper-style per-sample loop vs raysel's HfLossScorer modes.

Builds random-init models of real shapes (Qwen2.5-0.5B, Llama-2-7B) from a transformers config in-process (no
downloads, no weights), saves each with a word-level tokenizer ("w0".."wN", one word = one token) into a temp dir
and scores the same rows in each mode:

  loop                 one forward per text, full logits, fp32 (the IFD paper's code; the Spearman reference)
  padded               HfLossScorer, length-sorted right-padded batches (packing=False), fp32
  packed               HfLossScorer, padding-free packed rows (packing=True), fp32
  packed-bf16          packed, bfloat16 weights
  packed-bf16-compile  packed bf16 with torch.compile(model.model, dynamic=True); a failure is recorded, not raised

Each row's (prompt, answer) token lengths come from ../shared/data/alpaca_gpt4_1k.json, estimated as
ceil(len(text) / 4) (4 characters per token; prompt = the Alpaca template around instruction + input); the words
themselves are random token ids. As in raysel.stages.score, each row is scored twice: cond = prompt + answer, and
direct = a fixed 3-token prefix + answer (at most direct_budget answer tokens). MFU = 2 * n_params * tokens /
seconds / peak, with n_params the matmul parameters (input embedding excluded unless tied) and tokens the non-pad
tokens of both texts; fp32 modes are divided by the same (bf16 dense) peak. The models are random, so bf16 /
compile Spearman here is only a rough guide to a trained model's.

Needs only torch, transformers, numpy and raysel's package (no Ray). On a GPU machine, from the repo root:

    PYTHONPATH=. python benchmarks/gpu_score.py --shapes qwen2.5-0.5b,llama-2-7b --json gpu_score.json

CPU smoke test: python benchmarks/gpu_score.py --shrink --rows 12 --shapes qwen2.5-0.5b --modes loop,padded,packed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysel.backends.base import TokenLoss
from raysel.backends.hf import HfLossScorer
from raysel.config import ScoreConfig
from raysel.ifd import direct_budget, ifd_score
from raysel.templates import build_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"
MODES = ("loop", "padded", "packed", "packed-bf16", "packed-bf16-compile")
SHAPES = ("qwen2.5-0.5b", "llama-2-7b")
CHARS_PER_TOKEN = 4
SPECIALS = ("[UNK]", "[PAD]", "[EOS]")
N_SPECIAL = len(SPECIALS)

Rows = tuple[list[str], list[str], str]  # prompts, answers, direct prefix


def model_config(shape: str, shrink: bool) -> Any:
    """transformers config of a real model shape; shrink keeps the family but makes it CPU-test sized."""
    from transformers import LlamaConfig, Qwen2Config

    if shape == "qwen2.5-0.5b":
        kw: dict[str, Any] = dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
        )
        small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        cls = Qwen2Config
    elif shape == "llama-2-7b":
        kw = dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=11008,
            vocab_size=32000,
            tie_word_embeddings=False,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        )
        small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
        cls = LlamaConfig
    else:
        raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    if shrink:
        kw.update(small, intermediate_size=128, vocab_size=512, max_position_embeddings=1024)
    return cls(**kw, pad_token_id=1, eos_token_id=2, bos_token_id=2)


def word_tokenizer(vocab_size: int) -> Any:
    """PreTrainedTokenizerFast whose words "w<id>" are each exactly one token (ids >= N_SPECIAL)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(N_SPECIAL, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def build_model_dir(shape: str, shrink: bool, device: str, root: Path) -> tuple[str, Any]:
    """Random-init model (initialised on `device`, saved in bf16 to halve the disk) + tokenizer in root/shape."""
    from transformers import AutoModelForCausalLM

    config = model_config(shape, shrink)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    path = root / shape
    model.to(torch.bfloat16).save_pretrained(path)
    word_tokenizer(config.vocab_size).save_pretrained(path)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return str(path), config


def estimate_lengths(data: Path, n: int) -> list[tuple[int, int]]:
    """(prompt, answer) token lengths of the first n rows: ceil(chars / CHARS_PER_TOKEN), at least 1."""
    records = json.loads(data.read_text(encoding="utf-8"))[:n]

    def n_tokens(text: str) -> int:
        return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))

    prompts = [build_prompt("alpaca", r["instruction"], r.get("input", "")) for r in records]
    return [(n_tokens(p), n_tokens(r["output"])) for p, r in zip(prompts, records, strict=True)]


def random_rows(lengths: Sequence[tuple[int, int]], vocab_size: int, seed: int = 0) -> Rows:
    """Texts of random words with the given token lengths; answers start with a space so words stay apart."""
    rng = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(N_SPECIAL, vocab_size, size=k))

    prompts = [words(p) for p, _ in lengths]
    answers = [" " + words(a) for _, a in lengths]
    return prompts, answers, words(3)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_params(model: Any) -> int:
    """Parameters that take part in matmuls: all, less the input embedding when it is not tied to the head."""
    total = sum(p.numel() for p in model.parameters())
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or emb.weight.data_ptr() != head.weight.data_ptr():
        total -= emb.weight.numel()
    return total


@torch.inference_mode()
def loop_losses(scorer: HfLossScorer, rows: Rows, max_length: int) -> tuple[list[TokenLoss], list[TokenLoss]]:
    """The paper's loop: one text per forward, full logits over the whole text, cond then direct."""
    tok, model, dev = scorer.tokenizer, scorer.model, scorer.cfg.device
    prompts, answers, prefix = rows

    def one(prompt: str, answer: str, budget: int | None) -> TokenLoss:
        ids = tok(prompt + answer)["input_ids"][:max_length]
        start = max(1, len(tok(prompt)["input_ids"]))
        end = max(start, len(ids) if budget is None else min(len(ids), start + max(0, budget)))
        if end == start:
            return TokenLoss(nll_sum=0.0, n_tokens=0, prompt_tokens=start)
        x = torch.tensor([ids[:end]], device=dev)
        logits = model(input_ids=x).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[start - 1 : end - 1].float(), x[0, start:end], reduction="sum")
        return TokenLoss(nll_sum=float(nll), n_tokens=end - start, prompt_tokens=start)

    cond, direct = [], []
    for p, a in zip(prompts, answers, strict=True):
        c = one(p, a, None)
        cond.append(c)
        direct.append(one(prefix, a, direct_budget(c, max_length)))
    return cond, direct


def scorer_losses(scorer: HfLossScorer, rows: Rows, max_length: int) -> tuple[list[TokenLoss], list[TokenLoss]]:
    """raysel's two passes (raysel.stages.score.IfdScoreStage._cherry): cond texts, then direct texts."""
    prompts, answers, prefix = rows
    cond = scorer.score(prompts, answers, max_length=max_length)
    budgets = [direct_budget(c, max_length) for c in cond]
    direct = scorer.score([prefix] * len(answers), answers, max_length=max_length, max_answer_tokens=budgets)
    return cond, direct


def scored_tokens(cond: Sequence[TokenLoss], direct: Sequence[TokenLoss]) -> int:
    """Non-pad tokens forwarded: each scored text's tokens up to its last scored answer token."""
    return sum(t.prompt_tokens + t.n_tokens for t in (*cond, *direct) if t.n_tokens > 0)


def ifds(cond: Sequence[TokenLoss], direct: Sequence[TokenLoss], max_length: int) -> np.ndarray:
    return np.array([ifd_score(c, d, max_length).ifd for c, d in zip(cond, direct, strict=True)], dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the rows finite in both (ties get ordinal ranks; random losses have none)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    ra = np.argsort(np.argsort(a[ok])).astype(np.float64)
    rb = np.argsort(np.argsort(b[ok])).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def bench_shape(shape: str, args: argparse.Namespace, lengths: Sequence[tuple[int, int]], root: Path) -> dict:
    path, config = build_model_dir(shape, args.shrink, args.device, root)
    rows = random_rows(lengths, config.vocab_size)
    warm = tuple(x[: args.warmup] for x in rows[:2]) + (rows[2],)
    ml = args.max_length
    out: dict[str, Any] = {"path_note": "random init, saved bf16, loaded in each mode's dtype", "modes": {}}
    ref: np.ndarray | None = None
    scorer: HfLossScorer | None = None
    tokens = 0

    def record(mode: str, cond: list[TokenLoss], direct: list[TokenLoss], seconds: float, dtype: str) -> dict:
        n_tok = scored_tokens(cond, direct)
        vals = ifds(cond, direct, ml)
        res = {
            "dtype": dtype,
            "seconds": round(seconds, 4),
            "rows_per_s": round(len(cond) / seconds, 3),
            "tokens": n_tok,
            "tokens_per_s": round(n_tok / seconds, 1),
            "mfu": float(f"{2 * out['n_params'] * n_tok / seconds / (args.peak_tflops * 1e12):.4g}"),
        }
        if ref is not None:
            ok = np.isfinite(ref) & np.isfinite(vals)
            res["spearman_vs_loop"] = round(spearman(ref, vals), 6)
            res["max_abs_ifd_diff_vs_loop"] = float(np.max(np.abs(ref[ok] - vals[ok]))) if ok.any() else None
        out["modes"][mode] = res
        return res

    def get_scorer(dtype: str, packing: bool) -> HfLossScorer:
        nonlocal scorer
        if scorer is None or scorer.cfg.dtype != dtype:
            scorer = None
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            cfg = ScoreConfig(model=path, device=args.device, dtype=dtype, max_length=ml, packing=packing)
            if args.token_budget:
                cfg = dataclasses.replace(cfg, token_budget=args.token_budget)
            scorer = HfLossScorer(cfg)
            probe = f"w{N_SPECIAL} w{N_SPECIAL + 1}"
            if scorer.tokenizer(probe)["input_ids"] != [N_SPECIAL, N_SPECIAL + 1]:
                # transformers 5's AutoTokenizer maps some model types (qwen2) to their own tokenizer class, which
                # ignores a word-level tokenizer.json; load the saved file as it is.
                from transformers import PreTrainedTokenizerFast

                auto = type(scorer.tokenizer).__name__
                scorer.tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
                out["tokenizer_note"] = f"AutoTokenizer gave {auto}, not the saved word tokenizer; reloaded as saved"
            out.setdefault("n_params", matmul_params(scorer.model))
            out.setdefault("token_budget", cfg.token_budget)
        scorer.cfg = dataclasses.replace(scorer.cfg, packing=packing)
        return scorer

    # The fp32 loop is always run first: it is the Spearman reference (reported only if asked for).
    s = get_scorer("float32", False)
    loop_losses(s, warm, ml)
    (cond, direct), secs = timed(lambda: loop_losses(s, rows, ml), args.device)
    res = record("loop", cond, direct, secs, "float32")
    ref = ifds(cond, direct, ml)
    tokens = res["tokens"]
    out["rows_scored"] = int(np.isfinite(ref).sum())
    if "loop" not in args.modes:
        out["modes"].pop("loop")

    for mode in (m for m in MODES if m in args.modes and m != "loop"):
        dtype = "bfloat16" if "bf16" in mode else "float32"
        try:
            s = None  # type: ignore[assignment]  # let a scorer of another dtype be freed before the next loads
            s = get_scorer(dtype, mode != "padded")
            extra: dict[str, Any] = {}
            if mode.endswith("compile"):
                s.model.model = torch.compile(s.model.model, dynamic=True)
                # A full untimed pass: dynamic shapes still compile a few graphs as new lengths show up.
                _, extra["compile_warmup_s"] = timed(lambda: scorer_losses(s, rows, ml), args.device)  # noqa: B023
            else:
                scorer_losses(s, warm, ml)
            (cond, direct), secs = timed(lambda: scorer_losses(s, rows, ml), args.device)  # noqa: B023
            record(mode, cond, direct, secs, dtype).update(extra)
        except Exception as e:  # noqa: BLE001 - a failed mode (compile, OOM) is reported, the rest still run
            out["modes"][mode] = {"error": f"{type(e).__name__}: {e}"[:2000], "trace": traceback.format_exc()[-2000:]}
            if mode.endswith("compile") and scorer is not None:
                scorer = None  # its model may be half-wrapped
    out["tokens_per_pass"] = tokens
    del scorer
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--rows", type=int, default=999)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--token-budget", type=int, default=None, help="ScoreConfig.token_budget (default: its own)")
    ap.add_argument("--warmup", type=int, default=16, help="rows scored untimed before each mode")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="MFU denominator (H100 SXM bf16 dense)")
    ap.add_argument("--shrink", action="store_true", help="tiny models of the same families (CPU tests)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES] + [s for s in args.shapes if s not in SHAPES]
    if bad:
        ap.error(f"unknown mode/shape: {', '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: {args.data} is absent")
        return 0
    import transformers

    lengths = estimate_lengths(args.data, args.rows)
    result: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": len(lengths),
        "max_length": args.max_length,
        "shrink": args.shrink,
        "token_lengths": f"ceil(chars / {CHARS_PER_TOKEN}) of the Alpaca-templated prompt and of the output",
        "mfu": f"2 * n_params * tokens / s / {args.peak_tflops} TFLOPS; fp32 modes use the same (bf16) peak",
        "shapes": {},
    }
    with tempfile.TemporaryDirectory(prefix="raysel-gpu-score-") as tmp:
        for shape in args.shapes:
            result["shapes"][shape] = bench_shape(shape, args, lengths, Path(tmp))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
