"""Export options and their defaults: one home for each, torch-free so the CLI builds its flags from them on any
install (docs/ARCHITECTURE.md, "Options")."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtimes.cpu import DEFAULT_TARGET_CPU, TARGET_CPUS
from runtimes.engines.tensorrt_engine import BuildSettings
from runtimes.engines.tensorrt_profile import derive_profile, derive_token_profile
from runtimes.errors import InputError
from runtimes.options import check_bounds, replace_options
from runtimes.selftest import DEFAULT_SELF_TEST_SIZE

DEFAULT_FORMAT = "onnx"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TARGET_CPU_CHOICES = tuple(TARGET_CPUS)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_FORMAT",
    "DEFAULT_TARGET_CPU",
    "TARGET_CPU_CHOICES",
    "ExportOptions",
    "QuantizationOptions",
    "TensorRTOptions",
    "replace_options",
]


# format -> the first weight layers it keeps in float by default. Measured through the export with the ladder
# (digits at 128 px, 359 test images, README): OpenVINO with 3 loses +0.28 pt on the linear probe and gains 0.28 on
# the finetune (with 2: +0.56 and +0.00); ONNX Runtime with 3 fails the linear probe even after the accuracy-aware
# search (+1.67 pt), with 2 it passes there (+0.28).
FLOAT_FIRST_LAYERS: dict[str, int] = {"onnx-int8": 2, "openvino-int8": 3}


@dataclass(frozen=True)
class QuantizationOptions:
    """How int8 formats are made. `target_cpu` (see `runtimes.cpu.TARGET_CPUS`) is the CPU the bundle will run on,
    never the host's: "portable" (default) is safe on every CPU. `reduce_range` overrides its weight range.

    `float_first_layers`: onnx-int8 and openvino-int8 keep the first N weight layers (in our backbones the stem
    convolution, the first depthwise one and the pointwise one after it: 4-6% of the MACs) in float; None takes
    each format's default (`FLOAT_FIRST_LAYERS`). Measured on the digits finetune (benchmarks/int8_ptq.py): the
    first two cause most of the post-training loss, 7.8 of 7.8 points in ONNX Runtime and 9.2 of 9.5 in OpenVINO.
    0 quantises every layer.

    `fallback` (the ladder): an onnx-int8/openvino-int8 bundle that fails its gate after post-training
    quantisation is made again with the accuracy-aware search (tuned on the val split), and refused only if that
    fails too; `accuracy_aware` starts on that rung. `min_int8_share`: the gate refuses an int8 bundle whose int8
    layers do less than this share of the multiply-adds (`converters.int8_share`), so a search that leaves most of
    the network in float cannot pass as int8."""

    method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    accuracy_aware: bool = False
    target_cpu: str = DEFAULT_TARGET_CPU
    float_first_layers: int | None = None
    fallback: bool = True
    min_int8_share: float = 0.5

    def float_layers_for(self, format_name: str) -> int:
        """How many first weight layers `format_name` keeps in float: `float_first_layers`, or the format's default."""
        return self.float_first_layers if self.float_first_layers is not None else FLOAT_FIRST_LAYERS.get(format_name, 0)


