"""How a gallery decides "unknown": the threshold calibrated at export on held-out data (`calibrate_threshold`),
the one a gallery derives from its own images at each enrolment (`gallery_threshold`), and when a calibrated one
cannot be relied on (`threshold_problem`). Numpy only (README: Feature transfer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .predictor import unit_rows

MIN_UNKNOWN_REJECTED = 0.5  # a calibrated threshold that turns away fewer never-enrolled images than this is flagged


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows (or one vector) at unit length; a non-finite or zero one is an InputError."""
    x = np.asarray(x)
    return unit_rows(x.reshape(1, -1) if x.ndim == 1 else x, "embeddings", InputError).reshape(x.shape)


def _owners(labels: Sequence[str], names: list[str]) -> np.ndarray:
    """Each enrolled vector's label as an index into `names`."""
    index = {n: i for i, n in enumerate(names)}
    return np.fromiter((index[x] for x in labels), dtype=np.int64, count=len(labels))


def calibrate_threshold(
    embeddings: np.ndarray, targets: np.ndarray, *, shots: int = 5, max_loss: float = 0.02, seed: int = 0
) -> dict[str, Any] | None:
    """The unknown threshold for class-mean identification, from labelled embeddings (the export's held-out set).

    Simulates the device: per class, `shots` images are enrolled and the rest identified, once against the full
    gallery (known images: their cosine to the winning mean, and whether it is right) and once against the gallery
    without their own class (never-enrolled images: their best cosine). The threshold is the highest that keeps
    known-class accuracy within `max_loss` of the accuracy without a threshold; returned with what it gives.
    None when fewer than two classes have more than `shots` images."""
    x, y = _unit(embeddings).astype(np.float64), np.asarray(targets)
    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(y) if (y == c).sum() > shots]
    if len(classes) < 2:
        return None
    enrol, query = {}, []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        enrol[c] = _unit(x[idx[:shots]].mean(0)).astype(np.float64)
        query += list(idx[shots:])
    q = np.asarray(query)
    means = np.stack([enrol[c] for c in classes])
    sims = x[q] @ means.T
    own = np.asarray([classes.index(c) for c in y[q]])
    right = sims.argmax(1) == own
    known_score = sims.max(1)
    others = sims.copy()
    others[np.arange(len(q)), own] = -np.inf
    unknown_score = others.max(1)  # the same images, their class never enrolled
    base = float(right.mean())
    best_t = -1.0
    for t in np.unique(np.round(known_score, 6)):
        if float((right & (known_score >= t)).mean()) >= base - max_loss - 1e-12:
            best_t = max(best_t, float(t))
    rejected = float((unknown_score < best_t).mean())
    return {
        "unknown_threshold": round(best_t, 6),
        "usable": rejected >= MIN_UNKNOWN_REJECTED,
        "shots": shots,
        "classes": len(classes),
        "queries": int(len(q)),
        "known_accuracy": round(float((right & (known_score >= best_t)).mean()), 6),
        "known_accuracy_without_threshold": round(base, 6),
        "unknown_rejected": round(rejected, 6),
    }


def _loo_scores(x: np.ndarray, owner: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per enrolled vector: its cosine to its own label's mean without it (nan for a label's only image), whether
    that mean wins, and its best cosine to another label's mean (what it would score were its label never enrolled)."""
    sums = np.zeros((n_labels, x.shape[1]))
    np.add.at(sums, owner, x)
    counts = np.bincount(owner, minlength=n_labels)
    means = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    sims = x @ means.T
    rest = sums[owner] - x  # each vector's own label without it
    norms = np.linalg.norm(rest, axis=1)
    alone = counts[owner] < 2
    own = np.where(alone, np.nan, np.einsum("ij,ij->i", x, rest) / np.where(norms > 0, norms, 1.0))
    others = sims.copy()
    others[np.arange(len(x)), owner] = -np.inf
    stranger = others.max(1)
    return own, ~alone & (own > stranger), stranger


