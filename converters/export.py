"""Export a torch classifier to validated bundles, one per format.

Flow: export the fp32 ONNX graph once into a private work directory; for each format, convert it (fp16, int8,
OpenVINO IR) into a hidden temp directory, stage a manifest, load the staged bundle through `runtimes.load`
(checksums and all, as the device will), compare it with the torch reference on held-out data, record the result
in the manifest and publish the bundle atomically. A bundle that fails its gate is not written unless the caller
explicitly allows it (then the manifest says `passed: false`).
"""

from __future__ import annotations

__all__ = ["FORMATS", "FORMAT_SPECS", "ExportResult", "QuantizationOptions", "export_bundle", "export_bundles", "parse_formats", "raise_for_failures"]

import dataclasses
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import runtimes
from runtimes.bundle import BundleWriter
from runtimes.cpu import TARGET_CPUS
from runtimes.errors import EdgeTransferError, InputError, ValidationFailed
from runtimes.manifest import Manifest, utc_now
from runtimes.preprocess import PreprocessConfig
from runtimes.selftest import write_self_test
from runtimes.signing import load_private_key

from .bundle_kind import BundleKind, bundle_kind
from .calibration import CalibrationData
from .existing import check_export_targets, existing_bundles
from .export_input import ExportInput, export_input
from .export_result import ExportResult, raise_for_failures
from .extension import format_features
from .formats import FORMAT_SPECS, FORMATS, ExportJob, FormatSpec, parse_formats
from .fp16_reference import with_fp16_arithmetic
from .int8_share import bundle_int8_share
from .ladder import ladder, rung_record, why_not_climb
from .onnx_export import DEFAULT_OPSET
from .options import DEFAULT_FORMAT, ExportOptions, QuantizationOptions
from .qat_formats import QatSource, fold_pads_into_convs, store_int8_weights
from .speedup import speed_vs_fp32, warn_when_int8_is_not_faster
from .validate import (
    ReferenceData,
    add_check,
    calibration_overlap,
    default_min_agreement,
    format_validation,
)

logger = logging.getLogger(__name__)


