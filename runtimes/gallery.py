"""A gallery of labelled embeddings on the device: enrol a label from a few images, identify new images, no torch
(README: Feature transfer).

The embedding bundle (`export --output embedding`) turns an image into a unit-length vector; the gallery keeps
vectors per label and answers with the most similar label, or *unknown* below a cosine threshold:

- ``mean`` (default): each label's L2-normalised mean embedding (weight imprinting, as Coral's Edge TPU does it),
  scored by cosine;
- ``knn``: the `k` most similar enrolled vectors vote, weighted by cosine; the score is the best of the winner's.

The threshold is derived from the gallery itself at each enrolment (`gallery_threshold`, leave-one-out) once two
labels have two images or more; until then it is the one calibrated on the host's held-out data at export (the
manifest's `embedding.unknown_threshold`). Either can be overridden per call. A gallery belongs to one embedding model: its
`fingerprint` (the exported model, its preprocessing and its embedding) is saved with it, and a gallery used with
another model is refused (`GalleryMismatch`). Every format of one export shares a fingerprint: each was checked
against the same torch model at export. Saving is atomic (temp file, fsync, rename) with a sha256 of the contents;
reads are safe while another thread enrols (the arrays are replaced, never changed in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GalleryError, GalleryMismatch, InputError
from .fsutil import edit_locked
from .gallery_threshold import MIN_UNKNOWN_REJECTED, _owners, _unit, calibrate_threshold, gallery_threshold, threshold_problem
from .labels import UNKNOWN, check_label, check_labels
from .npz_document import document_kind, meta_field, read_npz_document, string_list, write_npz_document

if TYPE_CHECKING:
    from .predictor import Predictor

GALLERY_FORMAT = "edge-transfer-gallery"
GALLERY_FILE = document_kind(GALLERY_FORMAT, "gallery file")  # what enroll --gallery may rewrite (runtimes.outputs)
GALLERY_VERSION = 2  # 2: the sha256 covers every field (the threshold too), not only the vectors and labels
DEFAULT_THRESHOLD = 0.5  # only for bundles exported without labelled data to calibrate on (see calibrate_threshold)
METHODS = ("mean", "knn")


@dataclass(frozen=True)
class Identification:
    """One image's answer: `label` (None when unknown), the cosine `score` it got, and the best label even when
    below the threshold (`nearest`)."""

    label: str | None
    score: float
    nearest: str | None
    threshold: float

    @property
    def known(self) -> bool:
        return self.label is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label if self.label is not None else UNKNOWN,
            "known": self.known,
            "score": round(self.score, 6),
            "nearest": self.nearest,
        }


def model_fingerprint(predictor: Predictor) -> str:
    """What makes embeddings comparable: the source model and its export, the preprocessing, the embedding."""
    m = predictor.manifest
    if m.embedding is None:
        raise InputError(f"{predictor.bundle.path} is a classifier bundle; a gallery needs an embedding bundle (export --output embedding)")
    source = {k: v for k, v in m.source.items() if k != "export"}
    export = m.source.get("export") or {}
    doc = {
        "source": source,
        "graph": {k: export.get(k) for k in ("exporter", "opset", "parameter_bytes")},
        **m.input_fingerprint(),
        "embedding": {k: m.embedding.get(k) for k in ("dim", "normalization", "layers")},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Gallery:
    """Labelled unit-length embeddings of one model. Create with `Gallery.for_bundle(predictor)` or
    `Gallery.load(path, predictor)`; `enroll`, `remove`, `labels`, `identify`, `save`."""

    def __init__(self, dim: int, fingerprint: str, *, threshold: float | None = None, model: dict[str, Any] | None = None) -> None:
        self.dim = int(dim)
        self.fingerprint = fingerprint
        self._threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self._source = "unset: no labelled data at export" if threshold is None else "calibrated at export"
        self.export_threshold = self._threshold  # what the bundle's manifest gave, kept for galleries too small to derive one
        self._calibration: dict[str, Any] | None = None  # set when derived from the gallery itself
        self._stale = False  # enrolled or removed since the threshold was derived (derived again when next read)
        self.model = dict(model or {})
        self._lock = threading.Lock()
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._labels: tuple[str, ...] = ()

    # ------------------------------------------------------------------ creation
    @classmethod
    def for_bundle(cls, predictor: Predictor) -> Gallery:
        """An empty gallery for `predictor`'s embedding bundle (its threshold from the manifest)."""
        fingerprint = model_fingerprint(predictor)
        e = predictor.manifest.embedding or {}
        model = {"bundle": str(predictor.bundle.path), "format": predictor.manifest.export_format, "dim": e.get("dim")}
        gallery = cls(int(e["dim"]), fingerprint, threshold=e.get("unknown_threshold"), model=model)
        if threshold_problem(e) is not None:
            gallery._source = "calibrated at export, rejecting few never-enrolled images (see edge-transfer check)"
        return gallery

    # ------------------------------------------------------------------ contents
    def labels(self) -> dict[str, int]:
        """Each enrolled label with its number of embeddings, in enrolment order."""
        out: dict[str, int] = {}
        for label in self._labels:
            out[label] = out.get(label, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._labels)

    def enroll(self, label: str, embeddings: np.ndarray) -> int:
        """Add embeddings (N, dim) under `label` (to any it already has); returns how many the label now has."""
        check_label(label, dict.fromkeys(self._labels))
        vectors = np.asarray(embeddings)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise InputError(f"enroll {label!r}: expected embeddings of shape (N, {self.dim}), got {vectors.shape}")
        vectors = _unit(vectors)
        with self._lock:  # new arrays, swapped in: a reader holds the old pair or the new one, never half of each
            self._vectors = np.concatenate([self._vectors, vectors])
            self._labels = self._labels + (label,) * len(vectors)
            self._stale = True
        return self.labels()[label]

    def enroll_images(self, predictor: Predictor, label: str, images: Any) -> int:
        """Embed `images` (arrays or paths, any size) with `predictor` and enrol them under `label`."""
        self.check(predictor)
        return self.enroll(label, predictor.embed(images))

    def enroll_folders(self, predictor: Predictor, root: str | os.PathLike[str]) -> dict[str, int]:
        """Enrol each sub-folder of `root` as a label of its name, from the images in it; returns {label: count}."""
        return {label: self.enroll_images(predictor, label, paths) for label, paths in label_folders(root).items()}

    def remove(self, label: str) -> int:
        """Remove every embedding of `label`; returns how many were removed (an unknown label is an InputError)."""
        with self._lock:
            keep = np.asarray([x != label for x in self._labels], bool)
            removed = int(len(keep) - keep.sum())
            if removed == 0:
                raise InputError(f"no label {label!r} in this gallery; labels: {', '.join(self.labels()) or 'none'}")
            self._vectors = self._vectors[keep]
            self._labels = tuple(x for x in self._labels if x != label)
            self._stale = True
        return removed

    @property
    def default_threshold(self) -> float:
        """The cosine below which `identify` answers unknown: derived from the gallery (after the last change), or the
        bundle's while the gallery is too small."""
        self._refresh()
        return self._threshold

    @property
    def threshold_source(self) -> str:
        self._refresh()
        return self._source

    @property
    def threshold_calibration(self) -> dict[str, Any] | None:
        """The derivation behind `default_threshold` (`gallery_threshold`), or None when it is the bundle's."""
        self._refresh()
        return self._calibration

    def _refresh(self) -> None:
        if self._stale:
            self.rederive_threshold()

    def rederive_threshold(self) -> dict[str, Any] | None:
        """Derive the unknown threshold from the gallery itself (`gallery_threshold`), as the first read after `enroll`
        or `remove` does; a gallery too small for it (fewer than 2 labels with 2 images or more) goes back to the
        bundle's threshold. Returns the derivation."""
        with self._lock:
            vectors, labels = self._vectors, self._labels
            self._stale = False
        derived = gallery_threshold(vectors, labels)
        if derived is None:
            self._threshold, self._calibration = self.export_threshold, None
            if self._source.startswith("derived"):
                self._source = "calibrated at export"
        else:
            self._threshold, self._calibration = derived["unknown_threshold"], derived
            self._source = f"derived from this gallery: leave-one-out over {derived['images']} image(s) of {derived['labels']} labels"
        return derived

    def expected_rates(self) -> str | None:
        """What the derived threshold is expected to give, for people (None when it was not derived here)."""
        c = self.threshold_calibration or {}
        parts = []
        if isinstance(c.get("known_kept"), (int, float)):
            parts.append(f"{100 * c['known_kept']:.0f}% of enrolled labels' images kept and right")
        if isinstance(c.get("unknown_rejected"), (int, float)):
            parts.append(f"{100 * c['unknown_rejected']:.0f}% of never-enrolled ones answered unknown")
        return f"expected: {', '.join(parts)} (leave-one-out estimates)" if parts else None

    def check(self, predictor: Predictor) -> None:
        """Raise `GalleryMismatch` unless this gallery was enrolled with `predictor`'s embedding model."""
        theirs = model_fingerprint(predictor)
        if theirs != self.fingerprint:
            raise GalleryMismatch(
                f"this gallery was enrolled with another embedding model ({self.model.get('bundle', 'unknown bundle')}, fingerprint "
                f"{self.fingerprint[:12]}), not {predictor.bundle.path} (fingerprint {theirs[:12]}): its embeddings cannot be "
                "compared; enrol the labels again with this bundle"
            )

    # ------------------------------------------------------------------ identification
    def identify(self, embeddings: np.ndarray, *, threshold: float | None = None, method: str = "mean", k: int = 5) -> list[Identification]:
        """The most similar label per embedding, or unknown (`label` None) when its cosine is below `threshold`
        (default: the calibrated one). `method`: "mean" (class means) or "knn" (`k` nearest enrolled vectors)."""
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        t = self.default_threshold if threshold is None else float(threshold)
        if not -1.0 <= t <= 1.0:
            raise InputError(f"threshold is a cosine similarity in [-1, 1], got {t}")
        with self._lock:
            vectors, labels = self._vectors, self._labels
        if not labels:
            raise InputError("the gallery is empty: enrol at least one label first")
        queries = _unit(np.atleast_2d(embeddings))
        if queries.shape[1] != self.dim:
            raise InputError(f"expected embeddings of {self.dim} dimensions, got shape {queries.shape}")
        names = list(dict.fromkeys(labels))
        owner = _owners(labels, names)
        if method == "mean":
            means = np.stack([vectors[owner == i].mean(0) for i in range(len(names))])
            sims = queries.astype(np.float64) @ _unit(means).T.astype(np.float64)
            best = sims.argmax(1)
            scores = sims[np.arange(len(queries)), best]
        else:
            sims = queries.astype(np.float64) @ vectors.T.astype(np.float64)
            best, scores = _knn_vote(sims, owner, len(names), k)
        return [Identification(names[b] if s >= t else None, float(s), names[b], t) for b, s in zip(best, scores)]

    # ------------------------------------------------------------------ files
    @classmethod
    def editing(cls, path: str | os.PathLike[str], predictor: Predictor) -> contextlib.AbstractContextManager[Gallery]:
        """`with Gallery.editing(path, predictor) as g: g.enroll(...)`: the gallery at `path` (a new one when absent)
        read under an exclusive cross-process lock and saved atomically when the block ends, so processes enrolling
        into one file at once each keep their labels. Embed images before the block: the lock is held throughout."""
        return edit_locked(path, lambda real: cls.load(real, predictor), lambda: cls.for_bundle(predictor), lambda g, real: g.save(real))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file beside it, fsync, rename): the path holds the old gallery or the new one. A
        symlinked path changes the file it points to. Another process's changes since this gallery was read are
        replaced: use `editing` when several may enrol at once."""
        with self._lock:
            vectors, labels = self._vectors.copy(), list(self._labels)
        meta = {
            "format": GALLERY_FORMAT,
            "version": GALLERY_VERSION,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "model": self.model,
            "threshold": self.default_threshold,
            "threshold_source": self.threshold_source,
            "export_threshold": self.export_threshold,
            **({"threshold_calibration": self.threshold_calibration} if self.threshold_calibration else {}),
            "labels": labels,
        }
        return write_npz_document(path, {"embeddings": vectors}, meta, "gallery")

    @classmethod
    def load(cls, path: str | os.PathLike[str], predictor: Predictor | None = None) -> Gallery:
        """Read a gallery (checksum verified, every field checked); with `predictor`, refuse one made with another model."""
        path = Path(path)
        arrays, meta = read_npz_document(
            path, ("embeddings",), fmt=GALLERY_FORMAT, version=GALLERY_VERSION, what="gallery file", error=GalleryError, digest_from=2
        )
        vectors = arrays["embeddings"]
        labels = string_list(meta, "labels", path, GalleryError)
        dim = meta_field(meta, "dim", int, path, GalleryError)
        fingerprint = meta_field(meta, "fingerprint", str, path, GalleryError)
        threshold = float(meta_field(meta, "threshold", (int, float), path, GalleryError))
        if not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"{path}: field 'threshold' is a cosine in [-1, 1], got {threshold}")
        if vectors.dtype.kind != "f" or vectors.ndim != 2 or len(labels) != len(vectors) or vectors.shape[1] != dim:
            raise GalleryError(f"{path}: {len(vectors)} embeddings of shape {vectors.shape} do not match {dim}-d and the {len(labels)} labels listed")
        vectors = vectors.astype(np.float32)
        if meta["version"] < 2 and _digest_v1(vectors, labels) != meta.get("sha256"):  # version 1 covered the vectors and labels only
            raise GalleryError(f"{path}: checksum mismatch: the gallery was changed or damaged since it was saved")
        model = meta.get("model")
        gallery = cls(dim, fingerprint, threshold=threshold, model=model if isinstance(model, dict) else None)
        gallery._source = str(meta.get("threshold_source", "saved"))
        export_threshold = meta.get("export_threshold", threshold)
        if isinstance(export_threshold, (int, float)) and not isinstance(export_threshold, bool) and -1.0 <= export_threshold <= 1.0:
            gallery.export_threshold = float(export_threshold)
        calibration = meta.get("threshold_calibration")
        gallery._calibration = calibration if isinstance(calibration, dict) else None
        gallery._vectors, gallery._labels = vectors, tuple(labels)
        if predictor is not None:
            gallery.check(predictor)
        return gallery


def label_folders(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Each visible sub-folder of `root` as a label of its name, with its images (labels checked together)."""
    from .preprocess import expand_image_paths

    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{root}: no sub-folders to enrol (one per label)")
    check_labels([f.name for f in folders], where="label folder")
    return {folder.name: expand_image_paths([str(folder)]) for folder in folders}


def _digest_v1(vectors: np.ndarray, labels: Sequence[str]) -> str:
    h = hashlib.sha256(np.ascontiguousarray(vectors, np.float32).tobytes())
    h.update(json.dumps(list(labels)).encode())
    return h.hexdigest()


def _knn_vote(sims: np.ndarray, owner: np.ndarray, n_labels: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the label whose members among the `k` most similar enrolled vectors have the largest summed
    cosine, and the best cosine of that label's members."""
    k = min(k, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best, scores = [], []
    for row, idx in zip(sims, top):
        votes = np.zeros(n_labels)
        np.add.at(votes, owner[idx], row[idx])
        winner = int(votes.argmax())
        best.append(winner)
        scores.append(float(row[idx][owner[idx] == winner].max()))
    return np.asarray(best), np.asarray(scores)


__all__ = [
    "Gallery",
    "Identification",
    "calibrate_threshold",
    "gallery_threshold",
    "threshold_problem",
    "label_folders",
    "model_fingerprint",
    "MIN_UNKNOWN_REJECTED",
]
