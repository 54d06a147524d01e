"""The files commands write beside their output on the terminal: bench's JSON and CSV, the plots of bench and val.
Each is a `runtimes.outputs.FileKind` (an existing file is replaced only when edge-transfer wrote it), checked again
just before it is written, and written atomically: the path holds the old file or the whole new one."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from runtimes.fsutil import write_bytes_atomically
from runtimes.outputs import STDOUT, FileKind, check_output_file
from runtimes.safejson import MAX_JSON_BYTES

WRITTEN_BY = "edge-transfer"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_MARK = b"Software\x00" + WRITTEN_BY.encode()  # a tEXt chunk matplotlib writes from savefig(metadata=...)


def _bench_json_problem(path: Path) -> str | None:
    try:
        if path.stat().st_size > 64 * MAX_JSON_BYTES:
            return "too large to be a bench report"
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "not JSON"
    ours = isinstance(doc, dict) and (doc.get("written_by") == f"{WRITTEN_BY} bench" or {"machine", "rows", "results"} <= set(doc))
    return None if ours else "not a bench report"


def _csv_problem(header: str) -> Any:
    def problem(path: Path) -> str | None:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                first = f.readline(4096).rstrip("\r\n")
        except (OSError, ValueError):
            return "not a text file"
        return None if first == header else "its first line is not the bench table's header"

    return problem


def _png_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not head.startswith(PNG_MAGIC):
        return "not a PNG image"
    return None if PNG_MARK in head else "a PNG image edge-transfer did not draw"


def bench_csv_kind(columns: tuple[str, ...]) -> FileKind:
    return FileKind("bench table (CSV)", _csv_problem(",".join(columns)))


BENCH_JSON = FileKind("bench report (JSON)", _bench_json_problem)
PLOT = FileKind("plot (PNG)", _png_problem)


def write_report(target: str | os.PathLike[str], text: str, kind: FileKind, *, flag: str) -> None:
    """`text` to `target` (or standard output for `-`), after the output rule once more."""
    path = check_output_file(target, kind, flag=flag, stream=True)
    if path is None or os.fspath(target) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_bytes_atomically(path, text.encode("utf-8"), kind.what)


def save_figure(fig: Any, target: str | os.PathLike[str], *, flag: str = "--plot") -> None:
    """A matplotlib figure as a PNG marked as ours (so a later run may replace it, and nothing else)."""
    path = check_output_file(target, PLOT, flag=flag)
    assert path is not None  # no stream for a plot
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": WRITTEN_BY})
    write_bytes_atomically(path, buf.getvalue(), PLOT.what)
