"""Scorer cost for `raysel agree`: rows/s of a small and a large IFD scorer on the same rows, in one run.

The small scorer is the packaged SmolLM2-135M-Instruct; the large one a random-init model of a real shape
(SmolLM2-360M or SmolLM2-1.7B: same tokenizer and architecture, so the token counts are equal and only
the model's size differs). Both go through `raysel agree` itself (Ray Data, the IFD stage, one actor
pool each), so the rows/s are those agreement.json reports: the step's wall time, model load included.
A random-init model ranks nothing: the agreement figures of this run are not a finding, only the costs.

Run: python benchmarks/agree_throughput.py [--rows 24] [--max-length 256] [--large-shape smollm2-1.7b]
Prints one JSON object; record it in benchmarks/RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_gpt4_1k.json"

SHAPES = {  # from the released models' config.json
    "smollm2-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5},
    "smollm2-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip


def random_model(shape: str) -> tuple[Path, int]:
    """A seeded random-init model of `shape` with SmolLM2's config otherwise and its tokenizer, cached."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from raysel.backends.models import cache_dir, resolve_model

    base = resolve_model("smollm2")
    target = cache_dir() / "bench" / f"random-{shape}"
    config = AutoConfig.from_pretrained(base)
    for k, v in SHAPES[shape].items():
        setattr(config, k, v)
    config.head_dim = config.hidden_size // config.num_attention_heads
    if not (target / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))  # written whole, then renamed into place
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        tmp.rename(target)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return target, params


def params_of(path: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--large-shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="agreement directory (default: a temp dir, removed)")
    args = p.parse_args()
    if not DATA.is_file():
        sys.exit(f"skipped: {DATA} is absent")

    from raysel.agree.run import run_agree
    from raysel.backends.models import resolve_model
    from raysel.config import load_agree_config

    large, large_params = random_model(args.large_shape)
    small_params = params_of(resolve_model("smollm2"))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output or str(Path(tmp) / "agree")
        scorer = {"max_length": args.max_length, "threads": args.threads, "device": args.device, "batch_size": 8}
        overrides = {"data.input": str(DATA), "data.limit": args.rows, "output": out, "sample": args.rows,
                     "bootstrap": 200, "small.model": "smollm2", "large.model": str(large),
                     **{f"{w}.{k}": v for w in ("small", "large") for k, v in scorer.items()}}  # fmt: skip
        r = run_agree(load_agree_config(None, overrides), overwrite=True).result
    small, large_cost = r["small"], r["large"]
    print(json.dumps({
        "benchmark": "agree_throughput", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "device": args.device, "rows": r["rows"], "max_length": args.max_length,
        "small": {"model": "SmolLM2-135M-Instruct", "params": small_params, "tokens": small["tokens"],
                  "seconds": small["seconds"], "rows_per_s": small["rows_per_s"]},
        "large": {"model": f"random-init {args.large_shape} shape", "params": large_params,
                  "tokens": large_cost["tokens"], "seconds": large_cost["seconds"],
                  "rows_per_s": large_cost["rows_per_s"]},
        "speedup": small["rows_per_s"] / large_cost["rows_per_s"],
        "params_ratio": large_params / small_params,
        "spearman_random_init": r["spearman"]["value"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
