"""Causal-LM SFT (full or LoRA) on Ray Train's TorchTrainer: prompt-masked loss, checkpoints, resume, HF export.

Resume is Ray Train V2's (the default in Ray 2.60, RAY_TRAIN_V2_ENABLED unset or 1): a new TorchTrainer
with the same RunConfig(storage_path, name) loads the run's checkpoint-manager snapshot, and
ray.train.get_checkpoint() in every worker returns the latest checkpoint. The train loop restores the
weights, optimizer, scheduler and step from it; the data order and dropout seeds are functions of
(seed, step), so the resumed run trains on the same remaining batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch

from raysel.backends.models import resolve_model
from raysel.config import TrainConfig, identity
from raysel.templates import Template
from raysel.train import sft

logger = logging.getLogger(__name__)

_WEIGHTS, _TRAINER, _META = "weights.pt", "trainer.pt", "meta.json"
SUMMARY = "train_summary.json"
"""Written beside the model in output_dir: rows, rows skipped (answer truncated away), the last step's metrics
(loss, step, lr) and samples, tokens (all workers, padding excluded) and train_s of the last launch (after a
resume: since the resume)."""


@dataclasses.dataclass
class _Worker:
    """One Ray Train worker's training state."""

    cfg: TrainConfig
    config: dict[str, Any]
    data: sft.SftData
    model: torch.nn.Module
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    rank: int
    world: int


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: restore the latest checkpoint if any, then train to config["total_steps"].

    config: cfg (TrainConfig), model (name or path), data (ObjectRef of sft.SftData), pad_id, seed,
    total_steps, fingerprint (of config and data: a checkpoint of another run is refused); and to continue
    another run's training: init (its final checkpoint: weights, optimizer, scheduler and step),
    first_step (that step; the data's batches count from it) and schedule_steps (the LR schedule's length).
    """
    w, start = _setup(config)
    cfg, total, seed = w.cfg, config["total_steps"], config["seed"]
    first = config.get("first_step", 0)
    autocast = None
    if cfg.use_gpu and cfg.dtype == "bfloat16":
        autocast = torch.autocast(device_type=w.device.type, dtype=torch.bfloat16)
    spe = sft.steps_per_epoch(len(w.data), w.world, cfg.batch_size)
    clock, samples, tokens = time.perf_counter(), 0, 0  # trained by this run, for throughput
    for step in range(start, total):
        rows = sft.step_rows(
            len(w.data), step - first, world_size=w.world, rank=w.rank, batch_size=cfg.batch_size, seed=seed
        )
        torch.manual_seed(sft.step_seed(seed, w.rank, step))
        nll, n_tok = sft.train_step(
            w.model, w.optimizer, w.scheduler, w.data, rows,
            micro_batch_size=cfg.micro_batch_size, pad_id=config["pad_id"], device=w.device, autocast=autocast,
        )  # fmt: skip
        nll, n_tok, n_rows, n_all = _all_sum([nll, n_tok, len(rows), w.data.lengths()[rows].sum()], w.world, w.device)
        samples, tokens = samples + int(n_rows), tokens + int(n_all)
        metrics = {"loss": nll / max(n_tok, 1), "step": step + 1, "epoch": (step - first) // spe}
        metrics |= {"lr": w.scheduler.get_last_lr()[0], "samples": samples, "tokens": tokens}
        metrics["train_s"] = time.perf_counter() - clock
        if w.rank == 0:
            logger.info("sft %s", metrics)
        # [2] Ray: report (and checkpoint) every checkpoint_every steps only. Ray Train V2 takes one report
        # per controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s): reporting every step capped training
        # at 0.5 steps/s here (measured 2.0 s/step against 0.05 s/step on the tiny test model).
        if step + 1 == total or (step + 1) % cfg.checkpoint_every == 0:
            _report_checkpoint(w, metrics, done=step + 1 == total)


def _setup(config: dict[str, Any]) -> tuple[_Worker, int]:
    """Model (restored from the latest checkpoint, if any), optimizer, scheduler; and the step to start at."""
    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    model = sft.load_model(resolve_model(config["model"]), cfg, seed=config["seed"])
    state = _restore(model, cfg, config["fingerprint"], config.get("init"))
    # [1] Ray: move to the worker's device; DDP (gloo on CPU, nccl on GPU) when there are several workers.
    model = ray.train.torch.prepare_model(model)
    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = sft.cosine_schedule(optimizer, cfg, config.get("schedule_steps") or config["total_steps"])
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # A finished run trains no more; another run's final checkpoint (init) is where this one starts.
        start = config["total_steps"] if state["done"] and not state["init"] else state["step"]
    data = ray.get(config["data"])
    device = ray.train.torch.get_device()
    worker = _Worker(
        cfg, config, data, model, module, optimizer, scheduler, device, ctx.get_world_rank(), ctx.get_world_size()
    )
    return worker, start


def _all_sum(values: list[float], world: int, device: torch.device) -> list[float]:
    """Sums over all workers (the step's loss and counts of every worker, not only rank 0's)."""
    if world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _restore(model: torch.nn.Module, cfg: TrainConfig, fingerprint: str, init: str | None) -> dict[str, Any] | None:
    """Load the run's latest checkpoint (else `init`, another run's, if given) into model; return its step,
    done flag and trainer state."""
    checkpoint = ray.train.get_checkpoint()
    own = checkpoint is not None
    if not own and init:
        checkpoint = ray.train.Checkpoint(init)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        meta = json.loads((Path(d) / _META).read_text())
        if own:
            _check_fingerprint(meta, fingerprint, checkpoint.path)
        sft.load_trainable_state(model, torch.load(Path(d) / _WEIGHTS, map_location="cpu", weights_only=True), cfg)
        state = torch.load(Path(d) / _TRAINER, map_location="cpu", weights_only=True)
    logger.info("resuming from %s at step %d", checkpoint.path, meta["step"])
    return state | {"step": meta["step"], "done": meta["done"], "init": not own}


def _report_checkpoint(w: _Worker, metrics: dict[str, Any], *, done: bool) -> None:
    """Rank 0 writes the checkpoint (weights or adapter, optimizer, scheduler, step); every rank reports."""
    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sft.trainable_state(w.module, w.cfg), Path(tmp) / _WEIGHTS)
        trainer_state = {"optimizer": w.optimizer.state_dict(), "scheduler": w.scheduler.state_dict()}
        torch.save(trainer_state, Path(tmp) / _TRAINER)
        meta = {"step": metrics["step"], "done": done, "fingerprint": w.config["fingerprint"], "metrics": metrics}
        (Path(tmp) / _META).write_text(json.dumps(meta))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _check_fingerprint(meta: dict[str, Any], fingerprint: str, where: str) -> None:
    if meta["fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint {where} belongs to a run with another config, model or data; "
            "pass another name or delete that run's storage directory to start over"
        )


def build_trainer(
    cfg: TrainConfig,
    loop_config: dict[str, Any],
    storage_path: Path | str,
    name: str,
    callbacks: Sequence[Any] = (),
) -> ray.train.torch.TorchTrainer:
    """TorchTrainer for train_loop_per_worker: cfg.num_workers workers of cfg.cpus_per_worker CPUs (+1 GPU).

    The V2 controller actor takes 0 CPUs, so 1 worker of 1 CPU fits a 2-CPU Ray with room to spare.
    """
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(storage_path),
            name=name,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )


def finetune(
    cfg: TrainConfig,
    *,
    model: str,
    rows: pa.Table,
    template: Template,
    output_dir: Path,
    storage_path: Path | str,
    name: str = "sft",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    resume_from: str | None = None,
    schedule_steps: int | None = None,
) -> Path:
    """Fine-tune `model` (resolve_model name or path) on rows and write a plain HF directory to output_dir.

    Rerunning with the same storage_path and name resumes from the run's latest checkpoint, or, if its
    final checkpoint is marked done, only writes output_dir again. Rows whose answer is truncated away
    train nothing: they are dropped and counted (log and output_dir/train_summary.json).

    Steps: cfg.max_steps if set (it overrides epochs, as in transformers' Trainer), else cfg.epochs x
    ceil(ceil(rows / num_workers) / batch_size). On a multi-node cluster storage_path must be reachable from
    every node (shared file system or cloud URI); output_dir is written by this (driver) process.

    Args:
        cfg: Training hyperparameters and resources.
        model: "smollm2", an HF id or a local model directory.
        rows: Table with the instruction, input and output columns.
        template: Prompt template around instruction + input ("chat": the model's chat template).
        output_dir: Where the model and tokenizer go (written to a temp dir, then renamed).
        storage_path: Ray Train storage (checkpoints), absolute path or URI.
        name: The run's directory under storage_path.
        seed: Seeds data order and dropout.
        callbacks: ray.train.UserCallback objects (progress, fault injection in tests).
        resume_from: Continue another run's training on these rows: start from its final checkpoint
            (`checkpoint` in its train_summary.json: weights, optimizer, LR schedule and step), and train
            this run's steps after its step (IterIT's epochs: one run per epoch, one schedule across them).
        schedule_steps: Length of the warmup + cosine schedule (default: this run's last step).
    """
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").lower() in ("0", "false"):
        raise RuntimeError("raysel's finetune resumes through Ray Train V2: unset RAY_TRAIN_V2_ENABLED")
    from raysel.run.rundir import absolute_storage, checkpoint_uri

    storage_path = absolute_storage(storage_path)  # every node reaches it: absolute, or a remote store's URI
    path = resolve_model(model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    data, skipped = sft.table_examples(tokenizer, rows, template, cfg.max_length)
    world = cfg.num_workers
    first = _read_meta(ray.train.Checkpoint(resume_from))["step"] if resume_from else 0
    total = first + (cfg.max_steps or cfg.epochs * sft.steps_per_epoch(len(data), world, cfg.batch_size))
    fingerprint = _fingerprint(cfg, model, template, seed, data, [resume_from, first, schedule_steps])
    checkpoint = _latest_checkpoint(storage_path, name, fingerprint)
    if checkpoint is None or not _read_meta(checkpoint)["done"]:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        loop_config = {"cfg": cfg, "model": model, "data": ray.put(data), "pad_id": pad_id, "seed": seed}
        loop_config |= {"total_steps": total, "fingerprint": fingerprint, "init": resume_from, "first_step": first}
        loop_config["schedule_steps"] = schedule_steps
        checkpoint = build_trainer(cfg, loop_config, storage_path, name, callbacks).fit().checkpoint
    summary = {"rows": len(data), "skipped_rows": skipped, "total_steps": total, **_read_meta(checkpoint)["metrics"]}
    summary["checkpoint"] = checkpoint_uri(checkpoint)
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / _WEIGHTS, map_location="cpu", weights_only=True)
    sft.save_hf(sft.merged_model(path, cfg, state), tokenizer, Path(output_dir), {SUMMARY: summary})
    logger.info("wrote %s (%s)", output_dir, json.dumps(summary))
    return Path(output_dir)


def _fingerprint(cfg: TrainConfig, model: str, template: str, seed: int, data: sft.SftData, start: list) -> str:
    """Identity of a run: what changes the trained weights (config.identity: not its runtime() fields)."""
    text = json.dumps([identity(cfg), model, template, seed, data.fingerprint(), start], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _latest_checkpoint(storage_path: Path | str, name: str, fingerprint: str) -> ray.train.Checkpoint | None:
    """The run's latest registered checkpoint (from Ray's snapshot), refused if it belongs to another run."""
    try:
        checkpoint = ray.train.Result.from_path(os.path.join(str(storage_path), name)).checkpoint
    except RuntimeError:  # no run there yet
        return None
    if checkpoint is not None:
        _check_fingerprint(_read_meta(checkpoint), fingerprint, checkpoint.path)
    return checkpoint


def _read_meta(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / _META).read_text())
