"""Tokenisation for text bundles, torch-free: Hugging Face `tokenizers` (a Rust wheel for x86-64 and
aarch64) reading a `tokenizer.json`, the one definition of the tokens on the host and on the device.

A `tokenizer.json` may carry padding and truncation settings of its own: all-MiniLM-L6-v2's pads every text to 128
tokens and cuts at 128, while the model reads 256, so its embeddings would not match sentence-transformers'. The
file's settings are replaced here: no padding from the tokenizer, truncation at `max_tokens`, and each batch padded
to its longest text, with the attention mask saying which tokens are real.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, InputError, install_hint

DEFAULT_MAX_TOKENS = 256
MAX_TEXT_BYTES = 1 << 20  # one text of at most 1 MiB, as in training data: a model reads a few hundred tokens of it
MAX_TEXT_FILE_BYTES = 64 << 20  # a --text-file of at most 64 MiB


def checked_texts(items: Sequence[Any]) -> list[str]:
    """The texts a text bundle answers, each as given: a string, not empty or blank (refused, as training refuses
    it), valid Unicode (no lone surrogates, as invalid UTF-8 in a command line becomes), at most MAX_TEXT_BYTES."""
    out = []
    for n, text in enumerate(items, 1):
        where = f"text {n}" if len(items) > 1 else "the text"
        if not isinstance(text, str):
            raise InputError(f"{where}: a text bundle takes strings, got {type(text).__name__}")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InputError(f"{where}: not valid Unicode at character {exc.start} (invalid UTF-8 in the input); give UTF-8 text") from None
        if not text.strip():
            raise InputError(f"{where}: empty; there is nothing to answer")
        if size > MAX_TEXT_BYTES:
            raise InputError(f"{where}: {size} bytes; a text is at most {MAX_TEXT_BYTES} bytes (the model reads only its first tokens)")
        out.append(text)
    return out


def split_lines(content: str) -> list[str]:
    """Lines split on \\n and \\r\\n only: U+2028, NEL or a form feed inside a line are part of its text."""
    return [line.removesuffix("\r") for line in content.split("\n")]


class TextTokenizer:
    """`tokenizer(texts)` -> (input_ids, attention_mask), int64 arrays of shape (N, longest text in tokens)."""

    def __init__(self, tokenizer_json: str | os.PathLike[str] | bytes, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        """`tokenizer_json`: the file's path, or its bytes (a bundle's verified copy)."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailableError(f"text bundles need the tokenizers package ({exc}): {install_hint('text')}") from None
        if not isinstance(max_tokens, int) or not 2 <= max_tokens <= 8192:
            raise InputError(f"max_tokens must be a whole number from 2 to 8192, got {max_tokens!r}")
        what = "tokenizer.json" if isinstance(tokenizer_json, bytes) else str(tokenizer_json)
        try:
            if isinstance(tokenizer_json, bytes):
                self._tok: Any = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
            else:
                self._tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the Rust side raises its own exception type for a malformed file
            raise InputError(f"{what}: not a readable tokenizer.json ({exc})") from None
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.pad_id = int(self._tok.token_to_id("[PAD]") or 0)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids as the model will read them (cut at `max_tokens`), unpadded."""
        return [list(e.ids) for e in self._tok.encode_batch(list(texts))]

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InputError("empty batch: at least one text is needed")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"text {bad}: expected a string, got {type(texts[bad]).__name__}")
        encoded = self._tok.encode_batch(list(texts))
        width = max(len(e.ids) for e in encoded)
        ids = np.full((len(encoded), width), self.pad_id, np.int64)
        mask = np.zeros((len(encoded), width), np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask
