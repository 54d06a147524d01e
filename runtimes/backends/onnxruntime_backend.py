"""ONNX Runtime backend. Imported lazily by the registry; needs numpy and onnxruntime only."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..errors import BackendUnavailableError, InputError
from ..predictor import Predictor

# runtimes device name -> ONNX Runtime execution provider
DEVICE_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# "disabled" runs a QDQ graph as written (quantise/dequantise in float, no fused int8 kernels): the reference
# semantics of the graph, which is how a TensorRT-ready int8 ONNX is checked on a machine without TensorRT.
GRAPH_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}


class OnnxRuntimePredictor(Predictor):
    """Runs an ONNX bundle with an `onnxruntime.InferenceSession`.

    device: "cpu" (default), "cuda" or "tensorrt". The providers actually in use are checked after the session is
    created: asking for a GPU provider that is absent raises `BackendUnavailableError`, never a silent CPU fallback.
    threads: intra-op threads (0 = ONNX Runtime's default). graph_optimization: "all" (default), "basic" or
    "disabled". Calls are concurrent: `InferenceSession.run` is
    thread-safe, so several threads may call `run`/`predict` at once.
    """

    backend_name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str | None = None, *, threads: int = 0, graph_optimization: str = "all",
                 **options: Any) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(f"unknown onnxruntime option(s): {', '.join(sorted(options))} (known: threads, graph_optimization)")
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise InputError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION)}, got {graph_optimization!r}")
        dev = (device or "cpu").lower()
        if dev not in DEVICE_PROVIDERS:
            raise InputError(f"onnxruntime device must be one of {', '.join(DEVICE_PROVIDERS)}, got {device!r}")
        wanted = DEVICE_PROVIDERS[dev]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"onnxruntime here has no {wanted} (available: {', '.join(ort.get_available_providers())}); "
                f"install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
        so.log_severity_level = 3
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(bundle.entrypoint), sess_options=so, providers=providers)
        used = self.session.get_providers()
        if used[0] != wanted:
            raise BackendUnavailableError(f"onnxruntime could not start {wanted} (session uses {used}); not falling back to CPU silently")
        self.providers = used
        self._device = dev
        self._input_name = self.session.get_inputs()[0].name
        self._output_name = self.session.get_outputs()[0].name

    @property
    def device(self) -> str:
        return self._device

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), providers=list(self.providers), onnxruntime=ort.__version__)

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self._output_name], {self._input_name: batch})
        return np.asarray(out, dtype=np.float32)

    def native_call(self) -> Callable[[np.ndarray], Any]:
        session, outputs, name = self.session, [self._output_name], self._input_name
        return lambda batch: session.run(outputs, {name: batch})
