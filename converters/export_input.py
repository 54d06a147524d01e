"""The converter side of a modality (docs/ARCHITECTURE.md: Modalities): what `export_bundles` asks of the input.

`ImageExport` (a `PreprocessConfig`: uint8 NHWC in) and `TextExport` (a tokenizer: `input_ids` and
`attention_mask` in) each know how to trace the model to ONNX, run the torch reference, describe the inputs in
the manifest, draw and store the self-test's golden inputs, which formats they can be exported to, and which files
go into every bundle (a text bundle's `tokenizer.json`). `export_bundles` takes either as `preprocessing=`; a
plain `PreprocessConfig` is an image export, so existing callers are unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtimes.engines.tensorrt_engine import BuildSettings
from runtimes.errors import InputError
from runtimes.manifest import TEXT_SCHEMA_VERSION, TensorSpec
from runtimes.modality import TEXT_INPUT_NAMES, TEXT_TOKENIZER_FILE, TextConfig, TokenBatch
from runtimes.preprocess import PreprocessConfig
from runtimes.selftest import choose_golden

from .formats import FORMAT_SPECS, FormatSpec
from .golden import GoldenSet, draw_golden
from .onnx_export import INPUT_NAME, export_onnx, export_onnx_graph
from .options import TensorRTOptions
from .torch_reference import reference_logits


class ExportInput:
    """One modality's answers to the export (see the module docstring)."""

    modality = "base"
    schema_version = 1  # the oldest manifest schema that can describe this modality
    symbolic_shapes = True  # onnxruntime's symbolic shape inference can follow the graph (quantisation pre-processing)
    nncf_model_type: str | None = None  # NNCF's model type for openvino-int8 (None: its default, for CNNs)

    def check_data(self, what: str, batch: Any) -> None:
        """`InputError` unless `batch` (reference, tuning or calibration data) is what the model takes."""
        raise NotImplementedError

    def format_spec(self, name: str) -> FormatSpec:
        """The `FormatSpec` this modality exports `name` with (an `InputError` for formats it cannot make)."""
        return FORMAT_SPECS[name]

    def export_onnx(self, model: nn.Module, path: Path, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def engine_settings(self, options: TensorRTOptions, batch_size: int | None, precision: str) -> BuildSettings:
        """The TensorRT build settings of this modality's bundles (`model.tensorrt`)."""
        return options.build_settings(batch_size, precision)

    def reference_outputs(self, model: nn.Module, batch: Any) -> np.ndarray:
        """torch fp32 outputs of `model` for a ready batch (the gate's reference)."""
        raise NotImplementedError

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        """The manifest's `inputs` and the section that says how inputs are made."""
        raise NotImplementedError

    def write_files(self, bundle_dir: Path) -> None:
        """Files every bundle of this modality carries besides the model (listed and checksummed by the writer)."""

    def draw_golden(self, reference: Any, size: int, model: nn.Module, labels: list[str] | None, features_model: Any = None) -> GoldenSet | None:
        raise NotImplementedError

    def golden_files(self, golden: GoldenSet) -> dict[str, Any]:
        """How `runtimes.selftest.write_self_test` stores the golden inputs."""
        raise NotImplementedError

    def repeat(self, one: Any, n: int) -> Any:
        """A batch of `n` copies of a one-item batch (latency at the bundle's batch)."""
        return np.repeat(one, n, axis=0)

    def feeds(self, batch: Any) -> dict[str, np.ndarray]:
        """The graph's inputs by name (for the plain fp32 call timed beside each bundle)."""
        raise NotImplementedError


class ImageExport(ExportInput):
    """uint8 NHWC RGB images at `preprocessing.input_size`; normalisation and layout inside the graph."""

    modality = "image"

    def __init__(self, preprocessing: PreprocessConfig) -> None:
        self.preprocessing = preprocessing

    def check_data(self, what: str, batch: Any) -> None:
        if batch.shape[1:3] != self.preprocessing.input_size:
            raise InputError(f"{what} images are {batch.shape[1:3]}, the model takes {self.preprocessing.input_size}")

    def export_onnx(self, model: nn.Module, path: Path, **kwargs: Any) -> dict[str, Any]:
        return export_onnx(model, path, self.preprocessing.input_size, **kwargs)

    def reference_outputs(self, model: nn.Module, batch: Any) -> np.ndarray:
        return reference_logits(model, batch)

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        spec = TensorSpec(INPUT_NAME, "uint8", (batch_dim, *self.preprocessing.input_size, 3), "NHWC")
        return {"inputs": (spec,), "preprocessing": self.preprocessing}

    def draw_golden(self, reference: Any, size: int, model: nn.Module, labels: list[str] | None, features_model: Any = None) -> GoldenSet | None:
        return draw_golden(reference, self.preprocessing, size, model, labels, features_model)

    def golden_files(self, golden: GoldenSet) -> dict[str, Any]:
        return {"images": golden.images, "originals": golden.originals}

    def feeds(self, batch: Any) -> dict[str, np.ndarray]:
        return {INPUT_NAME: batch}


# formats a text bundle can be exported to, and how: int8 on ONNX Runtime is dynamic with per-channel weights
# (measured: cosine to fp32 over 200 SMS messages, mean 0.989, min 0.958; without per-channel 0.944 / 0.814);
# openvino-int8 is NNCF's static int8 with its transformer scheme, calibrated on training texts
TEXT_FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-dynamic", "openvino", "openvino-fp16", "openvino-int8", "tensorrt", "tensorrt-fp16")
# TensorRT int8 takes QDQ from static calibration; a transformer's static int8 is not measured here yet
NOT_FOR_TEXT = {"tensorrt-int8": "static int8 of a transformer for TensorRT is not measured yet; use tensorrt-fp16 (or onnx-int8 on a CPU)"}


class TextExport(ExportInput):
    """Texts tokenised by `tokenizer_json` (copied into every bundle), cut at `max_tokens`: `input_ids` and
    `attention_mask`, int64 (batch, tokens), both dimensions dynamic; pooling and the head inside the graph."""

    modality = "text"
    schema_version = TEXT_SCHEMA_VERSION
    symbolic_shapes = False  # it stops at the position embeddings' Min(512, tokens)
    nncf_model_type = "transformer"

    def __init__(self, tokenizer_json: str | os.PathLike[str], max_tokens: int = 256) -> None:
        from runtimes.tokenize import TextTokenizer

        self.tokenizer_json = Path(tokenizer_json)
        self.config = TextConfig(tokenizer=TEXT_TOKENIZER_FILE, max_tokens=max_tokens)
        self.tokenizer = TextTokenizer(self.tokenizer_json, max_tokens)

    def tokenize(self, texts: list[str]) -> TokenBatch:
        ids, mask = self.tokenizer(texts)
        return TokenBatch(ids, mask)

    def check_data(self, what: str, batch: Any) -> None:
        if not isinstance(batch, TokenBatch):
            raise InputError(f"{what} data of a text export must be tokenised texts (a TokenBatch), got {type(batch).__name__}")

    def format_spec(self, name: str) -> FormatSpec:
        if name in NOT_FOR_TEXT:
            raise InputError(f"format {name} does not take text bundles yet: {NOT_FOR_TEXT[name]}")
        if name not in TEXT_FORMATS:
            raise InputError(f"format {name} does not take text bundles yet (text formats: {', '.join(TEXT_FORMATS)})")
        if name == "onnx-int8":  # no calibration: activations are quantised at run time
            return dataclasses.replace(FORMAT_SPECS["onnx-int8-dynamic"], name="onnx-int8", description="ONNX dynamic int8 (per-channel weights)")
        return FORMAT_SPECS[name]

    def engine_settings(self, options: TensorRTOptions, batch_size: int | None, precision: str) -> BuildSettings:
        return options.build_settings(batch_size, precision, max_tokens=self.config.max_tokens)  # tokens 1..max_tokens

    def export_onnx(self, model: nn.Module, path: Path, **kwargs: Any) -> dict[str, Any]:
        example = self.tokenize(["an example text for tracing", "a second, longer example text for tracing the graph"])
        args = (torch.from_numpy(example.input_ids), torch.from_numpy(example.attention_mask))
        axes = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUT_NAMES}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' masking code warns while traced; the shape test checks the graph
            return export_onnx_graph(model, path, args, list(TEXT_INPUT_NAMES), axes, **kwargs)

    @torch.inference_mode()
    def reference_outputs(self, model: nn.Module, batch: Any, batch_size: int = 32) -> np.ndarray:
        model = model.eval().to("cpu")
        lengths = batch.attention_mask.sum(1)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: each chunk is cut to its longest
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            part = batch[rows]
            y = model(torch.from_numpy(part.input_ids), torch.from_numpy(part.attention_mask)).float().numpy()
            if out is None:
                out = np.empty((len(batch), y.shape[1]), np.float32)
            out[rows] = y
        assert out is not None
        return out

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        inputs = tuple(TensorSpec(name, "int64", (batch_dim, "tokens")) for name in TEXT_INPUT_NAMES)
        return {"inputs": inputs, "preprocessing": None, "text": self.config}

    def write_files(self, bundle_dir: Path) -> None:
        shutil.copyfile(self.tokenizer_json, bundle_dir / self.config.tokenizer)

    def draw_golden(self, reference: Any, size: int, model: nn.Module, labels: list[str] | None, features_model: Any = None) -> GoldenSet | None:
        if not size:
            return None
        if reference.original is None:
            raise InputError("a text export's reference data must keep its texts (ReferenceData.original) for the self-test")
        picks = choose_golden(len(reference.images), size)
        texts = [str(reference.original(int(i))) for i in picks]
        batch = self.tokenize(texts)
        outputs = self.reference_outputs(model, batch)
        names = [labels[int(i)] for i in outputs.argmax(1)] if labels else None
        features = self.reference_outputs(features_model, batch) if features_model is not None else None
        return GoldenSet(texts, batch, outputs, names, features)  # type: ignore[arg-type]

    def golden_files(self, golden: GoldenSet) -> dict[str, Any]:
        return {"images": None, "texts": list(golden.originals)}

    def repeat(self, one: Any, n: int) -> Any:
        return TokenBatch(np.repeat(one.input_ids, n, axis=0), np.repeat(one.attention_mask, n, axis=0))

    def feeds(self, batch: Any) -> dict[str, np.ndarray]:
        return dict(batch.feeds())


def export_input(preprocessing: PreprocessConfig | ExportInput) -> ExportInput:
    """The export's input object: a `PreprocessConfig` stands for images."""
    if isinstance(preprocessing, ExportInput):
        return preprocessing
    if isinstance(preprocessing, PreprocessConfig):
        return ImageExport(preprocessing)
    raise InputError(f"preprocessing must be a PreprocessConfig or a converters.export_input.ExportInput, got {type(preprocessing).__name__}")
