"""Answering "none of these" with a classifier: the lowest top-1 score it answers with, calibrated at export and
stored in the manifest's `open_set` section (README: On the device). Numpy only.

A classifier's softmax always sums to one over the classes it knows, so something it was never taught still gets a
label. `calibrate_min_score` sets a floor from the export's held-out images:
- known: each image's top-1 probability, and whether the top-1 is right;
- stand-ins for strangers: the same images with their own class's logit removed, scored over the other classes, as
  if their class had never been taught.

The floor is halfway, in log-probability, between the highest stand-in score and the score that best separates the
two groups (the most known-and-right kept plus stand-ins turned away). Either end alone measured worse on queries
unlike the held-out images (benchmarks/open_set.py): the first let many strangers through, the second turned known
images away.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BundleError, InputError

UNKNOWN_FOLDER = "unknown"  # in `val` data: images of nothing the bundle was taught, which it should not answer
METHOD = "halfway in log-probability between the best held-out stand-in stranger's score and the best separating score"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _best_separation(known: np.ndarray, right: np.ndarray, strangers: np.ndarray) -> float:
    """The score maximising (known images right and kept) + (strangers turned away); the lowest such score."""
    candidates = np.unique(np.concatenate([known, strangers]))
    kept = np.asarray([np.mean(right & (known >= t)) + np.mean(strangers < t) for t in candidates])
    return float(candidates[int(kept.argmax())])


def calibrate_min_score(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any] | None:
    """The `open_set` section for a classifier from its held-out logits (N, classes) and true classes; None with
    fewer than 3 classes among the targets (with 2, a stand-in stranger always gets the other class at 100%)."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.int64)
    if logits.ndim != 2 or len(logits) != len(targets) or len(np.unique(targets)) < 3:
        return None
    probs = _softmax(logits)
    known, right = probs.max(axis=1), probs.argmax(axis=1) == targets
    without = logits.copy()
    without[np.arange(len(targets)), targets] = -np.inf
    strangers = _softmax(without).max(axis=1)
    top, split = float(strangers.max()), _best_separation(known, right, strangers)
    floor = float(np.sqrt(max(top, 1e-12) * max(split, 1e-12)))
    return {
        "min_score": round(floor, 6),
        "method": METHOD,
        "images": int(len(targets)),
        "classes": int(len(np.unique(targets))),
        "known_kept": round(float(np.mean(right & (known >= floor))), 4),
        "known_right_without": round(float(np.mean(right)), 4),
        "stand_ins_rejected": round(float(np.mean(strangers < floor)), 4),
    }


def check_open_set(section: Any) -> dict[str, Any] | None:
    """A manifest's `open_set` section, checked: an object whose `min_score` is a probability in (0, 1]."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BundleError(f"manifest field 'open_set' must be an object, got {type(section).__name__}")
    score = section.get("min_score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 < float(score) <= 1.0:
        raise BundleError(f"manifest field 'open_set.min_score' must be a probability in (0, 1], got {score!r}")
    return section


def resolve_min_score(asked: str | float | None, calibrated: float | None, *, what: str, lowest: float = 0.0) -> float | None:
    """`--min-score`: None (answer everything), "calibrated" (the bundle's or gallery's own), or a number from
    `lowest` (0 for a probability, -1 for a cosine) to 1."""
    if asked is None:
        return None
    if isinstance(asked, str) and asked.strip().lower() == "calibrated":
        if calibrated is None:
            raise InputError(f"--min-score calibrated: {what} has no calibrated score (export it again with labelled data); give a number")
        return float(calibrated)
    try:
        value = float(asked)
    except (TypeError, ValueError):
        raise InputError(f"--min-score must be a number from {lowest:g} to 1 or 'calibrated', got {asked!r}") from None
    if not lowest <= value <= 1.0:
        raise InputError(f"--min-score must be a number from {lowest:g} to 1 or 'calibrated', got {value}")
    return value


def check_min_score(asked: str | float | None, *, lowest: float = 0.0) -> None:
    """Refuse a malformed `--min-score` before anything is loaded (`resolve_min_score` resolves it later)."""
    resolve_min_score(asked, 0.0, what="", lowest=lowest)
