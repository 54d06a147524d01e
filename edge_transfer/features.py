"""Pooled backbone features for the linear probe, computed once and cached on disk (safetensors, atomic write)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import ImageDataset
from .distributed import check_divisible, full_float32, ranks_with
from .loaders import PreparedDataset, make_loader
from .model import ImageClassifier

logger = logging.getLogger(__name__)


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
        "precision": "fp32",  # always: the head learns from the features the device computes (full_float32)
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
            logger.warning(f"features: cache entry {path} is unreadable; recomputing")
            feats = None
    if ranks_with(feats is not None, accelerator) == accelerator.num_processes and feats is not None:
        logger.info(f"features: reusing cache {path} ({feats.shape[0]} x {feats.shape[1]})")
        return feats, {"cache": str(path), "cache_hit": True, "key": key}
    check_divisible(batch_size, accelerator, "feature batch size")
    ds = PreparedDataset(dataset, np.arange(len(dataset)), model.preprocessing)
    loader = accelerator.prepare_data_loader(make_loader(ds, batch_size, False, 0, num_workers, accelerator.device.type == "cuda"))
    net = accelerator.prepare_model(model, evaluation_mode=True)
    net.eval()
    if accelerator.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    chunks = []
    bar = tqdm(loader, desc="features", unit="batch", disable=not progress or not accelerator.is_main_process, leave=False)
    with torch.inference_mode(), full_float32():
        for images, _ in bar:
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
