"""`make wheels`: the two release distributions, built from this checkout into dist/ (README: On the device).

- edge-transfer-runtime: the `runtimes` package (the device command line included) with numpy, Pillow, filelock and
  cryptography; each backend is an extra (onnxruntime, openvino, tensorrt-cu12/cu13, jetson), as are text and video.
  It owns the `edge-transfer` command.
- edge-transfer: the host packages (`edge_transfer`, `converters`), depending on exactly this edge-transfer-runtime;
  its host commands join the command line through the `edge_transfer.commands` entry point.

Both are generated from the root pyproject.toml (the development install, which holds all three packages), so the
dependencies and extras are written in one place.

    python scripts/build_wheels.py [--out dist]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib  # the build runs on the host's Python (3.11+)

ROOT = Path(__file__).resolve().parents[1]
HOST_ONLY_EXTRAS = ("host", "dev")
MIN_SETUPTOOLS = (77, 0)  # the SPDX `license` string; the build runs without isolation, on this environment's setuptools


def setuptools_problem() -> str | None:
    """Why this environment cannot build the wheels (setuptools missing or older than MIN_SETUPTOOLS), or None."""
    from importlib.metadata import PackageNotFoundError, version

    need = ".".join(map(str, MIN_SETUPTOOLS))
    try:
        found = version("setuptools")
    except PackageNotFoundError:
        return f"building the wheels needs setuptools>={need}, and this environment has none: pip install 'setuptools>={need}'"
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if parts < MIN_SETUPTOOLS:
        return f"building the wheels needs setuptools>={need} (the SPDX license field); this one has {found}: pip install 'setuptools>={need}'"
    return None


RUNTIME_README = """# edge-transfer-runtime

The device side of [edge-transfer](https://pypi.org/project/edge-transfer/): load, verify, check, run and deploy
bundles exported and validated on the host. It needs numpy, Pillow, filelock, cryptography and one backend, never
torch:

    pip install "edge-transfer-runtime[onnxruntime]"     # or [openvino], [tensorrt-cu12], [jetson]; add [text], [video]
    edge-transfer check BUNDLE

The `edge-transfer` command here has the device commands (predict, val, enroll, identify, imprint, check, bench,
inspect, keygen, sign, deploy, rollback, build-engine); installing the host package adds train and export.
"""


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def _pyproject(
    project: dict[str, object], extras: dict[str, list[str]], scripts: dict[str, str], entry_points: dict[str, dict[str, str]], packages: list[str]
) -> str:
    lines = ["[build-system]", 'requires = ["setuptools>=77"]', 'build-backend = "setuptools.build_meta"', "", "[project]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in project.items()]
    lines += ["", "[project.optional-dependencies]"] + [f'"{k}" = {_toml_value(v)}' for k, v in extras.items()]
    if scripts:
        lines += ["", "[project.scripts]"] + [f'"{k}" = {_toml_value(v)}' for k, v in scripts.items()]
    for group, points in entry_points.items():
        lines += ["", f'[project.entry-points."{group}"]'] + [f'"{k}" = {_toml_value(v)}' for k, v in points.items()]
    lines += ["", "[tool.setuptools.packages.find]", f"include = {_toml_value(packages)}", ""]
    return "\n".join(lines)


def _stage(folder: Path, packages: list[str], pyproject: str, readme: str) -> None:
    for package in packages:
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "pyproject.toml").write_text(pyproject)
    (folder / "README.md").write_text(readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="where the wheels go (default dist/)")
    args = ap.parse_args()
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version, extras = root["version"], root["optional-dependencies"]
    common = {k: root[k] for k in ("version", "requires-python", "license")}
    runtime_extras = {
        name: [r.replace("edge-transfer[", "edge-transfer-runtime[") for r in reqs] for name, reqs in extras.items() if name not in HOST_ONLY_EXTRAS
    }
    runtime = _pyproject(
        {
            "name": "edge-transfer-runtime",
            **common,
            "description": "edge-transfer's device runtime: verify, check, run and deploy validated bundles (no torch)",
            "readme": "README.md",
            "dependencies": root["dependencies"],
        },
        runtime_extras,
        dict(root["scripts"]),
        {},
        ["runtimes*"],
    )
    pin = f"edge-transfer-runtime=={version}"
    host = _pyproject(
        {"name": "edge-transfer", **common, "description": root["description"], "readme": "README.md", "dependencies": [pin]},
        {"host": extras["host"], **{name: [f"edge-transfer-runtime[{name}]=={version}"] for name in runtime_extras}},
        {},
        dict(root["entry-points"]),
        ["edge_transfer*", "converters*"],
    )
    if (problem := setuptools_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-transfer-wheels-") as tmp:
        for name, packages, pyproject, readme in (
            ("runtime", ["runtimes"], runtime, RUNTIME_README),
            ("host", ["edge_transfer", "converters"], host, (ROOT / "README.md").read_text()),
        ):
            stage = Path(tmp) / name
            _stage(stage, packages, pyproject, readme)
            cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(stage)]
            subprocess.run(cmd, check=True)
    for wheel in sorted(out.glob(f"*-{version}-*.whl")):
        print(f"{wheel.relative_to(ROOT) if wheel.is_relative_to(ROOT) else wheel}  {wheel.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
