"""Extensible classifier bundles and classes added on the device: the second output and its gate, a class added
through the CLI with torch blocked (old classes kept, new images recognised), the file of added classes (atomic,
checksummed, bound to its model), and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import BundleError, GalleryError, GalleryMismatch, InputError
from runtimes.imprint import AddedClasses

from conftest import run_cli


@pytest.fixture(scope="module")
def cup_crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new class unlike any digit: 5 crops of a photo of a coffee cup to add it from (shots/), 12 others (query/)."""
    from skimage import data

    photo = data.coffee()  # 400 x 600 RGB
    root = tmp_path_factory.mktemp("cup")
    rng = np.random.default_rng(0)
    for i in range(17):
        size = int(rng.integers(220, 380))
        top, left = int(rng.integers(0, 400 - size + 1)), int(rng.integers(0, 600 - size + 1))
        folder = root / ("shots" if i < 5 else "query")
        folder.mkdir(exist_ok=True)
        np.save(folder / f"{i}.npy", np.ascontiguousarray(photo[top : top + size, left : left + size]))
    return root


def _test_split():
    from edge_transfer.data import load_digits_dataset, stratified_split

    ds = load_digits_dataset()
    test = stratified_split(ds.targets, seed=0).test
    return [ds.items[i] for i in test], ds.targets[test]


def test_the_features_output_is_gated_and_the_replay_is_listed(extensible_bundles, digits_bundle):
    for fmt in ("onnx", "openvino"):  # tensorrt: tests/test_tensorrt_control_flow.py (TensorRT itself is absent here)
        with runtimes.load(extensible_bundles[fmt]) as p:
            m = p.manifest
            assert m.schema_version == 3 and [o.name for o in m.outputs] == ["logits", "features"], fmt
            assert m.extension["dim"] == 1280 and m.extension["replay_per_class"] == 50 and m.extension["replay_count"] == 500
            assert "replay.npz" in {f.path for f in m.files}
            v = m.validation
            assert v["passed"] and v["checks"]["features_cosine"] and v["features"]["mean_cosine"] >= 0.9999, (fmt, v)
            images = np.zeros((3, 20, 30, 3), np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None, None] * 80
            logits, feats = p.logits_and_features(images)
            assert feats.shape == (3, 1280) and np.array_equal(logits, p.run(p.prepare(images)))
            st = p.self_test()  # the golden images' features are checked too
            assert st.status == "pass" and st.features_cosine >= st.min_features_cosine > 0.99, st.summary()
    with runtimes.load(digits_bundle) as plain, pytest.raises(InputError, match="no features output .* --output extensible"):
        plain.logits_and_features(np.zeros((8, 8, 3), np.uint8))


