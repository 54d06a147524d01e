"""Shared fixtures: real components, small sizes (EfficientNet-Lite0 at 64 px, digits subsets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # input size used by most tests: fast on 2 cores


@pytest.fixture(scope="session", autouse=True)
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["EDGE_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A real linear-probe run on the built-in digits (EfficientNet-Lite0 ImageNet weights, 64 px)."""
    import edge_transfer as et

    out = tmp_path_factory.mktemp("runs") / "digits-lp"
    return et.train("digits", out=out, strategy="linear-probe", image_size=SMALL, interpolation="bilinear", progress=False)


@pytest.fixture(scope="session")
def digits_bundle(digits_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import edge_transfer as et

    out = tmp_path_factory.mktemp("bundles") / "digits-onnx"
    et.export(digits_run.path, out=out)
    return out


@pytest.fixture(scope="session")
def format_bundles(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 64 px digits run exported once to every format. Failed gates are written anyway (marked) so the
    runtime contract can be checked on every artifact; the gate itself is tested separately."""
    import edge_transfer as et
    from converters.export import FORMATS

    out = tmp_path_factory.mktemp("formats") / "digits"
    # fallback=False: every int8 bundle here is the post-training one on any CPU (the ladder would add float layers
    # where post-training int8 fails, e.g. on a CPU unlike ours); the ladder has its own test
    results = et.export(digits_run.path, out=out, format=",".join(FORMATS), calibration_size=64, allow_failed_validation=True, fallback=False)
    assert [r.format for r in results] == list(FORMATS)
    return {r.format: r.path for r in results}


@pytest.fixture(scope="session")
def embedding_bundles(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 64 px digits run's features as embedding bundles (fp32 ONNX and OpenVINO int8)."""
    import edge_transfer as et

    out = tmp_path_factory.mktemp("embedding") / "digits"
    # written even if this CPU's int8 misses its gate, so the gallery tests do not depend on it; the gate test asserts it
    results = et.export(digits_run.path, out=out, output="embedding", format="onnx,openvino-int8", calibration_size=64, allow_failed_validation=True)
    return {r.format: r.path for r in results}


@pytest.fixture(scope="session")
def extensible_bundles(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 64 px digits probe as extensible classifiers (`--output extensible`): ONNX Runtime, OpenVINO, TensorRT."""
    import edge_transfer as et

    out = tmp_path_factory.mktemp("extensible") / "digits"
    results = et.export(digits_run.path, out=out, output="extensible", format="onnx,openvino,tensorrt")
    return {r.format: r.path for r in results}


TEXT_WORDS = {
    "money": "bank market shares price profit economy trade",
    "music": "song album band concert guitar singer chart",
    "sport": "football match goal team player win league",
}


@pytest.fixture(scope="session")
def text_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (2 layers, 32-d) saved as a local encoder folder with all-MiniLM-L6-v2's real tokenizer.json:
    the text path end to end in seconds (the real MiniLM runs in the slow test and benchmarks/)."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from edge_transfer.text_encoder import minilm_dir

    folder = tmp_path_factory.mktemp("encoders") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    shutil.copyfile(minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
    return folder


def write_text_folder(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """Class folders of .txt files: three topics, each text 3-30 words drawn from its topic's words."""
    import random

    rnd = random.Random(seed)
    for label, words in TEXT_WORDS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        vocab = words.split()
        for i in range(per_class):
            (root / label / f"{i:03d}.txt").write_text(" ".join(rnd.choice(vocab) for _ in range(rnd.randint(3, 30))), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def text_run(text_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A linear probe of the tiny encoder on the topic texts (a real run through `edge_transfer.train`)."""
    import edge_transfer as et

    root = tmp_path_factory.mktemp("text")
    data = write_text_folder(root / "topics")
    return et.train(str(data), out=root / "run", backbone=str(text_encoder_dir), progress=False)


@pytest.fixture(scope="session")
def text_bundles(text_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The text run exported to the text formats, plus its encoder as an embedding bundle ("embedding")."""
    import edge_transfer as et

    out = tmp_path_factory.mktemp("text-bundles")
    results = et.export(
        text_run.path, out=out / "classifier", format="onnx,onnx-fp16,onnx-int8,openvino,openvino-int8,tensorrt,tensorrt-fp16", calibration_size=32
    )
    bundles = {r.format: r.path for r in results}
    (emb,) = et.export(text_run.path, out=out / "embedding", format="onnx", output="embedding")
    return {**bundles, "embedding": emb.path}


@pytest.fixture()
def bundle_copy(digits_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(digits_bundle, dst)
    return dst


def rehash_bundle(bundle: Path) -> None:
    """Re-make every listed file's sha256 and size in the manifest, as a careless or malicious producer would."""
    import hashlib
    import json

    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    for entry in doc["model"]["files"]:
        data = (bundle / entry["path"]).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.write_text(json.dumps(doc, indent=2))


def write_image_folder(root: Path, per_class: int = 8, classes: tuple[str, ...] = ("zero", "one", "two")) -> Path:
    """An image folder of real digits images as PNG/JPEG files of mixed sizes and modes (grey and RGB)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        imgs = d.images[d.target == ci][:per_class]
        for j, img in enumerate(imgs):
            arr = (255 - img * (255 / 16)).astype(np.uint8)
            im = Image.fromarray(arr).resize((8 * (2 + j % 3), 8 * (2 + j % 2)), Image.NEAREST)
            if j % 2:
                im.convert("RGB").save(folder / f"{j}.jpg", quality=95)
            else:
                im.save(folder / f"{j}.png")
    return root


def run_cli(*args: str, env: dict[str, str] | None = None, block_torch: bool = False) -> subprocess.CompletedProcess:
    """Run the real `edge-transfer` CLI: in this process (argv in; exit code, stdout and stderr out, as a shell would
    see them), or in a subprocess when torch must be unimportable or the environment differs."""
    if not block_torch and not env:
        return run_cli_in_process(*args)
    code = "import sys\n"
    if block_torch:
        code += BLOCK_HOST_PACKAGES
    code += "from edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def run_cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`edge_transfer.cli.main(args)` with stdout/stderr captured; an uncaught exception becomes exit code 1 with its
    traceback on stderr and argparse's exits keep their code, as in a real process."""
    import contextlib
    import io
    import traceback

    from edge_transfer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["edge-transfer", *args], code, out.getvalue(), err.getvalue())


# Importing any of these raises ImportError, as on a device where only runtimes + a backend are installed.
BLOCK_HOST_PACKAGES = (
    "for _m in ('torch', 'torchvision', 'timm', 'onnx', 'accelerate', 'safetensors', 'sklearn', 'skimage', 'transformers',\n"
    "           'sentence_transformers'):\n"
    "    sys.modules[_m] = None\n"
)


def kill_after_first_checkpoint(cli_args: list[str], checkpoint: Path, env: dict[str, str]) -> int:
    """Start `python -m edge_transfer CLI_ARGS`, SIGKILL it once `checkpoint` records a finished epoch (a crash
    between epochs, nothing flushed), and return that epoch."""
    import json
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_transfer", *cli_args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((checkpoint / "state.json").read_text())["epoch"] >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(json.loads((checkpoint / "state.json").read_text())["epoch"])
