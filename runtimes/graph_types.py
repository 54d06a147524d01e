"""What the backends share about a graph's types: element-type names in the manifest's words, and the precision a
bundle is computed in as written (`check_as_written` refuses another)."""

from __future__ import annotations

from typing import Any

from .errors import InputError

# what a bundle's graph computes in, as written (int8 graphs keep some nodes and the logits in float)
AS_WRITTEN = {"fp32": "f32", "fp16": "f16", "int8": "int8+f32"}


def computes_in(precision: str, float_precision: str | None, int8_share: Any = None) -> str:
    """What a bundle computes in, in words every backend shares: int8 bundles say what runs in int8 (the share of the
    multiply-adds measured at export) and what the float rest runs at, whatever the backend calls its setting."""
    floats = {"int8+f32": "f32"}.get(str(float_precision), float_precision) or "an unknown float precision"
    if precision == "fp16" and floats == "f32":
        return "f32 (fp16 weights widened: no fp16 arithmetic here)"
    if precision != "int8":
        return floats
    share = f" ({100 * int8_share:.0f}% of MACs)" if isinstance(int8_share, (int, float)) and not isinstance(int8_share, bool) else ""
    return f"int8{share} + {floats}"


def check_as_written(backend: str, precision: str, requested: str | None) -> None:
    """Backends that compute a graph in its own types accept only that precision when one is asked for."""
    own = "f16" if precision == "fp16" else "f32"
    alias = {"fp32": "f32", "fp16": "f16"}.get(str(requested), requested)
    if requested is not None and alias != own:
        raise InputError(
            f"{backend} computes this {precision} bundle as written ({own}); it has no {requested} mode "
            "(OpenVINO bundles take inference_precision='bf16' or 'f16', or export an fp16 format)"
        )


# backend type names -> the manifest's dtype names
_DTYPES = {
    "tensor(uint8)": "uint8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "uint8_t": "uint8",
    "u8": "uint8",
    "float32": "float32",
    "f32": "float32",
    "float16": "float16",
    "f16": "float16",
    "int64_t": "int64",
    "i64": "int64",
    "uint8": "uint8",
    "int64": "int64",
}


def manifest_dtype(backend_type: Any) -> str:
    """A backend's element type in the manifest's words ('tensor(float)', <Type: 'float32'> -> 'float32')."""
    text = str(backend_type)
    if "'" in text:
        text = text.split("'")[1]
    return _DTYPES.get(text, text)
