"""Bundle directories: verified reading and atomic writing (README: The bundle).

Reading checks, before any backend sees a byte: the manifest schema, that every listed path is relative, inside
the bundle and not a symlink, that sizes and sha256 match, and that no unlisted file is present.
Writing builds the bundle in a hidden sibling directory, writes manifest.json last and renames it into place, so an
interrupted export leaves either nothing or the previous complete bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import signing
from .errors import BundleError, IntegrityError
from .fsutil import check_relative_path, publish_directory, remove_temporary, sha256_file, staging_directory, write_bytes_atomically
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, parse_manifest, utc_now
from .outputs import OutputKind, check_output_dir, listing
from .safejson import MAX_JSON_BYTES, MAX_JSON_DEPTH, loads_limited
from .signature_format import SIGNATURE_NAME
from .signing import KeySource


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    `blobs` holds the model files (the entrypoint and its companions, e.g. OpenVINO's weights) exactly as they were
    read and checked against their sha256, so a backend runs the bytes that were verified: a file swapped on disk
    after the check is never loaded. Model files must therefore fit in memory.
    """

    path: Path
    manifest: Manifest
    blobs: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    signed_by: str | None = None  # the trusted key's id when a signature was checked (runtimes.signing)

    def file(self, rel: str) -> Path:
        return self.path / rel

    def verified_bytes(self, rel: str) -> bytes | None:
        """The verified bytes of a model file, or None when the bundle was opened without verification."""
        return self.blobs.get(rel)

    @property
    def entrypoint(self) -> Path:
        return self.path / self.manifest.entrypoint

    @property
    def size_bytes(self) -> int:
        return sum(f.bytes for f in self.manifest.files)


MAX_MANIFEST_BYTES = MAX_JSON_BYTES
MAX_MANIFEST_DEPTH = MAX_JSON_DEPTH


def _what_it_is(root: Path) -> str:
    """For a directory that is not a bundle: a training run, the parent of several bundles, or neither."""
    config = root / "config.json"
    if (root / "model.safetensors").is_file() and config.is_file() and "edge-transfer-run" in config.read_text(errors="replace")[:4096]:
        return f"this is a training run, not a bundle; make bundles from it with: edge-transfer export {root} --format onnx --out BUNDLE"
    inside = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
    if inside:
        shown = ", ".join(str(root / name) for name in inside[:8]) + (f" and {len(inside) - 8} more" if len(inside) > 8 else "")
        return f"this folder holds {len(inside)} bundle(s), one per format; name one: {shown}"
    return "not a bundle, or an interrupted export"


def read_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Parse and validate manifest.json without checking the model files (nor its signature)."""
    return _parse(Path(bundle_dir), _manifest_bytes(Path(bundle_dir)))


def _manifest_bytes(root: Path) -> bytes:
    """manifest.json's bytes, within the size limit; a `BundleError` says what the folder is when it has none."""
    mpath = root / MANIFEST_NAME
    try:
        if not root.exists():
            raise BundleError(f"{root}: no such bundle directory")
        if not root.is_dir():
            raise BundleError(f"{root}: a bundle is a directory, this is a file")
        if mpath.is_symlink() or not mpath.is_file():
            raise BundleError(f"{root}: no {MANIFEST_NAME}: {_what_it_is(root)}")
    except OSError as exc:  # e.g. a directory this user may not search
        raise BundleError(f"{root}: cannot be read: {exc.strerror or exc}") from None
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
        return mpath.read_bytes()
    except OSError as exc:
        raise BundleError(f"{mpath}: cannot be read: {exc.strerror or exc}") from None


