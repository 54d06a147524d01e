"""Safe updates on the device: a bundle becomes the one an application runs only after it passed every check here
(docs/guides/delivery.md).

MODELS_DIR/
  current -> versions/v0003      a relative symlink, switched by one atomic rename
  versions/v0001 ... v0003       verified copies, the newest `keep` kept (and always the current one)
  deploy.log                     one JSON line per deploy, refusal, rollback and removal

`deploy(bundle, models_dir)`: (1) copy into a hidden staging folder beside the versions, (2) verify checksums, and the
signature when keys are trusted, (3) run the self-test on this device in the precision it will run in, (4) rename
the copy to the next version, (5) point a new symlink at it and rename it over `current`. A failure at any step
leaves `current` as it was and logs why. A process killed at any instant leaves `current` at the old version or the
new one, both complete; the staging leftovers are removed by the next deploy. `rollback` points `current` back at
the newest older version that still verifies and passes its self-test.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import BUNDLE, open_bundle
from .errors import BundleError, EdgeTransferError, InputError, OutputError, SelfTestFailed
from .fsutil import cannot_write, exclusive_file, is_our_temporary, remove_temporary, staging_directory
from .manifest import MANIFEST_NAME
from .outputs import contents_problem
from .signature_format import SIGNATURE_NAME
from .signing import KeySource

CURRENT = "current"
VERSIONS = "versions"
LOG = "deploy.log"
DEFAULT_KEEP = 3
_VERSION = re.compile(r"^v(\d{4,})$")
CRASH_ENV = "EDGE_TRANSFER_TEST_CRASH_AT"  # tests only: the process exits at once (no cleanup) at this named step
logger = logging.getLogger(__name__)


def _step(name: str) -> None:
    """A named point between two deploy operations; a test sets CRASH_ENV to die exactly here, as on power loss."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(86)


@dataclass(frozen=True)
class DeployResult:
    """What `deploy` or `rollback` did: the version now current, the one before, and the versions removed."""

    version: str
    path: Path
    previous: str | None
    removed: tuple[str, ...]
    self_test: str
    signed_by: str | None
    unchanged: bool = False  # the bundle was already the current version: nothing installed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(models_dir: str | os.PathLike[str]) -> list[str]:
    """The version folders, oldest first (v0001, v0002, ...)."""
    root = Path(models_dir) / VERSIONS
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if _VERSION.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda n: int(n[1:]))


def current_version(models_dir: str | os.PathLike[str]) -> str | None:
    """The version `current` points to, or None before the first deploy; `BundleError` when `current` is not a link
    deploy made."""
    link = Path(models_dir) / CURRENT
    if not os.path.lexists(link):
        return None
    if not link.is_symlink():
        raise BundleError(f"{link}: not a link made by deploy (a real file or folder is there); move it away first")
    target = Path(os.readlink(link))
    if target.parent != Path(VERSIONS) or not _VERSION.match(target.name):
        raise BundleError(f"{link}: points to {target}, not to a version deploy made under {VERSIONS}/")
    return target.name


def current_path(models_dir: str | os.PathLike[str]) -> Path:
    """The folder of the current version (what an application loads); `BundleError` before the first deploy."""
    version = current_version(models_dir)
    if version is None:
        raise BundleError(f"{models_dir}: nothing deployed yet (no {CURRENT} link); run: edge-transfer deploy BUNDLE --to {models_dir}")
    return Path(models_dir) / VERSIONS / version


