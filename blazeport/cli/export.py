"""``blazeport export``: ONNX, TFLite or ExecuTorch, verified in its runtime before it replaces anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from blazeport.cli.common import add_max_pixels, gate_line, print_check, print_json, read_images
from blazeport.export import FORMATS, export


def cmd_export(args: argparse.Namespace) -> int:
    images = read_images(args.images, args.max_pixels) if args.images else None
    r = export(args.model, args.format, args.output, fp16=args.fp16, dynamic_batch=args.dynamic_batch, images=images)
    if not r["written"]:
        print(f"nothing written: {r['output']} was left as it was", file=sys.stderr)
    if args.json:
        print_json(r)
        return 0 if r["ok"] else 1
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
    p.add_argument("--images", nargs="+", help="photos or folders to verify on (default: 5 photos bundled with scikit-image)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(p)
    p.set_defaults(func=cmd_export)
