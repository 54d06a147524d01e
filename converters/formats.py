"""Export formats: one `FormatSpec` per `--format`, each with the builder that writes its model files
(docs/ARCHITECTURE.md, "A new export format"). Validation, the self-test, the manifest and the atomic write are
the same for every format (converters/export.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.cpu import TARGET_CPUS, reduce_range_for
from runtimes.errors import InputError

from .calibration import CalibrationData
from .onnx_export import INPUT_NAME
from .options import QuantizationOptions, TensorRTOptions
from .qat_formats import QatSource
from .validate import CONFIDENT, MIN_CONFIDENT_IMAGES, UNLABELLED_INT8_GATE, ReferenceData, softmax

# (conversion settings for the manifest, calibration record or None, extra producer versions)
Built = tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]


@dataclass
class ExportJob:
    """Everything shared by the formats of one export call."""

    work: Path
    base_onnx: Path
    input: Any  # the modality's `converters.export_input.ExportInput` (images or text)
    batch_size: int | None
    calibration: CalibrationData | None
    quantization: QuantizationOptions
    tuning: ReferenceData | None
    tuning_logits: np.ndarray | None
    max_drop: float  # a fraction (0.01 = 1 accuracy point)
    tensorrt: TensorRTOptions
    golden: Any  # the self-test's `converters.golden.GoldenSet`, or None for no self-test
    calibration_overlap: int = 0  # validation images that are also calibration images (recorded with the gate)
    qat: QatSource | None = None  # a quantisation-aware run: base_onnx is its QDQ graph (converters/qat_formats.py)
    kind: Any = None  # the `converters.bundle_kind.BundleKind`: what comes out, how it is judged, the files it adds
    _cache: dict[str, Path] = field(default_factory=dict)  # shared by the copies each rung of the ladder makes
    _fp32_calls: dict[str, Any] = field(default_factory=dict)  # per backend, made once (latency.py)

    @property
    def feed_batch(self) -> int:
        return self.batch_size or 1

    def preprocessed(self) -> Path:
        """The fp32 graph after onnxruntime's quantisation pre-processing (made once, shared by int8 formats)."""
        if "preprocessed" not in self._cache:
            from .onnx_quantize import preprocess_for_quantization

            symbolic = self.input.symbolic_shapes
            preprocess_for_quantization(self.base_onnx, self.work / "preprocessed.onnx", symbolic_shapes=symbolic)
            self._cache["preprocessed"] = self.work / "preprocessed.onnx"
        return self._cache["preprocessed"]

    def fp32_call(self, backend: str) -> Callable[[np.ndarray], Any] | None:
        """The plain fp32 graph's call on `backend`, made once per export (None where this host cannot run it)."""
        if backend not in self._fp32_calls:
            from .latency import fp32_call

            fp32_graph = self.base_onnx if self.qat is None else self.qat.fp32_onnx
            self._fp32_calls[backend] = fp32_call(backend, fp32_graph, self.input.feeds) if fp32_graph is not None else None
        return self._fp32_calls[backend]

    def reduce_range(self) -> dict[str, Any]:
        """The int8 weight range for the target CPU (not this host's), with the reason; recorded in the manifest."""
        target = self.quantization.target_cpu
        if self.quantization.reduce_range is not None:
            return {"name": target, "reduce_range": self.quantization.reduce_range, "reason": "set by the caller"}
        return {"name": target, "reduce_range": reduce_range_for(target), "reason": TARGET_CPUS[target][1]}

    def tuning_target(self) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, Any]]:
        """(images, expected top-1, torch's metric, allowed drop, description) for accuracy-aware search."""
        if self.tuning is None or self.tuning_logits is None:
            raise InputError("accuracy-aware quantisation needs tuning data (a split other than the held-out one)")
        top1 = self.tuning_logits.argmax(1)
        if self.tuning.targets is not None:
            baseline = float((top1 == self.tuning.targets).mean())
            return self.tuning.images, self.tuning.targets, baseline, self.max_drop, {"metric": "accuracy"}
        # no labels: torch's answer where torch is confident, as the unlabelled gate judges (all images if none is)
        confident = softmax(self.tuning_logits).max(1) >= CONFIDENT
        pick = confident if confident.sum() >= MIN_CONFIDENT_IMAGES else np.ones(len(top1), bool)
        allowed = 1.0 - UNLABELLED_INT8_GATE["confident_agreement"]
        desc = {"metric": "top-1 agreement with fp32" + (" where fp32 is confident" if pick is confident else ""), "count": int(pick.sum())}
        return self.tuning.images[pick], top1[pick], 1.0, allowed, desc


