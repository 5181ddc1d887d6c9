"""How close an int8 file is to its float model: the check an int8 export must pass before it is written.

The float conversion gate (1e-4) cannot apply: int8 moves raw outputs by whole quantization steps.
What a user of a face detector cares about is whether the same faces come out in the same places,
so the int8 file is judged like a student against its teacher (:func:`blazeport.pipeline.evaluate.coco_ap`):
COCO AP50 and AP of the int8 model's detections, with the float model's detections on the same
held-out photos as the ground truth, both at the spec's score threshold (the detector as it ships).
``ok`` means AP50 >= :data:`AP50_TARGET` and finite outputs. Raw and decoded differences
(:func:`blazeport.modelfiles.verify.compare_outputs`, over every anchor, so background anchors count too) and
the worst score / coordinate difference of matched detections are reported beside it.

When the target is missed, :func:`onnx_layer_errors` / :func:`tflite_layer_errors` name the layers
with the largest error: every activation the int8 graph keeps is compared with the float graph's
tensor of the same name on a few verification photos (relative L2 error, ``|q - f| / |f|``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazeport.modelfiles.backends import _onnx_input_quantization, quantize_input
from blazeport.modelfiles.verify import compare_outputs, match_detections, verification_inputs
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.evaluate import coco_ap
from blazeport.pipeline.postprocess import postprocess
from blazeport.specs import ModelSpec
from blazeport.tflite import read_tflite

AP50_TARGET = 0.97  # the target for short and full range
WORST_LAYERS = 5

__all__ = ["AP50_TARGET", "onnx_layer_errors", "tflite_layer_errors", "verify_int8"]


def verify_int8(candidate: Any, reference: Any, spec: ModelSpec, images: list[np.ndarray]) -> dict[str, Any]:
    """Run the int8 backend and the float reference on ``images`` (+ 1 random input) and compare."""
    inputs, pads = verification_inputs(spec, images)
    ours, ref = candidate(inputs), reference(inputs)
    anchors = anchors_for(spec)
    diffs = compare_outputs(ours, ref, spec, anchors)
    n = len(images)
    dets = postprocess(ours[0][:n], ours[1][:n], anchors, spec, pads)
    ref_dets = postprocess(ref[0][:n], ref[1][:n], anchors, spec, pads)
    sizes = [(int(im.shape[1]), int(im.shape[0])) for im in images]
    truth = [[tuple(float(v) for v in d.box) for d in per] for per in ref_dets]
    ap = coco_ap(dets, truth, sizes)
    finite = bool(np.isfinite(ours[0]).all() and np.isfinite(ours[1]).all())
    ap50 = ap["AP50"]
    return {
        "max_abs_diff": diffs["max_abs_diff"], "decoded_diff": diffs["decoded_diff"],
        "detections": match_detections(dets, ref_dets),
        "vs_float": {k: ap[k] for k in ("AP50", "AP", "AP75", "AR100", "references", "predictions")},
        "target": {"AP50": AP50_TARGET}, "images": n, "random_inputs": 1, "finite": finite,
        "passes": bool(finite and ap50 == ap50 and ap50 >= AP50_TARGET),  # nan (no face at all) does not pass
    }


def _ranked(errors: dict[str, tuple[str, float]]) -> list[dict[str, Any]]:
    worst = sorted(errors.items(), key=lambda kv: -kv[1][1])[:WORST_LAYERS]
    return [{"tensor": name, "op": op, "relative_error": round(err, 4)} for name, (op, err) in worst]


def _relative(q: np.ndarray, f: np.ndarray) -> float:
    return float(np.linalg.norm(q.astype(np.float64) - f) / (np.linalg.norm(f) + 1e-12))


def onnx_layer_errors(float_path: Path, int8_path: Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """The activations with the largest relative error: each float tensor against the int8 graph's
    dequantized copy of it (``NAME_DequantizeLinear_Output``, onnxruntime's QDQ naming), both run
    unoptimized so every intermediate exists."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    def session(model: Any, names: list[str]) -> Any:
        have = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(s: Any, x: np.ndarray) -> dict[str, np.ndarray]:
        feed = s.get_inputs()[0]
        if "int8" in feed.type:  # --int8-io: feed the int8 graph its quantized input

            meta = dict(s.get_modelmeta().custom_metadata_map)
            x = quantize_input(x, *_onnx_input_quantization(meta, feed.type, int8_path))
        return dict(zip([o.name for o in s.get_outputs()], s.run(None, {feed.name: x}), strict=True))

    fm, qm = onnx.load(str(float_path)), onnx.load(str(int8_path))
    op_of = {o: n.op_type for n in fm.graph.node for o in n.output}
    q_names = {o for n in qm.graph.node for o in n.output}
    pairs = {a: f"{a}_DequantizeLinear_Output" for a in op_of if f"{a}_DequantizeLinear_Output" in q_names}
    fs, qs = session(fm, list(pairs)), session(qm, list(pairs.values()))
    totals: dict[str, list[float]] = {}
    for x in inputs:  # one image a run: the files may have a fixed batch of 1
        f_out, q_out = run(fs, x[None]), run(qs, x[None])
        for a, b in pairs.items():
            if b in q_out and q_out[b].shape == f_out[a].shape:
                totals.setdefault(a, []).append(_relative(q_out[b], f_out[a]))
    return _ranked({a: (op_of[a], float(np.mean(e))) for a, e in totals.items()})


def tflite_layer_errors(float_path: Path, int8_path: Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """The same for two ``.tflite``: tensors of the same name, the int8 one dequantized with its scale.

    Builtin kernels without delegates and ``experimental_preserve_all_tensors``: with XNNPACK the
    intermediates read back as zeros."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def tensors(path: Path, x: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[float, int]]]:
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        feed = x[None].astype(np.float32)
        if inp["dtype"] != np.float32:  # --int8-io

            feed = quantize_input(feed, *inp["quantization"], inp["dtype"])
        it.set_tensor(inp["index"], feed)
        it.invoke()
        out = {}
        for d in it.get_tensor_details():
            try:
                out[d["name"]] = (it.get_tensor(d["index"]), d["quantization"])
            except ValueError:  # tensors without data (the interpreter's scratch)
                continue
        return out


    graph = read_tflite(int8_path)
    op_of = {graph.tensor(t).name: op.type for op in graph.ops for t in op.outputs}
    totals: dict[str, tuple[str, list[float]]] = {}
    for x in inputs:
        f, q = tensors(float_path, x), tensors(int8_path, x)
        for name, (qa, (scale, zero)) in q.items():
            if name not in f or qa.dtype not in (np.int8, np.uint8, np.int16) or not scale or f[name][0].shape != qa.shape:
                continue
            value = (qa.astype(np.float64) - zero) * scale
            totals.setdefault(name, (op_of.get(name, ""), []))[1].append(_relative(value, f[name][0]))
    return _ranked({n: (op, float(np.mean(e))) for n, (op, e) in totals.items()})
