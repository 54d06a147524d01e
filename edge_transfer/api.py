"""The Python API: everything the CLI does is one call here (`train`, `export`, `demo`; `load` is runtimes')."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.options import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_FORMAT,
    DEFAULT_MAX_DROP_POINTS,
    DEFAULT_SELF_TEST_SIZE,
    DEFAULT_TARGET_CPU,
    QuantizationOptions,
)
from runtimes.errors import CheckpointError, DatasetError, InputError

from .config import DEFAULT_BACKBONE, TrainConfig
from .distributed import main_process_only
from .export_data import ExportData, draw_calibration, reference_data, run_data

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

    from .checkpoint import checkpoint_dir_for
    from .data import ImageDataset, load_dataset, stratified_split
    from .distributed import distributed_rank, wait_for_all_ranks
    from .model import save_run
    from .sources import create_backbone
    from .training import fit

    if distributed_rank() != 0:  # under accelerate launch / torchrun only the main process speaks
        log, progress = _quiet, False
    ckpt = checkpoint_dir_for(Path(out))
    if Path(out).exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if ckpt.exists() and not resume and not overwrite:
        raise CheckpointError(
            f"{ckpt} holds the checkpoint of an interrupted run: pass resume=True (--resume) to continue it, "
            "or overwrite=True (--overwrite) to start over"
        )
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


@main_process_only
def export(
    run: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    format: str | list[str] = DEFAULT_FORMAT,
    backbone: str | None = None,
    strategy: str = "pretrained",
    image_size: int | None = None,
    data: str | None = None,
    calibration_data: str | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    calibration_method: str = QuantizationOptions.method,
    per_channel: bool = QuantizationOptions.per_channel,
    reduce_range: bool | None = None,
    target_cpu: str = DEFAULT_TARGET_CPU,
    accuracy_aware: bool = False,
    max_drop: float = DEFAULT_MAX_DROP_POINTS,
    min_agreement: float | None = None,
    batch_size: int | None = None,
    allow_failed_validation: bool = False,
    overwrite: bool = False,
    tensorrt: dict[str, Any] | None = None,
    self_test_size: int = DEFAULT_SELF_TEST_SIZE,
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
    Under a launcher only rank 0 exports (see `main_process_only`).
    """
    from converters.export import FORMAT_SPECS, export_bundles, parse_formats, raise_for_failures

    from .data import load_dataset, stratified_split
    from .model import ImageClassifier
    from .sources import create_backbone, load_run

    if (run is None) == (backbone is None):
        raise InputError("export needs either a training run directory or --backbone NAME --strategy pretrained")
    if not 0 <= max_drop <= 100:
        raise InputError(f"--max-drop is in accuracy points (0-100), got {max_drop}")
    formats = parse_formats(format)
    if run is not None:
        model, config = load_run(run)
        try:
            own = run_data(config)
        except DatasetError:
            if data is None:
                raise
            own = None  # validating on --data alone; calibration/tuning then need their own source
        held_out = run_data(config, data) if data is not None else own
        cfg = model.preprocessing
        if data is not None:
            assert held_out is not None
            reference = reference_data(held_out, np.arange(len(held_out.dataset)), "all", cfg, None)
        else:
            assert own is not None  # run_data raised otherwise
            reference = reference_data(own, own.splits.test, "test", cfg, None)
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
        own = ExportData(ds, stratified_split(ds.targets, seed=0, classes=ds.classes), str(data or "digits"), 0)
        labels = list(bb.labels) if bb.labels else None
        reference = reference_data(own, own.splits.test, "test", cfg, labels)
        source = dict(bb.source, backbone=bb.name, strategy="pretrained")
    needs_int8 = any(FORMAT_SPECS[f].calibrated for f in formats)
    calibration = tuning = None
    if needs_int8:
        if calibration_data is not None:
            cal_ds = load_dataset(calibration_data)
            cal = ExportData(cal_ds, None, str(calibration_data), 0)
            calibration = draw_calibration(cal, np.arange(len(cal_ds)), "calibration-data", calibration_size, cfg)
        else:
            if own is None:
                raise DatasetError("the run's training data cannot be reloaded for int8 calibration; pass --calibration-data DIR")
            calibration = draw_calibration(own, own.splits.train, "train", calibration_size, cfg)
        log(f"calibration: {len(calibration)} images from the {calibration.split} split of {calibration.source}")
    if accuracy_aware and any(FORMAT_SPECS[f].tunable for f in formats):
        if own is None:
            raise DatasetError("the run's training data cannot be reloaded for accuracy-aware tuning (its val split)")
        tuning = reference_data(own, own.splits.val, "val", cfg, labels)
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
