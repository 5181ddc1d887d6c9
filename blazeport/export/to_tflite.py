"""TFLite exporter (litert-torch).

TFLite: ``litert-torch`` (optional extra ``[export]``), float32 or float16 weights
(ai-edge-quantizer's weight-only float casting, i.e. ``DEQUANTIZE`` ops like the originals).
Two graph-level fixes keep the file free of layout ``TRANSPOSE`` ops (measured: 38 of them in
short range without these): litert-torch 0.10.0 has no NHWC rewriter for ``constant_pad_nd``, so
every ``F.pad`` was wrapped in a transpose pair; :func:`_register_nhwc_pad` adds one. And a
``MAX_POOL_2D`` followed by a channel ``PAD`` (BlazeBlock's shortcut) left the pad in NCHW, so
the traced graph pads first and pools after (:func:`_pad_before_pool`; identical values, since
max-pooling zero channels gives zeros), and the written flatbuffer is put back in Google's order
(:func:`_pool_before_pad`), where the PAD runs on a quarter of the pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.common import nhwc, output_names, quiet, sample_input
from blazeport.files import write_atomic
from blazeport.specs import LandmarkSpec, ModelSpec
from blazeport.tflite import read_tflite

EXPORT_EXTRA = 'pip install -e ".[export]"'


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


def inline_buffers(model: Any, data: bytes) -> None:
    """Move buffers that ai-edge-quantizer appends after the flatbuffer (``offset``/``size``) into the
    model, so a re-packed ``ModelT`` (which drops whatever follows the flatbuffer) keeps them."""
    model.buffers = list(model.buffers or [])
    for buf in model.buffers:
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(data, np.uint8, count=buf.size, offset=buf.offset)
            buf.offset = buf.size = 0


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
    inline_buffers(model, data)
    replaced = {k.encode() for k in metadata}  # a re-written file (int8 from float) gets one entry per key
    model.metadata = [m for m in model.metadata or [] if (m.name if isinstance(m.name, bytes) else str(m.name).encode())
                      not in replaced]
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
    sample = sample_input(spec, 1)
    names: tuple[str, ...] = ("regressors", "classificators")
    if isinstance(spec, LandmarkSpec):  # a landmark model's outputs by the spec's names (the attention mesh has 7)
        with torch.inference_mode():
            names = tuple(output_names([o[0].numel() for o in nhwc(module, named_outputs=False)(sample)], spec))
    with quiet():
        gm = torch.export.export(nhwc(module, named_outputs=True, names=names), (), {"input": sample},
                                 strict=False).module()
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
    with quiet():
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


def tflite_op_counts(path: Path) -> dict[str, int]:
    return read_tflite(path).op_counts()
