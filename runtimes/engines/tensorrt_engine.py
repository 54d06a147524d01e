"""TensorRT engines, built where they run: build settings, optimisation profiles, the device an engine targets,
compatibility checks, the engine cache and the engine bundle writer. Pure logic: nothing here imports TensorRT or
CUDA, so all of it is tested on every machine (the GPU side is `runtimes.engines.tensorrt_build`).

TensorRT engines are tied to the TensorRT version and the GPU that built them, so a TensorRT bundle carries a
TensorRT-ready ONNX (fp32, fp16, or QDQ int8 from the shared calibration) plus the build settings, and the engine is
built on the device the first time the bundle is loaded (or by `edge-transfer build-engine`). Engines are cached
under a key made of everything that makes an engine valid; a cache entry that is corrupt or does not match is
rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineIncompatibleError, InputError
from ..outputs import OutputKind
from .tensorrt_profile import BatchProfile, TokenProfile

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
DLA_PRECISIONS = ("fp16", "int8")  # the DLA has no fp32 kernels
AMPERE_PLUS = (8, 0)  # TensorRT's hardware-compatible engines run on compute capability 8.0 and newer
MIN_TENSORRT = (8, 5)  # execute_async_v3, named I/O tensors and memory pools
MIN_TENSORRT_VERSION_COMPATIBLE = (8, 6)


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
    tokens: TokenProfile | None = None  # text bundles: the sequence-length range of the profile

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise InputError(f"TensorRT precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mib < 1:
            raise InputError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")
        if self.dla_core is None:
            return
        if self.dla_core < 0:
            raise InputError(f"DLA core must be >= 0, got {self.dla_core}")
        if self.hardware_compatible:
            raise InputError("DLA engines cannot be hardware-compatible (TensorRT builds those for GPUs of Ampere and newer)")
        if self.precision not in DLA_PRECISIONS:
            raise InputError(
                f"the DLA runs fp16 or int8 only, not {self.precision}: export with --format tensorrt-fp16 or "
                "tensorrt-int8 (an fp32 engine with a DLA core would silently run everything on the GPU)"
            )
        if self.tokens is not None and self.tokens.min != self.tokens.max:
            raise InputError("the DLA needs static shapes, and a text bundle's token range is dynamic: run text engines on the GPU")
        if not self.profile.static:
            p = self.profile
            raise InputError(
                f"the DLA needs a static batch (min = opt = max), got {p.min}/{p.opt}/{p.max}: give a fixed "
                "--batch-size, or one of --trt-opt-batch/--trt-max-batch"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        if self.tokens is None:  # image bundles: the section (and the cache key) as before text
            del d["tokens"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildSettings:
        try:
            profile = BatchProfile(**d["profile"])
            return cls(
                precision=d["precision"],
                profile=profile,
                workspace_mib=int(d.get("workspace_mib", cls.workspace_mib)),
                dla_core=d.get("dla_core"),
                gpu_fallback=bool(d.get("gpu_fallback", cls.gpu_fallback)),
                hardware_compatible=bool(d.get("hardware_compatible", cls.hardware_compatible)),
                version_compatible=bool(d.get("version_compatible", cls.version_compatible)),
                tokens=TokenProfile(**d["tokens"]) if d.get("tokens") is not None else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"TensorRT build settings are incomplete or malformed ({exc}): {d}") from None


@dataclass(frozen=True)
class EngineTarget:
    """What an engine runs on: the full TensorRT version and the GPU (name, compute capability, whether it is an
    integrated Jetson/DRIVE GPU, and how many DLA cores sit beside it)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    integrated: bool = False
    dla_cores: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "integrated": self.integrated,
            "dla_cores": self.dla_cores,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineTarget:
        try:
            major, minor = (int(x) for x in str(d["compute_capability"]).split("."))
            return cls(
                str(d["tensorrt_version"]), str(d.get("gpu_name", "?")), (major, minor), bool(d.get("integrated", False)), int(d.get("dla_cores", 0))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"TensorRT engine target is incomplete or malformed ({exc}): {d}") from None

    @property
    def sm(self) -> str:
        return f"sm {self.compute_capability[0]}.{self.compute_capability[1]}"


