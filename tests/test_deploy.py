"""Safe updates on the device: `deploy` switches MODELS_DIR/current only to a bundle that passed its
checks here, a process killed at any step leaves a valid `current` (deterministic crashes at every step, plus one
real SIGKILL), `rollback` goes back, and `runtimes.follow` swaps under 4 threads of predict without a failed call.
Real bundles, real ONNX Runtime sessions, the real CLI in subprocesses; nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import BundleError, InputError, OutputError, SelfTestFailed
from runtimes.fleet.deploy import CRASH_ENV, current_path, current_version, versions

from conftest import ROOT, rehash_bundle, run_cli


def _tree_hash(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _assert_valid(models: Path, allowed: set[str]) -> str:
    """`current` names one of `allowed`, and that version verifies and passes its self-test."""
    version = current_version(models)
    assert version in allowed, (version, allowed)
    with runtimes.load(current_path(models)) as p:
        assert p.self_test(raise_on_failure=False).passed
    return version


@pytest.fixture(scope="module")
def second_bundle(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another valid bundle (the same model with its labels renamed and its self-test names to match), so two versions
    can be told apart."""
    out = tmp_path_factory.mktemp("second") / "bundle"
    shutil.copytree(digits_bundle, out)
    doc = json.loads((out / "manifest.json").read_text())
    doc["labels"] = [f"digit-{name}" for name in doc["labels"]]
    doc["self_test"]["labels"] = [f"digit-{name}" for name in doc["self_test"]["labels"]]
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return out


