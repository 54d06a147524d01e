"""TensorRT backend: builds (or takes from the cache) the engine for this device, checks it against the bundle,
runs it from pinned host buffers on a CUDA stream. Needs numpy, tensorrt and cuda-python; never torch.

TensorRT API used: `Runtime`, `Runtime.engine_host_code_allowed` (kept False), `Runtime.deserialize_cuda_engine`,
`Runtime.load_runtime` (the builder's lean runtime for version-compatible plans), `Runtime.DLA_core`,
`ICudaEngine.num_io_tensors/get_tensor_name/get_tensor_mode/get_tensor_dtype/get_tensor_profile_shape`,
`nptype`, `ICudaEngine.create_execution_context`, `IExecutionContext.set_input_shape/get_tensor_shape/
set_tensor_address/execute_async_v3`. CUDA (cuda-python `cudart`): `cudaSetDevice` (on every call),
`cudaStreamCreate/Destroy`, `cudaMallocHost/cudaFreeHost` (pinned staging), `cudaHostAlloc(cudaHostAllocMapped)` +
`cudaHostGetDevicePointer` (zero-copy on integrated GPUs), `cudaMalloc/cudaFree`, `cudaMemcpyAsync`,
`cudaStreamSynchronize`, and with `cuda_graph=True` `cudaStreamBeginCapture/EndCapture`, `cudaGraphInstantiate`,
`cudaGraphLaunch`, `cudaGraphExecDestroy/cudaGraphDestroy`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..engines.tensorrt_build import _import_cudart, _import_tensorrt, build_engine, cuda_check, load_lean_runtime, running_target
from ..engines.tensorrt_engine import BuildSettings, EngineCache, EngineTarget, cache_key, check_buildable, check_compatible
from ..errors import BackendUnavailableError, BundleError, InferenceError, InputError
from ..graph_types import AS_WRITTEN, check_as_written
from ..predictor import Predictor


class _PinnedBuffer:
    """Host memory the GPU reads or writes. Pinned (page-locked) host memory plus a device buffer on a discrete GPU;
    on an integrated GPU (Jetson) one mapped pinned allocation that both sides address, so no copies are needed."""

    def __init__(self, cudart: Any, nbytes: int, dtype: np.dtype, zero_copy: bool) -> None:
        self._cudart, self.zero_copy = cudart, zero_copy
        self.host: Any = None
        self.device: Any = None
        if zero_copy:
            mapped = getattr(cudart, "cudaHostAllocMapped", 2)
            self.host = cuda_check(cudart.cudaHostAlloc(nbytes, mapped), "cudaHostAlloc")
            self.device = cuda_check(cudart.cudaHostGetDevicePointer(self.host, 0), "cudaHostGetDevicePointer")
        else:
            self.host = cuda_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            self.device = cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc")
        raw = (ctypes.c_uint8 * nbytes).from_address(int(self.host))
        self.array: np.ndarray = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8).view(dtype)

    def free(self) -> None:
        if self.device is not None and not self.zero_copy:
            self._cudart.cudaFree(self.device)
        if self.host is not None:
            self._cudart.cudaFreeHost(self.host)
        self.host = self.device = None
        self.array = np.empty(0, np.uint8)  # the pinned memory it viewed is gone


class TensorRTPredictor(Predictor):
    """Runs a TensorRT bundle on an NVIDIA GPU (or a Jetson's DLA, per the bundle's build settings).

    The bundle carries a TensorRT-ready ONNX and its build settings (`model.tensorrt`). On load the engine for this
    device comes from the cache (`cache_dir`, default ~/.cache/edge-transfer/engines) or is built and cached; the
    cached entry's TensorRT version and GPU are checked before it is deserialised (`EngineIncompatibleError` names
    both sides). Input and output are bound by the manifest's names; their dtypes and shapes are read from the
    engine and must match the bundle. Calls are serialised with a lock: one execution context, one stream and one
    set of pinned buffers per predictor; `close()` frees them, and any call after it raises `InferenceError`.
    """

    backend_name = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        device: str | None = None,
        *,
        cache_dir: str | None = None,
        cuda_graph: bool = False,
        gpu: int = 0,
        lean_runtime: str | None = None,
        inference_precision: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(
                f"unknown tensorrt option(s): {', '.join(sorted(options))} (known: cache_dir, cuda_graph, gpu, lean_runtime, inference_precision)"
            )
        check_as_written("tensorrt", self.precision, inference_precision)  # strongly typed: the ONNX's own types
        if (device or "cuda").lower() not in ("cuda", "gpu"):
            raise InputError(f"tensorrt runs on device 'cuda', got {device!r}")
        try:
            self.settings = BuildSettings.from_dict(bundle.manifest.tensorrt or {})
        except InputError as exc:
            raise BundleError(f"{bundle.path}: manifest field 'model.tensorrt': {exc}") from None
        self._profile = self.input.engine_shapes(self.settings.profile, self.settings.tokens)  # (min, opt, max) per input
        self._lock = threading.Lock()
        self._closed = False
        self._buffers: list[_PinnedBuffer] = []
        self._stream: Any = None
        self._graph: tuple[Any, Any] | None = None
        self._in_shapes: dict[str, tuple[int, ...]] = {}  # the shape the context's inputs are set to
        self._cuda_graph = cuda_graph
        self._gpu = int(gpu)
        self._trt = trt = _import_tensorrt()
        self._cudart = cudart = _import_cudart()
        cuda_check(cudart.cudaSetDevice(self._gpu), f"cudaSetDevice({self._gpu})")
        self.target = running_target(self._gpu, trt, cudart)
        self.built_on, self.engine_path, plan = self._engine(cache_dir)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        runtime.engine_host_code_allowed = False  # plans never carry host code here (no embedded lean runtime)
        if self.settings.version_compatible:
            lean = lean_runtime or os.environ.get("EDGE_TRANSFER_TRT_LEAN_RUNTIME")
            runtime = load_lean_runtime(runtime, self.built_on.tensorrt_version, self.target.tensorrt_version, lean)
        if self.settings.dla_core is not None:
            runtime.DLA_core = self.settings.dla_core
        self._runtime = runtime
        # strongly typed: the ONNX's own types; weakly typed (TensorRT 8) int8 builds may also pick fp16 kernels
        self.inference_precision = AS_WRITTEN[self.settings.precision]
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise the engine {self.engine_path} (see the TensorRT messages above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        try:
            self._bind_io()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- loading
    def _engine(self, cache_dir: str | None) -> tuple[EngineTarget, Any, bytes]:
        """(where the engine was built, where it came from, the plan): a prebuilt engine bundle after checking where it
        was built, or this device's cache entry for the bundle's ONNX, built first if absent or invalid."""
        if self.manifest.format == "tensorrt-engine":
            try:
                built_on = EngineTarget.from_dict(self.manifest.built_on or {})
            except InputError as exc:
                raise BundleError(f"{self.bundle.path}: manifest field 'model.built_on': {exc}") from None
            check_compatible(built_on, self.settings, self.target)
            plan = self.bundle.verified_bytes(self.manifest.entrypoint)
            return built_on, self.bundle.entrypoint, plan if plan is not None else self.bundle.entrypoint.read_bytes()
        check_buildable(self.settings, self.target)
        cache = EngineCache(cache_dir)
        model_sha = next(f.sha256 for f in self.manifest.files if f.path == self.manifest.entrypoint)
        key = cache_key(model_sha, self.target, self.settings)
        plan = cache.load(key, self.target, self.settings)
        if plan is None:
            cache.ensure()  # the builder writes the timing cache here before the first entry exists
            onnx = self.bundle.verified_bytes(self.manifest.entrypoint)  # the bytes that were hashed, not the file again
            plan, facts = build_engine(
                self.bundle.entrypoint if onnx is None else onnx,
                self.settings,
                shapes=self._profile,
                timing_cache=cache.timing_cache(self.target),
                trt=self._trt,
            )
            cache.store(key, plan, self.target, self.settings, extra=facts)
        return self.target, cache.entry(key), plan

    def _bind_io(self) -> None:
        """Bind every input and the output by the manifest's names; check dtypes and shapes against the bundle; allocate."""
        trt, engine, cudart = self._trt, self.engine, self._cudart
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {n: engine.get_tensor_mode(n) for n in names}
        self._out = self.outputs[0].name
        wanted = [(spec.name, trt.TensorIOMode.INPUT, "input") for spec in self.inputs] + [(self._out, trt.TensorIOMode.OUTPUT, "output")]
        for name, mode, what in wanted:
            if modes.get(name) != mode:
                raise BundleError(
                    f"{self.bundle.path}: the manifest's {what} '{name}' is not an {what} of the engine (engine I/O: {', '.join(names)})"
                )
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        if self._out_dtype.kind != "f":
            raise BundleError(f"{self.bundle.path}: engine output '{self._out}' is {self._out_dtype}, expected floating-point logits")
        self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        zero_copy = self.target.integrated
        self._in_bufs: dict[str, _PinnedBuffer] = {}
        for spec in self.inputs:
            name, dtype = spec.name, np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
            if dtype != np.dtype(spec.dtype):
                raise BundleError(f"{self.bundle.path}: engine input '{name}' is {dtype}, the manifest says {spec.dtype}")
            lo, _, hi = (tuple(int(d) for d in shape) for shape in engine.get_tensor_profile_shape(name, 0))
            want = self._profile[name][2]
            if len(hi) != len(want) or hi[1:] != want[1:]:
                raise BundleError(f"{self.bundle.path}: engine input '{name}' takes shape {hi}, the bundle's profile says {want}")
            self._min_batch, self._max_batch = lo[0], hi[0]
            if not self.context.set_input_shape(name, hi):
                raise BundleError(f"{self.bundle.path}: the engine refused input shape {hi} for '{name}'")
            self._in_shapes[name] = hi
            self._in_bufs[name] = _PinnedBuffer(cudart, int(np.prod(hi)) * dtype.itemsize, dtype, zero_copy)
            self._buffers.append(self._in_bufs[name])
            self.context.set_tensor_address(name, int(self._in_bufs[name].device))
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self._out))
        self._classes = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
        if self._classes != self.manifest.output_width:
            raise BundleError(
                f"{self.bundle.path}: engine output '{self._out}' has {self._classes} values per input "
                f"(shape {out_shape}), the manifest says {self.manifest.output_width}"
            )
        self._out_buf = _PinnedBuffer(cudart, self._max_batch * self._classes * self._out_dtype.itemsize, self._out_dtype, zero_copy)
        self._buffers.append(self._out_buf)
        self.context.set_tensor_address(self._out, int(self._out_buf.device))
        self._feat_buf: _PinnedBuffer | None = None
        if self.is_extensible:  # every output of an engine must be bound, the features too
            self._bind_features(modes, self._max_batch, zero_copy)

    def _bind_features(self, modes: dict[str, Any], max_batch: int, zero_copy: bool) -> None:
        """Bind an extensible classifier's second output (the features its head reads)."""
        name, dim = self.outputs[1].name, int(self.outputs[1].shape[-1])
        if modes.get(name) != self._trt.TensorIOMode.OUTPUT:
            raise BundleError(f"{self.bundle.path}: the manifest's output '{name}' is not an output of the engine (engine I/O: {', '.join(modes)})")
        dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
        width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if dtype.kind != "f" or width != dim:
            raise BundleError(f"{self.bundle.path}: engine output '{name}' is {dtype} {shape}, the manifest says float (N, {dim})")
        self._feat_dtype, self._feat_width = dtype, width
        self._feat_buf = _PinnedBuffer(self._cudart, max_batch * width * dtype.itemsize, dtype, zero_copy)
        self._buffers.append(self._feat_buf)
        self.context.set_tensor_address(name, int(self._feat_buf.device))

    # ---------------------------------------------------------------- metadata
    @property
    def device(self) -> str:
        settings = getattr(self, "settings", None)
        return "dla" if settings is not None and settings.dla_core is not None else "cuda"

    def write_engine_bundle(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> Bundle:
        """A bundle carrying the engine this predictor runs, for identical devices (same TensorRT, same GPU model);
        written atomically (`runtimes.engines.tensorrt_engine.write_engine_bundle`)."""
        from pathlib import Path

        from ..engines.tensorrt_engine import write_engine_bundle

        engine = Path(self.engine_path)
        plan = (engine / "engine.plan" if engine.is_dir() else engine).read_bytes()
        return write_engine_bundle(self.bundle, plan, self.target, out, overwrite=overwrite)

    def describe(self) -> dict[str, Any]:
        return dict(
            super().describe(),
            tensorrt=self.target.to_dict(),
            built_on=self.built_on.to_dict(),
            profile=self.settings.profile.to_dict(),
            **({"tokens": self.settings.tokens.to_dict()} if self.settings.tokens is not None else {}),
            engine=str(self.engine_path),
            cuda_graph=self._cuda_graph,
            output_dtype=str(self._out_dtype),
            zero_copy=self.target.integrated,
        )

    # ---------------------------------------------------------------- running
    def check_batch(self, batch: Any) -> Any:
        batch = super().check_batch(batch)
        lo, hi = getattr(self, "_min_batch", self.settings.profile.min), getattr(self, "_max_batch", self.settings.profile.max)
        if not lo <= batch.shape[0] <= hi:
            raise InputError(f"input '{self.inputs[0].name}': batch {batch.shape[0]} is outside the engine's profile ({lo}-{hi})")
        return batch

    def run_chunked(self, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
        return super().run_chunked(batch, chunk=min(chunk, self.settings.profile.max))

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._run_outputs(batch)[0]

    def _run_with_features_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self._run_outputs(batch)
        assert feats is not None  # bound for every extensible bundle
        return logits, feats

    def _copy_back(self, buf: _PinnedBuffer, nbytes: int) -> None:
        if not buf.zero_copy:
            cudart = self._cudart
            cuda_check(
                cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                "cudaMemcpyAsync",
            )

    def _run_outputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        cudart = self._cudart
        n = len(batch)
        feeds = self.input.feeds(batch)  # every input by name (an image batch, or a text's ids and mask)
        with self._lock:
            if self._closed:
                raise InferenceError(f"{self.bundle.path}: this TensorRT predictor is closed")
            cuda_check(cudart.cudaSetDevice(self._gpu), f"cudaSetDevice({self._gpu})")  # per call: threads may differ
            for name, arr in feeds.items():
                if arr.shape != self._in_shapes[name]:
                    if not self.context.set_input_shape(name, arr.shape):
                        raise InferenceError(f"TensorRT refused input shape {arr.shape} for '{name}'")
                    self._in_shapes[name] = arr.shape
                    self._drop_graph()  # a graph replays the shapes it was captured with
            for name, arr in feeds.items():
                buf = self._in_bufs[name]
                buf.array[: arr.size] = arr.reshape(-1)
                if not buf.zero_copy:
                    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                    cuda_check(cudart.cudaMemcpyAsync(buf.device, buf.host, arr.nbytes, kind, self._stream), "cudaMemcpyAsync")
            out_items = n * self._classes
            self._execute()
            self._copy_back(self._out_buf, out_items * self._out_dtype.itemsize)
            feat_buf, feats = self._feat_buf, None
            if feat_buf is not None:
                self._copy_back(feat_buf, n * self._feat_width * self._feat_dtype.itemsize)
            cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            out = self._out_buf.array[:out_items].astype(np.float32)  # a copy: the buffer is reused by the next call
            if feat_buf is not None:
                feats = feat_buf.array[: n * self._feat_width].astype(np.float32).reshape(n, self._feat_width)
        return out.reshape(n, self._classes), feats

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self._stream)):
            raise InferenceError("TensorRT execute_async_v3 failed (see the TensorRT messages above)")

    def _execute(self) -> None:
        """Run the context on the stream: directly, or through a CUDA graph of the current shape."""
        if not self._cuda_graph:
            self._enqueue()
            return
        cudart = self._cudart
        if self._graph is None:
            # TensorRT's rule: after a shape change, one ordinary enqueue before capturing (it may set up resources)
            self._enqueue()
            cuda_check(
                cudart.cudaStreamBeginCapture(self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture"
            )
            self._enqueue()
            graph = cuda_check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            self._graph = (graph, cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        cuda_check(cudart.cudaGraphLaunch(self._graph[1], self._stream), "cudaGraphLaunch")

    def _drop_graph(self) -> None:
        if self._graph is not None:
            graph, graph_exec = self._graph
            self._graph = None
            self._cudart.cudaGraphExecDestroy(graph_exec)
            self._cudart.cudaGraphDestroy(graph)

    def native_call(self) -> Callable[[np.ndarray], Any]:
        def plain(batch: np.ndarray) -> np.ndarray:
            return self._run_impl(batch)  # the copies and the launch are the plain TensorRT call here

        return plain

    def close(self) -> None:
        """Free the graph, buffers and stream; idempotent, and safe while other threads call `run`."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if self._closed:
                return
            self._closed = True
            cudart = getattr(self, "_cudart", None)
            if cudart is None:
                return
            if self._stream is not None:
                cudart.cudaStreamSynchronize(self._stream)
            self._drop_graph()
            for buf in self._buffers:
                buf.free()
            self._buffers.clear()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None
            self.context = self.engine = None
