"""ExecuTorch exporter: PyTorch's own on-device path, a ``.pte`` with the XNNPACK delegate.

``torch.export`` of the NHWC wrapper (:func:`blazeport.export.common.nhwc`) ->
``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` -> ``.to_executorch()``.
XNNPACK takes the whole BlazeFace graph (convs, depthwise convs, pads, pools, adds, the NHWC
input permute and the heads' reshapes): one delegate call, no portable kernel left (measured:
99 of 99 nodes for short range), so the file runs at XNNPACK's speed like LiteRT's default path.

**How the spec travels: a constant method.** A ``.pte`` has no metadata table like ONNX's
``metadata_props`` or TFLite's ``Model.metadata``, but ExecuTorch programs hold *constant
methods* (``constant_methods=`` of ``to_edge_transform_and_lower``; the LLM exports store their
config this way, e.g. ``get_max_seq_len``): a method with no inputs that returns a constant. The
file gets one, :data:`METADATA_METHOD`, returning the same metadata dict as the other formats
(:func:`blazeport.modelfiles.metadata.file_metadata`) as one JSON string. Chosen over a sidecar
``NAME.pte.json`` because the file alone then says how to feed and decode it (a copy or a
download cannot lose half of the model), it is written by the same atomic rename, and any
ExecuTorch runtime (the C++ ``Module`` on a phone too) reads it with ``execute("blazeport_metadata")``.
The export-time delegation summary (which aten ops XNNPACK took, which it left) is stored there
too, under :data:`DELEGATION_KEY`, since the XNNPACK payload inside the file is an opaque blob.

``--fp16`` is refused. XNNPACK's float16 path is float16 *compute* (the module in half precision,
casts at the input and outputs), not float16 weights behind float32 compute like the ONNX / TFLite
``--fp16``. Measured on short range (x86, AVX2 + F16C, no native float16 arithmetic): the file was
no smaller (440,960 B vs 439,680 B), 1.6x slower (8.0 vs 4.9 ms), the casts stayed on portable
kernels (2 delegated subgraphs instead of 1), and raw outputs moved by 0.09. Nothing gained here;
on a phone with float16 ALUs it may differ, which is a job for an on-device benchmark.

**int8** (``--int8 --calibration DIR``, the same path as ONNX and TFLite): :func:`quantize_executorch`
is the row's quantizer, PT2E with ``XNNPACKQuantizer`` on the torch graph (:func:`quantize_for_executorch`),
lowered like the float file; the quantize/dequantize pairs go into the XNNPACK delegate with the
convs, so the ``.pte`` still takes and returns float32. :func:`executorch_layer_errors` names the
worst layers of a missed target from the torch programs behind the file. ``--dynamic`` and
``--int8-io`` are not offered (refused before any work): XNNPACK's dynamic quantization is made for
linear layers, which BlazeFace has none of, and whether its conv pattern lowers and pays off was not
measured; an int8 graph input would mean removing the lowered program's first quantize by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.calibration import Calibration
from blazeport.export.common import nhwc, quiet, sample_input
from blazeport.files import write_atomic
from blazeport.modelfiles.backends import ExecuTorchBackend
from blazeport.modelfiles.metadata import METADATA_METHOD
from blazeport.specs import ModelSpec

EXECUTORCH_INSTALL = 'pip install -e ".[export]"  (executorch)'
DELEGATION_KEY = "blazeport.delegation"  # {"xnnpack": {op: n}, "portable": {op: n}} at export time

__all__ = ["DELEGATION_KEY", "EXECUTORCH_INSTALL", "executorch_layer_errors", "executorch_op_counts", "export_executorch",
           "lower_to_executorch", "quantize_executorch", "quantize_for_executorch"]


def _require_executorch() -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        raise BlazeportError(f"ExecuTorch export needs executorch: {EXECUTORCH_INSTALL}") from None


def _delegation(edge: Any) -> dict[str, dict[str, int]]:
    """Per aten op, how many nodes XNNPACK took and how many were left to portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    xnnpack: dict[str, int] = {}
    portable: dict[str, int] = {}
    for op, stats in sorted(info.delegation_by_operator.items()):
        if op == "getitem":  # tuple unpacking, not a kernel
            continue
        name = op.removeprefix("aten_").removesuffix("_default")
        if stats.delegated:
            xnnpack[name] = stats.delegated
        if stats.non_delegated:
            portable[name] = stats.non_delegated
    return {"xnnpack": xnnpack, "portable": portable}


