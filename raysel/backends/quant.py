"""Approximate CPU scoring: int8 modes for a causal LM's Linear layers, on torch's own fbgemm kernels.

Imported lazily by the hf backend only. Every mode returns a module with the same interface as the input
(``base_model``, ``get_output_embeddings()``, ``config``), so the scorer's fast path keeps working.

Modes (measured on SmolLM2-135M, benchmarks/cpu_quant.py and benchmarks/RESULTS.md):

- ``"int8"``: torch dynamic int8, per-tensor weights and per-tensor (7-bit) activations: the historic option.
- ``"int8-token"``: per-channel int8 weights and per-token activation scales. fbgemm quantizes a dynamic
  Linear's input with one scale per tensor; dividing each token row by its absmax first (and multiplying the
  output back, the map being linear) turns that into one scale per token at the cost of two elementwise ops.
- ``"smoothquant"``: SmoothQuant (Xiao et al., 2023) scales folded into the weights from per-channel activation
  absmax on calibration tokens (RMSNorm -> q/k/v and gate/up, up -> down, v -> o), then ``"int8-token"``.
- ``"smoothquant-pt"``: the same smoothing, then per-tensor activation scales (the fastest kernels).

Options ride on the mode string, e.g. ``"smoothquant:alpha=0.6,head=1,skip=down_proj"``: alpha (SmoothQuant
migration strength, default 0.5), head=1 (also quantize the vocabulary projection; default fp32), skip
("+"-joined module-name fragments kept in fp32), o=0 (no v -> o smoothing), rr=1 (fbgemm's 7-bit
activations instead of 8-bit: on AVX2 without VNNI the 8-bit u8 x s8 pair sums can saturate int16, which
measured less harmful than the lost bit here), wbits=7 (7-bit weights, which rule that saturation out).

Measured on SmolLM2-135M, 200 alpaca rows, 2-core AVX2 EPYC: "smoothquant" keeps the IFD ranking
(Spearman 0.992 vs fp32) at 1.3x fp32's speed; plain "int8" is 1.5x at Spearman 0.63.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

MODES = ("int8", "int8-pc", "int8-token", "smoothquant", "smoothquant-pt", "bf16")
"""Modes that quantize() accepts (before any ":options")."""

CALIBRATION_TEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nExplain why the sky is blue and why sunsets are red.\n\n### Response:"
    "Sunlight contains every colour. As it crosses the atmosphere, molecules of nitrogen and oxygen scatter "
    "short wavelengths (blue and violet) far more strongly than long ones (Rayleigh scattering goes as the "
    "inverse fourth power of the wavelength), so blue light reaches our eyes from every direction of the sky. "
    "At sunset the light travels through much more air, most of the blue is scattered away before it arrives, "
    "and the remaining reds and oranges dominate.",
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nWrite a Python function "
    "that returns the n-th Fibonacci number, then give its complexity.\n\n### Input:\nn = 10\n\n### Response:"
    "```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint(fib(10))  # 55\n```\nThe loop runs n times, so the function takes O(n) time and O(1) "
    "memory; a recursive version without memoization would take exponential time.",
    "### Response:1. Preheat the oven to 180 C (350 F).\n2. Mix 200 g of flour, 150 g of sugar, 2 eggs and "
    "100 ml of milk in a bowl.\n3. Pour the batter into a greased tin and bake for 35 minutes.\n\nTips: check "
    "with a toothpick; let it cool for 10 minutes. Variations include lemon zest, cocoa, or a handful of "
    "berries. Total cost: about $4.50 for 8 servings!",
    "### Response:The Treaty of Versailles, signed on 28 June 1919, ended the First World War between Germany "
    "and the Allied Powers. It imposed territorial losses, military limits and reparations on Germany. "
    "Historians still debate its role in the rise of extremism in the 1920s and 1930s; John Maynard Keynes "
    "called it a 'Carthaginian peace' in The Economic Consequences of the Peace.",
)
"""Built-in calibration texts (alpaca-style, mixed prose/code/lists/numbers) for the smoothing scales."""


def calibration_ids(tokenizer, texts: Sequence[str] = CALIBRATION_TEXT) -> list[list[int]]:
    """Token ids of the calibration texts, as quantize() takes them."""
    return [tokenizer(t)["input_ids"] for t in texts]


def parse_mode(mode: str) -> tuple[str, dict[str, str]]:
    """ "smoothquant:alpha=0.6,head=1" -> ("smoothquant", {"alpha": "0.6", "head": "1"})."""
    name, _, rest = mode.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    if name not in MODES:
        raise ValueError(f"unknown quantize mode {name!r}; expected one of {MODES}")
    return name, opts


class TokenScaledInt8Linear(nn.Module):
    """y = W x + b with int8 per-channel weights and one int8 activation scale per token (fbgemm)."""

    def __init__(self, linear: nn.Linear, reduce_range: bool = True, weight_bits: int = 8) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-8) / (2 ** (weight_bits - 1) - 1)
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-6)
        y = torch.ops.quantized.linear_dynamic(x / s, self._packed, reduce_range=self.reduce_range)
        y.mul_(s)
        if self.bias is not None:
            y.add_(self.bias)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-token int8"


class PerTensorInt8Linear(TokenScaledInt8Linear):
    """Per-channel int8 weights, one dynamic activation scale per call (fbgemm's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=self.reduce_range)
        if self.bias is not None:
            y.add_(self.bias)
        return y


@torch.inference_mode()
def activation_absmax(model: nn.Module, calibration: Iterable[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of every nn.Linear over the calibration sequences (forward hooks)."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(_mod, args):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], m) if name in stats else m

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(hook(name)))
    try:
        base = getattr(model, "base_model", model)
        dev = next(model.parameters()).device
        for ids in calibration:
            base(input_ids=torch.tensor([list(ids)], device=dev))
    finally:
        for h in hooks:
            h.remove()
    return stats


def _scales(act: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), over input channel j."""
    wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).clamp_min(1e-5)
    return (act.clamp_min(1e-5).pow(alpha) / wmax.pow(1 - alpha)).clamp_min(1e-5)


@torch.no_grad()
def smooth(model: nn.Module, act: dict[str, torch.Tensor], alpha: float = 0.5, *, o_proj: bool = True) -> None:
    """Fold SmoothQuant scales into a Llama-style model in place (the function it computes is unchanged).

    input_layernorm -> q/k/v, post_attention_layernorm -> gate/up, up (output rows) -> down, and
    v (output rows, one scale per kv channel shared by its query-head group) -> o."""
    layers = model.base_model.layers
    prefix = next(n for n, m in model.named_modules() if m is layers)
    for i, layer in enumerate(layers):
        at, mlp, p = layer.self_attn, layer.mlp, f"{prefix}.{i}"
        for norm, fcs, key in (
            (layer.input_layernorm, (at.q_proj, at.k_proj, at.v_proj), f"{p}.self_attn.q_proj"),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj), f"{p}.mlp.gate_proj"),
        ):
            s = _scales(act[key], [fc.weight for fc in fcs], alpha)
            norm.weight.div_(s)
            for fc in fcs:
                fc.weight.mul_(s)
        s = _scales(act[f"{p}.mlp.down_proj"], [mlp.down_proj.weight], alpha)
        mlp.up_proj.weight.div_(s[:, None])
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(s)
        mlp.down_proj.weight.mul_(s)
        if o_proj:
            conf = model.config
            hd = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
            group = conf.num_attention_heads // conf.num_key_value_heads
            a = act[f"{p}.self_attn.o_proj"].view(conf.num_key_value_heads, group, hd).amax(dim=1)
            w = at.o_proj.weight.abs().amax(dim=0).view(conf.num_key_value_heads, group, hd).amax(dim=1)
            s = (a.clamp_min(1e-5).pow(alpha) / w.clamp_min(1e-5).pow(1 - alpha)).clamp_min(1e-5).reshape(-1)
            at.v_proj.weight.div_(s[:, None])
            if at.v_proj.bias is not None:
                at.v_proj.bias.div_(s)
            sq = s.view(conf.num_key_value_heads, 1, hd).expand(-1, group, -1).reshape(-1)
            at.o_proj.weight.mul_(sq)


def _untie(model: nn.Module) -> None:
    """Give the output head its own weight tensor (tied to the input embedding in many small models)."""
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)


def _replace_linears(model: nn.Module, cls: type[nn.Module], head: bool, skip: Sequence[str], **kw) -> None:
    head_mod = model.get_output_embeddings()
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, nn.Linear) or (child is head_mod and not head):
                continue
            if any(frag in full for frag in skip):
                continue
            setattr(mod, child_name, cls(child, **kw))


def quantize(model: nn.Module, mode: str, calibration: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """A quantized copy of an fp32 causal LM (the input is left untouched).

    Args:
        model: A transformers causal LM in fp32, on CPU, in eval mode (Llama-style for the smoothquant modes).
        mode: One of MODES, optionally followed by options (module docstring): "smoothquant:alpha=0.6,head=1".
        calibration: Token id sequences for the smoothquant modes' activation statistics, required by them:
            calibration_ids(tokenizer) tokenizes the built-in CALIBRATION_TEXT.
    """
    name, opts = parse_mode(mode)
    head = opts.get("head", "0") == "1"
    skip = [s for s in opts.get("skip", "").split("+") if s]
    reduce_range = opts.get("rr", "0") == "1"
    weight_bits = int(opts.get("wbits", "8"))
    model = copy.deepcopy(model).eval()
    if name == "bf16":
        return model.to(torch.bfloat16)
    if name == "int8":
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if head:
        _untie(model)
    if name in ("smoothquant", "smoothquant-pt"):
        if not calibration:
            raise ValueError(f"mode {name!r} needs calibration token ids (calibration_ids(tokenizer))")
        alpha = float(opts.get("alpha", "0.5"))
        smooth(model, activation_absmax(model, calibration), alpha, o_proj=opts.get("o", "1") == "1")
    cls = PerTensorInt8Linear if name in ("int8-pc", "smoothquant-pt") else TokenScaledInt8Linear
    _replace_linears(model, cls, head, skip, reduce_range=reduce_range, weight_bits=weight_bits)
    return model
