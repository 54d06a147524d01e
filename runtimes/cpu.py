"""What the CPU under the runtime can do, as far as bundles care: int8 dot-product instructions (VNNI), native bf16
and fp16 arithmetic. Read from /proc/cpuinfo (Linux), or given as text for tests with synthetic flag sets.

It decides two things: which int8 weight range a bundle built for a target CPU needs (`TARGET_CPUS`), and whether
the CPU the runtime is on matches the target the bundle was built for (`int8_target_problem`).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU features that change which kernels and precisions runtimes pick."""

    machine: str
    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    bf16: bool = False
    fp16: bool = False
    i8mm: bool = False  # Arm: int8 matrix multiply (Armv8.6)
    sve: bool = False  # Arm: scalable vectors

    @property
    def x86(self) -> bool:
        return self.machine in ("x86_64", "amd64", "i686", "i386")

    @property
    def arm64(self) -> bool:
        return self.machine in ("aarch64", "arm64")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The features by the names the CPU's own architecture gives them (x86: avx2, vnni; Arm: asimddp, fphp)."""
        if self.arm64:
            names = {"asimddp": self.vnni, "fphp": self.fp16, "bf16": self.bf16, "i8mm": self.i8mm, "sve": self.sve}
            have = [n for n, on in names.items() if on]
            return f"{self.machine}: {', '.join(have) or 'none of ' + '/'.join(names)} (asimddp: int8 dot product, fphp: fp16 arithmetic)"
        have = [name for name in ("avx2", "avx512", "vnni", "bf16", "fp16") if getattr(self, name)]
        return f"{self.machine}: {', '.join(have) or 'none of avx2/avx512/vnni/bf16/fp16'}"


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> CpuFeatures:
    """This machine's features (or those of a given /proc/cpuinfo text and machine name)."""
    machine = (machine or platform.machine()).lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if machine in ("aarch64", "arm64"):  # Armv8.2+: sdot/udot (asimddp) for int8, fp16 arithmetic (fphp/asimdhp); later bf16, i8mm
        return CpuFeatures(
            machine,
            vnni="asimddp" in flags,
            bf16="bf16" in flags,
            fp16="asimdhp" in flags or "fphp" in flags,
            i8mm="i8mm" in flags,
            sve="sve" in flags,
        )
    return CpuFeatures(
        machine,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=any(f in flags for f in VNNI_FLAGS),
        bf16=any(f in flags for f in BF16_FLAGS),
        fp16=any(f in flags for f in FP16_FLAGS),
    )


# target -> (7-bit weights?, why)
TARGET_CPUS: dict[str, tuple[bool, str]] = {
    "portable": (True, "7-bit weights: safe on every CPU (x86 u8s8 kernels without VNNI cannot saturate on them)"),
    "x86-avx2": (
        True,
        "AVX2/AVX-512 without VNNI: u8s8 kernels add pairs of 8-bit products in 16 bits and can "
        "saturate on full 8-bit weights, so weights use 7 bits (ONNX Runtime's guidance)",
    ),
    "x86-vnni": (False, "VNNI (AVX512-VNNI, AVX-VNNI, AMX) accumulates int8 products in 32 bits: full 8-bit weights; only for CPUs that have it"),
    "arm64": (
        False,
        "Arm int8 kernels widen each 8-bit product before adding (sdot/udot on cores with asimddp, Armv8.2+; widening "
        "multiply-adds on Armv8.0 cores such as A53/A72), so full 8-bit weights cannot saturate as on x86 without VNNI",
    ),
}
DEFAULT_TARGET_CPU = "portable"


def reduce_range_for(target: str) -> bool:
    return TARGET_CPUS[target][0]


def int8_target_problem(target: str | None, reduce_range: bool | None, cpu: CpuFeatures) -> str | None:
    """Why running an int8 bundle built for `target` on `cpu` may saturate, or None when it is safe (or not int8)."""
    if reduce_range is None or reduce_range:
        return None  # float bundle, or 7-bit weights: safe everywhere
    if cpu.x86 and not cpu.vnni:
        return (
            f"this int8 bundle has full 8-bit weights (built for {target or 'a VNNI CPU'}), but this CPU ({cpu.summary()}) "
            "has no VNNI: its int8 kernels can saturate on them; re-export with --target-cpu portable or x86-avx2"
        )
    return None
