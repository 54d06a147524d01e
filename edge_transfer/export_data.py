"""The data an export validates and calibrates on: a run's own seeded splits rebuilt from its config, or data the
caller names, prepared exactly as the model expects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.errors import DatasetError, InputError

from .config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class ExportData:
    """Where an export's data comes from: held-out reference, calibration (train split) and tuning (val split)."""

    dataset: Any
    splits: Any
    source: str
    seed: int


def run_data(config: dict[str, Any], data: str | None = None, *, skip_bad: bool = False) -> ExportData:
    """Rebuild a run's dataset and its exact seeded split (the data must be unchanged since training)."""
    from .data import load_dataset, stratified_split

    info = config.get("data", {})
    source = data or info.get("source")
    if not source:
        raise DatasetError("this run was trained on in-memory data: pass --data (a folder or 'digits') for validation")
    dataset = load_dataset(source, skip_bad=skip_bad or bool(info.get("skip_bad")))
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
        val_fraction=split.get("val_fraction", TrainConfig.val_fraction),
        test_fraction=split.get("test_fraction", TrainConfig.test_fraction),
        seed=seed,
        classes=dataset.classes,
    )
    return ExportData(dataset, splits, str(source), seed)


def reference_data(d: ExportData, indices: np.ndarray, split: str, cfg: Any, model_labels: list[str] | None):
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
    items = [d.dataset.describe_item(int(i)) for i in indices]
    return ReferenceData(images, targets if matched else None, split, desc, items, original=lambda j: d.dataset.load(int(indices[j]), cfg))


def pretrained_data(opts: Any, cfg: Any, labels: list[str] | None, *, calibrated: bool, tuned: bool) -> tuple[Any, Any, Any]:
    """(reference, calibration, tuning) for exporting a source model as it is (`export --backbone`).

    `--data` is validated on in full, as for a run. int8 needs `--calibration-data`: calibrated on images unlike its
    own (the built-in digits), OpenVINO int8 of an ImageNet model fails (README, "Unlabelled data"), and no
    built-in default could be defended. Without
    `--data`, a seeded share (`TrainConfig.test_fraction`) of the calibration folder is held out for validation and
    never calibrated on. Without either, fp32/fp16 formats are checked for agreement with torch on the built-in
    digits' test split, and the log says so. The accuracy-aware rung tunes on the calibration images."""
    from .data import load_dataset, stratified_split

    cal = None
    if calibrated:
        if opts.calibration_data is None:
            raise InputError(
                "int8 formats of a pretrained model need --calibration-data DIR, images like the device will see "
                "(the built-in digits are unlike the images the model was trained on: OpenVINO int8 calibrated on them fails)"
            )
        cal_ds = load_dataset(opts.calibration_data, skip_bad=opts.skip_bad)
        cal = ExportData(cal_ds, None, str(opts.calibration_data), 0)
    cal_indices = np.arange(len(cal.dataset)) if cal is not None else None
    if opts.data is not None:
        ds = load_dataset(opts.data, skip_bad=opts.skip_bad)
        reference = reference_data(ExportData(ds, None, str(opts.data), 0), np.arange(len(ds)), "all", cfg, labels)
    elif cal is not None:
        order = np.random.default_rng(0).permutation(len(cal.dataset))
        n_held = max(1, int(round(len(order) * TrainConfig.test_fraction)))
        if len(order) - n_held < 1:
            raise DatasetError(f"{opts.calibration_data}: {len(order)} image(s) cannot be split into calibration and validation; pass --data DIR")
        held, cal_indices = np.sort(order[:n_held]), np.sort(order[n_held:])
        reference = reference_data(cal, held, "calibration-data (held out)", cfg, labels)
        logger.info(
            f"validating on {len(held)} images of {opts.calibration_data} held out from calibration (seeded); "
            "pass --data DIR to validate on other images"
        )
    else:
        ds = load_dataset("digits")
        digits = ExportData(ds, stratified_split(ds.targets, seed=0, classes=ds.classes), "digits", 0)
        reference = reference_data(digits, digits.splits.test, "test", cfg, labels)
        logger.warning(
            "validating the source model on the built-in digits, images unlike the ones it was trained on: only "
            "agreement with torch is checked; pass --data DIR with images like the device's"
        )
    calibration = tuning = None
    if cal is not None and cal_indices is not None:
        calibration = draw_calibration(cal, cal_indices, "calibration-data", opts.calibration_size, cfg)
        if tuned:
            from converters.validate import ReferenceData

            tuning = ReferenceData(calibration.images, None, "calibration-data", {"source": cal.source, "count": len(calibration)})
    return reference, calibration, tuning


def draw_calibration(d: ExportData, indices: np.ndarray, split: str, size: int, cfg: Any):
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


REPLAY_PER_CLASS = 50  # digits, 5 new images: 50 per class kept old classes within 0.7 pt, 20 within 1.2 (README)


def replay_extension(model: Any, config: dict[str, Any], own: ExportData | None, per_class: int = REPLAY_PER_CLASS) -> Any:
    """What `export --output extensible` adds to a run's classifier: its head and torch's features of up to
    `per_class` training and validation images per class (seeded), so a device can add classes (`runtimes.imprint`)."""
    from converters.extension import FEATURES_OUTPUT_NAME, REPLAY_FILE, Extension, FeaturesOf, linear_head
    from converters.torch_reference import reference_logits

    from .layers import FINAL

    head = linear_head(model)
    if config.get("strategy") == "pretrained":
        raise InputError("--output extensible adds classes to a head trained on your data; this run uses the source model as it is (pretrained)")
    if head is None:
        raise InputError(
            f"--output extensible adds rows to a linear head; this run's head is {type(model.head).__name__} "
            f"(strategy {config.get('strategy')!r}): train with linear-probe, partial or finetune"
        )
    if own is None:
        raise DatasetError("the run's training data cannot be reloaded for the replay features of --output extensible")
    targets = own.dataset.targets
    rng = np.random.default_rng(own.seed)
    pool = np.concatenate([own.splits.train, own.splits.val])
    picks = np.sort(np.concatenate([rng.permutation(pool[targets[pool] == c])[:per_class] for c in range(len(own.dataset.classes))]))
    features = reference_logits(FeaturesOf(model), own.dataset.prepared_batch(picks, model.preprocessing))
    replay = {
        "weight": head.weight.detach().cpu().numpy().astype(np.float32),
        "bias": head.bias.detach().cpu().numpy().astype(np.float32),
        "features": features.astype(np.float16),  # half the bytes; a device's own features differ from torch's more than this
        "targets": targets[picks].astype(np.int64),
    }
    section = {
        "features_output": FEATURES_OUTPUT_NAME,
        "dim": int(features.shape[1]),
        "layers": list(config.get("features", [FINAL])),
        "replay": REPLAY_FILE,
        "replay_per_class": per_class,
        "replay_count": int(len(picks)),
        "replay_split": "train+val",
    }
    return Extension(section, replay)
