"""ONNX external-data references, read without the `onnx` package (runtimes needs numpy and one backend only).

An ONNX file may keep tensors in other files (`TensorProto.external_data` with a `location` key). A hostile model
can point those at any path (`../../home/user/.ssh/id_rsa`, `/etc/shadow`), and the runtime would read that file
into a tensor. Bundles therefore allow only references to files of the bundle itself: relative, inside it, listed
in the manifest (and so already size- and sha256-checked). This module walks the protobuf wire format just far
enough to find every such reference: initializers, sparse initializers, and tensors in node attributes, subgraphs
and functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .errors import BundleError, IntegrityError
from .fsutil import check_relative_path

# message -> {field number: child message} for the fields that can lead to a TensorProto (onnx.proto3)
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_MAX_DEPTH = 64


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BundleError("not a valid ONNX file (truncated or malformed protobuf varint)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _delimited_fields(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, value) for each length-delimited field, values as memoryview slices; other fields are skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise BundleError(f"not a valid ONNX file (unsupported protobuf wire type {wire})")
        if pos > len(buf):
            raise BundleError("not a valid ONNX file (a protobuf field runs past the end of the file)")
        if value is not None:
            yield number, value


def _walk(buf: memoryview, kind: str, depth: int, found: list[str]) -> None:
    if depth > _MAX_DEPTH:
        raise BundleError(f"ONNX graph nesting deeper than {_MAX_DEPTH} levels; refusing it")
    children = _CHILDREN[kind]
    if kind == "entry":
        key = value = None
        for number, v in _delimited_fields(buf):
            if number == 1:
                key = bytes(v).decode("utf-8", "replace")
            elif number == 2:
                value = bytes(v).decode("utf-8", "replace")
        if key == "location" and value is not None:
            found.append(value)
        return
    for number, v in _delimited_fields(buf):
        if number in children:
            _walk(v, children[number], depth + 1, found)


def external_data_locations(path: str | Path, data: bytes | None = None) -> list[str]:
    """Every external-data `location` the ONNX file at `path` (or its bytes `data`) refers to, in file order."""
    found: list[str] = []
    _walk(memoryview(Path(path).read_bytes() if data is None else data), "model", 0, found)
    return found


def check_external_data(model_path: Path, bundle_root: Path, listed: set[str], data: bytes | None = None) -> None:
    """Refuse external-data references that leave the bundle or name files the manifest does not list.
    `data`: the file's bytes as already read and verified (then the file is not read again)."""
    model_dir = model_path.parent
    for location in external_data_locations(model_path, data):
        try:
            check_relative_path(location)
        except IntegrityError:
            raise IntegrityError(f"{model_path.name}: external data location {location!r} is not a relative path inside the bundle") from None
        target = (model_dir / location).resolve()
        try:
            rel = target.relative_to(bundle_root.resolve()).as_posix()
        except ValueError:
            raise IntegrityError(f"{model_path.name}: external data location {location!r} points outside the bundle") from None
        if rel not in listed:
            raise IntegrityError(f"{model_path.name}: external data file {location!r} is not listed in the manifest")
