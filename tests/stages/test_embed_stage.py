"""EmbedStage called directly on dict batches (no Ray): fake plumbing, then real encoders and a causal LM."""

from __future__ import annotations

import numpy as np
import pytest

from raysel import schema as S
from raysel.config import EmbedConfig
from raysel.stages.embed import EmbedStage, embed_text
from raysel.templates import build_prompt


def _batch(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in (S.INSTRUCTION, S.INPUT, S.OUTPUT)}
    batch[S.ID] = np.array([f"row{i}" for i in range(len(rows))], dtype=object)
    return batch


def test_fake_columns_shapes_and_norms(tiny_rows) -> None:
    batch = _batch(tiny_rows)
    out = EmbedStage(EmbedConfig(backend="fake"))(batch)
    assert set(out) == set(batch) | set(EmbedStage.produces)
    vec = out[S.EMBEDDING]
    assert vec.dtype == np.float32 and vec.shape == (len(tiny_rows), 16)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    assert out[S.PPL_TEXT].dtype == np.float32 and (out[S.ID] == batch[S.ID]).all()


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("instruction", "Summarize."),
        ("instruction_input", "Summarize.\nA long text."),
        ("output", "Short."),
        ("prompt", build_prompt("alpaca", "Summarize.", "A long text.")),
    ],
)
def test_embed_text_columns(column: str, expected: str) -> None:
    cfg = EmbedConfig(column=column)
    assert embed_text(cfg, "Summarize.", "A long text.", "Short.") == expected
    if column == "instruction_input":
        assert embed_text(cfg, "Summarize.", "", "Short.") == "Summarize."


@pytest.mark.slow  # loads MiniLM
def test_minilm_matches_sentence_transformers_encode(tiny_rows) -> None:
    """The default encoder gives sentence-transformers' own vectors, whatever the batching."""
    from sentence_transformers import SentenceTransformer

    from raysel.backends.models import minilm_dir

    rows = tiny_rows[:12]
    texts = [r["instruction"] if not r["input"] else r["instruction"] + "\n" + r["input"] for r in rows]
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    stage = EmbedStage(EmbedConfig(num_cpus=2))
    out = stage(_batch(rows))[S.EMBEDDING]
    assert out.shape == (12, 384)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    halves = np.concatenate([stage(_batch(rows[:5]))[S.EMBEDDING], stage(_batch(rows[5:]))[S.EMBEDDING]])
    np.testing.assert_allclose(halves, out, atol=1e-5)
    assert np.isnan(stage(_batch(rows))[S.PPL_TEXT]).all()  # an encoder has no perplexity
    # A paraphrase is nearer than an unrelated sentence: the vectors carry meaning, not noise.
    para = stage.embedder.embed(["How do I bake bread?", "What is the way to bake a loaf of bread?", "Sort a list."])
    sims = para.vectors @ para.vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.3


def test_causal_lm_vectors_and_perplexity_follow_the_paper(tiny_hf_model, tiny_rows) -> None:
    """Mean of the last hidden layer and exp(LM loss) of the whole text, one row at a time as the IFD
    paper's data_analysis.py (--mod pre) computes them; vectors then L2-normalized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = tiny_rows[:8]
    cfg = EmbedConfig(model=tiny_hf_model, column="prompt", max_length=64)
    out = EmbedStage(cfg)(_batch(rows))
    tok = AutoTokenizer.from_pretrained(tiny_hf_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model).eval()
    for i, r in enumerate(rows):
        ids = tok(build_prompt("alpaca", r["instruction"], r["input"]), return_tensors="pt")["input_ids"][:, :64]
        with torch.no_grad():
            o = model(ids, labels=ids, output_hidden_states=True)
        ref = o.hidden_states[-1].mean(1)[0]
        np.testing.assert_allclose(out[S.EMBEDDING][i], (ref / ref.norm()).numpy(), atol=1e-5)
        np.testing.assert_allclose(out[S.PPL_TEXT][i], float(torch.exp(o.loss)), rtol=1e-4)
    assert out[S.EMBEDDING].shape == (8, 32)
