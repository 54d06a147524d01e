"""Datasets, splits and the backbone registry, with real files and real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_transfer.data import dataset_from_arrays, load_digits_dataset, load_image_folder, stratified_split
from edge_transfer.sources import create_backbone
from runtimes.errors import CheckpointError, DatasetError, InputError

from conftest import write_image_folder


def test_digits_are_rgb_uint8_with_ten_classes():
    ds = load_digits_dataset()
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)]
    assert ds.items[0].shape == (8, 8, 3) and ds.items[0].dtype == np.uint8


def test_splits_are_stratified_seeded_and_disjoint():
    y = load_digits_dataset().targets
    a, b = stratified_split(y, seed=3), stratified_split(y, seed=3)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, stratified_split(y, seed=4).test)
    assert set(a.train) | set(a.val) | set(a.test) == set(range(len(y)))
    assert not (set(a.train) & set(a.test)) and not (set(a.val) & set(a.test))
    for split in (a.train, a.val, a.test):
        assert set(y[split]) == set(range(10))


def test_image_folder_with_mixed_files(tmp_path: Path):
    root = write_image_folder(tmp_path / "data")
    (root / "zero" / "notes.txt").write_text("not an image")
    ds = load_image_folder(root)
    assert ds.classes == ["one", "two", "zero"]
    assert len(ds) == 24 and ds.info["ignored_non_images"] == 1
    assert ds.load(0).ndim in (2, 3)


def test_corrupt_image_is_named_or_skipped(tmp_path: Path):
    root = write_image_folder(tmp_path / "data")
    bad = root / "one" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (root / "two" / "1.jpg").read_bytes()
    (root / "two" / "truncated.jpg").write_bytes(good[: len(good) // 2])  # found by the pre-scan, not partway through work
    with pytest.raises(
        DatasetError, match=r"2 unreadable image\(s\): .*broken.png .*truncated.jpg .*fix or remove them \(--skip-bad leaves them out\)"
    ):
        load_image_folder(root)  # the same message serves train, export --data / --calibration-data (all take --skip-bad)
    ds = load_image_folder(root, skip_bad=True)
    assert len(ds) == 24 and ds.info["skipped_bad"] == 2


def test_empty_class_and_single_class_are_refused(tmp_path: Path):
    root = write_image_folder(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="class folder\\(s\\) with no readable images: empty"):
        load_image_folder(root)
    assert load_image_folder(root, skip_bad=True).classes == ["one", "two", "zero"]  # --skip-bad leaves it out, said
    single = write_image_folder(tmp_path / "single", classes=("only",))
    with pytest.raises(DatasetError, match="at least 2 class"):
        load_image_folder(single)
    with pytest.raises(DatasetError, match="no such dataset"):
        load_image_folder(tmp_path / "missing")


def test_arrays_dataset_checks_labels():
    imgs = [np.zeros((5, 5, 3), np.uint8)] * 4
    ds = dataset_from_arrays(imgs, ["cat", "dog", "cat", "dog"])
    assert ds.classes == ["cat", "dog"] and list(ds.targets) == [0, 1, 0, 1]
    with pytest.raises(DatasetError, match="3 images but 4 labels"):
        dataset_from_arrays(imgs[:3], [0, 1, 0, 1])
    with pytest.raises(DatasetError, match="class 'cat' has 2"):
        stratified_split(ds.targets, classes=ds.classes)


def test_efficientnet_lite0_real_weights_see_a_cat():
    from skimage import data

    from edge_transfer.model import ImageClassifier
    from runtimes.preprocess import prepare_image

    bb = create_backbone("efficientnet_lite0")
    assert bb.num_features == 1280 and len(bb.labels) == 1000
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5) and bb.preprocessing.interpolation == "bicubic"
    model = ImageClassifier(bb, bb.source_head, bb.labels).eval()
    x = torch.from_numpy(prepare_image(data.chelsea(), bb.preprocessing)[None])
    with torch.no_grad():
        top = int(model(x).argmax())
    assert "cat" in bb.labels[top]


@pytest.mark.parametrize("name, features", [("timm:resnet18", 512), ("torchvision:mobilenet_v3_small", 576)])
def test_timm_and_torchvision_backbones_untrained(name: str, features: int):
    bb = create_backbone(name, pretrained=False)
    assert bb.num_features == features and bb.source_head is not None
    assert len(bb.block_groups) >= 3
    out = bb(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, features)


def test_unknown_backbones_are_clear_errors(tmp_path: Path):
    with pytest.raises(InputError, match="unknown backbone"):
        create_backbone("resnet-9000")
    with pytest.raises(InputError, match="unknown timm model"):
        create_backbone("timm:not_a_model", pretrained=False)
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no JSON config"):
        create_backbone(str(tmp_path / "w.safetensors"))


def test_local_safetensors_checkpoint(tmp_path: Path):
    import json

    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    save_file(model.state_dict(), str(tmp_path / "mine.safetensors"))
    (tmp_path / "mine.json").write_text(json.dumps({"backbone": "timm:resnet18", "labels": ["a", "b", "c"]}))
    bb = create_backbone(str(tmp_path / "mine.safetensors"))
    assert bb.labels == ["a", "b", "c"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(bb.source_head(bb(x)).numpy(), model(x).numpy(), atol=1e-5)
