"""The GPU side of TensorRT: importing TensorRT and cuda-python (and checking that they fit this driver), reading
the device, building an engine, and choosing the lean runtime for version-compatible plans.

TensorRT and cuda-python are imported only inside the functions that need them; the decisions (network flags per
TensorRT major, the cuda-python rule, the lean-runtime choice, the timing-cache handling) take the module objects
as arguments, so their control flow is tested here with a stand-in module (`tests/fake_tensorrt.py`) while the
real build runs only where TensorRT and a GPU exist.

TensorRT API used (8.5 to 11): `Builder`, `Builder.create_network`, `NetworkDefinitionCreationFlag.EXPLICIT_BATCH`
(before 10.0) / `STRONGLY_TYPED`, `OnnxParser.parse` / `parse_from_file`, `Builder.create_builder_config`,
`IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE)`, `BuilderFlag.FP16/INT8` (weakly typed networks
only), `BuilderFlag.GPU_FALLBACK/VERSION_COMPATIBLE/EXCLUDE_LEAN_RUNTIME`, `IBuilderConfig.default_device_type`
= `DeviceType.DLA` with `DLA_core`, `hardware_compatibility_level = HardwareCompatibilityLevel.AMPERE_PLUS`,
`Builder.create_optimization_profile` + `IOptimizationProfile.set_shape`, `IBuilderConfig.create_timing_cache` /
`set_timing_cache` (returns False for a cache from another device or version) / `get_timing_cache`,
`IProgressMonitor`, `Builder.build_serialized_network`, `Runtime.num_DLA_cores`, `Runtime.load_runtime`.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, EngineIncompatibleError, InputError, install_hint
from .tensorrt_engine import BuildSettings, EngineTarget, version_tuple

_log = logging.getLogger(__name__)

INSTALL_HINT = (
    "on Jetson TensorRT comes with JetPack: make the venv with --system-site-packages and "
    f"{install_hint('jetson')}; on x86, {install_hint('tensorrt-cu12')} (or -cu13, matching "
    "your driver's CUDA major) with NVIDIA's package index reachable"
)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed here ({exc}); {INSTALL_HINT}") from None
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailableError(
                f"cuda-python is not installed here ({exc}): pip install 'cuda-python>=12,<13' "
                "for a CUDA 12 driver (JetPack 6), 'cuda-python>=13,<14' for CUDA 13"
            ) from None
    return cudart


def cuda_check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python call's (error, *values) tuple; raise on any error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"{what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# ------------------------------------------------------------------------------------------------ versions


def cuda_python_version() -> str | None:
    """The installed cuda-python bindings' version (cuda-bindings since 12.6, cuda-python before), or None."""
    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_cuda_major() -> int | None:
    """The CUDA major the pip-installed TensorRT was built for (tensorrt-cu12 / -cu13), None when unknown (JetPack)."""
    found = set()
    for dist in importlib.metadata.distributions():
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_](?:libs|bindings))?", (dist.metadata["Name"] or "").lower())
        if m:
            found.add(int(m.group(1)))
    return found.pop() if len(found) == 1 else None


def check_cuda_python(bindings_version: str | None, driver_version: int, tensorrt_cuda: int | None = None) -> None:
    """The rule: cuda-python's major must be the CUDA major of the driver (or older) and of TensorRT.

    cuda-python 13 links the CUDA 13 runtime statically, so under a CUDA 12 driver (JetPack 6 is CUDA 12.6) every
    call fails. `driver_version` is `cudaDriverGetVersion()`'s number (12060 = 12.6).
    """
    if bindings_version is None:
        return
    major = version_tuple(bindings_version)[0]
    drv_major, drv_minor = driver_version // 1000, (driver_version % 1000) // 10
    pin = f"'cuda-python>={drv_major},<{drv_major + 1}'"
    if major > drv_major:
        raise BackendUnavailableError(
            f"cuda-python {bindings_version} needs a CUDA {major} driver, but this driver supports CUDA "
            f"{drv_major}.{drv_minor}: pip install {pin} (cuda-python's major must match the driver's CUDA major)"
        )
    if tensorrt_cuda is not None and tensorrt_cuda != major:
        raise BackendUnavailableError(
            f"cuda-python {bindings_version} is for CUDA {major}, but TensorRT here is built for CUDA {tensorrt_cuda}: "
            f"pip install 'cuda-python>={tensorrt_cuda},<{tensorrt_cuda + 1}'"
        )


