"""Safe updates on the device: a bundle becomes the one an application runs only after it passed every check here
(docs/guides/delivery.md).

MODELS_DIR/
  current -> versions/v0003      a relative symlink, switched by one atomic rename
  versions/v0001 ... v0003       verified copies: the current one, the one current before it, and the newest others
                                 up to `keep`
  deploy.log                     one JSON line per deploy, refusal, rollback and removal (rotated at 1 MiB)
  .edge-transfer-models          the mark of a models folder deploy made, and the history of `current`

`deploy(bundle, models_dir)`: (1) copy into a hidden staging folder beside the versions, (2) verify checksums, and the
signature when keys are trusted, (3) run the self-test on this device in the precision it will run in, (4) rename
the copy to the next version, (5) point a new symlink at it and rename it over `current`. A failure at any step
leaves `current` as it was and logs why. A process killed at any instant leaves `current` at the old version or the
new one, both complete; the staging leftovers are removed by the next deploy, and only those: each carries a mark
file beside it, written before it exists and removed after it is gone. `rollback` points `current` back at the
version that was current before it (the history), when it still verifies and passes its self-test here.

A models folder is only ever one deploy made (its mark, or the layout and log of an older release) or an empty or
absent folder: anything else given as `--to` is refused, so a user's folder is never adopted and cleaned.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import BUNDLE, open_bundle, read_manifest
from ..errors import BundleError, EdgeTransferError, InputError, OutputError, SelfTestFailed
from ..fsutil import cannot_write, current_umask, exclusive_file
from ..manifest import MANIFEST_NAME
from ..outputs import Protected, contents_problem
from ..signature_format import SIGNATURE_NAME
from ..signing import KeySource, TrustedKey, trusted_keys
from .models_folder import (
    CURRENT,
    LOG,
    MARK,
    MODELS,
    VERSION_NAME,
    VERSIONS,
    clean_leftovers,
    current_path,
    current_version,
    fsync_dir,
    history_of,
    log_event,
    marked_folder,
    open_models_dir,
    remove_marked,
    save_state,
    versions,
)

DEFAULT_KEEP = 3
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
    notes: tuple[str, ...] = ()  # what the user must know: a signature not verified, a damaged current reinstalled


# ------------------------------------------------------------------------------------------------ steps


def _precheck_source(source: Path) -> None:
    """Before copying a byte: the source is a bundle, and holds only the files its manifest lists, at their sizes."""
    if source.is_symlink() or not source.is_dir():
        raise BundleError(f"{source}: not a bundle folder")
    manifest = read_manifest(source)
    sizes = {f.path: f.bytes for f in manifest.files}
    for dirpath, dirnames, filenames in os.walk(source):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            rel = p.relative_to(source).as_posix()
            if rel in (MANIFEST_NAME, SIGNATURE_NAME):
                continue
            if rel not in sizes:
                raise BundleError(f"{source}: file {rel!r} is in the bundle but not listed in the manifest; nothing was copied")
            if not p.is_symlink() and sizes[rel] is not None and p.stat().st_size != sizes[rel]:
                raise BundleError(f"{source}: file {rel!r} is {p.stat().st_size} bytes, the manifest says {sizes[rel]}; nothing was copied")


def _copy_bundle(source: Path, staging: Path) -> None:
    """Copy every file of `source`, contents only (a read-only copy received by scp stays removable here), each
    fsynced; symlinks are copied as links, which verification then refuses."""
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
        fsync_dir(staging / rel)
    _step("copied")


def _self_test(
    path: Path, keys: tuple[TrustedKey, ...], device: str | None, options: dict[str, Any], shown: Path | None = None
) -> tuple[str, str | None]:
    """Verify and self-test the bundle at `path` as the application will load it; raise on any failure, naming
    `shown` (the user's bundle) rather than the staging copy."""
    from ..backends import create_predictor

    try:
        bundle = open_bundle(path, trusted_keys=[k.pem for k in keys])
        _step("verified")
        with create_predictor(bundle, device=device, **options) as predictor:
            if predictor.manifest.self_test is None:
                raise SelfTestFailed(f"{path}: the bundle has no self-test data, so it cannot be checked on this device before it runs")
            result = predictor.self_test(raise_on_failure=False)
            if not result.passed:
                raise SelfTestFailed(f"self-test failed on this device: {result.summary()}", result)
            return result.summary(), bundle.signed_by
    except EdgeTransferError as exc:
        if shown is not None and exc.args and isinstance(exc.args[0], str):
            exc.args = (exc.args[0].replace(str(path), str(shown)), *exc.args[1:])
        raise


def _switch(models_dir: Path, version: str, history: list[str]) -> None:
    """Point `current` at `version`: a new symlink renamed over the old one (atomic on POSIX file systems); then
    record `history` (the versions that were current, oldest first, ending with `version`)."""
    tmp = models_dir / f".{CURRENT}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        tmp.unlink()
    os.symlink(Path(VERSIONS) / version, tmp)
    _step("linked")
    os.replace(tmp, models_dir / CURRENT)
    fsync_dir(models_dir)
    try:
        save_state(models_dir, history)
    except OutputError as exc:
        logger.warning("%s", exc)


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
    """Remove the oldest versions beyond `keep`, never the current one, never the one current before it (the way
    back), nor anything not a whole bundle."""
    current = current_version(models_dir)
    history = history_of(models_dir)
    before = [v for v in history if v != current]
    kept = {current, before[-1] if before else None}
    others = [v for v in versions(models_dir) if v not in kept]
    room = max(0, keep - len([v for v in kept if v in versions(models_dir)]))
    surplus = others[: max(0, len(others) - room)]
    removed = []
    for v in surplus:
        path = models_dir / VERSIONS / v
        problem = contents_problem(path, BUNDLE)
        if problem is not None:
            log_event(models_dir, "kept", version=v, reason=f"not removed: {problem}")
            continue
        doomed = marked_folder(models_dir / VERSIONS, f".{v}.old-{os.getpid()}")
        os.replace(path, doomed)  # out of sight at once; deleting it may take a while
        _step("pruning")
        remove_marked(doomed)
        removed.append(v)
        log_event(models_dir, "removed", version=v)
    return tuple(removed)


def _release(path: Path) -> str:
    """When the bundle was made (the manifest's `created`, signed with it): the order deploy holds versions to."""
    try:
        return read_manifest(path).created
    except BundleError:
        return ""


def _unverified_signature(source: Path, keys: tuple[TrustedKey, ...]) -> str | None:
    if keys or not (source / SIGNATURE_NAME).exists():
        return None
    return f"{SIGNATURE_NAME} is present but was not verified: no key is trusted here (--key PUB or EDGE_TRANSFER_TRUSTED_KEYS)"


def deploy(
    bundle_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    *,
    keep: int = DEFAULT_KEEP,
    trusted_keys: Iterable[KeySource] | None = None,
    device: str | None = None,
    allow_downgrade: bool = False,
    **backend_options: Any,
) -> DeployResult:
    """Install `bundle_dir` as the new current version of `models_dir` (see the module docstring). `trusted_keys`
    as for `runtimes.load` (by default EDGE_TRANSFER_TRUSTED_KEYS); `device` and `backend_options` (e.g.
    inference_precision) as the application will load it. A bundle made before the current one is refused unless
    `allow_downgrade` (`rollback` is the way back). Raises the typed error of the step that failed."""
    if keep < 1:
        raise InputError(f"--keep must be at least 1 (the current version), got {keep}")
    source, root = Path(bundle_dir), Path(models_dir)
    if source.resolve() == root.resolve() or source.resolve() in root.resolve().parents:
        raise InputError(f"--to {root}: inside the bundle being deployed; the models folder must be outside it")
    keys = _trusted(trusted_keys)
    root = open_models_dir(root, create=True, protected=[Protected("the bundle", source)])
    notes = tuple(n for n in [_unverified_signature(source, keys)] if n)
    with exclusive_file(root / LOG):
        try:
            _precheck_source(source)
        except EdgeTransferError as exc:
            log_event(root, "refused", source=str(source), reason=str(exc))
            raise
        previous = current_version(root)
        clean_leftovers(root)
        history = history_of(root)
        if previous is not None and _same_bundle(source, root / VERSIONS / previous):
            try:
                signed_by = _verify_installed(root / VERSIONS / previous, keys)
            except EdgeTransferError as exc:  # damaged since, or not acceptable under today's keys: installed afresh
                log_event(root, "reinstalling", version=previous, reason=f"the current version no longer passes: {exc}")
                notes += (f"{previous} no longer passed its checks ({exc}); installing the bundle again",)
            else:
                log_event(root, "unchanged", version=previous, source=str(source), notes=list(notes))  # a re-run keeps the history
                removed = _prune(root, keep)  # and completes the removals of a deploy interrupted after its switch
                summary = "already current: the same manifest and signature"
                return DeployResult(previous, root / VERSIONS / previous, previous, removed, summary, signed_by, True, notes)
        if previous is not None and not allow_downgrade and _release(source) < _release(root / VERSIONS / previous):
            reason = (
                f"{source} was made {_release(source)}, before the current {previous} ({_release(root / VERSIONS / previous)}): "
                "a downgrade; pass --allow-downgrade to install it anyway, or use rollback to return to a kept version"
            )
            log_event(root, "refused", source=str(source), reason=reason)
            raise BundleError(reason)
        _step("start")
        staging = marked_folder(root / VERSIONS, f".incoming.partial-{secrets.token_hex(4)}")
        try:
            try:
                os.mkdir(staging, 0o777 & ~current_umask())
                _copy_bundle(source, staging)
            except OSError as exc:
                raise cannot_write(root / VERSIONS, exc, "copy of the bundle") from None
            summary, signed_by = _self_test(staging, keys, device, backend_options, shown=source)
            _step("self-tested")
            taken = [int(p.name[1:]) for p in (root / VERSIONS).iterdir() if VERSION_NAME.match(p.name)]  # files and links too
            version = f"v{max(taken, default=0) + 1:04d}"
            os.replace(staging, root / VERSIONS / version)
            fsync_dir(root / VERSIONS)
            _step("renamed")
        except EdgeTransferError as exc:
            log_event(root, "refused", source=str(source), reason=str(exc))
            raise
        finally:
            if staging.exists() or os.path.lexists(staging.with_name(staging.name + MARK)):
                remove_marked(staging)
        staging.with_name(staging.name + MARK).unlink(missing_ok=True)
        try:
            _switch(root, version, [*history, version] if history[-1:] == [previous] or previous is None else [*history, previous, version])
        except OSError as exc:
            raise OutputError(f"{root / CURRENT}: cannot switch to {version}: {exc.strerror or exc}; {CURRENT} is unchanged") from None
        _step("switched")
        log_event(root, "deployed", version=version, previous=previous, source=str(source), self_test=summary, signed_by=signed_by, notes=list(notes))
        removed = _prune(root, keep)
        return DeployResult(version, root / VERSIONS / version, previous, removed, summary, signed_by, notes=notes)


def _trusted(keys: Iterable[KeySource] | None) -> tuple[TrustedKey, ...]:
    return trusted_keys(keys)


def _verify_installed(path: Path, keys: tuple[TrustedKey, ...]) -> str | None:
    """Verify an installed version under today's keys (checksums, nothing unlisted, the signature); the signing key."""
    return open_bundle(path, trusted_keys=[k.pem for k in keys]).signed_by


def rollback(
    models_dir: str | os.PathLike[str],
    *,
    trusted_keys: Iterable[KeySource] | None = None,
    device: str | None = None,
    **backend_options: Any,
) -> DeployResult:
    """Point `current` back at the version that was current before it (the history `deploy` keeps; the newest
    older version for a folder without one), the first that still verifies and passes its self-test here."""
    keys = _trusted(trusted_keys)
    root = open_models_dir(models_dir, create=False)
    with exclusive_file(root / LOG):
        previous = current_version(root)
        if previous is None:
            raise BundleError(f"{root}: nothing deployed yet, so nothing to roll back")
        history = history_of(root)
        while history and history[-1] == previous:
            history.pop()
        kept = set(versions(root))
        candidates = [v for v in reversed(history) if v in kept and v != previous]
        candidates += [v for v in reversed(versions(root)) if int(v[1:]) < int(previous[1:]) and v not in candidates]
        candidates = list(dict.fromkeys(candidates))
        reasons = []
        for version in candidates:
            try:
                summary, signed_by = _self_test(root / VERSIONS / version, keys, device, backend_options)
            except EdgeTransferError as exc:
                reasons.append(f"{version}: {exc}")
                log_event(root, "skipped", version=version, reason=str(exc))
                continue
            back = history[: len(history) - history[::-1].index(version)] if version in history else [*history, version]
            _switch(root, version, back)
            _step("switched")
            log_event(root, "rolled-back", version=version, previous=previous, self_test=summary)
            return DeployResult(version, root / VERSIONS / version, previous, (), summary, signed_by)
        why = "; ".join(reasons) if reasons else f"no version older than {previous} is kept"
        raise BundleError(f"{root}: cannot roll back from {previous}: {why}")


__all__ = [
    "CRASH_ENV",
    "CURRENT",
    "DEFAULT_KEEP",
    "MODELS",
    "VERSIONS",
    "DeployResult",
    "current_path",
    "current_version",
    "deploy",
    "rollback",
    "versions",
]
