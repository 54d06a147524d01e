"""TensorRT: the plain logic runs everywhere (profiles, build settings, compatibility decisions, cache keys and the
engine cache, the TensorRT-ready export); the real build and inference are hardware tests that run where TensorRT
and an NVIDIA GPU exist and skip with the reason elsewhere. Nothing here pretends TensorRT ran: the backend's
control flow is tested against a named stand-in in `test_tensorrt_control_flow.py`."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.engines.tensorrt_build import check_cuda_python, choose_lean_runtime, network_flag_names
from runtimes.engines.tensorrt_engine import (
    BuildSettings,
    EngineCache,
    EngineTarget,
    cache_key,
    check_buildable,
    check_compatible,
    timing_cache_path,
)
from runtimes.engines.tensorrt_profile import BatchProfile, derive_profile
from runtimes.errors import BackendUnavailableError, EngineIncompatibleError, InputError

from conftest import SMALL, run_cli

ORIN = EngineTarget("10.3.0", "Orin", (8, 7))
ORIN_AGX = EngineTarget("10.3.0.30", "Orin", (8, 7), integrated=True, dla_cores=2)
ORIN_NANO = EngineTarget("10.3.0.30", "Orin Nano", (8, 7), integrated=True, dla_cores=0)
RTX = EngineTarget("10.3.0.30", "NVIDIA GeForce RTX 4090", (8, 9))
SETTINGS = BuildSettings("fp16", BatchProfile(1, 1, 16))


def _has_tensorrt_gpu() -> str | None:
    """None when TensorRT and a GPU are usable here, else why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (its libraries come from NVIDIA's index, unreachable from this machine)"
    try:
        from runtimes.engines.tensorrt_build import running_target

        running_target()
    except Exception as exc:  # no GPU, no driver, no cuda-python
        return f"no usable NVIDIA GPU: {exc}"
    return None


def test_profile_follows_the_bundle_batch():
    assert derive_profile("batch") == BatchProfile(1, 1, 16)
    assert derive_profile("batch", opt_batch=4, max_batch=8) == BatchProfile(1, 4, 8)
    assert derive_profile(4) == BatchProfile(4, 4, 4)
    assert BatchProfile(1, 4, 8).shapes(SMALL, SMALL)[2] == (8, SMALL, SMALL, 3)
    with pytest.raises(InputError, match="fixed batch of 4"):
        derive_profile(4, max_batch=8)
    with pytest.raises(InputError, match="min <= opt <= max"):
        derive_profile("batch", min_batch=4, opt_batch=2)


def test_build_settings_are_checked_and_round_trip():
    s = BuildSettings("int8", BatchProfile(2, 2, 2), dla_core=0, version_compatible=True)
    assert BuildSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(InputError, match="precision"):
        BuildSettings("int4", BatchProfile(1, 1, 1))
    with pytest.raises(InputError, match="DLA"):
        BuildSettings("fp16", BatchProfile(1, 1, 1), dla_core=0, hardware_compatible=True)
    with pytest.raises(InputError, match="malformed"):
        BuildSettings.from_dict({"precision": "fp16"})


def test_dla_settings_need_a_static_profile_and_fp16_or_int8():
    BuildSettings("fp16", BatchProfile(2, 2, 2), dla_core=0)
    with pytest.raises(InputError, match="fp16 or int8 only"):
        BuildSettings("fp32", BatchProfile(1, 1, 1), dla_core=0)
    with pytest.raises(InputError, match=r"static batch.*1/1/16"):
        BuildSettings("int8", BatchProfile(1, 1, 16), dla_core=0)
    assert derive_profile("batch", static=True) == BatchProfile(1, 1, 1)
    assert derive_profile("batch", opt_batch=4, static=True) == BatchProfile(4, 4, 4)
    assert derive_profile(8, static=True) == BatchProfile(8, 8, 8)
    with pytest.raises(InputError, match="one batch size"):
        derive_profile("batch", opt_batch=1, max_batch=8, static=True)


def test_dla_export_options_are_refused_before_any_work_or_get_a_static_profile(digits_run, tmp_path: Path):
    import edge_transfer as et

    with pytest.raises(InputError, match="format tensorrt: the DLA runs fp16 or int8 only"):
        et.export(digits_run.path, out=tmp_path / "x", format="tensorrt", tensorrt={"dla_core": 0})
    assert not (tmp_path / "x").exists()
    result = run_cli("export", str(digits_run.path), "--format", "tensorrt", "--trt-dla-core", "0", "--out", str(tmp_path / "y"))
    assert result.returncode != 0 and "DLA runs fp16 or int8" in result.stderr and "Traceback" not in result.stderr
    (r,) = et.export(digits_run.path, out=tmp_path / "dla", format="tensorrt-fp16", tensorrt={"dla_core": 0})
    engine = runtimes.read_manifest(r.path).raw["model"]["tensorrt"]
    assert engine["dla_core"] == 0 and engine["profile"] == {"min": 1, "opt": 1, "max": 1}


def test_build_settings_this_device_cannot_honour_are_refused_before_building():
    s16 = BuildSettings("fp16", BatchProfile(1, 1, 1))
    check_buildable(s16, ORIN_AGX)
    with pytest.raises(EngineIncompatibleError, match="not supported on Orin"):
        check_buildable(BuildSettings("fp16", BatchProfile(1, 1, 16), hardware_compatible=True), ORIN_AGX)
    with pytest.raises(EngineIncompatibleError, match="8.0 or newer to build"):
        check_buildable(BuildSettings("fp16", BatchProfile(1, 1, 16), hardware_compatible=True), EngineTarget("10.3.0", "Tesla T4", (7, 5)))
    check_buildable(BuildSettings("fp16", BatchProfile(1, 1, 1), dla_core=1), ORIN_AGX)
    with pytest.raises(EngineIncompatibleError, match="DLA core 0, but Orin Nano has no DLA"):
        check_buildable(BuildSettings("fp16", BatchProfile(1, 1, 1), dla_core=0), ORIN_NANO)
    with pytest.raises(EngineIncompatibleError, match="too old"):
        check_buildable(s16, EngineTarget("8.4.1", "Xavier", (7, 2), integrated=True))
    with pytest.raises(EngineIncompatibleError, match="8.6 or newer"):
        check_buildable(BuildSettings("fp16", BatchProfile(1, 1, 16), version_compatible=True), EngineTarget("8.5.2", "Orin", (8, 7)))


def test_network_flags_per_tensorrt_major():
    assert network_flag_names("8.5.2.2", has_strongly_typed=False) == ["EXPLICIT_BATCH"]  # JetPack 5: implicit batch otherwise
    assert network_flag_names("8.6.1", has_strongly_typed=False) == ["EXPLICIT_BATCH"]
    assert network_flag_names("9.3.0", has_strongly_typed=True) == ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    assert network_flag_names("10.3.0.30", has_strongly_typed=True) == ["STRONGLY_TYPED"]
    assert network_flag_names("11.4.0.106", has_strongly_typed=True) == ["STRONGLY_TYPED"]


def test_cuda_python_must_match_the_driver_and_tensorrt_cuda_major():
    check_cuda_python("12.6.2", 12060)  # JetPack 6
    check_cuda_python("12.9.0", 13000)  # older bindings on a newer driver run
    check_cuda_python(None, 12060)
    with pytest.raises(BackendUnavailableError, match=r"cuda-python 13\.0\.1 needs a CUDA 13 driver.*CUDA 12\.6.*'cuda-python>=12,<13'"):
        check_cuda_python("13.0.1", 12060)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT here is built for CUDA 13"):
        check_cuda_python("12.9.0", 13000, tensorrt_cuda=13)


def test_every_tensorrt_extra_pins_cuda_python_to_one_major():
    import re

    import tomllib

    from conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = 0
    for name, reqs in extras.items():
        for req in reqs:
            m = re.fullmatch(r"cuda-python>=(\d+)\.0,<(\d+)", req.replace(" ", ""))
            if req.startswith("cuda-python"):
                assert m and int(m.group(2)) == int(m.group(1)) + 1, (name, req)
                cuda = re.search(r"cu(\d+)$", name)
                assert cuda is None or int(cuda.group(1)) == int(m.group(1)), (name, req)
                pinned += 1
            assert not req.startswith("tensorrt>="), f"[{name}]: pip's tensorrt metapackage picks a CUDA major by itself"
    assert pinned >= 3 and "jetson" in extras and not any(r.startswith("tensorrt") for r in extras["jetson"])


def test_the_lean_runtime_must_be_the_builders_version():
    own = "libnvinfer_lean.so.10"
    assert choose_lean_runtime("10.3.0.30", "10.3.0.30", None, own) == own  # same TensorRT here: its own library
    with pytest.raises(EngineIncompatibleError, match="libnvinfer_lean of TensorRT 10.3.0.30"):
        choose_lean_runtime("10.3.0.30", "10.7.0.23", None, own)
    with pytest.raises(EngineIncompatibleError, match="is TensorRT 10.7"):
        choose_lean_runtime("10.3.0.30", "10.7.0.23", "/usr/lib/aarch64-linux-gnu/libnvinfer_lean.so.10.7.0", own)
    given = "/opt/tensorrt-10.3/lib/libnvinfer_lean.so.10.3.0"
    assert choose_lean_runtime("10.3.0.30", "10.7.0.23", given, own) == given
    assert choose_lean_runtime("10.3.0.30", "10.7.0.23", "/opt/lean.so", own) == "/opt/lean.so"  # no version in the name


def test_engines_are_refused_on_another_tensorrt_or_gpu_naming_both_sides():
    check_compatible(ORIN, SETTINGS, ORIN)
    with pytest.raises(EngineIncompatibleError, match=r"TensorRT 10\.3\.0.*TensorRT 10\.7\.0"):
        check_compatible(ORIN, SETTINGS, EngineTarget("10.7.0", "Orin", (8, 7)))
    with pytest.raises(EngineIncompatibleError, match=r"Orin \(sm 8\.7\).*RTX 4090 \(sm 8\.9\)"):
        check_compatible(ORIN, SETTINGS, EngineTarget("10.3.0", "RTX 4090", (8, 9)))
    compatible = BuildSettings("fp16", BatchProfile(1, 1, 16), version_compatible=True, hardware_compatible=True)
    check_compatible(ORIN, compatible, EngineTarget("10.7.0", "RTX 4090", (8, 9)))  # newer TRT, Ampere+ GPU
    with pytest.raises(EngineIncompatibleError, match="older"):
        check_compatible(ORIN, compatible, EngineTarget("10.2.0", "Orin", (8, 7)))
    with pytest.raises(EngineIncompatibleError, match="8.0 or newer"):
        check_compatible(ORIN, compatible, EngineTarget("10.3.0", "T4", (7, 5)))
    with pytest.raises(EngineIncompatibleError, match="10.3.0.26.*10.3.0.30"):  # the fourth part counts
        check_compatible(EngineTarget("10.3.0.26", "Orin", (8, 7)), SETTINGS, EngineTarget("10.3.0.30", "Orin", (8, 7)))
    with pytest.raises(EngineIncompatibleError, match="Orin Nano"):  # same sm 8.7, another device
        check_compatible(ORIN_AGX, SETTINGS, ORIN_NANO)
    with pytest.raises(EngineIncompatibleError, match="integrated Jetson/DRIVE GPUs"):
        check_compatible(RTX, compatible, ORIN_AGX)
    with pytest.raises(EngineIncompatibleError, match="later 10.x versions only"):
        check_compatible(ORIN, compatible, EngineTarget("11.0.0", "Orin", (8, 7)))


def test_cache_key_covers_everything_that_makes_an_engine():
    base = cache_key("a" * 64, ORIN, SETTINGS)
    assert base == cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 1, 16)))
    others = {
        cache_key("b" * 64, ORIN, SETTINGS),
        cache_key("a" * 64, EngineTarget("10.4.0", "Orin", (8, 7)), SETTINGS),
        cache_key("a" * 64, EngineTarget("10.3.0", "Orin", (8, 6)), SETTINGS),
        cache_key("a" * 64, ORIN, BuildSettings("int8", BatchProfile(1, 1, 16))),
        cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 4, 16))),
        cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 1, 1), dla_core=1)),
        cache_key("a" * 64, EngineTarget("10.3.0.1", "Orin", (8, 7)), SETTINGS),  # full version, not three parts
        cache_key("a" * 64, EngineTarget("10.3.0", "Orin Nano", (8, 7)), SETTINGS),  # same sm, another device
        cache_key("a" * 64, EngineTarget("10.3.0", "Orin", (8, 7), dla_cores=2), SETTINGS),
    }
    assert base not in others and len(others) == 9
    assert timing_cache_path("/c", ORIN_AGX) != timing_cache_path("/c", ORIN_NANO) != timing_cache_path("/c", RTX)


