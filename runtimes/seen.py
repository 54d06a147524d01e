"""Which images a model was trained on, so `val` can tell held-out accuracy from accuracy on the training data.

At export, the run's train and val images (the ones the model fitted or was tuned on) are recorded in the
manifest's `source.seen_images` as 64-bit prefixes of the sha256 of each file's bytes: a seeded sample of at most
`MAX_SEEN` of them. `val` hashes the files it reads and counts those the model has seen: a copy or a subset of the
training folder is recognised, whatever its path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_SEEN = 10_000  # ~190 KB of manifest; beyond it a seeded sample (then `val` counts at least this share)
HASH = "sha256[:16] of the file bytes"


def file_key(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def seen_section(paths: Sequence[str], seed: int = 0) -> dict[str, Any] | None:
    """The manifest's record of the training images (`paths`: files; None when there are none, e.g. in-memory data)."""
    files = [p for p in paths if isinstance(p, str) and os.path.isfile(p)]
    if not files:
        return None
    sampled = len(files) > MAX_SEEN
    if sampled:
        pick = np.sort(np.random.default_rng(seed).choice(len(files), MAX_SEEN, replace=False))
        files = [files[int(i)] for i in pick]
    return {"hash": HASH, "count": len(paths), "sampled": sampled, "keys": sorted({file_key(p) for p in files})}


def count_seen(section: Any, paths: Sequence[str]) -> dict[str, Any] | None:
    """How many of `paths` (files) the bundle's model was trained on, or None when the bundle records nothing."""
    if not isinstance(section, dict) or section.get("hash") != HASH or not isinstance(section.get("keys"), list):
        return None
    keys = set(section["keys"])
    hits = sum(1 for p in paths if file_key(p) in keys)
    return {"seen": hits, "of": len(paths), "sampled": bool(section.get("sampled"))}
