"""Labelled text for natural-language understanding: class folders of `.txt` files, or a CSV, TSV or JSONL
table with a text column and a label column, read as untrusted input. Torch-free: `train` reads it on the host and
`val` on the device.

The same contract as image datasets (`edge_transfer.data`): class names sorted, integer targets, a fingerprint of the
content, the seeded stratified splits of `stratified_split`, and `skip_bad` that leaves unusable items out (text
that is not UTF-8, empty text, a row without its columns) with a warning instead of stopping at the first, which
is named. Labels go through the one check of `runtimes.labels`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError
from .labels import check_labels
from .tokenize import MAX_TEXT_BYTES, split_lines

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt",)
TABLE_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}
DEFAULT_TEXT_COLUMN, DEFAULT_LABEL_COLUMN = "text", "label"


@dataclass
class TextDataset:
    """Texts with integer targets and class names, in a fixed order; `sources[i]` says where text i came from
    (a file, or a table's file and line)."""

    name: str
    classes: list[str]
    texts: list[str]
    targets: np.ndarray
    sources: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def describe_item(self, i: int) -> str:
        return self.sources[i]

    def fingerprint(self) -> str:
        """Hash of the class names, targets and texts: the same content gives the same fingerprint wherever it lies."""
        h = hashlib.sha256()
        h.update(repr(self.classes).encode())
        h.update(np.asarray(self.targets, np.int64).tobytes())
        for text in self.texts:
            h.update(hashlib.sha256(text.encode()).digest())
        return h.hexdigest()

    def subset(self, keep: Sequence[int]) -> TextDataset:
        keep = [int(i) for i in keep]
        return TextDataset(
            self.name, self.classes, [self.texts[i] for i in keep], self.targets[keep], [self.sources[i] for i in keep], dict(self.info)
        )


@dataclass
class _Skipped:
    """Items left out under `skip_bad`: counted, the first named in the warning."""

    reasons: list[str] = field(default_factory=list)

    def refuse_or_skip(self, where: str, problem: str, skip_bad: bool) -> None:
        if not skip_bad:
            raise DatasetError(f"{where}: {problem}; fix or remove it (--skip-bad leaves unusable texts out)")
        self.reasons.append(f"{where}: {problem}")


def _clean(text: str, where: str, skipped: _Skipped, skip_bad: bool) -> str | None:
    """`text` with surrounding whitespace removed, or None (skipped) when nothing is left."""
    text = text.strip()
    if not text:
        skipped.refuse_or_skip(where, "empty text", skip_bad)
        return None
    return text


def _read_text_file(path: Path, skipped: _Skipped, skip_bad: bool) -> str | None:
    try:
        size = path.stat().st_size
        raw = path.read_bytes() if size <= MAX_TEXT_BYTES else b""
    except OSError as exc:
        reason = exc.strerror or str(exc)
        skipped.refuse_or_skip(str(path), f"cannot be read ({reason})", skip_bad)
        return None
    if size > MAX_TEXT_BYTES:
        skipped.refuse_or_skip(str(path), f"{size} bytes of text (at most {MAX_TEXT_BYTES})", skip_bad)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); save it as UTF-8"
    else:
        return _clean(text, str(path), skipped, skip_bad)
    skipped.refuse_or_skip(str(path), problem, skip_bad)
    return None


