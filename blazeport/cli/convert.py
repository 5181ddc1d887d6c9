"""``blazeport convert``: a .tflite to verified PyTorch safetensors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from blazeport.cli.common import add_max_pixels, gate_line, print_check, print_json, read_images
from blazeport.convert import convert
from blazeport.options import add_overwrite
from blazeport.specs import spec_named


def cmd_convert(args: argparse.Namespace) -> int:
    images = read_images(args.images, args.max_pixels) if args.images else None
    spec = spec_named(args.spec) if args.spec else None
    report = convert(args.src, args.output, spec, images, overwrite=args.overwrite)
    if not report["written"]:
        print(f"nothing written: {report['output']} was left as it was", file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        arrow = "->" if report["written"] else "-> (not written)"
        print(f"converted {report['source']} {arrow} {report['output']}  ({report['spec']}, {report['params']:,} params)")
        crops = f" + {report['crops']} face crops" if report.get("crops") else ""
        print(f"verified against {report['reference']} on {report['images']} real photos{crops} + "
              f"{report['random_inputs']} random input:")
        print_check(report)
        print(f"{gate_line(report)}  ({report['seconds']:.1f} s)")
    return 0 if report["ok"] else 1


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``convert`` subcommand's arguments."""
    p = sub.add_parser("convert", help="convert a .tflite to PyTorch safetensors and verify it against LiteRT",
                       description="Map every weight of a BlazeFace .tflite onto the PyTorch module by walking the graph, "
                       "save safetensors, then compare with LiteRT on real photos and a random input.", formatter_class=fmt)
    p.add_argument("src", help="original .tflite file (e.g. weights/face_detection_short_range.tflite), or a model "
                   "name whose original ships with blazeport (short_range, face_landmark, ...)")
    p.add_argument("-o", "--output", help="output .safetensors (default: weights/SPEC.safetensors in a clone, ./SPEC.safetensors "
                   "for an installed blazeport)")
    p.add_argument("--spec", help="model spec to use when the file is not a known original")
    p.add_argument("--images", nargs="+", help="photos or folders to verify on (default: 5 photos bundled with scikit-image)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(p)
    add_overwrite(p, "refused before any work, unless it is blazeport's own conversion of the same .tflite "
                  "(replaced once the new one is verified)")
    p.set_defaults(func=cmd_convert)
