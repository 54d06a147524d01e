"""JSON from files a user or an attacker may have edited (manifests, gallery and added-class metadata), read with
limits: size, nesting depth, integer digits, no NaN/Infinity. Anything past them is a `ValueError` with a short
reason, which each reader turns into its own typed error naming the file."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_BYTES = 4 << 20  # 4 MiB: a real manifest or gallery header is a few KB (a label list of 100k names, ~2 MB)
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 20


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON, iteratively (a hostile document cannot exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_limited(text: str | bytes) -> Any:
    """`json.loads` within the limits above; a `ValueError` (JSONDecodeError included) names what is wrong."""
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{len(text)} bytes of JSON; at most {MAX_JSON_BYTES}")
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data
