"""The self-test every bundle carries: golden inputs, torch fp32 reference logits and tolerances from the export's
gate, so a device can check, without torch, that it computes what was validated on the host.

At export (`write_self_test`): a seeded draw of the gate's held-out images (uint8, at the model's input size) goes to
`selftest/images.npy`, the torch fp32 logits for them to `selftest/reference_logits.npy`; both are listed files with
sha256 like every other bundle file. The manifest's `self_test` section records what the artifact measured on them
at export (agreement with torch, max |logit diff|, the error relative to the reference's largest logit, the
inference precision used) and the tolerances derived from that. On the device (`run_self_test`) the same images go
through the loaded predictor and are compared with the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BundleError, EdgeTransferError, SelfTestFailed
from .fsutil import check_relative_path

__all__ = ["SelfTestFailed", "SelfTestResult", "run_self_test", "write_self_test"]

if TYPE_CHECKING:
    from .predictor import Predictor

SELF_TEST_DIR = "selftest"
DEFAULT_SELF_TEST_SIZE = 16
# golden images are stored as they arrived (PNG, so the device reads them as it reads any file), their long side
# capped at this multiple of the model's: the device's own resize and crop run on them, at a few MB at most
ORIGINAL_MAX_SIDE = 1.25
# the smallest relative logit error a precision is allowed on the device, whatever the host measured: a bf16 run of an
# fp32 bundle (relative error ~1e-2) fails, ordinary kernel differences between CPUs (~1e-6) pass
MIN_REL_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
REL_TOLERANCE_FACTOR = 3.0  # the device may differ from torch up to 3x what the host's artifact did
# fp16 bundles: the device may also differ from torch up to 1.5x what a reference computing in fp16 arithmetic did
# (converters.fp16_reference: every multiply-add rounded to fp16, more rounding than any fp16 kernel does; a
# Cortex-A76 measured 1.46e-2 where that reference gave 2.0e-2). An x86 host computes fp16 graphs in f32 and cannot
# show this by itself.
FP16_ARITHMETIC_FACTOR = 1.5
EMBEDDING_NEIGHBOURS = 5  # neighbour agreement counts a nearest image among the reference's 5 nearest (export gate too)
# an extensible bundle's features output: the device's mean cosine to torch may fall below the host's by 3x its gap
# to 1, and at least by this much (kernel differences between CPUs pass; a bf16 run of fp32 features does not)
MIN_COSINE_SLACK = {"fp32": 1e-5, "fp16": 1e-3, "int8": 2e-2}


@dataclass
class SelfTestResult:
    """The outcome of a bundle's self-test on this device. `status`: "pass", "fail" or "missing" (no self-test data)."""

    status: str
    backend: str
    device: str
    inference_precision: str | None
    count: int = 0
    agreement: float | None = None
    max_abs_diff: float | None = None
    rel_err: float | None = None
    min_agreement: float | None = None
    max_rel_err: float | None = None
    at_export: dict[str, Any] | None = None
    reason: str | None = None
    features_cosine: float | None = None  # an extensible bundle: the features output's mean cosine to torch
    min_features_cosine: float | None = None
    unit: str = "images"  # what the golden inputs are: images or texts
    output: str = "logit"  # what is compared: logits, or an embedding bundle's embedding values

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}

    def summary(self) -> str:
        if self.status == "missing":
            return f"self-test: MISSING ({self.reason})"
        line = (
            f"self-test on {self.count} golden {self.unit}: agreement {100 * (self.agreement or 0):.2f}% (needs "
            f">= {100 * (self.min_agreement or 0):.2f}%), relative {self.output} error {self.rel_err:.2e} (needs <= "
            f"{self.max_rel_err:.2e}), max |{self.output} diff| {self.max_abs_diff:.3g}: {self.status.upper()}"
        )
        if self.features_cosine is not None:
            line += f"; features cosine {self.features_cosine:.5f} (needs >= {self.min_features_cosine:.5f})"
        return line + (f" ({self.reason})" if self.reason else "")


