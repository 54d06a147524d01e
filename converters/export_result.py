"""What one format's export produced (`ExportResult`), and the error that lists every format that failed
(`raise_for_failures`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.bundle import Bundle
from runtimes.errors import ValidationFailed

from .formats import FORMAT_SPECS
from .ladder import ACCURACY_AWARE, POST_TRAINING
from .validate import format_table, format_validation


@dataclass
class ExportResult:
    """One format's outcome: the bundle (None when nothing was written), its validation, timings, any error."""

    format: str
    path: Path
    bundle: Bundle | None
    validation: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    int8_share: dict[str, Any] | None = None  # converters.int8_share: the int8 share of the multiply-adds
    kept: bool = False  # skip_existing: exported by an earlier run, checked and kept

    @property
    def written(self) -> bool:
        return self.bundle is not None

    @property
    def passed(self) -> bool:
        return bool(self.validation and self.validation.get("passed"))

    @property
    def size_bytes(self) -> int:
        return self.bundle.size_bytes if self.bundle is not None else 0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready row: format, path, bytes, written, passed, error, validation."""
        return {
            "format": self.format,
            "path": str(self.path),
            "bytes": self.size_bytes,
            "written": self.written,
            "passed": self.passed,
            "error": self.error,
            "validation": self.validation,
            "int8_share": self.int8_share,
            "kept": self.kept,
            "seconds": self.seconds,
        }


def raise_for_failures(results: list[ExportResult], out: str | os.PathLike[str]) -> None:
    """Raise `ValidationFailed` (with the whole table) if any format was not written or failed its gate."""
    bad = [r for r in results if not r.written or r.error]
    if not bad:
        return
    details = "; ".join(f"{r.format}: {r.error or format_validation(r.validation or {})}" for r in bad)
    hints = []
    rungs = {(r.validation or {}).get("rung") for r in bad if FORMAT_SPECS[r.format].tunable}
    if ACCURACY_AWARE in rungs:
        hints.append(
            "the accuracy-aware search tuned on the val split did not hold on the held-out split, or left too much in "
            "float (a larger val split makes the search more reliable; --min-int8-share sets how much float is allowed)"
        )
    if any(((r.validation or {}).get("paired") or {}).get("too_small_to_judge") for r in bad):
        hints.append("the held-out set is too small to judge a drop of --max-drop: hold out more images (train --test-fraction, or --data DIR)")
    if POST_TRAINING in rungs:
        hints.append("without --no-fallback, export tries the accuracy-aware search next (it needs the run's val split)")
    if rungs & {POST_TRAINING, ACCURACY_AWARE}:
        hints.append("quantisation-aware fine-tuning keeps int8 accuracy with every layer in int8: edge-transfer qat RUN, then export RUN/qat")
    hints.append("--max-drop changes the tolerance; --allow-failed-validation writes failed bundles marked as failed")
    exc = ValidationFailed(
        f"{len(bad)} of {len(results)} format(s) not written to {out}:\n{format_table([r.summary() for r in results])}\n{details}\n"
        f"({'; '.join(hints)})"
    )
    exc.results = results  # type: ignore[attr-defined]  # the CLI's --json reports them all
    raise exc
