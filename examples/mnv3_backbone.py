"""An example user backbone: a small MobileNetV3-style network for a 128-192 px face detector.

This file is written as a user would write it: plain PyTorch, nothing from blazeport. Use it as
a distillation student with::

    blazeport distill --student examples.mnv3_backbone:mnv3_small
    blazeport distill --student examples.mnv3_backbone:mnv3_small,width=0.75

(``package.module:factory[,key=value...]``; the key=value pairs are passed to the factory.)

The backbone contract: ``forward(x)`` takes ``(B, 3, S, S)`` RGB in [-1, 1] and returns a list
of NCHW feature maps, shallow to deep, here at strides 4, 8, 16 and 32; blazeport attaches its
own neck and SSD head to them. Only plain ops (Conv2d, BatchNorm2d, ReLU, Hardswish,
Hardsigmoid, mul, add, mean) and symmetric padding, so it stays fully convolutional and exports
to ONNX and TFLite.

The layout follows MobileNetV3-Small (Howard et al. 2019: hardswish in the deep blocks,
squeeze-excite, 3x3 and 5x5 depthwise), with fewer and narrower blocks: the full network's
backbone has ~0.9M params, more than a face detector at this input size needs.
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


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid -> scale the input."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = _round8(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class Bneck(nn.Module):
    """MobileNetV3 bottleneck: 1x1 expand, depthwise kxk, optional SE, 1x1 linear project, residual."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, kernel: int, stride: int, se: bool, hswish: bool):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        self.expand = nn.Sequential(_conv_bn(in_ch, hidden, 1), act()) if hidden != in_ch else nn.Identity()
        self.depthwise = nn.Sequential(_conv_bn(hidden, hidden, kernel, stride, groups=hidden), act())
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = _conv_bn(hidden, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


# (kernel, hidden, out, squeeze-excite, hardswish, stride), grouped by output stride 4, 8, 16, 32
_SMALL = (
    ((3, 16, 16, True, False, 2),),
    ((3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1)),
    ((5, 96, 40, True, True, 2), (5, 120, 40, True, True, 1), (5, 144, 48, True, True, 1)),
    ((5, 192, 64, True, True, 2), (5, 256, 64, True, True, 1)),
)


class MobileNetV3Backbone(nn.Module):
    """Stem (3x3, stride 2, hardswish) -> four stages; returns each stage's output (strides 4, 8, 16, 32)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        stem = _round8(16 * width)
        self.stem = nn.Sequential(_conv_bn(3, stem, 3, 2), nn.Hardswish())
        stages, ch = [], stem
        for blocks in _SMALL:
            layers = []
            for kernel, hidden, out, se, hswish, stride in blocks:
                out = _round8(out * width)
                layers.append(Bneck(ch, _round8(hidden * width), out, kernel, stride, se, hswish))
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


def mnv3_small(width: float = 1.0) -> nn.Module:
    """The factory ``--student examples.mnv3_backbone:mnv3_small[,width=W]`` calls; widths rounded to multiples of 8."""
    return MobileNetV3Backbone(float(width))
