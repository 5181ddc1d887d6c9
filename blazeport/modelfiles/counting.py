"""Parameter and multiply-accumulate counts of a module, measured by running it once."""

from __future__ import annotations

from typing import Any


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: Any, input_size: int) -> int:
    """MACs of one forward pass on a ``(1, 3, S, S)`` input: convolutions and linear layers.

    Counted with forward hooks from the actual output shapes, so TF-SAME padding, strides and
    whatever a GraphNet's op list contains are all accounted for as run.
    """
    import torch
    from torch import nn

    total = 0

    def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += int(out.numel() // out.shape[0]) * k
        elif isinstance(mod, nn.Linear):
            total += int(out.numel() // out.shape[0]) * mod.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    return total
