"""Where a command may write a directory (README: Reliability): the one check every writer of runs and bundles
makes before any work starts, and again just before it replaces anything.

- `--overwrite` replaces only what is recognisably ours and whole: an `OutputKind` says what that is (a bundle
  whose manifest parses and lists every file in it, a training run with its config and weights), or an empty
  directory. Anything else there, a plain file included, is refused with one line naming what is there.
- A destination that is, holds or lies inside a protected path (`--data`, `--calibration-data`, the source run)
  is refused with or without `--overwrite`: paths are compared resolved, so `..`, relative paths and symlinks
  cannot hide it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError

MAX_SHOWN = 4


@dataclass(frozen=True)
class OutputKind:
    """A kind of directory edge-transfer writes. `problem(path)` is None for a whole one of ours, else a short
    description of why `path` is not one (shown to the user)."""

    what: str
    problem: Callable[[Path], str | None]


def a(what: str) -> str:
    """`what` with its indefinite article ("a bundle", "an engine cache entry")."""
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


@dataclass(frozen=True)
class Protected:
    """A path the output must keep clear of: `name` is how the user gave it ("--data", "the source run").
    `may_hold_output`: the output may lie inside it (a quantisation-aware run's default place, RUN/qat)."""

    name: str
    path: str | os.PathLike[str] | None
    may_hold_output: bool = False


def listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:MAX_SHOWN]) + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")
    return shown


def contents_problem(path: Path, kind: OutputKind) -> str | None:
    """None when `path` may be replaced as `kind` (one of ours, or an empty directory), else what is there, as a
    clause: "is a file, not a directory", "holds app.js, manifest.json (no edge-transfer manifest)"."""
    if path.is_symlink():
        return f"is a symlink (to {os.readlink(path)})"
    if not path.is_dir():
        return "is a file, not a directory"
    try:
        entries = [p.name for p in path.iterdir()]
    except OSError as exc:
        return f"is a directory that cannot be listed ({exc.strerror or exc})"
    if not entries:
        return None
    reason = kind.problem(path)
    return None if reason is None else f"holds {listing(entries)} ({reason})"


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def check_clear_of(target: str | os.PathLike[str], protected: Iterable[Protected], *, flag: str = "--out") -> None:
    """Refuse a `target` that is, holds or lies inside one of `protected` (existing paths, compared resolved)."""
    real = _real(target)
    for p in protected:
        if p.path is None or not os.path.exists(p.path):
            continue  # "digits", or a source that is not on disk
        other = _real(p.path)
        if real == other:
            relation = "is"
        elif other in real.parents:
            if p.may_hold_output:
                continue
            relation = "lies inside"
        elif real in other.parents:
            relation = "holds"
        else:
            continue
        raise OutputError(f"{flag} {target} {relation} {p.name} ({p.path}): edge-transfer never writes there; choose a directory outside it")


def check_output_dir(
    target: str | os.PathLike[str],
    kind: OutputKind,
    *,
    overwrite: bool,
    protected: Iterable[Protected] = (),
    flag: str = "--out",
) -> Path:
    """Refuse, before any work, a destination `target` for a `kind` directory that may not be written: one that
    exists without `overwrite`, one that is not ours to replace, one under a file, or one near a protected path."""
    target = Path(target)
    check_clear_of(target, protected, flag=flag)
    if not os.path.lexists(target):
        for parent in target.parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise OutputError(f"{flag} {target}: {parent} is a file, so no directory can be made under it")
                break
        return target
    problem = contents_problem(target, kind)
    if problem is not None:
        raise OutputError(f"{flag} {target} {problem}: not {a(kind.what)} edge-transfer wrote, so it is never replaced; choose another {flag}")
    if not overwrite:
        raise OutputError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    return target


def check_parent_dir(root: str | os.PathLike[str], *, protected: Iterable[Protected] = (), flag: str = "--out") -> Path:
    """The folder that will hold several outputs (one bundle per format): absent or a directory, clear of `protected`."""
    root = Path(root)
    check_clear_of(root, protected, flag=flag)
    if os.path.lexists(root) and not root.is_dir():
        raise OutputError(f"{flag} {root} is a file; with several formats it must be a directory (one bundle per format inside)")
    return root
