"""The Python API: everything the CLI does is one call here (`train`, `export`, `demo`; `load` is runtimes')."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtimes.errors import CheckpointError, DatasetError, InputError

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
    backbone: str = "efficientnet_lite0",
    strategy: str = "linear-probe",
    image_size: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = 1.0,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 32,
    unfreeze_blocks: int = 2,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    skip_bad: bool = False,
    device: str = "auto",
    cache_dir: str | None = None,
    pretrained: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    log: Log = _quiet,
) -> TrainedRun:
    """Transfer-learn `backbone` onto `data` ("digits", an image-folder path, or an `ImageDataset`) and save a run.

    The run directory holds model.safetensors and config.json (metrics, split, data fingerprint): no pickle.
    """
    from runtimes.preprocess import PreprocessConfig

    from .backbones import create_backbone
    from .data import ImageDataset, load_dataset, stratified_split
    from .model import save_run
    from .training import TrainConfig, fit

    if Path(out).exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass --overwrite to replace it")
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
        strategy=strategy, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, unfreeze_blocks=unfreeze_blocks, seed=seed,
        device=device, cache_dir=cache_dir, progress=progress,
    )
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
    path = save_run(out, model, config, overwrite=overwrite)
    return TrainedRun(path, result.metrics, config, round(time.perf_counter() - t0, 2), result.history)


# ------------------------------------------------------------------------------------------------ export


def _reference_for_run(config: dict[str, Any], data_override: str | None):
    """Rebuild the run's held-out test split exactly (same data fingerprint, same seeded split)."""
    from converters.validate import ReferenceData
    from runtimes.preprocess import PreprocessConfig

    from .data import load_dataset, stratified_split

    info = config.get("data", {})
    source = data_override or info.get("source")
    if not source:
        raise DatasetError("this run was trained on in-memory data: pass --data (a folder or 'digits') for validation")
    dataset = load_dataset(source, skip_bad=bool(info.get("skip_bad")))
    if data_override is None and dataset.fingerprint() != info.get("fingerprint"):
        raise DatasetError(
            f"{source}: the dataset changed since training, so its held-out split cannot be reproduced; "
            "restore it or pass --data with held-out data to validate against"
        )
    if list(dataset.classes) != list(config["labels"]):
        raise DatasetError(f"{source}: classes {dataset.classes} differ from the run's labels {config['labels']}")
    split = config.get("split", {})
    splits = stratified_split(
        dataset.targets, val_fraction=split.get("val_fraction", 0.15), test_fraction=split.get("test_fraction", 0.2),
        seed=split.get("seed", 0), classes=dataset.classes,
    )
    idx = splits.test if data_override is None else np.arange(len(dataset))
    cfg = PreprocessConfig.from_dict(config["preprocessing"])
    images = dataset.prepared_batch(idx, cfg)
    return ReferenceData(images, dataset.targets[idx], "test" if data_override is None else "all", {"source": str(source), "count": len(idx)})


def _reference_for_pretrained(bb: Any, data: str | None):
    """Held-out images for a model used as it is: the built-in digits test split (or --data), labels when they match."""
    from converters.validate import ReferenceData

    from .data import load_dataset, stratified_split

    source = data or "digits"
    dataset = load_dataset(source)
    splits = stratified_split(dataset.targets, seed=0, classes=dataset.classes)
    images = dataset.prepared_batch(splits.test, bb.preprocessing)
    targets = None
    if bb.labels and all(c in bb.labels for c in dataset.classes):
        lookup = {c: bb.labels.index(c) for c in dataset.classes}
        targets = np.asarray([lookup[dataset.classes[t]] for t in dataset.targets[splits.test]])
    return ReferenceData(images, targets, "test", {"source": str(source), "count": len(splits.test), "labels_match_model": targets is not None})


def export(
    run: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    format: str = "onnx",
    backbone: str | None = None,
    strategy: str = "pretrained",
    image_size: int | None = None,
    data: str | None = None,
    min_agreement: float | None = None,
    allow_failed_validation: bool = False,
    overwrite: bool = False,
    log: Log = _quiet,
):
    """Export a training run (or, with `backbone`, the source model as it is) to a validated bundle.

    Returns `converters.export.ExportResult` (bundle, validation dict, timings).
    """
    from converters.export import export_bundle

    from .backbones import create_backbone
    from .model import ImageClassifier, load_run

    if (run is None) == (backbone is None):
        raise InputError("export needs either a training run directory or --backbone NAME --strategy pretrained")
    if run is not None:
        model, config = load_run(run)
        reference = _reference_for_run(config, data)
        source = dict(config.get("source", {}), run=str(run), training_metrics=config.get("metrics", {}))
    else:
        if strategy != "pretrained":
            raise InputError(f"export --backbone uses the source model as it is (--strategy pretrained); for {strategy!r}, train first")
        bb = create_backbone(backbone, pretrained=True)
        if image_size:
            bb.preprocessing = bb.preprocessing.with_size(image_size)
        model = ImageClassifier(bb, bb.source_head, bb.labels).eval()
        reference = _reference_for_pretrained(bb, data)
        source = dict(bb.source, backbone=bb.name, strategy="pretrained")
    return export_bundle(
        model, out, preprocessing=model.preprocessing, labels=list(model.labels), reference=reference, source=source,
        format=format, min_agreement=min_agreement, allow_failed_validation=allow_failed_validation, overwrite=overwrite,
        log=log,
    )


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
    trained = train("digits", out=run_dir, backbone=backbone, strategy=strategy, image_size=image_size,
                    interpolation=interpolation, epochs=epochs,
                    progress=progress, overwrite=True, log=log)
    timings["train"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    exported = export(run_dir, out=bundle_dir, overwrite=True, log=log)
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
