"""Embedding bundles and the device gallery: the gate, `embed`, enrol/identify through the CLI with torch blocked,
the unknown answer, atomic saves, a foreign gallery refused, enrolment while other threads identify."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import GalleryError, GalleryMismatch, InputError
from runtimes.gallery import Gallery, calibrate_threshold

from conftest import run_cli


@pytest.fixture(scope="module")
def digit_folders(digits_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's test-split digits as .npy files in class folders: enrol/ (5 per class 0-6), query/ (the rest of
    0-6) and never/ (classes 7-9)."""
    from edge_transfer.data import load_digits_dataset, stratified_split
    from runtimes.preprocess import PreprocessConfig

    ds = load_digits_dataset()
    test = stratified_split(ds.targets, seed=0).test
    cfg = PreprocessConfig.from_dict(digits_run.config["preprocessing"])
    root = tmp_path_factory.mktemp("digit-folders")
    seen: dict[str, int] = {}
    for i, img in zip(test, ds.prepared_batch(test, cfg)):
        label = ds.classes[ds.targets[i]]
        n = seen[label] = seen.get(label, 0) + 1
        part = "never" if int(label) >= 7 else ("enrol" if n <= 5 else "query")
        (root / part / label).mkdir(parents=True, exist_ok=True)
        np.save(root / part / label / f"{i}.npy", img)
    return root


def test_embedding_bundles_pass_their_gate_and_self_test_and_embed_unit_vectors(embedding_bundles, digits_bundle):
    for fmt, path in embedding_bundles.items():
        with runtimes.load(path) as p:
            manifest = p.manifest
            assert manifest.schema_version == 2 and manifest.labels == () and manifest.embedding["dim"] == 1280
            v = manifest.validation
            assert v["passed"] and v["kind"] == "embedding", (fmt, v)
            assert v["mean_cosine"] >= (0.9999 if fmt == "onnx" else 0.95) and v["neighbour_agreement"] >= 0.9
            assert 0.0 < manifest.embedding["unknown_threshold"] < 1.0  # calibrated on the labelled held-out split
            assert p.self_test().status == "pass"
            e = p.embed(np.zeros((40, 50, 3), np.uint8))
            assert e.shape == (1, 1280) and e.dtype == np.float32 and abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
            with pytest.raises(InputError, match="embedding bundle .* use embed\\(\\)"):
                p.predict(np.zeros((8, 8, 3), np.uint8))
    with runtimes.load(digits_bundle) as classifier, pytest.raises(InputError, match="classifier bundle .* --output embedding"):
        classifier.embed(np.zeros((8, 8, 3), np.uint8))