def _log(models_dir: Path, event: str, **fields: Any) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
    logger.debug("%s: %s", models_dir / LOG, json.dumps(record))  # the caller reports; the log file keeps the record
    try:
        with open(models_dir / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        logger.warning("%s: cannot append to %s: %s", models_dir, LOG, exc.strerror or exc)


def _clean_leftovers(models_dir: Path) -> None:
    """Remove what an interrupted deploy left: staging copies, old versions on their way out, an unswitched link."""
    for p in (models_dir / VERSIONS).iterdir() if (models_dir / VERSIONS).is_dir() else ():
        if is_our_temporary(p) and p.is_dir() and not p.is_symlink():
            remove_temporary(p)
    for p in models_dir.glob(f".{CURRENT}.tmp-*"):
        if p.is_symlink():
            p.unlink()


def _copy_bundle(source: Path, staging: Path) -> None:
    """Copy every file of `source`, contents only (a read-only copy received by scp stays removable here), each
    fsynced; symlinks are copied as links, which verification then refuses."""
    if not (source / MANIFEST_NAME).is_file():
        raise BundleError(f"{source}: not a bundle (no manifest.json)")
    for dirpath, dirnames, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        (staging / rel).mkdir(exist_ok=True)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            src, dst = Path(dirpath) / name, staging / rel / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                continue
            shutil.copyfile(src, dst)
            with open(dst, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(staging / rel)
    _step("copied")


def _self_test(path: Path, keys: Iterable[KeySource] | None, device: str | None, options: dict[str, Any]) -> tuple[str, str | None]:
    """Verify and self-test the bundle at `path` as the application will load it; raise on any failure."""
    from .backends import create_predictor

    bundle = open_bundle(path, trusted_keys=keys)
    _step("verified")
    with create_predictor(bundle, device=device, **options) as predictor:
        if predictor.manifest.self_test is None:
            raise SelfTestFailed(f"{path}: the bundle has no self-test data, so it cannot be checked on this device before it runs")
        result = predictor.self_test(raise_on_failure=False)
        if not result.passed:
            raise SelfTestFailed(f"self-test failed on this device: {result.summary()}", result)
        return result.summary(), bundle.signed_by


def _switch(models_dir: Path, version: str) -> None:
    """Point `current` at `version`: a new symlink renamed over the old one (atomic on POSIX file systems)."""
    tmp = models_dir / f".{CURRENT}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        tmp.unlink()
    os.symlink(Path(VERSIONS) / version, tmp)
    _step("linked")
    os.replace(tmp, models_dir / CURRENT)
    _fsync_dir(models_dir)


def _same_bundle(source: Path, installed: Path) -> bool:
    """Whether `source` has the very manifest (so the same file checksums) and signature as an installed version."""

    def read(p: Path) -> bytes | None:
        try:
            return p.read_bytes() if p.is_file() and not p.is_symlink() else None
        except OSError:
            return None

    manifest = read(source / MANIFEST_NAME)
    return manifest is not None and manifest == read(installed / MANIFEST_NAME) and read(source / SIGNATURE_NAME) == read(installed / SIGNATURE_NAME)


def _prune(models_dir: Path, keep: int) -> tuple[str, ...]:
    """Remove the oldest versions beyond the newest `keep`, never the current one nor anything not a whole bundle."""
    current = current_version(models_dir)
    others = [v for v in versions(models_dir) if v != current]
    surplus = others[: max(0, len(others) - (keep - 1))]
    removed = []
    for v in surplus:
        path = models_dir / VERSIONS / v
        problem = contents_problem(path, BUNDLE)
        if problem is not None:
            _log(models_dir, "kept", version=v, reason=f"not removed: {problem}")
            continue
        doomed = path.with_name(f".{v}.old-{os.getpid()}")
        os.replace(path, doomed)  # out of sight at once; deleting it may take a while
        _step("pruning")
        remove_temporary(doomed)
        removed.append(v)
        _log(models_dir, "removed", version=v)
    return tuple(removed)


def deploy(
    bundle_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    *,
    keep: int = DEFAULT_KEEP,
    trusted_keys: Iterable[KeySource] | None = None,
    device: str | None = None,
    **backend_options: Any,
) -> DeployResult:
    """Install `bundle_dir` as the new current version of `models_dir` (see the module docstring). `trusted_keys`
    as for `runtimes.load` (by default EDGE_TRANSFER_TRUSTED_KEYS); `device` and `backend_options` (e.g.
    inference_precision) as the application will load it. Raises the typed error of the step that failed."""
    if keep < 1:
        raise InputError(f"--keep must be at least 1 (the current version), got {keep}")
    source, root = Path(bundle_dir), Path(models_dir)
    if source.resolve() == root.resolve() or source.resolve() in root.resolve().parents:
        raise InputError(f"--to {root}: inside the bundle being deployed; the models folder must be outside it")
    try:
        (root / VERSIONS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(root, exc, "models folder") from None
    with exclusive_file(root / LOG):
        previous = current_version(root)
        _clean_leftovers(root)
        if previous is not None and _same_bundle(source, root / VERSIONS / previous):
            _log(root, "unchanged", version=previous, source=str(source))  # a re-run (cron, rsync hook) keeps the history
            removed = _prune(root, keep)  # and completes the removals of a deploy interrupted after its switch
            return DeployResult(
                previous, root / VERSIONS / previous, previous, removed, "already current: the same manifest and signature", None, True
            )
        _step("start")
        staging = staging_directory(root / VERSIONS / "incoming")
        try:
            try:
                _copy_bundle(source, staging)
            except OSError as exc:
                raise cannot_write(staging, exc, "copy of the bundle") from None
            summary, signed_by = _self_test(staging, trusted_keys, device, backend_options)
            _step("self-tested")
            numbers = [int(v[1:]) for v in versions(root)]
            version = f"v{max(numbers, default=0) + 1:04d}"
            os.replace(staging, root / VERSIONS / version)
            _fsync_dir(root / VERSIONS)
            _step("renamed")
        except EdgeTransferError as exc:
            _log(root, "refused", source=str(source), reason=str(exc))
            raise
        finally:
            if staging.exists():
                remove_temporary(staging)
        try:
            _switch(root, version)
        except OSError as exc:
            raise OutputError(f"{root / CURRENT}: cannot switch to {version}: {exc.strerror or exc}; {CURRENT} is unchanged") from None
        _step("switched")
        _log(root, "deployed", version=version, previous=previous, source=str(source), self_test=summary, signed_by=signed_by)
        removed = _prune(root, keep)
        return DeployResult(version, root / VERSIONS / version, previous, removed, summary, signed_by)


def rollback(
    models_dir: str | os.PathLike[str],
    *,
    trusted_keys: Iterable[KeySource] | None = None,
    device: str | None = None,
    **backend_options: Any,
) -> DeployResult:
    """Point `current` at the newest version older than it that still verifies and passes its self-test here."""
    root = Path(models_dir)
    with exclusive_file(root / LOG):
        previous = current_version(root)
        if previous is None:
            raise BundleError(f"{root}: nothing deployed yet, so nothing to roll back")
        older = [v for v in versions(root) if int(v[1:]) < int(previous[1:])]
        reasons = []
        for version in reversed(older):
            try:
                summary, signed_by = _self_test(root / VERSIONS / version, trusted_keys, device, backend_options)
            except EdgeTransferError as exc:
                reasons.append(f"{version}: {exc}")
                _log(root, "skipped", version=version, reason=str(exc))
                continue
            _switch(root, version)
            _step("switched")
            _log(root, "rolled-back", version=version, previous=previous, self_test=summary)
            return DeployResult(version, root / VERSIONS / version, previous, (), summary, signed_by)
        why = "; ".join(reasons) if reasons else f"no version older than {previous} is kept"
        raise BundleError(f"{root}: cannot roll back from {previous}: {why}")
