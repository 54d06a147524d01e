"""TensorRT backend: builds (or takes from the cache) the engine for this device, checks it, runs it with
cuda-python device buffers on a CUDA stream. Needs numpy, tensorrt and cuda-python; never torch.

TensorRT API used: `Runtime`, `Runtime.engine_host_code_allowed` (kept False), `Runtime.deserialize_cuda_engine`,
`ICudaEngine.create_execution_context`, `ICudaEngine.get_tensor_name/get_tensor_mode/num_io_tensors`,
`IExecutionContext.set_input_shape`, `set_tensor_address`, `execute_async_v3`,
`Runtime.load_runtime` (lean runtime for version-compatible plans), `Runtime.DLA_core`. CUDA (cuda-python
`cudart`): `cudaSetDevice`, `cudaGetDeviceProperties`, `cudaStreamCreate`, `cudaMalloc`, `cudaMemcpyAsync`,
`cudaStreamSynchronize`, `cudaFree`, and, with `cuda_graph=True`, `cudaStreamBeginCapture` / `cudaStreamEndCapture` / `cudaGraphInstantiate` / `cudaGraphLaunch`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np

from ..bundle import Bundle
from ..errors import BackendUnavailableError, InputError
from ..predictor import Predictor
from ..tensorrt_engine import (BuildSettings, EngineCache, EngineTarget, build_engine, cache_key, check_compatible, cuda_check,
                               running_target, _import_cudart, _import_tensorrt)


class TensorRTPredictor(Predictor):
    """Runs a TensorRT bundle on an NVIDIA GPU (or a Jetson's DLA, per the bundle's build settings).

    The bundle carries a TensorRT-ready ONNX and its build settings (`model.tensorrt`). On load the engine for this
    device comes from the cache (`cache_dir`, default ~/.cache/edge-transfer/engines) or is built and cached; the
    cached entry's TensorRT version and GPU are checked before it is deserialised (`EngineIncompatibleError` names
    both sides). Calls are serialised with a lock: one execution context and one set of buffers per predictor.
    """

    backend_name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str | None = None, *, cache_dir: str | None = None, cuda_graph: bool = False,
                 gpu: int = 0, lean_runtime: str | None = None, log: Callable[[str], None] | None = None, **options: Any) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(f"unknown tensorrt option(s): {', '.join(sorted(options))} (known: cache_dir, cuda_graph, gpu, lean_runtime)")
        if (device or "cuda").lower() not in ("cuda", "gpu"):
            raise InputError(f"tensorrt runs on device 'cuda', got {device!r}")
        raw = bundle.manifest.raw["model"].get("tensorrt")
        if not isinstance(raw, dict):
            raise InputError(f"{bundle.path}: manifest field 'model.tensorrt' (the engine build settings) is missing")
        self.settings = BuildSettings.from_dict(raw)
        self._log = log or (lambda msg: None)
        trt = _import_tensorrt()
        self._cudart = cudart = _import_cudart()
        cuda_check(cudart.cudaSetDevice(gpu))
        self.target = running_target(gpu)
        self.engine_path, plan = self._engine(cache_dir)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        runtime.engine_host_code_allowed = False  # plans never carry host code here (no embedded lean runtime)
        if self.settings.version_compatible:
            # built with EXCLUDE_LEAN_RUNTIME: the lean runtime comes from this device's TensorRT installation
            lean = lean_runtime or os.environ.get("EDGE_TRANSFER_TRT_LEAN_RUNTIME")
            if not lean:
                raise InputError("a version-compatible engine needs TensorRT's lean runtime library: pass lean_runtime= "
                                 "or set EDGE_TRANSFER_TRT_LEAN_RUNTIME (e.g. /usr/lib/aarch64-linux-gnu/libnvinfer_lean.so.10)")
            runtime = runtime.load_runtime(lean)
        if self.settings.dla_core is not None:
            runtime.DLA_core = self.settings.dla_core
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise the engine {self.engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._in, self._out = inputs[0], outputs[0]
        self._classes = len(self.labels)
        self._stream = cuda_check(cudart.cudaStreamCreate())
        profile = self.settings.profile
        h, w = self.preprocessing.input_size
        self._d_in = cuda_check(cudart.cudaMalloc(profile.max * h * w * 3))
        self._d_out = cuda_check(cudart.cudaMalloc(profile.max * self._classes * 4))
        self.context.set_tensor_address(self._in, int(self._d_in))
        self.context.set_tensor_address(self._out, int(self._d_out))
        self._cuda_graph = cuda_graph
        self._graphs: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _engine(self, cache_dir: str | None) -> tuple[Any, bytes]:
        """(where the engine came from, the plan): a prebuilt engine bundle after checking where it was built, or
        this device's cache entry for the bundle's ONNX, built first if absent or invalid."""
        if self.manifest.format == "tensorrt-engine":
            built = self.manifest.raw["model"].get("built_on")
            if not isinstance(built, dict):
                raise InputError(f"{self.bundle.path}: manifest field 'model.built_on' (TensorRT version and GPU) is missing")
            check_compatible(EngineTarget.from_dict(built), self.settings, self.target)
            return self.bundle.entrypoint, self.bundle.entrypoint.read_bytes()
        cache = EngineCache(cache_dir)
        model_sha = next(f.sha256 for f in self.manifest.files if f.path == self.manifest.entrypoint)
        key = cache_key(model_sha, self.target, self.settings)
        plan = cache.load(key, self.target, self.settings)
        if plan is None:
            plan, facts = build_engine(self.bundle.entrypoint, self.settings, input_name=self.inputs[0].name,
                                       input_hw=self.preprocessing.input_size, timing_cache=cache.root / "timing.cache",
                                       log=self._log)
            cache.store(key, plan, self.target, self.settings, extra=facts)
        return cache.entry(key), plan

    @property
    def device(self) -> str:
        return "dla" if self.settings.dla_core is not None else "cuda"

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), tensorrt=self.target.to_dict(), profile=self.settings.profile.to_dict(),
                    engine=str(self.engine_path), cuda_graph=self._cuda_graph)

    def check_batch(self, batch: Any) -> np.ndarray:
        batch = super().check_batch(batch)
        if not self.settings.profile.contains(batch.shape[0]):
            p = self.settings.profile
            raise InputError(f"input '{self.inputs[0].name}': batch {batch.shape[0]} is outside the engine's profile ({p.min}-{p.max})")
        return batch

    def run_chunked(self, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
        return super().run_chunked(batch, chunk=min(chunk, self.settings.profile.max))

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        n = batch.shape[0]
        out = np.empty((n, self._classes), dtype=np.float32)
        with self._lock:
            self.context.set_input_shape(self._in, batch.shape)
            cuda_check(cudart.cudaMemcpyAsync(self._d_in, batch.ctypes.data, batch.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            self._execute(n)
            cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
            cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return out

    def _execute(self, n: int) -> None:
        if not self._cuda_graph:
            if not self.context.execute_async_v3(int(self._stream)):
                raise BackendUnavailableError("TensorRT execute_async_v3 failed")
            return
        cudart = self._cudart
        graph_exec = self._graphs.get(n)
        if graph_exec is None:  # capture once per batch size, after one ordinary run (TensorRT's advice)
            self.context.execute_async_v3(int(self._stream))
            cuda_check(cudart.cudaStreamBeginCapture(self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self.context.execute_async_v3(int(self._stream))
            graph = cuda_check(cudart.cudaStreamEndCapture(self._stream))
            graph_exec = self._graphs[n] = cuda_check(cudart.cudaGraphInstantiate(graph, 0))
        cuda_check(cudart.cudaGraphLaunch(graph_exec, self._stream))

    def native_call(self) -> Callable[[np.ndarray], Any]:
        def plain(batch: np.ndarray) -> np.ndarray:
            return self._run_impl(batch)  # the copies and the launch are the plain TensorRT call here

        return plain

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr in (getattr(self, "_d_in", None), getattr(self, "_d_out", None)):
            if ptr is not None:
                cudart.cudaFree(ptr)
        self._d_in = self._d_out = None
        self.context = self.engine = None