@pytest.fixture(scope="module")
def two_versions(digits_bundle: Path, second_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODELS_DIR after two deploys: v0001 (digits_bundle) and v0002 (second_bundle, current)."""
    models = tmp_path_factory.mktemp("models") / "models"
    runtimes.deploy(digits_bundle, models)
    runtimes.deploy(second_bundle, models)
    return models


def _copy_models(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def test_deploy_switches_only_after_checks_and_keeps_the_source_intact(digits_bundle: Path, second_bundle: Path, tmp_path: Path):
    models = tmp_path / "models"
    before = _tree_hash(digits_bundle)
    r = run_cli("deploy", str(digits_bundle), "--to", str(models), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["current"] == "v0001" and out["previous"] is None and "PASS" in out["self_test"]
    assert _tree_hash(digits_bundle) == before  # the user's bundle is read, never changed
    assert (models / "current").is_symlink() and os.readlink(models / "current") == "versions/v0001"
    assert _tree_hash(current_path(models)) == before
    r = run_cli("deploy", str(second_bundle), "--to", str(models))
    assert r.returncode == 0 and "current is now v0002" in r.stdout and "previous: v0001" in r.stdout, r.stdout + r.stderr
    log = [json.loads(line) for line in (models / "deploy.log").read_text().splitlines()]
    assert [e["event"] for e in log] == ["deployed", "deployed"] and log[1]["previous"] == "v0001"


def test_deploying_the_current_bundle_again_keeps_the_history(two_versions: Path, second_bundle: Path, tmp_path: Path):
    """A deploy re-run by cron or an rsync hook must not push the older versions out of --keep."""
    models = _copy_models(two_versions, tmp_path / "models")
    for _ in range(3):
        r = run_cli("deploy", str(second_bundle), "--to", str(models), "--keep", "2")
        assert r.returncode == 0 and "v0002 is already current" in r.stdout, r.stdout + r.stderr
    assert versions(models) == ["v0001", "v0002"] and current_version(models) == "v0002"
    assert runtimes.rollback(models).version == "v0001"


def test_a_bundle_failing_any_check_never_becomes_current(two_versions: Path, bundle_copy: Path, tmp_path: Path):
    models = _copy_models(two_versions, tmp_path / "models")
    reference = bundle_copy / "selftest" / "reference_logits.npy"
    np.save(reference, np.load(reference) * -1.0)  # a self-test that fails on every device, checksums re-made below
    rehash_bundle(bundle_copy)
    r = run_cli("deploy", str(bundle_copy), "--to", str(models))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "self-test failed on this device" in r.stderr, r.stderr
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    r = run_cli("deploy", str(bundle_copy), "--to", str(models))
    assert r.returncode == 2 and "model.onnx" in r.stderr, r.stderr
    assert current_version(models) == "v0002" and versions(models) == ["v0001", "v0002"]
    assert sorted(p.name for p in (models / "versions").iterdir()) == ["v0001", "v0002"]  # no staging copy left
    refused = [json.loads(line) for line in (models / "deploy.log").read_text().splitlines()][-2:]
    assert [e["event"] for e in refused] == ["refused", "refused"] and "self-test" in refused[0]["reason"]


def test_deploy_with_trusted_keys_refuses_unsigned_bundles(digits_bundle: Path, tmp_path: Path):
    assert run_cli("keygen", str(tmp_path / "k.key")).returncode == 0
    r = run_cli("deploy", str(digits_bundle), "--to", str(tmp_path / "models"), "--key", str(tmp_path / "k.pub"))
    assert r.returncode == 2 and "unsigned" in r.stderr and current_version(tmp_path / "models") is None, r.stderr


STEPS = ["start", "copied", "verified", "self-tested", "renamed", "linked", "switched", "pruning"]


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_every_step_leaves_a_valid_current(two_versions: Path, digits_bundle: Path, tmp_path: Path, step: str):
    models = _copy_models(two_versions, tmp_path / "models")
    r = run_cli("deploy", str(digits_bundle), "--to", str(models), "--keep", "2", env={CRASH_ENV: step})  # dies there, no clean-up
    assert r.returncode == 86, r.stderr  # died at that step, with no cleanup
    new = {"v0003"} if step in ("switched", "pruning") else {"v0002"}
    _assert_valid(models, new)
    again = run_cli("deploy", str(digits_bundle), "--to", str(models), "--keep", "2")  # the next deploy completes and cleans up
    assert again.returncode == 0, again.stderr
    current = _assert_valid(models, {"v0003", "v0004"})
    leftovers = [p.name for p in (models / "versions").iterdir() if p.name.startswith(".")] + [p.name for p in models.glob(".current.tmp-*")]
    assert leftovers == [] and len(versions(models)) == 2 and current == versions(models)[-1]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["linked", "switched"])
def test_a_crash_during_rollback_leaves_a_valid_current(two_versions: Path, tmp_path: Path, step: str):
    models = _copy_models(two_versions, tmp_path / "models")
    r = run_cli("rollback", "--to", str(models), env={CRASH_ENV: step})
    assert r.returncode == 86, r.stderr
    _assert_valid(models, {"v0002"} if step == "linked" else {"v0001"})


def test_a_real_sigkill_mid_deploy_leaves_a_valid_current(two_versions: Path, digits_bundle: Path, tmp_path: Path):
    models = _copy_models(two_versions, tmp_path / "models")
    code = "import sys\nfrom edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "deploy", str(digits_bundle), "--to", str(models)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list((models / "versions").glob(".incoming.partial-*")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_valid(models, {"v0002", "v0003"})
    assert run_cli("deploy", str(digits_bundle), "--to", str(models)).returncode == 0
    assert not list((models / "versions").glob(".*"))


def test_rollback_goes_back_past_a_damaged_version_and_says_when_it_cannot(two_versions: Path, digits_bundle: Path, tmp_path: Path):
    models = _copy_models(two_versions, tmp_path / "models")
    assert runtimes.deploy(digits_bundle, models).version == "v0003"
    damaged = models / "versions" / "v0002" / "model.onnx"
    damaged.write_bytes(damaged.read_bytes()[:100])
    r = run_cli("rollback", "--to", str(models))
    assert r.returncode == 0 and "current is now v0001" in r.stdout, r.stdout + r.stderr
    r = run_cli("rollback", "--to", str(models))
    assert r.returncode == 2 and "no version older than v0001" in r.stderr
    assert current_version(models) == "v0001"


def test_old_versions_are_pruned_but_never_what_is_not_a_bundle(two_versions: Path, digits_bundle: Path, tmp_path: Path):
    models = _copy_models(two_versions, tmp_path / "models")
    (models / "versions" / "v0001" / "my-notes.txt").write_text("mine")  # a user's file inside an old version
    result = runtimes.deploy(digits_bundle, models, keep=1)
    assert result.removed == () and versions(models) == ["v0001", "v0002", "v0003"]  # v0002: the way back, always kept
    result = runtimes.deploy(shutil.copytree(models / "versions" / "v0002", tmp_path / "again"), models, keep=1)
    assert result.removed == ("v0002",) and versions(models) == ["v0001", "v0003", "v0004"]
    assert (models / "versions" / "v0001" / "my-notes.txt").read_text() == "mine"


def test_a_models_folder_inside_the_bundle_is_refused(bundle_copy: Path):
    before = sorted(p.name for p in bundle_copy.iterdir())
    with pytest.raises(InputError, match="inside the bundle being deployed"):
        runtimes.deploy(bundle_copy, bundle_copy / "models")
    assert sorted(p.name for p in bundle_copy.iterdir()) == before


def test_a_real_folder_named_current_is_never_replaced(digits_bundle: Path, tmp_path: Path):
    models = tmp_path / "models"
    (models / "current").mkdir(parents=True)
    (models / "current" / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="not a models folder edge-transfer made"):
        runtimes.deploy(digits_bundle, models)  # a folder deploy did not make is never adopted
    assert (models / "current" / "photo.jpg").read_bytes() == b"precious"
    runtimes.deploy(digits_bundle, tmp_path / "ours")
    (tmp_path / "ours" / "current").unlink()
    (tmp_path / "ours" / "current").mkdir()
    (tmp_path / "ours" / "current" / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(BundleError, match="not a link made by deploy"):
        runtimes.deploy(digits_bundle, tmp_path / "ours")  # in a models folder of ours, a real folder named current is kept
    assert (tmp_path / "ours" / "current" / "photo.jpg").read_bytes() == b"precious"


def test_deploy_takes_a_read_only_plain_copy(digits_bundle: Path, second_bundle: Path, tmp_path: Path):
    received = tmp_path / "incoming"
    shutil.copytree(digits_bundle, received, copy_function=shutil.copyfile)  # as scp -r leaves it
    for p in sorted(received.rglob("*"), reverse=True) + [received]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        models = tmp_path / "models"
        runtimes.deploy(received, models)
        runtimes.deploy(second_bundle, models, keep=1)
        runtimes.deploy(received, models, keep=1)  # removing v0001 works: the copy is ours, not read-only
        assert versions(models) == ["v0002", "v0003"]
    finally:
        for p in [received, *received.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_follow_swaps_under_four_threads_without_a_failed_call(two_versions: Path, second_bundle: Path, tmp_path: Path):
    models = _copy_models(two_versions, tmp_path / "models")
    image = np.asarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3)), np.uint8)
    failures: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()
    with runtimes.follow(models, check_every_s=0.0) as model:

        def worker() -> None:
            while not stop.is_set():
                try:
                    seen.add(model.predict(image)[0][0].label)
                except BaseException as exc:  # any failure at all counts
                    failures.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        runtimes.rollback(models)  # v0001: plain digit names
        time.sleep(0.3)
        runtimes.deploy(second_bundle, models)  # v0003: digit-* names again
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert model.swaps == 2 and model.version == "v0003"
    assert failures == []
    assert any(s.startswith("digit-") for s in seen) and any(not s.startswith("digit-") for s in seen)


def test_deploy_refuses_a_bundle_without_a_self_test(digits_run, tmp_path: Path):
    import edge_transfer as et

    et.export(digits_run.path, out=tmp_path / "b", self_test_size=0)
    with pytest.raises(SelfTestFailed, match="no self-test data"):
        runtimes.deploy(tmp_path / "b", tmp_path / "models")
    assert current_version(tmp_path / "models") is None


def test_watch_folder_follows_a_deploy_while_it_runs(two_versions: Path, digits_bundle: Path, tmp_path: Path):
    """examples/watch_folder.py on a models folder, torch blocked: files before the deploy are answered by v0002
    (digit-* names), files after it by v0003, with no frame lost and no restart."""
    from test_examples import _example

    models = _copy_models(two_versions, tmp_path / "models")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    image = np.asarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3)), np.uint8)
    proc = subprocess.Popen(
        _example("watch_folder.py", str(models), "--folder", str(incoming), "--idle-exit", "3", "--skip-self-test"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for i in range(3):
        np.save(incoming / f"a{i}.npy", image)
    time.sleep(1.5)
    runtimes.deploy(digits_bundle, models)
    time.sleep(1.2)  # the follower reads the link at most once a second
    for i in range(3):
        np.save(incoming / f"b{i}.npy", image)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    answers = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith(("a", "b")) and ".npy: " in line)
    assert sorted(answers) == [f"{p}{i}.npy" for p in "ab" for i in range(3)], out
    assert all(answers[f"a{i}.npy"].startswith("digit-") for i in range(3))
    assert all(not answers[f"b{i}.npy"].startswith("digit-") for i in range(3))
    assert "now running v0003" in out and "done: 6 classified, 0 skipped" in out
