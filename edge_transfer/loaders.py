"""Samplers and data loaders for training and feature extraction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from runtimes.preprocess import PreprocessConfig

from .data import ImageDataset


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A shuffle that is a pure function of (seed, epoch): the same on every rank and after a resume."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


class PreparedDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Dataset items at the model's input size as uint8 HWC tensors (the shared preprocessing), with targets."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, cfg: PreprocessConfig) -> None:
        self.dataset, self.indices, self.cfg = dataset, np.asarray(indices), cfg

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return torch.from_numpy(self.dataset.prepared(j, self.cfg)), int(self.dataset.targets[j])


def make_loader(ds: PreparedDataset, batch: int, shuffle: bool, seed: int, workers: int, pin: bool) -> torch.utils.data.DataLoader[Any]:
    """A loader with pinned memory on CUDA and persistent workers; shuffled by `EpochShuffle` (call `set_epoch`)."""
    sampler = EpochShuffle(len(ds), seed) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
