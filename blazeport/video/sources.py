"""Where video frames come from: a file or URL through OpenCV's FFmpeg, a camera, a numbered image
sequence, or arrays the caller decoded. :mod:`blazeport.video.frames` turns any of them into frames.

Each capture's :meth:`read` returns the next frame as an RGB ``uint8`` array (converted once, in
place) with the source's own timestamp in ms when it has one, or ``None`` at the end. What the
source says about itself (size, frame rate, frame count, rotation) is read once at open.

- **Rotation** (phone videos carry a display matrix instead of rotated pixels): OpenCV's FFmpeg
  capture applies it when ``CAP_PROP_ORIENTATION_AUTO`` is on, which OpenCV 4.5+ and 5.x do by
  default when libavutil can read the matrix (``cap_ffmpeg_impl.hpp``: ``rotation_auto``). We set it
  on explicitly; where a build refuses the property but still reports ``CAP_PROP_ORIENTATION_META``,
  the frame is rotated here instead (clockwise by the tag's degrees, as OpenCV's ``rotateFrame``).
- **Log noise**: FFmpeg's own messages ("moov atom not found", "Connection refused") and OpenCV's
  open-time warnings would print several lines per bad input around our one message, so FFmpeg's
  level is quiet unless the user set ``OPENCV_FFMPEG_LOGLEVEL`` (read when OpenCV first loads FFmpeg),
  and OpenCV's log is silenced while a capture opens only.
- **Image sequences** are a printf pattern (``frames/%04d.png``): every file in the folder whose name
  the pattern makes, in number order (gaps allowed), read with :func:`blazeport.pipeline.preprocess.read_image_sized`
  (the photos' reader: EXIF rotation, the pixel limit), timed at ``fps`` (default 30). A folder of
  images stays what it is everywhere in blazeport: photos, each on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import MAX_PIXELS, ImageReadError, as_rgb, read_image_sized

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET: our message names the file instead

DEFAULT_FPS = 30.0  # an image sequence's, and any source's that reports no usable rate
URL_OPEN_TIMEOUT_MS = 10_000  # a stream that does not answer is an error after this long, not a hang
ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_PATTERN = re.compile(r"%0?(\d*)d")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt")


class VideoReadError(BlazeportError):
    """A video, camera, stream or image sequence that cannot be opened, or has no frame to read."""


@dataclass(frozen=True)
class VideoInfo:
    """What a source says about itself at open. ``frame_count`` is None when unknown (cameras, streams);
    for a file it is the container's count or estimate. ``rotation`` is the display rotation applied
    (degrees clockwise); ``live``: a camera or network stream, read as fast as it comes; ``camera``: a
    local camera, whose frames are timed by the clock."""

    name: str
    width: int
    height: int
    fps: float
    frame_count: int | None
    live: bool
    rotation: int = 0
    camera: bool = False


def is_url(source: object) -> bool:
    return isinstance(source, str) and "://" in source


def is_sequence_pattern(source: object) -> bool:
    """``frames/%04d.png``: a printf integer conversion in the file name (not a file of that name)."""
    if not isinstance(source, (str, Path)) or is_url(source):
        return False
    path = Path(source)
    return bool(_PATTERN.search(path.name)) and not path.exists()


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own warnings off while a capture opens (a bad input gets our one message instead)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


def _usable_fps(fps: float) -> float | None:
    return fps if math.isfinite(fps) and 0.5 <= fps <= 1000 else None


class OpenCVCapture:
    """A ``cv2.VideoCapture`` (file, URL or camera) read as RGB frames with their timestamps."""

    def __init__(self, cap: Any, name: str, live: bool, max_pixels: int | None = None, camera: bool = False) -> None:
        self.cap = cap
        self.rotate: int | None = None
        rotation = 0
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # a camera ignores it
        meta = int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
        if meta in ROTATIONS:
            rotation = meta
            if cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) != 1:  # a build that will not rotate: we do
                self.rotate = ROTATIONS[meta]
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.rotate is not None and rotation in (90, 270):
            width, height = height, width
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        limit = MAX_PIXELS if max_pixels is None else max_pixels
        if width * height > limit:
            cap.release()
            raise VideoReadError(f"{name}: {width}x{height} frames are over the limit of {limit:,} pixels; raise it "
                                 "with --max-pixels (max_pixels= in Python) if the file is trusted.")
        self.info = VideoInfo(name, width, height, _usable_fps(cap.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS,
                              count if count > 0 and not live else None, live, rotation, camera)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        pos = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if self.rotate is not None:
            frame = cv2.rotate(frame, self.rotate)
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB), pos
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=frame)  # in place: the one conversion, no second copy
        return frame, pos

    def release(self) -> None:
        self.cap.release()


def open_capture(source: str | Path | int, decode_threads: int | None = None,
                 max_pixels: int | None = None, fps: float | None = None) -> OpenCVCapture | SequenceCapture:
    """The capture for a camera index, a URL, an image-sequence pattern or a video file; one
    :class:`VideoReadError` naming it when it cannot be opened."""
    if isinstance(source, bool):
        raise VideoReadError(f"not a video source: {source!r}")
    if isinstance(source, int):
        with _quiet_opencv():
            cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise VideoReadError(f"camera {source} cannot be opened (no such device, no permission, or in use by "
                                 "another program); on Linux the cameras are /dev/video*")
        return OpenCVCapture(cap, f"camera {source}", live=True, max_pixels=max_pixels, camera=True)
    if is_sequence_pattern(source):
        return SequenceCapture(Path(source), fps or DEFAULT_FPS, max_pixels)
    name = str(source)
    params: list[int] = []
    if decode_threads is not None:  # else OpenCV's default, one per core (5 benchmark runs: no better choice here)
        params += [cv2.CAP_PROP_N_THREADS, int(decode_threads)]
    if is_url(name):
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                   URL_OPEN_TIMEOUT_MS]
    else:
        path = Path(name)
        if path.is_dir():
            raise VideoReadError(f"{path}: is a folder, not a video")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise VideoReadError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    with _quiet_opencv():
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        what = ("cannot be opened by OpenCV's FFmpeg (wrong address, refused, timed out after "
                f"{URL_OPEN_TIMEOUT_MS // 1000} s, or a protocol this build lacks)") if is_url(name) else (
                "not a video OpenCV's FFmpeg can open (empty, truncated before its index, damaged, or a format "
                "or codec this build lacks)")
        raise VideoReadError(f"{name}: {what}.")
    live = is_url(name) and name.split("://", 1)[0].lower() in LIVE_SCHEMES
    return OpenCVCapture(cap, name, live=live, max_pixels=max_pixels)


def sequence_files(pattern: Path) -> list[Path]:
    """The files a printf pattern names in its folder, in number order."""
    match = _PATTERN.search(pattern.name)
    if match is None:
        return []
    head, tail = pattern.name[: match.start()], pattern.name[match.end():]
    width = int(match.group(1) or 0)
    regex = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + r"\Z")
    folder = pattern.parent
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = regex.match(entry.name)
            if m and (len(m.group(1)) >= width) and pattern.name % int(m.group(1)) == entry.name:
                found.append((int(m.group(1)), folder / entry.name))
    return [p for _, p in sorted(found)]


class SequenceCapture:
    """Numbered images (``frames/%04d.png``) as frames, timed at ``fps``."""

    def __init__(self, pattern: Path, fps: float, max_pixels: int | None = None) -> None:
        self.files = sequence_files(pattern)
        if not self.files:
            raise VideoReadError(f"{pattern}: no file matches this image-sequence pattern")
        self.max_pixels = max_pixels
        self._next = 0
        first, (width, height) = self._read(self.files[0])
        self._first: np.ndarray | None = first
        self.info = VideoInfo(str(pattern), width, height, fps, len(self.files), live=False)

    def _read(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        try:
            image, _ = read_image_sized(path, self.max_pixels)
        except ImageReadError as exc:
            raise VideoReadError(f"image sequence {self.files[0].parent}: frame {self._next}: {exc}") from None
        return image, (image.shape[1], image.shape[0])

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self._next >= len(self.files):
            return None
        image = self._first if self._next == 0 and self._first is not None else self._read(self.files[self._next])[0]
        self._first = None
        self._next += 1
        return image, None

    def release(self) -> None:
        self._first = None


class ArrayCapture:
    """Frames the caller decoded: any iterable of RGB ``uint8`` arrays, timed at ``fps``."""

    def __init__(self, arrays: Iterable[np.ndarray], fps: float | None = None, name: str = "frames") -> None:
        if isinstance(arrays, np.ndarray) and arrays.ndim < 4:
            raise BlazeportError(f"one image of shape {arrays.shape}, not frames: call detect(image), or pass a list "
                                 "(or an (N, H, W, 3) array) of frames")
        self._it = iter(arrays)
        self.info = VideoInfo(name, 0, 0, fps or DEFAULT_FPS, len(arrays) if hasattr(arrays, "__len__") else None,
                              live=False)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        nxt = next(self._it, None)
        return None if nxt is None else (as_rgb(nxt), None)

    def release(self) -> None:
        pass