def test_engine_cache_rebuilds_corrupt_or_mismatched_entries(tmp_path: Path):
    cache = EngineCache(tmp_path)
    key = cache_key("a" * 64, ORIN, SETTINGS)
    assert cache.load(key, ORIN, SETTINGS) is None
    cache.store(key, b"plan-bytes", ORIN, SETTINGS)
    assert cache.load(key, ORIN, SETTINGS) == b"plan-bytes"
    assert cache.load(key, EngineTarget("10.4.0", "Orin", (8, 7)), SETTINGS) is None  # other TensorRT: evicted
    assert not cache.entry(key).exists()
    cache.store(key, b"plan-bytes", ORIN, SETTINGS)
    (cache.entry(key) / "engine.plan").write_bytes(b"plan-bytez")  # corrupted on disk
    assert cache.load(key, ORIN, SETTINGS) is None and not cache.entry(key).exists()
    cache.store(key, b"plan-bytes", ORIN, SETTINGS)
    (cache.entry(key) / "meta.json").write_text("{not json")
    assert cache.load(key, ORIN, SETTINGS) is None
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp directories left behind


def test_tensorrt_bundles_carry_a_checked_onnx_and_build_settings(digits_run, tmp_path: Path):
    import onnx
    from onnx import numpy_helper

    import edge_transfer as et

    results = et.export(digits_run.path, out=tmp_path / "trt", format="tensorrt,tensorrt-int8", calibration_size=32, allow_failed_validation=True)
    for r in results:
        m = runtimes.read_manifest(r.path)
        assert m.backend == "tensorrt" and m.format == "onnx"
        assert m.raw["model"]["tensorrt"]["profile"] == {"min": 1, "opt": 1, "max": 16}
        assert m.raw["model"]["tensorrt"]["precision"] == m.precision
        assert "onnxruntime" in m.validation["checked_with"] and m.validation["count"] > 0
    fp32, int8 = results
    assert fp32.passed and fp32.validation["top1_agreement"] == 1.0
    assert int8.validation["top1_agreement"] > 0.8
    graph = onnx.load(int8.path / "model.onnx").graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # TensorRT needs symmetric activations
    assert runtimes.read_manifest(int8.path).calibration["split"] == "train"
    # TensorRT's parser takes DequantizeLinear on int8 only: biases stay float (no int32 DequantizeLinear)
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 0
    assert _int32_dequantize_inputs(graph) == []
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailableError, match=r"JetPack.*edge-transfer-runtime\[jetson\].*edge-transfer-runtime\[tensorrt-cu12\]"):
            runtimes.load(fp32.path)


