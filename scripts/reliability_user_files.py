"""The rows of the reliability table about what users own and answers that would be wrong, each run on
the real code path: the CLI in-process (`edge_transfer.cli.main`), the API, or a subprocess where processes race.
Used by `scripts/reliability_table.py`; each row says what the user gets, and UNTYPED/WRONG rows fail CI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode() + (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()))
    return h.hexdigest()


def cli(*args: str) -> tuple[int, str, str]:
    """`edge-transfer ARGS` in this process: (exit code, stdout, stderr)."""
    from edge_transfer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - a row that shows this is a bug to fix
            return 1, "", f"UNTYPED {type(exc).__name__}: {exc}"
    return code, out.getvalue(), err.getvalue()


def refused(args: tuple[str, ...], keep: Path, work: Path) -> str:
    """Run a command that must refuse with one `error:` line and leave `keep` byte-identical."""
    before = tree_digest(keep)
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    intact = tree_digest(keep) == before
    if err.startswith("UNTYPED"):
        return err
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or not intact:
        return f"WRONG: exit {code}, files intact {intact}: {err.strip()[:300]}"
    return f"refused, files intact: `{lines[0].replace(str(work) + '/', '')}`"


def typed(fn: Callable[[], object]) -> str:
    from runtimes.errors import EdgeTransferError

    try:
        fn()
    except EdgeTransferError as exc:
        return f"`{type(exc).__name__}`: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001
        return f"UNTYPED {type(exc).__name__}: {exc}"
    return "WRONG: accepted"


RACE = """
import sys
import numpy as np
from runtimes.fsutil import edit_locked
from runtimes.gallery import Gallery

path, worker = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(int(worker))
for i in range(10):
    with edit_locked(path, Gallery.load, lambda: Gallery(8, "toy"), lambda g, p: g.save(p)) as g:
        g.enroll(f"w{worker}-{i}", rng.normal(size=(1, 8)))
