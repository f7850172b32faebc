"""IFD's pre-experience (Li et al., NAACL 2024, section 2.2, as scripts/pre_experience_selection.sh runs it):
embed -> K-Means -> a few rows per cluster -> brief SFT of the scoring model; IFD is then scored with it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import schema as S
from raysel.config import EmbedConfig, RunConfig
from raysel.io import LIGHT_CPUS, write_parquet_stream
from raysel.run.context import RunContext
from raysel.run.steps import Steps
from raysel.vectors import assign_clusters, embed_rows, read_vectors

SUMMARY = "train_summary.json"
"""What raysel.train.finetune writes beside the model (kept here so the driver need not import torch)."""

if TYPE_CHECKING:
    import ray.data

TRAIN_SCHEMA = pa.schema([(S.ID, pa.string()), (S.INSTRUCTION, pa.string()), (S.INPUT, pa.string()),
                          (S.OUTPUT, pa.string()), (S.SOURCE, pa.string())])  # fmt: skip


def embed_config(cfg: RunConfig) -> EmbedConfig:
    """The paper's vectors by default: the scoring LLM on the templated instruction, in the scorer's resources."""
    if cfg.pre_experience.embedding == "embed":
        return cfg.embed
    s = cfg.score
    return dataclasses.replace(
        cfg.embed, model=s.model, column="prompt", template=s.template, max_length=s.max_length, device=s.device,
        dtype=s.dtype, num_cpus=s.num_cpus, num_gpus=s.num_gpus, concurrency=s.concurrency, batch_size=s.batch_size,
    )  # fmt: skip


def _rows_with_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch[S.ID], value_set=ids)).select(TRAIN_SCHEMA.names)


def pre_experience(
    ctx: RunContext, cfg: RunConfig, steps: Steps, rows: Callable[[], ray.data.Dataset], key: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) the four pre-experience steps over the rows to score; returns the model dir and a
    manifest section. `rows()` builds the dataset of rows to score; `key` identifies them."""
    from raysel.select.cluster import kmeans_fit, sample_middle_band

    pe, ecfg = cfg.pre_experience, embed_config(cfg)
    key = key | {"embed": ecfg}
    emb = steps.run("pre_embed", key, lambda p: embed_rows(rows(), ecfg, p, key, cfg.checkpoint_rows, steps))
    n = pq.read_metadata(emb).num_rows
    if n == 0:
        raise ValueError("pre-experience needs rows to learn from, and none are left to score")

    def cluster(path: Path) -> int:
        rng = np.random.default_rng(cfg.seed)
        sample = np.sort(rng.choice(n, min(n, cfg.cluster.train_sample), replace=False))
        centroids = kmeans_fit(read_vectors(emb, sample), cfg.cluster.k, seed=cfg.seed, niter=cfg.cluster.niter)
        return assign_clusters(emb, centroids, path)

    key = key | {"cluster": cfg.cluster, "seed": cfg.seed}
    clusters = pq.read_table(steps.run("pre_cluster", key, cluster))
    labels = clusters[S.CLUSTER].to_numpy()
    ppl = clusters[S.PPL_TEXT].to_numpy(zero_copy_only=False) if pe.embedding == "score" else None
    picked = sample_middle_band(labels, ppl, pe.per_cluster, low_pct=pe.low_pct, high_pct=pe.high_pct)

    def sample(path: Path) -> int:
        ids = clusters[S.ID].take(pa.array(picked))
        ds = rows().map_batches(_rows_with_ids, fn_kwargs={"ids": ids}, batch_format="pyarrow", num_cpus=LIGHT_CPUS)
        return write_parquet_stream(ds.iter_batches(batch_format="pyarrow", batch_size=None), path, TRAIN_SCHEMA)

    key = key | {"pre_experience": pe}
    sampled = steps.run("pre_sample", key, sample)

    def train(path: Path) -> int:
        from raysel.train.finetune import finetune

        table = pq.read_table(sampled)
        storage = ctx.storage_uri(steps.dir.parent.resolve() / "train")
        # One Ray Train run per step key: a killed run resumes from its checkpoints, while a changed config
        # starts a run of its own (finetune refuses another config's checkpoints).
        name = "pre_experience-" + hashlib.sha256(Steps.stamp(key).encode()).hexdigest()[:12]
        finetune(cfg.train, model=cfg.score.model, rows=table, template=cfg.score.template, output_dir=path,
                 storage_path=storage, name=name, seed=cfg.seed)  # fmt: skip
        return table.num_rows

    key = key | {"train": cfg.train, "model": cfg.score.model, "template": cfg.score.template}
    model = steps.run("pre_model", key, train, suffix="")
    trained = model / SUMMARY
    summary = {
        "embedding": pe.embedding,
        "rows_embedded": n,
        "clusters": int(labels.max()) + 1 if len(labels) else 0,
        "sampled_rows": len(picked),
        "clusters_sampled": int(len(np.unique(labels[picked]))) if len(picked) else 0,
        "model": str(model),
        "train": json.loads(trained.read_text()) if trained.is_file() else {},
        "key": Steps.stamp(key),
    }
    return model, summary
