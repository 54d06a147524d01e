"""TensorRT engines, built where they run: build settings, optimisation profiles, compatibility checks, the
engine cache, and the builder itself.

TensorRT engines are tied to the TensorRT version and the GPU that built them, so a TensorRT bundle carries a
TensorRT-ready ONNX (fp32, or QDQ int8 from the shared calibration) plus the build settings, and the engine is built
on the device the first time the bundle is loaded (or by `edge-transfer build-engine`). Engines are cached under a
key made of everything that makes an engine valid; a cache entry that is corrupt or does not match is rebuilt,
never loaded. This module imports `tensorrt` and `cuda-python` only inside the functions that need a GPU
(`running_target`, `build_engine`), so its logic is usable and tested anywhere.

TensorRT API used (TensorRT 10/11 Python): `Builder`, `Builder.create_network`, `OnnxParser.parse_from_file`,
`Builder.create_builder_config`, `IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE)`,
`NetworkDefinitionCreationFlag.STRONGLY_TYPED` (or, on older TensorRT, `BuilderFlag.FP16/INT8`),
`BuilderFlag.GPU_FALLBACK/VERSION_COMPATIBLE/EXCLUDE_LEAN_RUNTIME`, `IBuilderConfig.default_device_type`
= `DeviceType.DLA` with `DLA_core`, `hardware_compatibility_level = HardwareCompatibilityLevel.AMPERE_PLUS`,
`Builder.create_optimization_profile` + `IOptimizationProfile.set_shape`, `IBuilderConfig.create_timing_cache` /
`set_timing_cache` / `get_timing_cache().serialize()`, `IProgressMonitor` via `IBuilderConfig.progress_monitor`, and
`Builder.build_serialized_network`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import BackendUnavailableError, EngineIncompatibleError, InputError

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 16
AMPERE_PLUS = (8, 0)  # TensorRT's hardware-compatible engines run on compute capability 8.0 and newer


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range: shapes from `min` to `max` run, `opt` is tuned for."""

    min: int
    opt: int
    max: int

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def shapes(self, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for an NHWC uint8 image input."""
        return tuple((b, height, width, 3) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def derive_profile(batch_dim: int | str | None, *, min_batch: int | None = None, opt_batch: int | None = None,
                   max_batch: int | None = None) -> BatchProfile:
    """The batch range for a bundle's input: its fixed batch, or the requested range within a dynamic batch.

    A dynamic batch defaults to min 1, opt 1 (edge applications mostly run one frame at a time), max 16.
    """
    if isinstance(batch_dim, int):
        for name, value in (("min", min_batch), ("opt", opt_batch), ("max", max_batch)):
            if value is not None and value != batch_dim:
                raise InputError(f"this bundle has a fixed batch of {batch_dim}; a {name} batch of {value} cannot be built")
        return BatchProfile(batch_dim, batch_dim, batch_dim)
    lo = 1 if min_batch is None else min_batch
    hi = max(DEFAULT_MAX_BATCH, lo) if max_batch is None else max_batch
    opt = lo if opt_batch is None else opt_batch
    if not (1 <= lo <= opt <= hi):
        raise InputError(f"the batch profile needs 1 <= min <= opt <= max, got min {lo}, opt {opt}, max {hi}")
    return BatchProfile(lo, opt, hi)


@dataclass(frozen=True)
class BuildSettings:
    """How an engine is built. Everything here changes the engine, so all of it goes into the cache key."""

    precision: str
    profile: BatchProfile
    workspace_mib: int = 1024
    dla_core: int | None = None
    gpu_fallback: bool = True
    hardware_compatible: bool = False
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise InputError(f"TensorRT precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mib < 1:
            raise InputError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError(f"DLA core must be >= 0, got {self.dla_core}")
        if self.dla_core is not None and self.hardware_compatible:
            raise InputError("DLA engines cannot be hardware-compatible (TensorRT builds those for GPUs of Ampere and newer)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildSettings":
        try:
            profile = BatchProfile(**d["profile"])
            return cls(precision=d["precision"], profile=profile, workspace_mib=int(d.get("workspace_mib", 1024)),
                       dla_core=d.get("dla_core"), gpu_fallback=bool(d.get("gpu_fallback", True)),
                       hardware_compatible=bool(d.get("hardware_compatible", False)),
                       version_compatible=bool(d.get("version_compatible", False)))
        except (KeyError, TypeError) as exc:
            raise InputError(f"TensorRT build settings are incomplete or malformed ({exc}): {d}") from None


@dataclass(frozen=True)
class EngineTarget:
    """What an engine runs on: the TensorRT version and the GPU (name, compute capability)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineTarget":
        major, minor = (int(x) for x in str(d["compute_capability"]).split("."))
        return cls(str(d["tensorrt_version"]), str(d.get("gpu_name", "?")), (major, minor))


def _version(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_compatible(built: EngineTarget, settings: BuildSettings, running: EngineTarget) -> None:
    """Refuse an engine the running TensorRT/GPU cannot safely load, naming both sides.

    Version: an engine needs the exact TensorRT version that built it, unless it was built version-compatible,
    which then runs on that version or a newer one. GPU: the same compute capability, unless built
    hardware-compatible, which then runs on any GPU of Ampere (8.0) or newer.
    """
    b, r = _version(built.tensorrt_version), _version(running.tensorrt_version)
    if settings.version_compatible:
        if r < b:
            raise EngineIncompatibleError(
                f"engine built version-compatible with TensorRT {built.tensorrt_version} cannot run on the older "
                f"TensorRT {running.tensorrt_version} here; rebuild it on this device")
    elif b != r:
        raise EngineIncompatibleError(
            f"engine built with TensorRT {built.tensorrt_version}, but this device runs TensorRT "
            f"{running.tensorrt_version}; rebuild it here (edge-transfer build-engine) or build it version-compatible")
    cc_b, cc_r = built.compute_capability, running.compute_capability
    if settings.hardware_compatible:
        if cc_r < AMPERE_PLUS:
            raise EngineIncompatibleError(
                f"hardware-compatible engine (built on {built.gpu_name}, sm {cc_b[0]}.{cc_b[1]}) needs a GPU of compute "
                f"capability 8.0 or newer; this device has {running.gpu_name}, sm {cc_r[0]}.{cc_r[1]}")
    elif cc_b != cc_r:
        raise EngineIncompatibleError(
            f"engine built for {built.gpu_name} (sm {cc_b[0]}.{cc_b[1]}), but this device has {running.gpu_name} "
            f"(sm {cc_r[0]}.{cc_r[1]}); rebuild it here (edge-transfer build-engine)")


def cache_key(model_sha256: str, target: EngineTarget, settings: BuildSettings) -> str:
    """Everything that makes an engine valid: the model, TensorRT version, compute capability and build settings."""
    ident = {
        "model": model_sha256,
        "tensorrt": target.tensorrt_version,
        "compute_capability": list(target.compute_capability),
        "settings": settings.to_dict(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    root = os.environ.get("EDGE_TRANSFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edge-transfer")
    return Path(root) / "engines"


class EngineCache:
    """Engines on disk: `<root>/<key>/engine.plan` + `meta.json` (target, settings, sha256 of the plan)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, target: EngineTarget, settings: BuildSettings) -> bytes | None:
        """The cached plan for `key`, or None when absent. A corrupt or mismatched entry is deleted, not loaded."""
        entry = self.entry(key)
        plan_path, meta_path = entry / "engine.plan", entry / "meta.json"
        if not plan_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            plan = plan_path.read_bytes()
            ok = (
                hashlib.sha256(plan).hexdigest() == meta["sha256"]
                and len(plan) == meta["bytes"]
                and BuildSettings.from_dict(meta["settings"]) == settings
            )
            if ok:
                check_compatible(EngineTarget.from_dict(meta["target"]), settings, target)
        except (OSError, ValueError, KeyError, TypeError, InputError, EngineIncompatibleError):
            ok = False
        if not ok:
            self.evict(key)
            return None
        return plan

    def store(self, key: str, plan: bytes, target: EngineTarget, settings: BuildSettings, extra: dict[str, Any] | None = None) -> Path:
        """Write an entry atomically (temp directory, then rename), replacing any previous one."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        (tmp / "engine.plan").write_bytes(plan)
        meta = {"sha256": hashlib.sha256(plan).hexdigest(), "bytes": len(plan), "target": target.to_dict(),
                "settings": settings.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.evict(key)
        os.replace(tmp, self.entry(key))
        return self.entry(key)

    def evict(self, key: str) -> None:
        import shutil

        shutil.rmtree(self.entry(key), ignore_errors=True)


def write_engine_bundle(source: Any, plan: bytes, built_on: EngineTarget, out: str | os.PathLike[str], *,
                        overwrite: bool = False) -> Any:
    """A bundle carrying a built engine (for identical devices: same TensorRT, same GPU), written atomically.

    Its manifest records where the engine was built (`model.built_on`: TensorRT version, GPU, compute capability)
    next to the build settings; loading it elsewhere raises `EngineIncompatibleError` naming both sides.
    """
    import copy

    from .bundle import BundleWriter

    doc = copy.deepcopy(source.manifest.raw)
    model = doc["model"]
    doc["model"] = {
        "backend": "tensorrt", "format": "tensorrt-engine", "precision": model["precision"], "entrypoint": "model.plan",
        "export_format": model.get("export_format"), "conversion": model.get("conversion"), "tensorrt": model["tensorrt"],
        "built_on": built_on.to_dict(), "built_from": {"path": model["entrypoint"],
                                                       "sha256": next(f.sha256 for f in source.manifest.files if f.path == model["entrypoint"])},
        "files": [],
    }
    doc["producer"] = dict(doc.get("producer") or {}, tensorrt=built_on.tensorrt_version, gpu=built_on.gpu_name,
                           compute_capability=built_on.to_dict()["compute_capability"])
    doc.pop("created", None)
    with BundleWriter(out, overwrite=overwrite) as writer:
        (writer.dir / "model.plan").write_bytes(plan)
        return writer.commit(doc)


# ------------------------------------------------------------------------------------------------ GPU side


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed here ({exc}); on Jetson it comes with JetPack, elsewhere: "
            "pip install 'edge-transfer[tensorrt]' (NVIDIA's index must be reachable)") from None
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailableError(f"cuda-python is not installed here ({exc}): pip install 'edge-transfer[tensorrt]'") from None
    return cudart


def cuda_check(result: Any) -> Any:
    """Unpack a cuda-python call's (error, *values) tuple; raise on any error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def running_target(device: int = 0) -> EngineTarget:
    """The TensorRT version and GPU of this machine (needs TensorRT and cuda-python)."""
    trt = _import_tensorrt()
    cudart = _import_cudart()
    props = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return EngineTarget(trt.__version__, name.strip("\x00 "), (int(props.major), int(props.minor)))


def build_engine(
    onnx_path: str | os.PathLike[str],
    settings: BuildSettings,
    *,
    input_name: str,
    input_hw: tuple[int, int],
    timing_cache: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a serialized engine from a TensorRT-ready ONNX. Returns (plan, facts for the cache/manifest).

    The ONNX already has the engine's precision (fp32, fp16 weights and compute, or QDQ int8): int8 uses explicit
    quantisation, the QDQ nodes carrying the scales from the shared calibration, so no TensorRT calibrator (and no
    calibration cache) is involved.
    """
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strong typing: the ONNX's own types decide each layer's precision (fp16 ONNX -> fp16 engine, QDQ -> int8),
    # which is how TensorRT 10 recommends and TensorRT 11 requires explicit quantisation to be built. Older
    # TensorRT without it gets the weakly typed network and the precision flags instead.
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT's ONNX parser refused the model: {errors}")
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
    profile.set_shape(input_name, *settings.profile.shapes(*input_hw))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    t0 = time.perf_counter()
    log(f"building TensorRT {settings.precision} engine (batch {settings.profile.min}-{settings.profile.max}, "
        f"this takes minutes the first time)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT messages above)")
    seconds = time.perf_counter() - t0
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"engine built in {seconds:.1f} s")
    return bytes(plan), {"build_seconds": round(seconds, 2), "tensorrt_version": trt.__version__}


def _progress_monitor(trt: Any, log: Callable[[str], None]):
    """A TensorRT IProgressMonitor that logs top-level phases with elapsed time (None where unsupported)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            start = self.started.pop(phase_name, None)
            if start is not None and not self.started:
                log(f"  {phase_name} done in {time.perf_counter() - start:.1f} s")

    return Monitor()
