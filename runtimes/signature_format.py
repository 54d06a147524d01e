"""The bundle signature's format: OpenSSF model-signing's, written and read with the standard library only
(docs/guides/delivery.md).

`model.sig` at the bundle root is a Sigstore bundle (JSON) holding a DSSE envelope. Its payload is an in-toto
Statement v1 with predicate `https://model_signing/signature/v1.0`: one resource per file (path, sha256) for
manifest.json and every file the manifest lists, and a subject digest over those digests. The envelope's signature is
ECDSA over the DSSE pre-authentication encoding of the payload. This is what `model_signing sign key` writes, so
`model_signing verify key` accepts our bundles, and we accept bundles it signed (when they satisfy our own rules).

Here: building the payload, and reading one back into `SignedStatement` without trusting it yet; `runtimes.signing`
checks the signature over it with a trusted key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import SignatureError
from .safejson import loads_limited

SIGNATURE_NAME = "model.sig"  # model-signing's default name, at the bundle root; the one file a manifest cannot list
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
MAX_SIGNATURE_BYTES = 4 << 20


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature is computed over."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def statement_payload(name: str, files: dict[str, str]) -> bytes:
    """The in-toto statement for `files` ({bundle-relative path: sha256 hex}, manifest.json included)."""
    resources = [{"name": path, "algorithm": "sha256", "digest": files[path]} for path in sorted(files)]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": [SIGNATURE_NAME]},
            "resources": resources,
        },
    }
    return json.dumps(statement, indent=2).encode("utf-8")


def signature_document(payload: bytes, signature: bytes, key_id: str) -> bytes:
    """The Sigstore bundle written as `model.sig`; `key_id` is the sha256 of the public key's PEM (model-signing's
    key hint)."""
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_id}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Envelope:
    """`model.sig` parsed but not yet trusted: the payload, its signatures and the signer's key hint."""

    payload: bytes
    signatures: tuple[bytes, ...]
    key_id: str


def _field(doc: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(doc, dict) or name not in doc:
            raise SignatureError(f"{SIGNATURE_NAME}: no {'.'.join(path)} field; not a model-signing signature")
        doc = doc[name]
    return doc


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError(f"{SIGNATURE_NAME}: {what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_NAME}: {what} is not valid base64") from None


def read_envelope(raw: bytes) -> Envelope:
    """Parse `model.sig`'s bytes; a `SignatureError` names what is malformed."""
    try:
        doc = loads_limited(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_NAME}: not valid JSON ({exc})") from None
    media = _field(doc, "mediaType")
    if not isinstance(media, str) or not media.startswith("application/vnd.dev.sigstore.bundle"):
        raise SignatureError(f"{SIGNATURE_NAME}: mediaType {media!r} is not a Sigstore bundle")
    if _field(doc, "dsseEnvelope", "payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"{SIGNATURE_NAME}: the payload is not an in-toto statement")
    sigs = _field(doc, "dsseEnvelope", "signatures")
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) for s in sigs):
        raise SignatureError(f"{SIGNATURE_NAME}: the envelope holds no signature")
    material = doc.get("verificationMaterial")
    if material is not None and not isinstance(material, dict):
        raise SignatureError(f"{SIGNATURE_NAME}: verificationMaterial should be an object, got {type(material).__name__}")
    public = (material or {}).get("publicKey")
    if public is not None and not isinstance(public, dict):
        raise SignatureError(f"{SIGNATURE_NAME}: verificationMaterial.publicKey should be an object, got {type(public).__name__}")
    hint = (public or {}).get("hint", "")
    if not isinstance(hint, str):
        raise SignatureError(f"{SIGNATURE_NAME}: verificationMaterial.publicKey.hint should be a string, got {type(hint).__name__}")
    return Envelope(
        payload=_b64(_field(doc, "dsseEnvelope", "payload"), "the payload"),
        signatures=tuple(_b64(s.get("sig"), "a signature") for s in sigs),
        key_id=hint if isinstance(hint, str) else "",
    )


@dataclass(frozen=True)
class SignedStatement:
    """What a trusted signature vouches for: each file's sha256, manifest.json's included."""

    name: str
    files: dict[str, str]
    key_id: str


def read_statement(payload: bytes, key_id: str) -> SignedStatement:
    """The signed statement's files, after the signature over `payload` was verified; checks it is model-signing's
    file serialization with sha256 and no symlinks, and that the subject digest matches the resources."""
    try:
        doc = loads_limited(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_NAME}: the signed statement is not valid JSON ({exc})") from None
    if _field(doc, "_type") != STATEMENT_TYPE or _field(doc, "predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{SIGNATURE_NAME}: not a model-signing v1.0 statement")
    serialization = _field(doc, "predicate", "serialization")
    if not isinstance(serialization, dict) or (serialization.get("method"), serialization.get("hash_type")) != ("files", "sha256"):
        raise SignatureError(f"{SIGNATURE_NAME}: signed with {serialization!r}; only whole-file sha256 serialization is accepted")
    if serialization.get("allow_symlinks") not in (False, "false"):
        raise SignatureError(f"{SIGNATURE_NAME}: signed with symlinks allowed; bundles hold no symlinks")
    resources = _field(doc, "predicate", "resources")
    files: dict[str, str] = {}
    for r in resources if isinstance(resources, list) else [None]:
        if not isinstance(r, dict) or r.get("algorithm") != "sha256" or not isinstance(r.get("name"), str) or not isinstance(r.get("digest"), str):
            raise SignatureError(f"{SIGNATURE_NAME}: a signed resource is not {{name, algorithm: sha256, digest}}: {r!r}")
        files[r["name"]] = r["digest"].lower()
    try:
        root = hashlib.sha256(b"".join(bytes.fromhex(files[r["name"]]) for r in resources)).hexdigest()
    except ValueError:
        raise SignatureError(f"{SIGNATURE_NAME}: a signed digest is not hex") from None
    subject = _field(doc, "subject")
    if not isinstance(subject, list) or len(subject) != 1 or _field(subject[0], "digest", "sha256") != root:
        raise SignatureError(f"{SIGNATURE_NAME}: the subject digest does not match the signed resources")
    name = subject[0].get("name", "")
    return SignedStatement(name=name if isinstance(name, str) else "", files=files, key_id=key_id)