def measure(logits: np.ndarray, reference: np.ndarray, *, embedding: bool = False) -> dict[str, float]:
    """Agreement, max |diff| and the max |diff| relative to the reference's largest |value| (scale-free).

    Agreement is top-1 agreement for logits; for embeddings, neighbour agreement: the share of images whose most
    similar other image (cosine) is among the reference's `EMBEDDING_NEIGHBOURS` most similar, as the export gate
    counts it (the very same neighbour flips between near-duplicates under int8 rounding on another CPU)."""
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    scale = max(float(np.abs(reference).max()), 1e-12)
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    agreement = neighbour_agreement(logits, reference, EMBEDDING_NEIGHBOURS) if embedding else float((logits.argmax(1) == reference.argmax(1)).mean())
    return {"agreement": agreement, "max_abs_diff": max_diff, "rel_err": max_diff / scale}


def nearest_others(x: np.ndarray, k: int = 1) -> np.ndarray:
    """Per row, the indices of the `k` most cosine-similar other rows, most similar first: (N, k)."""
    v = x.astype(np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(x) - 1)
    return np.asarray(np.argsort(-sim, axis=1, kind="stable")[:, :k])


def neighbour_agreement(x: np.ndarray, reference: np.ndarray, k: int = 1) -> float:
    """The share of rows whose nearest other row (cosine) under `x` is among the `k` nearest under `reference`
    (k=1: the same row); 1.0 for a single row."""
    if len(x) < 2:
        return 1.0
    mine, theirs = nearest_others(x, 1)[:, 0], nearest_others(reference, k)
    return float((theirs == mine[:, None]).any(axis=1).mean())


def mean_cosine(x: np.ndarray, reference: np.ndarray) -> float:
    """The mean cosine similarity of matching rows (a zero row counts as 0)."""
    a, b = x.astype(np.float64), reference.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(np.mean(np.sum(a * b, axis=1) / norms))


