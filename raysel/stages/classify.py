"""Classify stage: IterSelectTune's P(hard | instruction + input) for every candidate row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from raysel import schema as S
from raysel.config import ClassifierConfig
from raysel.stages.base import StageSpec, with_resources


@dataclass(frozen=True)
class ClassifyRun:
    """The classify stage's config: the classifier settings and the trained classifier's directory."""

    classifier: ClassifierConfig
    path: str


class ClassifyStage:
    """Adds score_classifier = sigmoid(logit) of the trained classifier over instruction (+ input).

    Input columns: instruction, input. Output: score_classifier (float32). Resources: classifier.num_cpus per
    actor, a GPU on cuda. A pure function of the row and the classifier, whatever the batch.
    """

    requires: ClassVar[dict[str, str]] = {S.INSTRUCTION: "instruction text", S.INPUT: "optional context"}
    produces: ClassVar[dict[str, str]] = {S.SCORE_CLASSIFIER: "P(hard) from the IterSelectTune classifier"}

    def __init__(self, cfg: ClassifyRun) -> None:
        import torch

        from raysel.backends.base import cpu_threads
        from raysel.train.classifier import HardClassifier

        self.cfg = cfg.classifier
        if self.cfg.device == "cpu":
            torch.set_num_threads(cpu_threads(self.cfg))
        self.model, self.tokenizer = HardClassifier.load(cfg.path)
        self.model.to(self.cfg.device)

    @classmethod
    def spec(cls, cfg: ClassifyRun) -> StageSpec:
        c = cfg.classifier
        gpus = 1.0 if c.device.startswith("cuda") else 0.0
        return StageSpec(num_cpus=c.num_cpus, num_gpus=gpus, concurrency=c.concurrency, batch_size=c.infer_batch_size)

    @classmethod
    def with_spec(cls, cfg: ClassifyRun, spec: StageSpec) -> ClassifyRun:
        return dataclasses.replace(cfg, classifier=with_resources(cfg.classifier, spec))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from raysel.train.classifier import classifier_text, probabilities

        texts = [classifier_text(str(i), str(x)) for i, x in zip(batch[S.INSTRUCTION], batch[S.INPUT], strict=True)]
        out = dict(batch)
        out[S.SCORE_CLASSIFIER] = probabilities(
            self.model, self.tokenizer, texts, max_length=self.cfg.max_length, device=self.cfg.device
        ).astype(np.float32)
        return out
