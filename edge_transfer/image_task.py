"""The image task on the host: training on image folders, and the export of image runs and image backbones as they
are. `edge_transfer.host_task.ImageTask` is its front; `api.train`/`api.export` never branch on the modality."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.options import ExportOptions
from runtimes.errors import DatasetError, InputError
from runtimes.fsutil import remove_ours
from runtimes.outputs import Protected
from runtimes.seen import seen_section

from .config import DEFAULT_BACKBONE, QatConfig, TrainConfig
from .export_data import ExportData, draw_calibration, pretrained_data, reference_data, replay_extension, run_data
from .trained_run import TrainedRun

if TYPE_CHECKING:
    from .backbones import Backbone

logger = logging.getLogger(__name__)


def train_images(data: Any, out: str | os.PathLike[str], cfg: TrainConfig) -> TrainedRun:
    """`train` on images ("digits", an image folder or an `ImageDataset`); `cfg` already resolved (see `api.train`)."""
    from .checkpoint import checkpoint_dir_for
    from .data import ImageDataset, load_dataset, stratified_split
    from .distributed import distributed_rank, quiet_unless_main, wait_for_all_ranks
    from .layers import FINAL, layer_backbone, parse_layers
    from .model import save_run
    from .run_files import CHECKPOINT, check_run_output, discard_checkpoint, refuse_unresumed_checkpoint
    from .training import fit

    if distributed_rank() != 0:  # under accelerate launch / torchrun only the main process speaks
        quiet_unless_main(False)
        cfg.progress = False
    ckpt = checkpoint_dir_for(Path(out))
    cfg.checkpoint_dir = str(ckpt)
    check_run_output(
        out,
        ckpt,
        overwrite=cfg.overwrite,
        protected=[Protected("--data", data if isinstance(data, (str, os.PathLike)) else None), Protected("--backbone", cfg.backbone)],
    )
    refuse_unresumed_checkpoint(ckpt, resume=cfg.resume, overwrite=cfg.overwrite)
    t0 = time.perf_counter()
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, skip_bad=cfg.skip_bad)
    splits = stratified_split(dataset.targets, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed, classes=dataset.classes)
    bb = task_backbone(cfg)
    layers = parse_layers(cfg.features, bb)
    bb = layer_backbone(bb, layers)
    logger.info(
        f"data: {dataset.name} ({len(dataset)} images, {len(dataset.classes)} classes; "
        f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}); "
        f"backbone {bb.name} at {bb.preprocessing.input_size[0]}x{bb.preprocessing.input_size[1]}; strategy {cfg.strategy}"
    )
    if cfg.resume and not (ckpt / "state.json").is_file():
        logger.info(f"resume: no checkpoint at {ckpt}; starting from the beginning")
    elif cfg.overwrite and not cfg.resume and ckpt.exists() and distributed_rank() == 0:
        remove_ours(ckpt, CHECKPOINT)  # checked before any work; checked again as it goes
    wait_for_all_ranks()
    result = fit(bb, dataset, splits, cfg)
    model = result.model
    head_cfg = (
        {"type": "source"}
        if cfg.strategy == "pretrained"
        else {"type": "linear", "in_features": bb.num_features, "num_classes": len(dataset.classes), "dropout": 0.0}
    )
    data_info = dict(dataset.info, fingerprint=dataset.fingerprint(), count=len(dataset), skip_bad=cfg.skip_bad)
    if not isinstance(data, ImageDataset):
        data_info["source"] = str(data)
    run_config = {
        "backbone": cfg.backbone,
        "head": head_cfg,
        **({"features": layers} if layers != [FINAL] else {}),
        "strategy": cfg.strategy,
        "labels": list(model.labels),
        "preprocessing": model.preprocessing.to_dict(),
        "source": dict(bb.source, backbone=bb.name, strategy=cfg.strategy),
        "data": data_info,
        "split": splits.describe(),
        "metrics": result.metrics,
        "training": result.details,
        "history": result.history,
    }
    path = Path(out)
    if distributed_rank() == 0:  # one complete artifact, written by the main process only
        save_run(out, model, run_config, overwrite=cfg.overwrite)
        discard_checkpoint(ckpt)
    wait_for_all_ranks()
    trained = TrainedRun(path, result.metrics, run_config, round(time.perf_counter() - t0, 2), result.history)
    if cfg.qat:
        from .qat_train import run_qat

        keep = {k: getattr(cfg, k) for k in ("device", "mixed_precision", "num_workers", "overwrite", "progress")}
        trained.qat = run_qat(path, config=QatConfig(epochs=cfg.qat_epochs, **keep))
    return trained


def export_images(run: str | os.PathLike[str] | None, out: str | os.PathLike[str], opts: ExportOptions, formats: list[str]) -> list[Any]:
    """`export` of an image run, or of an image backbone as it is (`opts.backbone`); arguments checked by `api.export`."""
    from converters.export import FORMAT_SPECS, export_bundles, raise_for_failures

    from .data import load_dataset
    from .layers import layer_backbone, parse_layers
    from .model import ImageClassifier
    from .qat_train import qat_source
    from .sources import create_backbone, load_run

    if opts.output == "extensible" and run is None:
        raise InputError("--output extensible adds classes to a trained head: export a training run (a linear probe or a fine-tuned one)")
    if opts.features and opts.output != "embedding":
        raise InputError("--features takes an embedding from those layers: add --output embedding (a classifier's layers are its run's)")
    data = opts.data
    qat = None
    embedding = extension = None
    if run is not None:
        model, config = load_run(run)
        qat = qat_source(config, run)
        if opts.output == "embedding":
            model, embedding = _run_embedding(model, config, opts, qat)
            qat = None
        if opts.output == "extensible" and qat is not None:
            raise InputError("a quantisation-aware run exports int8 classifiers; export its parent run with --output extensible")
        try:
            own = run_data(config)
        except DatasetError:
            if data is None:
                raise
            own = None  # validating on --data alone; calibration/tuning then need their own source
        if opts.output == "extensible":
            extension = replay_extension(model, config, own)
        held_out = run_data(config, data, skip_bad=opts.skip_bad) if data is not None else own
        cfg = model.preprocessing
        if data is not None:
            assert held_out is not None
            reference = reference_data(held_out, np.arange(len(held_out.dataset)), "all", cfg, None)
        else:
            assert own is not None  # run_data raised otherwise
            reference = reference_data(own, own.splits.test, "test", cfg, None)
        source = dict(config.get("source", {}), run=str(run), training_metrics=config.get("metrics", {}))
        if own is not None and (seen := seen_section(_fitted_items(own))) is not None:
            source["seen_images"] = seen  # so `val` on the training folder says so (runtimes.seen)
        labels = None
    else:
        if opts.strategy != "pretrained":
            raise InputError(f"export --backbone uses the source model as it is (--strategy pretrained); for {opts.strategy!r}, train first")
        bb = create_backbone(opts.backbone or DEFAULT_BACKBONE, pretrained=True)
        if opts.image_size:
            bb.preprocessing = bb.preprocessing.with_size(opts.image_size)
        if opts.output == "embedding":
            layers = parse_layers(opts.features, bb)
            model, embedding = embedder(layer_backbone(bb, layers), layers)
        elif bb.source_head is None or bb.labels is None:
            raise InputError(f"{bb.name} has no classifier of its own to use as it is; train a head on your data first")
        else:
            model = ImageClassifier(bb, bb.source_head, bb.labels).eval()
        cfg = model.preprocessing
        labels = list(bb.labels) if bb.labels and embedding is None else None
        source = dict(model.backbone.source, backbone=model.backbone.name, strategy="pretrained")
    if embedding is not None:
        source["output"] = "embedding"
    q = opts.quantization
    calibrated = qat is None and any(FORMAT_SPECS[f].calibrated for f in formats)
    tuned = (
        qat is None and embedding is None and extension is None and (q.accuracy_aware or q.fallback) and any(FORMAT_SPECS[f].tunable for f in formats)
    )
    calibration = tuning = None
    if run is None:
        reference, calibration, tuning = pretrained_data(opts, cfg, labels, calibrated=calibrated, tuned=tuned)
    elif calibrated:
        if opts.calibration_data is not None:
            cal_ds = load_dataset(opts.calibration_data, skip_bad=opts.skip_bad)
            cal = ExportData(cal_ds, None, str(opts.calibration_data), 0)
            calibration = draw_calibration(cal, np.arange(len(cal_ds)), "calibration-data", opts.calibration_size, cfg)
        else:
            if own is None:
                raise DatasetError("the run's training data cannot be reloaded for int8 calibration; pass --calibration-data DIR")
            calibration = draw_calibration(own, own.splits.train, "train", opts.calibration_size, cfg)
    if calibration is not None:
        logger.info(f"calibration: {len(calibration)} images from the {calibration.split} split of {calibration.source}")
    if run is not None and tuned:
        if own is not None:  # the accuracy-aware rung of the ladder tunes on the val split
            tuning = reference_data(own, own.splits.val, "val", cfg, labels)
        elif q.accuracy_aware:
            raise DatasetError("the run's training data cannot be reloaded for accuracy-aware tuning (its val split)")
    results = export_bundles(
        model.for_export(),
        out,
        preprocessing=cfg,
        kind=_bundle_kind(model, embedding, extension),
        reference=reference,
        calibration=calibration,
        tuning=tuning,
        source=source,
        options=dataclasses.replace(opts, format=tuple(formats)),
        qat=qat,
    )
    raise_for_failures(results, out)
    return results


def _fitted_items(d: ExportData) -> list[Any]:
    """The items (paths, where they are files) of the train and val splits: what the model was fitted or tuned on."""
    return [d.dataset.items[int(i)] for i in np.concatenate([d.splits.train, d.splits.val])]


def embedder(backbone: Backbone, layers: list[str]) -> tuple[Any, dict[str, Any]]:
    """An embedding model of `backbone` (already cut at `layers`) and its manifest `embedding` section."""
    from .model import embedding_model

    model = embedding_model(backbone)
    section = {"dim": int(backbone.num_features), "normalization": "l2", "similarity": "cosine", "layers": list(layers), "unknown_threshold": None}
    return model, section


def _run_embedding(model: Any, config: dict[str, Any], opts: ExportOptions, qat: Any) -> tuple[Any, dict[str, Any]]:
    """A run's embedding model: its backbone (cut where its probe was trained) with an L2 norm instead of the head."""
    from .layers import FINAL

    if opts.features:
        raise InputError(
            "--features chooses the layers of --backbone; a run's embedding is the features its head was trained on "
            f"({config.get('features', [FINAL])})"
        )
    if qat is not None:
        raise InputError("a quantisation-aware run exports int8 classifiers; export its parent run with --output embedding")
    return embedder(model.backbone, list(config.get("features", [FINAL])))