def version_tuple(v: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26): every numeric part, so builds that differ only in the fourth part differ."""
    parts = []
    for p in str(v).split("."):
        digits = re.match(r"\d*", p).group()  # type: ignore[union-attr]
        parts.append(int(digits) if digits else 0)
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check_buildable(settings: BuildSettings, target: EngineTarget) -> None:
    """Refuse build settings this device's TensorRT/GPU cannot honour, before minutes are spent building."""
    trt = version_tuple(target.tensorrt_version)
    if trt[:2] < MIN_TENSORRT:
        raise EngineIncompatibleError(
            f"TensorRT {target.tensorrt_version} is too old: edge-transfer needs TensorRT "
            f"{'.'.join(map(str, MIN_TENSORRT))} or newer (JetPack 5.1 or later)"
        )
    if settings.version_compatible and trt[:2] < MIN_TENSORRT_VERSION_COMPATIBLE:
        raise EngineIncompatibleError(f"version-compatible engines need TensorRT 8.6 or newer; this device has {target.tensorrt_version}")
    if settings.hardware_compatible:
        if target.integrated:
            raise EngineIncompatibleError(
                f"hardware-compatible engines are not supported on {target.gpu_name} (an integrated Jetson/DRIVE GPU: "
                "TensorRT supports them on discrete GPUs only); export without --trt-hardware-compatible"
            )
        if target.compute_capability < AMPERE_PLUS:
            raise EngineIncompatibleError(
                f"hardware-compatible engines need a GPU of compute capability 8.0 or newer to build; this device has {target.gpu_name} ({target.sm})"
            )
    if settings.dla_core is not None and settings.dla_core >= target.dla_cores:
        have = f"{target.dla_cores} DLA core(s)" if target.dla_cores else "no DLA"
        raise EngineIncompatibleError(
            f"the bundle asks for DLA core {settings.dla_core}, but {target.gpu_name} has {have}; export it without --trt-dla-core for this device"
        )


def check_compatible(built: EngineTarget, settings: BuildSettings, running: EngineTarget) -> None:
    """Refuse an engine the running TensorRT/GPU cannot safely load, naming both sides.

    Version: an engine needs the exact TensorRT version that built it (all four parts), unless it was built
    version-compatible, which then runs on that version or a newer one of the same major (through the builder's
    lean runtime). GPU: the same GPU model, unless built hardware-compatible, which runs on any discrete GPU of
    Ampere (8.0) or newer; never on an integrated Jetson/DRIVE GPU. A DLA engine needs that DLA core here.
    """
    b, r = version_tuple(built.tensorrt_version), version_tuple(running.tensorrt_version)
    if settings.version_compatible:
        if r < b:
            raise EngineIncompatibleError(
                f"engine built version-compatible with TensorRT {built.tensorrt_version} cannot run on the older "
                f"TensorRT {running.tensorrt_version} here; rebuild it on this device"
            )
        if r[0] != b[0]:
            raise EngineIncompatibleError(
                f"engine built version-compatible with TensorRT {built.tensorrt_version} runs on later {b[0]}.x versions "
                f"only, this device has TensorRT {running.tensorrt_version}; rebuild it here (edge-transfer build-engine)"
            )
    elif b != r:
        raise EngineIncompatibleError(
            f"engine built with TensorRT {built.tensorrt_version}, but this device runs TensorRT "
            f"{running.tensorrt_version}; rebuild it here (edge-transfer build-engine) or build it version-compatible"
        )
    cc_b, cc_r = built.compute_capability, running.compute_capability
    if settings.hardware_compatible:
        if running.integrated or built.integrated:
            raise EngineIncompatibleError(
                f"hardware-compatible engine (built on {built.gpu_name}, {built.sm}) cannot run on {running.gpu_name}: "
                "integrated Jetson/DRIVE GPUs do not support hardware compatibility; rebuild it here (edge-transfer build-engine)"
            )
        if cc_r < AMPERE_PLUS:
            raise EngineIncompatibleError(
                f"hardware-compatible engine (built on {built.gpu_name}, {built.sm}) needs a GPU of compute "
                f"capability 8.0 or newer; this device has {running.gpu_name}, {running.sm}"
            )
    elif cc_b != cc_r or built.gpu_name != running.gpu_name or built.integrated != running.integrated:
        raise EngineIncompatibleError(
            f"engine built for {built.gpu_name} ({built.sm}), but this device has {running.gpu_name} "
            f"({running.sm}); rebuild it here (edge-transfer build-engine)"
        )
    if settings.dla_core is not None and settings.dla_core >= running.dla_cores:
        raise EngineIncompatibleError(
            f"engine built for DLA core {settings.dla_core}, but {running.gpu_name} here has {running.dla_cores} DLA core(s)"
        )


def _target_ident(target: EngineTarget) -> dict[str, Any]:
    return {
        "tensorrt": list(version_tuple(target.tensorrt_version)),
        "tensorrt_version": target.tensorrt_version,
        "gpu": target.gpu_name,
        "compute_capability": list(target.compute_capability),
        "integrated": target.integrated,
        "dla_cores": target.dla_cores,
    }


