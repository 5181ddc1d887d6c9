"""Backends: map a NHWC float32 batch to raw ``(regressors (B, N, 16), classificators (B, N, 1))``.

Every backend is a callable with that one contract, so the detector pipeline, conversion checks,
evaluation and benchmarks compare like with like. Only :class:`TorchBackend` and
:class:`ExecuTorchBackend` (its pybindings take torch tensors) import torch, and only when built: a
board with LiteRT or onnxruntime and numpy runs the others.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.modelfiles.metadata import METADATA_METHOD
from blazeport.tflite import MEDIAPIPE_CUSTOM_OPS, read_tflite


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


class _ChunkedBackend:
    """What the file backends share: ``_run(batch)`` yields each chunk's outputs (one image, or one
    batch of a dynamic-batch file) in the file's order; ``__call__`` splits them into a detector's
    regressors and classificators, ``raw`` keeps every output as it is."""

    path: Path

    def _run(self, batch: np.ndarray) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regs, clss = [], []
        for outputs in self._run(batch):
            r, c = _split_outputs(outputs, str(self.path))
            regs.append(r)
            clss.append(c)
        return np.concatenate(regs), np.concatenate(clss)

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the file, in its order, as ``(B, ...)`` float32: what a landmark model's
        pipeline reads (:mod:`blazeport.pipeline.landmarks`), where there are no regressors to split."""
        chunks = list(self._run(batch))
        return [np.concatenate([c[i] for c in chunks]).astype(np.float32, copy=False) for i in range(len(chunks[0]))]


class TFLiteBackend(_ChunkedBackend):
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
        # a clear error for missing, unreadable, truncated, foreign or malformed files; LiteRT then gets the
        # very bytes that were checked (one read: the file may change on disk after the check)
        checked = read_tflite(self.path)
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the tflite backend needs LiteRT: pip install ai-edge-litert") from None
        self.threads, self.xnnpack = threads, xnnpack
        self._content = checked.content
        self._custom_ops = checked.custom_ops()
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
                if "unresolved custom op" in str(exc):
                    raise BlazeportError(_custom_op_refusal(self.path, self._custom_ops)) from None
                reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                raise BlazeportError(f"{self.path}: LiteRT cannot load this model ({reason}).") from None
            self._local.interpreter = interpreter
        return interpreter

    def _run(self, batch: np.ndarray) -> Any:
        interpreter = self._interpreter()
        for x in batch:  # the original files have a fixed batch of 1
            x = np.ascontiguousarray(x[None], dtype=np.float32)
            if self.input_quantization is not None:
                x = quantize_input(x, *self.input_quantization, self.input["dtype"])
            interpreter.set_tensor(self.input["index"], x)
            interpreter.invoke()
            yield [_dequantized(interpreter.get_tensor(o["index"]), o) for o in self.outputs]


def _custom_op_refusal(path: Path, ops: dict[str, int]) -> str:
    """One line for a file whose custom ops LiteRT has no kernel for: which, and what runs them."""
    named = ", ".join(f"{name} (v{version})" for name, version in ops.items())
    if ops and set(ops) <= set(MEDIAPIPE_CUSTOM_OPS):
        return (f"{path}: LiteRT has no kernel for MediaPipe's custom op(s) {named} (MediaPipe links its own); run "
                "this model on the torch backend (--backend torch, converted on load) or export it first "
                "(blazeport export MODEL --format onnx) and run the file on onnx")
    return (f"{path}: LiteRT has no kernel for the custom op(s) {named}, and blazeport knows none of them "
            f"(it translates MediaPipe's {', '.join(MEDIAPIPE_CUSTOM_OPS)}); the file needs the runtime it was made for")


