"""ResNet-style residual BlazeFace students: regular 3x3 convs, BatchNorm, residual shortcuts.

The student keeps the teacher's contract (see :mod:`blazeport.models.blazeface`): the same input
size, the same anchors and the same :class:`~blazeport.models.blocks.SSDHead` at the same
strides, so decoding, NMS, export and benchmarks apply unchanged. Only the backbone differs: a
stem conv, then stages of :class:`BasicBlock` (two 3x3 conv + BN, ReLU, identity shortcut, or a
strided 1x1 projection + BN where the shape changes), as in He et al. 2016. BatchNorm is folded
into the convs on export (:func:`fold_batchnorm`).

Named variants are data (:data:`STUDENTS`); ``blazeport models`` prints their params and MACs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.models.blocks import SSDHead


@dataclass(frozen=True)
class StageConfig:
    channels: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class ResNetConfig:
    input_size: int
    stem_channels: int
    stages: tuple[StageConfig, ...]
    head_stages: tuple[int, ...]  # which stages' outputs feed the head, in anchor order
    head_anchors: tuple[int, ...]
    num_coords: int = 16

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ResNetConfig:
        d = json.loads(text)
        d["stages"] = tuple(StageConfig(**s) for s in d["stages"])
        d["head_stages"], d["head_anchors"] = tuple(d["head_stages"]), tuple(d["head_anchors"])
        return cls(**d)


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm; :func:`fold_batchnorm` merges the pair into one conv for export."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        # symmetric padding: a trained-from-scratch student has no TF-SAME weights to honour
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU (projection shortcut when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBN(in_ch, out_ch, 3, stride)
        self.conv2 = ConvBN(out_ch, out_ch, 3)
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


def _stages(stem_channels: int, stages: tuple[StageConfig, ...]) -> nn.ModuleList:
    """One ``nn.Sequential`` of BasicBlocks per stage; the first block of a stage takes its stride."""
    out, ch = [], stem_channels
    for s in stages:
        out.append(nn.Sequential(*(BasicBlock(ch if i == 0 else s.channels, s.channels, s.stride if i == 0 else 1)
                                   for i in range(s.blocks))))
        ch = s.channels
    return nn.ModuleList(out)


def _run_stages(stem: nn.Module, stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Stem (ReLU) then each stage; every stage's output, shallow to deep."""
    x = F.relu(stem(x))  # (B, C0, S/2, S/2)
    maps = []
    for stage in stages:
        x = stage(x)
        maps.append(x)
    return maps


class ResNetBlazeFace(nn.Module):
    """Stem (3x3, stride 2) -> residual stages -> the teacher's SSD head."""

    family = "resnet"

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.stem = ConvBN(3, config.stem_channels, 3, 2)
        self.stages = _stages(config.stem_channels, config.stages)
        self.head = SSDHead(tuple(config.stages[i].channels for i in config.head_stages), config.head_anchors,
                            config.num_coords)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each map :meth:`features` returns, known without running: the head's inputs
        (read from the head, not the config, so a pruned student says its own widths)."""
        return tuple(conv.in_channels for conv in self.head.cls)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at each head level (the MGD distillation hook reads these)."""
        maps = _run_stages(self.stem, self.stages, x)
        return [maps[i] for i in self.config.head_stages]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ResNetBackboneConfig:
    """A ResNet trunk without a head, for :class:`blazeport.models.student.Student` (any teacher)."""

    stem_channels: int
    stages: tuple[StageConfig, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ResNetBackboneConfig:
        d = json.loads(text)
        return cls(d["stem_channels"], tuple(StageConfig(**s) for s in d["stages"]))


class ResNetBackbone(nn.Module):
    """Stem + residual stages; ``forward`` returns every stage's output (the backbone contract of
    :mod:`blazeport.models.student`)."""

    def __init__(self, config: ResNetBackboneConfig):
        super().__init__()
        self.config = config
        self.stem = ConvBN(3, config.stem_channels, 3, 2)
        self.stages = _stages(config.stem_channels, config.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_stages(self.stem, self.stages, x)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy with every ConvBN's BatchNorm folded into its conv (eval-mode statistics).

    ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``; the
    exported graph then has plain convs with bias, like Google's files.
    """
    folded = copy.deepcopy(module).eval()
    for parent in folded.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                conv, bn = child[0], child[1]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
                with torch.no_grad():
                    fused.weight.copy_(conv.weight * scale[:, None, None, None])
                    fused.bias.copy_(bn.bias - bn.running_mean * scale)
                setattr(parent, name, fused)
    return folded


def _short_range(widths: tuple[int, int, int], blocks: tuple[int, int, int], stem: int) -> ResNetConfig:
    """Stages at strides 4, 8, 16 of a 128 input; heads on 16x16 (2 anchors) and 8x8 (6)."""
    return ResNetConfig(
        input_size=128,
        stem_channels=stem,
        stages=tuple(StageConfig(w, b, 2) for w, b in zip(widths, blocks, strict=True)),
        head_stages=(1, 2),
        head_anchors=(2, 6),
    )


STUDENTS: dict[str, ResNetConfig] = {
    # about the teacher's size (teacher: 101k params, 31 MMACs)
    "resnet": _short_range((24, 32, 48), (1, 2, 2), 16),
    # half the width: for the smallest boards
    "resnet_slim": _short_range((16, 24, 32), (1, 1, 1), 12),
    # wider and deeper: more capacity where regular convs are cheap (GPUs, NPUs without depthwise)
    "resnet_large": _short_range((32, 48, 64), (2, 2, 2), 24),
}


def _trunk(config: ResNetConfig, last: int) -> ResNetBackboneConfig:
    """The short-range variant's stages plus one more at stride 32, for teachers with other strides."""
    return ResNetBackboneConfig(config.stem_channels, (*config.stages, StageConfig(last, 1, 2)))


# The same names as backbones (stride 4 to 32): what `--student resnet` builds for back and full range.
RESNET_BACKBONES: dict[str, ResNetBackboneConfig] = {
    "resnet": _trunk(STUDENTS["resnet"], 64),
    "resnet_slim": _trunk(STUDENTS["resnet_slim"], 48),
    "resnet_large": _trunk(STUDENTS["resnet_large"], 96),
}
