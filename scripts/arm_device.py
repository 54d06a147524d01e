"""An emulated aarch64 device for `make arm-test`, built without root and without touching the host's packages.

- qemu-user: Debian's `qemu-user-static`, unpacked from its .deb.
- An arm64 CPython 3.11: Debian's arm64 packages (and what they depend on, as apt resolves it), unpacked with
  `dpkg-deb -x` into a shared root. No aarch64 code runs while it is installed.
- The runtime wheel with its extras, installed for aarch64 with `pip install --target` and the aarch64 platform tags.
  pip evaluates environment markers for the host it runs on, so the extras' requirements are read from the wheel and
  evaluated for aarch64 here, then given to pip as they are.
- One small root per named core (`-L` for qemu). Its `proc/cpuinfo` and its `MIDR_EL1` in sysfs say what that core
  is. qemu-user 7.2 passes the host's x86 /proc/cpuinfo through, and ONNX Runtime then crashes at import; OpenVINO
  reads MIDR_EL1. The features listed are the ones the emulated core reports in its HWCAP (probed once per core).
  QEMU's `max` core is not used: OpenVINO dies there with SIGILL.

Everything lives in one cache folder (`.cache/arm` by default). A step that cannot be done here (no apt-get, no
package registry) raises `Unavailable` with the reason, and `make arm-test` then skips and says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runtimes.outputs import OutputKind, OutputRule, check_output

PYTHON = "3.11"
# the arm64 packages the device root is built from; apt adds what they depend on (libc, libssl, zlib, ...)
ROOT_PACKAGES = ["python3.11", "libstdc++6", "libgomp1"]
# pip picks the newest wheel whose manylinux tag it is given: list them all up to Debian bookworm's glibc (2.36)
PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{v}_aarch64" for v in range(17, 37)), "linux_aarch64"]

# Linux's arm64 HWCAP / HWCAP2 bit names (arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo prints them
HWCAP = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 "
    "asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
HWCAP2 = "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm bf16 dgh rng bti mte".split()


ARM_CACHE_MARK = ".edge-transfer-arm-cache"
ARM_CACHE = OutputKind("arm-test cache", lambda p: None if (p / ARM_CACHE_MARK).is_file() else f"no {ARM_CACHE_MARK} mark")


class Unavailable(RuntimeError):
    """This machine cannot build the emulated device (the message says why): arm-test skips."""


@dataclass(frozen=True)
class Core:
    """A named core QEMU emulates, with the identity Linux would report for it."""

    name: str
    variant: int
    part: int
    revision: int
    like: str

    @property
    def midr(self) -> int:
        return 0x41 << 24 | self.variant << 20 | 0xF << 16 | self.part << 4 | self.revision


CORES = {
    "cortex-a76": Core("cortex-a76", 0x4, 0xD0B, 1, "dot-product and fp16 arithmetic, like Orin or a Raspberry Pi 5"),
    "cortex-a72": Core("cortex-a72", 0x0, 0xD08, 3, "Armv8.0, neither, like a Raspberry Pi 4"),
}


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise Unavailable(f"{what}: {e.filename} is not installed") from None
    if done.returncode != 0:
        raise Unavailable(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-600:]}")
    return done


class AptCache:
    """A private apt state under `root` (the host's sources, an empty dpkg status): downloads only, no installs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archives = root / "var/cache/apt/archives"
        self.options = [
            f"-oDir={root}",
            f"-oDir::State::status={root}/var/lib/dpkg/status",
            "-oAPT::Architecture=arm64",
            "-oAPT::Architectures::=arm64",
            "-oAPT::Architectures::=amd64",
            "-oDebug::NoLocking=1",
            "-oAPT::Sandbox::User=root",
        ]

    def update(self) -> None:
        if shutil.which("apt-get") is None:
            raise Unavailable("apt-get is not installed (the emulated device is built from Debian's packages)")
        for d in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "var/lib/apt/lists/partial", "var/lib/dpkg"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib/dpkg/status").touch()
        sources = [p for p in Path("/etc/apt/sources.list.d").glob("*") if p.suffix in (".list", ".sources")]
        if Path("/etc/apt/sources.list").is_file():
            sources.append(Path("/etc/apt/sources.list"))
        if not sources:
            raise Unavailable("no apt sources in /etc/apt")
        for src in sources:
            shutil.copyfile(src, self.root / "etc/apt/sources.list.d" / (src.name if src.suffix else "host.list"))
        _run(["apt-get", *self.options, "update"], "apt-get update (Debian's arm64 package lists)")

    def download(self, packages: list[str]) -> list[Path]:
        """The .deb files of `packages` and everything they depend on (arm64 unless a package names its arch)."""
        before = set(self.archives.glob("*.deb"))
        _run(
            ["apt-get", *self.options, "install", "--download-only", "--no-install-recommends", "-y", *packages],
            f"apt-get download of {' '.join(packages)}",
        )
        return sorted(set(self.archives.glob("*.deb")) | before)


def _unpack(debs: list[Path], into: Path) -> None:
    tmp = into.with_name(into.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
    shutil.rmtree(into, ignore_errors=True)
    tmp.rename(into)


def _stamp(path: Path, key: str) -> bool:
    """True when `path`'s stamp already says `key` (the step is done); the caller writes it when it is."""
    return (path / ".stamp").is_file() and (path / ".stamp").read_text() == key


class EmulatedDevice:
    """The cache folder's qemu, arm64 root and site-packages; `run` one Python command on a named core."""

    def __init__(self, cache: Path) -> None:
        # everything under `cache` may be replaced or deleted, so it must be absent, empty or one of ours (the
        # project's one output rule; `OutputError` otherwise), and it is marked as ours before anything is written
        check_output(cache, OutputRule("cache", kind=ARM_CACHE), flag="--cache")
        cache.mkdir(parents=True, exist_ok=True)
        (cache / ARM_CACHE_MARK).touch()
        self.cache = cache.resolve()
        self.apt = AptCache(self.cache / "apt")
        self.common = self.cache / "root"
        self.qemu = self.cache / "qemu/usr/bin/qemu-aarch64-static"
        self.site = self.cache / "site"
        self._lock = threading.Lock()

    def build_root(self) -> None:
        """qemu-user and the arm64 CPython root, from Debian's packages (kept while the package list is the same)."""
        key = " ".join(ROOT_PACKAGES)
        if self.qemu.is_file() and _stamp(self.common, key):
            return
        self.apt.update()
        qemu_debs = [p for p in self.apt.download(["qemu-user-static:amd64"]) if p.name.startswith("qemu-user-static_")]
        _unpack(qemu_debs, self.cache / "qemu")
        debs = [p for p in self.apt.download(ROOT_PACKAGES) if p.name.endswith(("_arm64.deb", "_all.deb"))]
        _unpack(debs, self.common)
        (self.common / ".stamp").write_text(key)

    def install(self, wheel: Path, extras: list[str]) -> list[str]:
        """The runtime wheel and the requirements of `extras` as evaluated on aarch64; returns those requirements."""
        requirements = aarch64_requirements(wheel, extras)
        key = hashlib.sha256(wheel.read_bytes() + repr(requirements).encode()).hexdigest()
        if _stamp(self.site, key):
            return requirements
        self.pip_target(self.site, [str(wheel), *requirements])
        (self.site / ".stamp").write_text(key)
        return requirements

    def pip_target(self, site: Path, requirements: list[str], no_deps: bool = False) -> None:
        """`requirements` installed for aarch64 CPython into `site` (replaced whole, once the install is complete)."""
        tmp = site.with_name(site.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts", "--target", str(tmp)]
        cmd += ["--only-binary=:all:", f"--python-version={PYTHON}", "--implementation=cp", f"--abi=cp{PYTHON.replace('.', '')}"]
        cmd += [f"--platform={p}" for p in PLATFORMS] + (["--no-deps"] if no_deps else [])
        _run([*cmd, *requirements], "pip install --target for aarch64 (the package registry)")
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)

    def versions(self) -> list[str]:
        """name==version of what the device's site-packages hold."""
        names = ("edge_transfer_runtime", "numpy", "pillow", "onnxruntime", "openvino", "tokenizers", "cryptography")
        found = (p.name.removesuffix(".dist-info").split("-", 1) for p in self.site.glob("*.dist-info"))
        return sorted(f"{name} {version}" for name, version in found if name in names)

    def core_root(self, core: Core) -> Path:
        """`core`'s root for qemu's -L: its own proc/cpuinfo and MIDR_EL1, everything else the shared root's. Made
        once, under a lock (commands on one core run from several threads)."""
        with self._lock:
            return self._core_root(core)

    def _core_root(self, core: Core) -> Path:
        root = self.cache / "cores" / core.name
        if _stamp(root, f"{core.midr:x}"):
            return root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for name in ("usr", "lib", "etc", "bin", "sbin", "var"):
            if (self.common / name).exists():
                (root / name).symlink_to(self.common / name)
        hwcap, hwcap2 = self._hwcaps(core)
        features = [n for i, n in enumerate(HWCAP) if hwcap >> i & 1] + [n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1]
        cpus = os.cpu_count() or 1
        block = (
            "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
            "CPU variant\t: {c.variant:#x}\nCPU part\t: {c.part:#05x}\nCPU revision\t: {c.revision}\n\n"
        )
        (root / "proc").mkdir()
        (root / "proc/cpuinfo").write_text("".join(block.format(i=i, features=" ".join(features), c=core) for i in range(cpus)))
        for i in range(cpus):
            regs = root / f"sys/devices/system/cpu/cpu{i}/regs/identification"
            regs.mkdir(parents=True)
            (regs / "midr_el1").write_text(f"0x{core.midr:016x}\n")
        (root / ".stamp").write_text(f"{core.midr:x}")
        return root

    def _hwcaps(self, core: Core) -> tuple[int, int]:
        probe = "import ctypes; c = ctypes.CDLL(None); c.getauxval.restype = ctypes.c_ulong; print(c.getauxval(16), c.getauxval(26))"
        out = _run(self._command(self.common, core, ["-c", probe]), f"the HWCAP probe on {core.name}").stdout.split()
        return int(out[0]), int(out[1])

    def _command(self, root: Path, core: Core, args: list[str]) -> list[str]:
        return [str(self.qemu), "-L", str(root), "-cpu", core.name, str(root / f"usr/bin/python{PYTHON}"), *args]

    def run(self, core: Core, args: list[str], cwd: Path, timeout: float = 600, front: Path | None = None) -> subprocess.CompletedProcess:
        """`python3.11 ARGS` on `core`, with the aarch64 site-packages on its path (nothing else of the host's);
        `front`: a site-packages folder searched before it (another version of one package)."""
        path = ":".join(str(p) for p in (front, self.site) if p is not None)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"}
        env.update({k: v for k, v in os.environ.items() if k.startswith("EDGE_TRANSFER_")})
        return subprocess.run(self._command(self.core_root(core), core, args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def aarch64_requirements(wheel: Path, extras: list[str]) -> list[str]:
    """The wheel's Requires-Dist lines for `extras`, with their markers evaluated for Linux aarch64 CPython."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(name).decode().splitlines()
    env = {"platform_machine": "aarch64", "platform_system": "Linux", "sys_platform": "linux", "python_version": PYTHON}
    env.update({"implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"})
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None:
            continue  # the base requirements come with the wheel itself
        if any(req.marker.evaluate({**env, "extra": extra}) for extra in extras):
            req.marker = None
            out.append(str(req))
    return out
