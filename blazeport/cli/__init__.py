"""blazeport: convert, detect, landmarks, eval, distill, prune, export, bench and list BlazeFace models (the `blazeport` command).

Every subcommand has ``--help``; ``--json`` prints machine-readable output on stdout while
progress and messages go to stderr. A :class:`BlazeportError` ends the command with its one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, TextIO

from blazeport.cli import convert, detect, distill, evaluate, export, landmarks, models, prune
from blazeport.cli.bench import add_bench_parser
from blazeport.errors import BlazeportError
from blazeport.extras import COMMAND_NEEDS, EXTRA_OF, missing_extra, require
from blazeport.version import __version__

EXAMPLES = """examples:
  blazeport convert weights/face_detection_short_range.tflite
  blazeport detect                               # the bundled sample photo
  blazeport detect photos/ --out runs/detect --json
  blazeport detect img.jpg --backend tflite      # the original file in LiteRT
  blazeport detect clip.mp4 --json --out runs/video   # JSON Lines per frame, the drawn video in runs/video/clip.mp4
  blazeport detect --camera 0 --out runs/cam     # until Ctrl-C, which keeps the drawing
  blazeport landmarks photos/ --out runs/landmarks --iris --max-faces all   # 468-point face mesh + iris
  blazeport export short_range --format onnx     # -> short_range.onnx, verified in onnxruntime
  blazeport export full_range_sparse --format tflite --fp16 --json
  blazeport detect img.jpg --model short_range.onnx --backend onnx
  blazeport eval --model full_range --boxes faces/boxes.json
  blazeport distill --images photos/ --out runs/distill --epochs 30
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


class OutputWriteError(BlazeportError):
    """Writing the command's output to stdout failed (``--json > full/det.json`` on a full disk)."""


class _GuardedStdout:
    """``sys.stdout`` while a command runs: an OSError raised by writing or flushing *it* becomes one
    :class:`OutputWriteError` line. Catching OSError in :func:`main` instead would also swallow the
    OSErrors of reading models and photos or writing drawings, which deserve their own messages.
    BrokenPipeError passes unchanged: :func:`main` ends quietly on it, as ``cat`` does."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _failed(self, exc: OSError) -> OutputWriteError:
        return OutputWriteError(f"cannot write the output ({exc.strerror or exc})")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null, so the exit-time flush of what is still buffered does not fail again
    (Python would print "Exception ignored" and exit with 120)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # not a file: a test's stand-in, a captured stream
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _GuardedStdout(stdout)  # type: ignore[assignment]
    try:
        if args.command in COMMAND_NEEDS:  # before the command reads anything: one line naming the extra
            require(COMMAND_NEEDS[args.command], f"blazeport {args.command}")
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a failed final write must end in the one-line error too
        return code
    except BlazeportError as exc:
        print(f"blazeport {args.command}: error: {exc}", file=sys.stderr)
        if isinstance(exc, OutputWriteError):
            sys.stdout = stdout
            _discard_stdout()
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_OF:
            raise
        print(f"blazeport {args.command}: error: {missing_extra(exc.name, 'this')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blazeport {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `blazeport detect DIR --json | head`: the reader left; no traceback, as `cat` would
        sys.stdout = stdout
        _discard_stdout()
        return 141
    finally:
        sys.stdout = stdout