def _producer(opset: int, backend: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from runtimes import __version__

    if backend == "openvino":
        import openvino

        backend_version = openvino.__version__
    else:
        import onnxruntime

        backend_version = onnxruntime.__version__
    return {
        "edge_transfer": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "backend": {"name": backend, "version": backend_version},
        **(extra or {}),
        "python": platform.python_version(),
        "host": f"{platform.system()} {platform.machine()}",
    }


def export_bundles(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    preprocessing: PreprocessConfig | ExportInput,
    kind: BundleKind | list[str],
    reference: ReferenceData,
    calibration: CalibrationData | None = None,
    tuning: ReferenceData | None = None,
    source: dict[str, Any] | None = None,
    options: ExportOptions | None = None,
    opset: int = DEFAULT_OPSET,
    qat: QatSource | None = None,
    **overrides: Any,
) -> list[ExportResult]:
    """Export `model` to one validated bundle per format. `preprocessing` is the modality: a `PreprocessConfig` for
    images (uint8 NHWC in), or a `converters.export_input.TextExport` for text (token ids and attention mask in;
    `reference` then holds a `TokenBatch` and keeps its texts). `kind` is what comes out
    (`converters.bundle_kind`): a `Classifier` (a list of labels stands for one), an `Embedding` (L2-normalised
    vectors, judged by cosine and neighbour agreement with torch) or an `Extensible` classifier (a second output
    with the features the head reads, and replay data, so a device can add classes: `runtimes.imprint`).

    `options` (`converters.options.ExportOptions`; keyword arguments override single fields) gives the formats,
    the gate, the batch, quantisation and TensorRT settings; its data-source fields (backbone, data,
    calibration_data, ...) are the caller's business and unused here. One format: the bundle is written at `out`.
    Several: at `out/<format>`. Each is validated against `reference` (held-out data): accuracy may drop at
    most `max_drop` points below torch's, and top-1 agreement must reach `min_agreement` (default by precision,
    see `validate.default_min_agreement`). int8 formats need `calibration` (from the training split);
    `quantization.accuracy_aware` also needs `tuning` (e.g. the val split). A format that fails is reported in its
    result and not written (unless `allow_failed_validation`); the others still run. Errors that concern every
    format (bad arguments, the ONNX export itself) raise. Every bundle carries a self-test (`runtimes.selftest`) of
    `self_test_size` golden inputs drawn from `reference` (0: none). `qat` marks `model` as a quantisation-aware
    run's fake-quantised model: int8 formats only, from its learned scales (`converters.qat_formats`).
    """
    opts = (options or ExportOptions()).with_overrides(**overrides)
    names = parse_formats(opts.format)
    inp = export_input(preprocessing)  # the modality: what the model takes and how it is traced, run and stored
    out_kind = bundle_kind(kind)  # what comes out and how it is judged
    specs = [inp.format_spec(n) for n in names]
    quantization, batch_size, self_test_size = opts.quantization, opts.batch_size, opts.self_test_size
    _check_arguments(opts, inp, out_kind, specs, reference, calibration, tuning, qat)
    targets = check_export_targets(out, names, overwrite=opts.overwrite, skip_existing=opts.skip_existing)
    kept = {
        name: ExportResult(name, targets[name], b, b.manifest.validation, kept=True)
        for name, b in existing_bundles(targets, source, overwrite=opts.overwrite, skip_existing=opts.skip_existing).items()
    }
    if kept:
        logger.info(f"keeping {len(kept)} format(s) already exported: {', '.join(kept)}")
        specs = [s for s in specs if s.name not in kept]
        if not specs:
            return list(kept.values())
    overlap = calibration_overlap(reference, calibration.items) if calibration is not None else 0
    if overlap:
        logger.warning(
            f"{overlap} of the {len(reference.images)} validation images are also calibration images: the int8 gate "
            "then partly judges the images int8 was fitted to; validate on other images (--data)"
        )
    results: list[ExportResult] = []
    with tempfile.TemporaryDirectory(prefix="edge-transfer-export-") as work_dir:
        work = Path(work_dir)
        t = time.perf_counter()
        logger.info(f"exporting the fp32 ONNX graph (opset {opset}, batch {'dynamic' if batch_size is None else batch_size})")
        graph, names_out = out_kind.graph(model), {"output_name": out_kind.output_name, "extra_outputs": out_kind.extra_outputs}
        info = inp.export_onnx(graph, work / "model.onnx", opset=opset, batch_size=batch_size, **names_out)
        if qat is not None:
            info["int8_weights_stored"] = store_int8_weights(work / "model.onnx")
            info["pads_folded_into_convs"] = fold_pads_into_convs(work / "model.onnx")
        base_seconds = time.perf_counter() - t
        if (problem := out_kind.width_problem(info["output_shape"][-1])) is not None:
            raise InputError(problem)
        t = time.perf_counter()
        ref = inp.reference_outputs(model, reference.images)
        out_kind = out_kind.with_reference(model, inp, reference, ref)  # e.g. an embedding's unknown threshold
        tuning_logits = inp.reference_outputs(model, tuning.images) if tuning is not None else None
        if qat is not None and qat.fp32_model is not None:  # the fp32 parent: the gate's baseline and the speed-up's
            qat.fp32_logits = inp.reference_outputs(qat.fp32_model, reference.images)
            inp.export_onnx(qat.fp32_model, work / "fp32.onnx", opset=opset, batch_size=batch_size)
            qat.fp32_onnx = work / "fp32.onnx"
        golden = inp.draw_golden(reference, self_test_size, model, *out_kind.golden_args(model))
        golden = with_fp16_arithmetic(golden, inp, model, {spec.precision for spec in specs})
        ref_seconds = time.perf_counter() - t
        job = ExportJob(
            work,
            work / "model.onnx",
            inp,
            batch_size,
            calibration,
            quantization,
            tuning,
            tuning_logits,
            opts.max_drop / 100.0,
            opts.tensorrt,
            golden,
            calibration_overlap=overlap,
            qat=qat,
            kind=out_kind,
        )
        batch_dim: int | str = "batch" if batch_size is None else batch_size
        common = {
            **inp.manifest_fields(batch_dim),
            **out_kind.manifest_fields(batch_dim),
            "source": dict(source or {}, export=info),
            "schema_version": max(out_kind.schema_version, inp.schema_version),
        }
        seconds = {"onnx_export": base_seconds, "torch_reference": ref_seconds}
        for spec in specs:
            try:
                results.append(_climb(job, spec, targets[spec.name], common, ref, reference, opts, opset, seconds))
            except ValidationFailed:
                raise
            except EdgeTransferError as exc:
                if len(specs) == 1:
                    raise
                logger.error(f"{spec.name}: {exc}")
                results.append(ExportResult(spec.name, targets[spec.name], None, None, error=str(exc)))
    warn_when_int8_is_not_faster(results)
    by_name = {r.format: r for r in [*results, *kept.values()]}
    return [by_name[name] for name in targets]


def _check_arguments(
    opts: ExportOptions,
    inp: ExportInput,
    out_kind: BundleKind,
    specs: list[FormatSpec],
    reference: ReferenceData,
    calibration: CalibrationData | None,
    tuning: ReferenceData | None,
    qat: QatSource | None,
) -> None:
    """Refuse, before any work, what concerns every format: bad options, data the model does not take, missing
    calibration or tuning data, what the kind cannot be exported with, engine settings TensorRT cannot build."""
    quantization, batch_size, self_test_size = opts.quantization, opts.batch_size, opts.self_test_size
    if opts.min_agreement is not None and not 0.0 <= opts.min_agreement <= 1.0:
        raise InputError(f"min_agreement must be within [0, 1], got {opts.min_agreement}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if quantization.target_cpu not in TARGET_CPUS:
        raise InputError(f"target CPU must be one of {', '.join(TARGET_CPUS)}, got {quantization.target_cpu!r}")
    if not isinstance(self_test_size, int) or self_test_size < 0:
        raise InputError(f"self_test_size must be a whole number >= 0, got {self_test_size!r}")
    if opts.sign_key is not None:
        load_private_key(opts.sign_key)  # a wrong path or password fails now, not after the conversions
    inp.check_data("reference", reference.images)
    if qat is not None:
        qat.check_formats([s.name for s in specs], quantization.target_cpu)
    out_kind.check(inp, qat, quantization.accuracy_aware)
    calibrated = [s.name for s in specs if s.calibrated and qat is None]
    if calibrated and calibration is None:
        raise InputError(f"{', '.join(calibrated)} need calibration data (images from the training split)")
    if calibration is not None:
        inp.check_data("calibration", calibration.images)
    if quantization.accuracy_aware and tuning is None and any(s.tunable for s in specs):
        raise InputError("accuracy-aware quantisation needs tuning data (a split other than the held-out one)")
    for s in specs:
        if s.backend == "tensorrt":  # refuse bad engine options before any work, naming the format
            try:
                inp.engine_settings(opts.tensorrt, batch_size, s.precision)
            except InputError as exc:
                raise InputError(f"format {s.name}: {exc}") from None


def _climb(
    job: ExportJob,
    spec: FormatSpec,
    target: Path,
    common: dict[str, Any],
    ref: np.ndarray,
    reference: ReferenceData,
    opts: ExportOptions,
    opset: int,
    seconds: dict[str, float],
) -> ExportResult:
    """One format up its ladder of rungs (`converters.ladder`) until a bundle passes its gate, or the last rung."""
    logger.info(f"{spec.name}: {spec.description}")
    agreement = opts.min_agreement
    if agreement is None:
        agreement = default_min_agreement(spec.precision, reference.targets is not None)
    can_tune = job.tuning is not None and job.kind.tunable
    rungs = ladder(spec, job.quantization, can_tune=can_tune, qat=job.qat is not None)
    earlier: list[dict[str, Any]] = []
    for i, (rung, rung_quantization) in enumerate(rungs):
        last = i == len(rungs) - 1
        result = _export_one(
            dataclasses.replace(job, quantization=rung_quantization),
            spec,
            target,
            common,
            ref,
            reference,
            agreement,
            opset,
            opts.allow_failed_validation and last,
            opts.overwrite,
            seconds,
            sign_key=opts.sign_key,
            rung=rung,
            earlier=earlier,
        )
        if result.passed or last:
            break
        if (why := why_not_climb(result)) is not None and not opts.allow_failed_validation:
            logger.warning(f"{spec.name}: {why}")  # (with --allow-failed-validation the last rung writes the bundle)
            break
        earlier.append(rung_record(rung, result))
        logger.info(f"{spec.name}: {rung} int8 failed its gate; trying the next rung, {rungs[i + 1][0]}")
    return result


def _export_one(
    job: ExportJob,
    spec: FormatSpec,
    target: Path,
    common: dict[str, Any],
    ref: np.ndarray,
    reference: ReferenceData,
    min_agreement: float | None,
    opset: int,
    allow_failed_validation: bool,
    overwrite: bool,
    seconds: dict[str, float],
    *,
    sign_key: str | None = None,
    rung: str | None = None,
    earlier: list[dict[str, Any]] | None = None,
) -> ExportResult:
    seconds = dict(seconds)
    with BundleWriter(target, overwrite=overwrite, sign_key=sign_key) as writer:
        t = time.perf_counter()
        try:
            conversion, calibration, producer_extra = spec.build(job, writer.dir)
        except EdgeTransferError:
            raise
        except Exception as exc:  # a converter library failing on this graph: report it for this format
            raise EdgeTransferError(f"{spec.name}: conversion failed: {type(exc).__name__}: {exc}") from exc
        seconds["convert"] = time.perf_counter() - t
        job.input.write_files(writer.dir)  # e.g. a text bundle's tokenizer.json
        job.kind.write_files(writer.dir)  # e.g. an extensible classifier's replay data
        share = None
        if spec.precision == "int8":
            share = bundle_int8_share(spec.model_format, writer.dir / spec.entrypoint)
            conversion["int8_share"] = share
        engine = conversion.pop("engine", None) if spec.backend == "tensorrt" else None
        target_cpu = conversion.pop("target_cpu", None)  # int8 on CPUs: which CPUs its kernels are safe on (checked at load)
        per_call = str(conversion.get("activations", "")).startswith("dynamic")  # scales from each call's own rows
        manifest = Manifest(
            created=utc_now(),
            backend=spec.backend,
            precision=spec.precision,
            format=spec.model_format,
            entrypoint=spec.entrypoint,
            files=(),  # filled in by the writer, which hashes what it publishes
            producer=_producer(opset, spec.backend, producer_extra),
            calibration=calibration,
            export_format=spec.name,
            conversion=conversion,
            target_cpu=target_cpu,
            tensorrt=engine,
            rows_per_call=1 if per_call else None,
            **common,
        )
        writer.stage(manifest)
        t = time.perf_counter()
        golden = job.golden
        with _validation_predictor(spec, writer.dir) as predictor:
            gate_ref = ref if job.qat is None else job.qat.gate_reference(ref)
            validation = job.kind.gate(predictor, gate_ref, reference, spec.precision, min_agreement=min_agreement, max_drop=job.max_drop)
            if job.qat is not None:
                validation["quantisation_aware"] = job.qat.fidelity(predictor, ref, reference)
            golden_logits = golden_features = None
            if golden is not None:  # through the artifact's own prepare, as `check` on the device will
                golden_logits = predictor.run_chunked(predictor.prepare(golden.originals))
                golden_features = job.kind.golden_features(predictor, golden)
            speed = speed_vs_fp32(job, spec, predictor, reference.images[:1])
        validation.update(speed)
        if spec.calibrated:
            validation["calibration_overlap"] = job.calibration_overlap
        if share is not None:
            validation["int8_macs_share"] = share["macs_share"]
            validation["min_int8_share"] = job.quantization.min_int8_share
            add_check(validation, "int8_share", share["macs_share"] >= job.quantization.min_int8_share)
        if rung is not None:
            validation["rung"] = rung
            if earlier:
                validation["ladder"] = list(earlier)
        if golden is not None and golden_logits is not None:
            self_test = write_self_test(
                writer.dir,
                golden.reference,
                golden_logits,
                spec.precision,
                validation.get("inference_precision"),
                embedding=manifest.embedding is not None,
                features=golden_features,
                labels=golden.labels,
                fp16_arithmetic=golden.fp16_arithmetic,
                **job.input.golden_files(golden),
            )
            manifest = dataclasses.replace(manifest, self_test=self_test)
        if spec.backend == "tensorrt":
            validation["checked_with"] = (
                "onnxruntime running the TensorRT-ready ONNX as written (no fused kernels); "
                "the engine is checked on the device: edge-transfer build-engine BUNDLE --data DIR"
            )
        seconds["validate"] = time.perf_counter() - t
        logger.info(f"{spec.name}: {format_validation(validation)}{format_features(validation)}")
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        if not validation["passed"]:
            if not allow_failed_validation:
                return ExportResult(spec.name, target, None, validation, seconds, int8_share=share)
            validation["overridden"] = True
            logger.warning(f"{spec.name} failed validation; writing it anyway because that was explicitly allowed")
        bundle = writer.commit(dataclasses.replace(manifest, validation=validation))
    return ExportResult(spec.name, target, bundle, validation, seconds, int8_share=share)


def _validation_predictor(spec: FormatSpec, bundle_dir: Path) -> runtimes.Predictor:
    """The bundle as the device will run it; for TensorRT (whose engine is built on the device) its ONNX, run by
    onnxruntime exactly as written, which is what TensorRT's explicit quantisation implements."""
    if spec.backend != "tensorrt":
        return runtimes.load(bundle_dir)
    from runtimes.backends.onnxruntime_backend import OnnxRuntimePredictor

    return OnnxRuntimePredictor(runtimes.open_bundle(bundle_dir), graph_optimization="disabled")


def export_bundle(model: nn.Module, out: str | os.PathLike[str], *, format: str = DEFAULT_FORMAT, **kwargs: Any) -> ExportResult:
    """One format; raises `ValidationFailed` (nothing written) when it fails its gate and no override was given."""
    (result,) = export_bundles(model, out, format=format, **kwargs)
    raise_for_failures([result], out)
    return result