def _label_out_rejected(x: np.ndarray, owner: np.ndarray, n_labels: int) -> float | None:
    """Per label c left out: the threshold the other labels give (their images' best cosine to a label other than
    their own and c), and the share of c's images whose best cosine to the others falls below it; the mean over
    labels. None with fewer than 3 labels. One matrix product and one (labels x images) mask per block of labels."""
    if n_labels < 3:
        return None
    sums = np.zeros((n_labels, x.shape[1]))
    np.add.at(sums, owner, x)
    sims = x @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T
    sims[np.arange(len(x)), owner] = -np.inf
    order = np.argsort(-sims, axis=1)[:, :2]
    first, best1, best2 = order[:, 0], sims[np.arange(len(x)), order[:, 0]], sims[np.arange(len(x)), order[:, 1]]
    via_second = np.full(n_labels, -np.inf)
    np.maximum.at(via_second, first, best2)  # images whose best other label is c fall back to their second
    shares = []
    for lo in range(0, n_labels, 256):
        labels = np.arange(lo, min(lo + 256, n_labels))[:, None]
        usable = (owner[None, :] != labels) & (first[None, :] != labels)
        threshold = np.maximum(np.where(usable, best1[None, :], -np.inf).max(1), via_second[labels[:, 0]])
        for c, t in zip(labels[:, 0], threshold):
            shares.append(float(np.mean(best1[owner == c] < t)))
    return float(np.mean(shares))


def gallery_threshold(vectors: np.ndarray, labels: Sequence[str]) -> dict[str, Any] | None:
    """The unknown threshold a gallery gives itself (class-mean identification), leave-one-out over its images.

    Each enrolled image is scored against the other labels' means as if its own label were never enrolled; the
    threshold is the highest of those scores, so no enrolled image would be taken for another label. It follows the
    labels actually enrolled, which the export's held-out data may never have shown. On photos whose enrolment crops
    and queries came from different halves (benchmarks/open_set.py, 10 splits), it kept 91.6% of known queries right
    and answered 95.4% of never-enrolled ones unknown; a margin rule (best minus second-best) kept fewer.

    Returned with two estimates: `known_kept`, the share of enrolled images that, left out, are still right and at
    or above it; `unknown_rejected`, per label left out entirely, the share of its images below the threshold the
    other labels give (a label-out estimate). None unless at least 2 labels have 2 images or more."""
    names = list(dict.fromkeys(labels))
    owner = _owners(labels, names)
    if len(names) < 2 or int((np.bincount(owner, minlength=len(names)) >= 2).sum()) < 2:
        return None
    x = _unit(np.asarray(vectors)).astype(np.float64)
    own, right, stranger = _loo_scores(x, owner, len(names))
    threshold = float(stranger.max())
    known = own[~np.isnan(own)]
    kept = float(np.mean(right[~np.isnan(own)] & (known >= threshold))) if known.size else float("nan")
    rejected = _label_out_rejected(x, owner, len(names))
    return {
        "unknown_threshold": round(threshold, 6),
        "method": "leave-one-out: the highest cosine of an enrolled image to another label's mean",
        "images": int(len(x)),
        "labels": len(names),
        "known_kept": round(kept, 4) if known.size else None,
        "unknown_rejected": round(rejected, 4) if rejected is not None else None,
    }


def threshold_problem(embedding: dict[str, Any] | None) -> str | None:
    """Why an embedding bundle's calibrated unknown threshold cannot be relied on (None when it can, or when none
    was calibrated): most never-enrolled images would be answered with a known label."""
    calibration = (embedding or {}).get("threshold_calibration")
    if not isinstance(calibration, dict) or calibration.get("usable", True) is not False:
        return None
    rejected, t = calibration.get("unknown_rejected"), calibration.get("unknown_threshold")
    share = f"{100 * rejected:.1f}%" if isinstance(rejected, (int, float)) else "too few"
    return (
        f"the unknown threshold calibrated at export ({t}) rejects only {share} of never-enrolled images while keeping known "
        "accuracy: identify will answer most strangers with a known label; pass --threshold, or export on held-out data with "
        "more distinct classes"
    )
