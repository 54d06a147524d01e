"""Class labels as users give them (folder names, `--label`): the one check wherever a label enters, and the one
way labels are shown.

A label may not hold control characters (a newline forges a row of `--list`, an ANSI escape colours the terminal),
may not read as the `unknown` answer, and may not be told from another label only by spaces or by Unicode width
(`'3 '` and the full-width `'３'` beside `'3'`). Labels that came from elsewhere (an older bundle) are still escaped
when printed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from .errors import InputError

UNKNOWN = "unknown"


def label_key(label: str) -> str:
    """What two labels must not share: the label after NFKC normalisation and trimming."""
    return unicodedata.normalize("NFKC", label).strip()


def check_label(label: object, others: Iterable[str] = (), *, where: str = "label") -> str:
    """`label` if it may be used beside `others` (the labels already there; the same label again is fine), else an
    `InputError` naming `where` it came from."""
    if not isinstance(label, str) or not label_key(label):
        raise InputError(f"{where} must be a non-empty name, got {label!r}")
    bad = sorted({c for c in label if unicodedata.category(c).startswith("C")})
    if bad:
        raise InputError(f"{where} {label!r} holds control characters ({', '.join(repr(c) for c in bad)}); rename it")
    key = label_key(label)
    if key.casefold() == UNKNOWN:
        raise InputError(f"{where} {label!r} reads as the {UNKNOWN!r} answer; rename it")
    for other in others:
        if other != label and label_key(other) == key:
            raise InputError(f"{where} {label!r} differs from the label {other!r} only by spaces or character width; use {other!r} or another name")
    return label


def check_labels(labels: Iterable[str], *, where: str = "label") -> list[str]:
    """Every label of a set (a dataset's class folders), each against the others."""
    labels = list(labels)
    for i, label in enumerate(labels):
        check_label(label, labels[:i], where=where)
    return labels


def shown(label: object) -> str:
    """A label as printed: characters that are not printable escaped (`\\n`, `\\x1b`), the rest as they are."""
    text = str(label)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
