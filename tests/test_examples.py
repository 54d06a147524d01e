"""The device-application examples run as users would run them: real subprocesses on a bundle built in the
suite, with torch made unimportable (they need `runtimes` and one backend only)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import BLOCK_HOST_PACKAGES, ROOT


def _example(name: str, *args: str, **popen) -> list[str]:
    """The command line that runs examples/<name> with torch and the other host packages blocked."""
    code = (
        "import runpy, sys\n" + BLOCK_HOST_PACKAGES + f"sys.argv = [{name!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(ROOT / 'examples' / name)!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", code, *args]


def _frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"frame{i:03d}.npy", rng.integers(0, 255, (60 + i, 50, 3), dtype=np.uint8))


def test_watch_folder_classifies_new_files_and_survives_a_bad_one(digits_bundle: Path, tmp_path: Path):
    incoming = tmp_path / "incoming"
    _frames(incoming, 12)
    (incoming / "broken.npy").write_bytes(b"not an array")
    r = subprocess.run(
        _example("watch_folder.py", str(digits_bundle), "--folder", str(incoming), "--idle-exit", "1", "--every", "5"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ") >= 12 and "[last 10] p50" in r.stdout
    assert "broken.npy: skipped" in r.stderr and "done: 12 classified, 1 skipped" in r.stdout
    assert r.stdout.startswith("self-test on 16 golden images") and ": PASS" in r.stdout.splitlines()[0]


def test_watch_folder_refuses_to_start_when_the_self_test_fails(digits_bundle: Path, tmp_path: Path):
    import hashlib
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle, bundle)
    ref = bundle / "selftest" / "reference_logits.npy"
    np.save(ref, -np.load(ref))  # a reference the model cannot match, with its checksum re-made
    doc = json.loads((bundle / "manifest.json").read_text())
    for f in doc["model"]["files"]:
        if f["path"] == "selftest/reference_logits.npy":
            f.update(sha256=hashlib.sha256(ref.read_bytes()).hexdigest(), bytes=ref.stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    _frames(tmp_path / "incoming", 1)
    r = subprocess.run(
        _example("watch_folder.py", str(bundle), "--folder", str(tmp_path / "incoming"), "--idle-exit", "1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "self-test" in r.stderr and "FAIL" in r.stderr and "classified" not in r.stdout


def test_watch_folder_stops_cleanly_on_sigterm(digits_bundle: Path, tmp_path: Path):
    incoming = tmp_path / "incoming"
    _frames(incoming, 3)
    proc = subprocess.Popen(
        _example("watch_folder.py", str(digits_bundle), "--folder", str(incoming)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)  # start, classify the three frames, then wait for more
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err and "done: 3 classified, 0 skipped" in out


def test_pipelined_example_prints_its_gain_over_the_simple_loop(digits_bundle: Path):
    r = subprocess.run(
        _example("pipelined.py", str(digits_bundle), "--frames", "24", "--workers", "2"), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "simple loop:" in r.stdout and "pipelined (2 workers):" in r.stdout
    assert "gain: " in r.stdout and "same labels on 24/24 frames" in r.stdout


def test_watch_folder_retries_a_file_caught_mid_write(digits_bundle: Path, tmp_path: Path):
    """A frame whose writer stalls half-way (a truncated PNG that stays unchanged long enough to look finished) fails
    to decode, is retried 0.5 s later and again 1 s after that; completed meanwhile, it is classified, not lost."""
    from PIL import Image

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    cmd = _example("watch_folder.py", str(digits_bundle), "--folder", str(incoming), "--idle-exit", "2", "--skip-self-test")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("running ")  # loaded and watching
    (incoming / "late.png").write_bytes(whole[: len(whole) // 2])
    time.sleep(1.0)  # seen, settled, tried once and failed
    (incoming / "late.png.tmp").write_bytes(whole)
    (incoming / "late.png.tmp").replace(incoming / "late.png")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "late.png: not readable yet, will retry" in err and "late.png: skipped" not in err, (out, err)
    assert "late.png: " in out and "done: 1 classified, 0 skipped" in out


def test_watch_folder_classifies_a_rewritten_file_again(digits_bundle: Path, tmp_path: Path):
    """Files are known by path, size and modification time: a file rewritten with a new image is answered again."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    rng = np.random.default_rng(3)
    cmd = _example("watch_folder.py", str(digits_bundle), "--folder", str(incoming), "--idle-exit", "2", "--skip-self-test")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("running ")
    np.save(incoming / "same.npy", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    time.sleep(1.5)  # settled and answered
    np.save(incoming / "tmp.npy", rng.integers(0, 255, (70, 64, 3), dtype=np.uint8))
    (incoming / "tmp.npy").replace(incoming / "same.npy")  # a new image under the same name
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.count("same.npy: ") == 2 and "done: 2 classified, 0 skipped" in out, (out, err)
