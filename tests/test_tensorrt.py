"""TensorRT: the plain logic runs everywhere (profiles, build settings, compatibility decisions, cache keys and the
engine cache, the TensorRT-ready export); the real build and inference are hardware tests that run where TensorRT
and an NVIDIA GPU exist and skip with the reason elsewhere. Nothing here pretends TensorRT ran."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import BackendUnavailableError, EngineIncompatibleError, InputError
from runtimes.tensorrt_engine import (BatchProfile, BuildSettings, EngineCache, EngineTarget, cache_key, check_compatible,
                                      derive_profile)

from conftest import SMALL, run_cli

ORIN = EngineTarget("10.3.0", "Orin", (8, 7))
SETTINGS = BuildSettings("fp16", BatchProfile(1, 1, 16))


def _has_tensorrt_gpu() -> str | None:
    """None when TensorRT and a GPU are usable here, else why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (its libraries come from NVIDIA's index, unreachable from this machine)"
    try:
        from runtimes.tensorrt_engine import running_target

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
    s = BuildSettings("int8", BatchProfile(1, 2, 8), dla_core=0, version_compatible=True)
    assert BuildSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(InputError, match="precision"):
        BuildSettings("int4", BatchProfile(1, 1, 1))
    with pytest.raises(InputError, match="DLA"):
        BuildSettings("fp16", BatchProfile(1, 1, 1), dla_core=0, hardware_compatible=True)
    with pytest.raises(InputError, match="malformed"):
        BuildSettings.from_dict({"precision": "fp16"})


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


def test_cache_key_covers_everything_that_makes_an_engine():
    base = cache_key("a" * 64, ORIN, SETTINGS)
    assert base == cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 1, 16)))
    others = {
        cache_key("b" * 64, ORIN, SETTINGS),
        cache_key("a" * 64, EngineTarget("10.4.0", "Orin", (8, 7)), SETTINGS),
        cache_key("a" * 64, EngineTarget("10.3.0", "Orin", (8, 6)), SETTINGS),
        cache_key("a" * 64, ORIN, BuildSettings("int8", BatchProfile(1, 1, 16))),
        cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 4, 16))),
        cache_key("a" * 64, ORIN, BuildSettings("fp16", BatchProfile(1, 1, 16), dla_core=1)),
    }
    assert base not in others and len(others) == 6


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

    results = et.export(digits_run.path, out=tmp_path / "trt", format="tensorrt,tensorrt-int8", calibration_size=32,
                        allow_failed_validation=True)
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
    if _has_tensorrt_gpu() is not None:
        with pytest.raises(BackendUnavailableError, match=r"edge-transfer\[tensorrt\]"):
            runtimes.load(fp32.path)


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
    from edge_transfer.backbones import create_backbone
    from edge_transfer.model import ImageClassifier, build_head

    bb = create_backbone("efficientnet_lite0", pretrained=False)
    model = ImageClassifier(bb, build_head(bb.num_features, 3), ["a", "b", "c"]).cuda()
    x = torch.randint(0, 255, (4, 224, 224, 3), dtype=torch.uint8, device="cuda")
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0], device="cuda"))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    export_onnx(model.eval(), tmp_path / "m.onnx", (224, 224))
    assert (tmp_path / "m.onnx").stat().st_size > 1_000_000


def test_build_engine_cli_says_what_is_missing(digits_run, tmp_path: Path):
    import edge_transfer as et

    (r,) = et.export(digits_run.path, out=tmp_path / "trt", format="tensorrt")
    result = run_cli("build-engine", str(r.path), "--cache-dir", str(tmp_path / "engines"), block_torch=True)
    if _has_tensorrt_gpu() is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2 and "tensorrt" in result.stderr.lower() and "Traceback" not in result.stderr


def test_engine_bundle_records_where_the_engine_was_built(digits_run, tmp_path: Path):
    """The bundle writing only: the plan bytes here are a stand-in (no TensorRT on this machine to build one)."""
    import edge_transfer as et
    from runtimes.tensorrt_engine import write_engine_bundle

    (r,) = et.export(digits_run.path, out=tmp_path / "trt", format="tensorrt-fp16")
    written = write_engine_bundle(runtimes.open_bundle(r.path), b"stand-in plan", ORIN, tmp_path / "engine")
    m = runtimes.read_manifest(written.path)
    assert m.backend == "tensorrt" and m.format == "tensorrt-engine" and m.entrypoint == "model.plan"
    assert m.raw["model"]["built_on"] == {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    assert m.raw["model"]["tensorrt"]["precision"] == "fp16" and m.raw["producer"]["tensorrt"] == "10.3.0"
    assert m.validation == runtimes.read_manifest(r.path).validation  # what the ONNX was checked against travels along
    assert runtimes.open_bundle(written.path).size_bytes == len(b"stand-in plan")


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
