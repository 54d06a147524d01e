"""Wrong answers with no error, and the first day's rough edges: each case through the real API or CLI,
with one `error:` line or the right answer, and the user's files hashed before and after."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_user_files import one_error, tree

import runtimes
from runtimes.errors import GalleryError, InputError
from runtimes.gallery import Gallery, calibrate_threshold, threshold_problem
from runtimes.npz_document import document_digest

from conftest import ROOT, run_cli, write_image_folder


def test_a_symlink_back_into_the_data_folder_is_skipped_and_counted(tmp_path: Path, caplog):
    """Before: a top-level link to the data folder itself became a 4th class holding every image again (test accuracy
    19%, no warning). Links that lead back inside the folder, or loop, are left out and counted; links to images
    elsewhere are kept."""
    from edge_transfer.data import load_dataset

    root = write_image_folder(tmp_path / "photos", per_class=4)
    (root / "everything").symlink_to(root)  # a class folder that is the data folder
    (root / "zero" / "again").symlink_to(root / "zero")  # a loop inside a class
    (root / "one" / "twin.png").symlink_to(root / "two" / "0.png")  # the same image twice, in two classes
    elsewhere = write_image_folder(tmp_path / "elsewhere", per_class=2, classes=("two",))
    (root / "two" / "more").symlink_to(elsewhere / "two")  # images outside the data folder: kept
    before = tree(root)
    with caplog.at_level(logging.WARNING, logger="edge_transfer.data"):
        ds = load_dataset(str(root))
    assert ds.classes == ["one", "two", "zero"] and len(ds) == 4 + 6 + 4
    assert ds.info["skipped_links"] == 3 and "skipped 3 symlink(s)" in caplog.text
    assert tree(root) == before


def test_skip_bad_leaves_out_a_truncated_jpeg(tmp_path: Path):
    """The pre-scan decoded nothing (`verify()`), so a truncated JPEG passed it and stopped training later with
    "--skip-bad leaves unreadable images out", which it had not. With --skip-bad every image is decoded first."""
    from PIL import Image

    from edge_transfer.data import load_dataset

    root = write_image_folder(tmp_path / "photos", per_class=4)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(buf, "JPEG")
    (root / "one" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds = load_dataset(str(root), skip_bad=True)
    assert len(ds) == 12 and ds.info["skipped_bad"] == 1 and not any("cut.jpg" in str(p) for p in ds.items)


@pytest.mark.parametrize(
    "names, why",
    [
        (("3", "３"), "only by spaces or character width"),
        (("cat", "cat "), "only by spaces or character width"),
        (("cat", "Unknown"), "reads as the 'unknown' answer"),
        (("cat", "two\x1b[31mred"), "control characters"),
    ],
)
def test_labels_that_would_be_shown_wrong_are_refused_where_they_enter(names, why, tmp_path: Path):
    """Training folders, enroll and imprint share one check (runtimes.labels); labels from elsewhere are escaped."""
    from edge_transfer.data import load_dataset
    from runtimes.labels import shown

    root = write_image_folder(tmp_path / "photos", per_class=3, classes=names)
    with pytest.raises(InputError, match=why):
        load_dataset(str(root))
    g = Gallery(4, "toy")
    g.enroll(names[0], np.eye(4)[:1])
    with pytest.raises(InputError, match=why):
        g.enroll(names[1], np.eye(4)[1:2])
    assert shown("a\nforged row\x1b[0m") == "a\\nforged row\\x1b[0m"


def _npz(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


def _npy(array: np.ndarray, *, shape: tuple[int, ...] | None = None) -> bytes:
    """An .npy member; `shape` overrides the header's (a file that claims more rows than it holds)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    data = buf.getvalue()
    if shape is None:
        return data
    header = {"descr": array.dtype.str, "fortran_order": False, "shape": shape}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + array.tobytes()


