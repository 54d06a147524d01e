"""What a bundle takes as input, one class per modality (docs/ARCHITECTURE.md: Modalities).

The predictor never asks "is this text?": it asks its `InputReader` to turn the user's items into a batch
(`prepare`), to check a ready batch (`check`), to split it (`chunks`), to bind it to the graph's inputs by name
(`feeds`), and to read the self-test's golden inputs. `ImageReader` holds the image contract (uint8 NHWC RGB at
the model's size, `runtimes.preprocess`); `TextReader` the text one (`input_ids` and `attention_mask`, int64
(batch, tokens), from the bundle's own checksummed `tokenizer.json`, `runtimes.tokenize`). A new modality is one
more reader, one more manifest section, and its export side in `converters/export_input.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BackendUnavailableError, BundleError, InputError
from .preprocess import PreprocessConfig, prepare_image, read_image, synthetic_images

if TYPE_CHECKING:
    from .bundle import Bundle

MODALITIES = ("image", "text")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask")
TEXT_TOKENIZER_FILE = "tokenizer.json"
MAX_TEXT_TOKENS = 8192


@dataclass(frozen=True)
class TextConfig:
    """The manifest's `text` section: the bundle's tokenizer file and where it cuts a text (in tokens)."""

    tokenizer: str = TEXT_TOKENIZER_FILE
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 2 <= self.max_tokens <= MAX_TEXT_TOKENS:
            raise InputError(f"text.max_tokens must be a whole number from 2 to {MAX_TEXT_TOKENS}, got {self.max_tokens!r}")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise InputError(f"text.tokenizer must name a file of the bundle, got {self.tokenizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "max_tokens": self.max_tokens, "inputs": list(TEXT_INPUT_NAMES)}

    @classmethod
    def from_dict(cls, d: Any) -> TextConfig:
        if not isinstance(d, dict):
            raise InputError(f"must be an object, got {type(d).__name__}")
        unknown = set(d) - {"tokenizer", "max_tokens", "inputs"}
        if unknown:
            raise InputError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if d.get("inputs", list(TEXT_INPUT_NAMES)) != list(TEXT_INPUT_NAMES):
            raise InputError(f"inputs must be {list(TEXT_INPUT_NAMES)}, got {d.get('inputs')!r}")
        return cls(tokenizer=d.get("tokenizer", TEXT_TOKENIZER_FILE), max_tokens=d.get("max_tokens", 256))


@dataclass(frozen=True)
class TokenBatch:
    """Tokenised texts: `input_ids` and `attention_mask`, int64 (N, L), padded to the longest text of the batch.
    Indexes and slices by rows like an array, so gates and chunking treat it as they treat an image batch."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.input_ids.shape)

    def __getitem__(self, rows: Any) -> TokenBatch:
        if isinstance(rows, (int, np.integer)):
            rows = slice(int(rows), int(rows) + 1 if int(rows) != -1 else None)
        ids, mask = self.input_ids[rows], self.attention_mask[rows]
        width = int(mask.sum(1).max()) if len(mask) else 0  # drop columns that are padding in every row left
        width = max(width, 1)
        return TokenBatch(np.ascontiguousarray(ids[:, :width]), np.ascontiguousarray(mask[:, :width]))

    def feeds(self) -> dict[str, np.ndarray]:
        """The graph's inputs by name."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    @staticmethod
    def concat(parts: Sequence[TokenBatch]) -> TokenBatch:
        width = max(p.input_ids.shape[1] for p in parts)
        ids = np.concatenate([np.pad(p.input_ids, ((0, 0), (0, width - p.input_ids.shape[1]))) for p in parts])
        mask = np.concatenate([np.pad(p.attention_mask, ((0, 0), (0, width - p.attention_mask.shape[1]))) for p in parts])
        return TokenBatch(ids, mask)


class InputReader:
    """How a loaded bundle's inputs are made, checked, split and bound; one subclass per modality."""

    modality = "base"
    unit = "inputs"  # what one item is called in reports

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest

    def prepare(self, items: Any) -> Any:
        """The user's items (images or texts) -> a ready batch."""
        raise NotImplementedError

    def check(self, batch: Any, max_batch: int | None) -> Any:
        """A ready batch as the model takes it, or `InputError` naming what does not fit."""
        raise NotImplementedError

    def feeds(self, batch: Any) -> dict[str, np.ndarray]:
        """The graph's inputs by name for a checked batch."""
        raise NotImplementedError

    def zeros(self, n: int) -> Any:
        """A batch of n neutral inputs (warm-up runs)."""
        raise NotImplementedError

    def golden(self, section: dict[str, Any], listed: Any) -> Any:
        """The self-test's golden inputs, ready (`listed(rel, field)` checks a path is one of the bundle's files)."""
        raise NotImplementedError

    def chunks(self, batch: Any, size: int, *, pad: bool = False) -> Iterator[tuple[Any, int]]:
        """(chunk, number of real items) over `batch` in chunks of `size`; `pad` repeats the last item."""
        for start in range(0, len(batch), size):
            part = batch[start : start + size]
            n = len(part)
            if pad and n < size:
                part = self.concat([part] + [part[n - 1 : n]] * (size - n))
            yield part, n

    def concat(self, parts: Sequence[Any]) -> Any:
        return np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality}

    def synthetic(self, n: int, tokens: int | None = None) -> list[Any]:
        """`n` made-up inputs of the kind `predict` takes, for benchmarks (`tokens`: a text's length)."""
        raise NotImplementedError

    def engine_shapes(self, batch: Any, tokens: Any = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Each input's (min, opt, max) shape for a TensorRT optimisation profile, from the batch range
        (`runtimes.engines.tensorrt_engine.BatchProfile`) and, for text, the token range (`TokenProfile`)."""
        raise NotImplementedError


class ImageReader(InputReader):
    """uint8 NHWC RGB at the model's input size; any image is decoded, resized and cropped by `runtimes.preprocess`."""

    modality = "image"
    unit = "images"

    def __init__(self, bundle: Bundle) -> None:
        super().__init__(bundle)
        if self.config.resize == "opencv-exact":  # the bundle's resize or none: never another one in its place
            from .video import VIDEO_EXTRA, opencv

            try:
                opencv()
            except BackendUnavailableError:
                raise BackendUnavailableError(
                    f"{bundle.path}: its preprocessing resizes with OpenCV (preprocessing.resize: opencv-exact); {VIDEO_EXTRA}"
                ) from None

    @property
    def config(self) -> PreprocessConfig:
        assert self.manifest.preprocessing is not None  # parse_manifest requires it of image bundles
        return self.manifest.preprocessing

    def prepare(self, items: Any) -> np.ndarray:
        cfg = self.config
        if isinstance(items, (str, Path)):
            items = [items]
        if isinstance(items, np.ndarray):
            if items.ndim == 4:
                if items.dtype == np.uint8 and items.shape[1:] == (*cfg.input_size, 3) and cfg.crop_pct == 1.0:
                    return np.ascontiguousarray(items)
                items = list(items)
            elif items.ndim in (2, 3):
                items = [items]
            else:
                raise InputError(f"expected an image (H, W[, C]) or a batch (N, H, W, C), got shape {items.shape}")
        if not isinstance(items, Iterable) or isinstance(items, (bytes, dict)):
            raise InputError(f"expected image arrays or file paths, got {type(items).__name__}")
        prepared = []
        for i, img in enumerate(items):
            if isinstance(img, (str, Path)):
                prepared.append(prepare_image(read_image(str(img), cfg), cfg, what=str(img)))
            else:
                prepared.append(prepare_image(img, cfg, what=f"image {i}"))
        if not prepared:
            raise InputError("empty batch: at least one image is needed")
        return np.stack(prepared)

    def check(self, batch: Any, max_batch: int | None) -> np.ndarray:
        spec = self.manifest.inputs[0]
        h, w = self.config.input_size
        expected = f"uint8 array of shape (N, {h}, {w}, 3) (NHWC RGB)"
        if not isinstance(batch, np.ndarray):
            raise InputError(f"input '{spec.name}': expected a {expected}, got {type(batch).__name__}")
        if batch.dtype != np.uint8:
            raise InputError(f"input '{spec.name}': expected dtype uint8, got {batch.dtype} (expected a {expected})")
        if batch.ndim != 4:
            raise InputError(f"input '{spec.name}': expected rank 4 (N, {h}, {w}, 3), got shape {batch.shape}")
        if batch.shape[3] != 3:
            raise InputError(f"input '{spec.name}': expected 3 channels (RGB) last, got shape {batch.shape}")
        if batch.shape[1:3] != (h, w):
            raise InputError(f"input '{spec.name}': expected height x width {h}x{w}, got shape {batch.shape}; use predict() to resize")
        if batch.shape[0] < 1:
            raise InputError(f"input '{spec.name}': empty batch (shape {batch.shape})")
        if max_batch is not None and batch.shape[0] != max_batch:
            raise InputError(f"input '{spec.name}': this bundle has a fixed batch of {max_batch}, got {batch.shape[0]}")
        return np.ascontiguousarray(batch)

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {self.manifest.inputs[0].name: batch}

    def zeros(self, n: int) -> np.ndarray:
        h, w = self.config.input_size
        return np.zeros((n, h, w, 3), np.uint8)

    def golden(self, section: dict[str, Any], listed: Any) -> np.ndarray:
        """The stored originals through this device's own decode, resize and crop (as `predict` does), or, in
        bundles older than the originals, the stored prepared images."""
        h, w = self.config.input_size
        rel = listed(section.get("images"), "self_test.images")
        originals = section.get("originals")
        if originals is not None:
            if not isinstance(originals, list) or not originals:
                raise BundleError(f"{self.bundle.path}: manifest field 'self_test.originals' must list the golden image files")
            return self.prepare([self.bundle.file(listed(o, "self_test.originals")) for o in originals])
        try:
            images = np.load(self.bundle.file(rel), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.bundle.path}: self-test file {rel} cannot be read: {exc}") from None
        if images.dtype != np.uint8 or images.shape[1:] != (h, w, 3) or len(images) == 0:
            raise BundleError(f"{self.bundle.path}: self-test images are {images.dtype} {images.shape}, the model takes uint8 (N, {h}, {w}, 3)")
        return images

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "preprocessing": self.config.to_dict()}

    def engine_shapes(self, batch: Any, tokens: Any = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        return {self.manifest.inputs[0].name: batch.shapes(*self.config.input_size)}

    def synthetic(self, n: int, tokens: int | None = None) -> list[Any]:
        if tokens is not None:
            raise InputError(f"{self.bundle.path} is an image bundle: token lengths are for text bundles")
        return list(synthetic_images(n))


class TextReader(InputReader):
    """Texts -> `input_ids` and `attention_mask` with the bundle's own tokenizer (verified bytes), cut at
    `text.max_tokens`, each batch padded to its longest text."""

    modality = "text"
    unit = "texts"

    def __init__(self, bundle: Bundle) -> None:
        super().__init__(bundle)
        from .tokenize import TextTokenizer

        assert bundle.manifest.text is not None  # parse_manifest requires it of text bundles
        self.config: TextConfig = bundle.manifest.text
        data = bundle.verified_bytes(self.config.tokenizer)
        source: Any = bundle.file(self.config.tokenizer) if data is None else data
        try:
            self.tokenizer = TextTokenizer(source, self.config.max_tokens)
        except InputError as exc:
            raise BundleError(f"{bundle.path}: {self.config.tokenizer}: {exc}") from None

    def prepare(self, items: Any) -> TokenBatch:
        if isinstance(items, TokenBatch):
            return items
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, Iterable) or isinstance(items, (bytes, dict, np.ndarray)):
            raise InputError(f"a text bundle takes strings (a text or a list of texts), got {type(items).__name__}")
        from .tokenize import checked_texts

        ids, mask = self.tokenizer(checked_texts(list(items)))
        return TokenBatch(ids, mask)

    def check(self, batch: Any, max_batch: int | None) -> TokenBatch:
        names = "/".join(TEXT_INPUT_NAMES)
        if not isinstance(batch, TokenBatch):
            raise InputError(f"inputs '{names}': expected a TokenBatch (predict() and prepare() make one from texts), got {type(batch).__name__}")
        ids, mask = batch.input_ids, batch.attention_mask
        for name, arr in zip(TEXT_INPUT_NAMES, (ids, mask)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int64 or arr.ndim != 2:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputError(f"input '{name}': expected int64 (N, tokens), got {got}")
        if ids.shape != mask.shape or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise InputError(f"inputs '{names}': shapes {ids.shape} and {mask.shape} must be equal and non-empty")
        if ids.shape[1] > self.config.max_tokens:
            raise InputError(f"input 'input_ids': {ids.shape[1]} tokens, this bundle reads at most {self.config.max_tokens}")
        if max_batch is not None and ids.shape[0] != max_batch:
            raise InputError(f"inputs '{names}': this bundle has a fixed batch of {max_batch}, got {ids.shape[0]}")
        return TokenBatch(np.ascontiguousarray(ids), np.ascontiguousarray(mask))

    def feeds(self, batch: TokenBatch) -> dict[str, np.ndarray]:
        return batch.feeds()

    def zeros(self, n: int) -> TokenBatch:
        return self.prepare([""] * n)

    def concat(self, parts: Sequence[Any]) -> TokenBatch:
        return TokenBatch.concat(parts)

    def golden(self, section: dict[str, Any], listed: Any) -> TokenBatch:
        """The golden texts (a listed JSON file) through this device's tokenizer, as `predict` does."""
        rel = listed(section.get("texts"), "self_test.texts")
        try:
            texts = json.loads(self.bundle.file(rel).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.bundle.path}: self-test file {rel} cannot be read: {exc}") from None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BundleError(f"{self.bundle.path}: self-test file {rel} must hold a JSON list of texts")
        return self.prepare(texts)

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "text": self.config.to_dict()}

    def engine_shapes(self, batch: Any, tokens: Any = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        if tokens is None:
            raise BundleError(f"{self.bundle.path}: a text bundle's TensorRT settings need a token range (model.tensorrt.tokens)")
        if tokens.max != self.config.max_tokens:  # every text the tokenizer makes must fit the engine
            raise BundleError(f"{self.bundle.path}: model.tensorrt.tokens.max is {tokens.max}, the bundle's token limit is {self.config.max_tokens}")
        shapes = tuple((b, t) for b, t in zip((batch.min, batch.opt, batch.max), (tokens.min, tokens.opt, tokens.max)))
        return {name: shapes for name in TEXT_INPUT_NAMES}

    def synthetic(self, n: int, tokens: int | None = None) -> list[Any]:
        """`n` different texts of exactly `tokens` tokens each (default 64), specials included, of common words
        that are one token each in this tokenizer."""
        tokens = 64 if tokens is None else tokens
        specials = len(self.tokenizer.token_ids([""])[0])
        if not specials < tokens <= self.config.max_tokens:
            raise InputError(f"a text length of {tokens} tokens: this bundle reads {specials + 1} to {self.config.max_tokens}")
        words = [w for w, ids in zip(SYNTHETIC_WORDS, self.tokenizer.token_ids(SYNTHETIC_WORDS)) if len(ids) == specials + 1]
        if not words:
            raise InputError(f"{self.config.tokenizer}: none of the benchmark's words is a single token in it")
        count = tokens - specials
        return [" ".join(words[(i * 7 + j) % len(words)] for j in range(count)) for i in range(n)]


SYNTHETIC_WORDS = (
    "the model reads a short text about the weather in the city and the news of the day from the river house "
    "near green hills where people walk with music and food after work on the long road home"
).split()

READERS: dict[str, type[InputReader]] = {"image": ImageReader, "text": TextReader}


def input_reader(bundle: Bundle) -> InputReader:
    """The reader of this bundle's modality (`Manifest.modality`)."""
    return READERS[bundle.manifest.modality](bundle)
