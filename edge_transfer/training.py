"""Transfer strategies and the training loop (Accelerate for device placement and mixed precision).

- ``pretrained``: the source model as it is, with its own labels (nothing is trained).
- ``linear-probe``: frozen backbone; features computed once, cached on disk, and a new linear head trained on them.
- ``finetune``: new head, whole network trained; the backbone gets a lower learning rate.
- ``partial``: new head plus the last N blocks of the backbone trained; the rest frozen (BatchNorm stats included).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from converters.export import reference_logits
from runtimes.errors import CheckpointError, InputError
from runtimes.preprocess import PreprocessConfig

from .backbones import Backbone
from .data import ImageDataset, Splits
from .model import ImageClassifier, build_head

STRATEGIES = ("pretrained", "linear-probe", "finetune", "partial")

_DEFAULT_EPOCHS = {"linear-probe": 300, "finetune": 10, "partial": 10, "pretrained": 0}
_DEFAULT_LR = {"linear-probe": 1e-3, "finetune": 1e-3, "partial": 1e-3, "pretrained": 0.0}
_DEFAULT_WD = {"linear-probe": None, "finetune": 1e-4, "partial": 1e-4, "pretrained": 0.0}
PROBE_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
_DEFAULT_PATIENCE = {"linear-probe": 10, "finetune": 3, "partial": 3, "pretrained": 0}


@dataclass
class TrainConfig:
    """Hyper-parameters; `None` means the strategy's default."""

    strategy: str = "linear-probe"
    epochs: int | None = None
    lr: float | None = None
    backbone_lr_scale: float = 0.1
    batch_size: int = 32
    weight_decay: float | None = None
    patience: int | None = None
    unfreeze_blocks: int = 2
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    feature_batch_size: int | None = None
    num_workers: int | None = None
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = True

    def resolved(self) -> TrainConfig:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        c = copy.copy(self)
        c.epochs = _DEFAULT_EPOCHS[c.strategy] if c.epochs is None else int(c.epochs)
        c.lr = _DEFAULT_LR[c.strategy] if c.lr is None else float(c.lr)
        c.weight_decay = _DEFAULT_WD[c.strategy] if c.weight_decay is None else float(c.weight_decay)
        if c.weight_decay is not None and c.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {c.weight_decay}")
        c.patience = _DEFAULT_PATIENCE[c.strategy] if c.patience is None else int(c.patience)
        if c.strategy != "pretrained" and c.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {c.epochs}")
        if c.batch_size < 1 or (c.feature_batch_size is not None and c.feature_batch_size < 1):
            raise InputError("batch sizes must be >= 1")
        if c.num_workers is not None and c.num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {c.num_workers}")
        if c.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(f"mixed_precision must be auto, no, bf16 or fp16, got {c.mixed_precision!r}")
        if c.strategy == "partial" and c.unfreeze_blocks < 1:
            raise InputError(f"unfreeze_blocks must be >= 1 for the partial strategy, got {c.unfreeze_blocks}")
        return c


@dataclass
class TrainResult:
    model: ImageClassifier
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ accelerate


def make_accelerator(device: str = "auto", mixed_precision: str = "auto"):
    """An `accelerate.Accelerator`: CUDA when present (bf16 where supported, else fp16 with loss scaling), else CPU.

    Under `accelerate launch` or `torchrun` it joins the process group (NCCL on GPUs, gloo on CPUs). Batches are
    split across processes (`split_batches`): `batch_size` is the global batch, so the data order, the number of
    steps and the learning-rate schedule do not depend on how many processes run.
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch sees no CUDA GPU")
    if mixed_precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        mixed_precision = os.environ["ACCELERATE_MIXED_PRECISION"]  # `accelerate launch --mixed_precision X`
    if mixed_precision == "auto":
        mixed_precision = "no" if use_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if use_cpu and mixed_precision == "fp16":
        raise InputError("fp16 mixed precision needs a CUDA GPU; use 'bf16' or 'no' on the CPU")
    loading = DataLoaderConfiguration(split_batches=True, non_blocking=not use_cpu)  # pinned batches copy asynchronously
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision, dataloader_config=loading)


def _silent(msg: str) -> None:
    pass


def distributed_rank() -> int:
    """This process's global rank (0 when not launched with several processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def wait_for_all_ranks() -> None:
    """A barrier across processes when a process group is up; a no-op otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _check_divisible(batch: int, accelerator: Any, what: str) -> None:
    n = accelerator.num_processes
    if batch % n:
        raise InputError(f"{what} {batch} must be a multiple of the number of processes ({n}): it is split across them")


def _auto_workers(accelerator: Any) -> int:
    """Data-loading workers: none on the CPU (they would compete with training for cores), several per GPU."""
    if accelerator.device.type != "cuda":
        return 0
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 2) // per_node - 1))


class EpochShuffle(torch.utils.data.Sampler):
    """A shuffle that is a pure function of (seed, epoch): the same on every rank and after a resume."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