def _dequantized(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (x.astype(np.float32) - zero) * scale if x.dtype in INTEGER_INPUTS and scale else x


class OnnxBackend(_ChunkedBackend):
    """An ``.onnx`` file in onnxruntime, e.g. one written by ``blazeport export``: on the CPU, or
    with ``device="cuda[:N]"`` on onnxruntime's CUDA provider (``onnxruntime-gpu``).

    blazeport's files take NHWC input like the ``.tflite`` (see :mod:`blazeport.export`); an ONNX
    file with NCHW input ``(B, 3, S, S)`` is transposed here. A fixed batch of 1 runs image by
    image. ``metadata`` holds the file's ``metadata_props`` (``blazeport.spec`` among them).
    """

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise BlazeportError(f"{self.path}: no such file")
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BlazeportError(f"--device {device}: this onnxruntime has no CUDA provider (it offers "
                                     f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu on a "
                                     "machine with an NVIDIA GPU, or use --device cpu")
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.device = device
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only; the message below names the file
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
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
        # a detector's (B, N, 16) and (B, N, 1), or a landmark model's (B, ..., K) (blazeport.pipeline.landmarks; the
        # attention mesh has seven)
        detector = len(outputs) == 2 and all(len(o.shape) == 3 for o in outputs)
        if not detector and not (outputs and all(len(o.shape) in (2, 4) for o in outputs)):
            raise BlazeportError(f"{self.path}: expected outputs (B, N, 16) and (B, N, 1), or a landmark model's "
                                 f"(B, ..., K), got {[o.shape for o in outputs]}")

    def _run(self, batch: np.ndarray) -> Any:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if self.nchw else batch, dtype=np.float32)
        if self.input_quantization is not None:
            x = quantize_input(x, *self.input_quantization)
        chunks = [x] if self.batch is None else [x[i:i + self.batch] for i in range(0, len(x), self.batch)]
        for chunk in chunks:
            n = len(chunk)
            if self.batch is not None and n < self.batch:  # a fixed batch > 1: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            yield [o[:n] for o in self.session.run(None, {self.input: chunk})]


def _check_pte(path: Path) -> None:
    """Refuse a missing, empty, foreign or truncated ``.pte`` with a message naming the file.

    The runtime's own errors say only ``error: 0x:23``; the header says more: bytes 4-8 hold the
    flatbuffer identifier (``ET12``), and the extended header (``eh00``) the program and segment
    sizes, so a truncated file is caught before loading (layout of ``exir/_serialize/_program.py``).
    """
    if not path.is_file():
        raise BlazeportError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        kind = "an empty file" if size == 0 else f"file identifier {head[4:8]!r}, expected 'ETnn'"
        raise BlazeportError(f"{path}: not an ExecuTorch program ({kind}). Write one with `blazeport export MODEL "
                             "--format executorch`.")
    if head[8:12] == b"eh00" and len(head) >= 32:
        program, base = int.from_bytes(head[16:24], "little"), int.from_bytes(head[24:32], "little")
        segments = int.from_bytes(head[32:40], "little") if int.from_bytes(head[12:16], "little") >= 32 else 0
        expected = max(program, base + segments)
        if size < expected:
            raise BlazeportError(f"{path}: truncated ExecuTorch program ({size:,} of {expected:,} bytes); "
                                 "export or copy it again.")


class ExecuTorchBackend(_ChunkedBackend):
    """A ``.pte`` from ``blazeport export --format executorch`` in the ExecuTorch runtime (pybindings).

    The file is NHWC float32 with batch 1 (like the ``.tflite``): a batch runs image by image.
    ``metadata`` is the dict stored in the file's ``blazeport_metadata`` constant method
    (:mod:`blazeport.export.to_executorch`). ``threads`` resizes ExecuTorch's one process-wide
    threadpool, which the XNNPACK delegate runs on (``_unsafe_reset_threadpool``, experimental in
    executorch 1.5): the last backend built sets it for all; without ``threads`` the pool keeps its
    default, one thread per core.
    """

    name = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        _check_pte(self.path)
        try:
            import torch
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:  # pragma: no cover - depends on the install
            raise BlazeportError("the executorch backend needs ExecuTorch: pip install 'blazeport[export]'") from None
        self.torch = torch
        if threads:
            with warnings.catch_warnings():  # "experimental API": said once in the docstring instead
                warnings.simplefilter("ignore")
                portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BlazeportError(f"{self.path}: ExecuTorch cannot load this program ({exc}).") from None
        self.program = program
        meta = self.method.metadata
        shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        shape = shapes[0] if len(shapes) == 1 else ()
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise BlazeportError(f"{self.path}: expected one float32 image input of shape (1, S, S, 3), got {shapes}")
        self.input_size = int(shape[1])
        self.metadata = self._metadata()

    def _metadata(self) -> dict[str, str]:
        if METADATA_METHOD not in self.program.method_names:
            return {}
        try:
            (text,) = self.program.load_method(METADATA_METHOD).execute([])
            meta = json.loads(text)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise BlazeportError(f"{self.path}: unreadable {METADATA_METHOD} ({exc}); pass --spec NAME") from None
        return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}

    def _run(self, batch: np.ndarray) -> Any:
        for x in batch:  # the file has a fixed batch of 1
            inp = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)
            yield [o.numpy() for o in self.method.execute([inp])]