def test_a_class_added_on_the_device_keeps_the_old_classes_and_recognises_the_new_one(extensible_bundles, cup_crops, digits_run, tmp_path):
    bundle, added = str(extensible_bundles["openvino"]), tmp_path / "added" / "classes.npz"
    r = run_cli("imprint", bundle, "--classes", str(added), "--label", "cup", str(cup_crops / "shots"), block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "added cup: a new row from 5 image(s) (fit)" in r.stdout and "10 class(es) of the bundle + 1 added" in r.stdout
    r = run_cli("predict", bundle, "--classes", str(added), str(cup_crops / "query"), "--json", "--top-k", "1", block_torch=True)
    assert r.returncode == 0, r.stderr
    answers = [rec["top_k"][0]["label"] for rec in json.loads(r.stdout)["predictions"]]
    assert answers.count("cup") >= 10, answers  # 12 held-out crops of the new class
    images, targets = _test_split()
    with runtimes.load(bundle) as p:
        classes = AddedClasses.load(added, p)
        logits, feats = p.logits_and_features(images)
        extended = classes.extend(logits, feats)
    assert np.array_equal(extended[:, :10], logits)  # the bundle's own classes score exactly as validated
    before, after = float((logits.argmax(1) == targets).mean()), float((extended.argmax(1) == targets).mean())
    assert after >= before - 0.01, (before, after)
    r = run_cli("imprint", bundle, "--classes", str(added), "--list", "--json", block_torch=True)
    assert json.loads(r.stdout)["added"] == {"cup": 5}
    r = run_cli("imprint", bundle, "--classes", str(added), "--remove", "cup", block_torch=True)
    assert r.returncode == 0 and "removed cup" in r.stdout


def test_added_classes_are_saved_atomically_and_bound_to_their_model(extensible_bundles, cup_crops, tmp_path, monkeypatch):
    path = tmp_path / "classes.npz"
    with runtimes.load(extensible_bundles["onnx"]) as p:
        classes = AddedClasses.for_bundle(p)
        with pytest.raises(InputError, match="'3' is one of the bundle's own classes"):
            classes.add_images(p, "3", [str(f) for f in sorted((cup_crops / "shots").iterdir())])
        classes.add_images(p, "cup", [str(f) for f in sorted((cup_crops / "shots").iterdir())][:3])
        classes.add_images(p, "cup", [str(f) for f in sorted((cup_crops / "shots").iterdir())][3:])  # more images: the row fitted again
        assert classes.added() == {"cup": 5} and classes.labels[-1] == "cup"
        classes.save(path)
        first = path.read_bytes()

        def crash(*_a, **_k):
            raise KeyboardInterrupt

        monkeypatch.setattr(np, "savez", crash)
        classes.remove("cup")
        with pytest.raises(KeyboardInterrupt):
            classes.save(path)
        monkeypatch.undo()
        assert path.read_bytes() == first and [f.name for f in tmp_path.iterdir()] == ["classes.npz"]
        again = AddedClasses.load(path, p)
        assert again.added() == {"cup": 5} and again.labels == classes.base_labels + ("cup",)
        with pytest.raises(InputError, match="no added class 'dog'"):
            again.remove("dog")
        again.fingerprint = "0" * 32
        again.save(tmp_path / "foreign.npz")
        with pytest.raises(GalleryMismatch, match="added to another model"):
            AddedClasses.load(tmp_path / "foreign.npz", p)
        damaged = tmp_path / "damaged.npz"
        damaged.write_bytes(first[: len(first) // 2])
        with pytest.raises(GalleryError, match="damaged.npz: not a readable file of added classes"):
            AddedClasses.load(damaged, p)


def test_a_changed_replay_file_or_a_missing_features_output_is_named(extensible_bundles, tmp_path):
    from runtimes.manifest import parse_manifest

    copy = tmp_path / "bundle"
    shutil.copytree(extensible_bundles["onnx"], copy)
    doc = json.loads((copy / "manifest.json").read_text())
    one_output = dict(doc, outputs=doc["outputs"][:1])
    with pytest.raises(BundleError, match="must list the logits, then 'features'"):
        parse_manifest(one_output)
    with pytest.raises(BundleError, match="'extension.replay' \\('gone.npz'\\) is not one of model.files"):
        parse_manifest(dict(doc, extension=dict(doc["extension"], replay="gone.npz")))
    with runtimes.load(copy) as p:
        with np.load(copy / "replay.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["bias"] = arrays["bias"] + 1
        np.savez(copy / "replay.npz", **arrays)
        with pytest.raises(BundleError, match="replay.npz changed since the bundle was written"):
            AddedClasses.for_bundle(p)


def _toy_classes(seed: int = 0):
    """Four Gaussian classes in 32-d with a nearest-mean head, and a fifth class between two of them."""
    from runtimes.imprint import Replay

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.5, (5, 32))
    means[4] = 0.5 * (means[0] + means[1]) + rng.normal(0, 0.8, 32)

    def sample(c: int, n: int) -> np.ndarray:
        return means[c] + rng.normal(0, 1, (n, 32))

    weight, bias = means[:4], -0.5 * (means[:4] ** 2).sum(1)
    replay = Replay(weight, bias, np.concatenate([sample(c, 50) for c in range(4)]), np.repeat(np.arange(4), 50), "toy")
    return replay, sample


def test_a_row_fitted_from_five_examples_keeps_the_old_classes_and_finds_the_new_one():
    replay, sample = _toy_classes()
    old_x, old_y, new_x = np.concatenate([sample(c, 200) for c in range(4)]), np.repeat(np.arange(4), 200), sample(4, 200)
    added = AddedClasses(("a", "b", "c", "d"), replay, "toy")
    added.add("e", sample(4, 5))
    old_logits = old_x @ replay.weight.T + replay.bias
    before = float((old_logits.argmax(1) == old_y).mean())
    after = float((added.extend(old_logits, old_x).argmax(1) == old_y).mean())
    found = float((added.extend(new_x @ replay.weight.T + replay.bias, new_x).argmax(1) == 4).mean())
    assert after >= before - 0.01 and found >= 0.8, (before, after, found)
    with pytest.raises(InputError, match="expected finite features of shape \\(N, 32\\)"):
        added.add("f", np.full((2, 32), np.nan))


def test_predictions_read_a_consistent_set_of_classes_while_another_thread_adds():
    import threading

    replay, sample = _toy_classes(1)
    added = AddedClasses(("a", "b", "c", "d"), replay, "toy")
    x = sample(0, 8)
    logits = x @ replay.weight.T + replay.bias
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                out = added.extend(logits, x)
                assert out.shape[1] in range(4, 4 + 21) and np.isfinite(out).all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(20):
        added.add(f"new{i}", sample(4, 3))
    stop.set()
    for t in threads:
        t.join()
    assert not errors and len(added.added()) == 20 and added.labels[-1] == "new19"


CONCURRENT_ADDS = """
import sys
import numpy as np
import runtimes
from runtimes.imprint import AddedClasses

bundle, path, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with runtimes.load(bundle) as p:
    replay = AddedClasses.for_bundle(p).replay
    rng = np.random.default_rng(int(worker))
    for i in range(count):
        shots = replay.features[rng.choice(len(replay.features), 3)] + rng.normal(scale=0.5, size=(3, replay.features.shape[1]))
        with AddedClasses.editing(path, p) as added:
            added.add(f"w{worker}-{i}", shots)
"""


def test_processes_adding_classes_to_one_file_at_once_keep_every_class(extensible_bundles, cup_crops, tmp_path):
    """2 processes x 4 adds into one file (AddedClasses.editing: a filelock around read, fit, save): all 8 kept (before
    the lock, 8 of 16 survived); the labels checked wherever a label enters."""
    import subprocess
    import sys

    from conftest import ROOT

    bundle, path = str(extensible_bundles["onnx"]), tmp_path / "shared.npz"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_ADDS, bundle, str(path), str(w), "4"], cwd=ROOT) for w in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    with runtimes.load(bundle) as p:
        added = AddedClasses.load(path, p)
        assert sorted(added.added()) == sorted(f"w{w}-{i}" for w in range(2) for i in range(4))
        for label, why in (
            ("３", "only by spaces or character width"),
            ("3 ", "differs from the label .3. only by spaces"),
            ("a\x1b[31m", "control characters"),
        ):
            with pytest.raises(InputError, match=why):
                added.add(label, added.replay.features[:2])
    shots = str(cup_crops / "shots")
    for label in ("w0-0 ", "Unknown", "two\nlines"):
        r = run_cli("imprint", bundle, "--classes", str(path), "--label", label, shots)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
