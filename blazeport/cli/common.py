"""What the subcommands share: argument types, JSON output, reading the photos they verify on."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from blazeport.errors import BlazeportError
from blazeport.modelfiles.runtimes import RUNTIMES
from blazeport.options import AUTO_BACKEND
from blazeport.pipeline.photos import list_images
from blazeport.pipeline.postprocess import POSTPROCESSORS
from blazeport.pipeline.preprocess import MAX_PIXELS, ImageReadError, read_image


def add_runtime_options(parser: argparse.ArgumentParser, models: str = "the model") -> None:
    """``--backend``, ``--threads`` and ``--device``, declared once with one set of defaults for every
    command that runs models on a photo (``bench`` takes lists of them: its own parser)."""
    parser.add_argument("--backend", choices=tuple(RUNTIMES),
                        help=f"runtime of {models} ({AUTO_BACKEND}); a .onnx model runs on onnx, a .pte on executorch")
    parser.add_argument("--threads", type=positive_int, help=f"CPU threads for {models} (default: the runtime's own)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the GPU for the torch and onnx "
                        "backends (a CUDA build of torch, onnxruntime-gpu)")


def add_postprocess(parser: argparse.ArgumentParser) -> None:
    """``--postprocess``: which decode + NMS code runs (:data:`blazeport.pipeline.postprocess.POSTPROCESSORS`)."""
    parser.add_argument("--postprocess", choices=POSTPROCESSORS, default="auto",
                        help="decode + NMS code: numba (compiled, the 'fast' extra), numpy, or auto: numba when "
                        "installed (default: auto); the detections are identical")


def positive_int(text: str, least: int = 1) -> int:
    """argparse type for counts such as --threads: a whole number >= 1 (>= ``least``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means none, such as --workers."""
    return positive_int(text, least=0)


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help=f"skip (and count) images over N pixels, read from the file header before decoding "
                        f"(default {MAX_PIXELS:,})")


def print_check(r: dict[str, Any]) -> None:
    """The differences a verification found (:func:`blazeport.modelfiles.verify.verify`'s report), as convert
    and export print them; a landmark model's (:func:`blazeport.modelfiles.verify.verify_landmarks`) per output."""
    if "detections" not in r:
        for name in r["max_abs_diff"]:
            print(f"  {name:<15} max |diff| {r['max_abs_diff'][name]:.2e}   scaled {r['max_scaled_diff'][name]:.2e}")
        print("  decoded         " + "   ".join(f"{k} {v:.2e}" for k, v in r["decoded_diff"].items()))
        return
    a, s, d, det = r["max_abs_diff"], r["max_scaled_diff"], r["decoded_diff"], r["detections"]
    print(f"  regressors      max |diff| {a['regressors']:.2e}   scaled {s['regressors']:.2e}")
    print(f"  classificators  max |diff| {a['classificators']:.2e}   scaled {s['classificators']:.2e}")
    print(f"  decoded         scores {d['scores']:.2e}   coordinates {d['coordinates']:.2e}")
    same = "same count" if det["same_count"] else "COUNT DIFFERS"
    print(f"  detections      {det['faces_checked']} vs {det['faces']} faces ({same}); worst coordinate "
          f"{det['max_coordinate_diff']:.2e}, score {det['max_score_diff']:.2e}")


def gate_line(r: dict[str, Any]) -> str:
    """``OK``/``FAILED`` and the gate it was judged by."""
    tol = r["tolerance"]
    checked = "decoded and detections" if "detections" in r else "decoded landmarks and scores"
    row = " (|ref|: the anchor row's largest)" if "detections" in r else ""
    return (f"{'OK' if r['ok'] else 'FAILED'}: raw |diff| <= {tol['abs']:g} + {tol['rel']:g}*|ref|{row}, {checked} "
            f"within {tol['abs']:g}")


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def read_images(paths: list[str], max_pixels: int | None) -> list:
    images = []
    for p in list_images(paths):
        try:
            images.append(read_image(p, max_pixels=max_pixels))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if not images:
        raise BlazeportError(f"no readable images in {' '.join(paths)}")
    return images