def _onnx_input_quantization(metadata: dict[str, str], input_type: str, path: Path) -> tuple[float, int, Any] | None:
    """``(scale, zero point, dtype)`` of an int8 input, from the ``blazeport.input_quantization`` metadata."""
    if input_type not in ("tensor(int8)", "tensor(uint8)"):
        return None
    text = metadata.get("blazeport.input_quantization")
    if text is None:
        raise BlazeportError(f"{path}: an {input_type} input without blazeport.input_quantization metadata (scale, "
                             "zero point); export it with `blazeport export --int8 --int8-io`")
    q = json.loads(text)
    return float(q["scale"]), int(q["zero_point"]), np.dtype(q["dtype"]).type


class TorchBackend:
    """A PyTorch module (converted original or student), NCHW inside, NHWC at the boundary.

    ``optimize=True`` (the default) runs a converted original through a plan of fused oneDNN and
    GEMM calls built once here (:func:`blazeport.models.fused.prepare`: same weights, outputs
    checked against the module when built); ``module`` stays the plain module that export traces
    and the trainer trains. The plan runs on one intra-op thread whatever ``threads`` says
    (measured: a second OpenMP thread saves little on tensors this small and stalls whenever the
    other core is busy; see :class:`blazeport.models.fused.FastModule`). A family without a plan
    (the students) or a torch without oneDNN runs the module, on ``threads`` threads.
    ``optimize=False`` always runs the module. ``device="cuda[:N]"`` runs the module on that GPU
    (inputs copied in, outputs copied back to numpy).
    """

    name = "torch"

    def __init__(self, module: Any, threads: int | None = None, optimize: bool = True, device: str = "cpu"):
        import torch

        from blazeport.models.fused import prepare  # torch-only: imported with torch, here

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        if device != "cpu" and not torch.cuda.is_available():
            raise BlazeportError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU (a CPU build, or no "
                                 "driver); install a CUDA build of torch on a machine with an NVIDIA GPU, or use --device cpu")
        if device != "cpu" and int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
            raise BlazeportError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        self.device = torch.device(device)
        # channels-last runs depthwise convs ~3x faster on CPU (oneDNN's NHWC kernels) and suits cuDNN too
        self.module = module.eval().to(self.device, memory_format=torch.channels_last)
        # the fused plan is made of oneDNN (CPU) calls; on a GPU the module runs as it is
        self.runner = (prepare(self.module) if optimize and device == "cpu" else None) or self.module

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            # an NHWC array viewed as NCHW is already channels-last memory: no copy
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)  # (B, 3, S, S)
            if self.device.type != "cpu":
                x = x.to(self.device, non_blocking=True)
            r, c = self.runner(x)
        return r.cpu().numpy(), c.cpu().numpy()

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        """The module's outputs as arrays (a landmark model's, in its file's order)."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)  # (B, 3, S, S)
            if self.device.type != "cpu":
                x = x.to(self.device, non_blocking=True)
            return [o.cpu().numpy() for o in self.runner(x)]