def _int32_dequantize_inputs(graph) -> list[str]:
    """Names of int32 tensors that feed a DequantizeLinear (what TensorRT's ONNX parser refuses)."""
    from onnx import TensorProto

    int32 = {i.name for i in graph.initializer if i.data_type == TensorProto.INT32}
    return [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]


@pytest.mark.tensorrt
def test_engine_builds_on_this_gpu_agrees_with_onnxruntime_and_is_cached(digits_run, tmp_path: Path):
    reason = _has_tensorrt_gpu()
    if reason:
        pytest.skip(reason)
    import edge_transfer as et

    (r,) = et.export(digits_run.path, out=tmp_path / "trt16", format="tensorrt-fp16")
    images = np.random.default_rng(0).integers(0, 255, (4, SMALL, SMALL, 3), dtype=np.uint8)
    with runtimes.load(r.path, cache_dir=str(tmp_path / "engines")) as p:
        logits = p.run(images)
        engine = Path(p.describe()["engine"])
    with runtimes.load(r.path, cache_dir=str(tmp_path / "engines")) as again:  # second load: from the cache
        assert Path(again.describe()["engine"]) == engine
    from runtimes.backends.onnxruntime_backend import OnnxRuntimePredictor

    ref = OnnxRuntimePredictor(runtimes.open_bundle(r.path)).run(images)
    assert (logits.argmax(1) == ref.argmax(1)).all() and np.abs(logits - ref).max() < 0.05


