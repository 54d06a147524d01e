"""Export a torch classifier to a validated bundle.

Flow: export the graph into a hidden temp directory, stage a manifest, load the staged bundle through
`runtimes.load` (checksums and all, as the device will), compare it with the torch reference on held-out data,
record the result in the manifest, and publish the bundle atomically. A failed validation publishes nothing unless
the caller explicitly allows it (then the manifest says `passed: false`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

import runtimes
from runtimes.bundle import Bundle, BundleWriter
from runtimes.errors import InputError, ValidationFailed
from runtimes.manifest import SCHEMA_VERSION, utc_now
from runtimes.preprocess import PreprocessConfig

from .onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from .validate import DEFAULT_MIN_AGREEMENT, ReferenceData, compare, format_validation

FORMATS = ("onnx",)


@dataclass
class ExportResult:
    bundle: Bundle
    validation: dict[str, Any]
    seconds: dict[str, float]

    @property
    def size_bytes(self) -> int:
        return self.bundle.size_bytes


def reference_logits(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model = model.eval().to("cpu")
    outs = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size]))).float().numpy())
    return np.concatenate(outs)


def _producer(opset: int) -> dict[str, Any]:
    import onnxruntime

    from . import __version__

    return {
        "edge_transfer": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "backend": {"name": "onnxruntime", "version": onnxruntime.__version__},
        "python": platform.python_version(),
        "host": f"{platform.system()} {platform.machine()}",
    }


def export_bundle(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    preprocessing: PreprocessConfig,
    labels: list[str],
    reference: ReferenceData,
    source: dict[str, Any] | None = None,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    min_agreement: float | None = None,
    allow_failed_validation: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `model` (uint8 NHWC in, logits out) to a bundle at `out`, validated against `reference`."""
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r} (available: {', '.join(FORMATS)})")
    precision = "fp32"
    min_agreement = DEFAULT_MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"min_agreement must be within [0, 1], got {min_agreement}")
    if reference.images.shape[1:3] != preprocessing.input_size:
        raise InputError(f"reference images are {reference.images.shape[1:3]}, the model takes {preprocessing.input_size}")
    say = log or (lambda msg: None)
    seconds: dict[str, float] = {}
    with BundleWriter(out, overwrite=overwrite) as writer:
        t = time.perf_counter()
        info = export_onnx(model, writer.dir / "model.onnx", preprocessing.input_size, opset=opset)
        seconds["export"] = time.perf_counter() - t
        n = len(labels)
        if info["output_shape"][-1] != n:
            raise InputError(f"model outputs {info['output_shape'][-1]} classes but {n} labels were given")
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created": utc_now(),
            "producer": _producer(opset),
            "model": {"backend": "onnxruntime", "format": "onnx", "precision": precision, "entrypoint": "model.onnx", "files": []},
            "inputs": [{"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", *preprocessing.input_size, 3], "layout": "NHWC"}],
            "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", n]}],
            "preprocessing": preprocessing.to_dict(),
            "labels": list(labels),
            "source": dict(source or {}, export=info),
            "validation": None,
            "calibration": None,
        }
        writer.stage(manifest)
        t = time.perf_counter()
        ref = reference_logits(model, reference.images)
        seconds["torch_reference"] = time.perf_counter() - t
        t = time.perf_counter()
        with runtimes.load(writer.dir) as predictor:
            validation = compare(predictor, ref, reference, min_agreement=min_agreement)
        seconds["validate"] = time.perf_counter() - t
        say(format_validation(validation))
        if not validation["passed"]:
            if not allow_failed_validation:
                raise ValidationFailed(
                    f"{format_validation(validation)}; nothing was written to {out} "
                    "(pass --allow-failed-validation to write it anyway, marked as failed)"
                )
            validation["overridden"] = True
            say("WARNING: validation failed; writing the bundle anyway because it was explicitly allowed")
        manifest["validation"] = validation
        bundle = writer.commit(manifest)
    return ExportResult(bundle, validation, {k: round(v, 3) for k, v in seconds.items()})