def golden_original(image: Any, input_size: tuple[int, int]) -> np.ndarray:
    """A golden image as it will be stored: RGB uint8 as decoded, its long side capped at `ORIGINAL_MAX_SIDE` times
    the model's (a Pillow Lanczos downscale; smaller images are kept as they are)."""
    from PIL import Image

    from .preprocess import to_rgb_uint8

    rgb = to_rgb_uint8(image, what="golden image")
    cap = int(ORIGINAL_MAX_SIDE * max(input_size))
    h, w = rgb.shape[:2]
    if max(h, w) <= cap:
        return np.ascontiguousarray(rgb)
    scale = cap / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def choose_golden(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded draw of `size` of `count` images, in order."""
    k = min(size, count)
    return np.sort(np.random.default_rng(seed).choice(count, size=k, replace=False))


def write_self_test(
    bundle_dir: str | Path,
    reference: np.ndarray,
    artifact: np.ndarray,
    precision: str,
    inference_precision: str | None,
    seed: int = 0,
    *,
    images: np.ndarray | None = None,
    texts: list[str] | None = None,
    embedding: bool = False,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    originals: list[np.ndarray] | None = None,
    labels: list[str] | None = None,
    fp16_arithmetic: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the golden inputs and reference logits into a bundle being written; return its manifest section.
    The golden inputs are `images` (prepared, at model size) with their `originals` (as they arrived: stored as
    PNG files, the device runs them through its whole `predict` path), or, for a text bundle, `texts` (a JSON list
    the device tokenises with the bundle's tokenizer). `features`: an extensible bundle's (torch, artifact) features
    of the golden inputs, checked by mean cosine. `labels`: the names torch gave them, so a label renamed in the
    manifest fails the self-test. `images` are kept at model size too, for runtimes older than the originals.
    `fp16_arithmetic`: an fp16 bundle's golden outputs from torch computing in fp16 arithmetic; the tolerance then
    covers what that reference did too (`FP16_ARITHMETIC_FACTOR`), and the manifest records it."""
    import json

    from PIL import Image

    root = Path(bundle_dir) / SELF_TEST_DIR
    root.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if texts is not None:
        (root / "texts.json").write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
        extra["texts"] = f"{SELF_TEST_DIR}/texts.json"
    if images is not None:
        np.save(root / "images.npy", np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
        extra["images"] = f"{SELF_TEST_DIR}/images.npy"
    if originals is not None:
        (root / "golden").mkdir(exist_ok=True)
        names = [f"{SELF_TEST_DIR}/golden/{i:03d}.png" for i in range(len(originals))]
        for name, image in zip(names, originals):
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(Path(bundle_dir) / name)
        extra["originals"] = names
    if labels is not None:
        extra["labels"] = list(labels)
    np.save(root / "reference_logits.npy", np.ascontiguousarray(reference, dtype=np.float32), allow_pickle=False)
    m = measure(artifact, reference, embedding=embedding)
    flips = 0.0 if precision != "int8" else 1.0 / len(reference)  # int8 may flip one near-tie more than it did here
    min_agreement, max_rel_err = m["agreement"] - flips, max(REL_TOLERANCE_FACTOR * m["rel_err"], MIN_REL_TOLERANCE[precision])
    at_export: dict[str, Any] = {**{k: round(v, 8) for k, v in m.items()}, "inference_precision": inference_precision}
    if precision == "fp16" and fp16_arithmetic is not None:
        f = measure(fp16_arithmetic, reference, embedding=embedding)
        min_agreement, max_rel_err = min(min_agreement, f["agreement"]), max(max_rel_err, FP16_ARITHMETIC_FACTOR * f["rel_err"])
        at_export["fp16_arithmetic"] = {k: round(v, 8) for k, v in f.items()}
    if features is not None:
        np.save(root / "reference_features.npy", np.ascontiguousarray(features[0], dtype=np.float32), allow_pickle=False)
        cos = mean_cosine(features[1], features[0])
        floor = 1.0 - max(REL_TOLERANCE_FACTOR * (1.0 - cos), MIN_COSINE_SLACK[precision])
        extra["features"] = {"reference": f"{SELF_TEST_DIR}/reference_features.npy", "at_export": round(cos, 8), "min_mean_cosine": round(floor, 8)}
    return {
        "reference": f"{SELF_TEST_DIR}/reference_logits.npy",
        "reference_from": "torch fp32",
        "count": int(len(reference)),
        "seed": seed,
        "at_export": at_export,
        "tolerance": {"min_agreement": round(max(0.0, min_agreement), 6), "max_rel_err": float(f"{max_rel_err:.3g}")},
        **extra,
    }


def _section(predictor: Predictor) -> dict[str, Any] | None:
    section = predictor.manifest.self_test
    if section is None:
        return None
    where = f"{predictor.bundle.path}: manifest field 'self_test'"
    if not isinstance(section, dict):
        raise BundleError(f"{where} must be an object")
    tol = section.get("tolerance")
    if not isinstance(tol, dict) or not all(
        isinstance(tol.get(k), (int, float)) and not isinstance(tol.get(k), bool) for k in ("min_agreement", "max_rel_err")
    ):
        raise BundleError(f"{where}.tolerance must hold numbers min_agreement and max_rel_err")
    _listed(predictor, section.get("reference"), "self_test.reference")  # the golden inputs: checked by the reader
    return section


def _listed(predictor: Predictor, rel: Any, field: str) -> str:
    """`rel` if it is a safe relative path among the bundle's checksummed files; else a BundleError naming `field`."""
    where = f"{predictor.bundle.path}: manifest field '{field}'"
    if not isinstance(rel, str):
        raise BundleError(f"{where} must be a file path")
    check_relative_path(rel)
    if rel not in {f.path for f in predictor.manifest.files}:
        raise BundleError(f"{where}: {rel} is not among the bundle's checksummed files")
    return rel


def _load(predictor: Predictor, rel: str) -> np.ndarray:
    try:
        return np.load(predictor.bundle.file(rel), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{predictor.bundle.path}: self-test file {rel} cannot be read: {exc}") from None


def _golden_inputs(predictor: Predictor, section: dict[str, Any]) -> Any:
    """The golden inputs, ready for the model, as this device makes them (`runtimes.modality`: images through its
    own decode, resize and crop; texts through the bundle's tokenizer)."""
    return predictor.input.golden(section, lambda rel, field: _listed(predictor, rel, field))


def _longest_text_problem(predictor: Predictor) -> str | None:
    """A text bundle must read texts as long as its own token limit: one text of exactly `max_tokens` tokens is run
    (a limit beyond the encoder's positions fails here, not on the user's first long text)."""
    limit = predictor.manifest.text.max_tokens if predictor.manifest.text is not None else None
    if limit is None:
        return None
    try:
        predictor.run_chunked(predictor.input.prepare(predictor.input.synthetic(1, tokens=limit)))
    except EdgeTransferError as exc:
        return f"a text of {limit} tokens (the bundle's limit) fails on this device: {str(exc).splitlines()[0][:200]}"
    return None


def run_self_test(predictor: Predictor) -> SelfTestResult:
    """Run the bundle's golden images through `predictor` and compare with the stored torch reference."""
    base: dict[str, Any] = {
        "backend": predictor.backend_name,
        "device": predictor.device,
        "inference_precision": predictor.inference_precision,
        "unit": predictor.input.unit,
        "output": "embedding" if predictor.is_embedding else "logit",
    }
    section = _section(predictor)
    if section is None:
        return SelfTestResult(
            "missing", **base, reason="this bundle has no self-test data (exported before self-tests existed); re-export it to get one"
        )
    images, reference = _golden_inputs(predictor, section), _load(predictor, section["reference"])
    width = predictor.manifest.output_width
    if reference.shape != (len(images), width):
        raise BundleError(f"{predictor.bundle.path}: self-test reference is {reference.shape}, expected ({len(images)}, {width})")
    features = section.get("features") if predictor.is_extensible else None
    cos = min_cos = None
    if isinstance(features, dict):
        ref_features = _load(predictor, _listed(predictor, features.get("reference"), "self_test.features.reference"))
        logits, got = predictor.logits_and_features(images)
        if ref_features.shape != got.shape:
            raise BundleError(f"{predictor.bundle.path}: self-test reference features are {ref_features.shape}, the model gives {got.shape}")
        cos, min_cos = mean_cosine(got, ref_features), float(features.get("min_mean_cosine", 1.0))
    else:
        logits = predictor.run_chunked(images)
    m = measure(logits, reference, embedding=predictor.is_embedding)
    tol = section["tolerance"]
    reasons = []
    expected = section.get("labels")
    if expected is not None and not predictor.is_embedding:
        if not isinstance(expected, list) or len(expected) != len(images) or not all(isinstance(x, str) for x in expected):
            raise BundleError(f"{predictor.bundle.path}: manifest field 'self_test.labels' must list one label name per golden image")
        named = [predictor.labels[i] for i in logits.argmax(1)]
        by_name = float(np.mean([a == b for a, b in zip(named, expected)]))
        if by_name < m["agreement"] - 1e-9:
            reasons.append("the labels' names differ from those validated at export (was the manifest's 'labels' edited?)")
        m["agreement"] = min(m["agreement"], by_name)
    if cos is not None and min_cos is not None and cos < min_cos - 1e-12:
        reasons.append("features drifted below their cosine tolerance")
    if m["agreement"] < tol["min_agreement"] - 1e-9:
        reasons.append(("nearest-neighbour" if predictor.is_embedding else "top-1") + " agreement below tolerance")
    if not m["rel_err"] <= tol["max_rel_err"]:
        reasons.append(("embeddings" if predictor.is_embedding else "logits") + " drifted beyond tolerance")
    if predictor.modality == "text" and (problem := _longest_text_problem(predictor)) is not None:
        reasons.append(problem)
    return SelfTestResult(
        "fail" if reasons else "pass",
        **base,
        count=len(images),
        agreement=m["agreement"],
        max_abs_diff=m["max_abs_diff"],
        rel_err=m["rel_err"],
        min_agreement=float(tol["min_agreement"]),
        max_rel_err=float(tol["max_rel_err"]),
        at_export=section.get("at_export"),
        reason="; ".join(reasons) or None,
        features_cosine=cos,
        min_features_cosine=min_cos,
    )
