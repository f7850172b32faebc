"""IterSelectTune's "hard instruction" classifier on Ray Train: an encoder + a linear head, binary cross-entropy.

The paper fine-tunes BERT-base as a binary classifier of instructions (hard = the base model's answer loses
to the reference). Here: any HF encoder (default all-MiniLM-L6-v2, offline), tokens mean-pooled under the
attention mask (all-MiniLM's own pooling), one linear logit; the whole encoder is fine-tuned with AdamW.
Each training round retrains from the backbone on every label gathered so far (the paper retrains the
classifier on the growing labelled set). Positives are up-weighted by negatives/positives when
`balance` is on. Deterministic for a seed: torch seeds, and the data order is a function of (seed, epoch).

The trained classifier is a directory: the encoder and tokenizer (save_pretrained), head.pt, and
classifier.json (training metrics). `HardClassifier.load(dir)` reads it back for the classify stage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysel.config import ClassifierConfig

_HEAD, _META = "head.pt", "classifier.json"


def classifier_text(instruction: str, input: str) -> str:
    """What the classifier reads: the instruction, and its input on the next line when there is one."""
    return instruction if input == "" else instruction + "\n" + input


class HardClassifier(torch.nn.Module):
    """Encoder + linear head on the mean-pooled last hidden states; forward gives one logit per row."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(int(encoder.config.hidden_size), 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)

    @classmethod
    def backbone(cls, model: str, seed: int) -> tuple[HardClassifier, Any]:
        """A fresh classifier on the encoder `model` ("minilm", an HF id or a path) and its tokenizer."""
        from transformers import AutoModel, AutoTokenizer

        from raysel.backends.models import resolve_model

        path = resolve_model(model)
        torch.manual_seed(seed)  # the head's initial weights
        return cls(AutoModel.from_pretrained(path)), AutoTokenizer.from_pretrained(path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[HardClassifier, Any]:
        """A trained classifier directory (encoder, tokenizer, head.pt) and its tokenizer."""
        from transformers import AutoModel, AutoTokenizer

        model = cls(AutoModel.from_pretrained(str(path)))
        model.head.load_state_dict(torch.load(Path(path) / _HEAD, map_location="cpu", weights_only=True))
        return model.eval(), AutoTokenizer.from_pretrained(str(path))

    def save(self, path: Path, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.encoder.save_pretrained(path)
        tokenizer.save_pretrained(path)
        torch.save(self.head.state_dict(), path / _HEAD)
        (path / _META).write_text(json.dumps(meta, indent=2))


def probabilities(
    model: HardClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    device: str = "cpu",
    batch: int = 64,
) -> np.ndarray:
    """P(hard) per text, float32; rows are batched by length (the batch changes results only to float error)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros(len(texts), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)  # fmt: skip
            out[rows] = torch.sigmoid(model(enc["input_ids"], enc["attention_mask"]).float()).cpu().numpy()
    return out


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: every rank trains on its share of each step's rows; rank 0 reports the weights."""
    import ray.train
    import ray.train.torch

    cfg: ClassifierConfig = config["cfg"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(config["seed"])
    model, tokenizer = HardClassifier.backbone(cfg.model, config["seed"])
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    model = ray.train.torch.prepare_model(model) if world > 1 else model.to(device)
    module = model.module if hasattr(model, "module") else model
    texts, labels = config["texts"], np.asarray(config["labels"], dtype=np.float32)
    pos = float(labels.sum())
    weight = (len(labels) - pos) / pos if cfg.balance and 0 < pos < len(labels) else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_rows = cfg.batch_size * world
    model.train()
    loss_sum, seen, step = 0.0, 0, 0
    for epoch in range(cfg.epochs):
        perm = np.random.default_rng([config["seed"], epoch]).permutation(len(texts))
        for start in range(0, len(perm), step_rows):
            rows = perm[start : start + step_rows][rank::world]
            if len(rows) == 0:  # a last step smaller than the world: this rank idles but joins the all-reduce
                rows = perm[start : start + 1]
                scale = 0.0
            else:
                scale = 1.0
            torch.manual_seed(config["seed"] * 1_000_003 + step * 101 + rank)  # dropout masks
            enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=cfg.max_length, padding=True,
                            return_tensors="pt").to(device)  # fmt: skip
            logits = model(enc["input_ids"], enc["attention_mask"])
            loss = loss_fn(logits, torch.tensor(labels[rows], device=device)) * scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(rows) * scale
            seen += int(len(rows) * scale)
            step += 1
    module.eval()
    probs = probabilities(module, tokenizer, texts, max_length=cfg.max_length, device=str(device))
    metrics = {
        "rows": len(texts),
        "positives": int(pos),
        "pos_weight": round(weight, 4),
        "steps": step,
        "loss": round(loss_sum / max(seen, 1), 6),
        "train_accuracy": round(float(((probs >= 0.5) == (labels >= 0.5)).mean()), 4) if len(texts) else None,
    }
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        module.save(Path(tmp), tokenizer, metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_classifier(
    cfg: ClassifierConfig,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    output_dir: Path,
    storage_path: Path | str,
    name: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a classifier on (texts, labels 0/1) with Ray Train and write it to output_dir; returns its metrics.

    One short run per call (seconds to minutes): a killed run is simply run again by the step that calls it.
    """
    import ray.train
    import ray.train.torch

    if not len(texts):
        raise ValueError("train_classifier needs at least one labelled row")
    from raysel.run.rundir import absolute_storage

    storage_path = absolute_storage(storage_path)  # every node reaches it: absolute, or a remote store's URI
    if "://" not in storage_path:
        shutil.rmtree(Path(storage_path) / name, ignore_errors=True)  # a killed attempt's state: start over
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = ray.train.torch.TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": cfg, "texts": list(texts), "labels": [int(x) for x in labels], "seed": seed},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(storage_path=str(storage_path), name=name),
    )
    checkpoint = trainer.fit().checkpoint
    tmp = Path(f"{output_dir}.tmp-{os.getpid()}")
    with checkpoint.as_directory() as d:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(d, tmp)
    shutil.rmtree(output_dir, ignore_errors=True)
    tmp.rename(output_dir)
    return json.loads((Path(output_dir) / _META).read_text())
