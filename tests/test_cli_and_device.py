"""The real CLI end to end, and the device side with torch blocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BLOCK_HOST_PACKAGES, ROOT, run_cli, write_image_folder


def test_import_runtimes_and_predict_without_torch(digits_bundle: Path):
    code = (
        "import sys\n"
        + BLOCK_HOST_PACKAGES
        + (
            "import numpy as np, runtimes, edge_transfer\n"
            f"p = runtimes.load({str(digits_bundle)!r})\n"
            "print(p.predict(np.zeros((8, 8), np.uint8), top_k=1)[0][0].label)\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        )
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in [str(i) for i in range(10)]


def test_predict_and_inspect_cli_without_torch(digits_bundle: Path, tmp_path: Path):
    from edge_transfer.data import load_digits_dataset

    img = tmp_path / "digit.npy"
    np.save(img, load_digits_dataset().items[0])
    r = run_cli("predict", str(digits_bundle), str(img), "--json", "--top-k", "2", block_torch=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["predictions"][0]["top_k"]) == 2 and out["runtime"]["backend"] == "onnxruntime"
    r = run_cli("inspect", str(digits_bundle), block_torch=True)
    assert r.returncode == 0 and "validation  passed" in r.stdout
    # host commands on a device-only install: one line naming the extra to install, no traceback
    for args in (["train", "--data", "digits", "--out", str(tmp_path / "run")], ["export", str(tmp_path / "run"), "--out", str(tmp_path / "b")]):
        r = run_cli(*args, block_torch=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"`edge-transfer {args[0]}` runs on the host" in r.stderr and "pip install 'edge-transfer[host]'" in r.stderr


def test_missing_backend_names_the_pip_extra(digits_bundle: Path):
    code = f"import sys\nsys.modules['onnxruntime'] = None\nimport runtimes\nruntimes.load({str(digits_bundle)!r})\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "BackendUnavailableError" in r.stderr and "edge-transfer-runtime[onnxruntime]" in r.stderr


@pytest.mark.slow
def test_own_image_folder_train_export_predict_via_cli(tmp_path: Path):
    data = write_image_folder(tmp_path / "photos")
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    r = run_cli("train", "--data", str(data), "--strategy", "linear-probe", "--image-size", "48", "--out", str(run), "--json", "--quiet")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr  # quiet: no third-party warnings either
    assert json.loads(r.stdout)["metrics"]["test_count"] == 6
    r = run_cli("export", str(run), "--format", "onnx", "--out", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["formats"][0]["validation"]["passed"] is True
    image = next((data / "two").glob("*.png"))
    r = run_cli("predict", str(bundle), str(image), "--top-k", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["top_k"][0]["label"] in ("zero", "one", "two")
    # Exporting again to the same path is explicit.
    r = run_cli("export", str(run), "--out", str(bundle))
    assert r.returncode == 2 and "--overwrite" in r.stderr


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_errors_are_one_clear_line(tmp_path: Path, digits_bundle: Path):
    data = write_image_folder(tmp_path / "photos")
    (data / "one" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    _one_line_error(run_cli("train", "--data", str(data), "--out", str(tmp_path / "r")), "bad.jpg")
    (data / "one" / "bad.jpg").unlink()
    (data / "empty").mkdir()
    _one_line_error(run_cli("train", "--data", str(data), "--out", str(tmp_path / "r")), "empty")

    broken = tmp_path / "b1"
    shutil.copytree(digits_bundle, broken)
    (broken / "model.onnx").unlink()
    _one_line_error(run_cli("predict", str(broken), "x.png"), "model.onnx", "missing")

    tampered = tmp_path / "b2"
    shutil.copytree(digits_bundle, tampered)
    with open(tampered / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    _one_line_error(run_cli("inspect", str(tampered)), "model.onnx", "sha256")

    _one_line_error(run_cli("predict", str(digits_bundle), str(tmp_path / "nope.png")), "nope.png")


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_labels_chelsea_a_cat(tmp_path: Path):
    from PIL import Image
    from skimage import data

    pretrained = ["export", "--backbone", "efficientnet_lite0", "--strategy", "pretrained"]
    r = run_cli(*pretrained, "--format", "onnx-int8", "--out", str(tmp_path / "int8"))
    _one_line_error(r, "--calibration-data", "digits")  # int8 never calibrates an ImageNet model on digits
    assert not (tmp_path / "int8").exists()
    bundle = tmp_path / "imagenet"
    r = run_cli(*pretrained, "--format", "onnx", "--out", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    assert "validating the source model on the built-in digits" in r.stderr and "--data" in r.stderr  # and says so
    v = json.loads(r.stdout)["formats"][0]["validation"]
    assert v["passed"] and v["top1_agreement"] >= 0.995 and v["unlabelled_gate"]["logit_cosine_mean"] == 0.9999
    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    r = run_cli("predict", str(bundle), str(photo), "--top-k", "1", "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    label = json.loads(r.stdout)["predictions"][0]["top_k"][0]["label"]
    assert label in ("tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"), label


@pytest.mark.slow
def test_demo_command_json(tmp_path: Path):
    r = run_cli("demo", "--out", str(tmp_path / "demo"), "--image-size", "48", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["validation"]["passed"] and s["validation"]["top1_agreement"] >= 0.995
    assert len(s["predictions"]) == 5 and s["metrics"]["test_accuracy"] > 0.7
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()


def test_example_classify_image_runs_without_torch(digits_bundle: Path, tmp_path: Path):
    from edge_transfer.data import load_digits_dataset

    img = tmp_path / "digit.npy"
    np.save(img, load_digits_dataset().items[0])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    def example(*images: Path) -> subprocess.CompletedProcess:
        argv = ["classify_image.py", str(digits_bundle), *map(str, images)]
        code = (
            "import sys, runpy\n" + BLOCK_HOST_PACKAGES + f"sys.argv = {argv!r}\nrunpy.run_path('examples/classify_image.py', run_name='__main__')\n"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)

    r = example(img)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime on cpu" in r.stdout and "digit.npy" in r.stdout
    r = example(tmp_path / "broken.jpg", img)  # one bad image does not stop the batch
    assert r.returncode == 1 and "broken.jpg: error:" in r.stderr and "digit.npy" in r.stdout, r.stderr


def _subparser(name: str):
    from edge_transfer.cli import build_parser

    return next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(f" {name}"))


def test_cli_train_flags_build_the_api_config_with_its_defaults():
    """One home for every default: `edge-transfer train` with no options builds exactly `TrainConfig()`, the config
    `et.train()` uses; each flag lands in the field of its name; choices come from the strategy table."""
    import dataclasses
    import inspect

    import edge_transfer as et
    from edge_transfer.cli import build_parser
    from edge_transfer.cli_host import train_config_from_args
    from edge_transfer.config import STRATEGIES, TrainConfig

    assert train_config_from_args(build_parser().parse_args(["train", "--out", "x"])) == TrainConfig()
    assert list(inspect.signature(et.train).parameters) == ["data", "out", "config", "overrides"]
    given = ["--backbone", "timm:resnet18", "--strategy", "partial", "--image-size", "96", "--crop-pct", "0.9", "--epochs", "3"]
    given += ["--lr", "0.01", "--weight-decay", "0.5", "--batch-size", "8", "--unfreeze-blocks", "3", "--seed", "7", "--skip-bad"]
    given += ["--device", "cpu", "--mixed-precision", "no", "--workers", "2", "--feature-batch-size", "16", "--cache-dir", "c"]
    given += ["--interpolation", "bicubic", "--resume", "--overwrite", "--quiet", "--val-fraction", "0.1", "--test-fraction", "0.3"]
    given += ["--qat", "--qat-epochs", "2", "--features", "blocks.3", "--text-column", "1", "--label-column", "0", "--max-tokens", "128"]
    given += ["--full-jpeg-decode", "--resize", "opencv-exact"]
    cfg = train_config_from_args(build_parser().parse_args(["train", "--out", "x", *given]))
    changed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(TrainConfig(), f.name)}
    api_only = {"pretrained", "backbone_lr_scale", "patience", "dropout", "checkpoint_dir"}
    assert changed == {f.name for f in dataclasses.fields(TrainConfig)} - api_only, "a train field without a flag, or a flag not forwarded"
    assert cfg.num_workers == 2 and cfg.crop_pct == 0.9 and cfg.progress is False
    assert tuple(next(a for a in _subparser("train")._actions if a.dest == "strategy").choices) == STRATEGIES


def test_cli_export_flags_build_the_api_options_with_their_defaults():
    """`edge-transfer export RUN --out X` builds exactly `ExportOptions()`, what `et.export(RUN, out=X)` uses; the
    quantisation and --trt-* flags land in the typed sub-options; choices come from the same tables."""
    import dataclasses

    from converters.options import CALIBRATION_METHODS, TARGET_CPU_CHOICES, ExportOptions, TensorRTOptions
    from edge_transfer.cli import build_parser
    from edge_transfer.cli_host import export_options_from_args
    from runtimes.errors import InputError

    assert export_options_from_args(build_parser().parse_args(["export", "run", "--out", "x"])) == ExportOptions()
    given = ["--format", "onnx,openvino", "--image-size", "96", "--data", "d", "--max-drop", "2", "--min-agreement", "0.9"]
    given += ["--calibration-size", "50", "--calibration-data", "c", "--calibration-method", "entropy", "--accuracy-aware"]
    given += ["--target-cpu", "x86-vnni", "--per-tensor", "--float-first-layers", "0", "--batch-size", "4", "--self-test-size", "3"]
    given += ["--no-fallback", "--min-int8-share", "0.9", "--skip-bad", "--output", "embedding", "--features", "blocks.3"]
    given += ["--allow-failed-validation", "--overwrite", "--trt-max-batch", "4", "--trt-opt-batch", "2", "--trt-workspace", "64"]
    given += ["--trt-dla-core", "1", "--trt-no-gpu-fallback", "--trt-hardware-compatible", "--trt-version-compatible"]
    given += ["--trt-opt-tokens", "32", "--text-column", "body", "--label-column", "topic", "--sign-key", "k.key"]
    opts = export_options_from_args(build_parser().parse_args(["export", "run", "--out", "x", *given]))
    default = ExportOptions()
    changed = {f.name for f in dataclasses.fields(ExportOptions) if getattr(opts, f.name) != getattr(default, f.name)}
    assert changed == {f.name for f in dataclasses.fields(ExportOptions)} - {"backbone", "strategy", "skip_existing"}
    assert export_options_from_args(build_parser().parse_args(["export", "run", "--out", "x", "--skip-existing"])).skip_existing is True
    with pytest.raises(InputError, match="choose one"):  # --skip-existing keeps what --overwrite would replace
        export_options_from_args(build_parser().parse_args(["export", "run", "--out", "x", "--skip-existing", "--overwrite"]))
    q = opts.quantization
    assert dataclasses.astuple(q) == ("entropy", False, None, True, "x86-vnni", 0, False, 0.9)  # every field but reduce_range set
    assert opts.tensorrt == TensorRTOptions(2, 4, 64, 1, False, True, True, 32)
    choices = {a.dest: a.choices for a in _subparser("export")._actions}
    assert tuple(choices["calibration_method"]) == CALIBRATION_METHODS and tuple(choices["target_cpu"]) == TARGET_CPU_CHOICES


def test_api_options_take_keyword_overrides_and_name_unknown_ones():
    """`et.train(data, out=..., epochs=5)` and `et.export(run, out=..., target_cpu=..., tensorrt={...})` override single
    fields of the options objects; a misspelt option is an InputError naming it, before any work."""
    import edge_transfer as et
    from converters.options import ExportOptions, TensorRTOptions
    from edge_transfer.config import TrainConfig

    assert TrainConfig().with_overrides(epochs=5, strategy="finetune") == TrainConfig(epochs=5, strategy="finetune")
    opts = ExportOptions().with_overrides(target_cpu="arm64", calibration_method="percentile", tensorrt={"max_batch": 8}, format=["onnx"])
    assert (opts.quantization.target_cpu, opts.quantization.method, opts.tensorrt, opts.format) == (
        "arm64",
        "percentile",
        TensorRTOptions(max_batch=8),
        ("onnx",),
    )
    with pytest.raises(et.InputError, match=r"unknown train option\(s\) epoch \(known: .*epochs"):
        et.train("digits", out="never-written", epoch=5)
    with pytest.raises(et.InputError, match="unknown export option.*max_dorp"):
        et.export("run", out="never-written", max_dorp=2)
    with pytest.raises(et.InputError, match="unknown TensorRT option.*maxbatch"):
        ExportOptions().with_overrides(tensorrt={"maxbatch": 8})
    with pytest.raises(et.InputError, match="max_drop must be >= 0 and <= 100, got 150"):
        ExportOptions().with_overrides(max_drop=150)
    with pytest.raises(et.InputError, match="float_first_layers must be >= 0 and <= 10000, got -1"):
        ExportOptions().with_overrides(float_first_layers=-1)
    with pytest.raises(et.InputError, match="min_int8_share must be >= 0 and <= 1, got 50"):
        ExportOptions().with_overrides(min_int8_share=50)
    for bad in ({"lr": float("nan")}, {"seed": -1}, {"image_size": 0}, {"batch_size": 100_000}, {"val_fraction": 1.5}):
        with pytest.raises(et.InputError, match=f"{next(iter(bad))} must be"):
            et.train("digits", out="never-written", **bad)
    assert not Path("never-written").exists()


def test_cli_bench_flags_build_the_library_options_with_their_defaults():
    """`edge-transfer bench B` measures what `runtimes.bench.bench_predictor` measures by default: its flags build
    `BenchOptions()`; each flag lands in its field; --mode choices are the library's."""
    import inspect

    from edge_transfer.cli import build_parser
    from runtimes.bench import MODES, BenchOptions, bench_predictor
    from runtimes.options import options_from_namespace

    assert options_from_namespace(BenchOptions, build_parser().parse_args(["bench", "b"])) == BenchOptions()
    args = build_parser().parse_args(["bench", "b", "--mode", "end-to-end", "--duration", "2", "--warmup", "5"])
    assert options_from_namespace(BenchOptions, args) == BenchOptions(mode="end-to-end", duration=2.0, warmup=5)
    lib = {k: p.default for k, p in inspect.signature(bench_predictor).parameters.items() if p.default is not inspect.Parameter.empty}
    assert args.threads == lib["threads"] and build_parser().parse_args(["bench", "b"]).batch == str(lib["batch"])
    assert tuple(next(a for a in _subparser("bench")._actions if a.dest == "mode").choices) == MODES