def cache_key(model_sha256: str, target: EngineTarget, settings: BuildSettings) -> str:
    """Everything that makes an engine valid: the model, the full TensorRT version, the GPU model (name, compute
    capability, integrated or not, DLA cores: an Orin AGX and an Orin Nano share sm 8.7) and the build settings."""
    ident = {"model": model_sha256, "target": _target_ident(target), "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def timing_cache_path(root: str | os.PathLike[str], target: EngineTarget) -> Path:
    """A timing cache per GPU model and TensorRT version: one made elsewhere is never offered to this builder."""
    ident = hashlib.sha256(json.dumps(_target_ident(target), sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"timing-{ident}.cache"


def default_cache_dir() -> Path:
    root = os.environ.get("EDGE_TRANSFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edge-transfer")
    return Path(root) / "engines"


def _entry_problem(path: Path) -> str | None:
    foreign = sorted(p.name for p in path.iterdir() if p.name not in ("engine.plan", "meta.json"))
    return f"files an engine cache entry does not have ({', '.join(foreign[:4])})" if foreign else None


ENGINE_ENTRY = OutputKind("engine cache entry", _entry_problem)
_ENGINE_KEY = re.compile(r"^[0-9a-f]{16,64}$|^timing-[0-9a-f]{16}\.cache$")


def _cache_problem(path: Path) -> str | None:
    foreign = sorted(p.name for p in path.iterdir() if not _ENGINE_KEY.match(p.name) and not p.name.startswith("."))
    return f"{', '.join(foreign[:4])} {'is' if len(foreign) == 1 else 'are'} not engine cache entries" if foreign else None


ENGINE_CACHE = OutputKind("engine cache", _cache_problem)  # what build-engine --cache-dir may add to


class EngineCache:
    """Engines on disk: `<root>/<key>/engine.plan` + `meta.json` (target, settings, sha256 of the plan), and one
    timing cache per device model and TensorRT version."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def ensure(self) -> Path:
        """Create the cache directory (the builder writes the timing cache into it before any entry exists)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the engine cache directory {self.root}: {exc.strerror or exc}; pass another cache_dir (--cache-dir)"
            ) from None
        return self.root

    def entry(self, key: str) -> Path:
        return self.root / key

    def timing_cache(self, target: EngineTarget) -> Path:
        return timing_cache_path(self.root, target)

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
        from ..fsutil import staged_directory

        meta = {
            "sha256": hashlib.sha256(plan).hexdigest(),
            "bytes": len(plan),
            "target": target.to_dict(),
            "settings": settings.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        self.ensure()
        with staged_directory(self.entry(key)) as tmp:
            (tmp / "engine.plan").write_bytes(plan)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return self.entry(key)

    def evict(self, key: str) -> None:
        """Delete a corrupt or mismatched entry; a folder holding anything but an entry's files is refused."""
        from ..fsutil import remove_ours

        remove_ours(self.entry(key), ENGINE_ENTRY)


def write_engine_bundle(source: Any, plan: bytes, built_on: EngineTarget, out: str | os.PathLike[str], *, overwrite: bool = False) -> Any:
    """A bundle carrying a built engine (for identical devices: same TensorRT, same GPU model), written atomically.

    Its manifest records where the engine was built (`model.built_on`: TensorRT version, GPU, compute capability,
    integrated, DLA cores) next to the build settings; loading it elsewhere raises `EngineIncompatibleError` naming
    both sides.
    """
    import dataclasses

    from ..bundle import BundleWriter
    from ..manifest import utc_now

    m = source.manifest
    where = built_on.to_dict()
    manifest = dataclasses.replace(
        m,
        created=utc_now(),
        backend="tensorrt",
        format="tensorrt-engine",
        entrypoint="model.plan",
        files=(),
        target_cpu=None,
        built_on=where,
        built_from={"path": m.entrypoint, "sha256": next(f.sha256 for f in m.files if f.path == m.entrypoint)},
        producer=dict(m.producer, tensorrt=built_on.tensorrt_version, gpu=built_on.gpu_name, compute_capability=where["compute_capability"]),
    )
    import shutil

    from ..bundle import model_files

    with BundleWriter(out, overwrite=overwrite) as writer:
        (writer.dir / "model.plan").write_bytes(plan)
        for f in m.files:  # the self-test's golden images and references (and any replay data) go with the engine
            if f.path not in model_files(m):
                (writer.dir / f.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.path / f.path, writer.dir / f.path)
        return writer.commit(manifest)
