"""Extensible classifier bundles (README: Feature transfer): a second output with the features the linear head reads,
replay data for adding classes on the device (`runtimes.imprint`), and the gate of that second output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtimes.predictor import Predictor, unit_rows

from .embedding_gate import EMBEDDING_GATE
from .validate import add_check

FEATURES_OUTPUT_NAME = "features"
REPLAY_FILE = "replay.npz"


class LogitsAndFeatures(nn.Module):
    """The graph of an extensible bundle: a classifier's logits, and the features its head reads."""

    def __init__(self, classifier: Any) -> None:  # an `edge_transfer.model.ImageClassifier`
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.classifier.features(images)
        return self.classifier.head(features), features


class FeaturesOf(nn.Module):
    """Only the features (torch's reference for the gate of the second output)."""

    def __init__(self, classifier: Any) -> None:  # an `edge_transfer.model.ImageClassifier`
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


@dataclass
class Extension:
    """What makes a classifier bundle extensible: the manifest's `extension` section and the replay arrays (the head's
    weight and bias, torch's features of some training images and their classes)."""

    section: dict[str, Any]
    replay: dict[str, np.ndarray]
    reference_features: np.ndarray | None = None  # torch's features of the validation images (set by the export)

    @property
    def dim(self) -> int:
        return int(self.section["dim"])

    def write_replay(self, bundle_dir: Path) -> None:
        np.savez(bundle_dir / REPLAY_FILE, **self.replay)  # type: ignore[arg-type]


def linear_head(classifier: Any) -> nn.Linear | None:
    """The single linear layer a classifier's head is (dropout aside), or None."""
    layers = [m for m in classifier.head.modules() if not isinstance(m, (nn.Sequential, nn.Dropout, nn.Identity))]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None


def features_gate(predictor: Predictor, extension: Extension, images: np.ndarray, precision: str, validation: dict[str, Any]) -> None:
    """Check the second output against torch's features (cosine, floors of the embedding gate) and add the check to
    `validation`; the bundle's logits must also be the ones its first output gives."""
    assert extension.reference_features is not None
    logits, got = predictor.logits_and_features(images)
    cosine = np.sum(
        unit_rows(got, str(predictor.bundle.path)).astype(np.float64) * unit_rows(extension.reference_features, "torch").astype(np.float64), axis=1
    )
    floor = EMBEDDING_GATE[precision]["mean_cosine"]
    same = bool(np.array_equal(logits.argmax(1), predictor.run_chunked(images).argmax(1)))
    validation["features"] = {"mean_cosine": round(float(cosine.mean()), 6), "min_cosine": round(float(cosine.min()), 6), "floor": floor}
    add_check(validation, "features_cosine", float(cosine.mean()) >= floor)
    add_check(validation, "features_call_same_logits", same)


def format_features(validation: dict[str, Any]) -> str:
    f = validation.get("features")
    return "" if not f else f"; features cosine {f['mean_cosine']:.5f} (min {f['min_cosine']:.4f}, floor {f['floor']})"
