"""Short test videos made here from real photos with OpenCV's VideoWriter: camera motion (a crop that
pans and zooms over each photo), a face-free stretch, and the containers the tests need.

The motion is ``tools/make_video.py``'s (the benchmark's videos are made by it too).

- FFV1 in ``.mkv``: lossless, so the frames read back are the frames written (tests that compare
  pixels or detections with MediaPipe's on the same frames use it);
- ``mp4v`` in ``.mp4``: what a phone-like file looks like;
- a rotation tag: OpenCV's writer cannot set one, so :func:`set_mp4_rotation` writes the display
  matrix into the ``.mp4``'s track header (``tkhd``) itself, which is where phones put it and what
  FFmpeg reads;
- a variable frame rate: OpenCV's writer encodes at one rate, but in raw mode
  (``VIDEOWRITER_PROP_RAW_VIDEO``) it muxes already-encoded packets with the presentation time each is
  given (``VIDEOWRITER_PROP_PTS``): :func:`write_vfr` re-times an MJPG video's packets into an ``.mkv``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tools.make_video import camera_motion

SIZE = (320, 240)  # width, height
# (photo under ../shared/data, frames): a real video frame with one face, a real frame with none, 3 faces
CLIP = (("unlabeled/pyfeat_video_frames/WolfgangLanger_Pexels_0000.jpg", 15),
        ("unlabeled/pyfeat_video_frames/face_noface_0088.jpg", 10),
        ("faces-boxed/images/2008_001322.jpg", 15))


def clip_frames(shared_data: Path, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """The test clip's BGR frames: 15 of one face, 10 with none, 15 of a three-person photo, all moving."""
    frames: list[np.ndarray] = []
    for name, count in CLIP:
        photo = cv2.imread(str(shared_data / name), cv2.IMREAD_COLOR)
        assert photo is not None, name
        frames += camera_motion(photo, count, size)
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 30.0, fourcc: str = "FFV1") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV's FFmpeg cannot write {fourcc} into {path.suffix}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def read_all(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV's own loop reads, BGR."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return out
        out.append(frame)


def _box(data: bytes | bytearray, path: Sequence[str], start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(offset, header size) of the box at ``path`` (``moov/trak/tkhd``) of an ISO media file."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, i)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = end - i
        if kind.decode("latin-1") == path[0]:
            return (i, header) if len(path) == 1 else _box(data, path[1:], i + header, i + size)
        i += size
    raise KeyError("/".join(path))


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Write a phone's display matrix (rotate by ``degrees`` clockwise on display) into the track header."""
    data = bytearray(path.read_bytes())
    offset, header = _box(data, ("moov", "trak", "tkhd"))
    version = data[offset + header]
    # version/flags, creation and modification times, track id, reserved, duration, 8 reserved, layer,
    # alternate group, volume, 2 reserved: then the 3x3 matrix (16.16 and 2.30 fixed point)
    matrix_at = offset + header + 4 + (28 if version == 1 else 16) + 4 + 8 + 8
    one = 1 << 16
    a, b, c, d = {0: (one, 0, 0, one), 90: (0, one, -one, 0), 180: (-one, 0, 0, -one), 270: (0, -one, one, 0)}[degrees]
    struct.pack_into(">9i", data, matrix_at, a, b, 0, c, d, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


def write_vfr(path: Path, frames: Sequence[np.ndarray], pts: Sequence[int], fps: float = 30.0) -> Path:
    """An ``.mkv`` whose frame ``i`` is shown at ``pts[i] / fps`` seconds: MJPG-encoded once at a constant
    rate, then its packets muxed again in raw mode, each with its own presentation time."""
    constant = write_video(path.with_name(path.stem + "_cfr.avi"), frames, fps, "MJPG")
    raw = cv2.VideoCapture(str(constant), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h),
                          [cv2.VIDEOWRITER_PROP_RAW_VIDEO, 1])
    assert out.isOpened()
    for t in pts:
        ok, packet = raw.read()
        assert ok
        out.set(cv2.VIDEOWRITER_PROP_KEY_FLAG, 1)  # MJPG: every frame is a key frame
        out.set(cv2.VIDEOWRITER_PROP_PTS, t)
        out.write(packet)
    out.release()
    constant.unlink()
    return path
