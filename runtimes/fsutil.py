"""File helpers shared by bundles, runs, checkpoints and engine caches: streamed sha256, safe relative paths,
and directories that appear complete or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import IntegrityError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_relative_path(rel: str) -> PurePosixPath:
    """Refuse absolute paths, `..`, backslashes and empty parts in a manifest path."""
    if not rel or "\\" in rel or rel.startswith("/") or ":" in rel:
        raise IntegrityError(f"bundle file path {rel!r} must be a relative POSIX path")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise IntegrityError(f"bundle file path {rel!r} is not valid UTF-8") from None
    p = PurePosixPath(rel)
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise IntegrityError(f"bundle file path {rel!r} must not contain '.', '..' or empty parts")
    return p


def staging_directory(target: Path) -> Path:
    """A new hidden temp sibling of `target` (`.name.partial-*`), its parent created if needed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp sibling of `target` to write into; published over `target` (`publish_directory`) when the block
    ends normally, removed when it raises. A SIGKILL leaves only a hidden `.name.partial-*` sibling."""
    target = Path(target)
    tmp = staging_directory(target)
    try:
        yield tmp
        publish_directory(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_directory(staged: Path, target: Path) -> None:
    """Move a fully written temp sibling directory to `target`, replacing a previous one.

    Renames only: at every instant `target` is absent, the previous complete directory, or the new one.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_npz_atomically(path: str | os.PathLike[str], arrays: dict[str, Any]) -> Path:
    """`np.savez` to `path` atomically (temp file beside it, fsync, rename): the path holds the old file or the new
    one, never half of either (a crash mid-write leaves only a hidden temp file, removed on the next error)."""
    import threading

    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_npz_document(
    path: str | os.PathLike[str], keys: tuple[str, ...], *, fmt: str, version: int, what: str, error: type[Exception]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays `keys` and the JSON `meta` of a file written with `write_npz_atomically`, its `format` and `version`
    checked; anything wrong raises `error` naming the file as `what` (e.g. "gallery file")."""
    import json
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays, meta = {k: np.asarray(z[k]) for k in keys}, json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{path}: not an edge-transfer {what} (field 'format' should be {fmt!r})")
    if meta.get("version", 0) > version:
        raise error(f"{path}: {what} version {meta.get('version')} is newer than this edge-transfer supports")
    return arrays, meta
