"""ONNX Runtime backend. Imported lazily by the registry; needs numpy and onnxruntime only."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..cpu import cpu_features
from ..errors import BackendUnavailableError, BundleError, InferenceError, InputError
from ..fsutil import TEMP_PREFIX, remove_temporary
from ..graph_types import AS_WRITTEN, check_as_written, manifest_dtype
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

    def __init__(
        self,
        bundle: Bundle,
        device: str | None = None,
        *,
        threads: int = 0,
        graph_optimization: str = "all",
        cache_dir: str | None = None,
        inference_precision: str | None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(
                f"unknown onnxruntime option(s): {', '.join(sorted(options))} "
                "(known: threads, graph_optimization, cache_dir, inference_precision, batch_size)"
            )
        check_as_written("onnxruntime", self.precision, inference_precision)
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise InputError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION)}, got {graph_optimization!r}")
        dev = (device or "cpu").lower()
        if dev not in DEVICE_PROVIDERS:
            raise InputError(f"onnxruntime device must be one of {', '.join(DEVICE_PROVIDERS)}, got {device!r}")
        wanted = DEVICE_PROVIDERS[dev]
        available = ort.get_available_providers()
        # The TensorRT EP hands nodes TensorRT cannot run to the next provider: CUDA, so they stay on the GPU
        needed = [wanted] + (["CUDAExecutionProvider"] if dev == "tensorrt" else [])
        missing = [p for p in needed if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(available)}); "
                f"install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
        so.log_severity_level = 3
        batch_dim = self.inputs[0].shape[0]
        if batch_size is not None and isinstance(batch_dim, str):  # the dynamic batch made static: shapes planned once
            so.add_free_dimension_override_by_name(batch_dim, int(batch_size))
        self.loaded_batch = batch_size
        profile_dir = None
        if dev != "cpu":  # one profiled warm-up run tells which provider each node ran on
            profile_dir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}ort-profile-")
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "placement")
        providers: list[Any] = [wanted, "CPUExecutionProvider"]
        if dev == "tensorrt":
            providers = [("TensorrtExecutionProvider", self._tensorrt_options(cache_dir)), "CUDAExecutionProvider", "CPUExecutionProvider"]
        elif dev == "cpu":
            providers = [wanted]
        try:
            self.session = ort.InferenceSession(_model_source(bundle), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument/...: the checksums passed, the model does not load
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{bundle.path}: onnxruntime cannot load {bundle.manifest.entrypoint}: {first}") from None
        used = self.session.get_providers()
        if used[0] != wanted or any(p not in used for p in needed):
            raise BackendUnavailableError(f"onnxruntime could not start {', '.join(needed)} (session uses {used}); not falling back to CPU silently")
        self.providers = used
        self._device = dev
        # ONNX Runtime computes a graph in the types it is written in: it has no automatic bf16 on x86, and its
        # bf16 fast-math GEMM (ARM only) is an opt-in session option we never set
        self.inference_precision = AS_WRITTEN[self.precision]
        if dev == "cpu" and self.precision == "fp16" and not ((cpu := cpu_features()).arm64 and cpu.fp16):
            # its fp16 CPU kernels are Arm's (Armv8.2 fphp); elsewhere it casts an fp16 graph to f32 and computes in f32
            self.inference_precision = "f32"
        if dev == "cpu":
            self._check_int8_target()
        try:
            graph_inputs = {i.name: (manifest_dtype(i.type), tuple(i.shape)) for i in self.session.get_inputs()}
            graph_outputs = {o.name: (manifest_dtype(o.type), tuple(o.shape)) for o in self.session.get_outputs()}
        except UnicodeDecodeError as exc:  # found by tests/fuzz/fuzz_load.py: ORT loads such a graph, then cannot name it
            raise BundleError(
                f"{bundle.path}: {bundle.manifest.entrypoint}: an input or output name or dimension "
                f"in the model is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
        self.check_graph_io(graph_inputs, graph_outputs)
        self._output_name = self.outputs[0].name  # inputs and outputs by name, never by position
        self.placement: dict[str, int] | None = None
        if profile_dir is not None:
            try:
                self.session.run([self._output_name], self.input.feeds(self.input.zeros(self.max_batch or 1)))
                self.placement = placement_from_profile(self.session.end_profiling())
            finally:
                remove_temporary(profile_dir)

    def _tensorrt_options(self, cache_dir: str | None) -> dict[str, Any]:
        """TensorRT EP settings: engines and timing caches kept on disk (not rebuilt for every session), one
        optimisation profile covering the bundle's batch range (and a text bundle's token range), and the bundle's
        own precision."""
        return tensorrt_ep_options(self.input, self.max_batch, self.precision, cache_dir)

    @property
    def device(self) -> str:
        return self._device

    def describe(self) -> dict[str, Any]:
        info = dict(super().describe(), providers=list(self.providers), onnxruntime=ort.__version__)
        if self.placement is not None:
            info["placement"] = dict(self.placement)  # provider -> nodes it ran (TensorRT subgraphs count as one)
        return info

    def _run_impl(self, batch: Any) -> np.ndarray:
        session = self.session  # close() may drop it meanwhile; a call already holding it finishes
        if session is None:
            raise InferenceError(f"{self.bundle.path}: this predictor is closed")
        try:
            (out,) = session.run([self._output_name], self.input.feeds(batch))
        except Exception as exc:  # onnxruntime's own exception types (Fail, RuntimeException, ...)
            raise InferenceError(f"{self.bundle.path}: onnxruntime failed on a batch of {len(batch)}: {exc}") from None
        return np.asarray(out, dtype=np.float32)

    def _run_with_features_impl(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        session = self.session
        if session is None:
            raise InferenceError(f"{self.bundle.path}: this predictor is closed")
        try:
            logits, feats = session.run([self._output_name, self.outputs[1].name], self.input.feeds(batch))
        except Exception as exc:  # onnxruntime's own exception types
            raise InferenceError(f"{self.bundle.path}: onnxruntime failed on a batch of {len(batch)}: {exc}") from None
        return np.asarray(logits, dtype=np.float32), np.asarray(feats, dtype=np.float32)

    def native_call(self) -> Callable[[Any], Any]:
        session, outputs, feeds = self.session, [self._output_name], self.input.feeds
        return lambda batch: session.run(outputs, feeds(batch))

    def close(self) -> None:
        """Release the session; later calls raise `InferenceError` (calls already running finish)."""
        self.session = None


def _model_source(bundle: Bundle) -> Any:
    """The verified bytes of the model (what was hashed is what runs), or its path when it keeps tensors in external
    files (ONNX Runtime resolves those relative to the model's path) or the bundle was opened unverified."""
    from ..onnx_refs import external_data_locations

    data = bundle.verified_bytes(bundle.manifest.entrypoint)
    if data is None or external_data_locations(bundle.entrypoint, data):
        return str(bundle.entrypoint)
    return data


def placement_from_profile(profile_path: str) -> dict[str, int]:
    """provider -> number of graph nodes it ran, from an ONNX Runtime profile (`InferenceSession.end_profiling()`)."""
    try:
        with open(profile_path, encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, ValueError):
        return {}
    nodes: dict[str, str] = {}
    for e in events if isinstance(events, list) else []:
        if not isinstance(e, dict):
            continue
        args = e.get("args") or {}
        if e.get("cat") == "Node" and isinstance(args, dict) and "provider" in args:
            nodes[str(e.get("name", "")).rsplit("_kernel_time", 1)[0]] = str(args["provider"])
    counts: dict[str, int] = {}
    for provider in nodes.values():
        counts[provider] = counts.get(provider, 0) + 1
    return counts


def tensorrt_ep_options(reader: Any, max_batch: int | None, precision: str, cache_dir: str | None) -> dict[str, Any]:
    """The TensorRT execution provider's options for a bundle read by `reader` (`runtimes.modality.InputReader`):
    its inputs' (min, opt, max) shapes as `InputReader.engine_shapes` gives them to the TensorRT backend."""
    from ..engines.tensorrt_engine import default_cache_dir
    from ..engines.tensorrt_profile import DEFAULT_MAX_BATCH, BatchProfile, derive_token_profile

    root = os.path.join(cache_dir, "ort-tensorrt") if cache_dir else str(default_cache_dir().parent / "ort-tensorrt")
    os.makedirs(root, exist_ok=True)
    lo, hi = (max_batch, max_batch) if max_batch else (1, DEFAULT_MAX_BATCH)
    tokens = derive_token_profile(reader.config.max_tokens) if reader.modality == "text" else None
    shapes = reader.engine_shapes(BatchProfile(lo, lo, hi), tokens)

    def spec(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in s[i])}" for name, s in shapes.items())

    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": root,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": root,
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",
        "trt_profile_min_shapes": spec(0),
        "trt_profile_opt_shapes": spec(1),
        "trt_profile_max_shapes": spec(2),
    }
