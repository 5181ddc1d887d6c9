"""What ``detect`` and ``landmarks`` share on video: the inputs that are videos, where their drawings
go, and the loop that streams a video's frames through a command's per-frame work.

One video, start to end (:func:`run_video`): frames decoded ahead in a reader thread
(:func:`blazeport.video.frames.open_frames`); the command's results per frame printed at once as a JSON line
with ``--json`` (``{"frame": i, "time_ms": t, "video": ..., "width": ..., "height": ..., KEY: [...]}``),
drawn into an ``.mp4`` with ``--out`` (:class:`blazeport.video.writer.VideoOutput`), a progress bar in
frames/s on a terminal. Nothing per frame is kept, so memory does not grow with the video.

How a video ends decides what is kept:

- a video file that cannot be opened, or has no frame, is skipped and counted like an unreadable
  photo (exit status 1); a camera or URL that cannot be opened is an error (exit status 2): it was
  the thing to run;
- a file that ends early (truncated, damaged): its frames so far are printed and drawn, the drawing
  is finalized, one line names the file, exit status 1;
- Ctrl-C on a camera or stream is how a live run ends: the drawing is finalized; on a file it
  interrupts the run, and the drawing being written is deleted (a crash of ours likewise).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from blazeport.cli.common import non_negative_int
from blazeport.errors import BlazeportError
from blazeport.files import drawing_paths, free_name
from blazeport.pipeline.photos import is_video_input
from blazeport.progress import progress_bar
from blazeport.video.frames import Frame, FrameSource, VideoReadError, is_sequence_pattern, is_url, open_frames
from blazeport.video.writer import SUFFIX, VideoOutput

Process = Callable[[FrameSource], Iterator[tuple[Frame, list[Any]]]]
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
FRAME_MMAP_THRESHOLD = 4 << 20  # bytes: a VGA frame (0.9 MB) stays on the heap, a 4K one (25 MB) is mapped


def keep_big_frames_mapped() -> None:
    """Stop glibc raising its mmap threshold (Linux; elsewhere nothing happens).

    glibc serves blocks over the threshold with their own mapping, but raises the threshold each time
    such a block is freed (up to 32 MB); after that, 4K frames (25 MB) come from the heap arenas of the
    reader and main threads, which fragment: ``detect`` drawing a 4K video peaked at 643 MB for 1 s, 690 MB
    for 5 s and 762 MB for 20 s. With the threshold fixed at 4 MB every big frame is its own mapping,
    returned whole when freed: 620 MB for 1 s and for 20 s (``tools/video_memory.py``). A command's own
    process only: the library never changes its host's allocator."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, FRAME_MMAP_THRESHOLD)


@dataclass
class VideoJob:
    """One video input: what to open, its name in messages and JSON, and its drawing (or None)."""

    source: Path | str | int
    name: str
    out: Path | None = None

    @property
    def live_input(self) -> bool:
        return isinstance(self.source, int) or is_url(self.source)


@dataclass
class VideoTotals:
    videos: int = 0
    frames: int = 0
    found: int = 0  # detections or faces over all frames
    skipped: int = 0  # could not be opened, or had no frame
    ended_early: int = 0
    dropped: int = 0
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """``--camera N`` and ``--fps`` (an image sequence's rate), on detect and landmarks."""
    parser.add_argument("--camera", type=non_negative_int, metavar="N",
                        help="also read camera N (0: the first; /dev/videoN on Linux) until Ctrl-C, which ends the run "
                        "and keeps its drawing")
    parser.add_argument("--fps", type=float, metavar="F",
                        help="frame rate of an image sequence given as a printf pattern (frames/%%04d.png): its "
                        "time_ms and its drawing's rate (default: 30)")


def split_inputs(inputs: list[Path | str]) -> tuple[list[Path], list[Path | str]]:
    """(photos, videos) of :func:`blazeport.pipeline.photos.list_inputs`' list, each in its order."""
    videos = [p for p in inputs if is_video_input(p)]
    return [Path(p) for p in inputs if not is_video_input(p)], videos


def _stream_name(source: str) -> str:
    """A drawing's file name for a URL or an image-sequence pattern."""
    if is_sequence_pattern(source):
        path = Path(source)
        stem = path.name.split("%", 1)[0].strip("_-. ") or path.parent.name
        return stem or "frames"
    tail = source.split("://", 1)[1].split("?", 1)[0].rstrip("/")
    stem = Path(tail).stem if "/" in tail else ""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "stream"


