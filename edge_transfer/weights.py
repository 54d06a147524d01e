"""Weights files: our safetensors, a user's torch checkpoint (loaded weights-only), and finding a local
checkpoint with the JSON config that names its architecture."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runtimes.errors import CheckpointError

# torch checkpoints a user may hand us; loaded with weights_only=True (see read_torch_checkpoint)
TORCH_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_json(path: Path) -> Any:
    """A JSON config file (a run's or a checkpoint's); CheckpointError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


@dataclass
class LocalCheckpoint:
    """A `.safetensors` weights file plus the JSON config describing its architecture."""

    weights: Path
    config: dict[str, Any] = field(default_factory=dict)


def find_local_checkpoint(name: str) -> LocalCheckpoint | None:
    p = Path(name)
    if p.is_dir():
        weights, config = p / "model.safetensors", p / "config.json"
    elif p.suffix == ".safetensors" or p.suffix in TORCH_CHECKPOINT_SUFFIXES:
        weights = p
        config = p.with_suffix(".json") if p.with_suffix(".json").is_file() else p.parent / "config.json"
    else:
        return None
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    if not config.is_file():
        raise CheckpointError(f"{weights}: no JSON config beside it ({config.name} with at least 'backbone')")
    cfg = read_json(config)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), str):
        raise CheckpointError(f"{config}: field 'backbone' (the architecture name, e.g. 'timm:resnet18') is missing")
    return LocalCheckpoint(weights=weights, config=cfg)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A user's torch checkpoint, loaded with `weights_only=True` and no unsafe fallback.

    A pickle that holds more than tensors and plain containers is refused: unpickling it could run any code.
    `{"state_dict": ...}` / `{"model": ...}` wrappers are unwrapped.
    """
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: this checkpoint holds Python objects beyond tensors, and loading it would run their code "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]}). In an environment you trust, save its "
            "state_dict with safetensors.torch.save_file and use the .safetensors file"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    return state


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors (ours) or, loaded safely, a torch checkpoint a user hands us."""
    if path.suffix in TORCH_CHECKPOINT_SUFFIXES:
        return read_torch_checkpoint(path)
    return read_safetensors(path)
