"""The runner contract every backend implements (README: On the device; in the style of Polygraphy's runners).

Public methods live here and check their input before a backend sees it; a backend overrides only `_run_impl`
(and reports what it actually runs on through `device` / `providers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import Bundle
from .errors import BundleError, InferenceError, InputError
from .fsutil import published_path
from .graph_types import computes_in
from .manifest import Manifest, TensorSpec
from .modality import InputReader, input_reader
from .preprocess import PreprocessConfig


@dataclass(frozen=True)
class Classification:
    """One ranked class for one image."""

    label: str
    index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


RUN_CHUNK = 256  # `run` hands the backend at most this many images at once (a 4096-image call ran ORT out of memory)


def padded_chunks(images: np.ndarray, size: int, *, pad: bool = False) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk, number of real images) over `images` in chunks of `size`; `pad` repeats the last image so every
    chunk has exactly `size` (for fixed-batch models), and callers keep only the first n outputs."""
    for start in range(0, len(images), size):
        part = images[start : start + size]
        n = len(part)
        if pad and n < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - n, axis=0)])
        yield part, n


def _top_k(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first, ties to the lower index (a stable argsort's first k, without
    sorting all classes)."""
    if k >= row.size:
        return np.argsort(-row, kind="stable")[:k]
    kth = np.partition(row, row.size - k)[row.size - k]
    candidates = np.flatnonzero(row >= kth)  # every value tied with the k-th too, so ties resolve as a full sort would
    return candidates[np.argsort(-row[candidates], kind="stable")[:k]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def unit_rows(x: np.ndarray, where: str, error: type[Exception] = InferenceError) -> np.ndarray:
    """Rows scaled to unit L2 length (float32); a non-finite or all-zero row raises `error` naming it (default
    `InferenceError`: a model's output; the gallery passes `InputError` for embeddings handed to it)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise error(f"{where}: NaN/inf or all-zero embedding in row(s) {', '.join(map(str, bad[:10]))}")
    return (x / norms[:, None]).astype(np.float32)


class Predictor:
    """A loaded bundle ready to run. Create with `runtimes.load(...)`, not directly.

    `run` takes a ready uint8 NHWC batch and returns raw logits; `predict` takes images of any size (arrays or
    file paths) and returns the top-k labels with softmax scores.
    """

    backend_name = "base"

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.input: InputReader = input_reader(bundle)  # what the bundle takes (images, texts): runtimes.modality
        self.warnings: list[str] = []  # what makes this bundle unsafe here (reported by describe() and `check`)
        validation = bundle.manifest.validation or {}
        self.validation_passed: bool | None = validation.get("passed") if isinstance(validation.get("passed"), bool) else None
        if self.validation_passed is False:  # written anyway with --allow-failed-validation: say so on every load
            import logging

            drop = validation.get("accuracy_drop")
            what = f" (accuracy drop {100 * drop:+.2f} pt vs torch)" if isinstance(drop, (int, float)) else ""
            logging.getLogger(__name__).warning(
                "%s: this bundle FAILED its validation gate at export%s and was written only because "
                "--allow-failed-validation was given; do not ship it",
                published_path(bundle.path),
                what,
            )

    def _check_int8_target(self) -> None:
        """For int8 bundles run on this CPU: warn (logging) when their kernels can saturate here."""
        import logging

        from .cpu import cpu_features, int8_target_problem

        target = self.manifest.target_cpu
        if target is None:
            return
        problem = int8_target_problem(target.get("name"), target.get("reduce_range"), cpu_features())
        if problem:
            self.warnings.append(problem)
            logging.getLogger(__name__).warning("%s: %s", published_path(self.bundle.path), problem)

    # ---------------------------------------------------------------- metadata
    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def is_embedding(self) -> bool:
        """An embedding bundle: one L2-normalised vector per image (`embed`), no classes."""
        return self.manifest.embedding is not None

    @property
    def is_extensible(self) -> bool:
        """A classifier that also outputs the features its head reads, so classes can be added here (`runtimes.imprint`)."""
        return self.manifest.extension is not None

    @property
    def calibrated_min_score(self) -> float | None:
        """A classifier's lowest top-1 score to answer with, calibrated at export (manifest `open_set`), or None."""
        section = self.manifest.open_set
        return float(section["min_score"]) if section else None

    @property
    def modality(self) -> str:
        """ "image" or "text": what `predict` and `prepare` take."""
        return self.manifest.modality

    @property
    def preprocessing(self) -> PreprocessConfig:
        """An image bundle's preprocessing; a text bundle has none (`InputError`; its `text` section says how)."""
        if self.manifest.preprocessing is None:
            raise InputError(f"{self.bundle.path} is a {self.modality} bundle: it has no image preprocessing")
        return self.manifest.preprocessing

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def device(self) -> str:
        """The device the backend actually runs on (not merely the one requested)."""
        raise NotImplementedError

    #: the arithmetic the backend actually uses, read back where the backend can tell (f32, f16, bf16; int8 models
    #: name their int8 part too); backends set it after loading
    inference_precision: str | None = None

    #: a dynamic-batch bundle compiled for one batch size at load (`runtimes.load(..., batch_size=N)`), else None
    loaded_batch: int | None = None

    @property
    def max_batch(self) -> int | None:
        """The one batch size this predictor runs (the bundle's fixed batch, or the one it was loaded for); None: any."""
        if self.loaded_batch is not None:
            return self.loaded_batch
        dim = self.inputs[0].shape[0]
        return dim if isinstance(dim, int) else None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend_name,
            "device": self.device,
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            "computes": computes_in(self.precision, self.inference_precision, (self.manifest.validation or {}).get("int8_macs_share")),
            "format": self.manifest.format,
            "modality": self.modality,
            "input": self.inputs[0].to_dict(),
            **({"inputs": [t.to_dict() for t in self.inputs]} if len(self.inputs) > 1 else {}),
            "output": self.outputs[0].to_dict(),
            **({"loaded_batch": self.loaded_batch} if self.loaded_batch is not None else {}),
            "num_classes": len(self.labels),
            "output_kind": "embedding" if self.is_embedding else "logits",
            **({"embedding": dict(self.manifest.embedding or {})} if self.is_embedding else {}),
            **({"extension": dict(self.manifest.extension or {}), "features_output": self.outputs[1].to_dict()} if self.is_extensible else {}),
            "warnings": list(self.warnings),
            "validation_passed": self.validation_passed,
        }

    def check_graph_io(self, graph_inputs: dict[str, tuple[str, tuple[Any, ...]]], graph_outputs: dict[str, tuple[str, tuple[Any, ...]]]) -> None:
        """Raise `BundleError` (naming both sides) unless the model's own I/O is what the manifest says: the input
        and output exist *by name*, the input's dtype, rank and static dims match, the output is float logits, and
        its width is the number of labels. Dims are ints, or None/str for dynamic ones."""
        where = f"{self.bundle.path}"
        for spec in self.inputs:
            if spec.name not in graph_inputs:
                raise BundleError(
                    f"{where}: the manifest's input '{spec.name}' is not an input of the model (model inputs: {', '.join(graph_inputs) or 'none'})"
                )
            dtype, shape = graph_inputs[spec.name]
            if dtype != spec.dtype:
                raise BundleError(f"{where}: input '{spec.name}' is {dtype} in the model, {spec.dtype} in the manifest")
            if len(shape) != len(spec.shape):
                raise BundleError(f"{where}: input '{spec.name}' has rank {len(shape)} in the model, {len(spec.shape)} in the manifest")
            for axis, (g, m) in enumerate(zip(shape, spec.shape)):
                if isinstance(m, int) and isinstance(g, int) and g != m:
                    raise BundleError(
                        f"{where}: input '{spec.name}' dimension {axis} is {g} in the model, {m} in the manifest "
                        f"(model shape {list(shape)}, manifest {list(spec.shape)})"
                    )
        for i, out in enumerate(self.outputs):
            if out.name not in graph_outputs:
                raise BundleError(
                    f"{where}: the manifest's output '{out.name}' is not an output of the model (model outputs: {', '.join(graph_outputs)})"
                )
            dtype, shape = graph_outputs[out.name]
            if dtype not in ("float32", "float16"):
                raise BundleError(f"{where}: output '{out.name}' is {dtype} in the model; expected float32 or float16 values")
            width = shape[-1] if shape else None
            wanted = self.manifest.output_width if i == 0 else out.shape[-1]
            if isinstance(width, int) and width != wanted:
                source = self._width_source() if i == 0 else f"the manifest's extension.dim is {wanted}"
                raise BundleError(f"{where}: output '{out.name}' has {width} values per image in the model, but {source}")

    def _width_source(self) -> str:
        if self.is_embedding:
            return f"the manifest's embedding.dim is {self.manifest.output_width}"
        return f"the manifest lists {len(self.labels)} labels"

    # ---------------------------------------------------------------- running
    def check_batch(self, batch: Any) -> Any:
        """Raise `InputError` unless `batch` is exactly what the model takes (images: uint8 (N, H, W, 3), N >= 1;
        texts: a `runtimes.modality.TokenBatch`), naming the input at fault."""
        return self.input.check(batch, self.max_batch)

    def run(self, batch: Any) -> np.ndarray:
        """Run a ready batch (uint8 NHWC images, or a `TokenBatch` for text; `prepare` makes either); return the raw
        output (float32 logits, shape (N, num_classes)). Non-finite logits are returned as they are (`predict` refuses them)."""
        batch = self.check_batch(batch)
        limit = min(RUN_CHUNK, self.manifest.rows_per_call or RUN_CHUNK)  # bounded memory; per-call quantisation: alone
        if self.max_batch is None and len(batch) > limit:
            out = np.concatenate([self._run_impl(part) for part, _ in self.input.chunks(batch, limit)])
        else:
            out = self._run_impl(batch)
        if out.ndim != 2 or out.shape != (len(batch), self.manifest.output_width):
            raise BundleError(f"{self.bundle.path}: the model returned shape {out.shape} for a batch of {len(batch)}; {self._width_source()}")
        return out

    def _run_impl(self, batch: Any) -> np.ndarray:
        """The backend's call on a checked batch; bind it with `self.input.feeds(batch)` (inputs by name)."""
        raise NotImplementedError

    def _run_with_features_impl(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs of an extensible classifier: logits and the features its head reads (float32)."""
        raise NotImplementedError

    def logits_and_features(self, images: Any, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Images (as `predict` takes them) -> (logits (N, classes), features (N, dim)) of an extensible classifier
        (`export --output extensible`): what `runtimes.imprint` adds classes from."""
        if not self.is_extensible:
            raise InputError(f"{self.bundle.path} has no features output to add classes from; export the run with --output extensible")
        batch = self.prepare(images)
        size = self.max_batch or min(chunk, self.manifest.rows_per_call or chunk)
        dim = int(self.outputs[1].shape[-1])
        logits, feats = [], []
        for part, n in self.input.chunks(batch, size, pad=self.max_batch is not None):
            lo, fe = self._run_with_features_impl(self.check_batch(part))
            if lo.shape != (len(part), len(self.labels)) or fe.shape != (len(part), dim):
                raise BundleError(f"{self.bundle.path}: the model returned shapes {lo.shape} and {fe.shape} for a batch of {len(part)}")
            logits.append(lo[:n])
            feats.append(fe[:n])
        return np.concatenate(logits), np.concatenate(feats)

    def native_call(self) -> Callable[[np.ndarray], Any]:
        """The backend's own inference call on this predictor's session, with nothing of ours around it.

        For measuring our overhead (`runtimes.bench`): it takes a ready batch and returns whatever the backend
        returns, without input checks or output conversion. Call it from the thread that will use it.
        """
        raise NotImplementedError

    def prepare(self, items: Any) -> Any:
        """The user's items -> a ready batch: images (one array, a batch, a list of arrays or file paths) -> uint8
        batch at the model's input size; texts (a string or a list of them) -> a `TokenBatch`."""
        return self.input.prepare(items)

    def predict(self, images: Any, top_k: int = 5) -> list[list[Classification]]:
        """Classify images of any size (or texts, for a text bundle); return, per item, the `top_k` classes with
        softmax scores, best first."""
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        return self.classify(self.run_chunked(self.prepare(images)), top_k)

    def embed(self, images: Any) -> np.ndarray:
        """Images of any size (as `predict` takes them) -> float32 (N, dim) embeddings of unit length (an embedding
        bundle only; the norm is taken again here, so int8 rounding of the in-graph one does not leak out)."""
        if not self.is_embedding:
            raise InputError(
                f"{self.bundle.path} is a classifier bundle (logits for {len(self.labels)} labels); embeddings come from an embedding "
                "bundle: edge-transfer export RUN --output embedding"
            )
        return unit_rows(self.run_chunked(self.prepare(images)), f"{self.bundle.path}")

    def answers(self, outputs: np.ndarray, top_k: int = 5) -> list[Any]:
        """Raw model outputs (N, width) -> per row what `predict` answers (the top-k classes) or, for an embedding
        bundle, what `embed` answers (a unit vector)."""
        if self.is_embedding:
            return list(unit_rows(outputs, f"{self.bundle.path}"))
        return self.classify(outputs, top_k)

    def stream(self, frames: Any, *, top_k: int = 5, answer: Callable[[np.ndarray], Any] | None = None, depth: int = 4) -> Any:
        """A `runtimes.stream.Pipeline` over `frames` (a `runtimes.video.VideoSource`, or any iterable of what
        `predict` takes per item): the next frames are read and prepared in a thread while the model runs."""
        from .stream import Pipeline

        return Pipeline(self, frames, top_k=top_k, answer=answer, depth=depth)

    def classify(self, logits: np.ndarray, top_k: int = 5) -> list[list[Classification]]:
        """Logits (N, classes) -> per image, the `top_k` classes with softmax scores, best first (predict's last step)."""
        if self.is_embedding:
            raise InputError(
                f"{self.bundle.path} is an embedding bundle ({self.manifest.output_width}-d vectors, no classes): use embed(), or "
                "enrol labels in a gallery and identify (edge-transfer enroll / identify)"
            )
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if bad.size:
            raise InferenceError(
                f"{self.bundle.path}: the model produced NaN/inf logits for image(s) "
                f"{', '.join(map(str, bad[:10]))}{' ...' if bad.size > 10 else ''}; no labels are given for them"
            )
        probs = softmax(logits)
        k = min(top_k, probs.shape[1])
        results = []
        for row in probs:
            idx = _top_k(row, k)
            results.append([Classification(self.labels[i], int(i), float(row[i])) for i in idx])
        return results

    def run_chunked(self, batch: Any, chunk: int = 64) -> np.ndarray:
        """`run` over a batch of any size, in chunks (padding the last one for fixed-batch bundles)."""
        size = self.max_batch or min(chunk, self.manifest.rows_per_call or chunk)
        return np.concatenate([self.run(part)[:n] for part, n in self.input.chunks(batch, size, pad=self.max_batch is not None)])

    def self_test(self, *, raise_on_failure: bool = True) -> Any:
        """Run the bundle's golden images here and compare with its torch reference (`runtimes.selftest`).

        Returns a `SelfTestResult` (status "pass", or "missing" for bundles without self-test data). A failure raises
        `SelfTestFailed` (carrying the result), unless `raise_on_failure=False`.
        """
        from .selftest import SelfTestFailed, run_self_test

        result = run_self_test(self)
        if result.status == "fail" and raise_on_failure:
            raise SelfTestFailed(
                f"{self.bundle.path} on {self.backend_name} {self.device} ({self.inference_precision or 'precision unknown'}): {result.summary()}",
                result,
            )
        return result

    def close(self) -> None:
        """Release backend resources."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.bundle.path} backend={self.backend_name} device={self.device} precision={self.precision}>"


def static_batch(bundle: Bundle, batch_size: Any) -> int:
    """Check `runtimes.load(..., batch_size=N)` against the bundle: a whole number >= 1, the bundle's own batch if it
    has a fixed one, and 1 for bundles that run one row per call (dynamic int8). Returns N."""
    from .options import MAX_BATCH

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise InputError(f"batch_size must be a whole number from 1 to {MAX_BATCH}, got {batch_size!r}")
    m = bundle.manifest
    fixed = m.inputs[0].shape[0]
    if isinstance(fixed, int) and fixed != batch_size:
        raise InputError(f"{bundle.path}: this bundle has a fixed batch of {fixed}; it cannot be loaded for batch {batch_size}")
    if m.rows_per_call == 1 and batch_size != 1:
        raise InputError(f"{bundle.path}: this bundle runs one row per call (its int8 scales come from each call's own rows), so batch_size=1 only")
    if m.backend == "tensorrt":
        raise InputError(
            f"{bundle.path}: a TensorRT engine's batch range is set at export (--trt-opt-batch, --trt-max-batch, or a fixed --batch-size)"
        )
    return batch_size