def test_enroll_and_identify_on_the_device_answer_unknown_for_a_class_never_enrolled(embedding_bundles, digit_folders, tmp_path):
    bundle, gallery = str(embedding_bundles["openvino-int8"]), tmp_path / "g" / "digits.npz"
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--from-folders", str(digit_folders / "enrol"), block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "enrolled 6: 5 image(s)" in r.stdout and "7 label(s), 35 image(s)" in r.stdout
    r = run_cli(
        "identify",
        bundle,
        "--gallery",
        str(gallery),
        str(digit_folders / "query"),
        str(digit_folders / "never"),
        "--recursive",
        "--json",
        block_torch=True,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    known = [x for x in doc["identifications"] if "/query/" in x["image"]]
    never = [x for x in doc["identifications"] if "/never/" in x["image"]]
    truth = [Path(x["image"]).parent.name for x in known]
    nearest = np.mean([x["nearest"] == t for x, t in zip(known, truth)])
    assert nearest > 0.6, nearest  # ImageNet features on 64 px digits, 5 per class: far from ImageNet, still well above chance
    assert np.mean([not x["known"] for x in never]) > np.mean([not x["known"] for x in known])  # the unknown answer means something
    assert all(x["label"] == "unknown" for x in never if not x["known"])
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--remove", "6", block_torch=True)
    assert r.returncode == 0 and "removed 6 (5 image(s))" in r.stdout
    files = sorted(str(p) for p in (digit_folders / "enrol" / "6").iterdir())[:2]
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--label", "6", *files)  # files after the options
    assert r.returncode == 0 and "enrolled 6: 2 image(s)" in r.stdout, r.stderr
    listed = run_cli("enroll", bundle, "--gallery", str(gallery), "--list", "--json", block_torch=True)
    assert json.loads(listed.stdout)["labels"] == {**{str(d): 5 for d in range(6)}, "6": 2}
    other = run_cli("identify", str(embedding_bundles["onnx"]), "--gallery", str(gallery), str(digit_folders / "never" / "7"))
    assert other.returncode == 0, other.stderr  # another format of the same export shares the gallery


def test_a_gallery_of_another_model_is_refused_and_a_damaged_one_is_named(embedding_bundles, tmp_path):
    with runtimes.load(embedding_bundles["onnx"]) as p:
        g = Gallery.for_bundle(p)
        g.enroll("a", p.embed(np.zeros((3, 16, 16, 3), np.uint8)))
        path = g.save(tmp_path / "g.npz")
    other = tmp_path / "other"
    shutil.copytree(embedding_bundles["onnx"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["weights"] = "someone else's weights"  # the same files, presented as another model
    (other / "manifest.json").write_text(json.dumps(manifest))
    with runtimes.load(other) as p, pytest.raises(GalleryMismatch, match="another embedding model .* enrol the labels again"):
        Gallery.load(path, p)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="bad.npz"):
        Gallery.load(tmp_path / "bad.npz")
    with pytest.raises(GalleryError, match="no such gallery file"):
        Gallery.load(tmp_path / "missing.npz")


def _toy(dim: int = 8) -> Gallery:
    g = Gallery(dim, "toy", threshold=0.8)
    eye = np.eye(dim, dtype=np.float32)
    g.enroll("x", eye[0] + 0.1 * eye[1])
    g.enroll("y", np.stack([eye[2], eye[2] + 0.2 * eye[3]]))
    return g


def test_identify_by_class_mean_or_knn_with_an_unknown_threshold():
    g = _toy()
    eye = np.eye(8, dtype=np.float32)
    a, b, c = g.identify(np.stack([eye[0], eye[2], eye[5]]))
    assert (a.label, b.label, c.label) == ("x", "y", None) and c.nearest is not None and c.score < 0.8
    assert g.identify(eye[5], threshold=-1.0)[0].known  # the threshold is the caller's to override
    assert [r.label for r in g.identify(np.stack([eye[0], eye[2]]), method="knn", k=2)] == ["x", "y"]
    assert g.labels() == {"x": 1, "y": 2} and len(g) == 3
    assert g.remove("x") == 1 and g.labels() == {"y": 2}
    with pytest.raises(InputError, match="no label 'x'"):
        g.remove("x")
    with pytest.raises(InputError, match=r"shape \(N, 8\)"):
        g.enroll("z", np.ones((2, 7)))
    with pytest.raises(InputError, match="reads as the 'unknown' answer"):
        g.enroll("unknown ", eye[:1])


def test_saving_is_atomic_and_round_trips(tmp_path, monkeypatch):
    g = _toy()
    path = g.save(tmp_path / "g.npz")
    before = path.read_bytes()
    g.enroll("z", np.eye(8, dtype=np.float32)[4])

    def crash(*_a, **_k):
        raise KeyboardInterrupt  # power cut in the middle of the write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        g.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.npz"]  # old gallery, no temp file left
    g.save(path)
    back = Gallery.load(path)
    assert back.labels() == {"x": 1, "y": 2, "z": 1} and back.default_threshold == 0.8
    np.testing.assert_array_equal(back._vectors, g._vectors)


def test_identify_while_another_thread_enrols():
    g = _toy(16)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                answers = g.identify(queries, threshold=-1.0)
                assert len(answers) == 64 and all(a.label is not None for a in answers)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        g.enroll(f"n{i % 20}", rng.normal(size=(2, 16)))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(g) == 3 + 400 and len(g.labels()) == 22


def test_the_unknown_threshold_keeps_known_accuracy_within_two_points():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 32))
    x = np.concatenate([c + 0.6 * rng.normal(size=(20, 32)) for c in centres])
    y = np.repeat(np.arange(6), 20)
    cal = calibrate_threshold(x, y)
    assert cal is not None and cal["known_accuracy"] >= cal["known_accuracy_without_threshold"] - 0.02 - 1e-9
    assert cal["unknown_rejected"] > 0.5 and -1.0 <= cal["unknown_threshold"] <= 1.0
    assert calibrate_threshold(x[:5], y[:5]) is None  # one class, five images: nothing to calibrate on


