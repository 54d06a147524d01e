"""Where models come from, with one front door: `create_backbone(name, pretrained=...)` for a registry backbone
or a local checkpoint (a training run of ours, or a safetensors/torch state dict with its JSON config), and
`load_run` for a training run directory. A run can be the backbone of another run, so the run readers live here
beside the front door (README: Transfer strategies)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtimes.errors import CheckpointError, InputError
from runtimes.fsutil import sha256_file
from runtimes.preprocess import PreprocessConfig

from .backbones import Backbone, _out_features, _timm, _torchvision, hub_backbone
from .config import DEFAULT_BACKBONE
from .model import WEIGHTS_NAME, ImageClassifier, build_head, read_run_config
from .weights import LocalCheckpoint, find_local_checkpoint, read_safetensors, read_weights


def create_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: bool = True, num_classes: int | None = None) -> Backbone:
    """Create a backbone (in eval mode) by registry name or local checkpoint path."""
    bb = hub_backbone(name, pretrained=pretrained, num_classes=num_classes)
    if bb is None:
        local = find_local_checkpoint(name)
        if local is not None:
            bb = _local(local)
    if bb is not None:
        if bb.source_head is not None:
            bb.source_head.eval()
        return bb.eval()
    raise InputError(
        f"unknown backbone {name!r}: use 'efficientnet_lite0', 'timm:<name>', 'torchvision:<name>', "
        "a training run directory or a .safetensors file with its config"
    )


def _local(ckpt: LocalCheckpoint) -> Backbone:
    """A checkpoint of ours (a run) or a plain safetensors model: rebuild the architecture, load the weights."""
    if "head" in ckpt.config:  # a training run of ours
        classifier = load_classifier(ckpt.weights, ckpt.config)
        bb = classifier.backbone
        bb._source_head = [classifier.head]
        bb.labels = list(classifier.labels)
    else:  # the plain state dict of a timm/torchvision architecture
        arch = ckpt.config["backbone"]
        labels = ckpt.config.get("labels")
        state = read_weights(ckpt.weights)
        if arch == "efficientnet_lite0":
            arch = "timm:tf_efficientnet_lite0"
        n = len(labels) if labels else None
        if arch.startswith("timm:"):
            bb = _timm(arch[5:], False, n, state_dict=state)
        elif arch.startswith("torchvision:"):
            bb = _torchvision(arch[12:], False, n, state_dict=state)
        else:
            raise CheckpointError(f"{ckpt.weights}: config 'backbone' must be 'timm:<name>' or 'torchvision:<name>', got {arch!r}")
        bb.labels = list(labels) if labels else [str(i) for i in range(_out_features(bb.source_head))]
    bb.name = str(ckpt.weights.parent if ckpt.weights.name == "model.safetensors" else ckpt.weights)
    bb.source = dict(bb.source, architecture=ckpt.config["backbone"], weights=str(ckpt.weights), weights_sha256=sha256_file(ckpt.weights))
    if "preprocessing" in ckpt.config:
        bb.preprocessing = PreprocessConfig.from_dict(ckpt.config["preprocessing"])
    return bb


def classifier_from_config(config: dict[str, Any]) -> ImageClassifier:
    """Rebuild the (untrained) architecture a run config describes."""
    head_cfg = config["head"]
    labels = list(config["labels"])
    backbone = create_backbone(config["backbone"], pretrained=False)
    backbone.preprocessing = PreprocessConfig.from_dict(config["preprocessing"])
    if config.get("features"):  # a probe on intermediate layers: the same cut network
        from .layers import layer_backbone, parse_layers

        backbone = layer_backbone(backbone, parse_layers(list(config["features"]), backbone))
    if head_cfg.get("type") == "source":
        head = backbone.source_head
        if head is None:
            raise CheckpointError(f"backbone {config['backbone']!r} has no source classifier to restore")
    elif head_cfg.get("type") == "linear":
        head = build_head(int(head_cfg["in_features"]), int(head_cfg["num_classes"]), float(head_cfg.get("dropout", 0.0)))
    else:
        raise CheckpointError(f"run config field 'head.type' must be 'linear' or 'source', got {head_cfg.get('type')!r}")
    return ImageClassifier(backbone, head, labels)


def load_classifier(weights: str | os.PathLike[str], config: dict[str, Any]) -> ImageClassifier:
    """Rebuild a classifier from its config and load its safetensors weights (strict). A quantisation-aware run
    is rebuilt with its fake quantisation (`edge_transfer.fake_quant`), whose scales are part of the weights."""
    model = classifier_from_config(config)
    if config.get("qat"):
        from .fake_quant import prepare_qat

        model = prepare_qat(model, seven_bit=bool(config["qat"].get("seven_bit_weights", True)))
    state = read_safetensors(Path(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{weights}: weights do not match the architecture in its config ({first})") from None
    return model.eval()


def load_run(run_dir: str | os.PathLike[str]) -> tuple[ImageClassifier, dict[str, Any]]:
    """Load a training run directory: (classifier in eval mode, its config)."""
    config = read_run_config(run_dir)
    return load_classifier(Path(run_dir) / WEIGHTS_NAME, config), config
