"""blazeport: convert, detect, landmarks, eval, distill, prune, export, bench and list BlazeFace models (the `blazeport` command).

Every subcommand has ``--help``; ``--json`` prints machine-readable output on stdout while
progress and messages go to stderr. A :class:`BlazeportError` ends the command with its one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from blazeport.bench.cli import add_bench_parser
from blazeport.cli import convert, detect, distill, evaluate, export, landmarks, models, prune
from blazeport.errors import BlazeportError
from blazeport.version import __version__

EXAMPLES = """examples:
  blazeport convert weights/face_detection_short_range.tflite
  blazeport detect                               # the bundled sample photo
  blazeport detect photos/ --out runs/detect --json
  blazeport detect img.jpg --backend tflite      # the original file in LiteRT
  blazeport landmarks photos/ --out runs/landmarks --iris --max-faces all   # 468-point face mesh + iris
  blazeport export short_range --format onnx     # -> short_range.onnx, verified in onnxruntime
  blazeport export full_range_sparse --format tflite --fp16 --json
  blazeport detect img.jpg --model short_range.onnx --backend onnx
  blazeport eval --model full_range --boxes ../shared/data/faces-boxed/boxes.json
  blazeport distill --images ../shared/data/unlabeled --out runs/distill --epochs 30
  blazeport prune runs/distill/student.safetensors --ratio 0.5 -o pruned.safetensors
  blazeport bench short_range full_range_sparse --threads 1,2 --e2e --json runs/bench.json
  blazeport models
"""


def build_parser() -> argparse.ArgumentParser:
    """One subparser per command module, in the order ``--help`` lists them."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="blazeport", description=__doc__.split("\n")[0], epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"blazeport {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (convert, detect, landmarks, evaluate, distill, prune, export):
        command.add_parser(sub, fmt)
    add_bench_parser(sub, fmt)
    models.add_parser(sub, fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BlazeportError as exc:
        print(f"blazeport {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blazeport {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `blazeport detect DIR --json | head`: the reader left; no traceback, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush does not fail again
        return 141
