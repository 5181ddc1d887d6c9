"""Backends: map a NHWC float32 batch to raw ``(regressors (B, N, 16), classificators (B, N, 1))``.

Every backend is a callable with that one contract, so the detector pipeline, conversion checks,
evaluation and benchmarks compare like with like. Only :class:`TorchBackend` imports torch, and
only when built: a board with LiteRT or onnxruntime and numpy runs the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError


def _split_outputs(outputs: list[np.ndarray], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Pick regressors and classificators by their last dimension (16 vs 1), whatever their names."""
    reg = [o for o in outputs if o.ndim == 3 and o.shape[-1] > 1]
    cls = [o for o in outputs if o.ndim == 3 and o.shape[-1] == 1]
    if len(reg) != 1 or len(cls) != 1:
        raise BlazeportError(f"{source}: expected outputs (B, N, 16) and (B, N, 1), got {[o.shape for o in outputs]}")
    return reg[0].astype(np.float32, copy=False), cls[0].astype(np.float32, copy=False)


class TFLiteBackend:
    """The original (or any exported) ``.tflite`` in the LiteRT interpreter.

    ``xnnpack=False`` uses the builtin reference kernels without default delegates, which is also
    what makes intermediate tensors readable (with XNNPACK they read back as zeros).
    """

    name = "tflite"

    def __init__(self, path: str | Path, threads: int | None = None, xnnpack: bool = True):
        from blazeport.tflite import read_tflite

        self.path = Path(path)
        read_tflite(self.path)  # a clear error for missing, empty, truncated or foreign files
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the tflite backend needs LiteRT: pip install ai-edge-litert") from None
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads, experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise BlazeportError(f"{self.path}: LiteRT cannot load this model ({exc}).") from None
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.input_size = int(self.input["shape"][1])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regs, clss = [], []
        for x in batch:  # the original files have a fixed batch of 1
            self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x[None], dtype=np.float32))
            self.interpreter.invoke()
            r, c = _split_outputs([self.interpreter.get_tensor(o["index"]) for o in self.outputs], str(self.path))
            regs.append(r)
            clss.append(c)
        return np.concatenate(regs), np.concatenate(clss)


class TorchBackend:
    """A PyTorch module (converted original or student), NCHW inside, NHWC at the boundary."""

    name = "torch"

    def __init__(self, module: Any, threads: int | None = None):
        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        # channels-last runs depthwise convs ~3x faster on CPU (oneDNN's NHWC kernels)
        self.module = module.eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            # an NHWC array viewed as NCHW is already channels-last memory: no copy
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)  # (B, 3, S, S)
            r, c = self.module(x)
        return r.numpy(), c.numpy()
