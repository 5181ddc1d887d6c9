"""Video frames for the pipeline: a file, a camera, a stream, an image sequence or arrays, one
``Frame(index, time_ms, rgb)`` at a time.

:func:`open_frames` opens any source of :mod:`blazeport.video.sources` and returns a
:class:`FrameSource`: iterate it once for its frames, decoded once, in order, converted to RGB once,
streamed (memory does not grow with the video's length: a bounded queue holds at most
``read_ahead`` decoded frames). A reader thread decodes ahead while the caller runs the models:
OpenCV releases the GIL while FFmpeg decodes, so decoding overlaps inference on another core.

**Time.** ``time_ms`` is the frame's own presentation time when the source has one
(``CAP_PROP_POS_MSEC``: a variable frame rate is honoured), else ``index * 1000 / fps``; a frame
whose timestamp is missing or not after the previous one's gets the later of the two, so times
always increase. A camera's frames are timed by the clock at capture, from 0 at the first frame.

**Live sources** (cameras, rtsp/rtmp/udp/tcp/srt streams) are read as fast as they come: when the
consumer falls behind, the oldest waiting frame is dropped (``dropped`` counts them) so what is
processed stays current, as MediaPipe's live graphs do with ``FlowLimiterCalculator``. Files are
never dropped from: the reader waits for the consumer.

**The end.** A file that stops before its container says it should (``frame_count`` /
``fps``, less three frames or 1% of slack) ends with :attr:`FrameSource.error` set (truncated or
damaged): the frames before it were yielded, so a caller can keep them. A source with no frame at
all raises :class:`VideoReadError`; so does one that cannot be opened.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.video.sources import (
    DEFAULT_FPS,
    ArrayCapture,
    OpenCVCapture,
    SequenceCapture,
    VideoInfo,
    VideoReadError,
    is_sequence_pattern,
    is_url,
    open_capture,
)

__all__ = ["Frame", "FrameSource", "VideoInfo", "VideoReadError", "frames_of", "is_sequence_pattern", "is_url",
           "open_frames"]

READ_AHEAD_BYTES = 96 << 20  # decoded frames waiting in the queue: ~100 frames of 640x480, 4 of 4K
MAX_READ_AHEAD = 8  # past a few frames of lead, reading further ahead only holds memory
TRUNCATION_SLACK_FRAMES = 3
TRUNCATION_SLACK_SHARE = 0.01


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its position in the source (from 0), its time in ms, RGB uint8 ``(H, W, 3)``."""

    index: int
    time_ms: float
    rgb: np.ndarray


class _End:
    """The reader thread's last item: the source has no more frames."""


@dataclass
class _Failed:
    exc: BaseException


Capture = OpenCVCapture | SequenceCapture | ArrayCapture


