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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Up to `MAX_SHOWN` names, sorted, and how many more."""
    names = sorted(names)
    return ", ".join(names[:MAX_SHOWN]) + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")


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


def _may_hold(protected: Iterable[Protected]) -> list[str | os.PathLike[str]]:
    return [p.path for p in protected if p.may_hold_output and p.path is not None]


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


def _check_way(path: Path, flag: str, *, made: str, make_parents: bool = True) -> None:
    """Refuse a new `path` whose nearest existing ancestor is a file, or (without `make_parents`) whose folder is
    missing; `made`: what would be made there ("no directory can be made", "nothing can be written")."""
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputError(f"{flag} {path}: {parent} is a file, so {made} under it")
            return
        if not make_parents:
            raise OutputError(f"{flag} {path}: the folder {parent} does not exist; create it first")


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
    check_flag_value(target, flag=flag)
    target = Path(target)
    protected = list(protected)
    check_clear_of(target, protected, flag=flag)
    check_not_inside_owned(target, flag=flag, allowed=_may_hold(protected))
    if not os.path.lexists(target):
        _check_way(target, flag, made="no directory can be made")
        return target
    problem = contents_problem(target, kind)
    if problem is not None:
        raise OutputError(f"{flag} {target} {problem}: not {a(kind.what)} edge-transfer wrote, so it is never replaced; choose another {flag}")
    if not overwrite:
        raise OutputError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    return target


def check_parent_dir(
    root: str | os.PathLike[str], *, protected: Iterable[Protected] = (), flag: str = "--out", holds: Sequence[OutputKind] | None = None
) -> Path:
    """The folder that will hold several outputs (one bundle per format; a run and a bundle): absent, empty, or a
    directory whose entries are all outputs of ours of the kinds in `holds`, clear of `protected`."""
    check_flag_value(root, flag=flag)
    root = Path(root)
    protected = list(protected)
    check_clear_of(root, protected, flag=flag)
    check_not_inside_owned(root, flag=flag, allowed=_may_hold(protected))
    if os.path.lexists(root) and (root.is_symlink() or not root.is_dir()):
        raise OutputError(f"{flag} {root} is a file; it must be a directory (one output per name inside)")
    if holds is not None and root.is_dir():
        foreign = []
        for entry in root.iterdir():
            if entry.name.startswith(".") and ".partial-" in entry.name:  # an interrupted write's staging
                continue
            if entry.is_symlink() or not entry.is_dir() or all(contents_problem(entry, kind) is not None for kind in holds):
                foreign.append(entry.name)
        if foreign:
            raise OutputError(
                f"{flag} {root} holds {listing(foreign)}, which edge-transfer did not write there, so it does not write beside them; "
                "choose an empty or new folder"
            )
    return root


# ------------------------------------------------------------------------------------------------ files and rules

STDOUT = "-"
OWNED_MARKERS = (".edge-transfer-models",)  # a folder holding one of these is ours as a whole (a models folder)


@dataclass(frozen=True)
class FileKind:
    """A kind of file edge-transfer writes (a bench report, a plot, a gallery). `problem(path)` is None when the
    existing file at `path` is one of ours that may be replaced, else a short reason shown to the user."""

    what: str
    problem: Callable[[Path], str | None]


def never_replaced(path: Path) -> str | None:
    """A `FileKind.problem` for files that are never replaced (keys)."""
    return "it already exists and is never replaced"


def _json_doc(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, read within the manifest limits, or None."""
    from .safejson import MAX_JSON_BYTES, loads_limited

    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        doc = loads_limited(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _owner_of(folder: Path) -> str | None:
    """What `folder` is when edge-transfer owns it whole (a models folder, a bundle, a run, a checkpoint), or None.
    Told by the documents inside, without importing their modules: a bundle's manifest.json by its shape, a run's
    config.json and a checkpoint's state.json by their `format`."""
    if any(os.path.lexists(folder / m) for m in OWNED_MARKERS):
        return "the models folder"
    manifest = _json_doc(folder / "manifest.json") if os.path.lexists(folder / "manifest.json") else None
    if manifest is not None and {"schema_version", "model", "inputs"} <= set(manifest):
        return "the bundle"
    for name, fmt, what in (("config.json", "edge-transfer-run", "the run"), ("state.json", "edge-transfer-checkpoint", "the checkpoint")):
        if os.path.lexists(folder / name) and (_json_doc(folder / name) or {}).get("format") == fmt:
            return what
    return None


def _owning_folder(real: Path, allowed: Iterable[str | os.PathLike[str]] = ()) -> str | None:
    """What `real` (resolved) lies inside that edge-transfer owns whole, or None; `allowed` owners (qat's source
    run, which holds RUN/qat) are passed over."""
    passed = {_real(a) for a in allowed}
    for parent in real.parents:
        what = _owner_of(parent)
        if what is not None and parent not in passed:
            return f"{what} {parent}"
    return None


DATA_LOOK = 64  # entries looked at per folder when telling a labelled data folder (it stays cheap on a big one)


def _holds_data_files(folder: Path) -> bool:
    from .preprocess import IMAGE_EXTENSIONS
    from .text_data import TEXT_EXTENSIONS

    try:
        with os.scandir(folder) as it:
            for n, entry in enumerate(it):
                if n >= DATA_LOOK:
                    break
                if entry.is_file(follow_symlinks=False) and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS + TEXT_EXTENSIONS:
                    return True
    except OSError:
        return False
    return False


def _labelled_data_folder(real: Path) -> Path | None:
    """The nearest of `real`'s three closest existing folders that is laid out as labelled data, or None: two or
    more sub-folders, every one holding images or texts, and nothing else but hidden files (train/val's --data)."""
    for parent in [p for p in real.parents if p.is_dir()][:3]:
        classes = 0
        try:
            with os.scandir(parent) as it:
                for n, entry in enumerate(it):
                    if n >= DATA_LOOK or entry.name.startswith("."):
                        continue
                    if not entry.is_dir(follow_symlinks=False) or not _holds_data_files(Path(entry.path)):
                        classes = -1
                        break
                    classes += 1
        except OSError:
            continue
        if classes >= 2:
            return parent
    return None


def check_not_inside_owned(target: str | os.PathLike[str], *, flag: str, allowed: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Refuse a path inside a bundle or a models folder (their files are listed, hashed and signed, so anything
    written there breaks them, or is deleted by the next deploy), a run or a checkpoint, or inside a labelled data folder (class folders of
    images or texts), whether or not the command was given it."""
    real = _real(target)
    owner = _owning_folder(real, allowed)
    if owner is not None:
        raise OutputError(f"{flag} {target} lies inside {owner}: edge-transfer never writes there; choose a path outside it")
    data = _labelled_data_folder(real)
    if data is not None:
        raise OutputError(
            f"{flag} {target} lies inside {data}, a labelled data folder (class folders of images or texts): edge-transfer never writes "
            "into data; choose a path outside it"
        )


def check_flag_value(target: str | os.PathLike[str], *, flag: str, stream: bool = False) -> bool:
    """The value itself: `-` is standard output where `stream` allows it (returns True), refused elsewhere; an empty
    value is refused."""
    text = os.fspath(target)
    if text == STDOUT:
        if stream:
            return True
        raise OutputError(f"{flag} -: '-' (standard output) is not accepted here; give a path")
    if not text.strip():
        raise OutputError(f"{flag}: an empty path; give a path")
    return False


def check_output_file(
    target: str | os.PathLike[str],
    kind: FileKind,
    *,
    protected: Iterable[Protected] = (),
    flag: str = "--out",
    stream: bool = False,
    make_parents: bool = False,
) -> Path | None:
    """The one check for a file a command writes, made before any work and again just before writing. Returns the
    path, or None for standard output (`-`, where `stream`). Refused: an empty path; `-` where no stream makes sense;
    a path that is, or lies inside, a protected input; a path inside a bundle, a models folder, a run or a
    checkpoint; a folder; a
    symlink; an existing file that is not `kind` of ours; a missing folder on the way (unless `make_parents`)."""
    if check_flag_value(target, flag=flag, stream=stream):
        return None
    path = Path(target)
    check_clear_of(path, protected, flag=flag)
    check_not_inside_owned(path, flag=flag)
    if path.is_symlink():  # the real file is what gets written (a gallery kept behind a link): judged the same way
        real = _real(path)
        if real.is_dir() or not real.parent.is_dir():
            raise OutputError(f"{flag} {path} is a symlink (to {os.readlink(path)}) that does not lead to a file; give the real path")
        path = real
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name ({a(kind.what)})")
    if path.exists():
        if not path.is_file():
            raise OutputError(f"{flag} {path} is not a regular file (a device, FIFO or socket); give a file name")
        problem = kind.problem(path)
        if problem is not None:
            raise OutputError(f"{flag} {path}: not {a(kind.what)} edge-transfer wrote ({problem}), so it is never replaced; choose another name")
        return path
    _check_way(path, flag, made="nothing can be written", make_parents=make_parents)
    return path


@dataclass(frozen=True)
class OutputRule:
    """How a command's writing flag is checked, before any work (`check_output`); the CLI attaches one to every flag
    that writes (runtimes.cli.writes), and a test drives each at the user's files.

    shape: "file" (a report, plot, gallery or key: `check_output_file`), "dir" (a run or bundle folder:
    `check_output_dir`), "outputs" (one output of `holds`, or a folder of them: a bundle, or one per format),
    "cache" (a folder that only gains entries: absent, empty, or `kind` of ours), "models" (a models folder:
    absent, empty or `kind`; with `must_exist`, it must already be one), "bundle" (an existing bundle of ours that
    the command adds a file to: `sign`)."""

    shape: str
    kind: FileKind | OutputKind | None = None
    holds: tuple[OutputKind, ...] = ()
    stream: bool = False  # "-" is standard output
    make_parents: bool = False  # missing folders on the way are created
    may_lie_inside: tuple[str, ...] = ()  # the inputs (argparse dests) the output may lie inside (qat's RUN/qat)
    must_exist: bool = False


def _existing_kind(path: Path, kind: OutputKind, flag: str, *, must_exist: bool) -> None:
    if not os.path.lexists(path):
        if must_exist:
            raise OutputError(f"{flag} {path}: no such folder; give {a(kind.what)} edge-transfer made")
        _check_way(path, flag, made="no folder can be made")
        return
    if path.is_symlink() and not must_exist:
        raise OutputError(f"{flag} {path} is a symlink (to {os.readlink(path)}); give the real folder")
    problem = contents_problem(path, kind) if not path.is_symlink() else f"is a symlink (to {os.readlink(path)})"
    if must_exist and problem is None and not any(path.iterdir()):
        problem = "is empty"
    if problem is not None:
        raise OutputError(f"{flag} {path} {problem}: not {a(kind.what)} edge-transfer made, so it is not written to; choose another {flag}")


def check_output(
    target: str | os.PathLike[str], rule: OutputRule, *, protected: Iterable[Protected] = (), overwrite: bool = False, flag: str = "--out"
) -> Path | None:
    """The one output check for every path a command writes (see `OutputRule`): the same rules for every flag,
    refused with an `OutputError` naming the flag, the path and what is there. None: standard output."""
    protected = list(protected)
    if rule.shape == "file":
        assert isinstance(rule.kind, FileKind)
        return check_output_file(target, rule.kind, protected=protected, flag=flag, stream=rule.stream, make_parents=rule.make_parents)
    if rule.shape == "dir":
        assert isinstance(rule.kind, OutputKind)
        return check_output_dir(target, rule.kind, overwrite=overwrite, protected=protected, flag=flag)
    check_flag_value(target, flag=flag)
    path = Path(target)
    if rule.shape != "bundle":
        check_clear_of(path, protected, flag=flag)
        check_not_inside_owned(path, flag=flag, allowed=_may_hold(protected))
    if rule.shape == "outputs":
        whole = [k for k in rule.holds if os.path.isdir(path) and not path.is_symlink() and any(path.iterdir()) and contents_problem(path, k) is None]
        if whole:  # the output itself (a bundle of ours), replaced as a whole
            return check_output_dir(path, whole[0], overwrite=True, protected=protected, flag=flag)
        try:
            return check_parent_dir(path, protected=protected, flag=flag, holds=rule.holds)
        except OutputError:
            problem = contents_problem(path, rule.holds[0]) if os.path.isdir(path) else None
            if problem is None:
                raise
            raise OutputError(
                f"{flag} {path} {problem}: not {a(rule.holds[0].what)} edge-transfer wrote, nor a folder of them, so it is never replaced; "
                f"choose another {flag}"
            ) from None
    if rule.shape == "bundle":
        assert isinstance(rule.kind, OutputKind)
        _existing_kind(path, rule.kind, flag, must_exist=True)
        return path
    assert isinstance(rule.kind, OutputKind)
    _existing_kind(path, rule.kind, flag, must_exist=rule.must_exist)
    return path


CACHE_ENTRIES = ("features", "text-features", "engines", "ort-tensorrt", "CACHEDIR.TAG")


def _cache_problem(path: Path) -> str | None:
    foreign = [p.name for p in path.iterdir() if p.name not in CACHE_ENTRIES and not p.name.startswith(".")]
    return f"{listing(foreign)} {'is' if len(foreign) == 1 else 'are'} not edge-transfer cache entries" if foreign else None


CACHE = OutputKind("edge-transfer cache folder", _cache_problem)  # features/, text-features/, engines/, ort-tensorrt/