def test_gallery_files_are_read_with_the_manifest_limits(tmp_path: Path):
    """Before: a 1 MB file inflating to 1 GB took 2.1 GB of memory, a 2.8 KB file declaring 10^11 rows raised
    MemoryError, and a missing key, labels as dicts, deep JSON or a version string gave tracebacks; an edited
    threshold was not covered by the checksum. Each is now a GalleryError naming the file and what is wrong."""
    g = Gallery(4, "toy", threshold=0.6)
    g.enroll("a", np.eye(4)[:2])
    good = g.save(tmp_path / "good.npz")
    with zipfile.ZipFile(good) as z:
        meta = json.loads(str(np.load(io.BytesIO(z.read("meta.npy")))))
        vectors = z.read("embeddings.npy")

    def with_meta(name: str, change, extra: str = "", rehash: bool = True) -> Path:
        """A copy with its metadata changed; `rehash`: its checksum re-made, as a careless producer would, so the
        field checks behind it are reached."""
        doc = dict(meta)
        change(doc)
        if rehash:
            doc["sha256"] = document_digest({"embeddings": np.load(io.BytesIO(vectors))}, doc)
        text = json.dumps(doc)[:-1] + extra + "}"
        return _npz(tmp_path / name, {"embeddings": vectors, "meta": _npy(np.asarray(text))})

    cases = {
        "edited threshold": (with_meta("t.npz", lambda d: d.update(threshold=-1.0), rehash=False), "checksum mismatch"),
        "compressed bomb": (
            _npz(tmp_path / "bomb.npz", {"embeddings": _npy(np.zeros((1 << 18, 1024), np.float32)), "meta": _npy(np.asarray("{}"))}, compress=True),
            "compressed",
        ),
        "10^11 rows declared": (
            _npz(tmp_path / "rows.npz", {"embeddings": _npy(np.zeros((2, 4), np.float32), shape=(10**11, 4)), "meta": _npy(np.asarray("{}"))}),
            "shape (100000000000, 4)",
        ),
        "missing key": (with_meta("k.npz", lambda d: d.pop("dim")), "field 'dim' should be int, got nothing"),
        "labels as dicts": (with_meta("l.npz", lambda d: d.update(labels=[{"a": 1}, {"b": 2}])), "field 'labels' should list names"),
        "100k-deep JSON": (with_meta("d.npz", lambda d: None, ', "x": ' + "[" * 100_000 + "]" * 100_000), "nested deeper than 32"),
        "version string": (with_meta("v.npz", lambda d: d.update(version="2")), "field 'version' should be a whole number"),
        "object array": (_npz(tmp_path / "o.npz", {"embeddings": vectors, "meta": _npy(np.asarray(["x"], dtype=object))}), "not a readable"),
    }
    assert (tmp_path / "bomb.npz").stat().st_size < 2_000_000
    for what, (path, message) in cases.items():
        with pytest.raises(GalleryError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            Gallery.load(path)
        assert str(path) in str(info.value), what
    assert Gallery.load(good).default_threshold == 0.6


def test_an_unknown_threshold_that_rejects_no_stranger_is_flagged(tmp_path: Path):
    """Before: a threshold calibrated to -1.0 ("0.0% of never-enrolled images rejected") went out as an info line,
    and identify answered every stranger with a known name. Now calibration says it is unusable, export warns, the
    manifest stores why, `check` shows it and identify prints the threshold in use with the warning."""
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    x = centre + 0.05 * rng.normal(size=(60, 16))  # six classes that cannot be told apart from a stranger
    y = np.repeat(np.arange(6), 10)
    calibration = calibrate_threshold(x, y)
    assert calibration is not None and calibration["usable"] is False and calibration["unknown_rejected"] < 0.5
    problem = threshold_problem({"threshold_calibration": calibration})
    assert problem is not None and "identify will answer most strangers with a known label" in problem
    separable = np.repeat(np.eye(6, 16), 10, axis=0) + 0.05 * rng.normal(size=(60, 16))
    ok = calibrate_threshold(separable, y)
    assert ok is not None and ok["usable"] is True and threshold_problem({"threshold_calibration": ok}) is None


def test_closed_pipes_and_numeric_flags_out_of_range_get_one_line(digits_bundle: Path):
    """`... | head` closing early (before: a BrokenPipeError traceback), and numeric flags out of range (before: NaN
    trained, --image-size 0 became 224, --seed -1 a traceback, --batch-size 100000 took 22 GB, --threads 100000 hung)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_transfer", "inspect", str(digits_bundle)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr

    bundle = str(digits_bundle)
    for args, flag in [
        (["train", "--data", "digits", "--out", "x", "--lr", "nan"], "--lr must be a finite number"),
        (["train", "--data", "digits", "--out", "x", "--lr", "-1"], "--lr must be > 0"),
        (["train", "--data", "digits", "--out", "x", "--image-size", "0"], "--image-size must be >= 16"),
        (["train", "--data", "digits", "--out", "x", "--seed", "-1"], "--seed must be >= 0"),
        (["train", "--data", "digits", "--out", "x", "--batch-size", "100000"], "--batch-size must be >= 1 and <= 1024"),
        (["export", "run", "--out", "x", "--max-drop", "nan"], "--max-drop must be a finite number"),
        (["bench", bundle, "--batch", "100000"], "--batch must be whole numbers from 1 to 1024"),
        (["bench", bundle, "--threads", "100000"], "--threads must be >= 1 and <= 1024"),
        (["bench", bundle, "--threads", "0"], "--threads must be >= 1"),
        (["bench", bundle, "--threads", "-1"], "--threads must be >= 1"),
        (["predict", bundle, "--top-k", "0", "a.png"], "--top-k must be >= 1"),
        (
            ["identify", bundle, "--gallery", "g.npz", "--threshold", "2", "a.png"],
            "--min-score must be a number from -1 to 1",
        ),
    ]:
        one_error(run_cli(*args), flag)
    assert not Path("x").exists()


@pytest.mark.slow
def test_the_reliability_table_has_no_untyped_or_wrong_row(digits_bundle: Path, digits_run):
    """`scripts/reliability_table.py` (the README's tables) runs every case on the real code paths; a row that is
    UNTYPED (a traceback) or WRONG (a bad answer, or a user's file changed) makes it exit 1, and CI with it."""
    r = subprocess.run(
        [sys.executable, "scripts/reliability_table.py", str(digits_bundle), str(digits_run.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    bad = [line for line in r.stdout.splitlines() if "| UNTYPED" in line or "| WRONG" in line or "| FAILED" in line]
    assert r.returncode == 0 and not bad, "\n".join(bad) or r.stderr[-2000:]
    assert "the original bundle is byte-identical afterwards: True" in r.stdout
    assert "| 4 processes x 10 enrols into one gallery at once | 40 of 40 labels kept |" in r.stdout


def test_val_on_the_training_folder_says_so(tmp_path: Path):
    """Before: `val` on the folder the model was trained on reported 100% with no warning. The bundle records its
    train and val images (64-bit sha256 prefixes of their bytes), and `val` counts the ones it meets, whatever the
    folder is called; a folder of images the model never saw gets no warning."""
    import shutil

    import edge_transfer as et

    photos = write_image_folder(tmp_path / "photos", per_class=6)
    run = et.train(str(photos), out=tmp_path / "run", image_size=64, progress=False)
    et.export(run.path, out=tmp_path / "bundle", self_test_size=4)
    seen = runtimes.read_manifest(tmp_path / "bundle").source["seen_images"]
    assert seen["count"] == sum(run.config["split"]["sizes"][k] for k in ("train", "val")) == len(seen["keys"])
    shutil.copytree(photos, tmp_path / "copy")  # another name, the same images
    r = run_cli("val", str(tmp_path / "bundle"), "--data", str(tmp_path / "copy"), "--quiet")
    assert r.returncode == 0 and f"warning: {seen['count']} of these 18 images were in the data the model was trained or tuned on" in r.stdout
    fresh = write_image_folder(tmp_path / "fresh", per_class=2)
    from PIL import Image

    for f in [*fresh.rglob("*.png"), *fresh.rglob("*.jpg")]:  # other pixels: images the model never saw
        Image.fromarray(np.asarray(Image.open(f))[::-1].copy()).save(f)
    r = run_cli("val", str(tmp_path / "bundle"), "--data", str(fresh), "--quiet")
    assert r.returncode == 0 and "trained or tuned on" not in r.stdout


def test_warnings_name_the_bundle_not_its_staging_folder_and_int8_says_what_runs_in_int8(bundle_copy: Path, format_bundles, tmp_path, caplog):
    """Before: warnings during an export named `bundles/.lp-vnni.partial-8bz3usvx`, and openvino-int8 said "runs at
    f32" while onnx-int8 said "int8+f32". Now the published name is used, and both say what computes in int8."""
    import shutil

    doc = json.loads((bundle_copy / "manifest.json").read_text())
    doc["validation"]["passed"] = False
    (bundle_copy / "manifest.json").write_text(json.dumps(doc))
    staged = tmp_path / ".mybundle.partial-x1y2z3"
    shutil.copytree(bundle_copy, staged)
    with caplog.at_level(logging.WARNING, logger="runtimes.predictor"), runtimes.load(staged):
        pass
    assert f"{tmp_path / 'mybundle'}: this bundle FAILED its validation gate" in caplog.text and ".partial-" not in caplog.text
    for fmt in ("onnx-int8", "openvino-int8"):
        with runtimes.load(format_bundles[fmt]) as p:
            computes = p.describe()["computes"]
        assert computes.startswith("int8 (") and "% of MACs) + " in computes and computes.endswith(("f32", "bf16", "f16")), (fmt, computes)
    with runtimes.load(format_bundles["onnx"]) as p:
        assert p.describe()["computes"] == "f32"


def test_a_folder_named_digits_is_never_replaced_by_the_built_in_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--data digits` is the built-in data; with a folder ./digits beside it, which one was meant cannot be told."""
    write_image_folder(tmp_path / "digits", classes=("a", "b"), per_class=3)
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", "--data", "digits", "--out", str(tmp_path / "run"), "--quiet")
    one_error(r, "--data digits names the built-in digits data, and there is also ./digits here: give ./digits")
    assert not (tmp_path / "run").exists()
