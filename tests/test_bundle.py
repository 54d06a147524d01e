"""Bundle integrity: what runtimes.load refuses, and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.bundle import BundleWriter
from runtimes.errors import BundleError, IntegrityError, OutputError


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, doc: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(doc))


def test_load_verifies_and_reports_what_it_runs(digits_bundle: Path):
    p = runtimes.load(digits_bundle)
    assert p.labels == tuple(str(i) for i in range(10))
    assert p.inputs[0].shape == ("batch", 64, 64, 3) and p.inputs[0].dtype == "uint8"
    assert p.describe()["providers"] == ["CPUExecutionProvider"]
    assert p.manifest.validation["passed"] is True


def test_tampered_model_file_is_refused(bundle_copy: Path):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx.*sha256"):
        runtimes.load(bundle_copy)


def test_truncated_model_file_is_refused(bundle_copy: Path):
    model = bundle_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(IntegrityError, match="1000 bytes"):
        runtimes.load(bundle_copy)


def test_missing_model_file_is_refused(bundle_copy: Path):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        runtimes.load(bundle_copy)


def test_unlisted_file_is_refused(bundle_copy: Path):
    (bundle_copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra.bin.*not listed"):
        runtimes.load(bundle_copy)


@pytest.mark.parametrize("bad", ["../model.onnx", "/etc/passwd", "a/../../x", "C:\\x"])
def test_unsafe_paths_are_refused(bundle_copy: Path, bad: str):
    doc = _manifest(bundle_copy)
    doc["model"]["files"].append({"path": bad, "sha256": "0" * 64, "bytes": 1})
    _write_manifest(bundle_copy, doc)
    with pytest.raises(IntegrityError, match="path"):
        runtimes.load(bundle_copy)


def test_symlinked_file_is_refused(bundle_copy: Path, tmp_path: Path):
    outside = tmp_path / "outside.onnx"
    os.replace(bundle_copy / "model.onnx", outside)
    os.symlink(outside, bundle_copy / "model.onnx")
    with pytest.raises(IntegrityError, match="symlink"):
        runtimes.load(bundle_copy)


def test_newer_schema_and_bad_fields_are_named(bundle_copy: Path):
    doc = _manifest(bundle_copy)
    _write_manifest(bundle_copy, dict(doc, schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99 is newer"):
        runtimes.load(bundle_copy)
    _write_manifest(bundle_copy, dict(doc, labels=["a", "b"]))
    with pytest.raises(BundleError, match="outputs\\[0\\].shape"):
        runtimes.load(bundle_copy)
    broken = dict(doc)
    del broken["preprocessing"]
    _write_manifest(bundle_copy, broken)
    with pytest.raises(BundleError, match="missing field 'preprocessing'"):
        runtimes.load(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        runtimes.load(bundle_copy)


def test_missing_bundle_directory(tmp_path: Path):
    with pytest.raises(BundleError, match="no such bundle"):
        runtimes.load(tmp_path / "nope")


def test_writer_leaves_nothing_when_interrupted(tmp_path: Path):
    target = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(target) as w:
            (w.dir / "model.onnx").write_bytes(b"123")
            raise RuntimeError("killed mid-export")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output_without_overwrite(digits_bundle: Path):
    with pytest.raises(OutputError, match="already exists.*overwrite"):
        BundleWriter(digits_bundle)


def test_predictor_contract_input_errors(digits_bundle: Path):
    p = runtimes.load(digits_bundle)
    good = np.zeros((2, 64, 64, 3), np.uint8)
    assert p.run(good).shape == (2, 10)
    cases = [
        (good.astype(np.float32), "dtype uint8"),
        (good[..., :1], "3 channels"),
        (good[:, :32], "64x64"),
        (good[0], "rank 4"),
        (good[:0], "empty batch"),
        ([[1, 2]], "expected a uint8 array"),
    ]
    for batch, msg in cases:
        with pytest.raises(runtimes.InputError, match=msg):
            p.run(batch)
    with pytest.raises(runtimes.InputError, match="top_k"):
        p.predict(good, top_k=0)
    with pytest.raises(runtimes.InputError, match="empty batch"):
        p.predict([])


def test_predict_accepts_any_size_and_returns_ranked_labels(digits_bundle: Path):
    from edge_transfer.data import load_digits_dataset

    ds = load_digits_dataset()
    p = runtimes.load(digits_bundle)
    images = [ds.items[i] for i in range(20)]  # 8x8 images, resized by the bundle's preprocessing
    results = p.predict(images, top_k=3)
    for top in results:
        assert len(top) == 3 and top[0].score >= top[1].score >= top[2].score
    correct = sum(top[0].label == ds.classes[t] for top, t in zip(results, ds.targets[:20]))
    assert correct >= 17
    from runtimes.preprocess import PreprocessConfig, prepare_image

    smooth = PreprocessConfig(input_size=(96, 96), interpolation="bilinear")
    big = [prepare_image(img, smooth) for img in images[:5]]  # 96 x 96 renderings of the same digits
    assert [r[0].label for r in p.predict(big, top_k=1)] == [r[0].label for r in results[:5]]


def test_load_can_insist_on_a_backend(digits_bundle: Path, format_bundles):
    """An app that ships one backend asks for it: a bundle for another one is refused before anything is read."""
    with runtimes.load(digits_bundle, backend="onnxruntime") as p:
        assert p.manifest.backend == "onnxruntime"
    with pytest.raises(BundleError, match="this bundle is for openvino, and onnxruntime was asked for"):
        runtimes.load(format_bundles["openvino"], backend="onnxruntime")


def test_manifest_sections_are_typed_and_checked(digits_bundle: Path, format_bundles, tmp_path: Path):
    """The sections the runtime uses are read into `Manifest` (never reached for through `.raw`) and checked."""
    import shutil

    m = runtimes.read_manifest(format_bundles["onnx-int8"])
    assert m.export_format == "onnx-int8" and m.target_cpu["name"] == "portable" and m.self_test["count"] > 0
    assert runtimes.read_manifest(format_bundles["tensorrt"]).tensorrt["precision"] == "fp32"
    bad = shutil.copytree(digits_bundle, tmp_path / "b")
    doc = json.loads((bad / "manifest.json").read_text())
    doc["model"]["target_cpu"] = "portable"
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="manifest field 'model.target_cpu' must be an object or null, got str"):
        runtimes.read_manifest(bad)
    doc["model"].pop("target_cpu")
    doc["model"]["backend"] = "tensorrt"
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="'model.tensorrt' \\(the engine build settings\\) is missing"):
        runtimes.read_manifest(bad)


def test_the_manifest_written_is_the_manifest_read(format_bundles, tmp_path: Path):
    """Symmetry: every writer builds a `Manifest` and writes `to_dict()`, so for each format the file on disk is
    exactly `to_dict()` of what the reader parsed, and parsing that again gives the same `Manifest`; the engine
    bundle writer (build-engine --out) too."""
    from runtimes.engines.tensorrt_engine import EngineTarget, write_engine_bundle
    from runtimes.manifest import parse_manifest

    bundles = dict(format_bundles)
    target = EngineTarget("10.3.0.26", "Orin", (8, 7), integrated=True, dla_cores=2)
    bundles["tensorrt-engine"] = write_engine_bundle(runtimes.open_bundle(format_bundles["tensorrt-fp16"]), b"plan", target, tmp_path / "e").path
    for name, path in bundles.items():
        on_disk = json.loads((Path(path) / "manifest.json").read_text())
        m = runtimes.read_manifest(path)
        assert m.to_dict() == on_disk, name
        assert parse_manifest(json.loads(json.dumps(m.to_dict()))) == m, name
    engine = runtimes.read_manifest(bundles["tensorrt-engine"])
    assert (engine.format, engine.entrypoint, engine.built_on["gpu_name"], engine.precision) == ("tensorrt-engine", "model.plan", "Orin", "fp16")
    assert engine.built_from["path"] == "model.onnx" and engine.labels == runtimes.read_manifest(format_bundles["tensorrt-fp16"]).labels
