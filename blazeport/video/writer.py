"""Drawn videos: an ``.mp4`` at the input's size and frame rate, written the way every output is.

OpenCV's FFmpeg in the wheels (opencv-python-headless 4.x and 5.x) encodes MPEG-4 Part 2 (fourcc
``mp4v``) but no H.264 (``avc1`` fails to open: no libx264 or openh264), so drawings are ``mp4v``
in ``.mp4``, which every player and browser-less tool opens.

Safety is :mod:`blazeport.files`': frames go to a temporary file beside the target
(``.clip.partial-PID.mp4``), renamed over the target only when the run ends, never over a file the run
did not make unless ``replace`` (``--overwrite``), never over an input (the caller picks the name
with :func:`blazeport.files.drawing_paths`). Decided here:

- **the input ends early** (a truncated or damaged file, a camera unplugged, Ctrl-C on a live source):
  the frames so far are a good video; :meth:`VideoOutput.commit` finalizes it under its name;
- **our own failure** (an exception while drawing or writing, Ctrl-C on a file): no commit; the
  temporary file is deleted and nothing appears under the target's name.

Encoding (RGB -> BGR and FFmpeg's ``mpeg4``: ~1 ms a 640x480 frame here) runs in a thread of its own,
overlapping the detector. A variable-frame-rate input is written at its average rate (``CAP_PROP_FPS``): every frame, in
order, evenly spaced. A frame whose size differs from the first (a stream that changes resolution,
an image sequence of mixed sizes) is resized to the first's.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.files import staged

FOURCC = "mp4v"
SUFFIX = ".mp4"
ENCODE_QUEUE_BYTES = 32 << 20  # frames waiting for the encoder: 4 of 640x480 (the cap), 1 of 4K
MAX_ENCODE_QUEUE = 4


class VideoOutput:
    """``write(rgb)`` frames, then ``commit()`` (or ``discard()``); as a context manager an exception
    discards and a clean exit commits.

    Encoding runs in its own thread behind a queue of at most ``queue_frames`` frames (default: as many
    as fit in 32 MB, 1 to 4; a 4K frame is 25 MB) while OpenCV releases the GIL in FFmpeg, so it overlaps
    the next frame's detection; ``write`` returns once the frame is queued. An encoder error is raised
    by the next ``write`` or by ``commit``. ``queue_frames=0`` encodes in the caller's thread (drawing a
    640x480 video with LiteRT on 2 busy cores, interleaved passes: 177-269 frames/s that way, 261-344 with
    the encoder thread)."""

    def __init__(self, target: str | Path, fps: float, replace: bool = False, queue_frames: int | None = None) -> None:
        self.target = Path(target)
        self.fps = float(fps) if 1.0 <= fps <= 240.0 else 30.0  # FFmpeg's mpeg4 takes a rational rate
        self._cm = staged(self.target, replace)
        self._stage = self._cm.__enter__()
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0  # queued
        self.encode_s = 0.0  # the encoder thread's time: RGB -> BGR and FFmpeg
        self._done = False
        self.queue_frames = queue_frames
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)  # sized at the first frame
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def temporary(self) -> Path:
        """Where the frames go until :meth:`commit`."""
        return self._stage.path

    def _open(self, w: int, h: int) -> None:
        self.size = (w, h)
        if self.queue_frames is None:
            self.queue_frames = max(1, min(MAX_ENCODE_QUEUE, ENCODE_QUEUE_BYTES // max(1, w * h * 3)))
        self._queue = queue.Queue(maxsize=self.queue_frames or 2)  # inline: the frame and the end mark
        self._writer = cv2.VideoWriter(str(self._stage.path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*FOURCC),
                                       self.fps, self.size)
        if not self._writer.isOpened():
            raise BlazeportError(f"{self.target}: OpenCV's FFmpeg cannot write {FOURCC} video here ({w}x{h}, "
                                 f"{self.fps:g} fps)")
        if self.queue_frames:
            self._thread = threading.Thread(target=self._encode, name="blazeport-encode", daemon=True)
            self._thread.start()

    def _encode(self) -> None:
        assert self._writer is not None and self.size is not None
        while True:
            rgb = self._queue.get()
            if rgb is None:
                return
            if self._failure is not None:
                continue  # drain, so the producer never blocks on a dead encoder
            try:
                t0 = time.perf_counter()
                if rgb.shape[1::-1] != self.size:
                    rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
                self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                self.encode_s += time.perf_counter() - t0
            except BaseException as exc:  # raised in the caller's thread at its next write or commit
                self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise BlazeportError(f"{self.target}: writing the video failed ({self._failure})") from None

    def write(self, rgb: np.ndarray) -> None:
        """Queue one RGB frame (the array is the encoder's until written: pass a frame you do not change)."""
        if self._writer is None:
            self._open(rgb.shape[1], rgb.shape[0])
        self._raise_failure()
        if self._thread is None:  # queue_frames=0: encode here
            self._queue.put(rgb)
            self._queue.put(None)
            self._encode()
        else:
            self._queue.put(rgb)
        self.frames += 1

    def _finish(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if self._writer is not None:
            self._writer.release()

    def commit(self) -> Path | None:
        """Finish the file and put it in place; None (nothing written) when no frame was written."""
        if self._done:
            return self.target if self.frames else None
        self._done = True
        try:
            self._finish()
            self._raise_failure()
            if not self.frames:
                return None
            if not self._stage.path.is_file() or self._stage.path.stat().st_size == 0:
                raise BlazeportError(f"{self.target}: OpenCV's FFmpeg wrote no video (a full disk?)")
            return self._stage.commit()
        finally:
            self._cm.__exit__(None, None, None)  # deletes the temporary file if it was not committed

    def discard(self) -> None:
        """Drop what was written: the temporary file is deleted, the target untouched."""
        if self._done:
            return
        self._done = True
        self._failure = self._failure or RuntimeError("discarded")  # the encoder skips what is still queued
        with contextlib.suppress(Exception):
            self._finish()
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> VideoOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
