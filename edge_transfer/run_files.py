"""What a training run directory and its checkpoint hold, and how to recognise one of ours without torch
(`runtimes.outputs` asks before `--overwrite` replaces anything)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from runtimes.errors import OutputError
from runtimes.outputs import OutputKind, Protected, check_clear_of, check_output_dir, contents_problem

RUN_FORMAT = "edge-transfer-run"
RUN_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = "edge-transfer-checkpoint"
STATE_NAME = "state.json"
QAT_DIR = "qat"  # a quantisation-aware run's default place, inside its parent (and its checkpoint beside it)
TOKENIZER_NAME = "tokenizer.json"  # a text run's tokenizer, carried into its bundles
RUN_ENTRIES = {CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, QAT_DIR, QAT_DIR + ".checkpoint"}
CHECKPOINT_ENTRIES = {STATE_NAME, "model.safetensors", "best.safetensors", "optimizer.safetensors", "rng.safetensors"}
MAX_HEADER = 100 << 20


def _json_format(path: Path) -> str | None:
    """The `format` field of a small JSON file, or None when it is not one."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_HEADER:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("format") if isinstance(doc, dict) else None


def safetensors_header_ok(path: Path) -> bool:
    """True when `path` starts like a safetensors file: an 8-byte length, then that much JSON (an object)."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER, path.stat().st_size - 8):
                return False
            return isinstance(json.loads(f.read(n)), dict)
    except (OSError, ValueError, struct.error):
        return False


def _foreign(path: Path, allowed: set[str]) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in allowed)


def _run_problem(path: Path) -> str | None:
    if _json_format(path / CONFIG_NAME) != RUN_FORMAT:
        return f"no edge-transfer {CONFIG_NAME}"
    if not safetensors_header_ok(path / WEIGHTS_NAME):
        return f"no readable {WEIGHTS_NAME}"
    foreign = _foreign(path, RUN_ENTRIES)
    return f"files a run does not have ({', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''})" if foreign else None


def _checkpoint_problem(path: Path) -> str | None:
    if _json_format(path / STATE_NAME) != CHECKPOINT_FORMAT:
        return f"no edge-transfer {STATE_NAME}"
    foreign = _foreign(path, CHECKPOINT_ENTRIES)
    return f"files a checkpoint does not have ({', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''})" if foreign else None


RUN = OutputKind("training run", _run_problem)
CHECKPOINT = OutputKind("training checkpoint", _checkpoint_problem)


def check_run_output(out: str | os.PathLike[str], ckpt: Path, *, overwrite: bool, protected: list[Protected]) -> None:
    """Before any work: `out` may become a run (absent, empty, or a run of ours with `overwrite`), and its checkpoint
    sibling, when present, is one of ours (`overwrite` deletes it, `resume` reads it)."""
    check_output_dir(out, RUN, overwrite=overwrite, protected=protected)
    check_clear_of(ckpt, protected, flag="the checkpoint")
    if os.path.lexists(ckpt) and (problem := contents_problem(ckpt, CHECKPOINT)) is not None:
        raise OutputError(
            f"{ckpt} (where the run's checkpoint goes) {problem}: not a checkpoint edge-transfer wrote; move it or choose another --out"
        )


def refuse_unresumed_checkpoint(ckpt: Path, *, resume: bool, overwrite: bool) -> None:
    """A checkpoint left by an interrupted run is never started over silently: `resume` continues it, `overwrite`
    replaces it; without either, `CheckpointError` says so."""
    from runtimes.errors import CheckpointError

    if ckpt.exists() and not resume and not overwrite:
        raise CheckpointError(
            f"{ckpt} holds the checkpoint of an interrupted run: pass resume=True (--resume) to continue it, "
            "or overwrite=True (--overwrite) to start over"
        )


def discard_checkpoint(ckpt: Path) -> None:
    """Delete a run's checkpoint once the run is saved (or `--overwrite` starts over), only if it is still one of ours:
    a folder a user put there since is kept, with a warning, and the saved run stands."""
    import logging

    from runtimes.fsutil import remove_ours

    try:
        remove_ours(ckpt, CHECKPOINT)
    except OutputError as exc:
        logging.getLogger(__name__).warning(f"{exc}; it is left as it is")
