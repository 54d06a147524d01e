"""Quantisation-aware fine-tuning: the rewritten model, a short CPU run, and the int8 bundles made from its scales
(real torch training, real ONNX Runtime and OpenVINO sessions; TensorRT's bundle is checked as its ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edge_transfer as et
import runtimes
from edge_transfer.fake_quant import fold_batch_norms, prepare_qat, quantized_layers
from edge_transfer.sources import load_run
from runtimes.errors import InputError

from conftest import kill_after_first_checkpoint, run_cli, write_image_folder


def test_folding_batch_norms_keeps_the_outputs_and_finds_every_conv():
    """Every BatchNorm of EfficientNet-Lite0 follows a conv (the stride-2 ones behind static "same" padding too);
    folded, the network computes what it computed before."""
    from edge_transfer.model import ImageClassifier, build_head

    bb = et.create_backbone("efficientnet_lite0", pretrained=True)
    bb.preprocessing = bb.preprocessing.with_size(64)
    model = ImageClassifier(bb, build_head(bb.num_features, 3), ["a", "b", "c"]).for_export()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        before = model(x)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fold_batch_norms(model, x[:1]) == bns > 40
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-3, rtol=1e-3)
    q = prepare_qat(ImageClassifier(bb, build_head(bb.num_features, 3), ["a", "b", "c"]), seven_bit=True)
    assert len(quantized_layers(q)) == 50  # 49 convs and the head


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny finetune (3 digits classes from an image folder, 32 px) and, through `train(..., qat=True)`, a 2-epoch
    quantisation-aware run of it (scales frozen for the last epoch)."""
    root = tmp_path_factory.mktemp("qat")
    data = write_image_folder(root / "data", per_class=12)
    run = et.train(str(data), out=root / "ft", strategy="finetune", image_size=32, epochs=2, batch_size=8, progress=False, qat=True, qat_epochs=2)
    assert run.qat is not None, "train --qat: the quantisation-aware run follows the fp32 one"
    return run, run.qat


def test_qat_writes_a_run_with_its_learned_scales(qat_run):
    run, q = qat_run
    assert q.path == run.path / "qat" and not (run.path / "qat.checkpoint").exists()
    record = q.config["qat"]
    assert record["parent"] == ".." and record["epochs_run"] == 2 and record["seven_bit_weights"] is True
    assert record["parent_metrics"] == run.metrics and set(q.metrics) == set(run.metrics) == {
        "train_accuracy",
        "val_accuracy",
        "test_accuracy",
        "test_count",
    }
    assert record["scales"]["layers"] == 50 and len(record["scales"]["sha256"]) == 64
    model, _ = load_run(q.path)  # rebuilt with its fake quantisation; the scales come back with the weights
    layers = quantized_layers(model)
    first = record["scales"]["per_layer"]["backbone.body.conv_stem"]
    assert float(layers["backbone.body.conv_stem"].input_quant.scale) == pytest.approx(first["input_scale"])
    assert all(int(m.observer_enabled[0]) == 0 for m in model.modules() if hasattr(m, "observer_enabled")), "scales are frozen"
    with pytest.raises(InputError, match="already a quantisation-aware run"):
        et.qat(q.path, epochs=1, progress=False)


