"""Bundles already at an export's destination: refused, replaced (`overwrite`) or kept (`skip_existing`, which
completes an interrupted multi-format export). A kept bundle is checked first: complete and from the same model."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtimes.bundle import BUNDLE, Bundle, open_bundle
from runtimes.errors import BundleError, EdgeTransferError
from runtimes.outputs import Protected, check_output_dir, check_parent_dir


def _identity(source: dict[str, Any] | None) -> tuple[Any, ...]:
    """What identifies the exported model (not the run's path: it may be given relative, or moved)."""
    return tuple((source or {}).get(k) for k in ("backbone", "strategy", "weights", "training_metrics"))


def export_targets(out: str | os.PathLike[str], formats: list[str]) -> dict[str, Path]:
    """Where each format's bundle goes: `out` itself for one format, `out/<format>` for several."""
    root = Path(out)
    return {name: root if len(formats) == 1 else root / name for name in formats}


def check_export_targets(
    out: str | os.PathLike[str], formats: list[str], *, overwrite: bool, skip_existing: bool, protected: Iterable[Protected] = ()
) -> dict[str, Path]:
    """Refuse, before any work, destinations an export may not write (`runtimes.outputs`): near `protected` paths,
    under a file, or holding something other than a bundle of ours (or, without `overwrite`/`skip_existing`, anything)."""
    protected = list(protected)
    targets = export_targets(out, formats)
    if len(formats) > 1:
        check_parent_dir(out, protected=protected, holds=(BUNDLE,))
    for target in targets.values():
        check_output_dir(target, BUNDLE, overwrite=True, protected=protected)
    if not skip_existing:  # an existing bundle without --overwrite: the refusal that names --skip-existing, before any work
        existing_bundles(targets, None, overwrite=overwrite, skip_existing=False)
    return targets


def existing_bundles(targets: dict[str, Path], source: dict[str, Any] | None, *, overwrite: bool, skip_existing: bool) -> dict[str, Bundle]:
    """The bundles to keep, by format; raises BundleError for a destination that exists and may not be kept."""
    kept: dict[str, Bundle] = {}
    for name, target in targets.items():
        if not target.exists() or overwrite:
            continue
        if not skip_existing:
            raise BundleError(
                f"{target} already exists; pass overwrite=True (--overwrite) to replace it, or skip_existing=True "
                "(--skip-existing) to keep the formats already exported and export the rest"
            )
        try:
            bundle = open_bundle(target)
        except EdgeTransferError as exc:
            raise BundleError(f"{target} exists but is not a complete bundle ({exc}); remove it, or pass --overwrite") from None
        theirs = bundle.manifest.source or {}
        if _identity(theirs) != _identity(source):
            raise BundleError(
                f"{target} holds a bundle of another model (from {theirs.get('run') or theirs.get('backbone')!r}); remove it, or pass --overwrite"
            )
        if bundle.manifest.export_format != name:
            raise BundleError(f"{target} holds a {bundle.manifest.export_format} bundle, not {name}; remove it, or pass --overwrite")
        kept[name] = bundle
    return kept
