"""Signed bundles: keys made by `keygen`, bundles signed by `sign` and `export --sign-key`, refused on a
device that trusts other keys, and checked against OpenSSF model-signing's own verifier, which must accept what we
accept and reject what we reject. Real keys, real bundles, real CLI runs; nothing is mocked."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import InputError, IntegrityError, SignatureError

from conftest import rehash_bundle, run_cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs made by the real `keygen` command: ours and a stranger's."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("release", "stranger"):
        r = run_cli("keygen", str(folder / f"{name}.key"))
        assert r.returncode == 0, r.stderr
    return {"key": folder / "release.key", "pub": folder / "release.pub", "other": folder / "stranger.pub", "other_key": folder / "stranger.key"}


@pytest.fixture()
def signed(bundle_copy: Path, keys: dict[str, Path]) -> Path:
    r = run_cli("sign", str(bundle_copy), "--key", str(keys["key"]))
    assert r.returncode == 0 and "signed" in r.stdout, r.stderr
    return bundle_copy


def _model_signing_accepts(bundle: Path, public_key: Path) -> bool:
    """OpenSSF model-signing's verifier (`model_signing verify key`), run on the same bundle."""
    from model_signing import verifying

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(bundle, bundle / "model.sig")
    except Exception:  # it raises ValueError, or cryptography's InvalidSignature, depending on what is wrong
        return False
    return True


