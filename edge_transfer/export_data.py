"""The data an export validates and calibrates on: a run's own seeded splits rebuilt from its config, or data the
caller names, prepared exactly as the model expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.errors import DatasetError, InputError

from .config import TrainConfig


@dataclass
class ExportData:
    """Where an export's data comes from: held-out reference, calibration (train split) and tuning (val split)."""

    dataset: Any
    splits: Any
    source: str
    seed: int


def run_data(config: dict[str, Any], data: str | None = None) -> ExportData:
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
    return ReferenceData(images, targets if matched else None, split, desc)


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