def _parse(root: Path, raw: bytes) -> Manifest:
    mpath = root / MANIFEST_NAME
    try:
        data = loads_limited(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
    except ValueError as exc:  # past a limit of runtimes.safejson
        raise BundleError(f"{mpath}: not a usable manifest ({exc})") from None
    try:
        return parse_manifest(data)
    except BundleError as exc:
        raise BundleError(f"{mpath}: {exc}") from None


def open_bundle(bundle_dir: str | os.PathLike[str], *, verify: bool = True, trusted_keys: Iterable[KeySource] | None = None) -> Bundle:
    """Read a bundle's manifest and verify every file (paths, sizes, checksums, nothing unlisted, ONNX external
    data only from listed files of the bundle).

    `trusted_keys` (public key files, folders of *.pub, PEM bytes; by default `EDGE_TRANSFER_TRUSTED_KEYS`): when
    there are any, the manifest's bytes must carry a valid signature by one of them (`runtimes.signing`), checked
    before they are parsed; `[]` checks no signature."""
    root = Path(bundle_dir)
    keys = signing.trusted_keys(trusted_keys) if verify else ()
    raw = _manifest_bytes(root)
    statement = signing.verify_manifest_signature(root, raw, keys) if keys else None
    manifest = _parse(root, raw)
    if statement is not None:
        signing.check_signed_files(root, statement, {f.path: f.sha256 for f in manifest.files})
    blobs = verify_files(root, manifest) if verify else {}
    return Bundle(path=root, manifest=manifest, blobs=blobs, signed_by=statement.key_id if statement else None)


def sign_bundle(bundle_dir: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> str:
    """Sign a bundle in place: check every file, then write `model.sig` atomically (replacing an older signature).
    Returns the key id (the sha256 of the public key's PEM)."""
    root = Path(bundle_dir)
    key = signing.load_private_key(private_key)
    open_bundle(root, trusted_keys=[])  # never sign a bundle that fails its own checks
    return _write_signature(root, key, root.name)


def _write_signature(root: Path, key: Any, name: str) -> str:
    raw = _manifest_bytes(root)
    listed = {f.path: f.sha256 for f in _parse(root, raw).files}
    signature, key_id = signing.signature_for(name, raw, listed, key)
    write_bytes_atomically(root / SIGNATURE_NAME, signature, "signature")
    return key_id


def model_files(manifest: Manifest) -> set[str]:
    """The files a backend loads: the entrypoint and listed files beside it with the same stem (model.bin), and a
    text bundle's tokenizer (read from these verified bytes too)."""
    entry = PurePosixPath(manifest.entrypoint)
    return {
        f.path
        for f in manifest.files
        if f.path == manifest.entrypoint or (PurePosixPath(f.path).parent == entry.parent and PurePosixPath(f.path).stem == entry.stem)
    } | ({manifest.text.tokenizer} if manifest.text is not None else set())


def _is_onnx(rel: str, manifest: Manifest) -> bool:
    """ONNX files whatever their name: the entrypoint of an ONNX bundle, and any file named *.onnx (any case)."""
    return rel.lower().endswith(".onnx") or (rel == manifest.entrypoint and manifest.format == "onnx")


def _check_file(root: Path, p: Path, entry: Any, *, keep: bool) -> bytes | None:
    """Check a listed file's size and sha256. With `keep`, read it once and return those very bytes (the ones a
    backend will load); otherwise stream it (self-test arrays and other data need not sit in memory)."""
    try:
        if keep:
            blob = p.read_bytes()
            data: bytes | None = blob
            size, digest = len(blob), hashlib.sha256(blob).hexdigest()
        else:
            data, size = None, p.stat().st_size
            digest = sha256_file(p) if size == entry.bytes else ""
    except OSError as exc:
        raise IntegrityError(f"{root}: bundle file {entry.path!r} cannot be read: {exc.strerror or exc}") from None
    if size != entry.bytes:
        raise IntegrityError(f"{root}: bundle file {entry.path!r} is {size} bytes, the manifest says {entry.bytes} (truncated or replaced)")
    if digest != entry.sha256:
        raise IntegrityError(f"{root}: bundle file {entry.path!r} fails its sha256 check (modified or corrupt)")
    return data


def _check_location(root: Path, real_root: Path, p: Path, rel: str) -> None:
    """No component of a listed file may be a symlink, the file must exist, and it must resolve inside the bundle."""
    cur = root
    for part in PurePosixPath(rel).parts:
        cur = cur / part
        if cur.is_symlink():
            raise IntegrityError(f"{root}: bundle file {rel!r} is (or passes through) a symlink")
    if not p.is_file():
        raise IntegrityError(f"{root}: bundle file {rel!r} listed in the manifest is missing")
    if real_root not in p.resolve().parents:
        raise IntegrityError(f"{root}: bundle file {rel!r} resolves outside the bundle")


def verify_files(root: Path, manifest: Manifest) -> dict[str, bytes]:
    """Check every listed file; return the verified bytes of the model files (see `Bundle.blobs`)."""
    real_root = root.resolve()
    keep = model_files(manifest)
    blobs: dict[str, bytes] = {}
    listed = set()
    for entry in manifest.files:
        check_relative_path(entry.path)
        if entry.path == SIGNATURE_NAME:
            raise IntegrityError(f"{root}: the manifest lists {SIGNATURE_NAME}, the signature's own place")
        p = root / entry.path
        try:
            _check_location(root, real_root, p, entry.path)
        except OSError as exc:  # a directory on the way that this user may not search
            raise IntegrityError(f"{root}: bundle file {entry.path!r} cannot be read: {exc.strerror or exc}") from None
        data = _check_file(root, p, entry, keep=entry.path in keep or _is_onnx(entry.path, manifest))
        if data is not None:
            blobs[entry.path] = data
        listed.add(entry.path)

    def unreadable(exc: OSError) -> None:  # a directory that cannot be listed could hide unlisted files
        where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else "?"
        raise IntegrityError(f"{root}: bundle directory {where!r} cannot be listed: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME) and rel not in listed:
                raise IntegrityError(f"{root}: file {rel!r} is in the bundle but not listed in the manifest")
    from .onnx_refs import check_external_data

    for rel in sorted(listed):
        if _is_onnx(rel, manifest):
            try:
                check_external_data(root / rel, root, listed, blobs[rel])
            except BundleError as exc:  # IntegrityError included
                raise type(exc)(f"{root}: {exc}") from None
    return {rel: data for rel, data in blobs.items() if rel in keep}


# ------------------------------------------------------------------------------------------------ writing


def _bundle_problem(path: Path) -> str | None:
    try:
        manifest = read_manifest(path)
    except BundleError:
        return f"no edge-transfer {MANIFEST_NAME}"
    listed = {f.path for f in manifest.files} | {MANIFEST_NAME, SIGNATURE_NAME}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(path).as_posix()
            if rel not in listed:
                foreign.append(rel)
    if foreign:
        return f"files its manifest does not list ({listing(foreign)})"
    return None


BUNDLE = OutputKind("bundle", _bundle_problem)  # what `--overwrite` may replace (runtimes.outputs)


class BundleWriter:
    """Build a bundle in a hidden sibling temp directory and publish it atomically.

    >>> with BundleWriter("out/model", overwrite=False) as w:
    ...     save_model(w.dir / "model.onnx")
    ...     w.commit(manifest_without_files)   # hashes files, writes manifest.json last, renames into place

    Leaving the block without `commit` (an exception, Ctrl-C) removes the temp directory; a SIGKILL leaves only a
    hidden `.name.partial-*` sibling, never a half-written bundle at the target path.
    """

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = False, sign_key: str | os.PathLike[str] | None = None) -> None:
        self.target = check_output_dir(target, BUNDLE, overwrite=overwrite)  # only a bundle of ours is ever replaced
        self.overwrite = overwrite
        self.sign_key = signing.load_private_key(sign_key) if sign_key is not None else None  # a bad key fails first
        self.dir: Path = Path()
        self.committed = False

    def __enter__(self) -> BundleWriter:
        self.dir = staging_directory(self.target)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            remove_temporary(self.dir)

    def _file_entries(self) -> list[dict[str, Any]]:
        files = []
        for p in sorted(self.dir.rglob("*")):
            if p.is_symlink():
                raise BundleError(f"refusing to bundle symlink {p.name}")
            rel = p.relative_to(self.dir).as_posix()
            if p.is_file() and rel not in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", SIGNATURE_NAME):
                files.append({"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size})
        return files

    def stage(self, manifest: Manifest | dict[str, Any]) -> tuple[dict[str, Any], Manifest]:
        """Hash the files written so far and write manifest.json into the temp dir (not yet published).

        `manifest` is a `Manifest` (its `files` are filled in here; writers pass one) or, for tools and tests, a
        raw document. The staged directory is a complete bundle, so it can be loaded with
        `runtimes.load(writer.dir)` for validation before `commit`. Returns the full document and its parsed form.
        """
        doc = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
        doc.setdefault("schema_version", SCHEMA_VERSION)
        doc.setdefault("created", utc_now())
        doc["model"] = dict(doc["model"], files=self._file_entries())
        parsed = parse_manifest(json.loads(json.dumps(doc)))  # the writer never emits what the reader would refuse
        tmp_manifest = self.dir / (MANIFEST_NAME + ".tmp")
        with open(tmp_manifest, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_manifest, self.dir / MANIFEST_NAME)
        return doc, parsed

    def commit(self, manifest: Manifest | dict[str, Any]) -> Bundle:
        """Stage `manifest` (written last, after every file is hashed), sign it when a key was given, then publish the
        bundle atomically."""
        _, parsed = self.stage(manifest)
        signed_by = _write_signature(self.dir, self.sign_key, self.target.name) if self.sign_key is not None else None
        publish_directory(self.dir, self.target)
        self.committed = True
        return Bundle(path=self.target, manifest=parsed, signed_by=signed_by)
