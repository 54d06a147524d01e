"""What predict, enroll and identify were given: texts (`--text`, `--text-file`) or image paths, checked against
what the bundle takes. Torch-free."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtimes.errors import InputError


def read_texts(texts: list[str] | None, text_file: str | None) -> list[str]:
    """The texts of `--text` (each as given) and `--text-file` (one per line, split on \\n or \\r\\n only; '-' for
    stdin; a leading BOM dropped; blank lines skipped), each checked (`runtimes.tokenize.checked_texts`)."""
    from runtimes.tokenize import MAX_TEXT_FILE_BYTES, checked_texts, split_lines

    out = list(texts or [])
    if text_file:
        try:
            if text_file == "-":
                raw = sys.stdin.buffer.read(MAX_TEXT_FILE_BYTES + 1) if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
            else:
                if not Path(text_file).is_file():
                    raise InputError(f"--text-file {text_file}: no such file (or not a regular file)")
                with open(text_file, "rb") as f:
                    raw = f.read(MAX_TEXT_FILE_BYTES + 1)
            if len(raw) > MAX_TEXT_FILE_BYTES:
                raise InputError(f"--text-file {text_file}: larger than {MAX_TEXT_FILE_BYTES} bytes; split it")
            content = raw.decode("utf-8-sig")
        except OSError as exc:
            raise InputError(f"--text-file {text_file}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InputError(f"--text-file {text_file}:{line}: not UTF-8 text; save it as UTF-8") from None
        out += [line for line in split_lines(content) if line.strip()]
    return checked_texts(out) if out else out


def predict_inputs(args: argparse.Namespace, modality: str) -> tuple[str, list[str]]:
    """("image", paths) or ("text", texts): what `predict` was given, checked against what the bundle takes."""
    from runtimes.preprocess import expand_image_paths

    texts = read_texts(getattr(args, "text", None), getattr(args, "text_file", None))
    if modality == "text":
        if args.images:
            raise InputError(f"{args.bundle} is a text bundle: give texts with --text or --text-file, not files ({args.images[0]})")
        if not texts:
            raise InputError(f"{args.bundle} is a text bundle: give texts with --text \"...\" or --text-file FILE ('-' for stdin)")
        return "text", texts
    if texts:
        raise InputError(f"{args.bundle} is an {modality} bundle: --text and --text-file are for text bundles")
    if not args.images:
        raise InputError("give at least one image file, folder or pattern")
    return "image", expand_image_paths(args.images, recursive=args.recursive)  # folders and patterns stand for their images