def _swap_graph_and_regenerate_self_test(bundle: Path) -> None:
    """The attack: a graph that answers class 0 for everything, its self-test references regenerated
    from that graph, and every checksum re-made. Only a signature can tell."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1 and t.dims[0] == 10)
    values = numpy_helper.to_array(bias).copy()
    values[0] += 1000.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(bundle / "model.onnx"))
    rehash_bundle(bundle)
    with runtimes.load(bundle, trusted_keys=[]) as p:
        logits = p.run(np.load(bundle / "selftest" / "images.npy")).astype(np.float32)
        named = [p.labels[i] for i in logits.argmax(1)]
    np.save(bundle / "selftest" / "reference_logits.npy", logits)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["self_test"]["labels"] = named  # the names the self-test expects, re-made too
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2))
    rehash_bundle(bundle)


def test_signed_bundle_loads_with_its_key_and_model_signing_agrees(signed: Path, keys):
    with runtimes.load(signed, trusted_keys=[keys["pub"]]) as p:
        assert p.bundle.signed_by == hashlib.sha256(keys["pub"].read_bytes()).hexdigest()
    assert _model_signing_accepts(signed, keys["pub"])
    r = run_cli("check", str(signed), "--key", str(keys["pub"]))
    assert r.returncode == 0 and "signed by trusted key" in r.stdout and "PASS" in r.stdout, r.stdout + r.stderr
    folder_of_keys = keys["pub"].parent  # a folder of *.pub files: either key may have signed
    with runtimes.load(signed, trusted_keys=[folder_of_keys]) as p:
        assert p.bundle.signed_by is not None


def test_the_issue_attack_passes_check_without_keys_and_is_refused_with_one(signed: Path, keys):
    _swap_graph_and_regenerate_self_test(signed)
    before = run_cli("check", str(signed))  # consistency only: the attacker re-made everything
    assert before.returncode == 0 and "PASS" in before.stdout, before.stdout + before.stderr
    with runtimes.load(signed, trusted_keys=[]) as p:
        assert [p.predict(np.full((64, 64, 3), v, np.uint8))[0][0].label for v in (0, 128, 255)] == [p.labels[0]] * 3
    after = run_cli("check", str(signed), "--key", str(keys["pub"]))
    assert after.returncode == 2 and after.stderr.count("error:") == 1, after.stderr
    assert "manifest.json is not the one that was signed" in after.stderr
    assert not _model_signing_accepts(signed, keys["pub"])


@pytest.mark.parametrize(
    "attack",
    ["wrong key", "unsigned", "signature edited", "payload edited", "manifest edited", "graph edited", "extra file", "resigned by stranger"],
)
def test_every_tampering_is_refused_by_us_and_by_model_signing(signed: Path, keys, attack: str):
    sig = signed / "model.sig"
    trusted = keys["pub"]
    if attack == "wrong key":
        trusted = keys["other"]
    elif attack == "unsigned":
        sig.unlink()
    elif attack in ("signature edited", "payload edited"):
        doc = json.loads(sig.read_text())
        envelope = doc["dsseEnvelope"]
        if attack == "signature edited":
            raw = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
            raw[-1] ^= 1
            envelope["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
        else:  # claim another digest for the graph, leaving the signature as it was
            statement = json.loads(base64.b64decode(envelope["payload"]))
            statement["predicate"]["resources"][0]["digest"] = "0" * 64
            envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        sig.write_text(json.dumps(doc))
    elif attack == "manifest edited":
        doc = json.loads((signed / "manifest.json").read_text())
        doc["labels"][0], doc["labels"][1] = doc["labels"][1], doc["labels"][0]
        (signed / "manifest.json").write_text(json.dumps(doc))
    elif attack == "graph edited":
        data = bytearray((signed / "model.onnx").read_bytes())
        data[-10] ^= 0xFF
        (signed / "model.onnx").write_bytes(bytes(data))
    elif attack == "extra file":
        (signed / "notes.txt").write_text("not listed")
    elif attack == "resigned by stranger":
        _swap_graph_and_regenerate_self_test(signed)
        assert run_cli("sign", str(signed), "--key", str(keys["other_key"])).returncode == 0
    with pytest.raises(IntegrityError) as info:  # SignatureError is an IntegrityError; an unlisted file is one too
        runtimes.load(signed, trusted_keys=[trusted])
    if attack not in ("graph edited", "extra file"):
        assert isinstance(info.value, SignatureError), info.value
    assert not _model_signing_accepts(signed, trusted)


def test_keys_from_the_environment_apply_to_every_command(signed: Path, keys, bundle_copy: Path, tmp_path: Path):
    env = {"EDGE_TRANSFER_TRUSTED_KEYS": str(keys["pub"])}
    ok = run_cli("predict", str(signed), str(signed / "selftest" / "golden" / "000.png"), env=env, block_torch=True)
    assert ok.returncode == 0, ok.stderr
    unsigned = tmp_path / "unsigned"
    shutil.copytree(signed, unsigned)
    (unsigned / "model.sig").unlink()
    for command in (["predict", str(unsigned), str(unsigned / "selftest" / "golden" / "000.png")], ["check", str(unsigned)]):
        r = run_cli(*command, env=env, block_torch=True)
        assert r.returncode == 2 and "unsigned (no model.sig)" in r.stderr and r.stderr.count("error:") == 1, r.stderr
    no_keys = run_cli("check", str(unsigned), block_torch=True)
    assert no_keys.returncode == 0 and "unsigned, and not checked" in no_keys.stdout


def test_export_signs_before_publishing(digits_run, keys, tmp_path: Path):
    r = run_cli("export", str(digits_run.path), "--format", "onnx", "--out", str(tmp_path / "b"), "--sign-key", str(keys["key"]), "--quiet")
    assert r.returncode == 0, r.stderr
    with runtimes.load(tmp_path / "b", trusted_keys=[keys["pub"]]) as p:
        assert p.bundle.signed_by
    assert _model_signing_accepts(tmp_path / "b", keys["pub"])
    bad = run_cli("export", str(digits_run.path), "--out", str(tmp_path / "c"), "--sign-key", str(keys["pub"]), "--quiet")
    assert bad.returncode == 2 and "this is a public key" in bad.stderr and not (tmp_path / "c").exists(), bad.stderr


def test_bundles_model_signing_signed_are_accepted(bundle_copy: Path, keys):
    from model_signing import hashing, signing

    config = hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=True)
    signing.Config().use_elliptic_key_signer(private_key=keys["key"]).set_hashing_config(config).sign(bundle_copy, bundle_copy / "model.sig")
    with runtimes.load(bundle_copy, trusted_keys=[keys["pub"]]) as p:
        assert p.bundle.signed_by


def test_keys_are_never_replaced_and_encrypted_keys_need_their_password(tmp_path: Path, keys, bundle_copy: Path):
    key = tmp_path / "k.key"
    assert run_cli("keygen", str(key), env={"EDGE_TRANSFER_KEY_PASSWORD": "s3cret"}).returncode == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"ENCRYPTED" in key.read_bytes()
    before = key.read_bytes()
    again = run_cli("keygen", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr and key.read_bytes() == before
    no_password = run_cli("sign", str(bundle_copy), "--key", str(key), env={"EDGE_TRANSFER_KEY_PASSWORD": ""})
    assert no_password.returncode == 2 and "EDGE_TRANSFER_KEY_PASSWORD" in no_password.stderr and not (bundle_copy / "model.sig").exists()
    assert run_cli("sign", str(bundle_copy), "--key", str(key), env={"EDGE_TRANSFER_KEY_PASSWORD": "s3cret"}).returncode == 0
    with pytest.raises(InputError, match="not a PEM public key"):
        runtimes.load(bundle_copy, trusted_keys=[keys["key"]])  # a private key given where a public one belongs
