"""Quantisation-aware fine-tuning: the classifier rewritten so that training sees int8 (torch.ao fake quantisation).

`prepare_qat` turns an `ImageClassifier` into the graph every int8 bundle of a QAT run gets:
- BatchNorm folded into the convolution before it (so the weights trained are the weights quantised);
- every Conv2d and Linear fed through fake quantisation: its input per tensor and its weights per output channel,
  both symmetric int8 with a zero point of 0 (what ONNX Runtime, OpenVINO and TensorRT's explicit quantisation all
  run). Weights use 7 bits where the target CPU needs them (`runtimes.cpu.TARGET_CPUS`); the stored values stay
  within int8 so torch.onnx writes plain QuantizeLinear/DequantizeLinear pairs.

The scales are what the observers learned while training (moving averages, frozen for the last epochs); exported
once as a QDQ ONNX graph, they feed onnx-int8, openvino-int8 and tensorrt-int8 alike.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

from .backbones import StaticSamePadConv
from .model import ImageClassifier

INT8_MIN, INT8_MAX = -128, 127
SCHEME = {
    "activations": "int8, per tensor, symmetric (zero point 0), moving-average min/max",
    "weights": "int8, per output channel, symmetric (zero point 0), BatchNorm folded in",
    "layers": "every Conv and Gemm (Linear), inputs and weights",
}


class WeightFakeQuantize(FakeQuantize):
    """Per-channel symmetric weight fake quantisation whose observer may use fewer levels (7-bit weights) while the
    fake-quantised values are stored as plain int8, which is the one weight range torch.onnx can write."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            X = torch.fake_quantize_per_channel_affine(X, self.scale, self.zero_point.to(torch.int32), self.ch_axis, INT8_MIN, INT8_MAX)
        return X


def activation_quantizer() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=INT8_MIN, quant_max=INT8_MAX, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
    )


def weight_quantizer(seven_bit: bool) -> WeightFakeQuantize:
    low, high = (-64, 63) if seven_bit else (INT8_MIN, INT8_MAX)
    return WeightFakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=low,
        quant_max=high,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )


class QuantizedLayer(nn.Module):
    """A Conv2d, a Linear or a static-padding conv whose input and weights are fake-quantised."""

    def __init__(self, layer: nn.Module, *, seven_bit: bool) -> None:
        super().__init__()
        self.layer = layer
        self.input_quant = activation_quantizer()
        self.weight_quant = weight_quantizer(seven_bit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, StaticSamePadConv):  # padded first, so that the int8 tensor is the conv's own input
            conv = layer.conv
            x = self.input_quant(nn.functional.pad(x.float(), layer.pads))
            return conv._conv_forward(x, self.weight_quant(conv.weight), conv.bias)
        x = self.input_quant(x.float())  # quantised in fp32, also under autocast
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, self.weight_quant(layer.weight), layer.bias)
        assert isinstance(layer, nn.Linear)
        return nn.functional.linear(x, self.weight_quant(layer.weight), layer.bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def fold_batch_norms(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it (eval statistics); returns how many.

    Pairs are found by running `example` once: a BatchNorm whose input is the very tensor a Conv2d returned.
    timm's BatchNormAct2d keeps its dropout and activation in place of the normalisation."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept so that their ids stay unique
    pairs: list[tuple[str, str]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, StaticSamePadConv):  # it calls its conv's _conv_forward: no hook of the conv runs
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(id(o), (f"{name}.conv", o))))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(id(o), (name, o))))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: pairs.append(((outputs.get(id(i[0])) or ("",))[0], name))))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    folded = 0
    for conv_name, bn_name in pairs:
        if not conv_name:
            continue
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        _replace(model, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval()))
        _replace(model, bn_name, nn.Sequential(getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())))
        folded += 1
    return folded


def quantize_layers(model: nn.Module, *, seven_bit: bool) -> list[str]:
    """Wrap every Conv2d / Linear (a static-padding conv as a whole) in `QuantizedLayer`; returns their names."""
    inner = {f"{n}.conv" for n, m in model.named_modules() if isinstance(m, StaticSamePadConv)}
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, StaticSamePadConv)) and n not in inner]
    for name in names:
        _replace(model, name, QuantizedLayer(model.get_submodule(name), seven_bit=seven_bit))
    return names


def prepare_qat(classifier: ImageClassifier, *, seven_bit: bool) -> ImageClassifier:
    """A copy of `classifier` with static padding, BatchNorm folded and every Conv/Linear fake-quantised.

    The same call rebuilds the structure of a saved QAT run before its weights and scales are loaded."""
    model = classifier.for_export()
    h, w = model.preprocessing.input_size
    fold_batch_norms(model, torch.zeros((1, h, w, 3), dtype=torch.uint8))
    if not quantize_layers(model, seven_bit=seven_bit):
        raise ValueError("the model has no Conv2d or Linear layer to quantise")
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> None:
    """Initial scales: observers see `images` (uint8 NHWC) in eval mode, before any training step."""
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])


def freeze_scales(model: nn.Module) -> None:
    """Stop the observers: the scales are final, training goes on with them fixed."""
    model.apply(torch.ao.quantization.disable_observer)


def learned_scales(model: nn.Module) -> dict[str, Any]:
    """The scales for the manifest: per layer the input scale and the range of its per-channel weight scales,
    and one hash over every scale (the same numbers sit in the QDQ graph)."""
    digest = hashlib.sha256()
    layers = {}
    for name, layer in quantized_layers(model).items():
        a = layer.input_quant.scale.detach().double().cpu()
        wts = layer.weight_quant.scale.detach().double().cpu()
        digest.update(a.numpy().tobytes())
        digest.update(wts.numpy().tobytes())
        layers[name] = {"input_scale": float(a[0]), "weight_scales": [float(wts.min()), float(wts.max())], "channels": int(wts.numel())}
    return {"layers": len(layers), "sha256": digest.hexdigest(), "per_layer": layers}
