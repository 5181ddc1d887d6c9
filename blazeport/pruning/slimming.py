"""Network slimming's sparsity term: L1 on BatchNorm scale factors during training.

Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming": each
channel's BatchNorm ``gamma`` scales its whole output, so a channel whose ``|gamma|`` is driven
towards zero can be removed with little effect. The penalty ``sr * sum(|gamma|)`` is applied as
its subgradient ``sr * sign(gamma)`` added to the BN weight gradients after the backward pass,
as the paper's code does (``updateBN``), instead of as a loss term: the loss curves then stay
comparable with and without it. ``sr`` about 1e-4 is the paper's value for ImageNet-scale nets.

:func:`gamma_summary` is what the distillation logs (TensorBoard histogram and scalars): the
distribution a pruning ratio will cut.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["batchnorms", "gamma_summary", "sparsity_step"]


def batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    """Every affine BatchNorm2d of ``module``: the layers whose ``gamma`` prune channels."""
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]


@torch.no_grad()
def sparsity_step(module: nn.Module, sr: float) -> None:
    """Add ``sr * sign(gamma)`` to each BatchNorm weight gradient (call between backward and step)."""
    for bn in batchnorms(module):
        if bn.weight.grad is not None:
            bn.weight.grad.add_(torch.sign(bn.weight), alpha=sr)


@torch.no_grad()
def gamma_summary(module: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
    """All ``|gamma|`` values as one tensor, and their share under 1e-2 and 1e-3 and their median."""
    gammas = [bn.weight.detach().abs().float().cpu() for bn in batchnorms(module)]
    if not gammas:
        return torch.zeros(0), {}
    g = torch.cat(gammas)
    return g, {"under_1e-2": float((g < 1e-2).float().mean()), "under_1e-3": float((g < 1e-3).float().mean()),
               "median": float(g.median())}
