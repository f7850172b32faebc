"""IterSelectTune's classifier: Ray Train fit, save/load, the classify stage, and learning a real labelling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raysel import schema as S
from raysel.config import ClassifierConfig
from raysel.stages.classify import ClassifyRun, ClassifyStage
from raysel.train.classifier import HardClassifier, classifier_text, probabilities, train_classifier

CREATE = ("Generate", "Create", "Write", "Compose", "Design")
ASK = ("What", "Explain", "Describe", "Identify", "Name")


def _labelled(shared_data, per_class: int) -> tuple[list[str], np.ndarray]:
    """Real instructions, labelled 1 when they ask to produce something and 0 when they ask about something."""
    rows = json.loads((shared_data / "alpaca_gpt4_1k.json").read_text())
    pos = [r for r in rows if r["instruction"].split()[0] in CREATE][:per_class]
    neg = [r for r in rows if r["instruction"].split()[0] in ASK][:per_class]
    assert len(pos) == len(neg) == per_class
    texts, labels = [], []
    for a, b in zip(pos, neg, strict=True):  # interleaved, so any prefix is balanced
        texts += [classifier_text(a["instruction"], a["input"]), classifier_text(b["instruction"], b["input"])]
        labels += [1, 0]
    return texts, np.array(labels)


@pytest.mark.slow  # MiniLM trained with Ray Train
def test_minilm_learns_a_separable_labelling_of_real_rows(ray_local, shared_data, tmp_path) -> None:
    texts, labels = _labelled(shared_data, 48)
    train, test = slice(0, 64), slice(64, 96)
    base, tok = HardClassifier.backbone("minilm", seed=0)
    before = probabilities(base.eval(), tok, texts[test], max_length=64)
    cfg = ClassifierConfig(epochs=4, batch_size=16, lr=1e-4, max_length=64)
    out = tmp_path / "clf"
    meta = train_classifier(cfg, texts[train], labels[train], output_dir=out, storage_path=tmp_path / "train",
                            name="clf", seed=0)  # fmt: skip
    assert meta["rows"] == 64 and meta["positives"] == 32 and meta["train_accuracy"] >= 0.95
    model, tok = HardClassifier.load(out)
    held_out = probabilities(model, tok, texts[test], max_length=64)
    accuracy = float(((held_out >= 0.5) == (labels[test] == 1)).mean())
    assert accuracy >= 0.85, (accuracy, held_out)
    assert float(((before >= 0.5) == (labels[test] == 1)).mean()) < 0.8  # the untrained head could not do it
    # The stage gives the same probabilities, whatever the batch.
    batch = {S.INSTRUCTION: np.array(texts[test], dtype=object), S.INPUT: np.array([""] * 32, dtype=object)}
    stage = ClassifyStage(ClassifyRun(classifier=cfg, path=str(out)))
    got = stage(batch)[S.SCORE_CLASSIFIER]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, held_out, atol=1e-5)
    half = stage({k: v[:7] for k, v in batch.items()})[S.SCORE_CLASSIFIER]
    np.testing.assert_allclose(half, held_out[:7], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from tiny_bert import build_tiny_bert

    words = "alpha beta gamma delta write explain a the poem why sky blue story list"
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), [words])


@pytest.mark.slow  # two Ray Train runs
def test_training_is_deterministic_and_learns_words(ray_local, tiny_bert, tmp_path) -> None:
    texts = ["write a poem", "write a story", "explain why the sky blue", "explain the list"] * 4
    labels = [1, 1, 0, 0] * 4
    cfg = ClassifierConfig(model=tiny_bert, epochs=30, batch_size=8, lr=3e-3)
    metas = [
        train_classifier(
            cfg, texts, labels, output_dir=tmp_path / f"c{i}", storage_path=tmp_path / "t", name="same", seed=1
        )  # fmt: skip
        for i in range(2)
    ]
    assert metas[0] == metas[1] and metas[0]["train_accuracy"] == 1.0
    p = [probabilities(*HardClassifier.load(tmp_path / f"c{i}"), texts, max_length=16) for i in range(2)]
    np.testing.assert_array_equal(p[0], p[1])
    assert (p[0][np.array(labels) == 1] > 0.5).all() and (p[0][np.array(labels) == 0] < 0.5).all()


def test_no_labels_is_an_error(tmp_path) -> None:
    cfg = ClassifierConfig(epochs=1)
    with pytest.raises(ValueError, match="at least one labelled row"):
        train_classifier(cfg, [], [], output_dir=tmp_path / "d", storage_path=tmp_path, name="none")
