"""Backend registry with lazy imports: a backend module is imported only when a bundle needs it."""

from __future__ import annotations

import importlib
from typing import Any

from ..bundle import Bundle
from ..errors import BackendUnavailableError, BundleError, install_hint
from ..predictor import Predictor

# backend name -> (module, class, the Python package it needs, the pip extra that installs it)
_REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("runtimes.backends.onnxruntime_backend", "OnnxRuntimePredictor", "onnxruntime", "onnxruntime"),
    "openvino": ("runtimes.backends.openvino_backend", "OpenVinoPredictor", "openvino", "openvino"),
    "tensorrt": ("runtimes.backends.tensorrt_backend", "TensorRTPredictor", "tensorrt", "tensorrt"),
}


def available_backends() -> list[str]:
    """Registered backends whose Python package imports on this machine."""
    names = []
    for name, (_, _, package, _) in _REGISTRY.items():
        try:
            importlib.import_module(package)
        except ImportError:
            continue
        names.append(name)
    return names


def create_predictor(bundle: Bundle, device: str | None = None, **options: Any) -> Predictor:
    name = bundle.manifest.backend
    if name not in _REGISTRY:
        raise BundleError(f"{bundle.path}: backend {name!r} is not supported by this version of runtimes (registered: {', '.join(_REGISTRY)})")
    module, cls, package, extra = _REGISTRY[name]
    if options.get("batch_size") is not None:  # one batch size compiled in (OpenVINO reshape, ORT dimension override)
        from ..predictor import static_batch

        options["batch_size"] = static_batch(bundle, options["batch_size"])
    else:
        options.pop("batch_size", None)
    try:
        importlib.import_module(package)
    except ImportError as exc:
        if name == "tensorrt":  # not installable from PyPI alone: JetPack, or NVIDIA's index
            from ..engines.tensorrt_build import INSTALL_HINT

            how = INSTALL_HINT
        else:
            how = f"install it with: {install_hint(extra)}"
        raise BackendUnavailableError(
            f"{bundle.path}: this bundle needs the {name} backend, but '{package}' is not installed here ({exc}); {how}"
        ) from None
    predictor_cls = getattr(importlib.import_module(module), cls)
    return predictor_cls(bundle, device=device, **options)
