"""Transfer strategies and the training loop (Accelerate for device placement and mixed precision).

- ``pretrained``: the source model as it is, with its own labels (nothing is trained).
- ``linear-probe``: frozen backbone; features computed once, cached on disk, and a new linear head trained on them.
- ``finetune``: new head, whole network trained; the backbone gets a lower learning rate.
- ``partial``: new head plus the last N blocks of the backbone trained; the rest frozen (BatchNorm stats included).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from runtimes.errors import InputError

from .backbones import Backbone
from .config import STRATEGY_SPECS, TrainConfig
from .data import ImageDataset, Splits
from .distributed import auto_workers, make_accelerator, quiet_unless_main
from .features import weights_fingerprint
from .model import ImageClassifier


@dataclass
class TrainResult:
    model: ImageClassifier
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fitted:
    """What a strategy's trainer returns: the classifier (on the CPU, eval mode), its history, the logits of the
    splits it scored, and details for the run's config.json."""

    model: ImageClassifier
    history: list[dict[str, Any]]
    logits: dict[str, np.ndarray]
    details: dict[str, Any]


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float((np.argmax(logits, 1) == targets).mean()) if len(targets) else float("nan")


def run_fingerprint(cfg: TrainConfig, backbone: Backbone, dataset: ImageDataset, splits: Splits) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (the process count may change: batches are global)."""
    keys = ("strategy", "epochs", "lr", "backbone_lr_scale", "batch_size", "weight_decay", "patience", "unfreeze_blocks", "dropout", "seed")
    doc: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    doc["backbone"] = backbone.name
    doc["backbone_weights"] = weights_fingerprint(backbone)[:16]
    doc["preprocessing"] = backbone.preprocessing.to_dict()
    doc["data"] = dataset.fingerprint()
    doc["split"] = hashlib.sha256(np.concatenate([splits.train, splits.val]).astype(np.int64).tobytes()).hexdigest()[:16]
    return json.loads(json.dumps(doc))  # the form it has after a round trip through state.json


def fit(
    backbone: Backbone,
    dataset: ImageDataset,
    splits: Splits,
    cfg: TrainConfig,
) -> TrainResult:
    """Run one transfer strategy; return the trained classifier and its train/val/test metrics."""
    from accelerate.utils import set_seed

    cfg = cfg.resolved()  # a copy: the caller's config is not changed
    set_seed(cfg.seed)
    details: dict[str, Any] = {"strategy": cfg.strategy, "train_config": asdict(cfg)}
    t0 = time.perf_counter()
    if STRATEGY_SPECS[cfg.strategy].trainer is None:  # pretrained: the source model as it is
        if backbone.source_head is None or not backbone.labels:
            raise InputError(f"backbone {backbone.name!r} has no source classifier/labels to use as it is")
        model = ImageClassifier(backbone, backbone.source_head, backbone.labels).eval()
        return TrainResult(model, {}, [], details)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    quiet_unless_main(accelerator.is_main_process)  # one voice: only the main process logs and draws progress bars
    if not accelerator.is_main_process:
        cfg.progress = False
    on_gpu = accelerator.device.type == "cuda"
    if cfg.num_workers is None:
        cfg.num_workers = auto_workers(accelerator)
    if cfg.feature_batch_size is None:  # the default is rounded up to split evenly across processes
        n = accelerator.num_processes
        cfg.feature_batch_size = -(-(256 if on_gpu else 64) // n) * n
    details["train_config"] = asdict(cfg)
    details["device"] = str(accelerator.device)
    details["mixed_precision"] = accelerator.mixed_precision
    details["processes"] = accelerator.num_processes
    module, _, function = (STRATEGY_SPECS[cfg.strategy].trainer or "").partition(":")
    trainer = getattr(importlib.import_module(module), function)
    fitted: Fitted = trainer(backbone, dataset, splits, cfg, accelerator=accelerator)
    details.update(fitted.details)
    model, history, logits = fitted.model, fitted.history, fitted.logits
    # the same keys for every strategy; finetune/partial leave train_accuracy None (a pass over the training split
    # costs as much as an epoch; their history has each epoch's running train accuracy)
    metrics: dict[str, Any] = {
        f"{s}_accuracy": accuracy(logits[s], dataset.targets[getattr(splits, s)]) if s in logits else None for s in ("train", "val", "test")
    }
    metrics["test_count"] = int(len(splits.test))
    details["seconds_total"] = round(time.perf_counter() - t0, 2)
    return TrainResult(model.eval(), metrics, history, details)