@dataclass(frozen=True)
class TensorRTOptions:
    """The engine build of the tensorrt formats (the engine itself is built on the device). The batch range
    defaults to 1..16 tuned for 1 (see `runtimes.engines.tensorrt_engine.derive_profile`); a DLA core needs one batch size."""

    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mib: int = BuildSettings.workspace_mib
    dla_core: int | None = None
    gpu_fallback: bool = BuildSettings.gpu_fallback
    hardware_compatible: bool = BuildSettings.hardware_compatible
    version_compatible: bool = BuildSettings.version_compatible
    opt_tokens: int | None = None  # text bundles: the length the engine is tuned for (default 64, or the token limit if lower)

    @classmethod
    def from_any(cls, value: TensorRTOptions | Mapping[str, Any] | None) -> TensorRTOptions:
        """These options from an instance, a dict of option names (as `export(tensorrt={...})` takes) or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"tensorrt options must be TensorRTOptions or a dict, got {type(value).__name__}")
        return replace_options(cls(), value, what="TensorRT")

    def build_settings(self, batch_size: int | None, precision: str, max_tokens: int | None = None) -> BuildSettings:
        """`runtimes.engines.tensorrt_engine.BuildSettings` for a bundle of this batch and precision (and, for text, token
        limit: the profile then spans 1..max_tokens tokens); InputError names what is wrong."""
        if self.opt_tokens is not None and max_tokens is None:
            raise InputError("--trt-opt-tokens is for text bundles (their sequence-length profile)")
        profile = derive_profile(
            batch_size if batch_size is not None else "batch",
            opt_batch=self.opt_batch,
            max_batch=self.max_batch,
            static=self.dla_core is not None,
        )
        return BuildSettings(
            precision=precision,
            profile=profile,
            workspace_mib=self.workspace_mib,
            dla_core=self.dla_core,
            gpu_fallback=self.gpu_fallback,
            hardware_compatible=self.hardware_compatible,
            version_compatible=self.version_compatible,
            tokens=None if max_tokens is None else derive_token_profile(max_tokens, self.opt_tokens),
        )


# `export(...)` keyword names that set a field of ExportOptions.quantization, and the field each sets
QUANTIZATION_KEYWORDS = {
    "calibration_method": "method",
    "per_channel": "per_channel",
    "reduce_range": "reduce_range",
    "accuracy_aware": "accuracy_aware",
    "target_cpu": "target_cpu",
    "float_first_layers": "float_first_layers",
    "fallback": "fallback",
    "min_int8_share": "min_int8_share",
}


OUTPUTS = ("logits", "embedding", "extensible")


@dataclass(frozen=True)
class ExportOptions:
    """Everything `export` takes besides the run and the output directory; each field's default is the one default.

    format: one name or a comma-separated list (see `converters.export.FORMATS`). backbone/strategy/image_size:
    export a source model as it is instead of a run. data: held-out validation data (default: the run's test split).
    calibration_data/calibration_size: int8 calibration images (default: drawn, seeded, from the training split).
    max_drop: the accuracy gate, in points below torch fp32. min_agreement: top-1 agreement floor (default per
    precision). batch_size: a fixed batch (default dynamic). self_test_size: golden images for `check`.
    output: "logits" (a classifier), "embedding" (L2-normalised features, no classes) or "extensible" (a classifier
    that also outputs its head's features, with replay data to add classes on the device); features: the layers the
    embedding of `--backbone` comes from (`edge_transfer.layers`; a run's embedding is its probe's features).
    text_column/label_column: the columns of text tables given as data (default: the run's, or text and label).
    """

    format: str | tuple[str, ...] = DEFAULT_FORMAT
    backbone: str | None = None
    strategy: str = "pretrained"
    image_size: int | None = None
    output: str = "logits"
    features: str | None = None
    data: str | None = None
    calibration_data: str | None = None
    calibration_size: int = 300
    text_column: str | None = None  # text tables of --data / --calibration-data (default: the run's, or "text")
    label_column: str | None = None
    max_drop: float = 1.0
    min_agreement: float | None = None
    batch_size: int | None = None
    self_test_size: int = DEFAULT_SELF_TEST_SIZE
    allow_failed_validation: bool = False
    overwrite: bool = False
    sign_key: str | None = None  # a private key (edge-transfer keygen): each bundle is signed before it is published
    skip_bad: bool = False  # leave unreadable images of --data / --calibration-data out (listed in the log) instead of stopping
    skip_existing: bool = False  # keep formats already exported at out (an interrupted multi-format export) and export the rest
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)

    def with_overrides(self, **overrides: Any) -> ExportOptions:
        """A copy with keyword overrides: any field, the flat quantisation names (`calibration_method`,
        `per_channel`, `reduce_range`, `accuracy_aware`, `target_cpu`, `float_first_layers`, `fallback`,
        `min_int8_share`), and `tensorrt` as options or a dict."""
        quantization = {QUANTIZATION_KEYWORDS[k]: overrides.pop(k) for k in list(overrides) if k in QUANTIZATION_KEYWORDS}
        if "tensorrt" in overrides:
            overrides["tensorrt"] = TensorRTOptions.from_any(overrides["tensorrt"])
        if isinstance(overrides.get("format"), list):
            overrides["format"] = tuple(overrides["format"])
        options = replace_options(self, overrides, what="export")
        if quantization:
            options = dataclasses.replace(options, quantization=dataclasses.replace(options.quantization, **quantization))
        check_bounds({**vars(options), **vars(options.quantization), **{f"trt_{k}": v for k, v in vars(options.tensorrt).items()}})
        if options.output not in OUTPUTS:
            raise InputError(f"output (--output) must be one of {', '.join(OUTPUTS)}, got {options.output!r}")
        if options.overwrite and options.skip_existing:
            raise InputError("overwrite (--overwrite) replaces existing bundles and skip_existing (--skip-existing) keeps them: choose one")
        return options
