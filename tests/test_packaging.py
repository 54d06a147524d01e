"""The release wheels: `make wheels` splits the code into the device's edge-transfer-runtime and the
host's edge-transfer, and the README's device commands are the ones `make device-test` runs in CI (which installs
them in a fresh venv without torch; that needs the package registry, so it runs there, not here)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from conftest import ROOT

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _readme_device_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On the device") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_device_commands_are_what_ci_runs():
    script = (ROOT / "scripts" / "device_install_check.sh").read_text().replace("$VERSION", VERSION)
    lines = _readme_device_block()
    assert lines[0] == "make wheels" and any("pip install" in line for line in lines) and lines[-1].endswith("check photos-onnx")
    for line in lines:
        assert re.search(rf"^{re.escape(line)}$", script, re.M), f"README line not run by make device-test: {line}"
    assert "make device-test" in (ROOT / ".ci" / "run").read_text()


def test_wheels_split_device_and_host(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_wheels.py"), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    runtime = zipfile.ZipFile(tmp_path / f"edge_transfer_runtime-{VERSION}-py3-none-any.whl")
    host = zipfile.ZipFile(tmp_path / f"edge_transfer-{VERSION}-py3-none-any.whl")
    top = {name.split("/")[0] for name in runtime.namelist()}
    assert top == {"runtimes", f"edge_transfer_runtime-{VERSION}.dist-info"}
    assert "runtimes/cli/__init__.py" in runtime.namelist() and "runtimes/backends/onnxruntime_backend.py" in runtime.namelist()
    assert {name.split("/")[0] for name in host.namelist()} == {"edge_transfer", "converters", f"edge_transfer-{VERSION}.dist-info"}
    meta = runtime.read(f"edge_transfer_runtime-{VERSION}.dist-info/METADATA").decode()
    requires = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    assert [r for r in requires if "extra ==" not in r] == ["numpy>=1.24", "pillow>=10.0", "filelock>=3.12", "cryptography>=42"]
    assert not any(r.startswith(("torch", "timm", "onnx>", "transformers")) for r in requires)
    assert 'onnxruntime>=1.17; extra == "onnxruntime"' in requires
    # OpenVINO 2025.4 and later give wrong int8 answers on Arm: the extra stays below them there (tests/test_arm.py)
    assert 'openvino>=2024.0; platform_machine != "aarch64" and extra == "openvino"' in requires
    assert 'openvino<2025.4,>=2024.0; platform_machine == "aarch64" and extra == "openvino"' in requires
    assert "edge-transfer = runtimes.cli:main" in runtime.read(f"edge_transfer_runtime-{VERSION}.dist-info/entry_points.txt").decode()
    host_meta = host.read(f"edge_transfer-{VERSION}.dist-info/METADATA").decode()
    assert f"Requires-Dist: edge-transfer-runtime=={VERSION}\n" in host_meta and 'torch>=2.4; extra == "host"' in host_meta
    points = host.read(f"edge_transfer-{VERSION}.dist-info/entry_points.txt").decode()
    assert "[edge_transfer.commands]" in points and "console_scripts" not in points  # one owner of the command


def test_make_wheels_says_which_setuptools_it_needs(monkeypatch, tmp_path):
    """The wheels build without isolation, on the environment's setuptools: one older than 77 (a fresh venv has 65)
    cannot read the SPDX license field, and the build says so before it starts, instead of setuptools' own error."""
    import importlib.metadata
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import build_wheels

    assert build_wheels.setuptools_problem() is None  # make setup installs what it needs
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "65.5.0")
    assert "needs setuptools>=77.0" in (build_wheels.setuptools_problem() or "")
    monkeypatch.setattr(sys, "argv", ["build_wheels.py", "--out", str(tmp_path / "dist")])
    assert build_wheels.main() == 2 and not (tmp_path / "dist").exists()
