"""Checksummed documents of arrays plus JSON metadata in one `.npz` file (galleries, classes added on the device).

Written atomically, with a sha256 over every array (dtype, shape, bytes) and every metadata field, so an edited
threshold or label is caught like a flipped byte. Read as untrusted input, with the limits of a manifest: members
must be stored uncompressed, as `np.savez` writes them (a small file cannot inflate to gigabytes), each array's
declared shape must match its bytes before anything is allocated (a header claiming 10^11 rows is refused, not
attempted), no object arrays, and the JSON within `runtimes.safejson`'s limits. Every problem is the caller's
typed error naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .fsutil import write_npz_atomically
from .safejson import MAX_JSON_BYTES, loads_limited

META = "meta"


def document_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 of every array (name, dtype, shape, bytes, in name order) and of the metadata less its `sha256`."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def write_npz_document(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any], what: str) -> Path:
    """Write `arrays` and `meta` (with its digest added as `sha256`) atomically to `path`."""
    meta = {**meta, "sha256": document_digest(arrays, meta)}
    return write_npz_atomically(path, {**arrays, META: np.asarray(json.dumps(meta))}, what)


def _read_array(f: IO[bytes], size: int, max_bytes: int) -> np.ndarray:
    """One `.npy` member, its header checked against its size before any allocation."""
    from numpy.lib import format as npy

    major, _ = npy.read_magic(f)
    if major == 1:
        shape, fortran, dtype = npy.read_array_header_1_0(f)
    elif major in (2, 3):
        shape, fortran, dtype = npy.read_array_header_2_0(f)
    else:
        raise ValueError(f"an .npy version {major} header")
    if dtype.hasobject:
        raise ValueError("an array of Python objects")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * dtype.itemsize
    remaining = size - f.tell()
    if nbytes != remaining or nbytes > max_bytes:
        raise ValueError(f"an array of shape {tuple(shape)} ({nbytes} bytes) in a member of {remaining} bytes")
    data = np.frombuffer(f.read(nbytes), dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C")


def read_npz_document(
    path: str | os.PathLike[str],
    keys: Sequence[str],
    *,
    fmt: str,
    version: int,
    what: str,
    error: type[Exception],
    digest_from: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays `keys` and the JSON metadata of a file written by `write_npz_document` (or, before `digest_from`,
    `write_npz_atomically`), its `format` and `version` checked and, from version `digest_from` on, its digest
    verified; anything wrong raises `error` naming the file as `what` (e.g. "gallery file")."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        file_size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            members = {info.filename: info for info in z.infolist()}
            for key in (*keys, META):
                info = members.get(key + ".npy")
                if info is None:
                    raise ValueError(f"no array {key!r}")
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:
                    raise ValueError(f"array {key!r} is compressed (edge-transfer stores arrays as they are)")
                limit = 4 * MAX_JSON_BYTES + 1024 if key == META else file_size
                with z.open(info) as f:
                    try:
                        arrays[key] = _read_array(f, info.file_size, limit)
                    except ValueError as exc:
                        raise ValueError(f"array {key!r}: {exc}") from None
        meta = loads_limited(str(arrays.pop(META)))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{path}: not an edge-transfer {what} (field 'format' should be {fmt!r})")
    got = meta.get("version", 0)
    if not isinstance(got, int) or isinstance(got, bool) or got < 1:
        raise error(f"{path}: field 'version' should be a whole number, got {got!r}")
    if got > version:
        raise error(f"{path}: {what} version {got} is newer than this edge-transfer supports")
    if digest_from is not None and got >= digest_from and document_digest(arrays, meta) != meta.get("sha256"):
        raise error(f"{path}: checksum mismatch: the {what} was changed or damaged since it was saved")
    return arrays, meta


def meta_field(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Any, error: type[Exception]) -> Any:
    """`meta[key]`, refused with `error` (naming the file and the field) when missing or of another type. A bool is
    not accepted as a number."""
    value = meta.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if key not in meta or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise error(f"{path}: field {key!r} should be {names}, got {type(value).__name__ if key in meta else 'nothing'}")
    return value


def string_list(meta: dict[str, Any], key: str, path: Any, error: type[Exception]) -> list[str]:
    """`meta[key]` as a list of strings, refused otherwise (labels given as dicts, numbers, nested lists)."""
    value = meta_field(meta, key, list, path, error)
    bad = next((v for v in value if not isinstance(v, str)), None)
    if bad is not None:
        raise error(f"{path}: field {key!r} should list names (strings), got a {type(bad).__name__}")
    return value


def document_kind(fmt: str, what: str) -> Any:
    """The `runtimes.outputs.FileKind` of one document format: an existing file is ours to rewrite when it is a
    readable document of `fmt` (a gallery of galleries, never a photo or another tool's .npz)."""
    from .outputs import FileKind

    def problem(path: Path) -> str | None:
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo(META + ".npy")
                with z.open(info) as f:
                    meta = loads_limited(str(_read_array(f, info.file_size, 4 * MAX_JSON_BYTES + 1024)))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return f"not a readable {what}"
        return None if isinstance(meta, dict) and meta.get("format") == fmt else f"not an edge-transfer {what}"

    return FileKind(what, problem)