def video_jobs(arguments: list[str | Path], videos: list[Path | str], camera: int | None, out_dir: Path | None,
               overwrite: bool) -> list[VideoJob]:
    """Every video input with its drawing's path: video files as ``detect --out`` names photos'
    drawings (:func:`blazeport.files.drawing_paths`, suffix ``.mp4``: never onto an input, free names
    unless ``overwrite``), streams, sequences and the camera by their name (``camera0.mp4``)."""
    files = [v for v in videos if isinstance(v, Path)]
    others = [v for v in videos if not isinstance(v, Path)]
    jobs = [VideoJob(v, str(v)) for v in files] + [VideoJob(v, v) for v in others]
    if camera is not None:
        jobs.append(VideoJob(camera, f"camera {camera}"))
    if out_dir is None:
        return jobs
    targets = drawing_paths(arguments, files, out_dir, suffix=SUFFIX, overwrite=overwrite) if files else []
    taken = set(targets)
    for job in jobs[len(files):]:
        name = f"camera{job.source}" if isinstance(job.source, int) else _stream_name(str(job.source))
        target = out_dir / f"{name}{SUFFIX}"
        if not overwrite or target in taken:
            target = free_name(target, taken)
        taken.add(target)
        targets.append(target)
    for job, target in zip(jobs, targets, strict=True):
        job.out = target
    return jobs


def run_video(job: VideoJob, process: Process, draw: Callable[[np.ndarray, list[Any]], np.ndarray],
              to_dict: Callable[[Any], dict[str, Any]], key: str, what: str, totals: VideoTotals, *, json_lines: bool,
              verbose: bool, quiet: bool, overwrite: bool, fps: float | None, max_pixels: int | None) -> None:
    """One video through ``process`` (frames -> ``(frame, results)``), printed (``key``: the results' JSON
    field; ``what``: one result's name in text), drawn and counted."""
    keep_big_frames_mapped()
    try:
        frames = open_frames(job.source, fps=fps, max_pixels=max_pixels)
    except VideoReadError as exc:
        if job.live_input:
            raise
        totals.skipped += 1
        tqdm.write(f"skipped: {exc}", file=sys.stderr)
        return
    info = frames.info
    out = VideoOutput(job.out, info.fps, replace=overwrite) if job.out else None
    bar = progress_bar(desc=Path(info.name).name if isinstance(job.source, Path) else info.name, unit="frame",
                       total=info.frame_count, enabled=not quiet)
    t0 = time.perf_counter()
    count = found = with_any = 0
    size = (info.width, info.height)
    try:
        with frames:
            for frame, results in process(frames):
                h, w = frame.rgb.shape[:2]
                size = (w, h)
                if json_lines:
                    line = {"frame": frame.index, "time_ms": round(frame.time_ms, 3), "video": job.name,
                            "width": w, "height": h, key: [to_dict(r) for r in results]}
                    sys.stdout.write(json.dumps(line) + "\n")
                    sys.stdout.flush()  # a reader of a live stream sees each frame as it is done
                if out is not None:
                    out.write(draw(frame.rgb, results))
                count += 1
                found += len(results)
                with_any += bool(results)
                bar.update()
    except VideoReadError as exc:  # opened, but not one frame could be decoded
        bar.close()
        if out is not None:
            out.discard()
        totals.skipped += 1
        tqdm.write(f"skipped: {exc}", file=sys.stderr)
        return
    except KeyboardInterrupt:
        bar.close()
        if not info.live:
            if out is not None:
                out.discard()
            raise
        frames.error = None  # Ctrl-C is how a live run ends
    except BaseException:
        bar.close()
        if out is not None:
            out.discard()
        raise
    bar.close()
    elapsed = time.perf_counter() - t0
    written = out.commit() if out is not None else None
    totals.videos += 1
    totals.frames += count
    totals.found += found
    totals.dropped += frames.dropped
    totals.seconds += elapsed
    if written is not None:
        totals.written.append(written)
    if frames.error:
        totals.ended_early += 1
        kept = f"; the {count} frame(s) before it were processed" + (f" and drawn in {written}" if written else "")
        tqdm.write(f"error: {frames.error}{kept}", file=sys.stderr)
    if verbose:
        dropped = f", {frames.dropped} dropped while busy" if frames.dropped else ""
        tqdm.write(f"{job.name}: {count} frame(s), {size[0]}x{size[1]}, {info.fps:.4g} fps{dropped}: {found} "
                   f"{what}(s) in {with_any} frame(s)"
                   + (f", drawn in {written}" if written else ""), file=sys.stdout)


def video_summary(totals: VideoTotals, what: str, runtime: str) -> str:
    """The stderr line after the videos: counts, time and frames/s."""
    rate = f", {totals.frames / totals.seconds:.1f} frames/s" if totals.seconds > 0 else ""
    early = f", {totals.ended_early} ended early" if totals.ended_early else ""
    dropped = f", {totals.dropped} live frame(s) dropped while busy" if totals.dropped else ""
    where = f", drawn in {', '.join(map(str, totals.written))}" if totals.written else ""
    return (f"{totals.videos} video(s), {totals.frames} frame(s), {totals.found} {what}(s), {totals.skipped} skipped"
            f"{early}{dropped}, {totals.seconds:.2f} s{rate} ({runtime}){where}")


def check_video_args(args: argparse.Namespace) -> None:
    if args.fps is not None and not (0 < args.fps <= 1000):
        raise BlazeportError(f"--fps must be in (0, 1000], got {args.fps}")
