"""What runs on the device is what was validated: pinned inference precision, the self-test every bundle carries,
`edge-transfer check`, and the int8 target-CPU logic (with synthetic /proc/cpuinfo flag sets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.cpu import cpu_features, int8_target_problem, reduce_range_for
from runtimes.errors import InputError, SelfTestFailed

from conftest import SMALL, rehash_bundle, run_cli


def _bf16_runs_here(bundle: Path) -> str | None:
    """None when OpenVINO computes in bf16 on this CPU when asked to, else why not (the test then skips)."""
    with runtimes.load(bundle, inference_precision="bf16") as p:
        got = p.inference_precision
    return None if got == "bf16" else f"OpenVINO on this CPU computes in {got} when asked for bf16 ({cpu_features().summary()})"


def test_openvino_runs_at_the_validated_precision_and_says_so(format_bundles):
    for fmt in ("openvino", "openvino-fp16", "openvino-int8"):
        m = runtimes.read_manifest(format_bundles[fmt])
        assert m.validation["inference_precision"] == "f32", fmt  # the gate ran pinned, and recorded it
        with runtimes.load(format_bundles[fmt]) as p:
            d = p.describe()
            assert d["requested_precision"] == "f32" and d["inference_precision"] == "f32", fmt
    with runtimes.load(format_bundles["onnx"]) as p:
        assert p.describe()["inference_precision"] == "f32"
    with runtimes.load(format_bundles["onnx-fp16"]) as p:  # its fp16 CPU kernels are Arm's: elsewhere it widens to f32
        here = cpu_features()
        assert p.describe()["inference_precision"] == ("f16" if here.arm64 and here.fp16 else "f32")


def test_auto_device_describes_what_it_supports(format_bundles, tmp_path: Path):
    with runtimes.load(format_bundles["openvino"], device="auto") as p:
        d = p.describe()
        assert d["device"].startswith("auto:") and d["inference_precision"] == "f32" and isinstance(d["streams"], int)
    result = run_cli(
        "bench",
        str(format_bundles["openvino"]),
        "--device",
        "AUTO",
        "--hint",
        "throughput",
        "--iterations",
        "20",
        "--warmup",
        "2",
        "--json-stdout",
        "--quiet",
        block_torch=True,
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["runs_at"] == "f32" and row["self_test"] == "pass"
    np.save(tmp_path / "img.npy", np.zeros((SMALL, SMALL, 3), np.uint8))
    predicted = run_cli("predict", str(format_bundles["openvino"]), str(tmp_path / "img.npy"), "--device", "auto", "--json", block_torch=True)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["runtime"]["inference_precision"] == "f32"


def test_backends_without_a_precision_switch_refuse_another_one(format_bundles):
    with pytest.raises(InputError, match="computes this fp32 bundle as written .f32.; it has no bf16 mode"):
        runtimes.load(format_bundles["onnx"], inference_precision="bf16")
    with runtimes.load(format_bundles["onnx"], inference_precision="f32") as p:
        assert p.inference_precision == "f32"
    with pytest.raises(InputError, match="inference_precision must be one of"):
        runtimes.load(format_bundles["openvino"], inference_precision="int4")


def test_every_bundle_carries_a_checksummed_self_test_that_passes_here(format_bundles):
    for fmt, path in format_bundles.items():
        m = runtimes.read_manifest(path)
        section = m.raw["self_test"]
        listed = {f.path for f in m.files}
        assert {section["images"], section["reference"]} <= listed, fmt
        assert section["count"] == 16 and section["reference_from"] == "torch fp32"
        images = np.load(path / section["images"])
        assert images.dtype == np.uint8 and images.shape == (16, SMALL, SMALL, 3)
        if fmt.startswith("tensorrt"):
            continue  # its engine is built on a GPU; the ONNX was checked with ONNX Runtime at export
        with runtimes.load(path) as p:
            result = p.self_test()
            assert result.passed and result.count == 16, (fmt, result.summary())


def test_check_passes_on_a_good_bundle_torch_free(format_bundles):
    result = run_cli("check", str(format_bundles["openvino"]), "--json", block_torch=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["inference_precision"] == "f32" and report["backend"] == "openvino"
    assert set(report["cpu"]) >= {"vnni", "bf16", "fp16"} and report["self_test"]["status"] == "pass"
    text = run_cli("check", str(format_bundles["onnx"]), block_torch=True)
    assert text.returncode == 0 and text.stdout.strip().endswith("PASS") and "computing in f32" in text.stdout


def test_check_and_bench_flag_bf16_drift_where_the_cpu_runs_bf16(format_bundles, tmp_path: Path):
    bundle = format_bundles["openvino"]
    reason = _bf16_runs_here(bundle)
    if reason:
        pytest.skip(reason)
    with runtimes.load(bundle, inference_precision="bf16") as p:
        assert p.describe()["inference_precision"] == "bf16"
        with pytest.raises(SelfTestFailed, match="drifted") as info:
            p.self_test()
        assert info.value.result.rel_err > info.value.result.max_rel_err
    result = run_cli("check", str(bundle), "--inference-precision", "bf16", block_torch=True)
    assert result.returncode == 1 and "computing in bf16" in result.stdout and result.stdout.strip().endswith("FAIL")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    bench = run_cli("bench", str(bundle), "--inference-precision", "bf16", "--iterations", "10", "--warmup", "2", "--quiet", block_torch=True)
    assert bench.returncode == 1 and "not measuring" in bench.stderr and "p50" not in bench.stdout
    forced = run_cli(
        "bench",
        str(bundle),
        "--inference-precision",
        "bf16",
        "--iterations",
        "10",
        "--warmup",
        "2",
        "--quiet",
        "--ignore-self-test",
        "--json-stdout",
        block_torch=True,
    )
    assert forced.returncode == 0, forced.stderr
    (row,) = json.loads(forced.stdout)["rows"]
    assert row["runs_at"] == "bf16" and row["self_test"] == "fail" and "measured anyway" in forced.stderr


def test_a_changed_weight_with_remade_checksums_loads_but_fails_check(digits_bundle: Path, tmp_path: Path):
    import onnx
    from onnx import numpy_helper

    bundle = tmp_path / "tampered"
    shutil.copytree(digits_bundle, bundle)
    model = onnx.load(bundle / "model.onnx")
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(largest)
    largest.CopyFrom(numpy_helper.from_array((w * 1.5).astype(w.dtype), largest.name))
    onnx.save(model, bundle / "model.onnx")
    rehash_bundle(bundle)
    with runtimes.load(bundle) as p:  # integrity passes: the checksums were re-made
        assert p.self_test(raise_on_failure=False).status == "fail"
    result = run_cli("check", str(bundle), block_torch=True)
    assert result.returncode == 1 and result.stdout.strip().endswith("FAIL")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bundle}: self-test on 16 golden images")


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda d: d.update(labels=[d["labels"][1], d["labels"][0], *d["labels"][2:]]), "names differ"),
        (lambda d: d["preprocessing"].update(crop_pct=0.6), "drifted"),
        (lambda d: d["preprocessing"].update(interpolation="nearest"), "drifted"),
    ],
    ids=["labels-swapped", "crop_pct", "interpolation"],
)
def test_a_manifest_edited_by_hand_fails_check(edit, why, digits_bundle: Path, tmp_path: Path):
    """The golden images are stored as they arrived (8x8 digits here, PNG files) and go through the device's own
    read, resize and crop; their expected label names are stored too. So a hand-edited crop, filter or label list,
    which would give wrong answers with no error, fails `check` (before: PASS, and a 3 called "1" at 99.85%)."""
    bundle = tmp_path / "edited"
    shutil.copytree(digits_bundle, bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    originals = doc["self_test"]["originals"]
    assert len(originals) == 16 and all((bundle / p).is_file() for p in originals)
    with runtimes.load(digits_bundle) as p:
        shapes = {p.preprocessing.input_size}
        from PIL import Image

        assert {Image.open(bundle / originals[0]).size} != shapes  # stored at their own size, not the model's
    edit(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    result = run_cli("check", str(bundle), block_torch=True)
    assert result.returncode == 1 and result.stdout.strip().endswith("FAIL"), result.stdout
    assert why in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bundles_without_self_test_data_load_and_check_says_what_is_missing(digits_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "old"
    shutil.copytree(digits_bundle, bundle)
    shutil.rmtree(bundle / "selftest")
    doc = json.loads((bundle / "manifest.json").read_text())
    doc.pop("self_test")
    doc["model"]["files"] = [f for f in doc["model"]["files"] if not f["path"].startswith("selftest/")]
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with runtimes.load(bundle) as p:
        assert p.self_test().status == "missing" and p.predict(np.zeros((SMALL, SMALL, 3), np.uint8))
    result = run_cli("check", str(bundle), block_torch=True)
    assert result.returncode == 1 and "no self-test data" in result.stderr and "re-export" in result.stderr


def test_self_test_files_outside_the_checksummed_list_are_refused(digits_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["self_test"]["reference"] = "../elsewhere.npy"
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with runtimes.load(bundle) as p, pytest.raises(runtimes.BundleError):
        p.self_test()


def test_export_self_test_size_and_zero(digits_run, tmp_path: Path):
    import edge_transfer as et

    (r,) = et.export(digits_run.path, out=tmp_path / "b4", self_test_size=4)
    assert runtimes.read_manifest(r.path).raw["self_test"]["count"] == 4
    (r0,) = et.export(digits_run.path, out=tmp_path / "b0", self_test_size=0)
    assert "self_test" not in runtimes.read_manifest(r0.path).raw and not (r0.path / "selftest").exists()


# ------------------------------------------------------------------------------------------------ target CPUs

AVX2_ONLY = "processor : 0\nflags : fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma\n"
ZEN4 = "flags : sse4_2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
ALDER_LAKE = "flags : avx2 avx_vnni\n"
GRAVITON3 = "Features : fp asimd asimdhp asimddp bf16 i8mm\n"


def test_cpu_features_from_synthetic_cpuinfo():
    assert cpu_features(AVX2_ONLY, "x86_64") == cpu_features(AVX2_ONLY, "x86_64")
    avx2 = cpu_features(AVX2_ONLY, "x86_64")
    assert avx2.avx2 and not avx2.vnni and not avx2.bf16 and not avx2.avx512
    zen4 = cpu_features(ZEN4, "x86_64")
    assert zen4.vnni and zen4.bf16 and zen4.avx512 and not zen4.fp16
    assert cpu_features(ALDER_LAKE, "x86_64").vnni
    arm = cpu_features(GRAVITON3, "aarch64")
    assert arm.arm64 and arm.vnni and arm.bf16 and arm.fp16
    assert "vnni" in zen4.summary() and "none of" in cpu_features("", "x86_64").summary()
    # Arm features by Arm's names (a Cortex-A76 as /proc/cpuinfo lists it, and an A72 with neither dot product nor fp16)
    a76 = cpu_features("Features : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n", "aarch64")
    assert a76.summary().startswith("aarch64: asimddp, fphp (") and "vnni" not in a76.summary() and not a76.i8mm
    a72 = cpu_features("Features : fp asimd evtstrm crc32 cpuid\n", "aarch64")
    assert a72.summary().startswith("aarch64: none of asimddp/fphp/bf16/i8mm/sve") and "avx" not in a72.summary()
    assert arm.i8mm and "i8mm" in arm.summary()


def test_int8_targets_and_where_their_kernels_can_saturate():
    assert reduce_range_for("portable") and reduce_range_for("x86-avx2")
    assert not reduce_range_for("x86-vnni") and not reduce_range_for("arm64")
    avx2, zen4 = cpu_features(AVX2_ONLY, "x86_64"), cpu_features(ZEN4, "x86_64")
    assert "can saturate" in int8_target_problem("x86-vnni", False, avx2)
    assert int8_target_problem("x86-vnni", False, zen4) is None
    assert int8_target_problem("portable", True, avx2) is None
    assert int8_target_problem(None, None, avx2) is None  # a float bundle
    assert int8_target_problem("arm64", False, cpu_features(GRAVITON3, "aarch64")) is None


def test_int8_bundles_record_their_target_cpu_portable_by_default(format_bundles):
    for fmt in ("onnx-int8", "openvino-int8"):
        m = runtimes.read_manifest(format_bundles[fmt])
        target = m.raw["model"]["target_cpu"]
        assert target["name"] == "portable" and target["reduce_range"] is True and "7-bit" in target["reason"], fmt
    assert runtimes.read_manifest(format_bundles["onnx-int8"]).raw["model"]["conversion"]["reduce_range"] is True
    assert runtimes.read_manifest(format_bundles["openvino-int8"]).raw["model"]["conversion"]["overflow_fix"] == "enable"
    assert "target_cpu" not in runtimes.read_manifest(format_bundles["onnx"]).raw["model"]


@pytest.mark.parametrize("fmt", ["onnx-int8", "openvino-int8"])
def test_a_vnni_bundle_on_a_cpu_without_vnni_warns_and_fails_check(fmt, format_bundles, tmp_path: Path, monkeypatch, caplog, capsys):
    """The CPU is synthetic here (an AVX2-only /proc/cpuinfo); the bundle's target is edited to x86-vnni."""
    import runtimes.cpu
    from edge_transfer.cli import main

    bundle = tmp_path / fmt
    shutil.copytree(format_bundles[fmt], bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["model"]["target_cpu"] = {"name": "x86-vnni", "reduce_range": False, "reason": "test"}
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with runtimes.load(bundle) as p:  # this machine's real CPU decides
        assert bool(p.warnings) == (cpu_features().x86 and not cpu_features().vnni)
    monkeypatch.setattr(runtimes.cpu, "cpu_features", lambda: cpu_features(AVX2_ONLY, "x86_64"))
    with caplog.at_level("WARNING"), runtimes.load(bundle) as p:
        assert len(p.warnings) == 1 and "can saturate" in p.describe()["warnings"][0]
    assert any("can saturate" in r.getMessage() for r in caplog.records)
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 1
    # (the fixture writes int8 bundles even when they fail their gate; such a bundle also warns about that on load)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "FAILED its validation gate" not in line]
    assert len(err) == 1 and err[0].startswith("error:") and "--target-cpu portable" in err[0]


def test_a_bundle_that_failed_its_gate_says_so_on_every_load(digits_bundle: Path, tmp_path: Path, caplog):
    """--allow-failed-validation writes a failed bundle; loading it (predict, bench, an app) logs a warning and
    describe() says validation_passed: False. A passing bundle loads quietly."""
    bundle = tmp_path / "failed"
    shutil.copytree(digits_bundle, bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["validation"].update(passed=False, accuracy_drop=0.0334, overridden=True)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with caplog.at_level("WARNING"), runtimes.load(bundle) as p:
        assert p.describe()["validation_passed"] is False
    assert any("FAILED its validation gate at export (accuracy drop +3.34 pt" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"), runtimes.load(digits_bundle) as p:
        assert p.describe()["validation_passed"] is True
    assert not [r for r in caplog.records if "validation gate" in r.getMessage()]
    np.save(tmp_path / "img.npy", np.zeros((SMALL, SMALL, 3), np.uint8))
    out = run_cli("predict", str(bundle), str(tmp_path / "img.npy"), block_torch=True)
    assert out.returncode == 0 and "FAILED its validation gate" in out.stderr