@dataclass(frozen=True)
class FormatSpec:
    """What one `--format` produces: backend, precision, file layout, and whether it needs calibration data."""

    name: str
    backend: str
    precision: str
    model_format: str
    entrypoint: str
    calibrated: bool = False
    description: str = ""
    builder: Callable[[ExportJob, FormatSpec, Path], Built] | None = field(default=None, compare=False, repr=False)
    tunable: bool = False  # accuracy-aware quantisation can keep its sensitive layers in float

    def build(self, job: ExportJob, out_dir: Path) -> Built:
        """Write this format's model files into `out_dir` (see `Built`)."""
        if job.qat is not None and self.precision == "int8":
            from .qat_formats import build_from_qdq

            return build_from_qdq(job, self, out_dir)
        if self.builder is None:
            raise InputError(f"format {self.name} has no builder")
        return self.builder(job, self, out_dir)


def build_onnx(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    """The fp32 graph as torch.onnx wrote it."""
    shutil.copyfile(job.base_onnx, out_dir / spec.entrypoint)
    return {"tool": "torch.onnx"}, None, {}


def build_onnx_fp16(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    from .onnx_quantize import convert_fp16

    return convert_fp16(job.base_onnx, out_dir / spec.entrypoint), None, {}


def build_onnx_int8_dynamic(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    from .onnx_quantize import quantize_int8_dynamic

    rr = job.reduce_range()
    settings = quantize_int8_dynamic(job.preprocessed(), out_dir / spec.entrypoint, reduce_range=rr["reduce_range"])
    return dict(settings, reduce_range_reason=rr["reason"], target_cpu=rr), None, {}


def build_openvino_ir(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    from . import openvino_convert as ovc

    return ovc.save_ir(ovc.read_onnx(job.base_onnx), out_dir, fp16=spec.precision == "fp16"), None, {}


def _calibration(job: ExportJob, spec: FormatSpec) -> CalibrationData:
    if job.calibration is None:  # export_bundles checks this before any work; this guards direct callers
        raise InputError(f"{spec.name} needs calibration data")
    return job.calibration


def build_onnx_int8(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    """Static QDQ int8 with ONNX Runtime's quantiser, optionally accuracy-aware (sensitive nodes kept in float)."""
    from .onnx_quantize import first_weight_nodes, quantize_int8_accuracy_aware, quantize_int8_static

    data, q, target = _calibration(job, spec), job.quantization, out_dir / spec.entrypoint
    calibration = dict(data.provenance())
    rr = job.reduce_range()
    exclude = first_weight_nodes(job.preprocessed(), q.float_layers_for(spec.name))
    options = {"method": q.method, "per_channel": q.per_channel, "reduce_range": rr["reduce_range"], "exclude": exclude}
    if q.accuracy_aware:
        images, expected, baseline, allowed, desc = job.tuning_target()
        settings = quantize_int8_accuracy_aware(
            job.preprocessed(),
            target,
            data,
            input_name=INPUT_NAME,
            tuning_images=images,
            expected=expected,
            baseline=baseline,
            max_drop=allowed,
            feed_batch=job.feed_batch,
            **options,
        )
        settings["accuracy_aware"].update(desc, split=job.tuning.split if job.tuning else None)
    else:
        settings = quantize_int8_static(job.preprocessed(), target, data, input_name=INPUT_NAME, feed_batch=job.feed_batch, **options)
    settings["reduce_range_reason"] = rr["reason"]
    settings["target_cpu"] = rr
    settings["float_first_layers"] = q.float_layers_for(spec.name)
    calibration.update(method=q.method, per_channel=q.per_channel)
    return settings, calibration, {}


def build_openvino_int8(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    """NNCF post-training int8 (optionally with accuracy control), saved as IR."""
    from . import openvino_convert as ovc

    nncf = ovc.import_nncf()

    data = _calibration(job, spec)
    calibration = dict(data.provenance())
    model = ovc.read_onnx(job.base_onnx)
    control = None
    if job.quantization.accuracy_aware:
        images, expected, baseline, allowed, desc = job.tuning_target()
        control = {"images": images, "expected": expected, "max_drop": allowed, "split": job.tuning.split if job.tuning else None}
    rr = job.reduce_range()
    quantized, settings = ovc.quantize_int8(
        model,
        data,
        accuracy_control=control,
        feed_batch=job.batch_size,
        overflow_fix="enable" if rr["reduce_range"] else "disable",
        float_first_layers=job.quantization.float_layers_for(spec.name),
        model_type=job.input.nncf_model_type,
    )
    settings["target_cpu"] = rr
    if control is not None:
        settings["accuracy_control"].update(desc, baseline=round(baseline, 6))
    settings.update(ovc.save_ir(quantized, out_dir, fp16=False), weights="int8")
    calibration.update(method="minmax (NNCF)", per_channel=True)
    return settings, calibration, {"nncf": nncf.__version__}


def build_tensorrt(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    """A TensorRT-ready ONNX plus the engine build settings; the engine itself is built on the device."""
    target = out_dir / spec.entrypoint
    engine = job.input.engine_settings(job.tensorrt, job.batch_size, spec.precision).to_dict()
    if spec.precision == "fp32":
        shutil.copyfile(job.base_onnx, target)
        return {"tool": "torch.onnx", "engine": engine}, None, {}
    if spec.precision == "fp16":  # a strongly typed engine takes its precision from the ONNX
        from .onnx_quantize import convert_fp16

        return dict(convert_fp16(job.base_onnx, target), engine=engine), None, {}
    from .onnx_quantize import quantize_int8_static

    if job.calibration is None:
        raise InputError(f"{spec.name} needs calibration data")
    # TensorRT computes int8 with 32-bit accumulation on the GPU: full 8-bit weights, zero points of 0, and float
    # biases (its ONNX parser refuses DequantizeLinear on int32 biases)
    settings = quantize_int8_static(
        job.preprocessed(),
        target,
        job.calibration,
        input_name=INPUT_NAME,
        method=job.quantization.method,
        per_channel=True,
        reduce_range=False,
        feed_batch=job.feed_batch,
        symmetric_activations=True,
        quantize_bias=False,
    )
    calibration = dict(job.calibration.provenance(), method=job.quantization.method, per_channel=True)
    return dict(settings, engine=engine), calibration, {}


FORMAT_SPECS: dict[str, FormatSpec] = {
    s.name: s
    for s in (
        FormatSpec("onnx", "onnxruntime", "fp32", "onnx", "model.onnx", description="ONNX fp32", builder=build_onnx),
        FormatSpec(
            "onnx-fp16",
            "onnxruntime",
            "fp16",
            "onnx",
            "model.onnx",
            description="ONNX, fp16 weights and compute; inputs and fp32 outputs as the fp32 graph's",
            builder=build_onnx_fp16,
        ),
        FormatSpec(
            "onnx-int8",
            "onnxruntime",
            "int8",
            "onnx",
            "model.onnx",
            calibrated=True,
            description="ONNX static int8 (QDQ, per-channel weights)",
            builder=build_onnx_int8,
            tunable=True,
        ),
        FormatSpec(
            "onnx-int8-dynamic",
            "onnxruntime",
            "int8",
            "onnx",
            "model.onnx",
            description="ONNX dynamic int8 (for comparison)",
            builder=build_onnx_int8_dynamic,
        ),
        FormatSpec("openvino", "openvino", "fp32", "openvino-ir", "model.xml", description="OpenVINO IR fp32", builder=build_openvino_ir),
        FormatSpec(
            "openvino-fp16", "openvino", "fp16", "openvino-ir", "model.xml", description="OpenVINO IR, fp16 weights", builder=build_openvino_ir
        ),
        FormatSpec(
            "openvino-int8",
            "openvino",
            "int8",
            "openvino-ir",
            "model.xml",
            calibrated=True,
            description="OpenVINO IR int8 (NNCF)",
            builder=build_openvino_int8,
            tunable=True,
        ),
        FormatSpec(
            "tensorrt",
            "tensorrt",
            "fp32",
            "onnx",
            "model.onnx",
            description="TensorRT-ready ONNX, fp32 engine built on the device",
            builder=build_tensorrt,
        ),
        FormatSpec(
            "tensorrt-fp16",
            "tensorrt",
            "fp16",
            "onnx",
            "model.onnx",
            description="TensorRT-ready fp16 ONNX, fp16 engine built on the device",
            builder=build_tensorrt,
        ),
        FormatSpec(
            "tensorrt-int8",
            "tensorrt",
            "int8",
            "onnx",
            "model.onnx",
            calibrated=True,
            description="TensorRT-ready QDQ ONNX (symmetric int8 from the shared calibration), int8 engine built on the device",
            builder=build_tensorrt,
        ),
    )
}
FORMATS = tuple(FORMAT_SPECS)


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """'onnx,openvino-int8' or a list -> validated, de-duplicated format names in the given order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise InputError(f"no export format given (available: {', '.join(FORMATS)})")
    unknown = [n for n in names if n not in FORMAT_SPECS]
    if unknown:
        raise InputError(f"unknown export format(s) {', '.join(map(repr, unknown))} (available: {', '.join(FORMATS)})")
    return list(dict.fromkeys(names))
