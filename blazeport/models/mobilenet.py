"""MobileNetV2-style student backbones: inverted residual blocks with depthwise convs.

Beside the ResNet family (:mod:`blazeport.models.resnet`), which spends its MACs on regular 3x3
convs, these spend them the way BlazeFace itself does: a cheap depthwise kxk conv between two
1x1 convs (Sandler et al. 2018). Per output channel that is far fewer MACs than a 3x3 conv, which
is what a phone CPU or a microcontroller wants, at the cost of more, smaller ops.

A :class:`MobileNetBackbone` follows the backbone contract: ``forward(x)`` takes ``(B, 3, S, S)``
RGB in [-1, 1] and returns one NCHW map per stage, shallow to deep, at strictly increasing
strides; blazeport attaches its own neck and SSD head at the strides it needs. Only plain ops
(Conv2d, BatchNorm2d, ReLU/ReLU6, add) and symmetric ``kernel // 2`` padding, so the network is
fully convolutional and exports to ONNX and TFLite. Every conv, depthwise ones included, is a
:class:`~blazeport.models.resnet.ConvBN` (conv at index 0, BN at index 1), so the one BN-folding
pass, :func:`~blazeport.models.resnet.fold_batchnorm`, folds them all on export.

Named variants are data (:data:`MOBILENETS`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.models.resnet import ConvBN

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu6": nn.ReLU6, "relu": nn.ReLU}


@dataclass(frozen=True)
class MobileNetStage:
    """``blocks`` inverted residual blocks; the first one has ``stride`` and changes the width."""

    channels: int
    blocks: int
    stride: int
    expansion: int = 4  # hidden width of a block = expansion * its input width (1: no expand conv)
    kernel: int = 3  # depthwise kernel (odd, so ``kernel // 2`` padding is symmetric)


@dataclass(frozen=True)
class MobileNetConfig:
    stem_channels: int
    stages: tuple[MobileNetStage, ...]
    activation: str = "relu6"  # relu6 keeps activations bounded, which int8 quantization likes

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise BlazeportError(f"bad MobileNet config: {field} {why}")

        check(self.stem_channels > 0 and self.stem_channels % 8 == 0, "stem_channels",
              f"must be a positive multiple of 8 (got {self.stem_channels})")
        check(self.activation in ACTIVATIONS, "activation", f"must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})")
        check(len(self.stages) >= 1, "stages", "must hold at least one stage")
        for i, s in enumerate(self.stages):
            f = f"stages[{i}]"
            check(s.channels > 0 and s.channels % 8 == 0, f"{f}.channels", f"must be a positive multiple of 8 (got {s.channels})")
            check(s.stride in (1, 2), f"{f}.stride", f"must be 1 or 2 (got {s.stride})")
            # every stage is an output map, and the contract wants strictly increasing strides
            check(s.stride == 2 or i == 0, f"{f}.stride", "must be 2 after the first stage (each stage output is a feature map "
                                                           "and their strides must increase)")
            check(s.blocks >= 1, f"{f}.blocks", f"must be >= 1 (got {s.blocks})")
            check(s.expansion >= 1, f"{f}.expansion", f"must be >= 1 (got {s.expansion})")
            check(s.kernel >= 1 and s.kernel % 2 == 1, f"{f}.kernel", f"must be odd (got {s.kernel})")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MobileNetConfig:
        d = json.loads(text)
        d["stages"] = tuple(MobileNetStage(**s) for s in d["stages"])
        return cls(**d)


class InvertedResidual(nn.Module):
    """1x1 expand + act, depthwise kxk (stride) + act, 1x1 linear project; identity shortcut if shapes match.

    The projection has no activation: a ReLU on the narrow output would destroy information
    that the wide hidden layer kept (the "linear bottleneck" of MobileNetV2).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, kernel: int, activation: str):
        super().__init__()
        hidden = in_ch * expansion
        act = ACTIVATIONS[activation]
        self.expand = nn.Sequential(ConvBN(in_ch, hidden, 1), act()) if expansion != 1 else nn.Identity()
        self.depthwise = nn.Sequential(ConvBN(hidden, hidden, kernel, stride, groups=hidden), act())  # depthwise
        self.project = ConvBN(hidden, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetBackbone(nn.Module):
    """Stem (3x3, stride 2) + act -> stages of inverted residuals; returns every stage's output."""

    family = "mobilenet"

    def __init__(self, config: MobileNetConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(ConvBN(3, config.stem_channels, 3, 2), ACTIVATIONS[config.activation]())
        stages, ch = [], config.stem_channels
        for s in config.stages:
            blocks = [InvertedResidual(ch if i == 0 else s.channels, s.channels, s.stride if i == 0 else 1, s.expansion, s.kernel,
                                       config.activation) for i in range(s.blocks)]
            stages.append(nn.Sequential(*blocks))
            ch = s.channels
        self.stages = nn.ModuleList(stages)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each map :meth:`forward` returns, known without running."""
        return tuple(s.channels for s in self.config.stages)

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """Stride of each map :meth:`forward` returns relative to the input (the stem counts 2)."""
        strides, total = [], 2
        for s in self.config.stages:
            total *= s.stride
            strides.append(total)
        return tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, C0, S/2, S/2)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def _four_stages(stem: int, widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int],
                 kernels: tuple[int, int, int, int] = (3, 3, 3, 3), expansion: int = 4) -> MobileNetConfig:
    """Four stride-2 stages: maps at strides 4, 8, 16, 32, so every teacher's head strides exist."""
    stages = tuple(MobileNetStage(w, b, 2, expansion, k) for w, b, k in zip(widths, blocks, kernels, strict=True))
    return MobileNetConfig(stem, stages)


MOBILENETS: dict[str, MobileNetConfig] = {
    # about the short-range teacher's size (teacher: 101k params, 31 MMACs at 128; this: 105k, 17 MMACs)
    "mobilenet": _four_stages(16, (16, 24, 48, 64), (2, 2, 2, 2)),
    # a third of the params: for microcontrollers and the smallest NPUs
    "mobilenet_slim": _four_stages(8, (16, 16, 24, 40), (1, 1, 2, 2)),
    # 2.5x the params; 5x5 depthwise in the deep stages widens the receptive field for large faces
    "mobilenet_large": _four_stages(16, (24, 40, 64, 96), (2, 2, 3, 2), (3, 3, 5, 5)),
}
