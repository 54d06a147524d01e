"""The real CLI end to end, and the device side with torch blocked."""

from __future__ import annotations

import json
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


def test_missing_backend_names_the_pip_extra(digits_bundle: Path):
    code = f"import sys\nsys.modules['onnxruntime'] = None\nimport runtimes\nruntimes.load({str(digits_bundle)!r})\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "BackendUnavailableError" in r.stderr and "edge-transfer[onnxruntime]" in r.stderr


@pytest.mark.slow
def test_own_image_folder_train_export_predict_via_cli(tmp_path: Path):
    data = write_image_folder(tmp_path / "photos")
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    r = run_cli("train", "--data", str(data), "--strategy", "linear-probe", "--image-size", "48", "--out", str(run), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
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

    bundle = tmp_path / "imagenet"
    r = run_cli("export", "--backbone", "efficientnet_lite0", "--strategy", "pretrained", "--format", "onnx", "--out", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["formats"][0]["validation"]
    assert v["passed"] and v["top1_agreement"] >= 0.995
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
    code = (
        "import sys, runpy\n"
        + BLOCK_HOST_PACKAGES
        + (
            f"sys.argv = ['classify_image.py', {str(digits_bundle)!r}, {str(img)!r}]\n"
            "runpy.run_path('examples/classify_image.py', run_name='__main__')\n"
        )
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime on cpu" in r.stdout and "digit.npy" in r.stdout


def test_cli_train_defaults_are_the_api_defaults():
    """One home for every default: `edge-transfer train` with no options means what `et.train()` means."""
    import inspect

    import edge_transfer as et
    from edge_transfer.cli import build_parser
    from edge_transfer.config import STRATEGIES, TrainConfig

    args = build_parser().parse_args(["train", "--out", "x"])
    api = {k: p.default for k, p in inspect.signature(et.train).parameters.items() if p.default is not inspect.Parameter.empty}
    flag_to_param = {"workers": "num_workers"}
    compared = 0
    for flag, value in vars(args).items():
        param = flag_to_param.get(flag, flag)
        if param in api and flag not in ("out", "func", "command"):
            assert value == api[param], f"--{flag.replace('_', '-')} defaults to {value!r}, et.train({param}=...) to {api[param]!r}"
            compared += 1
    assert compared >= 10
    assert api["strategy"] == TrainConfig.strategy and api["batch_size"] == TrainConfig.batch_size
    train_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    assert tuple(next(a for a in train_parser._actions if a.dest == "strategy").choices) == STRATEGIES


def test_cli_export_defaults_are_the_api_defaults():
    """`edge-transfer export RUN --out X` means what `et.export(RUN, out=X)` means; choices come from the same tables."""
    import inspect

    import edge_transfer as et
    from converters.options import CALIBRATION_METHODS, TARGET_CPU_CHOICES
    from edge_transfer.cli import build_parser

    args = build_parser().parse_args(["export", "run", "--out", "x"])
    api = {k: p.default for k, p in inspect.signature(et.export).parameters.items() if p.default is not inspect.Parameter.empty}
    shared = [flag for flag in vars(args) if flag in api and flag not in ("run", "out", "func", "command")]
    for flag in shared:
        assert getattr(args, flag) == api[flag], f"--{flag.replace('_', '-')} defaults to {getattr(args, flag)!r}, et.export to {api[flag]!r}"
    assert {"format", "max_drop", "calibration_size", "calibration_method", "target_cpu", "self_test_size"} <= set(shared)
    export_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" export"))
    choices = {a.dest: a.choices for a in export_parser._actions}
    assert tuple(choices["calibration_method"]) == CALIBRATION_METHODS and tuple(choices["target_cpu"]) == TARGET_CPU_CHOICES


def test_cli_bench_defaults_are_the_library_defaults():
    """`edge-transfer bench B` measures what `runtimes.bench.bench_predictor` measures by default."""
    import inspect

    from edge_transfer.cli import build_parser
    from runtimes.bench import DEFAULT_ITERATIONS, MODES, bench_predictor

    args = build_parser().parse_args(["bench", "b"])
    lib = {k: p.default for k, p in inspect.signature(bench_predictor).parameters.items() if p.default is not inspect.Parameter.empty}
    assert args.mode == lib["mode"] and args.threads == lib["threads"] and args.warmup == lib["warmup"]
    assert args.iterations == DEFAULT_ITERATIONS and args.batch == str(lib["batch"])
    bench_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" bench"))
    assert tuple(next(a for a in bench_parser._actions if a.dest == "mode").choices) == MODES
