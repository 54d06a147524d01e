"""edge-transfer: transfer learning for edge devices (host side).

    import edge_transfer as et
    run = et.train("digits", out="runs/digits", strategy="linear-probe")   # or config=et.TrainConfig(...)
    q = et.qat(run.path, epochs=3)                       # quantisation-aware fine-tuning into runs/digits/qat
    result = et.export(run.path, out="bundles/digits-onnx")               # or options=et.ExportOptions(...)
    predictor = et.load("bundles/digits-onnx")          # = runtimes.load, no torch needed
    results = et.bench("bundles/digits-onnx", batches=[1, 8])   # = runtimes.bench.bench_bundle, no torch needed

Importing this package does not import torch; the heavy imports happen inside the calls that need them.
"""

from __future__ import annotations

from typing import Any

from converters.options import ExportOptions, QuantizationOptions, TensorRTOptions
from runtimes import __version__ as __version__  # one home: pyproject.toml
from runtimes import load, read_manifest
from runtimes.bench import bench_bundle as bench
from runtimes.errors import (
    BackendUnavailableError,
    BundleError,
    CheckpointError,
    DatasetError,
    EdgeTransferError,
    EngineIncompatibleError,
    InputError,
    IntegrityError,
    ValidationFailed,
)

from .config import QatConfig, TrainConfig

_LAZY = {"train": "api", "qat": "api", "export": "api", "demo": "demo", "create_backbone": "sources", "load_run": "sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edge_transfer' has no attribute {name!r}")


__all__ = [
    "load",
    "read_manifest",
    "bench",
    "train",
    "qat",
    "export",
    "demo",
    "create_backbone",
    "load_run",
    "TrainConfig",
    "QatConfig",
    "ExportOptions",
    "QuantizationOptions",
    "TensorRTOptions",
    "EdgeTransferError",
    "InputError",
    "BundleError",
    "IntegrityError",
    "BackendUnavailableError",
    "EngineIncompatibleError",
    "ValidationFailed",
    "DatasetError",
    "CheckpointError",
]
