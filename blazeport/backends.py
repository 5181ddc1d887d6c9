"""Backends: map a NHWC float32 batch to raw ``(regressors (B, N, 16), classificators (B, N, 1))``.

Every backend is a callable with that one contract, so the detector pipeline, conversion checks,
evaluation and benchmarks compare like with like. Only :class:`TorchBackend` imports torch, and
only when built: a board with LiteRT or onnxruntime and numpy runs the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.tflite import read_tflite


def _split_outputs(outputs: list[np.ndarray], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Pick regressors and classificators by their last dimension (16 vs 1), whatever their names."""
    reg = [o for o in outputs if o.ndim == 3 and o.shape[-1] > 1]
    cls = [o for o in outputs if o.ndim == 3 and o.shape[-1] == 1]
    if len(reg) != 1 or len(cls) != 1:
        raise BlazeportError(f"{source}: expected outputs (B, N, 16) and (B, N, 1), got {[o.shape for o in outputs]}")
    return reg[0].astype(np.float32, copy=False), cls[0].astype(np.float32, copy=False)


INTEGER_INPUTS = (np.int8, np.uint8)


def quantize_input(batch: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """The float batch as an int8 (or uint8) file wants it: ``round(x / scale) + zero_point``, saturated.

    Files written with ``blazeport export --int8 --int8-io`` take integer input; the pipeline still
    letterboxes to floats, so every backend quantizes here with the file's own scale and zero point."""
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)


class TFLiteBackend:
    """The original (or any exported) ``.tflite`` in the LiteRT interpreter.

    ``xnnpack=False`` uses the builtin reference kernels without default delegates, which is also
    what makes intermediate tensors readable (with XNNPACK they read back as zeros).

    Safe to share across threads: a LiteRT ``Interpreter`` is not (shared by 4 threads, most calls
    raised "There is at least 1 reference to internal data" and some returned another image's
    faces, because ``set_tensor``/``invoke``/``get_tensor`` of two threads interleave on one input
    buffer). Each calling thread gets its own interpreter, built from the same validated bytes on
    its first call; threads then run in parallel instead of queueing on a lock (measured in
    ``tests/test_threads.py``' note and the README). Interpreters are small (the model's tensors).
    """

    name = "tflite"

    def __init__(self, path: str | Path, threads: int | None = None, xnnpack: bool = True):
        self.path = Path(path)
        read_tflite(self.path)  # a clear error for missing, unreadable, truncated, foreign or malformed files
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the tflite backend needs LiteRT: pip install ai-edge-litert") from None
        self.threads, self.xnnpack = threads, xnnpack
        self._content = self.path.read_bytes()
        self._local = threading.local()
        interpreter = self._interpreter()
        inputs = interpreter.get_input_details()
        shape = tuple(int(x) for x in inputs[0]["shape"]) if len(inputs) == 1 else ()
        # what the pipeline feeds: one NHWC float32 RGB batch of 1, square (as Google's files)
        dtype = inputs[0]["dtype"] if inputs else None
        # an int8 input must say how to quantize (scale, zero point), as --int8-io files do
        integer = dtype in INTEGER_INPUTS and bool(inputs[0]["quantization"][0])
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3 or not (dtype == np.float32 or integer):
            got = [(tuple(int(x) for x in i["shape"]), np.dtype(i["dtype"]).name) for i in inputs]
            raise BlazeportError(f"{self.path}: expected one float32 (or quantized int8) image input of shape (1, S, S, 3), "
                                 f"got {got}")
        self.input = inputs[0]
        self.input_quantization = inputs[0]["quantization"] if integer else None
        self.outputs = interpreter.get_output_details()
        self.input_size = shape[1]

    @property
    def interpreter(self) -> Any:
        """This thread's interpreter (intermediate tensors, details)."""
        return self._interpreter()

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            resolver = OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            try:
                interpreter = Interpreter(model_content=self._content, num_threads=self.threads,
                                          experimental_op_resolver_type=resolver)
                interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise BlazeportError(f"{self.path}: LiteRT cannot load this model ({exc}).") from None
            self._local.interpreter = interpreter
        return interpreter

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        interpreter = self._interpreter()
        regs, clss = [], []
        for x in batch:  # the original files have a fixed batch of 1
            x = np.ascontiguousarray(x[None], dtype=np.float32)
            if self.input_quantization is not None:
                x = quantize_input(x, *self.input_quantization, self.input["dtype"])
            interpreter.set_tensor(self.input["index"], x)
            interpreter.invoke()
            r, c = _split_outputs([_dequantized(interpreter.get_tensor(o["index"]), o) for o in self.outputs], str(self.path))
            regs.append(r)
            clss.append(c)
        return np.concatenate(regs), np.concatenate(clss)


