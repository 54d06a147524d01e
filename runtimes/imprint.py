"""Classes added on the device to a trained classifier, torch-free (README: Feature transfer).

An extensible classifier bundle (`export RUN --output extensible`) outputs its logits *and* the features its linear
head reads, and carries `replay.npz`: the head (weight, bias) and torch's features of up to `replay_per_class`
training and validation images per class. A new class gets one new row of the head, from a few images:

- ``fit`` (default): the row starts as the imprinted one (below) and is fitted in numpy so that the new images score
  as the new class and the replay images keep theirs: class-balanced cross-entropy over every class, only the new
  row and its bias free, a small pull towards the imprinted start; gradient descent with backtracking (convex);
- ``mean``: plain weight imprinting, the new images' centred mean feature scaled to the old rows' mean norm. It
  makes old images look new (digits: old classes -16 pt); kept to compare against.

The bundle's own rows are never changed: its logits are the validated ones, and the added classes' logits
(`features @ rows.T + bias`) are appended after them. Images of a class added earlier serve as replay for later
ones, and adding images to an added label fits its row again. A file of added classes belongs to one model (its
fingerprint: source, preprocessing, head and replay) and is saved atomically with a sha256, like a gallery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BundleError, GalleryError, GalleryMismatch, InputError
from .fsutil import edit_locked, sha256_file
from .labels import check_label
from .npz_document import document_kind, meta_field, read_npz_document, string_list, write_npz_document

if TYPE_CHECKING:
    from .predictor import Classification, Predictor

IMPRINT_FORMAT = "edge-transfer-added-classes"
ADDED_CLASSES_FILE = document_kind(IMPRINT_FORMAT, "file of added classes")  # what imprint --classes may rewrite
IMPRINT_VERSION = 2  # 2: the sha256 covers every field (the methods too)
METHODS = ("fit", "mean")
FIT_L2 = 1e-3  # pull of the fitted row towards its imprinted start (measured on digits: 1e-2 lost more old accuracy)
FIT_STEPS = 300


@dataclass(frozen=True)
class Replay:
    """What the host left in the bundle for adding classes: the head and held-out features with their classes."""

    weight: np.ndarray  # (classes, dim) float64
    bias: np.ndarray  # (classes,)
    features: np.ndarray  # (n, dim) float64
    targets: np.ndarray  # (n,) int64, indices into the bundle's labels
    digest: str

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> Replay:
        """The replay file of `predictor`'s bundle, checked against the manifest (sha256, shapes)."""
        m, where = predictor.manifest, predictor.bundle.path
        if m.extension is None:
            raise InputError(f"{where} has no features output to add classes from; export the run with --output extensible")
        rel = str(m.extension["replay"])
        path = predictor.bundle.file(rel)
        entry = next(f for f in m.files if f.path == rel)
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{where}: {rel} changed since the bundle was written (sha256 mismatch)")
        try:
            with np.load(path, allow_pickle=False) as z:
                weight, bias = np.asarray(z["weight"], np.float64), np.asarray(z["bias"], np.float64)
                features, targets = np.asarray(z["features"], np.float64), np.asarray(z["targets"], np.int64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where}: {rel} is not a readable replay file ({type(exc).__name__}: {exc})") from None
        c, d = len(m.labels), int(m.extension["dim"])
        if weight.shape != (c, d) or bias.shape != (c,) or features.ndim != 2 or features.shape[1] != d or targets.shape != (len(features),):
            raise BundleError(
                f"{where}: {rel} holds a head of {weight.shape} and {features.shape} features; the manifest says {c} classes of {d} features"
            )
        if len(targets) and (targets.min() < 0 or targets.max() >= c):
            raise BundleError(f"{where}: {rel} has replay targets outside the {c} classes")
        return cls(weight, bias, features, targets, entry.sha256)


