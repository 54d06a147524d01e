"""Signed bundles: key pairs, signing, and the device's check against the keys it trusts (docs/guides/delivery.md).

Keys are ECDSA P-256 (P-384 and P-521 are read too) in PEM, the key type OpenSSF model-signing uses, so its
`verify key` command checks our signatures; `runtimes.signature_format` is the file format. Only `cryptography` is
needed, on the host and on the device.

The device's policy: the keys given to `runtimes.load(path, trusted_keys=...)`, or else the files and folders of
public keys in `EDGE_TRANSFER_TRUSTED_KEYS`. With at least one key, a bundle that is unsigned, signed by another key,
or changed after signing is refused with `SignatureError` before its model bytes are parsed. With none, signatures
are not checked (the sha256 checks still are).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendUnavailableError, InputError, SignatureError
from .manifest import MANIFEST_NAME
from .outputs import FileKind, never_replaced
from .signature_format import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    SignedStatement,
    pae,
    read_envelope,
    read_statement,
    signature_document,
    statement_payload,
)

KEYS_ENV = "EDGE_TRANSFER_TRUSTED_KEYS"  # os.pathsep-separated public key files, or folders of *.pub files
PASSWORD_ENV = "EDGE_TRANSFER_KEY_PASSWORD"  # encrypts the private key at keygen, and decrypts it to sign
KEY_FILE = FileKind("key file", never_replaced)  # keygen never replaces a key
CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
KeySource = str | os.PathLike[str] | bytes


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise BackendUnavailableError("signed bundles need the 'cryptography' package: pip install cryptography") from None
    return hashes, serialization, ec


@dataclass(frozen=True)
class TrustedKey:
    """A public key this device trusts; `key_id` is the sha256 of its PEM (model-signing's key hint)."""

    key_id: str
    source: str
    key: Any
    pem: bytes = b""  # the public key's PEM, to hand on as a key source


def key_id(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest()


def _checked_curve(key: Any, source: str) -> None:
    _, _, ec = _crypto()
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) or key.curve.name not in CURVES:
        raise InputError(f"{source}: not an ECDSA key on P-256, P-384 or P-521 (make one with: edge-transfer keygen)")


MAX_KEY_BYTES = 64 << 10  # a PEM key is a few hundred bytes


def read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    """A key file's bytes: a regular file of at most MAX_KEY_BYTES (a FIFO, a device or a folder is refused before
    it is opened, so nothing hangs or fills memory)."""
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: a folder, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a FIFO, device or socket), so not a {what}")
    if st.st_size > MAX_KEY_BYTES:
        raise InputError(f"{path}: {st.st_size} bytes; a {what} is at most {MAX_KEY_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_KEY_BYTES + 1)[:MAX_KEY_BYTES]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def load_public_key(source: KeySource) -> TrustedKey:
    """A public key from a PEM file (or its bytes); `InputError` names the file when it is not one."""
    _, serialization, _ = _crypto()
    where = "public key" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else read_key_file(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        hint = " (this is a private key: give the .pub file)" if b"PRIVATE KEY" in data else ""
        raise InputError(f"{where}: not a PEM public key{hint}") from None
    _checked_curve(key, where)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TrustedKey(key_id=key_id(pem), source=where, key=key, pem=pem)


def _key_files(entry: str) -> list[Path]:
    p = Path(entry)
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.suffix == ".pub" and q.is_file())
        if not found:
            raise InputError(f"{p}: a trusted-keys folder with no *.pub file")
        return found
    return [p]


def trusted_keys(keys: Iterable[KeySource] | None = None) -> tuple[TrustedKey, ...]:
    """The keys to verify with: `keys` (files, folders of *.pub, or PEM bytes) when given, else those named by
    `EDGE_TRANSFER_TRUSTED_KEYS`; an empty tuple means signatures are not checked."""
    if keys is None:
        if KEYS_ENV not in os.environ:
            return ()
        entries = [e for e in os.environ[KEYS_ENV].split(os.pathsep) if e.strip()]
        if not entries:  # fail closed: a policy that names no key is a mistake, never "verify nothing"
            raise InputError(f"{KEYS_ENV}={os.environ[KEYS_ENV]!r} names no key; give public key files or folders, or unset it")
        return tuple(load_public_key(f) for e in entries for f in _key_files(e.strip()))
    out: list[TrustedKey] = []
    for k in keys:
        if not isinstance(k, bytes) and not os.fspath(k).strip():
            raise InputError("an empty --key: give a public key file or a folder of them")
        out.extend([load_public_key(k)] if isinstance(k, bytes) else [load_public_key(f) for f in _key_files(os.fspath(k))])
    return tuple(out)


def _short(ids: Iterable[str]) -> str:
    return ", ".join(i[:12] for i in ids) or "none"


def verify_manifest_signature(root: Path, manifest_bytes: bytes, keys: Sequence[TrustedKey]) -> SignedStatement:
    """Check `root/model.sig` with `keys` and that it signed exactly these manifest bytes; return what it signed."""
    hashes, _, ec = _crypto()
    from cryptography.exceptions import InvalidSignature

    sig_path = root / SIGNATURE_NAME
    trusted = f"this device trusts only bundles signed by key(s) {_short(k.key_id for k in keys)}"
    if sig_path.is_symlink() or not sig_path.is_file():
        raise SignatureError(f"{root}: unsigned (no {SIGNATURE_NAME}), and {trusted}")
    try:
        if sig_path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{sig_path}: larger than {MAX_SIGNATURE_BYTES} bytes; not a signature")
        raw = sig_path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{sig_path}: cannot be read: {exc.strerror or exc}") from None
    try:
        envelope = read_envelope(raw)
    except SignatureError as exc:
        raise SignatureError(f"{root}: {exc}") from None
    candidates = [k for k in keys if not envelope.key_id or k.key_id == envelope.key_id]
    if not candidates:
        raise SignatureError(f"{root}: signed by key {envelope.key_id[:12]}, which is not trusted here; {trusted}")
    message = pae(envelope.payload)
    for k in candidates:
        digest = getattr(hashes, CURVES[k.key.curve.name])()
        for sig in envelope.signatures:
            try:
                k.key.verify(sig, message, ec.ECDSA(digest))
            except InvalidSignature:
                continue
            try:
                statement = read_statement(envelope.payload, k.key_id)
            except SignatureError as exc:
                raise SignatureError(f"{root}: {exc}") from None
            if statement.files.get(MANIFEST_NAME) != hashlib.sha256(manifest_bytes).hexdigest():
                raise SignatureError(f"{root}: {MANIFEST_NAME} is not the one that was signed (changed after signing)")
            return statement
    what = "does not match what it signs (edited or corrupt)" if envelope.key_id else f"was not made by a trusted key; {trusted}"
    raise SignatureError(f"{root}: the signature in {SIGNATURE_NAME} {what}")


def check_signed_files(root: Path, statement: SignedStatement, listed: dict[str, str]) -> None:
    """The signed statement must list exactly manifest.json and the manifest's files ({path: sha256}), with the same
    digests (the manifest's checks then hold every file to them)."""
    signed = {p: d for p, d in statement.files.items() if p != MANIFEST_NAME}
    for path in sorted(set(signed) | set(listed)):
        if signed.get(path) != listed.get(path):
            state = "is not signed" if path not in signed else "is signed but not listed" if path not in listed else "differs from the signed digest"
            raise SignatureError(f"{root}: bundle file {path!r} {state}")


# ------------------------------------------------------------------------------------------------ host side


def _password() -> bytes | None:
    value = os.environ.get(PASSWORD_ENV)
    if value is not None and not value:
        raise InputError(f"{PASSWORD_ENV} is set but empty; give the password, or unset it for a key without one")
    return value.encode("utf-8") if value else None


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An ECDSA private key from PEM, decrypted with `EDGE_TRANSFER_KEY_PASSWORD` when it is encrypted."""
    _, serialization, _ = _crypto()
    data = read_key_file(path, "signing key")
    password = _password()  # outside the try: its InputError is a ValueError too
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise InputError(f"{path}: the signing key is encrypted; set {PASSWORD_ENV} to its password") from None
    except ValueError:
        hint = " (this is a public key: sign with the private one)" if b"PUBLIC KEY" in data else ""
        raise InputError(f"{path}: not a PEM private key, or the wrong password{hint}") from None
    _checked_curve(key, str(path))
    return key


def signature_for(name: str, manifest_bytes: bytes, listed: dict[str, str], private_key: Any) -> tuple[bytes, str]:
    """`model.sig`'s bytes for bundle `name` whose manifest is `manifest_bytes` and lists `listed` ({path: sha256}),
    and the key id."""
    hashes, serialization, ec = _crypto()
    payload = statement_payload(name, {**listed, MANIFEST_NAME: hashlib.sha256(manifest_bytes).hexdigest()})
    digest = getattr(hashes, CURVES[private_key.curve.name])()
    signature = private_key.sign(pae(payload), ec.ECDSA(digest))
    pem = private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return signature_document(payload, signature, key_id(pem)), key_id(pem)


def generate_key_pair(private_path: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new P-256 key pair: `private_path` (mode 0600, encrypted when `EDGE_TRANSFER_KEY_PASSWORD` is set)
    and the public key beside it with `.pub`. Existing files are never replaced. Returns both paths and the key id."""
    _, serialization, ec = _crypto()
    private = Path(private_path)
    if private.suffix == ".pub":
        raise InputError(f"{private}: a .pub name is for the public key, and `scp keys/*.pub` would ship this one; name the private key NAME.key")
    public = private.with_name(private.name.removesuffix(".key") + ".pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise InputError(f"{p}: already exists; a key is never replaced (choose another name, or move it away)")
    key = ec.generate_private_key(ec.SECP256R1())
    password = _password()
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        fd = os.open(public, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    except OSError as exc:
        raise InputError(f"{private}: cannot write the key pair: {exc.strerror or exc}") from None
    return private, public, key_id(pem)