def _dequantized(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (x.astype(np.float32) - zero) * scale if x.dtype in INTEGER_INPUTS and scale else x


class OnnxBackend:
    """An ``.onnx`` file in onnxruntime (CPU), e.g. one written by ``blazeport export``.

    blazeport's files take NHWC input like the ``.tflite`` (see :mod:`blazeport.export`); an ONNX
    file with NCHW input ``(B, 3, S, S)`` is transposed here. A fixed batch of 1 runs image by
    image. ``metadata`` holds the file's ``metadata_props`` (``blazeport.spec`` among them).
    """

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BlazeportError(f"{self.path}: no such file")
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only; the message below names the file
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BlazeportError(f"{self.path}: onnxruntime cannot load this file as an ONNX model ({reason}).") from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        self.input_quantization = _onnx_input_quantization(self.metadata, inputs[0].type if inputs else "", self.path)
        if (len(shape) != 4 or 3 not in (shape[1], shape[3])
                or not (str(inputs[0].type).startswith("tensor(float") or self.input_quantization)):
            got = [(i.name, i.shape, i.type) for i in inputs]
            raise BlazeportError(f"{self.path}: expected one float (or quantized int8) image input (B, S, S, 3) or "
                                 f"(B, 3, S, S), got {got}")
        self.input = inputs[0].name
        self.nchw = shape[3] != 3
        size = shape[2] if self.nchw else shape[1]
        if not isinstance(size, int):
            raise BlazeportError(f"{self.path}: the input size must be fixed, got shape {shape}")
        self.input_size = size
        self.batch = shape[0] if isinstance(shape[0], int) else None  # None: dynamic
        outputs = self.session.get_outputs()
        if len(outputs) != 2 or any(len(o.shape) != 3 for o in outputs):
            raise BlazeportError(f"{self.path}: expected outputs (B, N, 16) and (B, N, 1), got {[o.shape for o in outputs]}")

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if self.nchw else batch, dtype=np.float32)
        if self.input_quantization is not None:
            x = quantize_input(x, *self.input_quantization)
        chunks = [x] if self.batch is None else [x[i:i + self.batch] for i in range(0, len(x), self.batch)]
        regs, clss = [], []
        for chunk in chunks:
            n = len(chunk)
            if self.batch is not None and n < self.batch:  # a fixed batch > 1: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            r, c = _split_outputs(self.session.run(None, {self.input: chunk}), str(self.path))
            regs.append(r[:n])
            clss.append(c[:n])
        return np.concatenate(regs), np.concatenate(clss)


def _onnx_input_quantization(metadata: dict[str, str], input_type: str, path: Path) -> tuple[float, int, Any] | None:
    """``(scale, zero point, dtype)`` of an int8 input, from the ``blazeport.input_quantization`` metadata."""
    if input_type not in ("tensor(int8)", "tensor(uint8)"):
        return None
    text = metadata.get("blazeport.input_quantization")
    if text is None:
        raise BlazeportError(f"{path}: an {input_type} input without blazeport.input_quantization metadata (scale, "
                             "zero point); export it with `blazeport export --int8 --int8-io`")
    import json

    q = json.loads(text)
    return float(q["scale"]), int(q["zero_point"]), np.dtype(q["dtype"]).type


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


@dataclass(frozen=True)
class Runtime:
    """One row of the runtime registry: the single source of the runtime list (CLI choices,
    ``blazeport.load``, bench), like Ultralytics' AutoBackend picking the runtime from the file."""

    name: str
    backend: type
    suffixes: tuple[str, ...]  # model files it runs ('.tflite' on torch: converted on load)
    runs_spec_names: bool  # a spec name runs on it (torch: converted weights; tflite: Google's original)
    install: str


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("torch", TorchBackend, (".safetensors", ".tflite"), True, "pip install -e ."),
        Runtime("tflite", TFLiteBackend, (".tflite",), True, "pip install ai-edge-litert"),
        Runtime("onnx", OnnxBackend, (".onnx",), False, "pip install onnxruntime"),
    )
}
MODEL_SUFFIXES = tuple(sorted({s for r in RUNTIMES.values() for s in r.suffixes}))


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise BlazeportError(f"unknown backend {name!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def native_runtime(path: str | Path) -> str | None:
    """The runtime that reads this file as it is (``.tflite`` -> tflite, ``.onnx`` -> onnx, ...)."""
    suffix = Path(path).suffix
    return next((r.name for r in RUNTIMES.values() if r.suffixes and r.suffixes[0] == suffix), None)
