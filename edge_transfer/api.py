"""The Python API: everything the CLI does is one call here (`train`, `export`, `demo`; `load` is runtimes')."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import CheckpointError, DatasetError, EdgeTransferError, InputError

from .config import DEFAULT_BACKBONE, TrainConfig

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


@dataclass
class TrainedRun:
    """A finished training run on disk."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    data: Any = "digits",
    *,
    out: str | os.PathLike[str],
    backbone: str = DEFAULT_BACKBONE,
    strategy: str = TrainConfig.strategy,
    image_size: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = 1.0,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = TrainConfig.batch_size,
    unfreeze_blocks: int = TrainConfig.unfreeze_blocks,
    seed: int = TrainConfig.seed,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    skip_bad: bool = False,
    device: str = TrainConfig.device,
    mixed_precision: str = TrainConfig.mixed_precision,
    num_workers: int | None = None,
    feature_batch_size: int | None = None,
    cache_dir: str | None = None,
    pretrained: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    log: Log = _quiet,
) -> TrainedRun:
    """Transfer-learn `backbone` onto `data` ("digits", an image-folder path, or an `ImageDataset`) and save a run.

    The run directory holds model.safetensors and config.json (metrics, split, data fingerprint): no pickle.
    finetune/partial checkpoint every epoch to `<out>.checkpoint` (removed once the run is saved); `resume=True`
    continues from it. Under `accelerate launch` / `torchrun` every process calls this; only the main one writes.
    `batch_size` is the global batch, split across processes.
    """
    from runtimes.preprocess import PreprocessConfig

    from .backbones import create_backbone
    from .checkpoint import checkpoint_dir_for
    from .data import ImageDataset, load_dataset, stratified_split
    from .distributed import distributed_rank, wait_for_all_ranks
    from .model import save_run
    from .training import fit

    if distributed_rank() != 0:  # under accelerate launch / torchrun only the main process speaks
        log, progress = _quiet, False
    ckpt = checkpoint_dir_for(Path(out))
    if Path(out).exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --overwrite to replace it")
    if ckpt.exists() and not resume and not overwrite:
        raise CheckpointError(f"{ckpt} holds the checkpoint of an interrupted run: pass --resume to continue it, or --overwrite to start over")
    t0 = time.perf_counter()
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, skip_bad=skip_bad)
    splits = stratified_split(dataset.targets, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, classes=dataset.classes)
    bb = create_backbone(backbone, pretrained=pretrained)
    if image_size:
        bb.preprocessing = bb.preprocessing.with_size(image_size)
    if strategy != "pretrained":  # new task: the whole image by default, not ImageNet's 87.5% centre crop
        changes = {k: v for k, v in (("interpolation", interpolation), ("crop_pct", crop_pct)) if v is not None}
        bb.preprocessing = PreprocessConfig.from_dict({**bb.preprocessing.to_dict(), **changes})
    log(
        f"data: {dataset.name} ({len(dataset)} images, {len(dataset.classes)} classes; "
        f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}); "
        f"backbone {bb.name} at {bb.preprocessing.input_size[0]}x{bb.preprocessing.input_size[1]}; strategy {strategy}"
    )
    cfg = TrainConfig(
        strategy=strategy,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        unfreeze_blocks=unfreeze_blocks,
        seed=seed,
        device=device,
        mixed_precision=mixed_precision,
        num_workers=num_workers,
        feature_batch_size=feature_batch_size,
        cache_dir=cache_dir,
        checkpoint_dir=str(ckpt),
        resume=resume,
        progress=progress,
    )
    if resume and not (ckpt / "state.json").is_file():
        log(f"resume: no checkpoint at {ckpt}; starting from the beginning")
    elif overwrite and not resume and ckpt.exists() and distributed_rank() == 0:
        shutil.rmtree(ckpt)
    wait_for_all_ranks()
    result = fit(bb, dataset, splits, cfg, log=log)
    model = result.model
    head_cfg = (
        {"type": "source"}
        if strategy == "pretrained"
        else {"type": "linear", "in_features": bb.num_features, "num_classes": len(dataset.classes), "dropout": 0.0}
    )
    data_info = dict(dataset.info, fingerprint=dataset.fingerprint(), count=len(dataset), skip_bad=skip_bad)
    if not isinstance(data, ImageDataset):
        data_info["source"] = str(data)
    config = {
        "backbone": backbone,
        "head": head_cfg,
        "strategy": strategy,
        "labels": list(model.labels),
        "preprocessing": model.preprocessing.to_dict(),
        "source": dict(bb.source, backbone=bb.name, strategy=strategy),
        "data": data_info,
        "split": splits.describe(),
        "metrics": result.metrics,
        "training": result.details,
        "history": result.history,
    }
    path = Path(out)
    if distributed_rank() == 0:  # one complete artifact, written by the main process only
        save_run(out, model, config, overwrite=overwrite)
        shutil.rmtree(ckpt, ignore_errors=True)
    wait_for_all_ranks()
    return TrainedRun(path, result.metrics, config, round(time.perf_counter() - t0, 2), result.history)


# ------------------------------------------------------------------------------------------------ export


@dataclass
class _ExportData:
    """Where an export's data comes from: held-out reference, calibration (train split) and tuning (val split)."""

    dataset: Any
    splits: Any
    source: str
    seed: int


def _run_data(config: dict[str, Any], data: str | None = None) -> _ExportData:
    """Rebuild a run's dataset and its exact seeded split (the data must be unchanged since training)."""
    from .data import load_dataset, stratified_split

    info = config.get("data", {})
    source = data or info.get("source")
    if not source:
        raise DatasetError("this run was trained on in-memory data: pass --data (a folder or 'digits') for validation")
    dataset = load_dataset(source, skip_bad=bool(info.get("skip_bad")))
    if data is None and dataset.fingerprint() != info.get("fingerprint"):
        raise DatasetError(
            f"{source}: the dataset changed since training, so its held-out split cannot be reproduced; "
            "restore it or pass --data with held-out data to validate against"
        )
    if list(dataset.classes) != list(config["labels"]):
        raise DatasetError(f"{source}: classes {dataset.classes} differ from the run's labels {config['labels']}")
    split = config.get("split", {})
    seed = int(split.get("seed", 0))
    splits = stratified_split(
        dataset.targets,
        val_fraction=split.get("val_fraction", 0.15),
        test_fraction=split.get("test_fraction", 0.2),
        seed=seed,
        classes=dataset.classes,
    )
    return _ExportData(dataset, splits, str(source), seed)


def _reference(d: _ExportData, indices: np.ndarray, split: str, cfg: Any, model_labels: list[str] | None):
    """Prepared images of `indices` with targets in the model's label space (None when the labels do not match)."""
    from converters.validate import ReferenceData

    images = d.dataset.prepared_batch(indices, cfg)
    targets = d.dataset.targets[indices]
    matched = True
    if model_labels is not None and list(model_labels) != list(d.dataset.classes):
        matched = all(c in model_labels for c in d.dataset.classes)
        if matched:
            lookup = np.asarray([model_labels.index(c) for c in d.dataset.classes])
            targets = lookup[targets]
    desc = {"source": d.source, "count": int(len(indices))}
    if model_labels is not None and list(model_labels) != list(d.dataset.classes):
        desc["labels_match_model"] = matched
    return ReferenceData(images, targets if matched else None, split, desc)


def _calibration(d: _ExportData, indices: np.ndarray, split: str, size: int, cfg: Any):
    """A seeded draw of `size` images (all when fewer) from `indices`, prepared like everything else."""
    from converters.calibration import CalibrationData

    if size < 1:
        raise InputError(f"--calibration-size must be >= 1, got {size}")
    rng = np.random.default_rng(d.seed)
    picks = rng.permutation(indices)[: min(size, len(indices))]
    return CalibrationData(
        d.dataset.prepared_batch(picks, cfg),
        split,
        [d.dataset.describe_item(int(i)) for i in picks],
        seed=d.seed,
        source=d.source,
    )


def _main_process_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Under `torchrun` / `accelerate launch`, run `fn` on rank 0 alone: one writer per artifact.

    With a process group up (e.g. after `train` in the same script) the other ranks wait and get rank 0's result,
    or raise its error. Without one (the command itself launched on several processes) they return `[]` at once.
    """

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> Any:
        import pickle

        import torch.distributed as dist

        from .distributed import distributed_rank

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return fn(*args, **kwargs) if distributed_rank() == 0 else []
        box: list[Any] = [None]
        error: BaseException | None = None
        if dist.get_rank() == 0:
            try:
                box = [("result", fn(*args, **kwargs))]
            except Exception as exc:  # every rank raises it; rank 0 keeps its own traceback
                error = exc
                try:
                    pickle.dumps(exc)
                    box = [("error", exc)]
                except Exception:
                    box = [("error", EdgeTransferError(f"rank 0 failed: {type(exc).__name__}: {exc}"))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "error":
            raise value
        return value

    return on_rank_zero


@_main_process_only
def export(
    run: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    format: str | list[str] = "onnx",
    backbone: str | None = None,
    strategy: str = "pretrained",
    image_size: int | None = None,
    data: str | None = None,
    calibration_data: str | None = None,
    calibration_size: int = 300,
    calibration_method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool | None = None,
    target_cpu: str = "portable",
    accuracy_aware: bool = False,
    max_drop: float = 1.0,
    min_agreement: float | None = None,
    batch_size: int | None = None,
    allow_failed_validation: bool = False,
    overwrite: bool = False,
    tensorrt: dict[str, Any] | None = None,
    self_test_size: int = 16,
    log: Log = _quiet,
):
    """Export a training run (or, with `backbone`, the source model as it is) to validated bundles, one per format.

    `format` is one name or a comma-separated list (see `converters.export.FORMATS`); with several, each bundle
    goes to `out/<format>`. Validation uses the run's held-out test split (or all of `data`); int8 calibration
    draws `calibration_size` images from the training split (or from `calibration_data`); accuracy-aware
    quantisation tunes on the val split; `target_cpu` is the CPU the int8 bundles will run on ("portable", "x86-avx2",
    "x86-vnni", "arm64"; see `runtimes.cpu.TARGET_CPUS`). `max_drop` is in accuracy points. `tensorrt` sets the engine build of
    tensorrt formats (opt_batch, max_batch, workspace_mib, dla_core, gpu_fallback, hardware_compatible,
    version_compatible); the engine itself is built on the device. Each bundle carries a self-test of
    `self_test_size` golden images (`edge-transfer check`). Returns a list of
    `converters.export.ExportResult`; raises `ValidationFailed` (with the table) if any format was not written.
    Under a launcher only rank 0 exports (see `_main_process_only`).
    """
    from converters.export import FORMAT_SPECS, QuantizationOptions, export_bundles, parse_formats, raise_for_failures

    from .backbones import create_backbone
    from .data import load_dataset, stratified_split
    from .model import ImageClassifier, load_run

    if (run is None) == (backbone is None):
        raise InputError("export needs either a training run directory or --backbone NAME --strategy pretrained")
    if not 0 <= max_drop <= 100:
        raise InputError(f"--max-drop is in accuracy points (0-100), got {max_drop}")
    formats = parse_formats(format)
    if run is not None:
        model, config = load_run(run)
        try:
            own = _run_data(config)
        except DatasetError:
            if data is None:
                raise
            own = None  # validating on --data alone; calibration/tuning then need their own source
        held_out = _run_data(config, data) if data is not None else own
        cfg = model.preprocessing
        if data is not None:
            assert held_out is not None
            reference = _reference(held_out, np.arange(len(held_out.dataset)), "all", cfg, None)
        else:
            assert own is not None  # _run_data raised otherwise
            reference = _reference(own, own.splits.test, "test", cfg, None)
        source = dict(config.get("source", {}), run=str(run), training_metrics=config.get("metrics", {}))
        labels = None
    else:
        if strategy != "pretrained":
            raise InputError(f"export --backbone uses the source model as it is (--strategy pretrained); for {strategy!r}, train first")
        bb = create_backbone(backbone or DEFAULT_BACKBONE, pretrained=True)
        if image_size:
            bb.preprocessing = bb.preprocessing.with_size(image_size)
        if bb.source_head is None or bb.labels is None:
            raise InputError(f"{bb.name} has no classifier of its own to use as it is; train a head on your data first")
        model = ImageClassifier(bb, bb.source_head, bb.labels).eval()
        cfg = model.preprocessing
        ds = load_dataset(data or "digits")
        own = _ExportData(ds, stratified_split(ds.targets, seed=0, classes=ds.classes), str(data or "digits"), 0)
        labels = list(bb.labels) if bb.labels else None
        reference = _reference(own, own.splits.test, "test", cfg, labels)
        source = dict(bb.source, backbone=bb.name, strategy="pretrained")
    needs_int8 = any(FORMAT_SPECS[f].calibrated for f in formats)
    calibration = tuning = None
    if needs_int8:
        if calibration_data is not None:
            cal_ds = load_dataset(calibration_data)
            cal = _ExportData(cal_ds, None, str(calibration_data), 0)
            calibration = _calibration(cal, np.arange(len(cal_ds)), "calibration-data", calibration_size, cfg)
        else:
            if own is None:
                raise DatasetError("the run's training data cannot be reloaded for int8 calibration; pass --calibration-data DIR")
            calibration = _calibration(own, own.splits.train, "train", calibration_size, cfg)
        log(f"calibration: {len(calibration)} images from the {calibration.split} split of {calibration.source}")
    if accuracy_aware and any(f in ("onnx-int8", "openvino-int8") for f in formats):
        if own is None:
            raise DatasetError("the run's training data cannot be reloaded for accuracy-aware tuning (its val split)")
        tuning = _reference(own, own.splits.val, "val", cfg, labels)
    results = export_bundles(
        model.for_export(),
        out,
        formats=formats,
        preprocessing=cfg,
        labels=list(model.labels),
        reference=reference,
        calibration=calibration,
        tuning=tuning,
        source=source,
        batch_size=batch_size,
        max_drop=max_drop / 100.0,
        min_agreement=min_agreement,
        allow_failed_validation=allow_failed_validation,
        overwrite=overwrite,
        log=log,
        tensorrt=tensorrt,
        self_test_size=self_test_size,
        quantization=QuantizationOptions(
            method=calibration_method, per_channel=per_channel, reduce_range=reduce_range, target_cpu=target_cpu, accuracy_aware=accuracy_aware
        ),
    )
    raise_for_failures(results, out, accuracy_aware=accuracy_aware)
    return results


# ------------------------------------------------------------------------------------------------ demo


def demo(
    out: str | os.PathLike[str] = "demo-output",
    *,
    image_size: int | None = 128,
    interpolation: str = "bilinear",
    backbone: str = "efficientnet_lite0",
    strategy: str = "linear-probe",
    epochs: int | None = None,
    progress: bool = True,
    log: Log = _quiet,
) -> dict[str, Any]:
    """digits -> transfer-learn -> ONNX bundle -> validation -> predictions through `runtimes` alone. Returns a summary.

    Defaults (128 px, bilinear) are what the 8x8 digits need: bicubic upsampling of such tiny images rings.
    """
    import runtimes

    from .data import load_digits_dataset, stratified_split

    out = Path(out)
    run_dir, bundle_dir = out / "run", out / "bundle"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    trained = train(
        "digits",
        out=run_dir,
        backbone=backbone,
        strategy=strategy,
        image_size=image_size,
        interpolation=interpolation,
        epochs=epochs,
        progress=progress,
        overwrite=True,
        log=log,
    )
    timings["train"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    (exported,) = export(run_dir, out=bundle_dir, overwrite=True, log=log)
    timings["export_and_validate"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    predictor = runtimes.load(bundle_dir)
    timings["load_bundle"] = round(time.perf_counter() - t, 3)
    dataset = load_digits_dataset()
    splits = stratified_split(dataset.targets, seed=0)
    picks = splits.test[:5]
    t = time.perf_counter()
    preds = predictor.predict([dataset.items[i] for i in picks], top_k=1)
    timings["predict_5_images"] = round(time.perf_counter() - t, 3)
    v = exported.validation
    return {
        "backbone": backbone,
        "strategy": strategy,
        "image_size": list(predictor.preprocessing.input_size),
        "run": str(run_dir),
        "bundle": str(bundle_dir),
        "bundle_bytes": exported.size_bytes,
        "metrics": trained.metrics,
        "validation": {k: v[k] for k in ("split", "count", "torch_accuracy", "artifact_accuracy", "top1_agreement", "max_abs_logit_diff", "passed")},
        "runtime": predictor.describe(),
        "predictions": [
            {"image": f"digits[{int(i)}]", "true": dataset.classes[dataset.targets[i]], "predicted": p[0].label, "score": round(p[0].score, 4)}
            for i, p in zip(picks, preds)
        ],
        "timings_s": timings,
    }
