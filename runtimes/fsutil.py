"""File helpers shared by bundles, runs, checkpoints and engine caches: streamed sha256, safe relative paths,
and directories that appear complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from .errors import IntegrityError, OutputError
from .outputs import OutputKind, a, contents_problem

_CHUNK = 1 << 20
T = TypeVar("T")


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


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cannot_write(path: str | os.PathLike[str], exc: OSError, what: str = "output") -> OutputError:
    """One line for a write the file system refused (read-only, full, a file where a folder should be)."""
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno == errno.ENOTDIR:
        reason = "a parent folder on the way is a file"
    return OutputError(f"{path}: cannot write the {what}: {reason}; what was there before is unchanged")


TEMP_PREFIX = "edge-transfer-"  # temporary directories this package makes under the system's temp folder


def is_our_temporary(path: Path) -> bool:
    """A staging sibling (`.NAME.partial-*`), a replaced directory on its way out (`.NAME.old-PID`), or an
    `edge-transfer-*` directory in the system's temp folder: names only this package gives."""
    name = path.name
    if name.startswith(".") and (".partial-" in name or ".old-" in name):
        return True
    return name.startswith(TEMP_PREFIX) and Path(os.path.realpath(path.parent)) == Path(os.path.realpath(tempfile.gettempdir()))


def remove_temporary(path: str | os.PathLike[str]) -> None:
    """Delete a temporary directory this package made (see `is_our_temporary`); any other path is a bug, refused."""
    p = Path(path)
    if not is_our_temporary(p):
        raise OutputError(f"{p}: not a temporary directory of edge-transfer's; refusing to delete it")
    shutil.rmtree(p, ignore_errors=True)


def remove_ours(path: str | os.PathLike[str], kind: OutputKind) -> bool:
    """Delete `path` only when it is a whole `kind` directory of ours (`runtimes.outputs.contents_problem`), or empty;
    anything else, a file or a symlink included, is refused with `OutputError` naming what is there. Returns whether
    something was deleted. Together with `remove_temporary`, the only way edge-transfer deletes a directory."""
    p = Path(path)
    if not os.path.lexists(p):
        return False
    problem = contents_problem(p, kind)
    if problem is not None:
        raise OutputError(f"{p} {problem}: not {a(kind.what)} edge-transfer wrote, so it is not deleted")
    shutil.rmtree(p)
    return True


def published_path(path: str | os.PathLike[str]) -> Path:
    """The path a staged directory will be published at (`out/.b.partial-x1y2` -> `out/b`), so messages written
    while a bundle is validated name the bundle the user asked for; any other path as it is."""
    p = Path(path)
    name, sep, _ = p.name.partition(".partial-")
    return p.with_name(name[1:]) if sep and name.startswith(".") and len(name) > 1 else p


def staging_directory(target: Path) -> Path:
    """A new hidden temp sibling of `target` (`.name.partial-*`), its parent created if needed, with the permissions
    a plain `mkdir` would give under the current umask (not mkdtemp's 0700: a device service may run as another user)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise cannot_write(target, exc) from None
    return tmp


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp sibling of `target` to write into; published over `target` (`publish_directory`) when the block
    ends normally, removed when it raises. A SIGKILL leaves only a hidden `.name.partial-*` sibling."""
    target = Path(target)
    tmp = staging_directory(target)
    try:
        try:
            yield tmp
        except OSError as exc:  # the disk filled or went read-only while writing
            raise cannot_write(target, exc) from None
        publish_directory(tmp, target)
    finally:
        if tmp.exists():
            remove_temporary(tmp)


def publish_directory(staged: Path, target: Path) -> None:
    """Move a fully written temp sibling directory to `target`, replacing a previous one.

    Renames only: at every instant `target` is absent, the previous complete directory, or the new one.
    """
    old = None
    try:
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staged, target)
    except OSError as exc:
        if old is not None and not os.path.lexists(target):
            os.replace(old, target)  # put the previous one back
        raise cannot_write(target, exc) from None
    if old is not None:
        remove_temporary(old)


LOCK_TIMEOUT_S = 120.0


@contextlib.contextmanager
def exclusive_file(path: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the cross-process lock of the file at `path` (a `filelock` lock file beside the real file, a symlinked
    path resolved first) for one read-modify-write; yields the real path. Another process editing the same file
    waits; after `timeout` seconds this raises `OutputError`."""
    from filelock import FileLock, Timeout

    real = Path(os.path.realpath(path))
    lock = FileLock(str(real.with_name(f".{real.name}.lock")), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(f"{path}: another process has been editing it for {timeout:.0f} s; try again when it is done") from None
    except OSError as exc:  # the folder is read-only or missing
        raise cannot_write(path, exc, "lock file") from None
    try:
        yield real
    finally:
        lock.release()


@contextlib.contextmanager
def edit_locked(path: str | os.PathLike[str], read: Callable[[Path], T], create: Callable[[], T], save: Callable[[T, Path], Any]) -> Iterator[T]:
    """Read-modify-write of a document file under `exclusive_file`: read (or `create`, when absent) under the lock,
    yield it to be changed, `save` it atomically when the block ends normally (an error saves nothing)."""
    with exclusive_file(path) as real:
        doc = read(real) if real.exists() else create()
        yield doc
        save(doc, real)


def write_npz_atomically(path: str | os.PathLike[str], arrays: dict[str, Any], what: str = "file") -> Path:
    """`np.savez` to `path` atomically (temp file beside it, fsync, rename): the path holds the old file or the new
    one, never half of either (a crash mid-write leaves only a hidden temp file, removed on the next error)."""
    import numpy as np

    path = Path(os.path.realpath(path))  # a symlinked path: the real file is replaced, and the link kept
    return _replace_atomically(path, lambda f: np.savez(f, **arrays), what)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, what: str = "file") -> Path:
    """`data` to `path` as `write_npz_atomically` writes; a symlink at `path` is itself replaced, never followed."""
    return _replace_atomically(Path(path), lambda f: f.write(data), what)


def _replace_atomically(path: Path, fill: Callable[[Any], Any], what: str) -> Path:
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        else:
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc, what) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path
