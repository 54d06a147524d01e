"""Arm devices, in what can be checked on this x86 host: fp16 judged against a reference that really computes in fp16,
what ONNX Runtime reports it computes in, and OpenVINO int8 refused on Arm where its int8 kernels give wrong answers.
Arm's own answers come from `make arm-test` (qemu-user, scripts/arm_test.py). Here the Arm CPU is a /proc/cpuinfo
text given to the runtime in place of this machine's (the only thing mocked: an Arm CPU cannot exist on this host)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import runtimes
from runtimes.backends import onnxruntime_backend, openvino_backend
from runtimes.cpu import cpu_features
from runtimes.errors import BackendUnavailableError

from conftest import rehash_bundle, run_cli

A76 = cpu_features("Features : fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n", "aarch64")
A72 = cpu_features("Features : fp asimd aes pmull sha1 sha2 crc32 cpuid\n", "aarch64")


def test_fp16_accumulation_rounds_every_step():
    from converters.fp16_reference import fma_matmul

    # 4096 ones summed into an fp16 accumulator stop at 2048 (2048 + 1 rounds back to 2048); torch's CPU half
    # matmul accumulates in fp32 and gets 4096, which is what an x86 host shows
    ones = torch.ones(1, 4096, dtype=torch.float16)
    assert float(fma_matmul(ones, ones.t())) == 2048.0
    assert float((ones.float() @ ones.float().t()).half()) == 4096.0


def test_fp16_bundles_carry_a_tolerance_from_fp16_arithmetic(format_bundles):
    for fmt in ("onnx-fp16", "openvino-fp16", "tensorrt-fp16"):
        section = runtimes.read_manifest(format_bundles[fmt]).raw["self_test"]
        real = section["at_export"]["fp16_arithmetic"]
        # the reference computing in fp16 drifts more than the host's fp16 artifact, and the tolerance covers it
        assert real["rel_err"] > section["at_export"]["rel_err"], fmt
        assert section["tolerance"]["max_rel_err"] >= 1.5 * real["rel_err"] * 0.999, fmt
        assert section["tolerance"]["min_agreement"] <= real["agreement"], fmt
    assert "fp16_arithmetic" not in runtimes.read_manifest(format_bundles["onnx"]).raw["self_test"]["at_export"]


def test_a_perturbed_fp16_bundle_fails_check(format_bundles, tmp_path: Path):
    bundle = tmp_path / "perturbed"
    shutil.copytree(format_bundles["onnx-fp16"], bundle)
    model = onnx.load(bundle / "model.onnx")
    head = next(t for t in model.graph.initializer if t.name.startswith("head") and t.name.endswith("weight"))  # the classifier's
    weights = numpy_helper.to_array(head)
    head.CopyFrom(numpy_helper.from_array((weights * np.float16(1.05)).astype(np.float16), head.name))  # 5% larger logits
    onnx.save(model, bundle / "model.onnx")
    rehash_bundle(bundle)  # the checksums pass: only the self-test can tell
    said = run_cli("check", str(bundle), block_torch=True)
    assert said.returncode == 1 and "logits drifted beyond tolerance" in said.stdout + said.stderr, said.stdout + said.stderr
    assert run_cli("check", str(format_bundles["onnx-fp16"]), block_torch=True).returncode == 0


def test_onnxruntime_reports_f16_only_where_the_cpu_computes_it(format_bundles, monkeypatch: pytest.MonkeyPatch):
    here = cpu_features()
    with runtimes.load(format_bundles["onnx-fp16"]) as p:
        d = p.describe()
    if not (here.arm64 and here.fp16):
        assert d["inference_precision"] == "f32" and d["computes"] == "f32 (fp16 weights widened: no fp16 arithmetic here)"
    for cpu, expected in ((A76, "f16"), (A72, "f32")):
        monkeypatch.setattr(onnxruntime_backend, "cpu_features", lambda cpu=cpu: cpu)
        with runtimes.load(format_bundles["onnx-fp16"]) as p:
            assert p.inference_precision == expected
    with runtimes.load(format_bundles["onnx"]) as p:
        assert p.describe()["computes"] == "f32"


def test_openvino_int8_is_refused_on_arm_by_version(format_bundles, monkeypatch: pytest.MonkeyPatch):
    problem = openvino_backend.arm_int8_problem
    assert problem("2026.4.1-22982-e213a147257-releases/2026/4", True, "int8").startswith("OpenVINO 2026.4.1 gives wrong int8 answers")
    assert problem("2025.4.0", True, "int8") and problem("not-a-version", True, "int8")
    assert problem("2025.3.0", True, "int8") is None and problem("2025.2.0-19140", True, "int8") is None
    assert problem("2026.4.1", False, "int8") is None and problem("2026.4.1", True, "fp32") is None
    import openvino

    monkeypatch.setattr(openvino_backend, "cpu_features", lambda: A76)
    if problem(openvino.__version__, True, "int8"):
        with pytest.raises(
            BackendUnavailableError, match=f"OpenVINO {openvino.__version__.split('-')[0]} gives wrong int8 answers on Arm CPUs.*openvino<2025.4"
        ):
            runtimes.load(format_bundles["openvino-int8"])
    with runtimes.load(format_bundles["openvino"]) as p:  # float bundles run as before
        assert p.precision == "fp32"


def test_the_openvino_extra_stays_below_the_broken_releases_on_aarch64():
    import tomllib
    from packaging.requirements import Requirement

    extra = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]["openvino"]

    def chosen(machine: str) -> list[Requirement]:
        reqs = [Requirement(r) for r in extra]
        return [r for r in reqs if r.marker is None or r.marker.evaluate({"platform_machine": machine, "extra": "openvino"})]

    (arm,) = chosen("aarch64")
    assert not arm.specifier.contains("2025.4.0") and not arm.specifier.contains("2026.4.1") and arm.specifier.contains("2025.3.0")
    assert openvino_backend.ARM_INT8_RIGHT.removeprefix("openvino") in str(arm.specifier)  # what the refusal tells users
    (x86,) = chosen("x86_64")
    assert x86.specifier.contains("2026.4.1")


def test_the_arm_test_cache_is_never_a_folder_of_the_users(tmp_path: Path):
    """`make arm-test --cache DIR` replaces and deletes folders under DIR: a folder it did not make is refused."""
    import hashlib

    from runtimes.errors import OutputError

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from arm_device import ARM_CACHE_MARK, EmulatedDevice

    home = tmp_path / "home"
    (home / "root").mkdir(parents=True)
    (home / "root" / "notes.txt").write_text("mine")
    before = hashlib.sha256((home / "root" / "notes.txt").read_bytes()).hexdigest()
    with pytest.raises(OutputError, match="--cache .*not an arm-test cache edge-transfer made"):
        EmulatedDevice(home)
    assert hashlib.sha256((home / "root" / "notes.txt").read_bytes()).hexdigest() == before and not (home / ARM_CACHE_MARK).exists()
    EmulatedDevice(tmp_path / "new")  # absent: made and marked, then ours on the next run
    assert (tmp_path / "new" / ARM_CACHE_MARK).is_file()
    EmulatedDevice(tmp_path / "new")
