"""The models folder `deploy` manages (docs/guides/delivery.md): its layout, its mark and the history of `current`,
its log, and the marked temporaries that are the only things its clean-up deletes.

MODELS_DIR/
  current -> versions/v0003      a relative symlink
  versions/v0001 ... v0003       verified copies
  deploy.log                     one JSON line per event (rotated at LOG_MAX_BYTES)
  .edge-transfer-models          the mark of a models folder deploy made, and the history of `current`
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BundleError, OutputError
from ..fsutil import cannot_write, remove_temporary, write_bytes_atomically
from ..outputs import OWNED_MARKERS, OutputKind, OutputRule, Protected, check_output

CURRENT = "current"
VERSIONS = "versions"
LOG = "deploy.log"
STATE = OWNED_MARKERS[0]  # ".edge-transfer-models": the mark of a models folder, and the history of `current`
MARK = ".ours"  # `versions/.X.partial-abc.ours`: the staging or removal folder `.X.partial-abc` is deploy's
LOG_MAX_BYTES = 1 << 20  # deploy.log is rotated to deploy.log.1 past this size
HISTORY_MAX = 100
VERSION_NAME = re.compile(r"^v(\d{4,})$")
TEMPORARY_NAME = re.compile(r"^\.[A-Za-z0-9_-]+\.(partial|old)-[A-Za-z0-9_]+$")
_LEGACY = {CURRENT, VERSIONS, LOG, f"{LOG}.1", f".{LOG}.lock"}
logger = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ the models folder


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((root / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("written_by") == "edge-transfer deploy" else None


def _legacy_models_folder(root: Path) -> bool:
    """A models folder an older release made: only its names, and a deploy.log whose first line is deploy's."""
    names = {p.name for p in root.iterdir()}
    if not names <= _LEGACY | {n for n in names if n.startswith(f".{CURRENT}.tmp-")} or LOG not in names:
        return False
    try:
        with open(root / LOG, encoding="utf-8") as f:
            first = json.loads(f.readline(65536))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "event" in first and "time" in first


def _models_problem(path: Path) -> str | None:
    if read_state(path) is not None or _legacy_models_folder(path):
        return None
    return f"no {STATE} mark of a models folder deploy made"


MODELS = OutputKind("models folder", _models_problem)  # what deploy --to / rollback --to accept (runtimes.outputs)


def history_of(root: Path) -> list[str]:
    doc = read_state(root) or {}
    found = doc.get("history")
    return [v for v in found if isinstance(v, str) and VERSION_NAME.match(v)] if isinstance(found, list) else []


def save_state(root: Path, history: list[str]) -> None:
    doc = {"written_by": "edge-transfer deploy", "format": 1, "history": history[-HISTORY_MAX:]}
    write_bytes_atomically(root / STATE, (json.dumps(doc, indent=1) + "\n").encode(), "models folder's history")


def open_models_dir(models_dir: str | os.PathLike[str], *, create: bool, protected: Iterable[Protected] = ()) -> Path:
    """The models folder through the one output rule (absent or empty, or one deploy made), created and marked."""
    root = Path(models_dir)
    check_output(root, OutputRule("models", MODELS, must_exist=not create), protected=protected, flag="--to")
    try:
        (root / VERSIONS).mkdir(parents=True, exist_ok=True)
        if read_state(root) is None:
            current = current_version(root)
            save_state(root, [current] if current else [])
    except OSError as exc:
        raise cannot_write(root, exc, "models folder") from None
    return root


def versions(models_dir: str | os.PathLike[str]) -> list[str]:
    """The version folders, oldest first (v0001, v0002, ...)."""
    root = Path(models_dir) / VERSIONS
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if VERSION_NAME.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda n: int(n[1:]))


def current_version(models_dir: str | os.PathLike[str]) -> str | None:
    """The version `current` points to, or None before the first deploy; `BundleError` when `current` is not a link
    deploy made, or points at anything but a real version folder under versions/."""
    link = Path(models_dir) / CURRENT
    if not os.path.lexists(link):
        return None
    if not link.is_symlink():
        raise BundleError(f"{link}: not a link made by deploy (a real file or folder is there); move it away first")
    target = Path(os.readlink(link))
    if target.parent != Path(VERSIONS) or not VERSION_NAME.match(target.name):
        raise BundleError(f"{link}: points to {target}, not to a version deploy made under {VERSIONS}/")
    folder = Path(models_dir) / VERSIONS / target.name
    if folder.is_symlink() or not folder.is_dir():
        what = f"a symlink (to {os.readlink(folder)})" if folder.is_symlink() else "a file" if os.path.lexists(folder) else "missing"
        raise BundleError(f"{link}: points to {VERSIONS}/{target.name}, which is {what}, not a version folder deploy made")
    return target.name


def current_path(models_dir: str | os.PathLike[str]) -> Path:
    """The folder of the current version (what an application loads); `BundleError` before the first deploy."""
    version = current_version(models_dir)
    if version is None:
        raise BundleError(f"{models_dir}: nothing deployed yet (no {CURRENT} link); run: edge-transfer deploy BUNDLE --to {models_dir}")
    return Path(models_dir) / VERSIONS / version


def log_event(models_dir: Path, event: str, **fields: Any) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
    logger.debug("%s: %s", models_dir / LOG, json.dumps(record))  # the caller reports; the log file keeps the record
    try:
        path = models_dir / LOG
        if path.is_file() and path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, models_dir / f"{LOG}.1")  # bounded: the newest records and one older file
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        logger.warning("%s: cannot append to %s: %s", models_dir, LOG, exc.strerror or exc)


# ------------------------------------------------------------------------------------------------ marked temporaries


def marked_folder(versions_dir: Path, name: str) -> Path:
    """A folder name deploy owns: its mark file is written (and synced) before the folder exists."""
    path = versions_dir / name
    fd = os.open(versions_dir / (name + MARK), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(versions_dir)
    return path


def is_marked(path: Path) -> bool:
    mark = path.with_name(path.name + MARK)
    try:
        return mark.is_file() and not mark.is_symlink() and mark.read_text(encoding="utf-8").strip() == path.name
    except (OSError, UnicodeDecodeError):
        return False


def remove_marked(path: Path) -> None:
    """Delete a folder deploy marked as its own, then its mark (so an interrupted removal is finished next time)."""
    if not is_marked(path):
        raise OutputError(f"{path}: not marked as deploy's own; refusing to delete it")
    if path.is_dir() and not path.is_symlink():
        remove_temporary(path)  # the one guarded helper: `.NAME.partial-*` / `.NAME.old-*` names only
    path.with_name(path.name + MARK).unlink(missing_ok=True)


def clean_leftovers(models_dir: Path) -> None:
    """Remove what an interrupted deploy left, and only what carries its mark: staging copies, old versions on their
    way out, marks whose folder is gone, an unswitched link. Anything else is logged and kept."""
    folder = models_dir / VERSIONS
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if p.name.endswith(MARK) and p.is_file() and not p.is_symlink():
            target = p.with_name(p.name.removesuffix(MARK))
            if not TEMPORARY_NAME.match(target.name):
                continue
            if is_marked(target):
                remove_marked(target)
            elif not os.path.lexists(target) and p.stat().st_size == 0:
                p.unlink()  # a mark cut short before its folder was made (killed between create and write): empty
        elif TEMPORARY_NAME.match(p.name) and not is_marked(p):
            log_event(models_dir, "kept", path=str(p), reason="not marked as deploy's own, so not removed")
    for p in models_dir.glob(f".{CURRENT}.tmp-*"):
        if p.is_symlink():
            p.unlink()