def test_the_enrol_and_identify_example_runs_without_torch(embedding_bundles, digit_folders, tmp_path):
    import subprocess

    from test_examples import _example

    gallery = tmp_path / "objects.npz"
    cmd = _example("enroll_and_identify.py", str(embedding_bundles["onnx"]), "--gallery", str(gallery), "--enrol", str(digit_folders / "enrol"))
    r = subprocess.run([*cmd, str(digit_folders / "never" / "8")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "enrolled 0 from 5 image(s)" in r.stdout and gallery.is_file()
    answers = [line for line in r.stdout.splitlines() if "cosine" in line]
    assert len(answers) == len(list((digit_folders / "never" / "8").iterdir()))
    assert all(": unknown (closest: " in a or a.split(": ")[1].split()[0] in "0123456" for a in answers)
    again = subprocess.run(
        _example("enroll_and_identify.py", str(embedding_bundles["onnx"]), "--gallery", str(tmp_path / "none.npz")), capture_output=True, text=True
    )
    assert again.returncode == 2 and "the gallery is empty" in again.stderr


def test_the_embedding_section_is_checked_field_by_field(embedding_bundles):
    from runtimes.errors import BundleError
    from runtimes.manifest import parse_manifest

    doc = json.loads((embedding_bundles["onnx"] / "manifest.json").read_text())
    assert parse_manifest(doc).output_width == 1280 and doc["outputs"][0]["name"] == "embedding"
    for field, value, message in (
        ("dim", 0, "'embedding.dim' must be >= 1"),
        ("dim", 1000, r"must be \(batch, 1000\) to match 'embedding.dim'"),
        ("normalization", "l1", "'embedding.normalization' must be one of l2"),
        ("unknown_threshold", 1.5, "'embedding.unknown_threshold' must be a cosine similarity"),
        ("layers", "blocks.3", "'embedding.layers' must be a list"),
    ):
        with pytest.raises(BundleError, match=message):
            parse_manifest({**doc, "embedding": {**doc["embedding"], field: value}})
    without = {k: v for k, v in doc.items() if k != "embedding"}
    with pytest.raises(BundleError, match="'labels' must be a non-empty list"):  # no labels and no embedding: neither kind
        parse_manifest(without)


CONCURRENT_ENROLS = """
import sys
import numpy as np
import runtimes
from runtimes.gallery import Gallery

bundle, path, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = np.random.default_rng(int(worker))
with runtimes.load(bundle) as p:
    for i in range(count):
        with Gallery.editing(path, p) as g:
            g.enroll(f"w{worker}-{i}", rng.normal(size=(1, p.manifest.embedding["dim"])))
"""


def test_processes_enrolling_into_one_gallery_at_once_keep_every_label(embedding_bundles, digit_folders, tmp_path):
    """4 processes x 10 enrols into one file through Gallery.editing (a filelock around read, change, save), and two
    CLI enrols of 5 folders each at the same time: every label is kept. Before the lock, 4 of 40 and 5 of 10 were lost."""
    import subprocess
    import sys

    from conftest import ROOT

    bundle, path = str(embedding_bundles["onnx"]), tmp_path / "shared.npz"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_ENROLS, bundle, str(path), str(w), "10"], cwd=ROOT) for w in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert sorted(Gallery.load(path).labels()) == sorted(f"w{w}-{i}" for w in range(4) for i in range(10))

    halves = tmp_path / "a", tmp_path / "b"
    for half, digits in zip(halves, ("01234", "56789")):
        for d in digits:
            shutil.copytree(digit_folders / ("never" if int(d) >= 7 else "enrol") / d, half / d)
    cli = [sys.executable, "-m", "edge_transfer", "enroll", bundle, "--gallery", str(tmp_path / "cli.npz"), "--from-folders"]
    procs = [subprocess.Popen([*cli, str(h)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for h in halves]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert sorted(Gallery.load(tmp_path / "cli.npz").labels()) == list("0123456789")


def test_a_symlinked_gallery_stays_a_link_and_a_failed_save_changes_nothing(embedding_bundles, digit_folders, tmp_path, monkeypatch):
    bundle = str(embedding_bundles["onnx"])
    real = tmp_path / "store" / "gallery.npz"
    real.parent.mkdir()
    link = tmp_path / "gallery.npz"
    link.symlink_to(real)
    r = run_cli("enroll", bundle, "--gallery", str(link), "--label", "0", str(digit_folders / "enrol" / "0"))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and Gallery.load(real).labels() == {"0": 5}  # the real file changed; the link is still a link

    before = real.read_bytes()
    (tmp_path / "afile").write_text("mine\n")
    r = run_cli("enroll", bundle, "--gallery", str(tmp_path / "afile" / "g.npz"), "--label", "1", str(digit_folders / "enrol" / "1"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "afile is a file, so nothing" in r.stderr
    # a full disk and a read-only file system cannot be made here (root ignores permissions): the OS error is injected
    # into the write, the real code path handles it
    import errno

    for code in (errno.ENOSPC, errno.EROFS):

        def refuse(*_a, code=code, **_k):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(np, "savez", refuse)
        r = run_cli("enroll", bundle, "--gallery", str(link), "--label", "1", str(digit_folders / "enrol" / "1"))
        assert r.returncode == 2 and r.stderr.startswith("error: ") and os.strerror(code) in r.stderr, r.stderr
        assert "what was there before is unchanged" in r.stderr and real.read_bytes() == before
        assert sorted(p.name for p in real.parent.iterdir() if not p.name.endswith(".lock")) == ["gallery.npz"]  # no temp file left
        monkeypatch.undo()