class _Prepared(torch.utils.data.Dataset):
    """Dataset items at the model's input size as uint8 HWC tensors (the shared preprocessing), with targets."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, cfg: PreprocessConfig) -> None:
        self.dataset, self.indices, self.cfg = dataset, np.asarray(indices), cfg

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return torch.from_numpy(self.dataset.prepared(j, self.cfg)), int(self.dataset.targets[j])


def _loader(ds: torch.utils.data.Dataset, batch: int, shuffle: bool, seed: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """A loader with pinned memory on CUDA and persistent workers; shuffled by `EpochShuffle` (call `set_epoch`)."""
    sampler = EpochShuffle(len(ds), seed) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------------ feature cache


def default_cache_dir() -> Path:
    env = os.environ.get("EDGE_TRANSFER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edge-transfer"


def weights_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def extract_features(
    model: ImageClassifier,
    dataset: ImageDataset,
    *,
    accelerator: Any,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Log = _stderr,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pooled backbone features for every dataset item, computed once and cached (safetensors, atomic write).

    With several processes each computes its share of every batch and the shares are gathered back in dataset
    order; only the main process writes the cache. `batch_size` is the global batch.
    """
    from safetensors.numpy import load_file, save_file

    key_doc = {
        "backbone": model.backbone.name,
        "weights": weights_fingerprint(model.backbone),
        "preprocessing": model.preprocessing.to_dict(),
        "data": dataset.fingerprint(),
        "precision": accelerator.mixed_precision,
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / "features" / f"{key}.safetensors"
    feats = None
    if path.is_file():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape != (len(dataset), model.backbone.num_features):
                feats = None
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            log(f"features: cache entry {path} is unreadable; recomputing")
            feats = None
    if _ranks_with(feats is not None, accelerator) == accelerator.num_processes:
        log(f"features: reusing cache {path} ({feats.shape[0]} x {feats.shape[1]})")
        return feats, {"cache": str(path), "cache_hit": True, "key": key}
    _check_divisible(batch_size, accelerator, "feature batch size")
    ds = _Prepared(dataset, np.arange(len(dataset)), model.preprocessing)
    loader = accelerator.prepare_data_loader(_loader(ds, batch_size, False, 0, num_workers, accelerator.device.type == "cuda"))
    net = accelerator.prepare_model(model, evaluation_mode=True)
    net.eval()
    if accelerator.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    chunks = []
    bar = tqdm(loader, desc="features", unit="batch", disable=not progress or not accelerator.is_main_process, leave=False)
    with torch.inference_mode():
        for images, _ in bar:
            with accelerator.autocast():
                f = accelerator.unwrap_model(net).features(images)
            chunks.append(accelerator.gather_for_metrics(f.float()).cpu().numpy())
    feats = np.concatenate(chunks).astype(np.float32)
    if feats.shape[0] != len(dataset):
        raise RuntimeError(f"gathered {feats.shape[0]} feature rows for {len(dataset)} images")
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": feats}, str(tmp), metadata={k: json.dumps(v) for k, v in key_doc.items()})
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return feats, {"cache": str(path), "cache_hit": False, "key": key}


def _ranks_with(flag: bool, accelerator: Any) -> int:
    """On how many processes `flag` holds (e.g. one process's missing cache file means all recompute)."""
    if accelerator.num_processes == 1:
        return int(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


# ------------------------------------------------------------------------------------------------ heads on cached features


def fit_linear_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    cfg: TrainConfig,
    *,
    device: torch.device,
    log: Log = _stderr,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """L2-regularised logistic regression on standardised cached features (the usual linear-probe protocol).

    Full-batch L-BFGS (at most `cfg.epochs` iterations) for each L2 strength in a small grid, or only
    `cfg.weight_decay` when given; the strength with the best val accuracy (then val loss) wins. Features are
    centred and divided by one global scale (their mean std), folded into the returned linear layer so the head
    takes raw backbone features. One scale, not one per feature: per-feature standardisation blows up the
    weights of near-constant features (x200 on digits), which then amplify int8 quantisation noise.
    """
    xt = torch.from_numpy(train_x).to(device, torch.float32)
    mu, sigma = xt.mean(0), xt.std(0).mean().clamp_min(1e-6)
    xt = (xt - mu) / sigma
    xv = (torch.from_numpy(val_x).to(device, torch.float32) - mu) / sigma
    yt, yv = torch.from_numpy(train_y).to(device), torch.from_numpy(val_y).to(device)
    grid = PROBE_L2_GRID if cfg.weight_decay is None else (float(cfg.weight_decay),)
    loss_fn = nn.CrossEntropyLoss()
    best_key, best_head, history = None, None, []
    for l2 in tqdm(grid, desc="head (L2 sweep)", unit="fit", disable=not cfg.progress, leave=False):
        head = build_head(train_x.shape[1], num_classes, 0.0).to(device)
        linear = head[-1]
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        opt = torch.optim.LBFGS(
            linear.parameters(),
            lr=1.0,
            max_iter=cfg.epochs,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )

        def closure(opt: Any = opt, linear: nn.Module = linear, l2: float = l2) -> torch.Tensor:  # bound now: used in this iteration
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(linear(xt), yt) + 0.5 * l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            lt, lv = linear(xt), linear(xv)
            row = {
                "weight_decay": l2,
                "train_loss": float(loss_fn(lt, yt)),
                "train_accuracy": float((lt.argmax(1) == yt).float().mean()),
                "val_loss": float(loss_fn(lv, yv)),
                "val_accuracy": float((lv.argmax(1) == yv).float().mean()),
            }
        history.append(row)
        log(f"head: L2 {l2:g}  train acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}")
        key = (row["val_accuracy"], -row["val_loss"])
        if best_key is None or key > best_key:
            best_key, best_head = key, head
    linear = best_head[-1]
    with torch.no_grad():  # fold (x - mu) / sigma into the linear layer
        w = linear.weight / sigma
        linear.bias.copy_(linear.bias - (w * mu).sum(1))
        linear.weight.copy_(w)
    return best_head.cpu().eval(), history


# ------------------------------------------------------------------------------------------------ full-network training


def _set_trainable(model: ImageClassifier, strategy: str, unfreeze_blocks: int) -> dict[str, Any]:
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
    net.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for images, targets in loader:
            with accelerator.autocast():
                logits = net(images)
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
    log: Log = _stderr,
) -> tuple[ImageClassifier, list[dict[str, Any]], dict[str, Any]]:
    """finetune / partial: train with AdamW + cosine schedule, early stopping on val accuracy, best weights restored.

    Runs data-parallel (DDP through Accelerate) when launched with several processes; per-epoch metrics are
    reduced across them. With `cfg.checkpoint_dir`, the main process checkpoints after every epoch, and
    `cfg.resume` continues from that checkpoint so the run ends exactly where an uninterrupted one would.
    """
    from .checkpoint import TrainingCheckpoint, restore_rng

    details = _set_trainable(model, cfg.strategy, cfg.unfreeze_blocks)
    _check_divisible(cfg.batch_size, accelerator, "batch size")
    head_params = list(model.head.parameters())
    bb_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": head_params, "lr": cfg.lr}, {"params": bb_params, "lr": cfg.lr * cfg.backbone_lr_scale}],
        weight_decay=cfg.weight_decay,
    )
    pin = accelerator.device.type == "cuda"
    train_dl = _loader(_Prepared(dataset, splits.train, model.preprocessing), cfg.batch_size, True, cfg.seed, cfg.num_workers, pin)
    val_dl = _loader(_Prepared(dataset, splits.val, model.preprocessing), cfg.batch_size, False, 0, cfg.num_workers, pin)
    steps = cfg.epochs * len(train_dl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    ckpt_path = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    resumed = None
    found = cfg.resume and ckpt_path is not None and (ckpt_path / "state.json").is_file()
    seen_by = _ranks_with(found, accelerator)
    if 0 < seen_by < accelerator.num_processes:
        raise CheckpointError(
            f"{ckpt_path}: only {seen_by} of {accelerator.num_processes} processes can read this checkpoint; "
            "resuming on several machines needs --out on a filesystem that every machine sees"
        )
    if found:
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
        p = resumed.progress
        best, stale, history, first_epoch = (p["best_accuracy"], p["best_loss"]), p["stale"], p["history"], resumed.epoch
        best_state = resumed.best
        rank = accelerator.process_index
        if rank < len(resumed.rng):
            restore_rng(*resumed.rng[rank])
        log(f"resumed from {ckpt_path} after epoch {resumed.epoch}/{cfg.epochs} (best val accuracy so far {best[0]:.4f})")
        details["resumed_after_epoch"] = resumed.epoch
    details["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    early_stopped = resumed is not None and bool(cfg.patience) and stale >= cfg.patience
    for epoch in range(first_epoch, first_epoch if early_stopped else cfg.epochs):
        t0 = time.perf_counter()
        train_dl.set_epoch(epoch)
        net.train()
        _freeze_frozen_norms(net)
        sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # summed loss, correct, seen
        bar = tqdm(
            train_dl, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not cfg.progress or not accelerator.is_main_process, leave=False
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
        history.append(row)
        log(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}  ({row['seconds']:.1f}s)"
        )
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, stale = (val_acc, val_loss), 0
            best_state = {k: v.detach().to("cpu").clone() for k, v in accelerator.unwrap_model(net).state_dict().items()}
        else:
            stale += 1
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, epoch + 1, net, opt, sched, best, best_state, stale, history, fingerprint, accelerator)
        if cfg.patience and stale >= cfg.patience:
            log(f"early stop at epoch {epoch + 1} (best val accuracy {best[0]:.4f})")
            break
    model = accelerator.unwrap_model(net)
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
    *,
    log: Log = _stderr,
) -> TrainResult:
    """Run one transfer strategy; return the trained classifier and its train/val/test metrics."""
    from accelerate.utils import set_seed

    cfg = cfg.resolved()
    set_seed(cfg.seed)
    details: dict[str, Any] = {"strategy": cfg.strategy, "train_config": asdict(cfg)}
    t0 = time.perf_counter()
    if cfg.strategy == "pretrained":
        if backbone.source_head is None or not backbone.labels:
            raise InputError(f"backbone {backbone.name!r} has no source classifier/labels to use as it is")
        model = ImageClassifier(backbone, backbone.source_head, backbone.labels).eval()
        return TrainResult(model, {}, [], details)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    if not accelerator.is_main_process:  # one voice: only the main process logs and draws progress bars
        log, cfg.progress = _silent, False
    on_gpu = accelerator.device.type == "cuda"
    if cfg.num_workers is None:
        cfg.num_workers = _auto_workers(accelerator)
    if cfg.feature_batch_size is None:  # the default is rounded up to split evenly across processes
        n = accelerator.num_processes
        cfg.feature_batch_size = -(-(256 if on_gpu else 64) // n) * n
    details["train_config"] = asdict(cfg)
    details["device"] = str(accelerator.device)
    details["mixed_precision"] = accelerator.mixed_precision
    details["processes"] = accelerator.num_processes
    n_classes = len(dataset.classes)
    if cfg.strategy == "linear-probe":
        model = ImageClassifier(backbone, nn.Identity(), dataset.classes)
        feats, cache = extract_features(
            model,
            dataset,
            accelerator=accelerator,
            batch_size=cfg.feature_batch_size,
            num_workers=cfg.num_workers,
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
            log=log,
        )
        details["feature_cache"] = cache
        details["seconds_features"] = round(time.perf_counter() - t0, 2)
        y = dataset.targets
        t1 = time.perf_counter()
        head, history = fit_linear_head(
            feats[splits.train],
            y[splits.train],
            feats[splits.val],
            y[splits.val],
            n_classes,
            cfg,
            device=accelerator.device,
            log=log,
        )
        details["seconds_head"] = round(time.perf_counter() - t1, 2)
        model.head = head
        model = model.to("cpu").eval()
        logits = {s: head(torch.from_numpy(feats[getattr(splits, s)])).detach().numpy() for s in ("train", "val", "test")}
    else:
        model = ImageClassifier(backbone, build_head(backbone.num_features, n_classes, cfg.dropout), dataset.classes)
        fingerprint = run_fingerprint(cfg, backbone, dataset, splits)
        model, history, more = train_network(model, dataset, splits, cfg, accelerator=accelerator, fingerprint=fingerprint, log=log)
        details.update(more)
        logits = {s: reference_logits(model, dataset.prepared_batch(getattr(splits, s), model.preprocessing)) for s in ("val", "test")}
    metrics = {f"{s}_accuracy": accuracy(v, dataset.targets[getattr(splits, s)]) for s, v in logits.items()}
    metrics["test_count"] = int(len(splits.test))
    details["seconds_total"] = round(time.perf_counter() - t0, 2)
    return TrainResult(model.eval(), metrics, history, details)
