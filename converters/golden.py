"""The golden images a bundle's self-test carries: drawn once per export from the held-out data, kept as they
arrived (decoded, any size), with torch's outputs for them as the device will prepare them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.preprocess import PreprocessConfig, prepare_batch
from runtimes.selftest import choose_golden, golden_original

from .torch_reference import reference_logits
from .validate import ReferenceData


@dataclass(frozen=True)
class GoldenSet:
    """`originals` (RGB uint8 as they arrived, long side capped), `images` (prepared: what the model sees), torch's
    `reference` outputs for them, the names of torch's top-1 classes (`labels`, classifiers only) and, for an
    extensible classifier, torch's `features`; for fp16 exports, `fp16_arithmetic`."""

    originals: list[np.ndarray]
    images: np.ndarray
    reference: np.ndarray
    labels: list[str] | None
    features: np.ndarray | None = None
    fp16_arithmetic: np.ndarray | None = None  # fp16 exports: torch's outputs computing in fp16 (fp16_reference)


def draw_golden(
    reference: ReferenceData, preprocessing: PreprocessConfig, size: int, model: Any, labels: list[str] | None, features_model: Any = None
) -> GoldenSet | None:
    """A seeded draw of `size` of the reference images (None for 0). Where the reference keeps the originals, those
    are stored; otherwise (images given at model size) the prepared images themselves."""
    if not size:
        return None
    picks = choose_golden(len(reference.images), size)
    if reference.original is not None:
        originals = [golden_original(reference.original(int(i)), preprocessing.input_size) for i in picks]
    else:
        originals = [reference.images[int(i)] for i in picks]
    images = prepare_batch(originals, preprocessing)
    outputs = reference_logits(model, images)
    names = [labels[int(i)] for i in outputs.argmax(1)] if labels else None
    features = reference_logits(features_model, images) if features_model is not None else None
    return GoldenSet(originals, images, outputs, names, features)