def lower_to_executorch(program: Any, metadata: dict[str, str]) -> bytes:
    """An exported program (float32 or PT2E-quantized) lowered to XNNPACK, metadata method added.

    The metadata constant is attached after lowering (a new ``EdgeProgramManager`` around the lowered
    program) so it can hold the delegation summary of that very lowering; lowering twice would
    double the export time (~15 s for short range on 2 cores).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower

    with quiet():
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        meta = {**metadata, DELEGATION_KEY: json.dumps(_delegation(edge))}
        edge = EdgeProgramManager(edge.exported_program(), constant_methods={METADATA_METHOD: json.dumps(meta)},
                                  compile_config=edge.compile_config)
        return bytes(edge.to_executorch().buffer)


def export_executorch(module: Any, spec: ModelSpec, out: Path, *, fp16: bool, dynamic_batch: bool,
                      metadata: dict[str, str]) -> None:
    """``torch.export`` -> XNNPACK-lowered ``.pte``: NHWC float32 input, batch 1 (like the .tflite)."""
    if dynamic_batch:
        raise BlazeportError("--dynamic-batch is for ONNX; ExecuTorch files keep batch 1 like Google's .tflite")
    if fp16:
        raise BlazeportError("--fp16 is not supported for executorch: XNNPACK's float16 path computes in float16 and "
                             "was slower with no smaller file on this CPU (see blazeport.export.to_executorch); "
                             "export float32, or --fp16 with --format onnx or tflite")
    _require_executorch()
    import torch

    with quiet():
        program = torch.export.export(nhwc(module, named_outputs=False), (sample_input(spec, 1),))
    write_atomic(out, lower_to_executorch(program, metadata))


def executorch_op_counts(path: Path) -> dict[str, int]:
    """What runs where, read from the file: delegate calls and portable kernel calls (the execution
    plan of ``forward``), plus the aten nodes inside the XNNPACK delegate as counted at export
    (``xnnpack:OP``; the delegate's payload is opaque). Portable kernels are ``portable:OP``."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = next(p for p in deserialize_pte_binary(Path(path).read_bytes()).program.execution_plan if p.name == "forward")
    calls: Counter[str] = Counter()
    for chain in plan.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            kind = type(args).__name__
            if kind == "DelegateCall":
                calls[f"delegate:{plan.delegates[args.delegate_index].id}"] += 1
            elif kind == "KernelCall":
                calls[f"portable:{plan.operators[args.op_index].name}"] += 1

    delegation = json.loads(ExecuTorchBackend(path).metadata.get(DELEGATION_KEY, "{}"))
    counts = {**{f"xnnpack:{k}": int(v) for k, v in delegation.get("xnnpack", {}).items()}, **calls}
    counts["xnnpack_nodes"] = sum(delegation.get("xnnpack", {}).values())
    counts["portable_nodes"] = sum(v for k, v in calls.items() if k.startswith("portable:"))
    return dict(sorted(counts.items()))


INT8_PROGRAMS = ("float.torch.pt2", "int8.torch.pt2")  # beside the float file, for executorch_layer_errors


def _pt2e(module: Any, images: np.ndarray) -> tuple[Any, Any]:
    """(float, int8) ``ExportedProgram`` of the NHWC wrapper at batch 1: PT2E calibrated on ``images``."""
    _require_executorch()
    import dataclasses

    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MovingAverageMinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from blazeport.models import fold_batchnorm  # torch, as the torchao imports above

    if len(images) == 0:
        raise BlazeportError("int8 calibration needs at least one example image")
    # contiguous copies: a numpy view with a new axis has stride 0, which torch.export records and
    # ExecuTorch refuses ("0 in strides is not supported")
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    one = batch[:1].clone()
    config = get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(config.input_activation,
                              observer_or_fake_quant_ctr=MovingAverageMinMaxObserver.with_args(eps=2**-12))
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    wrapper = nhwc(fold_batchnorm(module), named_outputs=False)
    class FloatHeads(XNNPACKQuantizer):  # the heads stay float: see quantize_for_executorch
        def annotate(self, model: Any) -> Any:
            heads = _head_nodes(model.graph)
            self.set_filter_function(lambda node: node not in heads)
            return super().annotate(model)

    quantizer = FloatHeads().set_global(config)
    with quiet():
        float_program = torch.export.export(wrapper, (one,))
        prepared = prepare_pt2e(float_program.module(), quantizer)
        with torch.no_grad():
            for i in range(len(batch)):  # photo by photo: the moving average is per photo, as in TFLite's rule
                prepared(batch[i:i + 1])
        return float_program, torch.export.export(convert_pt2e(prepared), (one,))


def _head_nodes(graph: Any) -> set[Any]:
    """Graph nodes from the outputs back to (and including) the last conv on each path: the SSD heads,
    their permutes, reshapes and the concatenation (:func:`blazeport.export.quantize.onnx_head_nodes` for fx)."""
    import torch

    convs = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}
    output = next(n for n in graph.nodes if n.op == "output")
    stack = _flat_nodes(output.args[0])
    heads: set[Any] = set()
    while stack:
        node = stack.pop()
        if node.op != "call_function" or node in heads:
            continue
        heads.add(node)
        if node.target not in convs:
            stack.extend(_flat_nodes(node.args[0]))
    return heads


