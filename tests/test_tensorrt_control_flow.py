"""CONTROL-FLOW tests of the TensorRT backend, against the stand-in in `fake_tensorrt.py` (TensorRT and a GPU do not
exist on this project's machines). They check decisions only: the cache directory, the timing cache TensorRT
refuses, network flags per TensorRT major, CUDA-graph re-capture on a shape change, binding I/O by name with the
engine's own dtypes, what `close()` frees, per-call device selection, zero-copy on integrated GPUs, the lean
runtime and load-time refusals. None of them stands in for the hardware tests in `test_tensorrt.py`, which run the
real TensorRT and skip with their reason here.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.engines.tensorrt_engine import EngineTarget
from runtimes.errors import BundleError, EngineIncompatibleError, InferenceError

import fake_tensorrt
from conftest import SMALL
from fake_tensorrt import DataType, toy_features, toy_logits


@pytest.fixture()
def trt_bundle(format_bundles, tmp_path: Path) -> Path:
    """A private copy of the digits tensorrt (fp32 ONNX) bundle."""
    dst = tmp_path / "trt"
    shutil.copytree(format_bundles["tensorrt"], dst)
    return dst


def _edit_engine_settings(bundle: Path, **changes) -> None:
    """Change `model.tensorrt` in the manifest (the manifest is not among its own checksummed files)."""
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    doc["model"]["tensorrt"].update(changes)
    path.write_text(json.dumps(doc))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, SMALL, SMALL, 3), dtype=np.uint8)


def test_first_build_on_a_fresh_cache_creates_the_directory_and_timing_cache(monkeypatch, trt_bundle: Path, tmp_path: Path):
    trt, cudart = fake_tensorrt.install(monkeypatch)
    cache = tmp_path / "not" / "yet" / "there"
    with runtimes.load(trt_bundle, cache_dir=str(cache)) as p:
        assert np.allclose(p.run(_images(3)), toy_logits(_images(3), 10))
        engine = Path(p.describe()["engine"])
    assert engine.parent == cache and (engine / "engine.plan").is_file()
    (timing,) = cache.glob("timing-*.cache")
    assert timing.read_bytes() == b"fake-timing 10.3.0.26"
    with runtimes.load(trt_bundle, cache_dir=str(cache)) as again:  # from the cache: no second build
        assert Path(again.describe()["engine"]) == engine
    assert trt.record["builds"] == 1
    assert trt.record["network_flags"] == [1 << 1]  # TensorRT 10: strongly typed, no EXPLICIT_BATCH


def test_a_timing_cache_tensorrt_refuses_is_replaced_not_fatal(monkeypatch, trt_bundle: Path, tmp_path: Path, caplog):
    trt, cudart = fake_tensorrt.install(monkeypatch)
    target = EngineTarget("10.3.0.26", "Fake GPU", (8, 7))
    from runtimes.engines.tensorrt_engine import timing_cache_path

    stale = timing_cache_path(tmp_path, target)
    stale.write_bytes(b"timing cache of another GPU")
    with caplog.at_level(logging.INFO, logger="runtimes"), runtimes.load(trt_bundle, cache_dir=str(tmp_path)) as p:
        p.run(_images(1))
    messages = [r.getMessage() for r in caplog.records if r.name == "runtimes.engines.tensorrt_build"]
    assert [ok for _, ok in trt.record["timing_cache_set"]] == [False, True]
    assert any("does not fit this device" in m for m in messages)
    assert stale.read_bytes() == b"fake-timing 10.3.0.26"  # replaced by this device's


def test_no_timing_cache_back_from_tensorrt_still_gives_an_engine(monkeypatch, trt_bundle: Path, tmp_path: Path):
    fake_tensorrt.install(monkeypatch, timing_cache_returned=False)
    with runtimes.load(trt_bundle, cache_dir=str(tmp_path)) as p:
        assert p.run(_images(2)).shape == (2, 10)
    assert not list(tmp_path.glob("timing-*.cache"))


def test_tensorrt_8_gets_an_explicit_batch_network_and_precision_flags(monkeypatch, format_bundles, tmp_path: Path):
    trt, _ = fake_tensorrt.install(monkeypatch, version="8.6.1.6", strongly_typed=False)
    with runtimes.load(format_bundles["tensorrt-int8"], cache_dir=str(tmp_path)):
        pass
    assert trt.record["network_flags"] == [1 << 0]  # EXPLICIT_BATCH: without it TensorRT 8 builds implicit batch
    assert trt.record["builder_flags"] == [["FP16", "INT8"]]  # weakly typed: the precision comes from flags


def test_cuda_graphs_are_recaptured_when_the_batch_changes(monkeypatch, trt_bundle: Path, tmp_path: Path):
    trt, cudart = fake_tensorrt.install(monkeypatch)
    with runtimes.load(trt_bundle, cache_dir=str(tmp_path), cuda_graph=True) as p:
        for n in (4, 4, 2, 4, 1, 1):
            images = _images(n, seed=n)
            assert np.allclose(p.run(images), toy_logits(images, 10)), n
        assert cudart.calls.count("capture") == 4  # once per shape change, never a replay of another shape's graph
        assert len(cudart.graph_execs) == 1  # the previous shape's graph was destroyed
        chunked = _images(37, seed=7)  # run_chunked alternates full and partial chunks
        assert np.allclose(p.run_chunked(chunked), toy_logits(chunked, 10))


def test_io_is_bound_by_name_with_the_engine_dtypes(monkeypatch, trt_bundle: Path, tmp_path: Path):
    fake_tensorrt.install(monkeypatch, output_dtype=DataType.HALF, extra_output_first=True)
    with runtimes.load(trt_bundle, cache_dir=str(tmp_path)) as p:
        out = p.run(_images(3))
        assert out.dtype == np.float32 and p.describe()["output_dtype"] == "float16"
        assert np.allclose(out, toy_logits(_images(3), 10), atol=1e-2)  # the logits, not the first output


def test_an_extensible_bundle_binds_and_returns_both_outputs(monkeypatch, extensible_bundles, tmp_path: Path):
    """An extensible tensorrt bundle: the features output is bound too (the fake engine, like TensorRT, fails to run
    with an output left without an address) and comes back with the logits; the control flow only, not numerics."""
    bundle = tmp_path / "trt-x"
    shutil.copytree(extensible_bundles["tensorrt"], bundle)
    fake_tensorrt.install(monkeypatch, output_dtype=DataType.HALF)
    with runtimes.load(bundle, cache_dir=str(tmp_path / "cache")) as p:
        logits, feats = p.logits_and_features(_images(3))
        assert np.allclose(logits, toy_logits(_images(3), 10), atol=1e-2)
        assert feats.shape == (3, 1280) and np.allclose(feats, toy_features(_images(3), 1280), atol=1e-2)
        assert np.array_equal(p.run(_images(3)), logits)


def test_an_engine_whose_io_differs_from_the_manifest_is_refused(monkeypatch, trt_bundle: Path, tmp_path: Path):
    fake_tensorrt.install(monkeypatch, output_dtype=DataType.INT8)
    with pytest.raises(BundleError, match="int8, expected floating-point logits"):
        runtimes.load(trt_bundle, cache_dir=str(tmp_path))


def test_close_frees_everything_and_later_calls_raise(monkeypatch, trt_bundle: Path, tmp_path: Path):
    _, cudart = fake_tensorrt.install(monkeypatch)
    p = runtimes.load(trt_bundle, cache_dir=str(tmp_path), cuda_graph=True)
    p.run(_images(2))
    assert cudart.memory and cudart.streams and cudart.graph_execs
    assert cudart.calls.count("cudaMallocHost") == 2  # pinned staging for input and output
    p.close()
    assert not cudart.memory and not cudart.streams and not cudart.graph_execs
    p.close()  # idempotent
    with pytest.raises(InferenceError, match="closed"):
        p.run(_images(1))


def test_close_while_other_threads_run_gives_results_or_a_typed_error(monkeypatch, trt_bundle: Path, tmp_path: Path):
    fake_tensorrt.install(monkeypatch)
    p = runtimes.load(trt_bundle, cache_dir=str(tmp_path))
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(200):
            try:
                p.run(_images(1))
            except InferenceError:
                return
            except BaseException as exc:  # anything else is the bug this test looks for
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    p.close()
    for t in threads:
        t.join()
    assert errors == []


def test_the_device_is_selected_on_every_call_from_every_thread(monkeypatch, trt_bundle: Path, tmp_path: Path):
    _, cudart = fake_tensorrt.install(monkeypatch)
    with runtimes.load(trt_bundle, cache_dir=str(tmp_path), gpu=1) as p:
        t = threading.Thread(target=p.run, args=(_images(1),), name="other-thread")
        t.start()
        t.join()
    assert ("other-thread", 1) in cudart.set_device_calls
    assert {dev for _, dev in cudart.set_device_calls} == {1}


def test_integrated_gpus_use_zero_copy_mapped_memory(monkeypatch, trt_bundle: Path, tmp_path: Path):
    _, cudart = fake_tensorrt.install(monkeypatch, integrated=True, name="Orin")
    with runtimes.load(trt_bundle, cache_dir=str(tmp_path)) as p:
        images = _images(2)
        assert np.allclose(p.run(images), toy_logits(images, 10))
        assert p.describe()["zero_copy"] is True
    assert cudart.calls.count("cudaHostAlloc(2)") == 2 and "cudaMemcpyAsync" not in cudart.calls and "cudaMalloc" not in cudart.calls


def test_load_time_refusals_on_a_jetson(monkeypatch, trt_bundle: Path, tmp_path: Path):
    fake_tensorrt.install(monkeypatch, integrated=True, name="Orin", dla_cores=0)
    _edit_engine_settings(trt_bundle, hardware_compatible=True)
    with pytest.raises(EngineIncompatibleError, match="not supported on Orin"):
        runtimes.load(trt_bundle, cache_dir=str(tmp_path))
    _edit_engine_settings(trt_bundle, hardware_compatible=False, precision="fp16", dla_core=0, profile={"min": 1, "opt": 1, "max": 1})
    with pytest.raises(EngineIncompatibleError, match="DLA core 0, but Orin has no DLA"):
        runtimes.load(trt_bundle, cache_dir=str(tmp_path))


def test_version_compatible_engines_need_the_builders_lean_runtime(monkeypatch, format_bundles, tmp_path: Path):
    from runtimes.engines.tensorrt_engine import write_engine_bundle

    trt, _ = fake_tensorrt.install(monkeypatch, version="10.7.0.23")
    src = tmp_path / "src"
    shutil.copytree(format_bundles["tensorrt"], src)
    _edit_engine_settings(src, version_compatible=True)
    plan = json.dumps(
        {
            "fake_plan": "10.3.0.26",
            "io": {"inputs": [["images", int(DataType.UINT8)]], "output": "logits", "classes": 10},
            "profile": {"images": [[1, SMALL, SMALL, 3], [1, SMALL, SMALL, 3], [16, SMALL, SMALL, 3]]},
            "dla": -1,
        }
    ).encode()
    built = EngineTarget("10.3.0.26", "Fake GPU", (8, 7))
    engine = write_engine_bundle(runtimes.open_bundle(src), plan, built, tmp_path / "engine").path
    with pytest.raises(EngineIncompatibleError, match="libnvinfer_lean of TensorRT 10.3.0.26"):
        runtimes.load(engine)  # the device's own 10.7 lean runtime is not the builder's
    with pytest.raises(EngineIncompatibleError, match="lean runtime .*is TensorRT 10.7"):
        runtimes.load(engine, lean_runtime="/usr/lib/libnvinfer_lean.so.10.7.0")
    with runtimes.load(engine, lean_runtime="/opt/trt-10.3/lib/libnvinfer_lean.so.10.3.0") as p:
        assert p.run(_images(1)).shape == (1, 10)
    assert trt.record["lean_runtimes"] == ["/opt/trt-10.3/lib/libnvinfer_lean.so.10.3.0"]
    fake_tensorrt.install(monkeypatch, version="10.7.0.23", lean_runtime_loads=False)
    with pytest.raises(EngineIncompatibleError, match="could not load the lean runtime"):
        runtimes.load(engine, lean_runtime="/opt/trt-10.3/lib/libnvinfer_lean.so.10.3.0")


def test_a_cuda_python_newer_than_the_driver_is_refused_at_load(monkeypatch, trt_bundle: Path, tmp_path: Path):
    import runtimes.engines.tensorrt_build as build

    fake_tensorrt.install(monkeypatch, driver=12060)
    monkeypatch.setattr(build, "cuda_python_version", lambda: "13.0.1")
    with pytest.raises(runtimes.BackendUnavailableError, match=r"CUDA 12\.6.*cuda-python>=12,<13"):
        runtimes.load(trt_bundle, cache_dir=str(tmp_path))
