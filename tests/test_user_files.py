"""What the user owns is never lost: `--overwrite` replaces only a run or bundle of ours (or an empty
directory), never their data, a plain file or a folder of theirs. Every case runs the real CLI, checks for one
`error:` line, and hashes the user's files before and after."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from conftest import SMALL, run_cli, write_image_folder


def tree(root: Path) -> dict[str, str]:
    """Every file and link under `root` (relative path -> sha256, or the link's target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = "-> " + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error(r, *needles: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr + r.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """proj/photos (three classes of real images), proj/notes.txt and proj/src/app.py; the working directory is
    tmp_path so paths can be given relative, as users type them."""
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "proj" / "photos", per_class=6)
    (tmp_path / "proj" / "notes.txt").write_text("my notes\n")
    (tmp_path / "proj" / "src").mkdir()
    (tmp_path / "proj" / "src" / "app.py").write_text("print('mine')\n")
    return tmp_path


@pytest.mark.parametrize(
    "out, relation",
    [
        ("proj/photos", "is --data"),
        ("proj", "holds --data"),
        (".", "holds --data"),
        ("proj/photos/zero", "lies inside --data"),
        ("proj/src/../photos", "is --data"),
        ("proj/photos/../photos/one/deeper/run", "lies inside --data"),
        ("linked", "is --data"),  # a symlink to the data folder
    ],
)
def test_train_never_writes_into_or_over_its_data(project: Path, out: str, relation: str):
    (project / "linked").symlink_to(project / "proj" / "photos")
    before = tree(project / "proj")
    r = run_cli("train", "--data", "proj/photos", "--out", out, "--overwrite", "--image-size", str(SMALL))
    one_error(r, relation, "never writes there")
    assert tree(project / "proj") == before


def test_overwrite_replaces_only_what_is_recognisably_ours(project: Path, digits_run):
    proj = project / "proj"
    webapp = project / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my web app"}\n')
    (webapp / "app.js").write_text("console.log('mine')\n")
    user_files = tree(proj), tree(webapp)

    # a plain file, a folder of theirs, and a folder that only looks like a bundle: refused, before any work
    r = run_cli("train", "--data", "proj/photos", "--out", "proj/notes.txt", "--overwrite", "--image-size", str(SMALL))
    one_error(r, "proj/notes.txt is a file")
    r = run_cli("train", "--data", "proj/photos", "--out", "proj/src", "--overwrite", "--image-size", str(SMALL))
    one_error(r, "holds app.py", "not a training run")
    r = run_cli("export", str(digits_run.path), "--out", "webapp", "--overwrite")
    one_error(r, "holds app.js, manifest.json", "not a bundle")
    r = run_cli("export", str(digits_run.path), "--out", "proj/notes.txt", "--overwrite", "--format", "onnx,openvino")
    one_error(r, "is a file")
    r = run_cli("export", str(digits_run.path), "--out", "proj/notes.txt/bundle")
    one_error(r, "proj/notes.txt is a file")
    # the run itself, and the data: never, with or without --overwrite
    r = run_cli("export", str(digits_run.path), "--out", str(digits_run.path), "--overwrite")
    one_error(r, "is the source run")
    r = run_cli("export", str(digits_run.path), "--out", str(digits_run.path / "bundle"))
    one_error(r, "lies inside the source run")
    r = run_cli("export", str(digits_run.path), "--data", "proj/photos", "--out", "proj/photos/bundle")
    one_error(r, "lies inside --data")
    r = run_cli("qat", str(digits_run.path), "--out", str(digits_run.path), "--overwrite")
    one_error(r, "is the source run")
    assert (tree(proj), tree(webapp)) == user_files

    # a bundle of ours with a file of theirs added: refused; once it is ours again, replaced
    r = run_cli("export", str(digits_run.path), "--out", "bundle", "--self-test-size", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    (project / "bundle" / "app.js").write_text("mine\n")
    one_error(run_cli("export", str(digits_run.path), "--out", "bundle", "--overwrite", "--quiet"), "holds app.js", "not a bundle")
    (project / "bundle" / "app.js").unlink()
    r = run_cli("export", str(digits_run.path), "--out", "bundle", "--overwrite", "--self-test-size", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    mode = (project / "bundle").stat().st_mode & 0o777
    assert mode == 0o777 & ~current_umask(), oct(mode)  # not mkdtemp's 0700: a device service may run as another user


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_run_of_ours_is_replaced_and_a_foreign_checkpoint_is_never_deleted(project: Path):
    args = ("train", "--data", "proj/photos", "--image-size", str(SMALL), "--quiet")
    assert run_cli(*args, "--out", "run").returncode == 0
    (project / "run" / "README").write_text("mine\n")
    one_error(run_cli(*args, "--out", "run", "--overwrite"), "holds README", "not a training run")
    (project / "run" / "README").unlink()
    r = run_cli(*args, "--out", "run", "--overwrite")
    assert r.returncode == 0, r.stderr
    # <out>.checkpoint is where finetune keeps its state; a folder of the user's by that name is never removed
    (project / "other.checkpoint").mkdir()
    (project / "other.checkpoint" / "holiday.jpg").write_bytes(b"mine")
    one_error(run_cli(*args, "--out", "other", "--overwrite"), "other.checkpoint", "not a checkpoint edge-transfer wrote")
    assert (project / "other.checkpoint" / "holiday.jpg").read_bytes() == b"mine"


def test_demo_replaces_only_its_own_output(project: Path):
    (project / "proj" / "run").mkdir()
    (project / "proj" / "run" / "diary.txt").write_text("mine\n")
    before = tree(project / "proj")
    one_error(run_cli("demo", "--out", "proj", "--image-size", str(SMALL)), "--out proj holds notes.txt, photos, run, src")
    assert tree(project / "proj") == before
    shutil.rmtree(project / "proj" / "run")


def test_every_directory_edge_transfer_deletes_is_one_it_made(tmp_path: Path, caplog):
    """The two deleting helpers of runtimes.fsutil, which every caller goes through: temporary directories by the
    names only edge-transfer gives, and checkpoints, engine-cache entries and bundles only when whole ones of ours.
    A user's folder at any of those places is refused (or, for a checkpoint already superseded by a saved run, kept
    with a warning), and hashed before and after."""
    import logging

    from edge_transfer.run_files import CHECKPOINT, discard_checkpoint
    from runtimes.engines.tensorrt_engine import EngineCache
    from runtimes.errors import OutputError
    from runtimes.fsutil import remove_ours, remove_temporary

    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"mine")
    before = tree(tmp_path)
    with pytest.raises(OutputError, match="not a temporary directory of edge-transfer's"):
        remove_temporary(mine)
    with pytest.raises(OutputError, match="holds holiday.jpg .*not a training checkpoint edge-transfer wrote"):
        remove_ours(mine, CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="edge_transfer.run_files"):
        discard_checkpoint(mine)
    assert "it is left as it is" in caplog.text
    cache = EngineCache(tmp_path)
    with pytest.raises(OutputError, match="holds holiday.jpg .*not an engine cache entry edge-transfer wrote"):
        cache.evict("photos")  # a corrupt entry's key that happens to name the user's folder
    assert tree(tmp_path) == before

    staged = tmp_path / ".b.partial-x1y2"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(b"half")
    remove_temporary(staged)
    entry = tmp_path / "abc123"
    entry.mkdir()
    (entry / "engine.plan").write_bytes(b"plan")
    cache.evict("abc123")
    assert not staged.exists() and not entry.exists() and tree(tmp_path) == before
