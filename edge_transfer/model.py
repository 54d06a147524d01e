"""The deployable classifier: in-graph preprocessing + backbone + head, and its safetensors checkpoints.

`ImageClassifier` takes exactly what the bundle's input is (uint8 NHWC RGB at the model's size) so the model that
is trained, validated and exported is one and the same graph; the normalisation constants come from the one
`PreprocessConfig`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from runtimes.errors import CheckpointError, TrainingError
from runtimes.fsutil import staged_directory
from runtimes.outputs import Protected, check_output_dir
from runtimes.preprocess import PreprocessConfig

from .backbones import Backbone
from .run_files import CONFIG_NAME, RUN, RUN_FORMAT, RUN_VERSION, WEIGHTS_NAME
from .weights import read_json


class InGraphNormalize(nn.Module):
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), scaled to [0, 1] and mean/std-normalised."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        super().__init__()
        mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = cast(torch.Tensor, self.scale), cast(torch.Tensor, self.shift)
        return x.permute(0, 3, 1, 2).to(torch.float32) * scale + shift


def build_head(in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """The new classification head: optional dropout then one linear layer."""
    linear = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else nn.Sequential(linear)


class ImageClassifier(nn.Module):
    """uint8 NHWC images in, logits out: the torch reference of every bundle."""

    def __init__(self, backbone: Backbone, head: nn.Module, labels: list[str]) -> None:
        super().__init__()
        self.normalize = InGraphNormalize(backbone.preprocessing)
        self.backbone = backbone
        self.head = head
        self.labels = list(labels)

    @property
    def preprocessing(self) -> PreprocessConfig:
        return self.backbone.preprocessing

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def for_export(self) -> ImageClassifier:
        """An eval-mode copy specialised to the fixed input size (static padding): the graph every bundle gets."""
        import copy

        from .backbones import freeze_same_padding

        clone = copy.deepcopy(self).eval().to("cpu")
        h, w = self.preprocessing.input_size
        freeze_same_padding(clone, torch.zeros((1, h, w, 3), dtype=torch.uint8))
        return clone


class L2Normalize(nn.Module):
    """The head of an embedding model: features scaled to unit length (what a cosine gallery compares)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # sqrt of a sum of squares: ONNX Runtime's quantisation shape inference fails on ReduceL2 (F.normalize)
        return x / torch.sqrt((x * x).sum(dim=1, keepdim=True)).clamp_min(1e-12)


def embedding_model(backbone: Backbone) -> ImageClassifier:
    """uint8 NHWC images in, L2-normalised pooled features out: the torch reference of an embedding bundle."""
    return ImageClassifier(backbone, L2Normalize(), []).eval()


# ------------------------------------------------------------------------------------------------ checkpoints


def save_run(
    run_dir: str | os.PathLike[str],
    classifier: nn.Module,
    config: dict[str, Any],
    *,
    overwrite: bool = False,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write model.safetensors + config.json (+ `extra_files`, name -> source, e.g. a text run's tokenizer.json)
    atomically (temp sibling dir, then rename). No pickle. `overwrite` replaces only a run directory (or an empty
    one): anything else at `run_dir` is refused (`OutputError`)."""
    import shutil

    from safetensors.torch import save_file

    # where the run may go was decided before any work (a qat run's RUN/qat lies inside its parent run): here, only
    # what is at `run_dir` itself is checked again
    holder = Protected("the run that holds it", Path(run_dir).parent, may_hold_output=True)
    target = check_output_dir(run_dir, RUN, overwrite=overwrite, protected=[holder])
    state = {k: v.detach().to("cpu").contiguous() for k, v in classifier.state_dict().items()}
    check_finite(state, "the trained model")
    with staged_directory(target) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": RUN_FORMAT})
        doc = {"format": RUN_FORMAT, "version": RUN_VERSION, **config}
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    return target


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse weights holding NaN or infinity (`TrainingError` naming the first tensor): nothing is saved from them."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"{what}: tensor {name!r} holds NaN or infinite values; nothing was saved")


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_NAME
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: no such training run directory")
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {CONFIG_NAME} (not a training run, or an interrupted one)")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path}: not an edge-transfer run config (field 'format' should be {RUN_FORMAT!r})")
    if cfg.get("version", 0) > RUN_VERSION:
        raise CheckpointError(f"{path}: run version {cfg.get('version')} is newer than this edge-transfer supports")
    for key in ("backbone", "head", "labels") + (("text",) if cfg.get("modality") == "text" else ("preprocessing",)):
        if key not in cfg:
            raise CheckpointError(f"{path}: missing field '{key}'")
    return cfg
