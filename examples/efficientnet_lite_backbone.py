"""An example user backbone: a small EfficientNet-Lite-style network for a 128-192 px face detector.

This file is written as a user would write it: plain PyTorch, nothing from blazeport. Use it as
a distillation student with::

    blazeport distill --student examples.efficientnet_lite_backbone:efficientnet_lite0
    blazeport distill --student examples.efficientnet_lite_backbone:efficientnet_lite0,width=1.5

(``package.module:factory[,key=value...]``; the key=value pairs are passed to the factory.)

The backbone contract: ``forward(x)`` takes ``(B, 3, S, S)`` RGB in [-1, 1] and returns a list
of NCHW feature maps, shallow to deep, here at strides 4, 8, 16 and 32; blazeport attaches its
own neck and SSD head to them. Only plain ops (Conv2d, BatchNorm2d, ReLU6, add) and symmetric
padding, so it stays fully convolutional and exports to ONNX and TFLite.

EfficientNet-Lite is EfficientNet made friendly to mobile accelerators and int8: ReLU6 instead of
swish, no squeeze-excite. The layout follows Lite0 (MBConv blocks, 3x3 and 5x5 depthwise,
expansion 6 after the first stage) at a fraction of its width and depth: Lite0's backbone has
~3.4M params, far more than a face detector at this input size needs.
"""

from __future__ import annotations

import torch
from torch import nn


def _round8(channels: float) -> int:
    """Round to the nearest multiple of 8 (at least 8), never more than 10% below the request."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch))


class MBConv(nn.Module):
    """1x1 expand + ReLU6, depthwise kxk + ReLU6, 1x1 linear project; residual when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.expand = nn.Sequential(_conv_bn(in_ch, hidden, 1), nn.ReLU6()) if expansion != 1 else nn.Identity()
        self.depthwise = nn.Sequential(_conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.ReLU6())
        self.project = _conv_bn(hidden, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


# (kernel, out, expansion, stride), grouped by output stride 4, 8, 16, 32; like Lite0's
# "k3 16 e1, k3 24 e6, k5 40 e6, k3 80 e6, k5 112 e6, k5 192 e6", narrower and shallower
_LITE = (
    ((3, 16, 1, 1), (3, 24, 4, 2)),
    ((5, 32, 4, 2), (5, 32, 4, 1)),
    ((3, 48, 4, 2), (5, 64, 4, 1)),
    ((5, 96, 4, 2), (5, 96, 4, 1)),
)


class EfficientNetLiteBackbone(nn.Module):
    """Stem (3x3, stride 2, ReLU6) -> four stages of MBConv; returns each stage's output (strides 4, 8, 16, 32)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        stem = _round8(16 * width)
        self.stem = nn.Sequential(_conv_bn(3, stem, 3, 2), nn.ReLU6())
        stages, ch = [], stem
        for blocks in _LITE:
            layers = []
            for kernel, out, expansion, stride in blocks:
                out = _round8(out * width)
                layers.append(MBConv(ch, out, kernel, stride, expansion))
                ch = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def efficientnet_lite0(width: float = 1.0) -> nn.Module:
    """The factory ``--student examples.efficientnet_lite_backbone:efficientnet_lite0[,width=W]`` calls.

    ``width`` scales every layer's channels, rounded to multiples of 8.
    """
    return EfficientNetLiteBackbone(float(width))
