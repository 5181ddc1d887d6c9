"""``blazeport export``: ONNX, TFLite or ExecuTorch, verified in its runtime before it replaces anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from blazeport.cli.common import add_max_pixels, gate_line, positive_int, print_check, print_json, read_images
from blazeport.export import FORMATS, export
from blazeport.export.calibration import DEFAULT_COUNT, MIN_CALIBRATION, MIN_VERIFY
from blazeport.export.fidelity import AP50_TARGET
from blazeport.options import add_overwrite, add_trust_code


def cmd_export(args: argparse.Namespace) -> int:
    images = read_images(args.images, args.max_pixels) if args.images else None
    r = export(args.model, args.format, args.output, fp16=args.fp16, dynamic_batch=args.dynamic_batch, images=images,
               int8=args.int8, dynamic=args.dynamic, int8_io=args.int8_io, calibration=args.calibration,
               calibration_count=args.calibration_count, max_pixels=args.max_pixels, trust_code=args.trust_code,
               overwrite=args.overwrite)
    if not r["written"]:
        print(f"nothing written: {r['output']} was left as it was", file=sys.stderr)
    if args.json:
        print_json(r)
        return 0 if r["ok"] else 1
    if "quantization" in r:
        return _print_int8(r)
    batch = "dynamic batch" if r["input_shape"][0] == "batch" else "batch 1"
    opset = f", opset {r['opset']}" if r["opset"] else ""
    print(f"exported {r['spec']} ({r['source']}) -> {r['output']}  ({r['format']}{opset}, {r['layout']} input, {batch}, "
          f"{r['weights']} weights)")
    orig = f"   (original .tflite {r['original_size_bytes']:,} B)" if r.get("original_size_bytes") else ""
    print(f"  size {r['size_bytes']:,} B{orig}   export {r['seconds']:.1f} s   verify {r['verify_seconds']:.1f} s")
    print(f"verified in {r['runtime']} against PyTorch on {r['images']} real photos + {r['random_inputs']} random input:")
    print_check(r)
    print(f"ops {r['format']:<7} {', '.join(f'{k} {v}' for k, v in r['op_counts'].items())}")
    if r["original_op_counts"]:
        print(f"ops original {', '.join(f'{k} {v}' for k, v in r['original_op_counts'].items())}  ({Path(r['original']).name})")
    if r["gated"]:
        print(gate_line(r))
    else:
        print(f"{'OK' if r['ok'] else 'FAILED'}: float16 weights, differences reported, not gated "
              f"(the float32 gate {'would pass' if r['passes_gate'] else 'would not pass'})")
    return 0 if r["ok"] else 1


def _print_int8(r: dict[str, Any]) -> int:
    """The int8 report: how it was quantized, size vs float, fidelity vs float, worst layers if missed."""
    q, v, d, det = r["quantization"], r["vs_float"], r["decoded_diff"], r["detections"]
    print(f"exported {r['spec']} ({r['source']}) -> {r['output']}  ({r['format']}, {r['weights']}: {q['method']}, "
          f"weights {q['weights']}, activations {q['activations']}, I/O {q['io']})")
    if "calibration_images" in q:
        print(f"  calibrated on {q['calibration_images']} photos of {q['folder']} ({q['calibration']}); verified on "
              f"{q['verification_images']} photos {q['verification_source']}")
    print(f"  size {r['size_bytes']:,} B = {r['size_vs_float']:.2f}x the float export ({r['float_size_bytes']:,} B)   "
          f"export {r['seconds']:.1f} s   verify {r['verify_seconds']:.1f} s")
    print(f"  vs float model: AP50 {v['AP50']:.3f}  AP {v['AP']:.3f}  ({v['predictions']} vs {v['references']} faces)")
    print(f"  decoded (all anchors)  max score diff {d['scores']:.3f}   coordinates {d['coordinates']:.4f}")
    print(f"  matched detections     max score diff {det['max_score_diff']:.3f}   coordinates {det['max_coordinate_diff']:.4f}")
    for layer in r["worst_layers"]:
        # litert-torch names tensors by their module path (a;b;...): the last module of the first name says where
        where = layer["tensor"].split(";")[0].rsplit("/", 2)[-2:]
        print(f"  worst layer  {layer['relative_error']:.3f} relative error  {layer['op'] or '?':<18} {'/'.join(where)}")
    print(f"ops {r['format']:<7} {', '.join(f'{k} {v}' for k, v in r['op_counts'].items())}")
    print(f"{'OK' if r['ok'] else 'FAILED'}: AP50 vs float {v['AP50']:.3f} {'>=' if r['ok'] else 'misses'} "
          f"target {r['target']['AP50']}")
    return 0 if r["ok"] else 1


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``export`` subcommand's arguments."""
    p = sub.add_parser("export", help="export a model to ONNX, TFLite or ExecuTorch and verify the written file",
                       description="Export a spec's converted weights (weights/NAME.safetensors) or a .safetensors from "
                       "`blazeport convert` to ONNX (onnxruntime), TFLite (LiteRT) or ExecuTorch (.pte, XNNPACK delegate; "
                       "TFLite and ExecuTorch need the [export] extra). Input is NHWC float32 like Google's .tflite; "
                       "the spec is stored in the file's metadata. The written file is "
                       "then run on real photos and compared with PyTorch: raw outputs (the conversion gate for float32) "
                       "and detections after decode + NMS. Prints size, export time, worst differences and op counts "
                       "next to the original .tflite's.", formatter_class=fmt)
    p.add_argument("model", metavar="MODEL",
                   help="spec name (short_range, back, full_range, full_range_sparse), a .safetensors or an original .tflite")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), help="file format")
    p.add_argument("-o", "--output", help="output file (default: NAME[_fp16].onnx|.tflite|.pte in the current folder)")
    p.add_argument("--fp16", action="store_true", help="float16 weights (compute stays float32); differences reported, not gated")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX only: a dynamic batch dimension (default: batch 1)")
    p.add_argument("--images", nargs="+", help="photos or folders to verify on (default: 5 photos bundled with scikit-image; "
                   "with --int8, photos held out of --calibration)")
    p.add_argument("--int8", action="store_true",
                   help="full-integer int8: int8 weights per channel and int8 activations calibrated on --calibration; "
                   f"verified by AP50 of its detections vs the float model (target {AP50_TARGET}) on photos calibration "
                   "did not see")
    p.add_argument("--calibration", metavar="DIR", help="with --int8: folder of real photos (searched recursively; "
                   f"not a single image: at least {MIN_CALIBRATION + MIN_VERIFY} are needed, a few hundred is best), "
                   "split with a fixed seed into calibration (up to --calibration-count) and held-out verification photos")
    p.add_argument("--calibration-count", type=positive_int, default=DEFAULT_COUNT, metavar="N",
                   help=f"with --int8: how many photos calibrate (default {DEFAULT_COUNT}, at least {MIN_CALIBRATION})")
    p.add_argument("--int8-io", action="store_true", help="with --int8: int8 input tensor (scale and zero point in the "
                   "file; blazeport's backends quantize the letterboxed input); outputs stay float32 (see the docs)")
    p.add_argument("--dynamic", action="store_true", help="with --int8: dynamic range instead: int8 weights, float "
                   "activations (int8 at run time); no calibration")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(p)
    add_trust_code(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_export)
