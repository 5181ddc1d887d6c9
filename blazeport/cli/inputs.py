"""What ``detect`` and ``landmarks`` do with their IMAGE arguments before any model loads: photos and
videos apart, the drawings' names decided and checked against the inputs, the video jobs planned.

Everything here can refuse (no inputs, ``--out`` a file or an input folder), so it all runs before a
model is loaded or a file is written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blazeport.cli.video import split_inputs, video_jobs
from blazeport.errors import BlazeportError
from blazeport.files import drawing_paths, inputs_outside
from blazeport.pipeline.photos import list_inputs, sample_image_path

__all__ = ["InputPlan", "plan_inputs"]


@dataclass
class InputPlan:
    """The photos (and each one's drawing), the videos as jobs, and whether stdout gets JSON Lines."""

    arguments: list[Any]
    paths: list[Path]
    videos: list[Any]
    out_dir: Path | None
    drawings: list[Path] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    json_lines: bool = False


def plan_inputs(args: argparse.Namespace) -> InputPlan:
    """The plan for ``args.images`` (default: the bundled photo, unless ``--camera``) and ``--out``."""
    arguments = args.images or ([] if args.camera is not None else [sample_image_path("astronaut")])
    inputs = list_inputs(arguments)
    out_dir = Path(args.out) if args.out else None
    if out_dir:  # the drawings of an earlier run into a folder inside an input folder are not photos
        kept, left = inputs_outside(arguments, [p for p in inputs if isinstance(p, Path)], out_dir)
        inputs = [p for p in inputs if not isinstance(p, Path) or p in kept]
        if left and not args.quiet:
            print(f"{left} image(s) under --out {out_dir} were not taken as inputs", file=sys.stderr)
    paths, videos = split_inputs(inputs)
    if not paths and not videos and args.camera is None:
        raise BlazeportError(f"no images or videos found in {' '.join(args.images)}")
    plan = InputPlan(arguments, paths, videos, out_dir)
    # every drawing's name is decided, and checked against the inputs, before any work
    plan.drawings = drawing_paths(arguments, paths, out_dir, overwrite=args.overwrite) if out_dir and paths else []
    plan.jobs = video_jobs(arguments, videos, args.camera, out_dir, args.overwrite)
    if out_dir and out_dir.exists() and not out_dir.is_dir():
        raise BlazeportError(f"--out {out_dir}: is a file; give a folder for the drawings")
    plan.json_lines = args.json and bool(plan.jobs)  # a video's frames are printed as they are done: JSON Lines
    return plan
