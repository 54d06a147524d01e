"""The device's policy holds and fails closed, and its history is kept: a models folder is only ever one deploy made,
clean-up deletes only what deploy marked as its own, an old bundle replayed is refused, a key policy that names no
key is refused, a damaged current is reinstalled, rollback returns to the version that was current before, and
`follow` loads only a real version folder. Real bundles, real ONNX Runtime sessions, the real CLI."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_user_files import one_error, tree

import runtimes
from runtimes.bundle import sign_bundle
from runtimes.errors import BundleError, InputError, OutputError, SignatureError
from runtimes.fleet.deploy import current_version, versions
from runtimes.signing import generate_key_pair

from conftest import run_cli


def _log(models: Path) -> list[dict]:
    return [json.loads(line) for line in (models / "deploy.log").read_text().splitlines()]


def _made_at(src: Path, dst: Path, created: str, key: Path | None = None) -> Path:
    """A copy of bundle `src` whose manifest says it was made at `created` (signed with `key` when given)."""
    shutil.copytree(src, dst)
    (dst / "model.sig").unlink(missing_ok=True)
    doc = json.loads((dst / "manifest.json").read_text())
    doc["created"] = created
    (dst / "manifest.json").write_text(json.dumps(doc, indent=2))
    if key is not None:
        sign_bundle(dst, key)
    return dst


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    private, public, _ = generate_key_pair(root / "release.key")
    _, other, _ = generate_key_pair(root / "other.key")
    return {"key": private, "pub": public, "other": other}


@pytest.fixture(scope="module")
def releases(digits_bundle: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {
        "A": _made_at(digits_bundle, root / "A", "2026-01-01T00:00:00Z", keys["key"]),
        "B": _made_at(digits_bundle, root / "B", "2026-02-01T00:00:00Z", keys["key"]),
        "C": _made_at(digits_bundle, root / "C", "2026-03-01T00:00:00Z", keys["key"]),
    }


def test_a_folder_deploy_did_not_make_is_never_adopted_nor_cleaned(digits_bundle: Path, tmp_path: Path):
    user = tmp_path / "U"
    (user / "versions" / ".thesis.old-draft").mkdir(parents=True)
    (user / "versions" / ".thesis.old-draft" / "chapter1.txt").write_text("x")
    before = tree(user)
    one_error(run_cli("deploy", str(digits_bundle), "--to", str(user)), "not a models folder edge-transfer made")
    assert tree(user) == before
    # inside a models folder of ours, a look-alike leftover without deploy's mark is kept (and logged), never deleted
    models = tmp_path / "models"
    runtimes.deploy(digits_bundle, models)
    shutil.copytree(user / "versions" / ".thesis.old-draft", models / "versions" / ".thesis.old-draft")
    (models / "versions" / ".incoming.partial-mine").mkdir()
    (models / "versions" / ".incoming.partial-cut.ours").touch()  # a mark cut short by a kill: empty, no folder
    shutil.rmtree(models / "versions" / "v0001")  # so the next deploy installs again, cleaning first
    (models / "current").unlink()
    runtimes.deploy(digits_bundle, models)
    assert (models / "versions" / ".thesis.old-draft" / "chapter1.txt").read_text() == "x"
    assert (models / "versions" / ".incoming.partial-mine").is_dir()
    assert not (models / "versions" / ".incoming.partial-cut.ours").exists()
    assert {e.get("path", "").rsplit("/", 1)[-1] for e in _log(models) if e["event"] == "kept"} >= {".thesis.old-draft", ".incoming.partial-mine"}


def test_an_older_signed_bundle_is_a_downgrade_refused_until_asked(releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path):
    models = tmp_path / "models"
    key = ("--key", str(keys["pub"]))
    for name in "AB":
        assert run_cli("deploy", str(releases[name]), "--to", str(models), *key).returncode == 0
    r = run_cli("deploy", str(releases["A"]), "--to", str(models), *key)
    one_error(r, "a downgrade", "--allow-downgrade", "rollback")
    assert current_version(models) == "v0002" and _log(models)[-1]["event"] == "refused" and "downgrade" in _log(models)[-1]["reason"]
    r = run_cli("deploy", str(releases["A"]), "--to", str(models), *key, "--allow-downgrade")
    assert r.returncode == 0 and current_version(models) == "v0003", r.stderr


@pytest.mark.parametrize("value", [":", " ", "::", ""])
def test_a_trusted_keys_setting_that_names_no_key_fails_closed(digits_bundle: Path, value: str):
    r = run_cli("check", str(digits_bundle), env={"EDGE_TRANSFER_TRUSTED_KEYS": value})
    one_error(r, "EDGE_TRANSFER_TRUSTED_KEYS", "names no key")


def test_an_empty_or_unreadable_key_is_refused_at_once(digits_bundle: Path, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(keys["pub"].parent)  # a folder of *.pub files: an empty --key must not mean "all of these"
    one_error(run_cli("check", str(digits_bundle), "--key", ""), "an empty --key")
    fifo = tmp_path / "fifo.pub"
    os.mkfifo(fifo)
    for bad, needle in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"), (tmp_path, "trusted-keys folder")):
        one_error(run_cli("check", str(digits_bundle), "--key", str(bad)), needle)
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * (1 << 20))
    one_error(run_cli("check", str(digits_bundle), "--key", str(big)), "at most")


def test_the_key_policy_is_applied_before_a_bundle_is_called_current(digits_bundle: Path, keys: dict[str, Path], tmp_path: Path):
    models = tmp_path / "models"
    assert run_cli("deploy", str(digits_bundle), "--to", str(models)).returncode == 0
    r = run_cli("deploy", str(digits_bundle), "--to", str(models), "--key", str(keys["other"]))
    one_error(r, "unsigned")
    assert "already current" not in r.stdout and _log(models)[-1]["event"] == "refused"


def test_a_damaged_current_is_reinstalled_not_called_current(digits_bundle: Path, tmp_path: Path):
    models = tmp_path / "models"
    runtimes.deploy(digits_bundle, models)
    onnx = models / "versions" / "v0001" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    r = run_cli("deploy", str(digits_bundle), "--to", str(models))
    assert r.returncode == 0 and "current is now v0002" in r.stdout and "no longer passed" in r.stderr, r.stdout + r.stderr
    assert [e["event"] for e in _log(models)][-2:] == ["reinstalling", "deployed"]


def test_keygen_never_writes_a_private_key_under_a_pub_name(tmp_path: Path):
    one_error(run_cli("keygen", str(tmp_path / "keys" / "x.pub")), "x.pub")
    assert not (tmp_path / "keys").exists()
    r = run_cli("keygen", str(tmp_path / "k.key"), env={"EDGE_TRANSFER_KEY_PASSWORD": ""})
    one_error(r, "set but empty")
    assert not (tmp_path / "k.key").exists()


def test_a_malformed_signature_is_a_signature_error_and_follow_stays(releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(releases["B"], bad)
    doc = json.loads((bad / "model.sig").read_text())
    doc["verificationMaterial"] = {"publicKey": "x"}
    (bad / "model.sig").write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="publicKey"):
        runtimes.load(bad, trusted_keys=[keys["pub"]])
    models = tmp_path / "models"
    runtimes.deploy(releases["A"], models, trusted_keys=[keys["pub"]])
    image = np.zeros((64, 64, 3), np.uint8)
    with runtimes.follow(models, check_every_s=0.0, trusted_keys=[keys["pub"]]) as model:
        shutil.copytree(bad, models / "versions" / "v0002")  # put there by hand, bypassing deploy
        os.symlink("versions/v0002", models / ".current.tmp-x")
        os.replace(models / ".current.tmp-x", models / "current")
        assert model.predict(image) and model.version == "v0001"  # stays on the version it runs
        shutil.rmtree(models / "versions" / "v0002")
        evil = tmp_path / "evil"
        shutil.copytree(releases["A"], evil)
        os.symlink(evil, models / "versions" / "v0002")  # an out-of-tree folder under the version's name
        assert model.predict(image) and model.version == "v0001"
    with pytest.raises(BundleError, match="not a version folder deploy made"):
        runtimes.follow(models)
    (models / "versions" / "v0002").unlink()
    (models / "versions" / "v0002").write_text("a file where a version would go")
    os.symlink("versions/v0001", models / ".current.tmp-y")
    os.replace(models / ".current.tmp-y", models / "current")
    assert runtimes.deploy(releases["C"], models, trusted_keys=[keys["pub"]]).version == "v0003"  # the number is skipped


def test_unlisted_files_are_refused_before_anything_is_copied(digits_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    with open(bundle / "huge.bin", "wb") as f:
        f.truncate(2 << 30)  # 2 GB, sparse: costs nothing here, and must cost nothing to refuse
    models = tmp_path / "models"
    with pytest.raises(BundleError, match="'huge.bin' is in the bundle but not listed.*nothing was copied"):
        runtimes.deploy(bundle, models)
    assert sorted(p.name for p in (models / "versions").iterdir()) == []


def test_a_present_signature_that_was_not_verified_is_said(releases: dict[str, Path], tmp_path: Path):
    edited = tmp_path / "edited"
    shutil.copytree(releases["A"], edited)
    doc = json.loads((edited / "manifest.json").read_text())
    doc["description"] = "edited after signing"
    (edited / "manifest.json").write_text(json.dumps(doc, indent=2))
    r = run_cli("deploy", str(edited), "--to", str(tmp_path / "models"))
    assert r.returncode == 0 and "model.sig is present but was not verified" in r.stderr, r.stderr
    assert "not verified" in " ".join(_log(tmp_path / "models")[-1]["notes"])
    r = run_cli("check", str(edited))
    assert "NOT verified" in r.stdout, r.stdout


def test_rollback_returns_to_the_version_current_before_and_pruning_keeps_it(releases: dict[str, Path], tmp_path: Path):
    models = tmp_path / "models"
    for name in "ABC":
        runtimes.deploy(releases[name], models)
    assert runtimes.rollback(models).version == "v0002" and runtimes.rollback(models).version == "v0001"
    result = runtimes.deploy(releases["C"], models, keep=3)  # a bundle already kept, deployed again: v0004
    assert result.version == "v0004" and "v0001" in versions(models)  # the version that had just been current is kept
    assert runtimes.rollback(models).version == "v0001"  # back where the user was, not to v0003
    one_error(run_cli("rollback", "--to", str(tmp_path / "typo")), "no such folder")
    assert not (tmp_path / "typo").exists()


def test_errors_name_the_users_bundle_and_the_log_is_bounded(bundle_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = tmp_path / "good"
    shutil.copytree(bundle_copy, good)
    onnx = bundle_copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: found only when the copy is verified
    onnx.write_bytes(bytes(data))
    models = tmp_path / "models"
    with pytest.raises(BundleError) as info:
        runtimes.deploy(bundle_copy, models)
    assert ".incoming.partial" not in str(info.value) and str(bundle_copy) in str(info.value), str(info.value)
    monkeypatch.setattr(importlib.import_module("runtimes.fleet.models_folder"), "LOG_MAX_BYTES", 2000)
    for _ in range(30):
        runtimes.deploy(good, models)  # no-op deploys, each logged
    assert (models / "deploy.log").stat().st_size < 3000 and (models / "deploy.log.1").is_file()


def test_follow_refuses_a_nan_interval(digits_bundle: Path, tmp_path: Path):
    runtimes.deploy(digits_bundle, tmp_path / "models")
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(InputError, match="check_every_s"):
            runtimes.follow(tmp_path / "models", check_every_s=bad)


def test_an_own_models_folder_refuses_writes_inside_it(digits_bundle: Path, tmp_path: Path):
    runtimes.deploy(digits_bundle, tmp_path / "models")
    with pytest.raises(OutputError, match="lies inside the models folder"):
        runtimes.deploy(digits_bundle, tmp_path / "models" / "versions" / "nested")
