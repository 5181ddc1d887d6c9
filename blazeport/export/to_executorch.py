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
(:func:`blazeport.metadata.file_metadata`) as one JSON string. Chosen over a sidecar
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

:func:`quantize_for_executorch` is ExecuTorch's int8 path (PT2E with ``XNNPACKQuantizer``); it is
a library function, not a CLI flag (``--int8`` belongs to the int8 ONNX/TFLite export).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.common import nhwc, quiet, sample_input
from blazeport.files import write_atomic
from blazeport.metadata import METADATA_METHOD
from blazeport.specs import ModelSpec

EXECUTORCH_INSTALL = 'pip install -e ".[export]"  (executorch)'
DELEGATION_KEY = "blazeport.delegation"  # {"xnnpack": {op: n}, "portable": {op: n}} at export time

__all__ = ["DELEGATION_KEY", "EXECUTORCH_INSTALL", "executorch_op_counts", "export_executorch", "lower_to_executorch",
           "quantize_for_executorch"]


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
    from blazeport.backends import ExecuTorchBackend

    delegation = json.loads(ExecuTorchBackend(path).metadata.get(DELEGATION_KEY, "{}"))
    counts = {**{f"xnnpack:{k}": int(v) for k, v in delegation.get("xnnpack", {}).items()}, **calls}
    counts["xnnpack_nodes"] = sum(delegation.get("xnnpack", {}).values())
    counts["portable_nodes"] = sum(v for k, v in calls.items() if k.startswith("portable:"))
    return dict(sorted(counts.items()))


def quantize_for_executorch(module: Any, example_batches: Iterable[np.ndarray]) -> Any:
    """int8 ``ExportedProgram`` of ``module`` for XNNPACK: PT2E static quantization, per-channel.

    ``example_batches``: NHWC float32 calibration batches ``(B, S, S, 3)`` in the spec's range
    (letterboxed real photos, e.g. :meth:`blazeport.Detector.preprocess`). The graph is the same NHWC
    wrapper as the float export, traced with batch 1 and calibrated image by image; pass the result
    to :func:`lower_to_executorch` for a ``.pte``. Symmetric int8 weights per output channel and
    int8 activations per tensor (``get_symmetric_quantization_config(is_per_channel=True)``, what
    ExecuTorch's XNNPACK examples use).
    """
    _require_executorch()
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from blazeport.models import fold_batchnorm

    # one (1, S, S, 3) tensor per image; not torch.from_numpy(img[None]): numpy's new axis has
    # stride 0, which torch.export records and ExecuTorch refuses ("0 in strides is not supported")
    images = [torch.from_numpy(np.array(img, dtype=np.float32)).unsqueeze(0) for batch in example_batches for img in batch]
    if not images:
        raise BlazeportError("int8 calibration needs at least one example image")
    sample = images[0]
    wrapper = nhwc(fold_batchnorm(module), named_outputs=False)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with quiet():
        graph = torch.export.export(wrapper, (sample,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for img in images:
                prepared(img)
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, (sample,))
