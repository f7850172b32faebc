"""ONNX Runtime and OpenVINO as approximate CPU scorers: speed and ranking agreement against torch fp32 IFD.

Run, in a venv of its own (the project's venv does not carry these runtimes; install the CPU torch first so that
nothing pulls a CUDA one):

    python3 -m venv benchmarks/.venv-rt
    benchmarks/.venv-rt/bin/pip install torch==2.13.0
    benchmarks/.venv-rt/bin/pip install transformers==5.19.0 gguf numpy scipy pyarrow \
        onnxruntime openvino nncf onnx onnxscript
    HF_HUB_OFFLINE=1 PYTHONPATH=. benchmarks/.venv-rt/bin/python benchmarks/cpu_runtimes.py \
        [--rows 200] [--rounds 2 --time-rows 24] [--modes ort-fp32 ort-int8 ov-fp32 ov-int8w ...]

The decoder (embeddings, blocks, final norm -> last hidden state) is exported once with torch.onnx.export (cached
under --workdir); ONNX Runtime runs it as exported or quantized with onnxruntime.quantization, OpenVINO reads the
same ONNX file, fp32 or compressed / quantized with NNCF. Every mode scores the same rows through the same code
path (IfdScoreStage, hf scorer, --threads forwards side by side): only stage.scorer.model is swapped for a stand-in
whose base_model runs the runtime, while the vocab head on the answer positions stays the torch fp32 one (keeping
the head fp32 mattered for the ranking in benchmarks/cpu_quant.py). Each runtime gets one thread per forward:
ONNX Runtime one session with intra_op_num_threads=1 (Run is thread-safe), OpenVINO NUM_STREAMS=--threads with
one infer request per scoring thread. Accuracy: one pass over --rows rows per mode; speed: --rounds rounds over
the first --time-rows rows, torch fp32 and every mode alternating (the machine is shared: ratios within a run
matter); speedup = median over rounds of torch fp32 time / mode time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_quant import DATA, columns, mode_entry  # noqa: E402 - the same rows and the same figures

ORT_MODES = {
    "ort-fp32": "ONNX Runtime, the exported fp32 graph",
    "ort-int8": "quantize_dynamic: MatMul weights int8 per-channel, activations uint8 per-tensor (dynamic)",
    "ort-int8-rr": "ort-int8 with reduce_range (7-bit weights: no u8s8 saturation on AVX2)",
    "ort-int8-u8": "ort-int8 with uint8 weights (u8u8 kernels)",
    "ort-sq-token": "SmoothQuant folded (raysel's, alpha 0.5) + inputs of every Linear divided by their per-token "
    "absmax before export, then ort-int8: per-token activation scales",
    "ort-sq-token-rr": "ort-sq-token with reduce_range",
    "ort-sq-fused": "ort-sq-token with q/k/v and gate/up fused into one Linear each (bigger GEMMs)",
    "ort-sq-fused-rr": "ort-sq-fused with reduce_range",
}
OV_MODES = {
    "ov-fp32": "OpenVINO, the same ONNX file, f32 inference precision",
    "ov-int8w": "nncf.compress_weights INT8_ASYM per-channel (CPU plugin's default dynamic activation quantization)",
    "ov-int8w-f32act": "ov-int8w with DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (weights decompressed, fp32 compute)",
    "ov-int8": "nncf.quantize, ModelType.TRANSFORMER (its default SmoothQuant), static int8 activations",
    "ov-int8-sq0.5": "ov-int8 with SmoothQuant alpha 0.5 on the MatMuls",
}
TORCH_MODES = {"torch-smoothquant": "raysel.backends.quant 'smoothquant' (score.quantize=smoothquant), for reference"}
DEFAULT_MODES = [
    "ort-fp32", "ort-int8", "ort-int8-rr", "ort-sq-token", "ort-sq-token-rr",
    "ov-fp32", "ov-int8w", "ov-int8", "torch-smoothquant",
]  # fmt: skip


class RuntimeModel:
    """Stands in for the transformers model inside HfLossScorer (its fast path): base_model(input_ids=...) runs
    the runtime's decoder and returns the last hidden state; get_output_embeddings() is the torch fp32 head."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], head: torch.nn.Module) -> None:
        self._run, self._head = run, head

    def base_model(self, input_ids: torch.Tensor, **kw) -> SimpleNamespace:
        if kw:
            raise ValueError(f"runtime stand-in takes input_ids only (packing off), got {sorted(kw)}")
        return SimpleNamespace(last_hidden_state=torch.from_numpy(self._run(input_ids.numpy())))

    def get_output_embeddings(self) -> torch.nn.Module:
        return self._head


class _Decoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.base = model.base_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.base(input_ids=input_ids, use_cache=False).last_hidden_state


