"""SFT throughput: a plain transformers training loop vs raysel's SFT step, in process and through Ray Train.

Run (CPU): python benchmarks/sft_throughput.py [--model smollm2 | --random-init tiny] [--rows 32] [--steps 4]
               [--batch-size 8] [--micro-batch-size 4] [--max-length 256] [--threads 2]
Run (GPU, no Ray, only torch + transformers needed):
           python benchmarks/sft_throughput.py --device cuda --random-init Qwen2.5-0.5B-shapes [--steps 20]
               [--batch-size 32] [--micro-batch-size 8] [--max-length 512] [--peak-tflops 989]
Same rows, same batches, same starting weights in every loop. Prints one JSON object; record it in
benchmarks/RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from raysel.train import sft

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"
QWEN05_SHAPES = {  # Qwen2.5-0.5B's config.json
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}
TINY_SHAPES = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 1024,
}


def plain_step(model, optimizer, scheduler, data: sft.SftData, rows, args, device, autocast) -> None:
    """The usual hand-written loop: micro-batches in data order, attention mask, transformers' own loss,
    each micro-batch's mean loss divided by the accumulation steps."""
    chunks = [rows[j : j + args.micro_batch_size] for j in range(0, len(rows), args.micro_batch_size)]
    for chunk in chunks:
        input_ids, labels = data.collate(chunk.tolist(), pad_id=0)
        mask = torch.zeros_like(input_ids)
        for b, i in enumerate(chunk):
            mask[b, : data.lengths()[i]] = 1
        with autocast or nullcontext():
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        (out.loss / len(chunks)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), sft.MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def timed_loop(kind: str, make_model, data: sft.SftData, args, device: str) -> dict:
    """samples/s and tokens/s (real tokens, padding excluded) of `args.steps` optimizer steps after one warm-up."""
    model = make_model().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    cfg = SimpleNamespace(warmup_ratio=0.03)
    scheduler = sft.cosine_schedule(optimizer, cfg, args.steps + 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None
    samples = tokens = 0
    for step in range(args.steps + 1):
        rows = sft.step_rows(len(data), step, world_size=1, rank=0, batch_size=args.batch_size, seed=0)
        if step == 1:  # step 0 is the warm-up (allocator, kernels, optimizer state)
            _sync(device)
            start = time.perf_counter()
        if kind == "plain":
            plain_step(model, optimizer, scheduler, data, rows, args, device, autocast)
        else:
            kw = {"micro_batch_size": args.micro_batch_size, "pad_id": 0, "device": torch.device(device)}
            sft.train_step(model, optimizer, scheduler, data, rows, autocast=autocast, **kw)
        if step >= 1:
            samples, tokens = samples + len(rows), tokens + int(data.lengths()[rows].sum())
    _sync(device)
    seconds = time.perf_counter() - start
    return {"samples_s": round(samples / seconds, 3), "tok_s": round(tokens / seconds, 1), "seconds": round(seconds, 2)}


def best_of(make_model, data: sft.SftData, args, device: str) -> tuple[dict, dict]:
    """The plain loop and raysel's step, alternated args.repeats times; the fastest run of each (shared
    machines: another job's burst must not decide the comparison)."""
    runs: dict[str, list[dict]] = {"plain": [], "raysel": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(timed_loop(kind, make_model, data, args, device))
            if device == "cuda":
                torch.cuda.empty_cache()
    return tuple(max(r, key=lambda x: x["samples_s"]) for r in runs.values())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ray_finetune(model_path: str, rows: list[dict], args) -> dict:
    """raysel's finetune() through Ray Train, 1 worker of `threads` CPUs: end to end and inside the loop."""
    import pyarrow as pa
    import ray

    from raysel.config import TrainConfig
    from raysel.train.finetune import finetune

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    cfg = TrainConfig(
        max_steps=args.steps, lr=args.lr, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        max_length=args.max_length, cpus_per_worker=args.threads, checkpoint_every=10**6,
    )  # fmt: skip
    table = pa.table({k: [r[k] for r in rows] for k in ("instruction", "input", "output")})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = finetune(
            cfg, model=model_path, rows=table, template="alpaca",
            output_dir=Path(tmp) / "model", storage_path=Path(tmp) / "storage",
        )  # fmt: skip
        wall = time.perf_counter() - start
        summary = json.loads((out / "train_summary.json").read_text())
    ray.shutdown()
    s = summary["train_s"]
    return {
        "samples_s": round(summary["samples"] / s, 3),
        "tok_s": round(summary["tokens"] / s, 1),
        "seconds": round(s, 2),
        "end_to_end_s": round(wall, 1),
        "note": "all steps including the first; end_to_end_s adds Ray Train start, model load, checkpoint, export",
    }


def synthetic_data(n: int, max_length: int, vocab: int, seed: int = 0) -> sft.SftData:
    """Random token rows, lengths uniform in [max_length / 4, max_length], the first 40% of each a prompt."""
    rng = np.random.default_rng(seed)
    examples = []
    for length in rng.integers(max_length // 4, max_length + 1, n):
        ids = rng.integers(3, vocab, length).tolist()
        start = int(0.4 * length)
        examples.append((ids, [sft.IGNORE_INDEX] * start + ids[start:]))
    return sft.SftData.from_examples(examples)


def flops_per_token(model, avg_len: float) -> float:
    """6 x matmul parameters (tied embeddings counted once, as the LM head) + 12 x layers x hidden x context
    (attention scores and values; PaLM's appendix B count)."""
    conf = model.config
    n = sum(p.numel() for p in model.parameters())
    if not conf.tie_word_embeddings:
        n -= conf.vocab_size * conf.hidden_size  # the input embedding is a lookup, not a matmul
    return 6 * n + 12 * conf.num_hidden_layers * conf.hidden_size * avg_len


def random_init(shapes: dict):
    """A factory of identically initialized random models of the given shapes (Qwen2 architecture)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    conf = Qwen2Config(**shapes)

    def make():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(conf, dtype=torch.float32)

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--random-init", choices=["tiny", "Qwen2.5-0.5B-shapes"], default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=2, help="alternated runs of the in-process loops; best kept")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.random_init == "Qwen2.5-0.5B-shapes":
        return gpu_shapes(args)
    if not DATA.is_file():
        sys.exit(f"skipped: {DATA} is absent")
    cpu_compare(args)


def gpu_shapes(args) -> None:
    """Random-init Qwen2.5-0.5B shapes on synthetic rows: plain loop vs raysel's step, samples/s and MFU."""
    n_rows = max(args.rows, args.batch_size * (args.steps + 1))
    data = synthetic_data(n_rows, args.max_length, QWEN05_SHAPES["vocab_size"])
    make = random_init(QWEN05_SHAPES)
    with torch.device("meta"):  # shapes only, no memory
        probe = make()
    avg_len = float(data.lengths().mean())
    fpt = flops_per_token(probe, avg_len)
    result = {"machine": _machine(args), "model": "Qwen2.5-0.5B shapes, random init, bf16 autocast, fp32 AdamW"}
    result |= {"params": sum(p.numel() for p in probe.parameters()), "avg_len": round(avg_len, 1)}
    del probe
    result["plain"], result["raysel"] = best_of(make, data, args, args.device)
    for kind in ("plain", "raysel"):
        result[kind]["mfu"] = round(result[kind]["tok_s"] * fpt / (args.peak_tflops * 1e12), 4)
    result["speedup"] = round(result["raysel"]["samples_s"] / result["plain"]["samples_s"], 2)
    print(json.dumps(result, indent=2))


def cpu_compare(args) -> None:
    """Real alpaca rows: plain loop, raysel's step in process, raysel's finetune() through Ray Train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysel.backends.models import resolve_model
    from raysel.templates import build_prompt

    rows = json.loads(DATA.read_text())[: args.rows]
    tok_path = resolve_model("smollm2" if args.random_init else args.model)
    tok = AutoTokenizer.from_pretrained(tok_path)
    prompts = [build_prompt("alpaca", r["instruction"], r["input"]) for r in rows]
    data = sft.SftData.from_examples(sft.sft_examples(tok, prompts, [r["output"] for r in rows], args.max_length))
    with tempfile.TemporaryDirectory() as tmp:
        model_path = tok_path
        if args.random_init == "tiny":
            model_path = str(Path(tmp) / "tiny")
            random_init(TINY_SHAPES | {"vocab_size": len(tok)})().save_pretrained(model_path)
            tok.save_pretrained(model_path)
        make = lambda: AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)  # noqa: E731
        result = {"machine": _machine(args), "model": args.random_init or args.model, "rows": len(data)}
        result |= {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length}
        result["plain_loop"], result["raysel_step"] = best_of(make, data, args, "cpu")
        result["raysel_ray_train"] = ray_finetune(model_path, rows, args)
    base = result["plain_loop"]["samples_s"]
    for k in ("raysel_step", "raysel_ray_train"):
        result[k]["speedup"] = round(result[k]["samples_s"] / base, 2)
    print(json.dumps(result, indent=2))


def _machine(args) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    return f"{platform.machine()} {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {args.threads} threads"


if __name__ == "__main__":
    main()
