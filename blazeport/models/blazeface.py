"""The MobileNet-style BlazeFace family, one parameterised module, named variants as data.

A variant is a :class:`BlazeFaceConfig`: the stem, the list of BlazeBlocks and which block
outputs feed the detection head. The converter reads the same config out of a ``.tflite`` graph
(:func:`blazeport.convert.extract`) and a test keeps the registered variants equal to
what the original files contain, so a variant here is the file's architecture, not a guess.

Head contract (any backbone that meets it plugs into the same anchors, decoding, NMS, export and
benchmarks): ``forward(x)`` takes ``(B, 3, S, S)`` RGB in [-1, 1] and returns
``(regressors (B, N, 16), classificators (B, N, 1))`` with row i belonging to anchor i of the
spec; :class:`blazeport.models.blocks.SSDHead` produces that order from NCHW feature maps.
A backbone that also exposes ``features(x)`` (the head's input maps), ``feature_channels``
(their channels) and ``head`` can be distilled with the feature-map ``mgd`` loss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.models.blocks import BlazeBlock, Conv2dSame, SSDHead


@dataclass(frozen=True)
class BlockConfig:
    in_ch: int
    out_ch: int
    stride: int = 1
    kernel: int = 3
    residual: bool = True


@dataclass(frozen=True)
class BlazeFaceConfig:
    input_size: int
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    blocks: tuple[BlockConfig, ...]
    head_sources: tuple[int, ...]  # index of the block whose output feeds each head level
    head_anchors: tuple[int, ...]  # anchors per cell at each head level
    num_coords: int = 16

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BlazeFaceConfig:
        d = json.loads(text)
        d["blocks"] = tuple(BlockConfig(**b) for b in d["blocks"])
        d["head_sources"] = tuple(d["head_sources"])
        d["head_anchors"] = tuple(d["head_anchors"])
        return cls(**d)


def _stage(channels: list[int], strides: dict[int, int] | None = None) -> tuple[BlockConfig, ...]:
    """Blocks along a channel list; ``strides`` maps block index -> stride (default 1)."""
    strides = strides or {}
    return tuple(BlockConfig(a, b, strides.get(i, 1)) for i, (a, b) in enumerate(pairwise(channels)))


class BlazeFace(nn.Module):
    """Stem conv -> BlazeBlocks -> SSD head on chosen block outputs."""

    family = "blazeface"

    def __init__(self, config: BlazeFaceConfig):
        super().__init__()
        self.config = config
        self.stem = Conv2dSame(3, config.stem_channels, config.stem_kernel, config.stem_stride)
        self.blocks = nn.ModuleList(BlazeBlock(b.in_ch, b.out_ch, b.stride, b.kernel, b.residual) for b in config.blocks)
        self.head = SSDHead(self.feature_channels, config.head_anchors, config.num_coords)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each map :meth:`features` returns (the head's inputs), known without running."""
        return tuple(self.config.blocks[i].out_ch for i in self.config.head_sources)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at each head level (the MGD distillation hook reads these)."""
        x = F.relu(self.stem(x))  # (B, C0, S/2, S/2)
        taps: dict[int, torch.Tensor] = {}
        last = max(self.config.head_sources)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.config.head_sources:
                taps[i] = x
            if i == last:
                break
        return [taps[i] for i in self.config.head_sources]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))


# Short range: 16 blocks, heads on the 16x16 map (block 10, 88 ch) and the 8x8 map (block 15).
SHORT_RANGE = BlazeFaceConfig(
    input_size=128,
    stem_channels=24,
    stem_kernel=5,
    stem_stride=2,
    blocks=_stage([24, 24, 28, 32, 36, 42, 48, 56, 64, 72, 80, 88, 96, 96, 96, 96, 96], {2: 2, 5: 2, 11: 2}),
    head_sources=(10, 15),
    head_anchors=(2, 6),
)

# Back: 32 blocks of 24/48/96 channels; the last one (stride 2, 16x16 -> 8x8) has no shortcut.
BACK = BlazeFaceConfig(
    input_size=256,
    stem_channels=24,
    stem_kernel=5,
    stem_stride=2,
    blocks=(
        *_stage([24] * 16, {7: 2}),
        BlockConfig(24, 48, 2),
        *_stage([48] * 8),
        BlockConfig(48, 96, 2),
        *_stage([96] * 8),
        BlockConfig(96, 96, 2, residual=False),
    ),
    head_sources=(30, 31),
    head_anchors=(2, 6),
)

VARIANTS: dict[str, BlazeFaceConfig] = {
    "blazeface_short_range": SHORT_RANGE,
    "blazeface_back": BACK,
}
