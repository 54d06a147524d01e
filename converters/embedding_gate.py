"""The export gate of an embedding bundle (README: Feature transfer): the artifact's embeddings against torch's.

An embedding has no classes to agree on, so the gate asks what a gallery on the device relies on:
- **cosine to torch**: each held-out image's embedding from the artifact against torch's (mean, and the worst);
- **neighbour agreement**: the share of held-out images whose most similar other held-out image under the artifact
  is among the `NEIGHBOURS` most similar under torch (what `identify` answers with; the very same neighbour is
  reported too, but is no gate: near-duplicates swap places under int8 rounding, measured 76% on digits with a
  1-NN accuracy above torch's);
- with labels, **1-NN accuracy**: leave-one-out nearest-neighbour accuracy on the held-out set may drop at most
  `max_drop` below torch's, judged on paired predictions as classifier accuracy is (`validate.paired_judgement`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from runtimes.gallery import calibrate_threshold, threshold_problem
from runtimes.predictor import Predictor, unit_rows
from runtimes.selftest import EMBEDDING_NEIGHBOURS, nearest_others, neighbour_agreement

from .calibration import public_description
from .validate import ReferenceData, paired_judgement

logger = logging.getLogger(__name__)

# floors by precision: fp32/fp16 must give torch's vectors; int8 is judged on what a gallery keeps. Measured on the
# digits test split (359 images, EfficientNet-Lite0 final 1280-d features): see the README's Feature transfer table.
EMBEDDING_GATE = {
    "fp32": {"mean_cosine": 0.9999, "neighbour_agreement": 0.99},
    "fp16": {"mean_cosine": 0.999, "neighbour_agreement": 0.97},
    "int8": {"mean_cosine": 0.95, "neighbour_agreement": 0.90},
}
NEIGHBOURS = EMBEDDING_NEIGHBOURS


def knn_hits(embeddings: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Leave-one-out 1-NN: whether each image's most similar other image has its label."""
    return np.asarray(targets[nearest_others(embeddings, 1)[:, 0]] == targets)


def compare_embeddings(predictor: Predictor, reference: np.ndarray, data: ReferenceData, precision: str, *, max_drop: float | None) -> dict[str, Any]:
    """Run `data` through the predictor, compare with torch's embeddings `reference`; return the manifest's
    `validation` (the keys a classifier's has where they mean the same, plus cosine and the floors used)."""
    t = time.perf_counter()
    raw = predictor.run_chunked(data.images)
    seconds = time.perf_counter() - t
    got = unit_rows(raw, f"{predictor.bundle.path}")
    ref = unit_rows(reference, "torch reference")
    cosine = np.sum(got.astype(np.float64) * ref.astype(np.float64), axis=1)
    agree = neighbour_agreement(got, ref, NEIGHBOURS)
    gate = EMBEDDING_GATE[precision]
    checks = {"mean_cosine": float(cosine.mean()) >= gate["mean_cosine"], "neighbour_agreement": agree >= gate["neighbour_agreement"]}
    torch_acc = art_acc = drop = paired = None
    if data.targets is not None and len(got) > 1:
        torch_hits, art_hits = knn_hits(ref, data.targets), knn_hits(got, data.targets)
        torch_acc, art_acc = float(torch_hits.mean()), float(art_hits.mean())
        drop = round(torch_acc - art_acc, 6)
        if max_drop is not None:
            paired = paired_judgement(torch_hits, art_hits, max_drop)
            checks["accuracy_drop"] = paired["passed"]
    diff = np.abs(raw.astype(np.float64) - reference.astype(np.float64))
    return {
        "kind": "embedding",
        "split": data.split,
        "count": int(len(data.images)),
        "unit": data.unit,
        **({"data": public_description(data.description)} if data.description else {}),
        "accuracy_metric": "leave-one-out 1-NN accuracy (cosine) on the held-out images",
        "torch_accuracy": torch_acc,
        "artifact_accuracy": art_acc,
        "accuracy_drop": drop,
        **({"paired": paired} if paired is not None else {}),
        "top1_agreement": agree,  # the neighbour agreement, under the column every table shows
        "neighbour_agreement": agree,
        "neighbours": NEIGHBOURS,
        "same_nearest_neighbour": neighbour_agreement(got, ref, 1),
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "embedding_gate": dict(gate),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "max_drop": None if max_drop is None else float(max_drop),
        "min_agreement": gate["neighbour_agreement"],
        "checks": checks,
        "ms_per_image": round(1000 * seconds / len(data.images), 3),
        "inference_precision": predictor.inference_precision,
        "runtime": predictor.describe(),
        "passed": all(checks.values()),
    }


def with_unknown_threshold(embedding: dict[str, Any], reference: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """The manifest's embedding section with the gallery's unknown threshold calibrated on torch's embeddings of
    the labelled held-out images (`runtimes.gallery.calibrate_threshold`); unchanged when they cannot tell."""
    calibration = calibrate_threshold(reference, targets)
    if calibration is None:
        logger.info("embedding: too few labelled held-out images per class to calibrate the unknown threshold; galleries default to it unset")
        return embedding
    logger.info(
        f"embedding: unknown threshold {calibration['unknown_threshold']:.4f} (cosine): {100 * calibration['unknown_rejected']:.1f}% of "
        f"never-enrolled images rejected, known-class accuracy {100 * calibration['known_accuracy']:.1f}% (without it "
        f"{100 * calibration['known_accuracy_without_threshold']:.1f}%), {calibration['shots']} images enrolled per class"
    )
    section = {**embedding, "unknown_threshold": calibration["unknown_threshold"], "threshold_calibration": calibration}
    if (problem := threshold_problem(section)) is not None:
        logger.warning(f"embedding: {problem} (stored in the manifest; `check` reports it)")
    return section
