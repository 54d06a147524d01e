"""A STAND-IN for `tensorrt` and cuda-python's `cudart`, for CONTROL-FLOW tests only.

TensorRT cannot be installed on this project's machines (its libraries come from NVIDIA's index) and they have no
GPU, so the TensorRT backend's decisions are tested against this fake: when the cache directory is created, what is
done with the timing cache TensorRT refuses, which network flags each TensorRT major gets, when CUDA graphs are
re-captured, how inputs/outputs are bound by name, what `close()` frees, which device each thread selects. It
never stands in for a hardware test: the 'engine' computes a toy function (`toy_logits`), 'device' memory is host
memory, and nothing here says anything about TensorRT's numerics. The hardware tests in `test_tensorrt.py`
(marked `tensorrt`) run the real library and skip with the reason where it is absent.

Stream semantics are kept where the control flow depends on them: work enqueued while a stream is being captured
is recorded, not run, and a graph launch replays it with the shapes and addresses it was captured with.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import threading
import types
from typing import Any

import numpy as np


def toy_features(images: np.ndarray, dim: int) -> np.ndarray:
    """What the fake engine writes to a second output (an extensible bundle's features): per image, 1 - mean/255
    times (j + 1) / dim for feature j."""
    means = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64) / 255.0
    return ((1.0 - means)[:, None] * np.arange(1, dim + 1)[None, :] / dim).astype(np.float32)


def toy_text_logits(input_ids: np.ndarray, attention_mask: np.ndarray, classes: int) -> np.ndarray:
    """What the fake engine computes for a text batch: per text, the mean of its unmasked token ids / 30000 * (c + 1)."""
    mask = attention_mask.astype(np.float64)
    means = (input_ids * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0) / 30000.0
    return (means[:, None] * np.arange(1, classes + 1)[None, :]).astype(np.float32)


def toy_logits(images: np.ndarray, classes: int) -> np.ndarray:
    """What the fake engine computes for a uint8 NHWC batch: per image, mean/255 * (c + 1) for class c."""
    means = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64) / 255.0
    return (means[:, None] * np.arange(1, classes + 1)[None, :]).astype(np.float32)


class FakeCudart:
    """cuda-python's runtime module, with host memory as 'device' memory and recorded stream capture."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)
    cudaHostAllocMapped = 2

    def __init__(self, *, driver: int = 12060, name: str = "Fake GPU", cc: tuple[int, int] = (8, 7), integrated: bool = False) -> None:
        self.driver, self.name, self.cc, self.integrated = driver, name, cc, integrated
        self.memory: dict[int, Any] = {}  # live allocations: address -> ctypes buffer
        self.streams: set[int] = set()
        self.graphs: dict[int, list] = {}
        self.graph_execs: dict[int, list] = {}
        self.capturing: int | None = None
        self.captured: list = []
        self.calls: list[str] = []
        self.set_device_calls: list[tuple[str, int]] = []
        self._ids = itertools.count(1)

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        buf = (ctypes.c_uint8 * max(nbytes, 1))()
        addr = ctypes.addressof(buf)
        self.memory[addr] = buf
        return 0, addr

    def cudaDriverGetVersion(self):
        return 0, self.driver

    def cudaGetDeviceProperties(self, device: int):
        return 0, types.SimpleNamespace(name=self.name.encode(), major=self.cc[0], minor=self.cc[1], integrated=int(self.integrated))

    def cudaSetDevice(self, device: int):
        self.set_device_calls.append((threading.current_thread().name, device))
        return (0,)

    def cudaStreamCreate(self):
        s = next(self._ids)
        self.streams.add(s)
        return 0, s

    def cudaStreamDestroy(self, stream: int):
        self.streams.discard(stream)
        return (0,)

    def cudaMalloc(self, nbytes: int):
        self.calls.append("cudaMalloc")
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes: int):
        self.calls.append("cudaMallocHost")
        return self._alloc(nbytes)

    def cudaHostAlloc(self, nbytes: int, flags: int):
        self.calls.append(f"cudaHostAlloc({flags})")
        return self._alloc(nbytes)

    def cudaHostGetDevicePointer(self, host: int, flags: int):
        return 0, host

    def cudaFree(self, ptr: int):
        self.memory.pop(int(ptr), None)
        return (0,)

    cudaFreeHost = cudaFree

    def _on_stream(self, stream: int, work) -> None:
        if self.capturing == stream:
            self.captured.append(work)
        else:
            work()

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: int):
        self.calls.append("cudaMemcpyAsync")
        self._on_stream(stream, lambda: ctypes.memmove(int(dst), int(src), count))
        return (0,)

    def cudaStreamSynchronize(self, stream: int):
        return (0,)

    def cudaStreamBeginCapture(self, stream: int, mode: int):
        self.calls.append("capture")
        self.capturing, self.captured = stream, []
        return (0,)

    def cudaStreamEndCapture(self, stream: int):
        g = next(self._ids)
        self.graphs[g], self.capturing = list(self.captured), None
        return 0, g

    def cudaGraphInstantiate(self, graph: int, flags: int):
        e = next(self._ids)
        self.graph_execs[e] = self.graphs[graph]
        return 0, e

    def cudaGraphLaunch(self, graph_exec: int, stream: int):
        for work in self.graph_execs[graph_exec]:
            work()
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec: int):
        self.graph_execs.pop(graph_exec, None)
        return (0,)

    def cudaGraphDestroy(self, graph: int):
        self.graphs.pop(graph, None)
        return (0,)


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    UINT8 = 5
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_ONNX_TYPES = {2: DataType.UINT8, 7: DataType.INT64}  # onnx.TensorProto.UINT8, INT64


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def make_fake_tensorrt(
    cudart: FakeCudart,
    *,
    version: str = "10.3.0.26",
    strongly_typed: bool = True,
    dla_cores: int = 0,
    output_dtype: DataType = DataType.FLOAT,
    extra_output_first: bool = False,
    timing_cache_returned: bool = True,
    lean_runtime_loads: bool = True,
) -> types.ModuleType:
    """A `tensorrt` module whose builder reads the ONNX's I/O with `onnx` and whose engine computes `toy_logits`."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    trt.nptype = lambda dt: _NP[DataType(dt)]
    members = {"EXPLICIT_BATCH": 0, **({"STRONGLY_TYPED": 1} if strongly_typed else {})}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 GPU_FALLBACK VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME")
    trt.DeviceType = types.SimpleNamespace(GPU=0, DLA=1)
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE=0, AMPERE_PLUS=1)
    trt.record = record = {"network_flags": [], "builder_flags": [], "builds": 0, "timing_cache_set": [], "lean_runtimes": []}

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            self.level = level

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.io = flags, {}

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            with open(path, "rb") as f:
                return self.parse(f.read())

        def parse(self, data: bytes) -> bool:
            import onnx

            record["parsed_bytes"] = len(data)
            graph = onnx.load_from_string(data).graph
            out = graph.output[0]
            inputs = [[i.name, int(_ONNX_TYPES[i.type.tensor_type.elem_type])] for i in graph.input]
            self.network.io = {"inputs": inputs, "output": out.name, "classes": out.type.tensor_type.shape.dim[1].dim_value}
            self.network.io["extra"] = [[o.name, o.type.tensor_type.shape.dim[1].dim_value] for o in graph.output[1:]]
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return f"fake-timing {version}".encode()

    class Config:
        def __init__(self) -> None:
            self.flags, self.cache, self.profiles = set(), None, []
            self.default_device_type, self.DLA_core, self.hardware_compatibility_level = trt.DeviceType.GPU, -1, 0
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            self.workspace = size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag.name)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            ok = cache.data in (b"", f"fake-timing {version}".encode())  # another device's or version's cache is refused
            record["timing_cache_set"].append((cache.data, ok))
            if ok:
                self.cache = cache
            return ok

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache if timing_cache_returned else None

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return 0

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            record["network_flags"].append(flags)
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            record["builds"] += 1
            record["builder_flags"].append(sorted(config.flags))
            record.setdefault("profiles", []).append(config.profiles[0].shapes)
            plan = {"fake_plan": version, "io": network.io, "profile": config.profiles[0].shapes, "dla": config.DLA_core}
            return json.dumps(plan).encode()

    class Engine:
        def __init__(self, plan: dict) -> None:
            io = plan["io"]
            self.plan, self.output, self.classes = plan, io["output"], io["classes"]
            self.inputs = {name: DataType(dtype) for name, dtype in io["inputs"]}
            self.input = next(iter(self.inputs))
            self.extra = {name: dim for name, dim in io.get("extra", [])}  # further outputs of the graph (features)
            self.names = [*self.inputs, self.output, *self.extra]
            if extra_output_first:
                self.names = [*self.inputs, "features", self.output]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return self.inputs.get(name, output_dtype)

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
            return [list(s) for s in self.plan["profile"][name]]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        @property
        def shape(self) -> tuple:  # the first input's shape (its batch is every output's)
            return self.shapes[self.engine.input]

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            lo, _, hi = self.engine.plan["profile"][name]
            if len(shape) != len(hi) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False  # as TensorRT: a shape outside the profile is refused
            self.shapes[name] = tuple(int(d) for d in shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.engine.inputs:
                return self.shapes[name]
            if name in self.engine.extra:
                return (self.shape[0], self.engine.extra[name])
            return (self.shape[0], self.engine.classes)

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            shapes = {name: self.shapes[name] for name in self.engine.inputs}
            sources = {name: self.addresses[name] for name in self.engine.inputs}
            dst, dtype, classes = self.addresses[self.engine.output], _NP[output_dtype], self.engine.classes
            if any(name not in self.addresses for name in self.engine.extra):
                return False  # as TensorRT: every output of the engine needs an address
            extra = {self.addresses[name]: dim for name, dim in self.engine.extra.items()}

            def read(name: str) -> np.ndarray:
                shape, np_type = shapes[name], np.dtype(_NP[self.engine.inputs[name]])
                raw = (ctypes.c_uint8 * (int(np.prod(shape)) * np_type.itemsize)).from_address(sources[name])
                return np.frombuffer(raw, dtype=np_type).reshape(shape).copy()

            def work() -> None:  # uses the shapes and addresses of the moment it was enqueued (or captured)
                n = shapes[self.engine.input][0]
                if "input_ids" in shapes:  # a text engine
                    images = None
                    out = toy_text_logits(read("input_ids"), read("attention_mask"), classes).astype(dtype)
                else:
                    images = read(self.engine.input)
                    out = toy_logits(images, classes).astype(dtype)
                ctypes.memmove(dst, out.ctypes.data, out.nbytes)
                for address, dim in extra.items():
                    feats = toy_features(images, dim).astype(dtype)
                    ctypes.memmove(address, feats.ctypes.data, feats.nbytes)
                record.setdefault("executed_batches", []).append(n)

            cudart._on_stream(stream, work)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.engine_host_code_allowed, self.num_DLA_cores, self.DLA_core = True, dla_cores, -1

        def load_runtime(self, path: str) -> Runtime | None:
            record["lean_runtimes"].append(path)
            return Runtime(Logger()) if lean_runtime_loads else None

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            try:
                return Engine(json.loads(plan))
            except (ValueError, KeyError):
                return None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch: Any, **options: Any) -> tuple[types.ModuleType, FakeCudart]:
    """Put the fakes where the TensorRT backend imports them; returns (tensorrt, cudart)."""
    import sys

    import runtimes.backends.tensorrt_backend as backend

    cudart_opts = {k: options.pop(k) for k in ("driver", "name", "cc", "integrated") if k in options}
    cudart = FakeCudart(**cudart_opts)
    trt = make_fake_tensorrt(cudart, **options)
    import runtimes.engines.tensorrt_build as build

    # the cuda-python on this machine (pulled in by torch) is not the one a device would have next to this driver
    monkeypatch.setattr(build, "cuda_python_version", lambda: f"{cudart.driver // 1000}.0.0")
    monkeypatch.setattr(build, "tensorrt_cuda_major", lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(backend, "_import_cudart", lambda: cudart)
    return trt, cudart