class _TokenScaled(torch.nn.Module):
    """linear(x / r) * r, r = per-token max |x|: the same function, but a dynamic int8 quantizer's one scale per
    tensor then falls on inputs whose every token row spans [-1, 1], i.e. one scale per token."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
        y = torch.nn.functional.linear(x / r, self.weight) * r
        return y if self.bias is None else y + self.bias


def _concat(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear computing the given ones side by side (same input)."""
    w = torch.cat([lin.weight for lin in linears])
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=linears[0].bias is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if out.bias is not None:
            out.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return out


class _FusedMLP(torch.nn.Module):
    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.gate_up, self.down_proj, self.act_fn = _concat(mlp.gate_proj, mlp.up_proj), mlp.down_proj, mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def _fused_attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """LlamaAttention.forward (no KV cache: scoring) with q, k and v from one Linear."""
    from transformers.models.llama.modeling_llama import ALL_ATTENTION_FUNCTIONS, apply_rotary_pos_emb

    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q, k, v = self.qkv(hidden_states).split(self.qkv_sizes, dim=-1)
    q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    attend = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def fuse_projections(model: torch.nn.Module) -> None:
    """q/k/v and gate/up into one Linear each, in place (Llama-family decoders; exact up to float order)."""
    import types

    for layer in model.base_model.layers:
        att = layer.self_attn
        att.qkv = _concat(att.q_proj, att.k_proj, att.v_proj)
        att.qkv_sizes = [att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features]
        del att.q_proj, att.k_proj, att.v_proj
        att.forward = types.MethodType(_fused_attention_forward, att)
        layer.mlp = _FusedMLP(layer.mlp)


def smoothed_token_scaled(model: torch.nn.Module, tokenizer, fuse: bool = False) -> torch.nn.Module:
    """A copy of the model with raysel's SmoothQuant scales folded in (calibrated as score.quantize=smoothquant
    is), with `fuse` its projections fused, and every decoder Linear wrapped in _TokenScaled: equal to the model
    in fp32, ready for ort-int8."""
    import copy

    from raysel.backends.quant import activation_absmax, calibration_ids, smooth

    model = copy.deepcopy(model).eval()
    with torch.inference_mode():
        smooth(model, activation_absmax(model, calibration_ids(tokenizer)), 0.5)
    if fuse:
        fuse_projections(model)
    for mod in list(model.base_model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(mod, name, _TokenScaled(child))
    return model


def export_decoder(model: torch.nn.Module, path: Path) -> float:
    """The decoder as ONNX (dynamic batch and sequence), written once; returns the seconds it took (0 if cached)."""
    if path.is_file():
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=8192)
    torch.onnx.export(
        _Decoder(model).eval(), (torch.randint(0, 1000, (2, 37)),), str(path),
        input_names=["input_ids"], output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}}, dynamo=True, external_data=True,
    )  # fmt: skip
    return time.perf_counter() - start


def ort_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda ids: sess.run(None, {"input_ids": ids})[0]


def ort_model(mode: str, src: Path, workdir: Path) -> Path:
    """The ONNX file that a mode runs: src (the fp32 decoder, or for ort-sq-token* the smoothed, token-scaled
    one) or its dynamic int8 quantization."""
    if mode == "ort-fp32":
        return src
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = workdir / f"{mode}.onnx"
    for f in (out, Path(str(out) + ".data")):
        f.unlink(missing_ok=True)
    quantize_dynamic(
        str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=True,
        weight_type=QuantType.QUInt8 if mode == "ort-int8-u8" else QuantType.QInt8,
        reduce_range=mode.endswith("-rr"), use_external_data_format=True,
    )  # fmt: skip
    return out


def ov_runner(model, threads: int, config: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    props = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(model, "CPU", {**props, **(config or {})})
    local = threading.local()  # one infer request per scoring thread: they run on separate streams

    def run(ids: np.ndarray) -> np.ndarray:
        if not hasattr(local, "req"):
            local.req = compiled.create_infer_request()
        return local.req.infer({0: ids})[0].copy()

    return run


def ov_model(mode: str, fp32: Path, calib: list[np.ndarray]):
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    model = ov.Core().read_model(str(fp32))
    if mode == "ov-fp32":
        return model, None
    if mode in ("ov-int8w", "ov-int8w-f32act"):
        config = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0} if mode == "ov-int8w-f32act" else None
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), config
    kw = {}
    if mode == "ov-int8-sq0.5":
        sq = nncf.AdvancedSmoothQuantParameters(matmul=0.5)
        kw["advanced_parameters"] = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=sq)
    dataset = nncf.Dataset([ids[None, :] for ids in calib])
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib), **kw), None