def running_target(device: int = 0, trt: Any = None, cudart: Any = None) -> EngineTarget:
    """The TensorRT version and GPU of this machine (needs TensorRT and a cuda-python that fits the driver)."""
    trt = trt or _import_tensorrt()
    cudart = cudart or _import_cudart()
    check_cuda_python(cuda_python_version(), int(cuda_check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")), tensorrt_cuda_major())
    props = cuda_check(cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    dla = int(getattr(runtime, "num_DLA_cores", 0) or 0)
    return EngineTarget(str(trt.__version__), name.strip("\x00 "), (int(props.major), int(props.minor)), bool(getattr(props, "integrated", 0)), dla)


# ------------------------------------------------------------------------------------------------ building


def network_flag_names(tensorrt_version: str, has_strongly_typed: bool) -> list[str]:
    """`NetworkDefinitionCreationFlag` members for our networks: explicit batch (TensorRT 8/9 build implicit-batch
    networks without it, which the ONNX parser refuses; 10+ has only explicit batch) and strong typing where it
    exists (the ONNX's own types decide each layer's precision: fp16 ONNX -> fp16, QDQ -> int8)."""
    names = ["EXPLICIT_BATCH"] if version_tuple(tensorrt_version)[0] < 10 else []
    if has_strongly_typed:
        names.append("STRONGLY_TYPED")
    return names


def network_flags(trt: Any) -> tuple[int, bool]:
    """(flags for `Builder.create_network`, strongly typed or not)."""
    enum = trt.NetworkDefinitionCreationFlag
    names = network_flag_names(trt.__version__, hasattr(enum, "STRONGLY_TYPED"))
    flags = 0
    for name in names:
        flags |= 1 << int(getattr(enum, name))
    return flags, "STRONGLY_TYPED" in names


def _apply_timing_cache(trt: Any, config: Any, path: Path | None) -> bool:
    """Give the builder the timing cache at `path`; a cache TensorRT refuses (another device or version, corrupt)
    is replaced by a fresh one. Returns whether a cache is set."""
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, False):
        return True
    if data:
        _log.info(f"timing cache {path} does not fit this device or TensorRT version; starting a fresh one")
    cache = config.create_timing_cache(b"")
    return bool(cache is not None and config.set_timing_cache(cache, False))


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        _log.info("TensorRT returned no timing cache; not saving one")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(cache.serialize()))
        os.replace(tmp, path)
    except OSError as exc:  # the engine is built; a timing cache is only an optimisation
        _log.warning(f"could not save the timing cache {path}: {exc}")


def build_engine(
    onnx_path: str | os.PathLike[str] | bytes,
    settings: BuildSettings,
    *,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    timing_cache: str | os.PathLike[str] | None = None,
    trt: Any = None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a serialized engine from a TensorRT-ready ONNX (a path, or the verified bytes). Returns (plan, facts).
    `shapes`: each input's (min, opt, max) shape in the one optimisation profile (`InputReader.engine_shapes`).

    The ONNX already has the engine's precision (fp32, fp16 weights and compute, or QDQ int8): int8 uses explicit
    quantisation, the QDQ nodes carrying the scales from the shared calibration, so no TensorRT calibrator (and no
    calibration cache) is involved.
    """
    trt = trt or _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(onnx_path) if isinstance(onnx_path, bytes) else parser.parse_from_file(str(onnx_path))
    where = "model.onnx" if isinstance(onnx_path, bytes) else str(onnx_path)
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{where}: TensorRT's ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if not strongly_typed and settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly_typed and settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)  # no host code inside the plan
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    has_cache = _apply_timing_cache(trt, config, cache_path)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    t0 = time.perf_counter()
    _log.info(
        f"building TensorRT {settings.precision} engine (batch {settings.profile.min}-{settings.profile.max}"
        + (f", {settings.tokens.min}-{settings.tokens.max} tokens tuned for {settings.tokens.opt}" if settings.tokens else "")
        + ", this takes minutes the first time)"
    )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"{where}: TensorRT could not build an engine (see the TensorRT messages above)")
    seconds = time.perf_counter() - t0
    if cache_path is not None and has_cache:
        _save_timing_cache(config, cache_path)
    _log.info(f"engine built in {seconds:.1f} s")
    return bytes(plan), {"build_seconds": round(seconds, 2), "tensorrt_version": str(trt.__version__)}


def _progress_monitor(trt: Any) -> Any:
    """A TensorRT IProgressMonitor that logs top-level phases with elapsed time (None where unsupported)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                _log.info(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            start = self.started.pop(phase_name, None)
            if start is not None and not self.started:
                _log.info(f"  {phase_name} done in {time.perf_counter() - start:.1f} s")

    return Monitor()


# ------------------------------------------------------------------------------------------------ lean runtime


def lean_library_version(path: str) -> tuple[int, ...] | None:
    """The TensorRT version in a lean runtime's file name (`libnvinfer_lean.so.10.3.0` -> (10, 3)), None if absent."""
    m = re.search(r"nvinfer_lean[^/\\]*?\.so\.(\d+(?:\.\d+)*)$", os.path.basename(path)) or re.search(
        r"nvinfer_lean_?(\d+)\.dll$", os.path.basename(path)
    )
    return version_tuple(m.group(1)) if m else None


def choose_lean_runtime(built_version: str, running_version: str, given: str | None, found: str | None) -> str:
    """The lean runtime library for a version-compatible plan (built with EXCLUDE_LEAN_RUNTIME).

    It must be the *builder's* TensorRT version. This device's own library (`found`) qualifies only when this
    device runs that same version; otherwise the caller passes the builder's library (`given`), whose file-name
    version is checked against the builder's when it carries one.
    """
    built = version_tuple(built_version)
    if given:
        named = lean_library_version(given)
        if named is not None and built[: len(named)] != named:
            raise EngineIncompatibleError(
                f"lean runtime {given} is TensorRT {'.'.join(map(str, named))}, but the engine was built with TensorRT "
                f"{built_version}: a version-compatible plan needs the lean runtime of the TensorRT that built it"
            )
        return given
    if built == version_tuple(running_version) and found:
        return found
    raise EngineIncompatibleError(
        f"this version-compatible engine was built with TensorRT {built_version} and carries no lean runtime; this device "
        f"runs TensorRT {running_version}. Pass lean_runtime= (or EDGE_TRANSFER_TRT_LEAN_RUNTIME) the libnvinfer_lean "
        f"of TensorRT {built_version}, or rebuild the engine here (edge-transfer build-engine)"
    )


def load_lean_runtime(runtime: Any, built_version: str, running_version: str, given: str | None) -> Any:
    """`Runtime.load_runtime` with the builder's lean runtime; its None return becomes a typed error."""
    found = ctypes.util.find_library("nvinfer_lean")
    path = choose_lean_runtime(built_version, running_version, given, found)
    lean = runtime.load_runtime(path)
    if lean is None:
        raise EngineIncompatibleError(
            f"TensorRT could not load the lean runtime {path} (engine built with TensorRT {built_version}); see the TensorRT messages above"
        )
    return lean