def test_predict_takes_a_folder_and_a_wrong_folder_says_what_it_is(digits_run, digits_bundle: Path, tmp_path: Path):
    """`predict BUNDLE folder/` classifies every image under it; `predict`/`inspect` on a training run or on the
    parent of several bundles say what that folder is and what to do, instead of "no manifest.json"."""
    photos = write_image_folder(tmp_path / "imgs", per_class=2)
    (photos / ".DS_Store").write_bytes(b"\0\0")
    flat = run_cli("predict", str(digits_bundle), str(photos))  # class sub-folders only: --recursive reads them
    assert flat.returncode == 2 and "sub-folders are read with --recursive" in flat.stderr
    out = run_cli("predict", str(digits_bundle), str(photos), "--recursive", "--top-k", "1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    shown = [p["image"] for p in doc["predictions"]]
    assert len(shown) == 6 and shown == sorted(shown) and not any(".DS_Store" in s for s in shown)
    assert doc["runtime"]["validation_passed"] is True
    # a quoted pattern, one JSON line per image as it is classified, and an unreadable file reported in its place
    (photos / "one" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pattern = str(photos / "*" / "[0-2].*")
    lines = run_cli("predict", str(digits_bundle), pattern, "--jsonl", "--skip-bad", "--top-k", "2")
    assert lines.returncode == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(records) == 7 and all(len(r.get("top_k", [])) == 2 or "not a readable image" in r.get("error", "") for r in records)
    assert [r["image"] for r in records if "error" in r] == [str(photos / "one" / "2.png")] and "1 of 7 image(s)" in lines.stderr
    stop = run_cli("predict", str(digits_bundle), pattern)
    assert stop.returncode == 2 and "2.png: not a readable image" in stop.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli("predict", str(digits_bundle), str(empty))
    assert bad.returncode == 2 and "a folder with no image files" in bad.stderr

    run = run_cli("inspect", str(digits_run.path))
    assert run.returncode == 2 and "this is a training run, not a bundle" in run.stderr and f"edge-transfer export {digits_run.path}" in run.stderr
    parent = tmp_path / "bundles"
    shutil.copytree(digits_bundle, parent / "onnx")
    several = run_cli("predict", str(parent), str(photos))
    assert several.returncode == 2 and "holds 1 bundle(s)" in several.stderr and str(parent / "onnx") in several.stderr


def test_int8_export_does_not_print_torchs_cuda_warning():
    """Importing NNCF (openvino-int8) loads torch's C++ extension helpers, which warn "No CUDA runtime is found" on
    every CPU-only host; the export imports it with that logger quiet."""
    code = "from converters.nncf_loader import import_nncf\nimport_nncf()\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "No CUDA runtime" not in r.stderr


def test_train_without_data_asks_for_it_and_digits_is_the_explicit_demo(tmp_path: Path):
    """`train` with no --data does not quietly train on the demo data: it says what to pass (nothing is written);
    `--data digits` is the explicit demo."""
    r = run_cli("train", "--strategy", "pretrained", "--image-size", "32", "--out", str(tmp_path / "p"), "--quiet")
    assert r.returncode == 2 and "train needs --data" in r.stderr and "--data digits" in r.stderr and not (tmp_path / "p").exists()
    r = run_cli("train", "--data", "digits", "--strategy", "pretrained", "--image-size", "32", "--out", str(tmp_path / "p"), "--quiet")
    assert r.returncode == 0, r.stderr
