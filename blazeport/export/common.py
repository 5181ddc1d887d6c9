"""What both exporters share: an NHWC wrapper, a seeded sample input, and quiet converters."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any

from blazeport.specs import LandmarkSpec, ModelSpec


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


def nhwc(module: Any, named_outputs: bool, names: tuple[str, ...] = ("regressors", "classificators")) -> Any:
    """Wrap an NCHW module so the exported graph takes NHWC input (see the module docstring); its
    outputs as a tuple, or a dict by ``names`` (a detector's two; a landmark model's, :func:`output_names`)."""
    from torch import nn

    class NHWC(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input):  # the graph input's name
            out = tuple(self.inner(input.permute(0, 3, 1, 2)))
            return dict(zip(names, out, strict=True)) if named_outputs else out

    return NHWC(module).eval()


def output_names(sizes: list[int], spec: LandmarkSpec) -> list[str]:
    """A landmark model's outputs (floats per image, in the module's order) named by its spec: matched
    by size, equal sizes in order (as :func:`blazeport.modelfiles.verify.landmark_outputs` reads them back)."""
    unused = list(spec.outputs)
    names = []
    for i, n in enumerate(sizes):
        match = next(((name, k) for name, k in unused if k == n), None)
        if match is None:
            names.append(f"output{i}")
            continue
        unused.remove(match)
        names.append(match[0])
    return names


def sample_input(spec: ModelSpec, batch: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, spec.input_size, spec.input_size, 3, generator=g) * 2 - 1
