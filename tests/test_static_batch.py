"""Static shapes at load: `runtimes.load(bundle, batch_size=N)` compiles a dynamic-batch bundle for one
batch size (OpenVINO `reshape`, ONNX Runtime's free-dimension override), with real sessions on the digits and text
bundles. Answers equal the dynamic load's; a wrong batch is an `InputError`; what cannot be static is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import InputError

from conftest import SMALL, run_cli


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, SMALL, SMALL, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "openvino-int8", "onnx-int8"])
def test_a_dynamic_bundle_loads_for_one_batch_size(format_bundles: dict[str, Path], fmt: str) -> None:
    images = _images(7)
    with runtimes.load(format_bundles[fmt]) as dynamic:
        expected = dynamic.run(images)
    with runtimes.load(format_bundles[fmt], batch_size=4) as p:
        assert p.max_batch == 4 and p.describe()["loaded_batch"] == 4
        if fmt.startswith("onnx"):  # compiled in, not only checked by us: the session's input is static
            assert p.session.get_inputs()[0].shape == [4, SMALL, SMALL, 3]
        else:
            assert p.compiled.inputs[0].get_partial_shape().is_static and p.compiled.inputs[0].get_shape()[0] == 4
        np.testing.assert_allclose(p.run(images[:4]), expected[:4], atol=1e-4 if p.precision == "fp32" else 2e-2)
        # any number of images: chunks of 4, the last padded (as a bundle exported with a fixed batch)
        np.testing.assert_allclose(p.run_chunked(images), expected, atol=1e-4 if p.precision == "fp32" else 2e-2)
        assert len(p.predict(list(images[:5]), top_k=1)) == 5
        with pytest.raises(InputError, match="fixed batch of 4"):
            p.run(images[:3])
        assert p.self_test().passed


def test_text_bundles_keep_their_token_length_dynamic(text_bundles: dict[str, Path]) -> None:
    texts = ["football goal", "the singer and the band played a long song all night", "bank"]
    for fmt in ("onnx", "openvino"):
        with runtimes.load(text_bundles[fmt]) as dynamic:
            expected = dynamic.run_chunked(dynamic.prepare(texts))
        with runtimes.load(text_bundles[fmt], batch_size=1) as p:
            np.testing.assert_allclose(p.run_chunked(p.prepare(texts)), expected, atol=1e-4, err_msg=fmt)
            assert p.self_test().passed


def test_what_cannot_be_static_is_refused_by_name(format_bundles: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="one row per call .*batch_size=1 only"):
        runtimes.load(format_bundles["onnx-int8-dynamic"], batch_size=4)
    with runtimes.load(format_bundles["onnx-int8-dynamic"], batch_size=1) as p:
        assert p.max_batch == 1
    with pytest.raises(InputError, match="TensorRT engine's batch range is set at export"):
        runtimes.load(format_bundles["tensorrt"], batch_size=1)
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(InputError, match="batch_size must be a whole number from 1 to"):
            runtimes.load(format_bundles["onnx"], batch_size=bad)


def test_predict_check_and_bench_take_a_static_batch(format_bundles: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.fromarray(_images(1, seed=i)[0]).save(tmp_path / f"{i}.png")
    bundle = str(format_bundles["openvino"])
    pred = run_cli("predict", bundle, str(tmp_path), "--batch", "2", "--jsonl", block_torch=True)
    assert pred.returncode == 0, pred.stderr
    assert len(pred.stdout.strip().splitlines()) == 3
    check = run_cli("check", bundle, "--batch", "2", "--json", block_torch=True)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["loaded_batch"] == 2 and json.loads(check.stdout)["passed"]
    out = tmp_path / "bench.json"
    bench = run_cli("bench", bundle, "--batch", "1,2", "--static", "--iterations", "5", "--warmup", "1", "--json", str(out), block_torch=True)
    assert bench.returncode == 0, bench.stderr
    assert "1 static" in bench.stdout and "2 static" in bench.stdout
    rows = json.loads(out.read_text())["results"]
    assert [(r["batch"], r["execution"]["loaded_batch"]) for r in rows] == [(1, 1), (2, 2)]
    bad = run_cli("predict", str(format_bundles["onnx-int8-dynamic"]), str(tmp_path), "--batch", "2", block_torch=True)
    assert bad.returncode == 2 and "batch_size=1 only" in bad.stderr
