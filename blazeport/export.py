"""Export any blazeport model to ONNX or TFLite, then verify the written file before reporting.

One table, :data:`FORMATS`, is the single source of truth for what can be exported (like the
Ultralytics exporter): format name, file suffix, exporter function, the runtime backend that
reads the file back (:mod:`blazeport.backends`), its op counter and the install hint. The CLI's
``--format`` choices, the default output names and the verification all come from it.

**Input layout: NHWC.** Every exported file takes ``input`` as a float32 ``(B, S, S, 3)`` batch
in the spec's range (RGB in [-1, 1], letterboxed) and returns ``regressors (B, N, 16)`` and
``classificators (B, N, 1)``: the same contract as Google's ``.tflite`` and as every backend of
the pipeline. The NCHW transpose for the PyTorch module sits inside the graph, so a file drops
into a MediaPipe-style pipeline (or :class:`blazeport.backends.OnnxBackend` /
``TFLiteBackend``) with no host-side transpose, and ONNX and TFLite files are interchangeable.
It costs one ``Transpose`` at the ONNX input; LiteRT's layout pass folds it away entirely.
(``OnnxBackend`` still accepts NCHW ONNX files from elsewhere and transposes on the host.)

**The spec travels with the file**: ``ModelSpec.to_dict()`` as JSON under the key
``blazeport.spec`` (ONNX ``metadata_props``; TFLite ``Model.metadata`` with a buffer), plus the
layout, the weight precision and the source, so the file alone says how to feed and decode it.
``blazeport.load(file, backend="onnx"|"tflite")`` reads it back.

ONNX: ``torch.onnx.export(dynamo=True, external_data=False)`` (one file, opset 18), then
``onnxslim``. TF ``SAME`` padding is computed from ``x.shape`` in Python, which torch.export
specialises to constants, so the graph has no Shape/Gather chains; ``F.pad`` before a conv is
merged into the conv's pads. ``--fp16`` stores float16 initializers behind ``Cast`` nodes
(float32 compute), the way Google's files keep float16 weights behind ``DEQUANTIZE``.

TFLite: ``litert-torch`` (optional extra ``[export]``), float32 or float16 weights
(ai-edge-quantizer's weight-only float casting, i.e. ``DEQUANTIZE`` ops like the originals).
Two graph-level fixes keep the file free of layout ``TRANSPOSE`` ops (measured: 38 of them in
short range without these): litert-torch 0.10.0 has no NHWC rewriter for ``constant_pad_nd``, so
every ``F.pad`` was wrapped in a transpose pair; :func:`_register_nhwc_pad` adds one. And a
``MAX_POOL_2D`` followed by a channel ``PAD`` (BlazeBlock's shortcut) left the pad in NCHW, so
the traced graph pads first and pools after (:func:`_pad_before_pool`; identical values, since
max-pooling zero channels gives zeros), and the written flatbuffer is put back in Google's order
(:func:`_pool_before_pad`), where the PAD runs on a quarter of the pixels.

Verification: the written file runs in its runtime (onnxruntime / LiteRT) on real photos,
letterboxed like the pipeline does, plus one random input; raw outputs are compared with the
PyTorch module by the conversion gate, and detections after decode and NMS must agree in count
and within the same tolerance (:func:`blazeport.verify.verify`, the check ``convert`` makes too).
Students are exported with their BatchNorm folded into the convs (:func:`blazeport.models.fold_batchnorm`)
and checked against the unfolded module. Float16 weights are reported, not gated.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.backends import RUNTIMES, TorchBackend
from blazeport.data import sample_images
from blazeport.errors import BlazeportError
from blazeport.files import check_output, same_file, staged, write_atomic
from blazeport.loader import open_module
from blazeport.metadata import LAYOUT, file_metadata
from blazeport.specs import SPECS, WEIGHTS_DIR, ModelSpec
from blazeport.tflite import read_tflite
from blazeport.verify import verify

ONNX_OPSET = 18
EXPORT_EXTRA = 'pip install -e ".[export]"'


@dataclass(frozen=True)
class ExportFormat:
    """One row of the format table."""

    name: str
    suffix: str
    exporter: Callable[..., None]  # (module, spec, out, *, fp16, dynamic_batch, metadata) -> None
    backend: str  # blazeport.detector.load(..., backend=...) that runs the file
    op_counter: Callable[[Path], dict[str, int]]
    dynamic_batch: bool  # whether --dynamic-batch is supported
    install: str  # what to install when the exporter's packages are missing
    opset: int | None = None  # the ONNX opset the exporter targets


# ----------------------------------------------------------------------------------------------
# Metadata: the spec inside the file


# ----------------------------------------------------------------------------------------------
# Exporters


@contextlib.contextmanager
def _quiet() -> Any:
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


def _nhwc(module: Any, named_outputs: bool) -> Any:
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


def _sample(spec: ModelSpec, batch: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, spec.input_size, spec.input_size, 3, generator=g) * 2 - 1


def _onnx_fp16_weights(model: Any) -> None:
    """Store float initializers as float16 behind ``Cast`` to float32 (compute stays float32)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        half = numpy_helper.from_array(arr, init.name + "_fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=init.name + "_cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(module: Any, spec: ModelSpec, out: Path, *, fp16: bool, dynamic_batch: bool,
                metadata: dict[str, str]) -> None:
    """``torch.onnx.export`` (dynamo, one file, opset 18) -> onnxslim -> metadata -> ``out``."""
    try:
        import onnx
        import onnxslim
        import torch
    except ImportError as exc:  # pragma: no cover - base dependencies
        raise BlazeportError(f"ONNX export needs {exc.name}: pip install -e .") from None

    wrapper = _nhwc(module, named_outputs=False)
    # torch.export specialises a sample batch of 1, so a dynamic batch is traced with 2.
    sample = _sample(spec, 2 if dynamic_batch else 1)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with _quiet():
        program = torch.onnx.export(wrapper, (sample,), None, dynamo=True, external_data=False,
                                    input_names=["input"], output_names=["regressors", "classificators"],
                                    opset_version=ONNX_OPSET, dynamic_shapes=dynamic, optimize=True, verbose=False)
        model = onnxslim.slim(program.model_proto)
    if fp16:
        _onnx_fp16_weights(model)
    model.producer_name = "blazeport"
    model.doc_string = f"{spec.description} (blazeport export; NHWC float32 input in {list(spec.normalization)})"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    write_atomic(out, model.SerializeToString())


def _register_nhwc_pad() -> None:
    """Teach litert-torch's layout pass to run ``constant_pad_nd`` in NHWC (see module docstring)."""
    import torch
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_rewrite

    op = torch.ops.aten.constant_pad_nd.default
    if op in layout_rewrite.rewriters:
        return

    def nhwc_pad(node: Any) -> None:
        x, pad, *rest = node.args
        pad = [*pad, *[0] * (8 - len(pad))]  # NCHW pairs from the last dim: W, H, C, N
        node.args = (x, pad[4:6] + pad[0:4] + pad[6:8], *rest)  # NHWC pairs: C, W, H, N

    layout_rewrite.rewriters[op] = nhwc_pad


def _pad_before_pool(gm: Any) -> int:
    """Rewrite ``pad_channels(max_pool2d(x))`` as ``max_pool2d(pad_channels(x))`` in an FX graph.

    Equal values (zero channels pool to zero); it lets LiteRT keep the shortcut in NHWC.
    """
    import torch

    aten = torch.ops.aten
    graph, swapped = gm.graph, 0
    for pool in list(graph.nodes):
        if pool.target is not aten.max_pool2d.default or len(pool.users) != 1:
            continue
        (pad,) = pool.users
        if pad.target is not aten.pad.default:
            continue
        widths = list(pad.args[1])
        mode = pad.args[2] if len(pad.args) > 2 else pad.kwargs.get("mode", "constant")
        value = pad.args[3] if len(pad.args) > 3 else pad.kwargs.get("value")
        if len(widths) != 6 or any(widths[:4]) or mode != "constant" or value not in (None, 0, 0.0):
            continue
        with graph.inserting_before(pool):
            early = graph.call_function(aten.pad.default, (pool.args[0], widths))
        pool.replace_input_with(pool.args[0], early)
        pad.replace_all_uses_with(pool)
        graph.erase_node(pad)
        swapped += 1
    graph.lint()
    gm.recompile()
    return swapped


def _pool_before_pad(model: Any) -> int:
    """Rewrite ``MAX_POOL_2D(PAD_channels(x))`` as ``PAD_channels(MAX_POOL_2D(x))`` in a TFLite model.

    Undoes :func:`_pad_before_pool` once LiteRT's graph is NHWC: Google's files pool first, so the
    shortcut's PAD writes a quarter of the pixels and the pool reads only the real channels. The
    PAD's output tensor is reused for the pool's unpadded result (new shape ``(N, Ho, Wo, C_in)``);
    both ops swap places in the operator list so each still runs after its input is made.
    Returns how many pairs were swapped.
    """
    from ai_edge_litert import schema_py_generated as schema

    ops_ = schema.BuiltinOperator
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    sg = model.subgraphs[0]
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(i)
    swapped = 0
    for i, pad in enumerate(sg.operators):
        if codes[pad.opcodeIndex] != ops_.PAD or int(pad.outputs[0]) in sg.outputs:
            continue
        users = consumers.get(int(pad.outputs[0]), [])
        if len(users) != 1 or codes[sg.operators[users[0]].opcodeIndex] != ops_.MAX_POOL_2D:
            continue
        j, pool = users[0], sg.operators[users[0]]
        widths = model.buffers[sg.tensors[pad.inputs[1]].buffer].data
        if widths is None or np.frombuffer(bytes(widths), np.int32)[:-2].any():  # channel padding only
            continue
        x, mid, y = int(pad.inputs[0]), int(pad.outputs[0]), int(pool.outputs[0])
        shape = sg.tensors[y].shape.copy()  # (N, Ho, Wo, C_in + pad)
        shape[-1] = sg.tensors[x].shape[-1]
        sg.tensors[mid].shape = shape  # (N, Ho, Wo, C_in)
        sg.tensors[mid].shapeSignature = None
        pool.inputs, pool.outputs = np.array([x], np.int32), np.array([mid], np.int32)
        pad.inputs, pad.outputs = np.array([mid, int(pad.inputs[1])], np.int32), np.array([y], np.int32)
        sg.operators[i], sg.operators[j] = pool, pad
        swapped += 1
    return swapped


def _tflite_with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """Add ``Model.metadata`` entries, name the I/O tensors like Google's files and pool before
    padding as they do (:func:`_pool_before_pad`)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    _pool_before_pad(model)
    sg = model.subgraphs[0]
    sg.tensors[sg.inputs[0]].name = "input"
    for i in sg.outputs:
        t = sg.tensors[i]
        t.name = "classificators" if int(t.shape[-1]) == 1 else "regressors"
    model.buffers = list(model.buffers or [])
    for buf in model.buffers:  # ai-edge-quantizer appends some buffers after the flatbuffer: inline them
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(data, np.uint8, count=buf.size, offset=buf.offset)
            buf.offset = buf.size = 0
    model.metadata = list(model.metadata or [])
    for key, value in metadata.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(value.encode("utf-8"), np.uint8)
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = key
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _litert_convert(module: Any, spec: ModelSpec) -> bytes:
    """The float32 flatbuffer from litert-torch, NHWC input named ``input``, batch 1."""
    import litert_torch
    import torch

    _register_nhwc_pad()
    sample = _sample(spec, 1)
    with _quiet():
        gm = torch.export.export(_nhwc(module, named_outputs=True), (), {"input": sample}, strict=False).module()
        _pad_before_pool(gm)
        for sub in gm.modules():  # exported modules refuse .eval(); litert-torch checks .training
            sub.training = False
        return bytes(litert_torch.convert(gm, sample_kwargs={"input": sample}).model_content())


def _tflite_fp16(data: bytes) -> bytes:
    """Float16 weights behind DEQUANTIZE, compute in float32: ai-edge-quantizer's weight-only float
    casting, the recipe ``litert_torch.convert(quant_config=full_fp16_recipe())`` applies."""
    from litert_torch.generative.quantize import quant_recipes
    from litert_torch.quantize import translate_recipe

    recipe = translate_recipe.translate_to_ai_edge_recipe(quant_recipes.full_fp16_recipe().generative_recipe)
    with _quiet():
        return bytes(translate_recipe.quantize_model(data, recipe))


def export_tflite(module: Any, spec: ModelSpec, out: Path, *, fp16: bool, dynamic_batch: bool,
                  metadata: dict[str, str]) -> None:
    """litert-torch: NHWC float input, float32 or float16 weights, batch 1 like Google's files."""
    if dynamic_batch:
        raise BlazeportError("--dynamic-batch is for ONNX; TFLite files keep batch 1 like Google's originals")
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        raise BlazeportError(f"TFLite export needs litert-torch: {EXPORT_EXTRA}") from None
    data = _litert_convert(module, spec)
    if fp16:
        data = _tflite_fp16(data)
    write_atomic(out, _tflite_with_metadata(data, metadata))


def onnx_op_counts(path: Path) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def tflite_op_counts(path: Path) -> dict[str, int]:
    return read_tflite(path).op_counts()


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", export_onnx, "onnx", onnx_op_counts, True, "pip install -e .", ONNX_OPSET),
        ExportFormat("tflite", ".tflite", export_tflite, "tflite", tflite_op_counts, False, EXPORT_EXTRA),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise BlazeportError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


# ----------------------------------------------------------------------------------------------
# Source model, verification, the report


def default_output(model: str | Path, spec: ModelSpec, fmt: ExportFormat, fp16: bool) -> Path:
    """``NAME[_fp16].SUFFIX`` in the current directory (NAME: the spec or the source file's stem).

    Exporting ``face_detection_short_range.tflite`` to TFLite from inside ``weights/`` would name
    the original itself: then the name gets ``_export`` so the default never lands on an input.
    """
    path = Path(model)
    stem = path.stem if path.suffix in (".safetensors", ".tflite") else spec.name
    out = Path(f"{stem}{'_fp16' if fp16 else ''}{fmt.suffix}")
    if any(same_file(out, p) for p in protected_inputs(path, spec)):
        out = out.with_name(f"{out.stem}_export{out.suffix}")
    return out


def protected_inputs(source: Path, spec: ModelSpec) -> list[Path]:
    """Files an export must never overwrite: its source and Google's bundled originals."""
    originals = [WEIGHTS_DIR / s.tflite for s in SPECS.values() if s.tflite]
    return [source, *originals, *([WEIGHTS_DIR / spec.tflite] if spec.tflite else [])]


def export(model: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, fp16: bool = False,
           dynamic_batch: bool = False, images: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Export, verify, and return the report (the CLI's ``--json``).

    ``ok`` is the float32 gate (raw outputs by :func:`blazeport.convert.passes`, detections in the
    same count and within ``ABS_TOL``); float16 weights are reported, and ``ok`` only requires
    finite outputs.
    """
    from blazeport.models import fold_batchnorm  # imports torch, which export needs anyway

    f = get_format(fmt)
    if dynamic_batch and not f.dynamic_batch:
        raise BlazeportError(f"--dynamic-batch is not supported for {f.name}; it is for "
                             f"{', '.join(x.name for x in FORMATS.values() if x.dynamic_batch)}")
    module, spec, source = open_module(model)
    out = Path(out) if out else default_output(model, spec, f, fp16)
    if out.suffix != f.suffix:
        raise BlazeportError(f"{out}: {f.name} files end in {f.suffix}; choose another -o name")
    check_output(out, protected_inputs(source, spec), f"{f.name} export")
    images = images if images is not None else sample_images()
    with staged(out) as stage:
        t0 = time.perf_counter()
        # students' BatchNorm folded into their convs (plain convs with bias, like Google's files);
        # the written file is then checked against the unfolded module, which checks the folding too
        f.exporter(fold_batchnorm(module), spec, stage.path, fp16=fp16, dynamic_batch=dynamic_batch,
                   metadata=file_metadata(spec, source, fp16, dynamic_batch))
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        written = RUNTIMES[f.backend].backend(stage.path)
        if written.input_size != spec.input_size:
            raise BlazeportError(f"{out}: input is {written.input_size}px, spec {spec.name} expects {spec.input_size}px")
        check = verify(written, TorchBackend(module), spec, images)
        verify_seconds = time.perf_counter() - t1
        size, op_counts = stage.path.stat().st_size, f.op_counter(stage.path)
        ok = check["passes_gate"] if not fp16 else check["finite"]
        if ok:  # a file that fails its check never replaces a previous export
            stage.commit()
    original = WEIGHTS_DIR / spec.tflite if spec.tflite else None
    report: dict[str, Any] = {
        "format": f.name,
        "spec": spec.name,
        "source": str(source),
        "output": str(out),
        "runtime": f.backend,
        "layout": LAYOUT,
        "input_shape": ["batch" if dynamic_batch else 1, spec.input_size, spec.input_size, 3],
        "weights": "float16" if fp16 else "float32",
        "opset": f.opset,
        "size_bytes": size,
        "written": ok,
        "seconds": round(seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        **{k: check[k] for k in ("max_abs_diff", "max_scaled_diff", "tolerance_used", "decoded_diff", "detections",
                                 "images", "random_inputs", "tolerance", "passes_gate")},
        "gated": not fp16,
        "ok": ok,
        "op_counts": op_counts,
        "original": str(original) if original and original.is_file() else None,
        "original_op_counts": tflite_op_counts(original) if original and original.is_file() else None,
    }
    if original and original.is_file():
        report["original_size_bytes"] = original.stat().st_size
    return report