def _flat_nodes(arg: Any) -> list[Any]:
    from torch.fx import Node

    if isinstance(arg, Node):
        return [arg]
    return [n for a in arg for n in _flat_nodes(a)] if isinstance(arg, (list, tuple)) else []


def quantize_for_executorch(module: Any, example_batches: Iterable[np.ndarray]) -> Any:
    """int8 ``ExportedProgram`` of ``module`` for XNNPACK: PT2E static quantization, per-channel.

    ``example_batches``: NHWC float32 calibration batches ``(B, S, S, 3)`` in the spec's range
    (letterboxed real photos, e.g. :meth:`blazeport.Detector.preprocess`). The graph is the same NHWC
    wrapper as the float export, at batch 1; pass the result to :func:`lower_to_executorch` for a
    ``.pte``. Symmetric int8 weights per output channel and int8 activations per tensor
    (``get_symmetric_quantization_config(is_per_channel=True)``, what ExecuTorch's XNNPACK examples
    use), but activation ranges from a **moving average of each photo's min/max** (constant 0.01,
    photo by photo: the TF Lite converter's rule, which ai-edge-quantizer follows for the TFLite row)
    instead of the config's HistogramObserver. Measured on short range, 300 calibration photos, 100
    held out, heads float, simulated in torch: HistogramObserver AP50 0.007 vs float (also 0.008 in
    batches of 100: a few photos with extreme activations stretch late layers such as the last
    block's pointwise conv to a relative error of 0.83), plain min/max 0.000, moving average over
    batches of 25 0.959, moving average photo by photo **0.994** (AP 0.917). The histogram observer
    also cost 1.2 s a photo on 2 busy cores.

    **The SSD heads stay float**, as in the ONNX / TFLite recipe (:mod:`blazeport.export.quantize`):
    the last convs, their permutes and reshapes and the concatenation (:func:`_head_nodes`); their
    inputs are int8 tensors dequantized once, and XNNPACK runs the float convs in the same delegate.
    (With every head int8 and HistogramObserver, 20 calibration photos gave AP50 0.99, 300 gave 0.007:
    the classificator conv's output had a relative error of 1.0.)
    """
    batches = [np.asarray(b, dtype=np.float32) for b in example_batches]
    images = np.concatenate(batches) if batches else np.zeros((0,), np.float32)
    return _pt2e(module, images)[1]


def quantize_executorch(float_path: Path, out: Path, calibration: Calibration | None, *, dynamic: bool, int8_io: bool,
                        metadata: dict[str, str], module: Any) -> dict[str, Any]:
    """The executorch row's ``--int8`` quantizer: PT2E on ``module``, lowered to an int8 XNNPACK ``.pte``.

    Unlike ONNX and TFLite, whose quantizers rewrite the float *file*, ExecuTorch quantizes the torch
    graph before lowering (a ``.pte``'s delegate payload is opaque, so there is no file to rewrite).
    So every quantizer of the table receives the folded module the float file was exported from,
    as ``module``: the file-based ones ignore it, this one uses it, and ``export()`` keeps one int8
    path (float file, quantizer, verification, layer errors) for all formats. The float ``.pte`` is
    still written first: it is the size the report compares with.

    The float and int8 torch programs are saved beside the float file (its temporary folder, removed
    with it) as :data:`INT8_PROGRAMS`, for :func:`executorch_layer_errors` should the target be missed.
    ``--dynamic`` and ``--int8-io`` are refused before any work by ``export()`` (see its ``int8_flags``).
    """
    import torch

    if dynamic or int8_io or calibration is None:
        raise BlazeportError("executorch --int8 is static int8 with float32 input only; drop --dynamic / --int8-io")
    float_program, program = _pt2e(module, calibration.inputs)
    for name, prog in zip(INT8_PROGRAMS, (float_program, program), strict=True):
        torch.export.save(prog, float_path.with_name(name))
    write_atomic(out, lower_to_executorch(program, metadata))
    return {"tool": "executorch PT2E (XNNPACKQuantizer)", "method": "static", "weights": "int8 per channel",
            "activations": "int8 per tensor", "calibration": "min/max, moving average",
            "float_nodes": sorted(n.name for n in _head_nodes(float_program.graph))}


