"""`edge-transfer val` / `runtimes.evaluate`: a bundle on a labelled folder, on the device (torch blocked), with a
corrupt file, per-class numbers that agree with the confusion matrix, and the confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import InputError
from runtimes.evaluate import evaluate

from conftest import run_cli


@pytest.fixture(scope="module")
def held_out(digits_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 359 test-split digits as .npy files in class folders "0".."9", plus a corrupt JPEG and a .DS_Store."""
    from edge_transfer.data import load_digits_dataset, stratified_split
    from runtimes.preprocess import PreprocessConfig

    ds = load_digits_dataset()
    test = stratified_split(ds.targets, seed=0).test
    cfg = PreprocessConfig.from_dict(digits_run.config["preprocessing"])
    root = tmp_path_factory.mktemp("held_out")
    for i, img in zip(test, ds.prepared_batch(test, cfg)):
        (root / ds.classes[ds.targets[i]]).mkdir(exist_ok=True)
        np.save(root / ds.classes[ds.targets[i]] / f"{i}.npy", img)
    (root / "3" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "3" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_val_on_the_device_skips_the_corrupt_file_and_draws_the_matrix(digits_bundle: Path, held_out: Path, tmp_path: Path):
    r = run_cli("val", str(digits_bundle), "--data", str(held_out), "--quiet", block_torch=True)
    assert r.returncode == 2 and "broken.jpg: not a readable image" in r.stderr and "--skip-bad" in r.stderr and "Traceback" not in r.stderr
    png = tmp_path / "cm.png"
    r = run_cli("val", str(digits_bundle), "--data", str(held_out), "--skip-bad", "--json", "--plot", str(png), block_torch=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    cm = np.array(doc["confusion"])
    assert doc["count"] == 359 == cm.sum() and len(doc["skipped"]) == 1 and doc["skipped"][0]["path"].endswith("broken.jpg")
    assert doc["accuracy"] == pytest.approx(np.trace(cm) / 359) and doc["accuracy"] > 0.7
    for i, row in enumerate(doc["per_class"]):  # precision / recall are the matrix's column / row shares
        assert row["support"] == cm[i].sum() and row["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        if cm[:, i].sum():
            assert row["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    confidences = [m["confidence"] for m in doc["mistakes"]]
    assert len(confidences) == min(10, 359 - np.trace(cm)) and confidences == sorted(confidences, reverse=True)
    assert all(Path(m["path"]).exists() and m["true"] != m["predicted"] for m in doc["mistakes"])
    assert png.stat().st_size > 10_000
    text = run_cli("val", str(digits_bundle), "--data", str(held_out), "--skip-bad", "--quiet")
    assert text.returncode == 0 and "confusion matrix (rows: true class" in text.stdout and "left out (1 unreadable)" in text.stdout


def test_a_folder_of_other_classes_is_refused_naming_them(digits_bundle: Path, tmp_path: Path):
    (tmp_path / "cat").mkdir()
    np.save(tmp_path / "cat" / "a.npy", np.zeros((8, 8, 3), np.uint8))
    with runtimes.load(digits_bundle) as p, pytest.raises(InputError, match="'cat' are not among the bundle's labels"):
        evaluate(p, tmp_path)


def test_export_validates_on_a_folder_with_a_corrupt_image_only_with_skip_bad(digits_run, held_out: Path, tmp_path: Path):
    """export --data DIR stops at an unreadable file (named, with the flag that helps); --skip-bad leaves it out."""
    args = ["export", str(digits_run.path), "--format", "onnx", "--data", str(held_out), "--quiet"]
    r = run_cli(*args, "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "1 unreadable image(s)" in r.stderr and "broken.jpg" in r.stderr and "--skip-bad" in r.stderr
    r = run_cli(*args, "--out", str(tmp_path / "b"), "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert runtimes.read_manifest(tmp_path / "b").validation["count"] == 359