def task_backbone(cfg: TrainConfig) -> Backbone:
    """The backbone `train` starts from: `cfg.backbone` at `cfg.image_size`, with the crop and filter asked for
    (the whole image by default) unless the strategy is `pretrained` (the source model's own preprocessing), and
    large JPEGs decoded at a reduced size unless `jpeg_draft` is off."""
    from runtimes.preprocess import PreprocessConfig

    from .sources import create_backbone

    bb = create_backbone(cfg.backbone, pretrained=cfg.pretrained)
    if cfg.image_size:
        bb.preprocessing = bb.preprocessing.with_size(cfg.image_size)
    changes: dict[str, Any] = {"jpeg_draft": bool(cfg.jpeg_draft)}  # how files decode: part of every run's definition
    if cfg.strategy != "pretrained":
        changes.update({k: v for k, v in (("interpolation", cfg.interpolation), ("crop_pct", cfg.crop_pct)) if v is not None})
    if cfg.resize != "pillow":  # a resize of its own is bilinear: the backbone's bicubic gives way unless asked for
        changes.update(resize=cfg.resize, interpolation=cfg.interpolation or "bilinear")
    bb.preprocessing = PreprocessConfig.from_dict({**bb.preprocessing.to_dict(), **changes})
    return bb


def _bundle_kind(model: Any, embedding: dict[str, Any] | None, extension: Any) -> Any:
    """What the export writes (`converters.bundle_kind`): vectors, an extensible classifier, or a classifier."""
    from converters.bundle_kind import Classifier, Embedding, Extensible

    if embedding is not None:
        return Embedding(embedding)
    if extension is not None:
        return Extensible(tuple(model.labels), extension)
    return Classifier(tuple(model.labels))
