"""What the CLI prints: JSON, one-line errors, and manifest values that may be malformed (never a traceback)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PRECISION_CHOICES = ("f32", "f16", "bf16")
PRECISION_HELP = (
    "compute in this precision instead of the one the bundle was validated at (OpenVINO: bf16/f16 where the "
    "device supports them; the precision actually used is reported)"
)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def pct(x: Any) -> str:
    """A fraction as a percentage; a manifest value that is not a number is shown marked, never a traceback."""
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if is_number(x) else bad(x)


def num(x: Any, spec: str = ".2g") -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if is_number(x) else bad(x)


def bad(x: Any) -> str:
    return f"<malformed: {str(x)[:40]!r}>"


def section(d: Any, key: str) -> dict[str, Any]:
    """An optional object inside an untrusted manifest section, {} when absent or not an object."""
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else {}


def precision_option(args: argparse.Namespace) -> dict[str, Any]:
    """--inference-precision as a backend option (only when given: backends pin the validated one otherwise)."""
    return {"inference_precision": args.inference_precision} if getattr(args, "inference_precision", None) else {}