def main() -> None:
    known = {**ORT_MODES, **OV_MODES, **TORCH_MODES}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200, help="rows for the agreement figures (first N of the file)")
    p.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=sorted(known))
    p.add_argument("--calib-rows", type=int, default=32, help="ov-int8*: calibration texts, the last rows of the file")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--time-rows", type=int, default=24)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--workdir", type=Path, default=None, help="exported ONNX files (default: raysel's cache)")
    args = p.parse_args()
    if not DATA.is_file():
        sys.exit(f"skipped: {DATA} is absent")
    needs = {"onnx": ORT_MODES | OV_MODES, "onnxscript": ORT_MODES | OV_MODES, "onnxruntime": ORT_MODES,
             "openvino": OV_MODES, "nncf": OV_MODES}  # fmt: skip
    skipped = {}
    for pkg, modes in needs.items():
        if importlib.util.find_spec(pkg) is None:
            for mode in [m for m in args.modes if m in modes]:
                skipped[mode] = f"{skipped[mode]}, {pkg}" if mode in skipped else f"not installed: {pkg}"
    modes = [m for m in args.modes if m not in skipped]
    for mode, why in skipped.items():
        print(f"skipped {mode}: {why}", file=sys.stderr)
    if not modes:
        sys.exit("skipped: no runtime installed (see the run command in this script's docstring)")

    from raysel.backends.models import cache_dir
    from raysel.config import ScoreConfig
    from raysel.stages.score import IfdScoreStage
    from raysel.templates import build_prompt

    data = json.loads(DATA.read_text())
    if args.rows + args.calib_rows > len(data):
        sys.exit(f"--rows {args.rows} + --calib-rows {args.calib_rows} overlap in a file of {len(data)} rows")
    rows = data[: args.rows]
    batch, timing = columns(rows), columns(rows[: args.time_rows])
    stage = IfdScoreStage(ScoreConfig(model=args.model, max_length=args.max_length, threads=args.threads))
    fp32, tok = stage.scorer.model, stage.scorer.tokenizer
    head = fp32.get_output_embeddings()
    calib = [
        np.array(
            tok(build_prompt("alpaca", r["instruction"], r["input"]) + r["output"])["input_ids"][: args.max_length]
        )
        for r in data[len(data) - args.calib_rows :]
    ]
    workdir = args.workdir or cache_dir() / "bench" / "cpu_runtimes" / args.model.replace("/", "--")
    onnx_fp32 = workdir / "decoder.onnx"
    # stdout carries the JSON alone: the exporter's and NNCF's progress go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        export_s = export_decoder(fp32, onnx_fp32) if any(m in ORT_MODES or m in OV_MODES for m in modes) else 0.0
        onnx_sq = workdir / "decoder-sq-token.onnx"
        if any(m.startswith("ort-sq-token") for m in modes):
            export_s += export_decoder(smoothed_token_scaled(fp32, tok), onnx_sq)
        onnx_fused = workdir / "decoder-sq-fused.onnx"
        if any(m.startswith("ort-sq-fused") for m in modes):
            export_s += export_decoder(smoothed_token_scaled(fp32, tok, fuse=True), onnx_fused)

        models: dict[str, object] = {"torch-fp32": fp32}
        prepare_s: dict[str, float] = {}
        for mode in modes:
            start = time.perf_counter()
            if mode in ORT_MODES:
                sources = {"ort-sq-token": onnx_sq, "ort-sq-fused": onnx_fused}
                src = next((f for prefix, f in sources.items() if mode.startswith(prefix)), onnx_fp32)
                models[mode] = RuntimeModel(ort_runner(ort_model(mode, src, workdir)), head)
            elif mode in OV_MODES:
                model, config = ov_model(mode, onnx_fp32, calib)
                models[mode] = RuntimeModel(ov_runner(model, args.threads, config), head)
            else:
                from raysel.backends.quant import calibration_ids, quantize

                models[mode] = quantize(fp32, "smoothquant", calibration=calibration_ids(tok))
            prepare_s[mode] = round(time.perf_counter() - start, 1)
            print(f"{mode}: ready in {prepare_s[mode]} s", file=sys.stderr, flush=True)

    def run(model, cols: dict) -> tuple[np.ndarray, float]:
        stage.scorer.model = model
        start = time.perf_counter()
        out = stage(cols)
        return out["score_ifd"].astype(np.float64), time.perf_counter() - start

    warm = columns(rows[:2])
    for m in models.values():
        run(m, warm)
    ifd, full_s = {}, {}
    for name, m in models.items():
        ifd[name], full_s[name] = run(m, batch)
        print(f"{name}: {args.rows / full_s[name]:.2f} rows/s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            times[name].append(run(m, timing)[1])

    versions = {pkg: _version(pkg) for pkg in ("torch", "onnxruntime", "openvino", "nncf")}
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads",
        "versions": versions,
        "model": args.model,
        "rows": args.rows,
        "time_rows": args.time_rows,
        "rounds": args.rounds,
        "max_length": args.max_length,
        "calib_rows": args.calib_rows,
        "export_s": round(export_s, 1),
        "skipped": skipped,
        "modes": {},
    }
    for name in models:
        entry = {"what": known.get(name, "reference: transformers fp32, the hf scorer as shipped")}
        if name in prepare_s:
            entry["prepare_s"] = prepare_s[name]
        result["modes"][name] = entry | mode_entry(name, "torch-fp32", args, full_s, times, ifd)
    print(json.dumps(result, indent=2))


def _version(pkg: str) -> str | None:
    try:
        return __import__(pkg).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
