"""Resumable training state: safetensors for tensors, JSON for everything else. No pickle.

A checkpoint is a directory written atomically after every epoch (temp sibling, then rename) by rank 0 only:

- ``model.safetensors``: the model's full state_dict at the end of the epoch;
- ``best.safetensors``: the best weights so far (what early stopping restores);
- ``optimizer.safetensors`` + ``state.json["optimizer"]``: optimizer tensors and its scalar state / param groups;
- ``rng.safetensors`` + ``state.json["rng"]``: every rank's torch (and CUDA) RNG state, numpy's and Python's;
- ``state.json``: epoch, early-stopping counters, history, scheduler and loss-scaler state, and the fingerprint of
  the run it belongs to (a checkpoint is only resumed by the same configuration on the same data).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from runtimes.errors import CheckpointError, TrainingError
from runtimes.fsutil import sha256_file, staged_directory

from .run_files import CHECKPOINT_FORMAT, STATE_NAME

CHECKPOINT_VERSION = 1


def checkpoint_dir_for(run_dir: str | Path) -> Path:
    """Where the resumable state of the run that will be saved to `run_dir` lives: `<run_dir>.checkpoint`."""
    run_dir = Path(run_dir)
    if run_dir.name in ("", "..") or run_dir.name != Path(os.path.normpath(run_dir)).name:  # ".", "a/..": name it by the folder it means
        run_dir = Path(os.path.abspath(run_dir))
    return run_dir.with_name(run_dir.name + ".checkpoint")


# ------------------------------------------------------------------------------------------------ (de)flattening


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer `state_dict()` as (tensors for safetensors, the rest for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        scalars[str(index)] = {}
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[str(index)][name] = value
    return tensors, {"state": scalars, "param_groups": state["param_groups"]}


def join_optimizer_state(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in doc["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) if isinstance(g.get("betas"), list) else g for g in doc["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: (tensors, JSON-able rest)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    name, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    version, internal, py_gauss = random.getstate()
    doc = {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), py_gauss]}
    return tensors, doc


def restore_rng(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    name, keys, pos, has_gauss, gauss = doc["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = doc["python"]
    random.setstate((version, tuple(internal), py_gauss))


# ------------------------------------------------------------------------------------------------ the checkpoint


@dataclass
class TrainingCheckpoint:
    """Everything needed to continue a finetune/partial run exactly where it stopped (after `epoch` epochs)."""

    epoch: int
    fingerprint: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: dict[str, Any]
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] = field(default_factory=list)
    best: dict[str, torch.Tensor] | None = None
    scaler: dict[str, Any] | None = None

    def save(self, path: str | Path) -> Path:
        """Write atomically: at every instant `path` is absent, the previous checkpoint, or this one."""
        from safetensors.torch import save_file

        target = Path(path)
        with staged_directory(target) as tmp:
            save_file(_cpu(self.model), str(tmp / "model.safetensors"))
            if self.best is not None:
                save_file(_cpu(self.best), str(tmp / "best.safetensors"))
            opt_tensors, opt_doc = split_optimizer_state(self.optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            rng_tensors = {f"{rank}.{k}": v for rank, (t, _) in enumerate(self.rng) for k, v in t.items()}
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            doc = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "epoch": self.epoch,
                "fingerprint": self.fingerprint,
                "progress": self.progress,
                "optimizer": opt_doc,
                "scheduler": self.scheduler,
                "scaler": self.scaler,
                "rng": [d for _, d in self.rng],
            }
            doc["sha256"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.suffix == ".safetensors"}
            (tmp / STATE_NAME).write_text(json.dumps(doc, indent=1) + "\n")
        return target

    @classmethod
    def load(cls, path: str | Path) -> TrainingCheckpoint:
        from .weights import read_safetensors

        path = Path(path)
        state_file = path / STATE_NAME
        try:
            doc = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{state_file}: not a readable training checkpoint ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{state_file}: not an edge-transfer checkpoint (field 'format' should be {CHECKPOINT_FORMAT!r})")
        if doc.get("version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{state_file}: checkpoint version {doc.get('version')} is newer than this edge-transfer supports")
        for name, digest in (doc.get("sha256") or {}).items():  # checkpoints written before checksums have none
            if not (path / name).is_file() or sha256_file(path / name) != digest:
                raise CheckpointError(
                    f"{path / name}: missing or damaged (its sha256 differs from the checkpoint's); rerun with --overwrite to start over"
                )
        rng_tensors = read_safetensors(path / "rng.safetensors")
        rng = []
        for rank, rest in enumerate(doc["rng"]):
            prefix = f"{rank}."
            rng.append(({k[len(prefix) :]: v for k, v in rng_tensors.items() if k.startswith(prefix)}, rest))
        best = read_safetensors(path / "best.safetensors") if (path / "best.safetensors").is_file() else None
        model = read_safetensors(path / "model.safetensors")
        from .model import check_finite

        try:
            check_finite(model, f"{path / 'model.safetensors'}")
            if best is not None:
                check_finite(best, f"{path / 'best.safetensors'}")
        except TrainingError as exc:
            raise CheckpointError(
                f"{exc.args[0].removesuffix('; nothing was saved')}: the checkpoint cannot be resumed; rerun with --overwrite"
            ) from None
        progress = doc["progress"]
        if not math.isfinite(float(progress.get("best_accuracy", 0.0))):
            raise CheckpointError(f"{state_file}: best accuracy {progress.get('best_accuracy')} is not a number; rerun with --overwrite")
        return cls(
            epoch=int(doc["epoch"]),
            fingerprint=doc["fingerprint"],
            model=model,
            optimizer=join_optimizer_state(read_safetensors(path / "optimizer.safetensors"), doc["optimizer"]),
            scheduler=doc["scheduler"],
            progress=progress,
            rng=rng,
            best=best,
            scaler=doc.get("scaler"),
        )

    def check_matches(self, fingerprint: dict[str, Any], path: str | Path) -> None:
        """Refuse to resume a checkpoint of a different run (names every field that differs)."""
        differs = sorted(k for k in set(fingerprint) | set(self.fingerprint) if fingerprint.get(k) != self.fingerprint.get(k))
        if differs:
            detail = "; ".join(f"{k}: checkpoint {self.fingerprint.get(k)!r}, now {fingerprint.get(k)!r}" for k in differs)
            raise CheckpointError(
                f"{path}: this checkpoint belongs to a different run ({detail}); rerun with the same settings, "
                "or pass overwrite=True (--overwrite) to start over"
            )


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
