"""Write a video made of real photos under camera motion, for the video benchmark and memory checks.

    python tools/make_video.py runs/video/bench640.mp4 --size 640x480 --seconds 10
    python tools/make_video.py runs/video/uhd.mp4 --size 3840x2160 --seconds 5
    python tools/make_video.py runs/video/ten_minutes.mp4 --size 640x480 --seconds 600

Each photo of ``--photos`` (default: real photos of ``../shared/data``: one face close up, three
people, a frame with no face, a group) is filmed for ``--shot`` seconds by a window that zooms in and
pans (:func:`camera_motion`), in turn until the length. ``mp4v`` in ``.mp4`` by default (a phone-like
file), ``FFV1`` in ``.mkv`` for exact frames. The tests make their short clips with the same motion.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PHOTOS = ("unlabeled/pyfeat_video_frames/WolfgangLanger_Pexels_0000.jpg", "faces-boxed/images/2008_001322.jpg",
          "unlabeled/pyfeat_video_frames/face_noface_0088.jpg", "unlabeled/human_samples/group-3.jpg")


def camera_motion(photo: np.ndarray, count: int, size: tuple[int, int] = (320, 240),
                  zoom: tuple[float, float] = (1.0, 1.35), pan: tuple[float, float] = (0.12, 0.06)) -> list[np.ndarray]:
    """``count`` frames of ``size`` (width, height) looking at ``photo`` through a window of the frame's
    shape that zooms in from ``zoom[0]`` to ``zoom[1]`` and pans by ``pan`` (fractions of the photo)."""
    h, w = photo.shape[:2]
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        z = zoom[0] + (zoom[1] - zoom[0]) * t
        crop_h = min(h, w * size[1] / size[0]) / z  # the largest window of the frame's shape, zoomed
        crop_w = crop_h * size[0] / size[1]
        cx = w / 2 + (t - 0.5) * pan[0] * w
        cy = h / 2 + (t - 0.5) * pan[1] * h
        s = size[0] / crop_w
        m = np.float32([[s, 0, size[0] / 2 - s * cx], [0, s, size[1] / 2 - s * cy]])
        frames.append(cv2.warpAffine(photo, m, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    return frames


def make_video(out: Path, size: tuple[int, int], seconds: float, fps: float = 30.0, shot: float = 2.0,
               photos: list[Path] | None = None, fourcc: str | None = None, zoom: tuple[float, float] = (1.0, 1.35),
               pan: tuple[float, float] = (0.12, 0.06)) -> int:
    """Write the video; returns its frame count."""
    photos = photos or [SHARED_DATA / p for p in PHOTOS]
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos]
    if any(im is None for im in images):
        raise SystemExit(f"cannot read one of {', '.join(map(str, photos))}")
    fourcc = fourcc or ("FFV1" if out.suffix == ".mkv" else "mp4v")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise SystemExit(f"OpenCV's FFmpeg cannot write {fourcc} into {out}")
    total, per_shot = round(seconds * fps), max(1, round(shot * fps))
    # a shot is filmed once and reused: a 10-minute video costs its encoding, not 18000 warps
    shots = [camera_motion(im, per_shot, size, zoom, pan) for im in images]
    for i in range(total):
        writer.write(shots[(i // per_shot) % len(shots)][i % per_shot])
    writer.release()
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--shot", type=float, default=2.0, help="seconds on each photo (default 2)")
    p.add_argument("--fourcc", help="default: FFV1 for .mkv, mp4v otherwise")
    p.add_argument("--photos", nargs="+", type=Path, help="photos to film (default: four of ../shared/data)")
    p.add_argument("--zoom", default="1.0,1.35", help="zoom at a shot's start and end (default 1.0,1.35)")
    p.add_argument("--pan", default="0.12,0.06", help="pan over a shot, fractions of the photo (default 0.12,0.06)")
    args = p.parse_args()
    w, h = (int(x) for x in args.size.lower().split("x"))
    t0 = time.perf_counter()
    zoom, pan = (tuple(float(x) for x in v.split(",")) for v in (args.zoom, args.pan))
    n = make_video(args.out, (w, h), args.seconds, args.fps, args.shot, args.photos, args.fourcc, zoom, pan)  # type: ignore[arg-type]
    print(f"{args.out}: {n} frames, {w}x{h}, {args.fps:g} fps, {args.out.stat().st_size / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
