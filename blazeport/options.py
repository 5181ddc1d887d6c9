"""Options every command that opens or writes files declares the same way (torch-free, and free of
:mod:`blazeport.cli`, so ``bench``'s parser declares them too).

**Trust in code a model file names: explicit, and per use** (``--trust-code``).

A weights file is data. The one thing in a blazeport file that could name code is a student's
backbone written as ``package.module:factory`` (``distill --student mymod:build``): rebuilding it
imports ``mymod``, which runs that module's top-level code. So, as ``trust_remote_code`` does in
the Hugging Face ecosystem, nothing a file names is imported unless the user says so for that run:
``trust_code=True`` in the Python API (:func:`blazeport.load`, :func:`blazeport.load_landmarks`,
:func:`blazeport.export.export`, ...) or ``--trust-code`` on each command that opens models. The
check (:func:`blazeport.models.backbones.check_trusted`) runs before any import. A module the user
types on the command line (``distill --student mymod:build``) is trusted for that run.

**Outputs never replace a file the run did not make** (``--overwrite``, :mod:`blazeport.files`):
a model or report path that holds a file is refused before any work; a drawing takes a free name.
"""

from __future__ import annotations

import argparse

__all__ = ["AUTO_BACKEND", "TRUST_FLAG", "add_overwrite", "add_trust_code"]

TRUST_FLAG = "--trust-code"
AUTO_BACKEND = "default: torch with blazeport[torch] installed, else tflite"  # blazeport.modelfiles.backends.default_runtime


def add_trust_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-code`` on a command that opens model files (``args.trust_code``)."""
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="let a student .safetensors whose backbone is your own code (distill --student "
                        "mymod:build) import that module, which runs it; without this flag such a file is refused "
                        "before anything is imported. blazeport's own models never need it")


def add_overwrite(parser: argparse.ArgumentParser, taken: str = "refused before any work") -> None:
    """``--overwrite`` (``args.overwrite``); ``taken`` says what happens without it."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace existing output files; without it an output name that an existing file holds is "
                        f"{taken}. An input is never overwritten")
