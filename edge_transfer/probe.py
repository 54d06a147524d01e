"""The linear probe: a new linear head on frozen, cached backbone features (L-BFGS, L2 strength chosen on val)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import ImageDataset, Splits
from .features import extract_features
from .model import ImageClassifier, build_head

if TYPE_CHECKING:
    from .backbones import Backbone
    from .config import TrainConfig
    from .training import Fitted
logger = logging.getLogger(__name__)


PROBE_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def fit_probe(backbone: Backbone, dataset: ImageDataset, splits: Splits, cfg: TrainConfig, *, accelerator: Any) -> Fitted:
    """linear-probe: features once (cached), then the head; logits for every split from the cached features."""
    from .training import Fitted

    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    n_classes = len(dataset.classes)
    model = ImageClassifier(backbone, nn.Identity(), dataset.classes)
    feats, cache = backbone_features(backbone, dataset, cfg, accelerator=accelerator)
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
    )
    details["seconds_head"] = round(time.perf_counter() - t1, 2)
    chosen = max(history, key=lambda row: (row["val_accuracy"], -row["val_loss"]))  # the first of equals, as the sweep keeps it
    details["chosen_weight_decay"] = chosen["weight_decay"]
    details["lbfgs_max_iter"] = int(cfg.epochs or 1)
    how = "given" if cfg.weight_decay is not None else f"chosen from {len(history)} by val accuracy {chosen['val_accuracy']:.4f}"
    logger.info(f"head: L2 strength {chosen['weight_decay']:g} ({how}); L-BFGS at most {int(cfg.epochs or 1)} iterations per fit")
    model.head = head
    model = model.to("cpu").eval()
    logits = {s: head(torch.from_numpy(feats[getattr(splits, s)])).detach().numpy() for s in ("train", "val", "test")}
    return Fitted(model, history, logits, details)


def backbone_features(backbone: Backbone, dataset: ImageDataset, cfg: TrainConfig, *, accelerator: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """`backbone`'s pooled features of every image of `dataset` (cached on disk, `features.extract_features`), with
    the cache facts; batch, workers, cache directory and progress bar from `cfg`."""
    return extract_features(
        ImageClassifier(backbone, nn.Identity(), dataset.classes),
        dataset,
        accelerator=accelerator,
        batch_size=int(cfg.feature_batch_size or 64),
        num_workers=int(cfg.num_workers or 0),
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
    )


def fit_linear_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    cfg: TrainConfig,
    *,
    device: torch.device,
    log: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """L2-regularised logistic regression on standardised cached features (the usual linear-probe protocol).

    Full-batch L-BFGS (at most `cfg.epochs` iterations) for each L2 strength in a small grid, or only
    `cfg.weight_decay` when given; the strength with the best val accuracy (then val loss) wins (each logged unless
    `log` is False). Features are
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
    best_key: tuple[float, float] | None = None
    best_head: nn.Sequential | None = None
    history: list[dict[str, Any]] = []
    for l2 in tqdm(grid, desc="head (L2 sweep)", unit="fit", disable=not cfg.progress, leave=False):
        head = cast(nn.Sequential, build_head(train_x.shape[1], num_classes, 0.0).to(device))
        linear = cast(nn.Linear, head[-1])
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        opt = torch.optim.LBFGS(
            linear.parameters(),
            lr=1.0,
            max_iter=int(cfg.epochs or 1),
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )

        def closure(opt: Any = opt, linear: nn.Linear = linear, l2: float = l2) -> torch.Tensor:  # bound now: used in this iteration
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
        if log:
            logger.info(f"head: L2 {l2:g}  train acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}")
        key = (row["val_accuracy"], -row["val_loss"])
        if best_key is None or key > best_key:
            best_key, best_head = key, head
    assert best_head is not None  # the grid is never empty
    linear = cast(nn.Linear, best_head[-1])
    with torch.no_grad():  # fold (x - mu) / sigma into the linear layer
        w = linear.weight / sigma
        linear.bias.copy_(linear.bias - (w * mu).sum(1))
        linear.weight.copy_(w)
    return best_head.cpu().eval(), history