class FrameSource:
    """An opened source; iterate it once. ``info`` says what it is, ``error`` why it ended early
    (None when it did not), ``frames`` how many were yielded (``decoded``: by the reader, which runs at
    most ``read_ahead`` + 1 ahead); ``decode_s`` is the reader's time
    decoding and converting, ``wait_s`` the consumer's time waiting for a frame, ``dropped`` the
    live frames skipped because the consumer was behind. Use it as a context manager (or call
    :meth:`close`) to stop the reader early."""

    def __init__(self, capture: Capture, read_ahead: int | None = None) -> None:
        self.capture = capture
        self.info: VideoInfo = capture.info
        self.error: str | None = None
        self.frames = 0
        self.decoded = 0
        self.dropped = 0
        self.decode_s = 0.0
        self.wait_s = 0.0
        self._last_ms: float | None = None
        self._clock0: float | None = None
        self._started = False
        if read_ahead is None:
            frame_bytes = max(1, self.info.width * self.info.height * 3)
            read_ahead = max(1, min(MAX_READ_AHEAD, READ_AHEAD_BYTES // frame_bytes))
        self.read_ahead = 0 if isinstance(capture, ArrayCapture) else read_ahead  # the caller's own iterable
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, self.read_ahead))
        self._thread: threading.Thread | None = None

    # -- timing ---------------------------------------------------------------------------------
    def _time_ms(self, index: int, pos: float | None) -> float:
        step = 1000.0 / (self.info.fps or DEFAULT_FPS)
        if self.info.camera:
            now = time.perf_counter()
            self._clock0 = now if self._clock0 is None else self._clock0
            t = (now - self._clock0) * 1000.0
        elif pos is not None and pos == pos and pos >= 0 and (self._last_ms is None or pos > self._last_ms):
            t = float(pos)
        else:
            t = index * step
        if self._last_ms is not None and t <= self._last_ms:
            t = self._last_ms + (1e-3 if self.info.live else step)
        self._last_ms = t
        return t

    def _next_frame(self, index: int) -> Frame | None:
        t0 = time.perf_counter()
        got = self.capture.read()
        if got is None:
            return None
        rgb, pos = got
        frame = Frame(index, self._time_ms(index, pos), rgb)
        self.decode_s += time.perf_counter() - t0
        self.decoded += 1
        return frame

    # -- the reader thread ------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            if self.info.live and isinstance(item, Frame) and self._queue.full():
                try:  # a live source drops its oldest waiting frame rather than fall behind
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _reader(self) -> None:
        try:
            index = 0
            while not self._stop.is_set():
                frame = self._next_frame(index)
                if frame is None:
                    break
                self._put(frame)
                index += 1
            self._put(_End())
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))
        finally:
            self.capture.release()

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise BlazeportError(f"{self.info.name}: its frames were already read; open the source again")
        self._started = True
        try:
            if self.read_ahead <= 0:
                yield from self._inline()
            else:
                yield from self._threaded()
        finally:
            self.close()
        self._check_end()

    def _inline(self) -> Iterator[Frame]:
        index = 0
        while True:
            t0 = time.perf_counter()
            try:
                frame = self._next_frame(index)
            except VideoReadError as exc:
                if not self.frames:
                    raise
                self.error = str(exc)  # a sequence's bad file after good ones: the end, with a reason
                return
            self.wait_s += time.perf_counter() - t0
            if frame is None:
                return
            self.frames += 1
            yield frame
            index += 1

    def _threaded(self) -> Iterator[Frame]:
        self._thread = threading.Thread(target=self._reader, name="blazeport-video", daemon=True)
        self._thread.start()
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - t0
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                if isinstance(item.exc, VideoReadError) and self.frames:
                    self.error = str(item.exc)  # a sequence's bad file after good ones: the end, with a reason
                    return
                raise item.exc
            self.frames += 1
            yield item

    def _check_end(self) -> None:
        info = self.info
        if self.frames == 0 and not isinstance(self.capture, ArrayCapture):
            raise VideoReadError(f"{info.name}: no frame could be decoded (an empty or damaged video, or a codec this "
                                 "OpenCV build lacks)")
        if self.error is not None:
            return
        if info.camera:
            self.error = f"{info.name}: stopped delivering frames after {self.frames}"
        elif info.frame_count and self._last_ms is not None:
            step = 1000.0 / info.fps
            expected_ms = info.frame_count * step
            slack = max(TRUNCATION_SLACK_FRAMES * step, TRUNCATION_SLACK_SHARE * expected_ms)
            if self._last_ms + step < expected_ms - slack:
                self.error = (f"{info.name}: the video ends at frame {self.frames} ({self._last_ms / 1000:.2f} s) of "
                              f"about {info.frame_count} ({expected_ms / 1000:.2f} s): truncated or damaged")

    def close(self) -> None:
        """Stop the reader (it releases the capture) and drop the frames it decoded ahead."""
        if self._thread is None:
            if not self._stop.is_set():
                self._stop.set()
                self.capture.release()
            return
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=2.0)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_frames(source: str | Path | int, *, fps: float | None = None, read_ahead: int | None = None,
                decode_threads: int | None = None, max_pixels: int | None = None) -> FrameSource:
    """Open a video file, a URL OpenCV's FFmpeg reads (``rtsp://``, ``http://``, ``file://``...), a
    camera (an ``int`` index) or an image sequence (a printf pattern, ``frames/%04d.png``).

    ``fps``: an image sequence's frame rate (default 30). ``read_ahead``: frames the reader thread
    may decode ahead (default: as many as fit in ~96 MB, 1 to 8; 0 reads in the caller's thread).
    ``decode_threads``: FFmpeg's decoding threads (``CAP_PROP_N_THREADS``; default OpenCV's, one per
    core). ``max_pixels``: refuse frames larger than this (default
    :data:`blazeport.pipeline.preprocess.MAX_PIXELS`). Raises :class:`VideoReadError` when it cannot open.
    """
    return FrameSource(open_capture(source, decode_threads, max_pixels, fps), read_ahead)


def frames_of(source: str | Path | int | FrameSource | Iterable[np.ndarray], *, fps: float | None = None,
              read_ahead: int | None = None) -> FrameSource:
    """:func:`open_frames` for something to open, the source itself for a :class:`FrameSource`,
    and frames the caller decoded for any other iterable of RGB uint8 arrays (timed at ``fps``,
    default 30)."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, Path, int)) and not isinstance(source, bool):
        return open_frames(source, fps=fps, read_ahead=read_ahead)
    return FrameSource(ArrayCapture(source, fps))
