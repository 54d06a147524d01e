"""Fine-tuning a text encoder with its head: `finetune` (the whole encoder) and `partial` (its last N
transformer layers, `--unfreeze-blocks`), on the CPU or a GPU.

The head starts from the linear probe (so the first steps do not undo the encoder with a random head), the encoder
learns at a lower rate than the head (`TEXT_ENCODER_LR`, or `--lr` x `--backbone-lr-scale` when `--lr` is given),
AdamW with a linear warm-up and decay, texts batched with others of similar length (less padding), the best epoch by
validation accuracy kept, early stopping after `patience` epochs without improvement.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtimes.errors import InputError, TrainingError

from .distributed import full_float32

logger = logging.getLogger(__name__)

TEXT_ENCODER_LR = 3e-5  # the usual rate for fine-tuning a small BERT; the head keeps the strategy's 1e-3
WARMUP_SHARE = 0.1


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT-like: `encoder.layer`; DistilBERT-like: `transformer.layer`)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        module: Any = encoder
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise InputError(f"{type(encoder).__name__}: no stack of transformer layers found; use --strategy finetune or linear-probe")


def _trainable(model: Any, strategy: str, unfreeze: int) -> list[nn.Parameter]:
    """Encoder parameters to train: all (finetune), or those of the last `unfreeze` layers (partial)."""
    bert = model.encoder.encoder  # TextClassifier -> MeanPooledEncoder -> transformers model
    if strategy == "finetune":
        return list(bert.parameters())
    layers = transformer_layers(bert)
    if not 1 <= unfreeze <= len(layers):
        raise InputError(f"--unfreeze-blocks must be from 1 to {len(layers)} (the encoder's transformer layers), got {unfreeze}")
    for p in bert.parameters():
        p.requires_grad_(False)
    params = [p for layer in layers[len(layers) - unfreeze :] for p in layer.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _batches(lengths: np.ndarray, rows: np.ndarray, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of `rows` with similar lengths (sorted, then cut); shuffled in their order when `rng` is given."""
    order = rows[np.argsort(lengths[rows], kind="stable")]
    if rng is not None:  # jitter within similar lengths so batches differ between epochs
        order = rows[np.argsort(lengths[rows] + rng.random(len(rows)) * 8, kind="stable")]
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _run(model: nn.Module, ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    width = max(int(mask[rows].sum(1).max()), 1)
    return model(torch.from_numpy(ids[rows, :width]).to(device), torch.from_numpy(mask[rows, :width]).to(device))


@torch.no_grad()
@full_float32()
def predict_logits(model: Any, ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, device: torch.device, size: int = 64) -> np.ndarray:
    """Logits of `rows` in plain fp32 (`full_float32`), as the exported bundle computes them."""
    model.eval()
    lengths = mask.sum(1)
    out = np.empty((len(rows), len(model.labels)), np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    for b in _batches(lengths, rows, size, None):
        out[[position[int(r)] for r in b]] = _run(model, ids, mask, b, device).float().cpu().numpy()
    return out


def fit_text_network(
    model: Any,
    texts: list[str],
    targets: np.ndarray,
    splits: Any,
    tokenizer: Any,
    cfg: Any,
    *,
    lr_given: bool = False,
    checkpoint: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `model` (a `TextClassifier` whose head holds the probe) in place; return its history, the logits of
    every split and details for config.json. The model ends on the CPU in eval mode, at its best epoch. `lr_given`:
    the user set `--lr`, so the encoder learns at lr x backbone_lr_scale instead of `TEXT_ENCODER_LR`. With
    `checkpoint`, the state is saved there after every epoch (`edge_transfer.checkpoint`) and `cfg.resume` continues
    from it, the batches' order and every RNG included, when `fingerprint` (the run's settings and data) matches."""
    from tqdm.auto import tqdm

    from .checkpoint import TrainingCheckpoint, capture_rng, restore_rng
    from .run_files import STATE_NAME

    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and device.type != "cuda":
        raise InputError("--device cuda: no CUDA device here")
    ids, mask = tokenizer(texts)
    lengths = mask.sum(1)
    encoder_params = _trainable(model, cfg.strategy, cfg.unfreeze_blocks)
    head_lr = float(cfg.lr)
    encoder_lr = head_lr * cfg.backbone_lr_scale if lr_given else TEXT_ENCODER_LR
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": encoder_lr}, {"params": list(model.head.parameters()), "lr": head_lr}],
        weight_decay=float(cfg.weight_decay or 0.0),
    )
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total = max(1, steps_per_epoch * int(cfg.epochs))
    warmup = max(1, int(WARMUP_SHARE * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    history: list[dict[str, Any]] = []
    best_acc, best_state, since_best = -1.0, copy.deepcopy(model.state_dict()), 0
    first = 1
    if cfg.resume and checkpoint is not None and (checkpoint / STATE_NAME).is_file():
        state = TrainingCheckpoint.load(checkpoint)
        state.check_matches(fingerprint or {}, checkpoint)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        schedule.load_state_dict(state.scheduler)
        progress = state.progress
        best_acc, since_best, history = float(progress["best_accuracy"]), int(progress["stale"]), list(progress["history"])
        best_state = state.best if state.best is not None else best_state
        rng.bit_generator.state = progress["batch_rng"]
        restore_rng(*state.rng[0])
        first = state.epoch + 1
        logger.info(f"resumed from {checkpoint} after epoch {state.epoch}/{cfg.epochs} (best val accuracy so far {best_acc:.4f})")
    elif cfg.resume:
        logger.info(f"resume: no checkpoint at {checkpoint}; starting from the beginning")
    logger.info(
        f"{cfg.strategy}: {sum(p.numel() for p in encoder_params) / 1e6:.1f} M encoder parameters at lr {encoder_lr:g}, head at {head_lr:g}; "
        f"{cfg.epochs} epoch(s) of {steps_per_epoch} steps on {device.type}"
    )
    for epoch in range(first, int(cfg.epochs) + 1):
        if since_best > int(cfg.patience):  # a resumed run that had already stopped early
            break
        t = time.perf_counter()
        model.train()
        seen, loss_sum = 0, 0.0
        batches = _batches(lengths, splits.train, cfg.batch_size, rng)
        for rows in tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not cfg.progress, leave=False):
            loss = loss_fn(_run(model, ids, mask, rows, device), torch.from_numpy(targets[rows]).to(device))
            if not torch.isfinite(loss):
                raise TrainingError(f"epoch {epoch}: the loss became {float(loss)}; nothing was saved (try a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(rows), loss_sum + float(loss.detach()) * len(rows)
        val = predict_logits(model, ids, mask, splits.val, device)
        val_acc = float((val.argmax(1) == targets[splits.val]).mean())
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_accuracy": val_acc, "seconds": round(time.perf_counter() - t, 1)}
        history.append(row)
        logger.info(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val accuracy {100 * val_acc:.2f}% ({row['seconds']:.0f} s)")
        if val_acc > best_acc:
            best_acc, best_state, since_best = val_acc, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
        if checkpoint is not None:  # atomically: an interrupted save leaves the previous epoch's checkpoint
            progress = {"best_accuracy": best_acc, "best_loss": 0.0, "stale": since_best, "history": history, "batch_rng": rng.bit_generator.state}
            TrainingCheckpoint(
                epoch, fingerprint or {}, model.state_dict(), optimizer.state_dict(), schedule.state_dict(), progress, [capture_rng()], best_state
            ).save(checkpoint)
        if since_best > int(cfg.patience):
            logger.info(f"early stop: no better val accuracy for {since_best} epoch(s)")
            break
    model.load_state_dict(best_state)
    logits = {s: predict_logits(model, ids, mask, getattr(splits, s), device) for s in ("train", "val", "test")}
    model.to("cpu").eval()
    for p in model.parameters():
        p.requires_grad_(True)
    best = max(history, key=lambda r: r["val_accuracy"])
    return {
        "history": history,
        "logits": logits,
        "details": {"encoder_lr": encoder_lr, "head_lr": head_lr, "best_epoch": best["epoch"], "device": device.type, "head_init": "linear probe"},
    }
