"""What both exporters share: an NHWC wrapper, a seeded sample input, and quiet converters."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any

from blazeport.specs import ModelSpec


@contextlib.contextmanager
def quiet() -> Any:
    """Exporters print progress on stdout (which ``--json`` owns) and warn about torchvision ops and
    deprecations that are not ours: send stdout to stderr and keep only errors."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "litert_torch", "absl")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def nhwc(module: Any, named_outputs: bool) -> Any:
    """Wrap an NCHW module so the exported graph takes NHWC input (see the module docstring)."""
    from torch import nn

    class NHWC(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input):  # the graph input's name
            r, c = self.inner(input.permute(0, 3, 1, 2))
            return {"regressors": r, "classificators": c} if named_outputs else (r, c)

    return NHWC(module).eval()


def sample_input(spec: ModelSpec, batch: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, spec.input_size, spec.input_size, 3, generator=g) * 2 - 1
