"""Calibration data for post-training quantisation: one source, two views (ONNX Runtime reader, NNCF dataset).

The images are already prepared with the model's own preprocessing (uint8 NHWC at the model's size), so the
quantiser sees exactly what the device will feed. They come from the training split, never the held-out one;
their provenance (split, count, seed, hash of the item list) goes into the bundle's manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import InputError
from runtimes.predictor import padded_chunks


@dataclass
class CalibrationData:
    """Prepared calibration images (or a text export's `TokenBatch`) and where they came from."""

    images: Any
    split: str
    items: list[str]
    seed: int | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from runtimes.modality import TokenBatch

        if isinstance(self.images, TokenBatch):  # a text export's calibration texts, tokenised
            if len(self.images) == 0:
                raise InputError("calibration texts must not be empty")
        elif self.images.ndim != 4 or self.images.dtype != np.uint8 or len(self.images) == 0:
            raise InputError(f"calibration images must be a non-empty uint8 (N, H, W, 3) batch, got {self.images.dtype} {self.images.shape}")
        if len(self.items) != len(self.images):
            raise InputError(f"calibration data: {len(self.images)} images but {len(self.items)} item names")
        if self.split in ("test", "held-out"):
            raise InputError("calibration data must not come from the held-out split the export is validated on")

    def __len__(self) -> int:
        return len(self.images)

    def provenance(self) -> dict[str, Any]:
        """What the manifest records: split, count, seed, sha256 of the item list (in order)."""
        digest = hashlib.sha256("\n".join(self.items).encode()).hexdigest()
        return {
            "split": self.split,
            "count": len(self),
            "seed": self.seed,
            "source": public_source(self.source),
            "items_sha256": digest,
            **self.extra,
        }

    def batches(self, batch_size: int, *, exact: bool = False) -> Iterator[np.ndarray]:
        """Consecutive batches; `exact` pads the last one (repeating its last image) for fixed-batch models."""
        for part, _ in padded_chunks(self.images, batch_size, pad=exact):
            yield part

    def ort_reader(self, input_name: str, batch_size: int = 1):
        """An `onnxruntime.quantization.CalibrationDataReader` over these images (feeds `{input_name: batch}`).

        Every batch has exactly `batch_size` images (the entropy/percentile calibrators stack per-batch
        histograms and need equal shapes; fixed-batch models need it anyway).
        """
        from onnxruntime.quantization import CalibrationDataReader

        data = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it: Iterator[np.ndarray] = iter(())
                self.rewind()

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._it, None)
                return None if batch is None else {input_name: batch}

            def rewind(self) -> None:
                self._it = data.batches(batch_size, exact=True)

            def __len__(self) -> int:
                return -(-len(data) // batch_size)

        return _Reader()

    def nncf_dataset(self, batch_size: int = 1):
        """An `nncf.Dataset` over these images (each item one uint8 batch, fed to the model's single input)."""
        from .nncf_loader import import_nncf

        nncf = import_nncf()

        from runtimes.modality import TokenBatch

        if isinstance(self.images, TokenBatch):  # each item one text, fed to the graph's inputs by name
            return nncf.Dataset(list(self.batches(batch_size, exact=True)), TokenBatch.feeds)
        return nncf.Dataset(list(self.batches(batch_size, exact=True)))


def public_source(source: Any) -> Any:
    """Where data came from, as a manifest that travels to devices may say it: a folder's or file's own name, never
    the host's path to it ("../data/parts/" -> "parts/"); names such as "digits" as they are."""
    if not isinstance(source, str) or ("/" not in source and "\\" not in source):
        return source
    name = Path(source.rstrip("/\\")).name
    return f"{name}/" if source.endswith(("/", "\\")) or not Path(name).suffix else name


def public_description(description: dict[str, Any]) -> dict[str, Any]:
    """A data description with its `source` made path-free (`public_source`)."""
    return {**description, "source": public_source(description["source"])} if "source" in description else description