def load_text_folder(root: str | os.PathLike[str], *, skip_bad: bool = False) -> TextDataset:
    """One sub-folder per class, each holding `.txt` files (one text per file; sub-folders of a class read too)."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise DatasetError(f"{root_p}: no such text folder")
    links = sorted(str(p) for p in root_p.iterdir() if p.is_symlink() and p.is_dir())
    class_dirs = sorted(p for p in root_p.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DatasetError(f"{root_p}: needs at least 2 class sub-folders (one per class), found {len(class_dirs)}")
    check_labels([d.name for d in class_dirs], where="class folder")
    texts: list[str] = []
    targets: list[int] = []
    sources: list[str] = []
    skipped = _Skipped()
    for ci, cdir in enumerate(class_dirs):
        found = [p for p in cdir.rglob("*") if p.suffix.lower() in TEXT_EXTENSIONS or p.is_symlink()]
        links += sorted(str(p) for p in found if p.is_symlink())
        files = sorted(p for p in found if p.is_file() and not p.is_symlink() and p.suffix.lower() in TEXT_EXTENSIONS)
        kept = 0
        for p in files:
            text = _read_text_file(p, skipped, skip_bad)
            if text is not None:
                texts.append(text)
                targets.append(ci)
                sources.append(str(p))
                kept += 1
        if not kept:
            raise DatasetError(f"{cdir}: class folder '{cdir.name}' has no usable .txt files")
    _warn(skipped, root_p)
    if links:  # counted and said, as for images: a data folder is read without following links
        log.warning("left out %d symlink(s) in %s (links are not followed), first: %s", len(links), root_p, links[0])
    info = {"kind": "text-folder", "root": str(root_p.resolve()), "skipped_bad": len(skipped.reasons), "symlinks_left_out": len(links)}
    return TextDataset(root_p.name, [d.name for d in class_dirs], texts, np.asarray(targets, np.int64), sources, info)


@dataclass(frozen=True)
class BadRow:
    """A table row that cannot be read as a text and a label, and why."""

    reason: str


def _column(row: dict[str, Any] | list[str], column: str | int, where: str) -> Any:
    if isinstance(row, dict):
        if column not in row:
            raise KeyError(f"no column {column!r} (it has {', '.join(map(str, list(row)[:8]))})")
        return row[column]
    index = int(column)
    if index >= len(row):
        raise KeyError(f"no column {index} (the row has {len(row)})")
    return row[index]


def _rows(
    path: Path, delimiter: str | None, text_column: str | int, label_column: str | int
) -> Iterator[tuple[int, dict[str, Any] | list[str] | BadRow]]:
    """(line number, row) of a table. CSV/TSV: a header row names the columns, unless both columns are given as
    positions (0-based numbers), when every row is data. JSONL: one object per line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{at}: not UTF-8 text; save the file as UTF-8") from None
    if delimiter is None:
        for n, text in enumerate(split_lines(content), 1):  # \n only: U+2028 and NEL are valid inside JSON strings
            if text.strip():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
                yield n, row if isinstance(row, dict) else BadRow(f"a JSON {type(row).__name__}, not an object of named fields")
        return
    positions = isinstance(text_column, int) and isinstance(label_column, int)
    # TSV has no quoting: a cell that starts with " is text, never the start of a field spanning lines
    text_io = io.StringIO(content, newline="")
    reader = csv.reader(text_io, delimiter=delimiter, quoting=csv.QUOTE_NONE) if delimiter == "\t" else csv.reader(text_io, delimiter=delimiter)
    header: list[str] | None = None
    for row in reader:
        n = reader.line_num
        if not positions and header is None:
            header = row
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DatasetError(f"{path}:{n}: the header names {', '.join(repr(h) for h in repeated)} more than once; name each column once")
            missing = [c for c in (text_column, label_column) if c not in header]
            if missing:
                other, kind = ("\t", "tab-separated: name it .tsv") if delimiter == "," else (",", "comma-separated: name it .csv")
                hint = f"; it looks {kind}" if any(other in h for h in header) else ""
                shown = ", ".join(repr(h[:40]) for h in header[:8])
                raise DatasetError(
                    f"{path}:{n}: no column {', '.join(repr(c) for c in missing)} in the header row ({shown}){hint}; name the "
                    "columns with --text-column and --label-column, or give 0-based positions for a file without a header"
                )
            continue
        if not any(cell.strip() for cell in row):
            continue
        if header is not None and len(row) != len(header):
            yield (
                n,
                BadRow(f"{len(row)} fields where the header has {len(header)}" + ("; a quoted field spans lines" if "\n" in "".join(row) else "")),
            )
            continue
        yield n, row if header is None else dict(zip(header, row))