@pytest.mark.cuda
def test_cuda_training_step_and_export_from_a_cuda_model(tmp_path: Path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    from converters.onnx_export import export_onnx
    from edge_transfer.model import ImageClassifier, build_head
    from edge_transfer.sources import create_backbone

    bb = create_backbone("efficientnet_lite0", pretrained=False)
    model = ImageClassifier(bb, build_head(bb.num_features, 3), ["a", "b", "c"]).cuda()
    x = torch.randint(0, 255, (4, 224, 224, 3), dtype=torch.uint8, device="cuda")
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0], device="cuda"))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    export_onnx(model.eval(), tmp_path / "m.onnx", (224, 224))
    assert (tmp_path / "m.onnx").stat().st_size > 1_000_000


def test_build_engine_cli_says_what_is_missing(format_bundles, tmp_path: Path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the hardware test below runs build-engine instead")
    result = run_cli("build-engine", str(format_bundles["tensorrt"]), "--cache-dir", str(tmp_path / "engines"), block_torch=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "TensorRT is not installed" in result.stderr or "'tensorrt' is not installed" in result.stderr
    assert "JetPack" in result.stderr and not (tmp_path / "engines").exists()


@pytest.mark.tensorrt
def test_build_engine_cli_builds_caches_and_writes_an_engine_bundle(format_bundles, tmp_path: Path):
    reason = _has_tensorrt_gpu()
    if reason:
        pytest.skip(reason)
    cache = tmp_path / "fresh" / "engines"  # a cache directory that does not exist yet
    result = run_cli(
        "build-engine", str(format_bundles["tensorrt-fp16"]), "--cache-dir", str(cache), "--json", "--out", str(tmp_path / "engine"), block_torch=True
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert Path(info["engine"]).parent == cache and list(cache.glob("timing-*.cache"))
    with runtimes.load(tmp_path / "engine") as p:
        assert p.run(np.zeros((1, SMALL, SMALL, 3), np.uint8)).shape == (1, 10)


def test_engine_bundle_records_where_the_engine_was_built(digits_run, tmp_path: Path):
    """The bundle writing only: the plan bytes here are a stand-in (no TensorRT on this machine to build one)."""
    import edge_transfer as et
    from runtimes.engines.tensorrt_engine import write_engine_bundle

    (r,) = et.export(digits_run.path, out=tmp_path / "trt", format="tensorrt-fp16")
    written = write_engine_bundle(runtimes.open_bundle(r.path), b"stand-in plan", ORIN, tmp_path / "engine")
    m = runtimes.read_manifest(written.path)
    assert m.backend == "tensorrt" and m.format == "tensorrt-engine" and m.entrypoint == "model.plan"
    assert m.raw["model"]["built_on"] == {
        "tensorrt_version": "10.3.0",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "integrated": False,
        "dla_cores": 0,
    }
    assert m.raw["model"]["tensorrt"]["precision"] == "fp16" and m.raw["producer"]["tensorrt"] == "10.3.0"
    assert m.validation == runtimes.read_manifest(r.path).validation  # what the ONNX was checked against travels along
    # the plan, and the self-test's golden images and references with it (so `check` can run on the engine bundle)
    source = runtimes.read_manifest(r.path)
    carried = {f.path for f in source.files if f.path != source.entrypoint}
    assert {f.path for f in m.files} == carried | {"model.plan"} and any(p.startswith("selftest/golden/") for p in carried)
    assert runtimes.open_bundle(written.path).size_bytes == len(b"stand-in plan") + sum(f.bytes for f in source.files if f.path in carried)


def test_onnxruntime_gpu_providers_never_fall_back_silently(digits_bundle: Path):
    import onnxruntime as ort

    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if provider in ort.get_available_providers():
            continue  # covered by the cuda-marked test below on GPU machines
        with pytest.raises(BackendUnavailableError, match=f"no {provider}.*onnxruntime-gpu"):
            runtimes.load(digits_bundle, device=device)


@pytest.mark.cuda
def test_onnxruntime_cuda_provider_runs_where_installed(digits_bundle: Path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDAExecutionProvider is not installed here")
    images = np.random.default_rng(0).integers(0, 255, (4, SMALL, SMALL, 3), dtype=np.uint8)
    with runtimes.load(digits_bundle, device="cuda") as gpu, runtimes.load(digits_bundle) as cpu:
        assert gpu.describe()["providers"][0] == "CUDAExecutionProvider"
        assert (gpu.run(images).argmax(1) == cpu.run(images).argmax(1)).all()


def test_onnxruntime_tensorrt_provider_settings_and_node_placement(digits_bundle: Path, tmp_path: Path):
    """The TensorRT EP's options (engine/timing caches, the bundle's batch range and precision) and the profile
    reader that reports which provider ran each node; the GPU run itself is the cuda-marked test above."""
    import onnxruntime as ort

    from runtimes.backends.onnxruntime_backend import placement_from_profile

    with runtimes.load(digits_bundle) as p:
        opts = p._tensorrt_options(str(tmp_path))
        assert opts["trt_engine_cache_enable"] and Path(opts["trt_engine_cache_path"]).is_dir()
        assert opts["trt_timing_cache_path"] == opts["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt")
        assert opts["trt_profile_min_shapes"] == f"images:1x{SMALL}x{SMALL}x3"
        assert opts["trt_profile_max_shapes"] == f"images:16x{SMALL}x{SMALL}x3"
        assert not opts["trt_fp16_enable"] and not opts["trt_int8_enable"]  # an fp32 bundle runs in fp32
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / "prof")
    session = ort.InferenceSession(str(digits_bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    session.run(None, {"images": np.zeros((1, SMALL, SMALL, 3), np.uint8)})
    placement = placement_from_profile(session.end_profiling())
    assert list(placement) == ["CPUExecutionProvider"] and placement["CPUExecutionProvider"] > 10
    assert placement_from_profile(str(tmp_path / "missing.json")) == {}


def test_gpu_check_without_tensorrt_says_nothing_was_tested_and_fails():
    import subprocess

    from conftest import ROOT

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: gpu_check.sh runs for real")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable}
    )
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: nothing tested: TensorRT is not installed"), result.stderr