"""


def user_file_rows(work: Path, run: Path | None) -> list[tuple[str, str]]:
    """What the user owns: data folders, files and folders of theirs, galleries written by several processes."""
    import sys as _sys

    _sys.path.insert(0, str(ROOT / "tests"))
    from runtimes.gallery import Gallery

    from conftest import write_image_folder

    proj = work / "proj"
    photos = write_image_folder(proj / "photos", per_class=4)
    (proj / "notes.txt").write_text("my notes\n")
    (work / "webapp").mkdir()
    (work / "webapp" / "manifest.json").write_text('{"name": "my app"}\n')
    (work / "webapp" / "app.js").write_text("console.log(1)\n")
    p, w = str(photos), str(work)
    rows = [
        ("`train --data photos --out photos --overwrite`", refused(("train", "--data", p, "--out", p, "--overwrite"), proj, work)),
        ("`train --data proj/photos --out proj --overwrite`", refused(("train", "--data", p, "--out", str(proj), "--overwrite"), proj, work)),
        (
            "`train --out proj/photos/../photos/zero/run` (inside the data, through `..`)",
            refused(("train", "--data", p, "--out", f"{p}/../photos/zero/run"), proj, work),
        ),
        ("`train --out notes.txt --overwrite`", refused(("train", "--data", p, "--out", str(proj / "notes.txt"), "--overwrite"), proj, work)),
    ]
    if run is not None:
        rows += [
            (
                "`export RUN --out webapp --overwrite` (webapp holds its own manifest.json and app.js)",
                refused(("export", str(run), "--out", f"{w}/webapp", "--overwrite"), work / "webapp", work),
            ),
            ("`export RUN --out notes.txt --overwrite`", refused(("export", str(run), "--out", str(proj / "notes.txt"), "--overwrite"), proj, work)),
            ("`export RUN --out RUN/bundle` (inside the source run)", refused(("export", str(run), "--out", f"{run}/bundle"), run, work)),
        ]
    # processes racing on one gallery: each read-modify-write under the file's lock
    shared = work / "shared.npz"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(shared), str(i)], cwd=ROOT) for i in range(4)]
    codes = [proc.wait(timeout=300) for proc in procs]
    kept = len(Gallery.load(shared).labels()) if shared.exists() else 0
    rows.append(
        (
            "4 processes x 10 enrols into one gallery at once",
            f"{kept} of 40 labels kept" if codes == [0] * 4 and kept == 40 else f"WRONG: {kept} of 40 kept",
        )
    )
    real = work / "store" / "g.npz"
    real.parent.mkdir()
    Gallery(8, "toy").save(real)
    (work / "link.npz").symlink_to(real)
    with contextlib.suppress(Exception):
        g = Gallery.load(work / "link.npz")
        g.enroll("a", np.eye(8)[:1])
        g.save(work / "link.npz")
    linked = (work / "link.npz").is_symlink() and Gallery.load(real).labels() == {"a": 1}
    rows.append(("a gallery path that is a symlink", "accepted: the real file changed, the link kept" if linked else "WRONG: link replaced"))
    rows.append(
        ("saving a gallery under a plain file (`--gallery notes.txt/g.npz`)", typed(lambda: Gallery(8, "toy").save(proj / "notes.txt" / "g.npz")))
    )
    return rows


def wrong_answer_rows(work: Path, bundle: Path) -> list[tuple[str, str]]:
    """Answers that would be wrong with no error: hand-edited manifests, data-folder links, damaged checkpoints,
    flags out of range, gallery files, labels, a threshold that rejects no stranger."""
    import runtimes
    from edge_transfer.data import load_dataset
    from runtimes.gallery import Gallery, calibrate_threshold, threshold_problem

    rows = []

    def edited(name: str, change) -> str:
        b = work / name
        shutil.copytree(bundle, b)
        doc = json.loads((b / "manifest.json").read_text())
        change(doc)
        (b / "manifest.json").write_text(json.dumps(doc))
        with runtimes.load(b) as p:
            r = p.self_test(raise_on_failure=False)
        return f"check: FAIL ({r.reason})" if not r.passed else "WRONG: check PASS"

    rows.append(
        ("manifest `labels` swapped by hand", edited("labels", lambda d: d.update(labels=[d["labels"][1], d["labels"][0], *d["labels"][2:]])))
    )
    rows.append(("manifest `crop_pct` edited by hand", edited("crop", lambda d: d["preprocessing"].update(crop_pct=0.6))))
    rows.append(("manifest `interpolation` edited by hand", edited("interp", lambda d: d["preprocessing"].update(interpolation="nearest"))))

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_image_folder

    root = write_image_folder(work / "linked", per_class=4)
    (root / "everything").symlink_to(root)
    ds = load_dataset(str(root))
    ok = ds.classes == ["one", "two", "zero"] and ds.info["skipped_links"] == 1
    rows.append(
        (
            "a data folder with a link back to itself",
            f"accepted: {ds.info['skipped_links']} link skipped (counted, warned), 3 classes" if ok else "WRONG",
        )
    )

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(buf, "JPEG")
    (root / "one" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    kept = load_dataset(str(root), skip_bad=True)
    rows.append(
        (
            "a truncated JPEG with `--skip-bad`",
            f"accepted: skipped ({kept.info['skipped_bad']} left out)" if kept.info["skipped_bad"] == 1 else "WRONG",
        )
    )

    import torch

    from edge_transfer.checkpoint import TrainingCheckpoint

    ckpt = work / "run.checkpoint"
    weights = {"w": torch.tensor([1.0, float("nan")])}
    TrainingCheckpoint(1, {}, weights, {"state": {}, "param_groups": []}, {}, {"best_accuracy": 0.9, "best_loss": 0.1}).save(ckpt)
    rows.append(("a checkpoint holding NaN, resumed", typed(lambda: TrainingCheckpoint.load(ckpt))))
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    rows.append(("a checkpoint damaged on disk, resumed", typed(lambda: TrainingCheckpoint.load(ckpt))))

    for flag, value in (("--lr", "nan"), ("--lr", "-1"), ("--image-size", "0"), ("--seed", "-1"), ("--batch-size", "100000")):
        rows.append(
            (f"`train {flag} {value}`", refused(("train", "--data", "digits", "--out", str(work / "never"), flag, value), work / "linked", work))
        )
    for flag, value in (("--batch", "100000"), ("--threads", "100000"), ("--threads", "0")):
        rows.append((f"`bench {flag} {value}`", refused(("bench", str(bundle), flag, value), work / "linked", work)))

    from runtimes.npz_document import document_digest

    g = Gallery(4, "toy", threshold=0.6)
    g.enroll("a", np.eye(4)[:2])
    good = g.save(work / "good.npz")
    with np.load(good) as z:
        meta, vectors = json.loads(str(z["meta"])), z["embeddings"]

    def gallery_with(name: str, change, rehash: bool = True) -> Path:
        doc = dict(meta)
        change(doc)
        if rehash:
            doc["sha256"] = document_digest({"embeddings": vectors}, doc)
        np.savez(work / name, embeddings=vectors, meta=np.asarray(json.dumps(doc)))
        return work / name

    np.savez_compressed(work / "bomb.npz", embeddings=np.zeros((1 << 18, 1024), np.float32), meta=np.asarray("{}"))
    size = (work / "bomb.npz").stat().st_size
    for what, path in {
        "gallery threshold edited by hand": gallery_with("t.npz", lambda d: d.update(threshold=-1.0), rehash=False),
        f"gallery of {size // 1000} KB that inflates to 1 GB": work / "bomb.npz",
        "gallery labels given as dicts (checksum re-made)": gallery_with("l.npz", lambda d: d.update(labels=[{"a": 1}, {"b": 2}])),
        "gallery version as a string (checksum re-made)": gallery_with("v.npz", lambda d: d.update(version="2")),
        "gallery without its `dim` (checksum re-made)": gallery_with("k.npz", lambda d: d.pop("dim")),
    }.items():
        rows.append((what, typed(lambda path=path: Gallery.load(path))))

    for label, other in (("３", "3"), ("3 ", "3"), ("unknown ", None), ("two\nlines", None), ("\x1b[31mred", None)):
        g = Gallery(4, "toy")
        if other:
            g.enroll(other, np.eye(4)[:1])
        rows.append((f"label {label!r}" + (f" beside {other!r}" if other else ""), typed(lambda g=g, label=label: g.enroll(label, np.eye(4)[1:2]))))

    rng = np.random.default_rng(0)
    x = rng.normal(size=16) + 0.05 * rng.normal(size=(60, 16))
    cal = calibrate_threshold(x, np.repeat(np.arange(6), 10))
    problem = threshold_problem({"threshold_calibration": cal})
    rows.append(
        (
            "an unknown threshold that rejects no stranger",
            f"warned at export, stored, shown by check and identify: {problem.split(':')[0]}" if problem else "WRONG: not flagged",
        )
    )
    proc = subprocess.Popen([sys.executable, "-m", "edge_transfer", "inspect", str(bundle)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    clean = b"Traceback" not in err and b"Exception ignored" not in err
    rows.append(
        (
            "`edge-transfer inspect B | head` (reader gone)",
            f"exit {proc.returncode}, nothing on stderr" if clean and not err.strip() else f"WRONG: {err[-200:]!r}",
        )
    )
    return rows
