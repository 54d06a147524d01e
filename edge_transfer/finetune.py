"""Training the network itself: finetune (everything) and partial (the last N blocks), with AdamW, a cosine
schedule, early stopping, checkpoints after every epoch and an exact resume."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from converters.torch_reference import reference_logits
from runtimes.errors import CheckpointError, InputError, TrainingError

from .data import ImageDataset, Splits
from .distributed import check_divisible, full_float32, ranks_with, unwrapped_forward
from .loaders import PreparedDataset, make_loader
from .model import ImageClassifier, build_head

if TYPE_CHECKING:
    from .backbones import Backbone
    from .config import TrainConfig
    from .training import Fitted
logger = logging.getLogger(__name__)


def fit_network(backbone: Backbone, dataset: ImageDataset, splits: Splits, cfg: TrainConfig, *, accelerator: Any) -> Fitted:
    """finetune / partial: a new head, the chosen blocks trained; val and test logits from the trained model."""
    from .training import Fitted, run_fingerprint

    n_classes = len(dataset.classes)
    model = ImageClassifier(backbone, build_head(backbone.num_features, n_classes, cfg.dropout), dataset.classes)
    fingerprint = run_fingerprint(cfg, backbone, dataset, splits)
    model, history, more = train_network(model, dataset, splits, cfg, accelerator=accelerator, fingerprint=fingerprint)
    logits = {s: reference_logits(model, dataset.prepared_batch(getattr(splits, s), model.preprocessing)) for s in ("val", "test")}
    return Fitted(model, history, logits, more)


def set_trainable(model: ImageClassifier, strategy: str, unfreeze_blocks: int) -> dict[str, Any]:
    bb = model.backbone
    if strategy == "finetune":
        for p in bb.parameters():
            p.requires_grad_(True)
        return {"trainable_blocks": "all"}
    for p in bb.parameters():
        p.requires_grad_(False)
    groups = bb.block_groups
    if not groups:
        raise InputError(f"backbone {bb.name!r} does not expose blocks for the partial strategy; use finetune or linear-probe")
    chosen = groups[-unfreeze_blocks:]
    params = dict(bb.body.named_parameters())
    for g in chosen:
        for n in g:
            params[n].requires_grad_(True)
    return {"trainable_blocks": unfreeze_blocks, "of_blocks": len(groups), "first_trainable": chosen[0][0]}


def _freeze_frozen_norms(model: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed in modules whose parameters are all frozen."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def _evaluate(net: nn.Module, loader: Any, accelerator: Any) -> tuple[float, float]:
    """Validation loss and accuracy in plain fp32 (`full_float32`): the numbers the exported bundle will give."""
    net.eval()
    forward = unwrapped_forward(net, accelerator)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, seen = 0.0, 0, 0
    with torch.inference_mode(), full_float32():
        for images, targets in loader:
            logits = forward(images)
            logits, targets = accelerator.gather_for_metrics((logits.float(), targets))
            total += float(loss_fn(logits, targets))
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
    return total / max(seen, 1), correct / max(seen, 1)


def train_network(
    model: ImageClassifier,
    dataset: ImageDataset,
    splits: Splits,
    cfg: TrainConfig,
    *,
    accelerator: Any,
    fingerprint: dict[str, Any] | None = None,
    epoch_start: Callable[[nn.Module, int], None] | None = None,
) -> tuple[ImageClassifier, list[dict[str, Any]], dict[str, Any]]:
    """finetune / partial: train with AdamW + cosine schedule, early stopping on val accuracy, best weights restored.

    Runs data-parallel (DDP through Accelerate) when launched with several processes; per-epoch metrics are
    reduced across them. `epoch_start(net, epoch)` runs before each epoch's first step (QAT freezes its scales
    there). With `cfg.checkpoint_dir`, the main process checkpoints after every epoch, and
    `cfg.resume` continues from that checkpoint so the run ends exactly where an uninterrupted one would.
    """
    from .checkpoint import TrainingCheckpoint, restore_rng

    # resolved by TrainConfig.resolved() and fit(): typed here once
    epochs, lr, patience = int(cfg.epochs or 0), float(cfg.lr or 0.0), int(cfg.patience or 0)
    weight_decay, workers = float(cfg.weight_decay or 0.0), int(cfg.num_workers or 0)
    details = set_trainable(model, cfg.strategy, cfg.unfreeze_blocks)
    check_divisible(cfg.batch_size, accelerator, "batch size")
    head_params = list(model.head.parameters())
    bb_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": head_params, "lr": lr}, {"params": bb_params, "lr": lr * cfg.backbone_lr_scale}],
        weight_decay=weight_decay,
    )
    pin = accelerator.device.type == "cuda"
    train_dl = make_loader(PreparedDataset(dataset, splits.train, model.preprocessing), cfg.batch_size, True, cfg.seed, workers, pin)
    val_dl = make_loader(PreparedDataset(dataset, splits.val, model.preprocessing), cfg.batch_size, False, 0, workers, pin)
    steps = epochs * len(train_dl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    ckpt_path = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    resumed = None
    found = cfg.resume and ckpt_path is not None and (ckpt_path / "state.json").is_file()
    seen_by = ranks_with(found, accelerator)
    if 0 < seen_by < accelerator.num_processes:
        raise CheckpointError(
            f"{ckpt_path}: only {seen_by} of {accelerator.num_processes} processes can read this checkpoint; "
            "resuming on several machines needs --out on a filesystem that every machine sees"
        )
    if found and ckpt_path is not None:
        resumed = TrainingCheckpoint.load(ckpt_path)
        resumed.check_matches(fingerprint or {}, ckpt_path)
        model.load_state_dict(resumed.model)
    # DDP on the CPU warns about depthwise-conv gradients whose strides differ only along a size-1 dimension
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    net, opt, train_dl, val_dl, sched = accelerator.prepare(model, opt, train_dl, val_dl, sched)
    if accelerator.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    best, best_state, stale, history, first_epoch = (-1.0, math.inf), None, 0, [], 0
    if resumed is not None:
        opt.load_state_dict(resumed.optimizer)
        sched.load_state_dict(resumed.scheduler)
        if resumed.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resumed.scaler)
        prog = resumed.progress
        best, stale, history, first_epoch = (prog["best_accuracy"], prog["best_loss"]), prog["stale"], prog["history"], resumed.epoch
        best_state = resumed.best
        rank = accelerator.process_index
        if rank < len(resumed.rng):
            restore_rng(*resumed.rng[rank])
        logger.info(f"resumed from {ckpt_path} after epoch {resumed.epoch}/{epochs} (best val accuracy so far {best[0]:.4f})")
        details["resumed_after_epoch"] = resumed.epoch
    details["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    early_stopped = resumed is not None and bool(patience) and stale >= patience
    for epoch in range(first_epoch, first_epoch if early_stopped else epochs):
        t0 = time.perf_counter()
        train_dl.set_epoch(epoch)
        net.train()
        _freeze_frozen_norms(net)
        if epoch_start is not None:
            epoch_start(net, epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # summed loss, correct, seen
        bar = tqdm(
            train_dl, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not cfg.progress or not accelerator.is_main_process, leave=False
        )
        for images, targets in bar:
            with accelerator.autocast():
                logits = net(images)
                losses = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            accelerator.backward(losses.mean())
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            # every process's per-image results, less the images repeated to even out the last batch
            lost, hits = accelerator.gather_for_metrics((losses.detach().double(), (logits.argmax(1) == targets).double()))
            sums += torch.stack([lost.sum(), hits.sum(), torch.tensor(float(lost.numel()), dtype=torch.float64, device=sums.device)])
            bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}")
        total, correct, seen = sums.tolist()
        val_loss, val_acc = _evaluate(net, val_dl, accelerator)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        not_finite = [k for k, v in row.items() if not math.isfinite(v)]
        if not_finite:
            raise TrainingError(
                f"epoch {epoch + 1}: {', '.join(k.replace('_', ' ') for k in not_finite)} became NaN or infinite; training stopped and "
                f"nothing was saved (try a lower --lr than {cfg.lr:g})"
            )
        history.append(row)
        logger.info(
            f"epoch {epoch + 1:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}  ({row['seconds']:.1f}s)"
        )
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, stale = (val_acc, val_loss), 0
            best_state = {k: v.detach().to("cpu").clone() for k, v in accelerator.unwrap_model(net).state_dict().items()}
        else:
            stale += 1
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, epoch + 1, net, opt, sched, best, best_state, stale, history, fingerprint, accelerator)
        if patience and stale >= patience:
            logger.info(f"early stop at epoch {epoch + 1} (best val accuracy {best[0]:.4f})")
            break
    model = accelerator.unwrap_model(net, keep_fp32_wrapper=False)  # the fp32 model, as exported and validated
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    accelerator.free_memory()
    return model.to("cpu").to(memory_format=torch.contiguous_format).eval(), history, details


def _save_checkpoint(
    path: Path,
    epoch: int,
    net: Any,
    opt: Any,
    sched: Any,
    best: tuple[float, float],
    best_state: dict[str, torch.Tensor] | None,
    stale: int,
    history: list[dict[str, Any]],
    fingerprint: dict[str, Any] | None,
    accelerator: Any,
) -> None:
    """Every rank hands its RNG state to the main process, which alone writes the checkpoint."""
    from accelerate.utils import gather_object

    from .checkpoint import TrainingCheckpoint, capture_rng

    rng = capture_rng()
    states = gather_object([rng]) if accelerator.num_processes > 1 else [rng]
    if accelerator.is_main_process:
        TrainingCheckpoint(
            epoch=epoch,
            fingerprint=fingerprint or {},
            model=accelerator.unwrap_model(net).state_dict(),
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            progress={"best_accuracy": best[0], "best_loss": best[1], "stale": stale, "history": history},
            rng=states,
            best=best_state,
            scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        ).save(path)
    accelerator.wait_for_everyone()