def executorch_layer_errors(float_path: Path, int8_path: Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """The activations with the largest relative error, from the torch programs behind the ``.pte``.

    A ``.pte``'s intermediates live inside the opaque XNNPACK delegate (ExecuTorch's intermediate
    debugging needs an ETDump-enabled runtime and a debug build of the delegate), so the int8 graph is
    read where it still is a graph: the PT2E-converted program :func:`quantize_executorch` saved (its
    int8 weights and activation quantize/dequantize pairs, run in float, what XNNPACK computes in int8)
    against the float program, node by node (same names: both come from one trace). An activation
    followed by a quantize/dequantize pair is compared after it, so its own rounding counts.
    """
    import torch

    float_file, int8_file = (float_path.with_name(n) for n in INT8_PROGRAMS)
    if not (float_file.is_file() and int8_file.is_file()):
        return []
    fgm, qgm = (torch.export.load(str(p)).module() for p in (float_file, int8_file))
    kept = {"conv2d", "add", "relu", "max_pool2d", "cat", "reshape", "view", "permute", "pad", "clamp", "hardtanh"}

    def op(node: Any) -> str:
        return str(getattr(node.target, "__name__", node.target)).split(".")[0]

    f_nodes = {n.name: op(n) for n in fgm.graph.nodes if n.op == "call_function" and op(n) in kept}
    q_by_name = {n.name: n for n in qgm.graph.nodes}
    reads: dict[str, str] = {}  # float node name -> the int8 graph node whose value stands for it
    for name in f_nodes:
        node = q_by_name.get(name)
        if node is None:
            continue
        for step in ("quantize_per_tensor", "dequantize_per_tensor"):  # PT2E gives each consumer its own dequantize
            node = next((u for u in node.users if op(u) == step), node)
        if op(node) != "quantize_per_tensor":  # never compare int8 codes with float values
            reads[name] = node.name
    totals: dict[str, list[float]] = {}
    for x in inputs:
        one = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
        f_vals, q_vals = _node_values(fgm, one, set(reads)), _node_values(qgm, one, set(reads.values()))
        for name, q_name in reads.items():
            a, b = f_vals.get(name), q_vals.get(q_name)
            if a is not None and b is not None and a.shape == b.shape:
                err = float(np.linalg.norm(b.astype(np.float64) - a) / (np.linalg.norm(a) + 1e-12))
                totals.setdefault(name, []).append(err)
    where = {n.name: _module_path(n) for n in fgm.graph.nodes}
    worst = sorted(((n, float(np.mean(e))) for n, e in totals.items()), key=lambda kv: -kv[1])[:5]
    return [{"tensor": f"{where[n]}/{n}" if where.get(n) else n, "op": f_nodes[n], "relative_error": round(e, 4)}
            for n, e in worst]


def _module_path(node: Any) -> str:
    """The innermost module a graph node came from (``inner.backbone.3``), so a report names the layer, not just ``conv2d_32``."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _node_values(gm: Any, x: Any, names: set[str]) -> dict[str, np.ndarray]:
    """Outputs of the named nodes of a graph module on ``x`` (a torch.fx Interpreter that keeps them)."""
    import torch
    from torch.fx import Interpreter

    values: dict[str, np.ndarray] = {}

    class Keep(Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if n.name in names and isinstance(result, torch.Tensor):
                values[n.name] = result.detach().float().numpy().copy()
            return result

    with torch.no_grad():
        Keep(gm).run(x)
    return values
