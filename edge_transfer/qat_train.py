"""`edge-transfer qat RUN`: quantisation-aware fine-tuning of a finished run into a new run directory.

The parent's model is rewritten by `edge_transfer.fake_quant.prepare_qat`, its scales are set on training images, and it
is fine-tuned under the same Accelerate loop as `train` (DDP, mixed precision, checkpoints and `--resume`,
progress bars): the scales move for the first epochs and are frozen for the last. The run it saves holds the
fake-quantised model; `export` turns it into int8 bundles whose scales are the learned ones.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from runtimes.cpu import TARGET_CPUS, reduce_range_for
from runtimes.errors import CheckpointError, EdgeTransferError, InputError
from runtimes.fsutil import remove_ours
from runtimes.outputs import Protected

from .config import QatConfig, TrainConfig
from .trained_run import TrainedRun

if TYPE_CHECKING:
    from converters.qat_formats import QatSource

logger = logging.getLogger(__name__)


def default_qat_dir(run: str | os.PathLike[str]) -> Path:
    """Where `qat RUN` writes by default: `RUN/qat`, next to the parent's own files."""
    return Path(run) / "qat"


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(path))


def run_qat(run: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, config: QatConfig | None = None) -> TrainedRun:
    """Fine-tune the run at `run` with fake int8 quantisation; save the result as a run at `out` (default RUN/qat).

    Returns a `TrainedRun` whose metrics are those of the fake-quantised model (what its int8 bundles will
    score) next to the parent's fp32 metrics."""
    from .checkpoint import checkpoint_dir_for
    from .distributed import auto_workers, distributed_rank, make_accelerator, quiet_unless_main, wait_for_all_ranks
    from .export_data import run_data
    from .fake_quant import SCHEME, calibrate, freeze_scales, learned_scales, prepare_qat, quantized_layers
    from .finetune import train_network
    from .model import save_run
    from .run_files import CHECKPOINT, check_run_output, discard_checkpoint
    from .sources import load_run
    from .training import accuracy, run_fingerprint

    cfg = (config or QatConfig()).checked()
    t0 = time.perf_counter()
    target = Path(out) if out is not None else default_qat_dir(run)
    parent, parent_config = load_run(run)
    if parent_config.get("qat"):
        raise InputError(f"{run} is already a quantisation-aware run; run qat on its parent ({Path(run) / parent_config['qat'].get('parent', '..')})")
    if parent_config.get("strategy") == "pretrained":
        raise InputError(f"{run} uses the source model as it is and has no training data to fine-tune on; train a head first")
    ckpt = checkpoint_dir_for(target)
    inside_ok = _real(target) == _real(default_qat_dir(run))  # RUN/qat: the documented place, beside the parent's files
    protected = [
        Protected("the source run", run, may_hold_output=inside_ok),
        Protected("--data", cfg.data),
        Protected("the run's training data", (parent_config.get("data") or {}).get("source")),
    ]
    check_run_output(target, ckpt, overwrite=cfg.overwrite, protected=protected)
    if ckpt.exists() and not cfg.resume and not cfg.overwrite:
        raise CheckpointError(f"{ckpt} holds the checkpoint of an interrupted qat run: pass --resume to continue it, or --overwrite to start over")
    if cfg.overwrite and not cfg.resume and ckpt.exists() and distributed_rank() == 0:
        remove_ours(ckpt, CHECKPOINT)
    wait_for_all_ranks()
    data = run_data(parent_config, cfg.data)
    seven_bit = reduce_range_for(cfg.target_cpu)
    model = prepare_qat(parent, seven_bit=seven_bit)
    pre = model.preprocessing
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(data.splits.train, size=min(cfg.calibration_size, len(data.splits.train)), replace=False))
    calibrate(model, torch.from_numpy(data.dataset.prepared_batch(pick, pre)))
    logger.info(
        f"qat: {len(quantized_layers(model))} Conv/Linear layers fake-quantised ({'7' if seven_bit else '8'}-bit weights for "
        f"--target-cpu {cfg.target_cpu}); scales set on {len(pick)} training images; {cfg.epochs} epoch(s) at lr {cfg.lr:g}, "
        f"scales frozen after epoch {cfg.scales_move_for}"
    )
    parent_train = dict(parent_config.get("training", {}).get("train_config", {}))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train_cfg = TrainConfig(**{k: v for k, v in parent_train.items() if k in known}).with_overrides(
        strategy="finetune",
        epochs=cfg.epochs,
        lr=cfg.lr,
        backbone_lr_scale=1.0,
        patience=0,
        device=cfg.device,
        mixed_precision=cfg.mixed_precision,
        num_workers=cfg.num_workers,
        checkpoint_dir=str(ckpt),
        resume=cfg.resume,
        progress=cfg.progress,
    )
    if train_cfg.weight_decay is None:
        train_cfg.weight_decay = 0.0
    accelerator = make_accelerator(train_cfg.device, train_cfg.mixed_precision)
    quiet_unless_main(accelerator.is_main_process)
    if not accelerator.is_main_process:
        train_cfg.progress = False
    if train_cfg.num_workers is None:
        train_cfg.num_workers = auto_workers(accelerator)
    fingerprint = run_fingerprint(train_cfg, parent.backbone, data.dataset, data.splits)
    fingerprint["qat"] = {"target_cpu": cfg.target_cpu, "scales_move_for": cfg.scales_move_for, "calibration_size": len(pick)}

    def epoch_start(net: nn.Module, epoch: int) -> None:
        if epoch >= cfg.scales_move_for:
            freeze_scales(net)

    model, history, details = train_network(
        model, data.dataset, data.splits, train_cfg, accelerator=accelerator, fingerprint=fingerprint, epoch_start=epoch_start
    )
    model.apply(torch.ao.quantization.disable_observer)
    from converters.torch_reference import reference_logits

    metrics: dict[str, Any] = {"train_accuracy": None}  # the same keys as every run; not measured here (see training.fit)
    for split in ("val", "test"):
        idx = getattr(data.splits, split)
        metrics[f"{split}_accuracy"] = accuracy(reference_logits(model, data.dataset.prepared_batch(idx, pre)), data.dataset.targets[idx])
    metrics["test_count"] = int(len(data.splits.test))
    parent_metrics = parent_config.get("metrics", {})
    seconds = round(time.perf_counter() - t0, 2)
    qat_record = {
        "parent": os.path.relpath(Path(run).resolve(), target.resolve()),  # relative: the pair may move together
        "parent_metrics": parent_metrics,
        "epochs": cfg.epochs,
        "epochs_run": len(history),
        "lr": cfg.lr,
        "scales_move_for": cfg.scales_move_for,
        "target_cpu": {"name": cfg.target_cpu, "reduce_range": seven_bit, "reason": TARGET_CPUS[cfg.target_cpu][1]},
        "seven_bit_weights": seven_bit,
        "calibration": {"split": "train", "count": int(len(pick))},
        "scheme": SCHEME,
        "scales": learned_scales(model),
        "seconds": seconds,
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    details.pop("trainable_parameters", None)
    run_config = {k: v for k, v in parent_config.items() if k not in ("format", "version")}
    run_config.update(metrics=metrics, history=history, qat=qat_record, training=dict(details, train_config=dataclasses.asdict(train_cfg)))
    drop = parent_metrics.get("test_accuracy", float("nan")) - metrics["test_accuracy"]
    logger.info(
        f"qat: test accuracy {100 * metrics['test_accuracy']:.2f}% fake-quantised vs {100 * parent_metrics.get('test_accuracy', float('nan')):.2f}% "
        f"fp32 ({100 * drop:+.2f} pt drop) after {len(history)} epoch(s), {seconds:.0f} s"
    )
    if distributed_rank() == 0:
        save_run(target, model, run_config, overwrite=cfg.overwrite)
        discard_checkpoint(ckpt)
    wait_for_all_ranks()
    return TrainedRun(target, metrics, run_config, seconds, history)


def qat_source(config: dict[str, Any], run_dir: str | os.PathLike[str]) -> QatSource | None:
    """For `export`: a `converters.qat_formats.QatSource` when `config` is a quantisation-aware run's (with its fp32
    parent when that run can still be loaded), else None."""
    from converters.qat_formats import QatSource

    from .sources import load_run

    record = config.get("qat")
    if not record:
        return None
    parent = record.get("parent")
    try:
        fp32 = load_run(Path(run_dir) / parent)[0].for_export() if parent else None
    except EdgeTransferError as exc:
        logger.warning(
            f"the fp32 parent run of this quantisation-aware run cannot be loaded ({exc}): int8 is judged against the "
            "fake-quantised model, and no speed-up is measured"
        )
        fp32 = None
    return QatSource(record, fp32)
