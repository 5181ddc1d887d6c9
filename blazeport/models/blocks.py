"""Layers shared by every BlazeFace-family network, with TFLite's quirks fixed where they occur."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) along one axis.

    TensorFlow pads so that ``out = ceil(size / stride)`` and puts the odd pixel *after*: a
    stride-2 3x3 depthwise conv on an even size pads (0, 1), the 5x5 stem on 128 pads (1, 2).
    PyTorch's symmetric ``padding=k//2`` would shift every stride-2 layer by one pixel.
    """
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF ``SAME`` padding computed from the input size at run time."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True):
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(in_ch, out_ch, kernel, stride, padding=kernel // 2 if symmetric else 0, groups=groups, bias=bias)
        self.tf_pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_pad:
            ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))  # (B, C, H+ph, W+pw)
        return super().forward(x)


class BlazeBlock(nn.Module):
    """Depthwise kxk (stride s) -> pointwise 1x1 -> + shortcut -> ReLU.

    The shortcut mirrors the TFLite graph: a stride-2 block max-pools the input 2x2 (TFLite
    ``MAX_POOL_2D``), and a block that widens pads the new channels with zeros (TFLite ``PAD`` on
    the channel axis) instead of projecting. ``residual=False`` is the back model's last block.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3, residual: bool = True):
        super().__init__()
        self.in_ch, self.out_ch, self.stride, self.residual = in_ch, out_ch, stride, residual
        self.dw = Conv2dSame(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))  # (B, out, H/s, W/s)
        if not self.residual:
            return F.relu(y)
        if self.stride > 1:
            x = F.max_pool2d(x, self.stride)  # (B, in, H/s, W/s)
        if self.out_ch > self.in_ch:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_ch - self.in_ch))  # zero channels appended
        return F.relu(x + y)


class SSDHead(nn.Module):
    """1x1 classifier and regressor convs on each feature map, flattened in TFLite's order.

    The TFLite graph reshapes NHWC ``(1, H, W, A*k)`` to ``(1, H*W*A, k)``: anchors vary fastest,
    then x, then y. Permuting NCHW to NHWC before the reshape keeps that order, so output row i
    belongs to MediaPipe's anchor i.
    """

    def __init__(self, channels: tuple[int, ...], anchors_per_cell: tuple[int, ...], num_coords: int = 16):
        super().__init__()
        self.num_coords = num_coords
        self.cls = nn.ModuleList(nn.Conv2d(c, a, 1) for c, a in zip(channels, anchors_per_cell, strict=True))
        self.reg = nn.ModuleList(nn.Conv2d(c, a * num_coords, 1) for c, a in zip(channels, anchors_per_cell, strict=True))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = features[0].shape[0]
        cls = [c(f).permute(0, 2, 3, 1).reshape(b, -1, 1) for c, f in zip(self.cls, features, strict=True)]
        reg = [r(f).permute(0, 2, 3, 1).reshape(b, -1, self.num_coords) for r, f in zip(self.reg, features, strict=True)]
        return torch.cat(reg, dim=1), torch.cat(cls, dim=1)  # (B, N, 16), (B, N, 1)