def load_text_table(
    path: str | os.PathLike[str],
    *,
    text_column: str | int = DEFAULT_TEXT_COLUMN,
    label_column: str | int = DEFAULT_LABEL_COLUMN,
    skip_bad: bool = False,
) -> TextDataset:
    """A CSV, TSV or JSONL file of labelled texts (`text_column`, `label_column`: names, or 0-based positions for a
    CSV/TSV without a header row)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise DatasetError(f"{p}: a text table is .csv, .tsv or .jsonl, not {suffix or 'a file without extension'}")
    skipped = _Skipped()
    rows: list[tuple[str, str, str]] = []
    for n, row in _rows(p, TABLE_EXTENSIONS[suffix], text_column, label_column):
        where = f"{p}:{n}"
        if isinstance(row, BadRow):
            skipped.refuse_or_skip(where, row.reason, skip_bad)
            continue
        try:
            text, label = _column(row, text_column, where), _column(row, label_column, where)
        except KeyError as exc:
            skipped.refuse_or_skip(where, str(exc.args[0]), skip_bad)
            continue
        if not isinstance(text, str) or not isinstance(label, (str, int)) or isinstance(label, bool):
            skipped.refuse_or_skip(
                where, f"text must be a string and label a string or whole number, got {type(text).__name__} and {type(label).__name__}", skip_bad
            )
            continue
        cleaned = _clean(text, where, skipped, skip_bad)
        if cleaned is not None and str(label).strip():
            rows.append((cleaned, str(label).strip(), where))
        elif cleaned is not None:
            skipped.refuse_or_skip(where, "empty label", skip_bad)
    classes = sorted({label for _, label, _ in rows})
    if len(classes) < 2:
        raise DatasetError(f"{p}: needs at least 2 labels in column {label_column!r}, found {len(classes)}")
    check_labels(classes, where="label")
    index = {c: i for i, c in enumerate(classes)}
    _warn(skipped, p)
    info = {
        "kind": "text-table",
        "path": str(p.resolve()),
        "text_column": text_column,
        "label_column": label_column,
        "skipped_bad": len(skipped.reasons),
    }
    return TextDataset(p.stem, classes, [t for t, _, _ in rows], np.asarray([index[c] for _, c, _ in rows], np.int64), [w for _, _, w in rows], info)


def _warn(skipped: _Skipped, where: Path) -> None:
    if skipped.reasons:
        shown = "; ".join(skipped.reasons[:10]) + (f"; and {len(skipped.reasons) - 10} more" if len(skipped.reasons) > 10 else "")
        log.warning("skipped %d unusable text(s) in %s: %s", len(skipped.reasons), where, shown)


def is_text_source(source: str | os.PathLike[str]) -> bool:
    """Whether `--data` holds text: a table file (.csv/.tsv/.jsonl), or a folder whose class folders hold `.txt`
    files and no images."""
    from runtimes.preprocess import IMAGE_EXTENSIONS

    p = Path(source)
    if p.is_file():
        return p.suffix.lower() in TABLE_EXTENSIONS
    if not p.is_dir():
        return False
    suffixes = {f.suffix.lower() for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") for f in d.rglob("*") if f.is_file()}
    return bool(suffixes & set(TEXT_EXTENSIONS)) and not suffixes & set(IMAGE_EXTENSIONS)


def load_text_dataset(
    source: str | os.PathLike[str],
    *,
    text_column: str | int = DEFAULT_TEXT_COLUMN,
    label_column: str | int = DEFAULT_LABEL_COLUMN,
    skip_bad: bool = False,
) -> TextDataset:
    """A text folder or a text table, by what `source` is; a column given as digits ("1", as the CLI passes it) is a
    0-based position."""
    text_column, label_column = (int(c) if isinstance(c, str) and c.isdigit() else c for c in (text_column, label_column))
    if Path(source).is_dir():
        return load_text_folder(source, skip_bad=skip_bad)
    return load_text_table(source, text_column=text_column, label_column=label_column, skip_bad=skip_bad)