def model_fingerprint(predictor: Predictor, replay: Replay) -> str:
    """What makes added rows valid: the source model, its preprocessing, the head and the replay features."""
    m = predictor.manifest
    doc = {
        "source": {k: v for k, v in m.source.items() if k != "export"},
        **m.input_fingerprint(),
        "labels": list(m.labels),
        "replay": hashlib.sha256(replay.weight.tobytes() + replay.bias.tobytes() + replay.features.tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _lse(z: np.ndarray) -> np.ndarray:
    top = z.max(1)
    return top + np.log(np.exp(z - top[:, None]).sum(1))


def imprinted_row(shots: np.ndarray, replay: Replay) -> tuple[np.ndarray, float]:
    """Weight imprinting: the shots' mean feature, centred on the replay features' mean and scaled to the mean norm
    of the head's rows; the bias puts the replay mean at the head's mean bias."""
    centre = replay.features.mean(0) if len(replay.features) else np.zeros(replay.weight.shape[1])
    direction = shots.mean(0) - centre
    norm = np.linalg.norm(direction)
    if not np.isfinite(norm) or norm == 0:
        raise InputError("the new images' features are all equal to the replay mean: nothing to tell the class apart by")
    w = float(np.linalg.norm(replay.weight, axis=1).mean()) * direction / norm
    return w, float(replay.bias.mean() - w @ centre)


def fit_row(fixed_logits: np.ndarray, features: np.ndarray, targets: np.ndarray, start: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    """The new class's row (weight, bias): class-balanced cross-entropy over the fixed classes' logits plus the new
    one (target `fixed_logits.shape[1]`), L2 pull `FIT_L2` towards `start`; `FIT_STEPS` steps of gradient descent with
    Armijo backtracking (the problem is convex in the row)."""
    new = fixed_logits.shape[1]
    counts = np.bincount(targets, minlength=new + 1).astype(np.float64)
    a = 1.0 / counts[targets]
    a /= a.sum()
    w0, b0 = start
    is_new = (targets == new).astype(np.float64)
    rows = np.arange(len(targets))

    def loss(w: np.ndarray, b: float) -> tuple[float, np.ndarray]:
        z = np.concatenate([fixed_logits, (features @ w + b)[:, None]], axis=1)
        lse = _lse(z)
        return float(a @ (lse - z[rows, targets]) + 0.5 * FIT_L2 * np.sum((w - w0) ** 2)), np.exp(z[:, new] - lse)

    w, b, step = w0.copy(), b0, 1.0
    value, p = loss(w, b)
    for _ in range(FIT_STEPS):
        g = a * (p - is_new)
        gw, gb = features.T @ g + FIT_L2 * (w - w0), float(g.sum())
        sq = float(gw @ gw + gb * gb)
        if sq < 1e-18:
            break
        for _ in range(60):
            cand, cand_p = loss(w - step * gw, b - step * gb)
            if cand <= value - 0.5 * step * sq:
                break
            step *= 0.5
        else:
            break
        w, b, value, p = w - step * gw, b - step * gb, cand, cand_p
        step *= 2.0
    return w, b


class AddedClasses:
    """Classes added to one extensible classifier bundle. Create with `AddedClasses.for_bundle(predictor)` or
    `AddedClasses.load(path, predictor)`; `add_images`, `remove`, `labels`, `predict`, `save`."""

    def __init__(self, base_labels: tuple[str, ...], replay: Replay, fingerprint: str, model: dict[str, Any] | None = None) -> None:
        self.base_labels = tuple(base_labels)
        self.replay = replay
        self.fingerprint = fingerprint
        self.model = dict(model or {})
        self._lock = threading.Lock()
        dim = replay.weight.shape[1]
        self._rows, self._bias = np.zeros((0, dim)), np.zeros(0)
        self._names: tuple[str, ...] = ()
        self._shots: dict[str, np.ndarray] = {}
        self._methods: dict[str, str] = {}

    @classmethod
    def for_bundle(cls, predictor: Predictor) -> AddedClasses:
        replay = Replay.from_predictor(predictor)
        model = {"bundle": str(predictor.bundle.path), "format": predictor.manifest.export_format}
        return cls(predictor.labels, replay, model_fingerprint(predictor, replay), model)

    @property
    def labels(self) -> tuple[str, ...]:
        """The bundle's labels, then the added ones (the order of `extend`'s columns)."""
        with self._lock:
            return self.base_labels + self._names

    def added(self) -> dict[str, int]:
        """Each added label with the number of images its row was fitted from."""
        with self._lock:
            return {name: len(self._shots[name]) for name in self._names}

    def add(self, label: str, features: np.ndarray, *, method: str = "fit") -> None:
        """Add `label` from the features (N, dim) of its images (more images for an added label fit its row again)."""
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if label in self.base_labels:
            raise InputError(f"{label!r} is one of the bundle's own classes, which are never changed here; add it under another name")
        check_label(label, self.base_labels + self._names)
        x = np.asarray(features, np.float64)
        dim = self.replay.weight.shape[1]
        if x.ndim != 2 or x.shape[1] != dim or len(x) == 0 or not np.isfinite(x).all():
            raise InputError(f"add {label!r}: expected finite features of shape (N, {dim}), got {x.shape}")
        with self._lock:
            shots = dict(self._shots)
            shots[label] = np.concatenate([shots[label], x]) if label in shots else x
            names = tuple(n for n in self._names if n != label)
            keep = [self._names.index(n) for n in names]
            rows, bias = self._rows[keep], self._bias[keep]
            w, b = self._row(label, shots, names, rows, bias, method)
            self._rows, self._bias = np.concatenate([rows, w[None]]), np.concatenate([bias, [b]])
            self._names, self._shots = names + (label,), shots
            self._methods = {**{n: self._methods[n] for n in names}, label: method}

    def _row(
        self, label: str, shots: dict[str, np.ndarray], names: tuple[str, ...], rows: np.ndarray, bias: np.ndarray, method: str
    ) -> tuple[np.ndarray, float]:
        r = self.replay
        start = imprinted_row(shots[label], r)
        if method == "mean":
            return start
        weight, full_bias = np.concatenate([r.weight, rows]), np.concatenate([r.bias, bias])
        c = len(self.base_labels)
        xs = [r.features, *(shots[n] for n in names), shots[label]]
        ys = [r.targets, *(np.full(len(shots[n]), c + i) for i, n in enumerate(names)), np.full(len(shots[label]), c + len(names))]
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
        return fit_row(x @ weight.T + full_bias, x, y, start)

    def add_images(self, predictor: Predictor, label: str, images: Any, *, method: str = "fit") -> int:
        """Run `images` (arrays or paths, any size) through `predictor` and add them under `label`; returns how many
        images the label's row is now fitted from."""
        self.check(predictor)
        _, features = predictor.logits_and_features(images)
        self.add(label, features, method=method)
        return self.added()[label]

    def remove(self, label: str) -> None:
        with self._lock:
            if label not in self._names:
                raise InputError(f"no added class {label!r}; added: {', '.join(self._names) or 'none'} (the bundle's own classes cannot be removed)")
            keep = [i for i, n in enumerate(self._names) if n != label]
            self._rows, self._bias = self._rows[keep], self._bias[keep]
            self._names = tuple(self._names[i] for i in keep)
            self._shots = {n: self._shots[n] for n in self._names}
            self._methods = {n: self._methods[n] for n in self._names}

    def check(self, predictor: Predictor) -> None:
        """Raise `GalleryMismatch` unless these classes were added with `predictor`'s model."""
        _refuse_other_model(predictor, model_fingerprint(predictor, Replay.from_predictor(predictor)), self.fingerprint, self.model)

    # ------------------------------------------------------------------ prediction
    def extend(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The bundle's logits (N, classes) with the added classes' logits appended (N, classes + added)."""
        with self._lock:
            rows, bias = self._rows, self._bias
        return _extended(logits, features, rows, bias)

    def predict(self, predictor: Predictor, images: Any, top_k: int = 5) -> list[list[Classification]]:
        """`predictor.predict` over the bundle's classes and the added ones."""
        from .predictor import Classification, _top_k, softmax

        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        logits, features = predictor.logits_and_features(images)
        predictor.classify(logits, 1)  # refuses non-finite logits, naming the images
        with self._lock:  # rows and names of one moment, even while another thread adds a class
            rows, bias, labels = self._rows, self._bias, self.base_labels + self._names
        probs = softmax(_extended(logits, features, rows, bias))
        return [[Classification(labels[i], int(i), float(row[i])) for i in _top_k(row, min(top_k, len(labels)))] for row in probs]

    # ------------------------------------------------------------------ files
    @classmethod
    def editing(cls, path: str | os.PathLike[str], predictor: Predictor) -> contextlib.AbstractContextManager[AddedClasses]:
        """`with AddedClasses.editing(path, predictor) as a: a.add(...)`: the file at `path` (new when absent) read
        under an exclusive cross-process lock and saved atomically when the block ends (see `Gallery.editing`)."""
        return edit_locked(path, lambda real: cls.load(real, predictor), lambda: cls.for_bundle(predictor), lambda a, real: a.save(real))

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, fsync, rename) with a sha256 of the contents; use `editing` when several
        processes may change one file."""
        with self._lock:
            rows, bias, names = self._rows.copy(), self._bias.copy(), list(self._names)
            shots = [self._shots[n] for n in names]
            methods = dict(self._methods)
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(shots)]).astype(np.int64) if shots else np.zeros(0, np.int64)
        feats = np.concatenate(shots) if shots else np.zeros((0, rows.shape[1]))
        meta = {
            "format": IMPRINT_FORMAT,
            "version": IMPRINT_VERSION,
            "fingerprint": self.fingerprint,
            "model": self.model,
            "base_labels": list(self.base_labels),
            "labels": names,
            "methods": methods,
        }
        return write_npz_document(path, {"rows": rows, "bias": bias, "features": feats, "owner": owner}, meta, "file of added classes")

    @classmethod
    def load(cls, path: str | Path, predictor: Predictor) -> AddedClasses:
        """Read a file of added classes (checksum verified, every field checked) for `predictor`'s bundle; another
        model's is refused."""
        path = Path(path)
        keys = ("rows", "bias", "features", "owner")
        what = "file of added classes"
        arrays, meta = read_npz_document(path, keys, fmt=IMPRINT_FORMAT, version=IMPRINT_VERSION, what=what, error=GalleryError, digest_from=2)
        names = string_list(meta, "labels", path, GalleryError)
        fingerprint = meta_field(meta, "fingerprint", str, path, GalleryError)
        methods: dict[str, Any] = meta["methods"] if isinstance(meta.get("methods"), dict) else {}
        model: dict[str, Any] = meta["model"] if isinstance(meta.get("model"), dict) else {}
        if any(a.dtype.kind not in "fiu" for a in arrays.values()):
            raise GalleryError(f"{path}: not a usable {what} (arrays of numbers expected)")
        rows, bias, feats = (arrays[k].astype(np.float64) for k in keys[:3])
        owner = arrays["owner"].astype(np.int64)
        dim = Replay.from_predictor(predictor).weight.shape[1]
        shapes_ok = rows.ndim == 2 and rows.shape == (len(names), dim) and bias.shape == (len(names),)
        if not shapes_ok or feats.ndim != 2 or feats.shape[1:] != (dim,) or owner.shape != (len(feats),):
            raise GalleryError(
                f"{path}: arrays of shapes {rows.shape}, {bias.shape}, {feats.shape} do not match {len(names)} classes of {dim} features"
            )
        if meta["version"] < 2 and _digest_v1(rows, bias, feats, names) != meta.get("sha256"):  # version 1 covered arrays and labels
            raise GalleryError(f"{path}: checksum mismatch: the file was changed or damaged since it was saved")
        added = cls.for_bundle(predictor)
        _refuse_other_model(predictor, added.fingerprint, fingerprint, model)
        added._rows, added._bias, added._names = rows, bias, tuple(names)
        added._shots = {n: feats[owner == i] for i, n in enumerate(names)}
        added._methods = {n: str(methods.get(n, "fit")) for n in names}
        return added


def _refuse_other_model(predictor: Predictor, theirs: str, ours: str, model: dict[str, Any]) -> None:
    if theirs != ours:
        raise GalleryMismatch(
            f"these classes were added to another model ({model.get('bundle', 'unknown bundle')}, fingerprint {ours[:12]}), "
            f"not {predictor.bundle.path} (fingerprint {theirs[:12]}); add them again with this bundle"
        )


def _extended(logits: np.ndarray, features: np.ndarray, rows: np.ndarray, bias: np.ndarray) -> np.ndarray:
    added = np.asarray(features, np.float64) @ rows.T + bias
    return np.concatenate([np.asarray(logits, np.float32), added.astype(np.float32)], axis=1)


def _digest_v1(rows: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: list[str]) -> str:
    h = hashlib.sha256()
    for a in (rows, bias, features):
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    h.update(json.dumps(list(labels)).encode())
    return h.hexdigest()
