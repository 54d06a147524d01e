"""Features from intermediate layers (README: Feature transfer).

A backbone's pooled output is one choice of features; the blocks before it are others, and far from ImageNet a
middle block often transfers better (Head2Toe, Evci et al. 2022). This module names those blocks, parses a layer
choice, and builds a backbone whose output is the chosen layers' outputs, each averaged over its spatial positions
(or tokens) and concatenated in network order:

- `feature_layers(backbone)`: the blocks to choose from, in network order, then ``final`` (the usual output);
- `parse_layers(spec, backbone)`: ``blocks.3``, a negative index into that list (``-1`` is ``final``, ``-2`` the
  last block), or a comma-separated list of either;
- `layer_backbone(backbone, layers)`: a `Backbone` computing those features. Without ``final`` the network is
  **cut** after the deepest layer used (`CutFeatures`: the modules before it, run in order), so a shallower choice
  exports a smaller, faster graph. The cut is checked once against the full network's own outputs at those layers
  (forward hooks); a model whose forward is not a plain sequence of its children up to the layer is refused.
  With ``final`` in the list the whole network runs and the other layers are read on the way (`TappedFeatures`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from runtimes.errors import InputError

if TYPE_CHECKING:
    from .backbones import Backbone

FINAL = "final"


def _main_path(body: nn.Module) -> tuple[str, nn.Module]:
    """The container holding most of the network's parameters (timm's `blocks`, torchvision's `features`), found
    as `backbones._child_groups` finds partial-unfreezing groups; ("", body) when there is none."""
    prefix, module = "", body
    while True:
        kids = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        total = sum(p.numel() for p in module.parameters())
        big = [(n, m) for n, m in kids if isinstance(m, nn.Sequential) and sum(p.numel() for p in m.parameters()) > 0.8 * total]
        if not big:
            return prefix, module
        prefix, module = f"{prefix}{big[0][0]}.", big[0][1]


def feature_layers(backbone: Backbone) -> list[str]:
    """The layers features can be taken from, in network order: the blocks of the main container, then `final`."""
    prefix, container = _main_path(backbone.body)
    blocks = [f"{prefix}{n}" for n, m in container.named_children() if any(True for _ in m.parameters())]
    return [*blocks, FINAL]


def parse_layers(spec: str | list[str] | None, backbone: Backbone) -> list[str]:
    """A layer choice as a list of layer names in network order (`final` last); None/"" means [`final`]."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else (spec or []))]
    items = [s for s in items if s]
    if not items:
        return [FINAL]
    known = feature_layers(backbone)
    modules = dict(backbone.body.named_modules())
    chosen: list[str] = []
    for item in items:
        name = item
        if item.lstrip("-").isdigit():
            index = int(item)
            if not -len(known) <= index < 0:
                raise InputError(f"--features {item}: a negative index counts back from 'final' (-1) to {known[0]!r} (-{len(known)})")
            name = known[index]
        elif item != FINAL and item not in modules:
            raise InputError(f"--features {item}: {backbone.name} has no layer {item!r}; layers: {', '.join(known)}")
        if name not in chosen:
            chosen.append(name)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(chosen, key=lambda n: (n == FINAL, order.get(n, 0)))


def pool(x: torch.Tensor) -> torch.Tensor:
    """One vector per image: the mean over spatial positions (N, C, H, W) or tokens (N, L, C)."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 3:
        return x.mean(dim=1)
    return x.flatten(1)


@contextlib.contextmanager
def captured(body: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on `names` for the duration of the block: {name: that module's latest output}. Registered
    per call, never left on the module (a deep copy for export would carry hooks writing into the original)."""
    out: dict[str, torch.Tensor] = {}
    handles = [body.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)) for n in names]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


class CutFeatures(nn.Module):
    """The network up to its deepest chosen layer, as a flat sequence of its modules; pooled, concatenated taps."""

    def __init__(self, pieces: list[tuple[str, nn.Module]], taps: list[str]) -> None:
        super().__init__()
        self.pieces = nn.ModuleList([m for _, m in pieces])
        self.names = [n for n, _ in pieces]
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor] = []
        for name, module in zip(self.names, self.pieces):
            x = module(x)
            if name in self.taps:
                found.append(pool(x))
        return torch.cat(found, dim=1) if len(found) > 1 else found[0]


class TappedFeatures(nn.Module):
    """The whole backbone, its chosen inner layers read on the way: [pooled layers..., final features]."""

    def __init__(self, backbone: Backbone, taps: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with captured(self.backbone.body, self.taps) as seen:
            final = self.backbone(x)
        return torch.cat([pool(seen[n]) for n in self.taps] + [final.flatten(1)], dim=1)


def _pieces(module: nn.Module, prefix: str, taps: list[str], deepest: str) -> tuple[list[tuple[str, nn.Module]], bool]:
    """The modules that run, in order, up to `deepest`, opening every container on the way to a tap."""
    pieces: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if full not in taps and any(t.startswith(full + ".") for t in taps):
            inner, done = _pieces(child, full + ".", taps, deepest)
            pieces += inner
            if done:
                return pieces, True
            continue
        pieces.append((full, child))
        if full == deepest:
            return pieces, True
    return pieces, False


def layer_backbone(backbone: Backbone, layers: list[str]) -> Backbone:
    """`backbone` computing the pooled, concatenated features of `layers` (`parse_layers`' output): cut after the
    deepest layer, or whole with `final`. Returns `backbone` itself for [`final`]."""
    from .backbones import Backbone

    if layers == [FINAL]:
        return backbone
    inner = [n for n in layers if n != FINAL]
    body: nn.Module
    if FINAL in layers:
        body = TappedFeatures(backbone, inner)
    else:
        pieces, _ = _pieces(backbone.body, "", inner, inner[-1])
        body = CutFeatures(pieces, inner)
        _check_cut(backbone, body, inner)
    h, w = backbone.preprocessing.input_size
    with torch.no_grad():
        dim = int(body.eval()(torch.zeros(1, 3, h, w)).shape[1])
    source = dict(backbone.source, features=list(layers), features_dim=dim)
    return Backbone(
        f"{backbone.name}@{','.join(layers)}",
        body,
        dim,
        backbone.preprocessing,
        labels=None,
        source=source,
    ).eval()


def _check_cut(backbone: Backbone, cut: CutFeatures, taps: list[str]) -> None:
    """The cut network's taps must equal the full network's outputs at those layers (one random image)."""
    h, w = backbone.preprocessing.input_size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), captured(backbone.body, taps) as seen:
            backbone(x)
            full = torch.cat([pool(seen[n]) for n in taps], dim=1)
            ours = cut.eval()(x)
        same = ours.shape == full.shape and torch.allclose(ours, full, rtol=1e-4, atol=1e-5)
    except (RuntimeError, ValueError, TypeError):  # the modules in order do not even fit together (a reshape between)
        same = False
    finally:
        backbone.train(was_training)
    if not same:
        raise InputError(
            f"--features {','.join(taps)}: {backbone.name} cannot be cut there (its forward is not a plain sequence of "
            f"its modules up to that layer); choose among {', '.join(feature_layers(backbone))}, or add 'final' to run the "
            "whole network"
        )