def test_qat_int8_bundles_carry_the_learned_scales_with_every_conv_in_int8(qat_run, tmp_path: Path):
    run, q = qat_run
    results = et.export(q.path, out=tmp_path / "b", format="onnx-int8,openvino-int8,tensorrt-int8")
    sha = q.config["qat"]["scales"]["sha256"]
    model, _ = load_run(q.path)
    from edge_transfer.data import load_dataset

    ds = load_dataset(str(run.path.parent / "data"))
    images = ds.prepared_batch(np.arange(len(ds)), model.preprocessing)
    with torch.no_grad():
        torch_top1 = model(torch.from_numpy(images)).argmax(1).numpy()
    for r in results:
        v = r.validation
        assert v["passed"] and v["rung"] == "quantisation-aware" and v["int8_macs_share"] == 1.0
        m = runtimes.read_manifest(r.path)
        assert m.calibration is None, "no calibration: the scales were learned"
        assert m.conversion["quantisation_aware"]["scales"]["sha256"] == sha
        qa = v["quantisation_aware"]
        assert qa["judged_against"] == "fp32 parent run" and qa["fp32_accuracy"] == pytest.approx(v["torch_accuracy"])
        assert qa["qat_torch_accuracy"] == pytest.approx(q.metrics["test_accuracy"])
        if r.format != "tensorrt-int8":  # TensorRT's engine is built on the device (its ONNX is the onnx-int8 graph)
            with runtimes.load(r.path) as predictor:
                agree = (predictor.run_chunked(images).argmax(1) == torch_top1).mean()
            assert agree >= 0.9, f"{r.format} runs the fake-quantised model it was trained as ({agree:.2f} agreement)"
    proto = onnx.load(str(results[0].path / "model.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 49 and ops.count("Gemm") == 1
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == 50 and all(inits[n.input[0]] == onnx.TensorProto.INT8 for n in weight_dq), "weights stored as int8"
    assert not [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]


def test_a_qat_run_exports_int8_only_and_qat_needs_a_trained_run(qat_run, tmp_path: Path):
    run, q = qat_run
    with pytest.raises(InputError, match=r"int8 formats only .* export its parent run"):
        et.export(q.path, out=tmp_path / "fp32", format="onnx")
    with pytest.raises(InputError, match="learned its weights for portable; run qat again with --target-cpu x86-vnni"):
        et.export(q.path, out=tmp_path / "vnni", format="onnx-int8", target_cpu="x86-vnni")
    cfg = json.loads((run.path / "config.json").read_text())
    assert "qat" not in cfg
    with pytest.raises(InputError, match="--qat fine-tunes a trained model"):
        et.train("digits", out=tmp_path / "p", strategy="pretrained", qat=True)


def test_cli_qat_flags_build_the_api_config_and_help_explains_it(qat_run, tmp_path: Path):
    import dataclasses

    from edge_transfer.cli import build_parser
    from edge_transfer.cli_qat import qat_config_from_args
    from edge_transfer.config import QatConfig

    assert qat_config_from_args(build_parser().parse_args(["qat", "run"])) == QatConfig()
    given = ["--epochs", "5", "--lr", "0.01", "--freeze-scales-after", "2", "--target-cpu", "x86-vnni", "--calibration-size", "9"]
    given += ["--data", "d", "--device", "cpu", "--mixed-precision", "no", "--workers", "1", "--resume", "--overwrite", "--quiet"]
    cfg = qat_config_from_args(build_parser().parse_args(["qat", "run", *given]))
    changed = {f.name for f in dataclasses.fields(QatConfig) if getattr(cfg, f.name) != getattr(QatConfig(), f.name)}
    assert changed == {f.name for f in dataclasses.fields(QatConfig)}
    out = run_cli("qat", "--help")
    assert out.returncode == 0 and "fake int8 quantisation" in out.stdout and "--freeze-scales-after" in out.stdout
    bad = run_cli("qat", str(qat_run[0].path), "--epochs", "0")
    assert bad.returncode == 2 and "--epochs must be >= 1" in bad.stderr


def test_qat_resumes_after_sigkill_where_the_uninterrupted_run_ends(qat_run, tmp_path: Path):
    """The QAT loop is train's: a checkpoint after every epoch (scales and observer state included), and --resume
    ends bit-identical to the run that was never interrupted."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import load_file

    from conftest import ROOT

    parent = qat_run[0].path
    args = ["qat", str(parent), "--epochs", "2", "--calibration-size", "16", "--quiet", "--json"]  # scales move, then freeze
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    whole = subprocess.run(
        [sys.executable, "-m", "edge_transfer", *args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    out, ckpt = tmp_path / "cut", tmp_path / "cut.checkpoint"
    epoch = kill_after_first_checkpoint([*args, "--out", str(out)], ckpt, env)
    assert epoch == 1 and not out.exists()
    again = subprocess.run([sys.executable, "-m", "edge_transfer", *args, "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "edge_transfer", *args[:-2], "--resume", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert resumed.returncode == 0 and f"after epoch {epoch}/2" in resumed.stderr, resumed.stderr[-2000:]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("input_quant.scale") for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a), "resumed weights or scales differ from the uninterrupted run's"
    assert not ckpt.exists()
