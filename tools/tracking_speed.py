#!/usr/bin/env python
"""Frames per second of face landmarks in video mode (:class:`blazeport.video.tracking.FaceMeshTracker`)
against static mode (:meth:`FaceLandmarker.process` on every frame) on the same frames, one thread.

The frames are ``tools/tracking_parity.py``'s 100-frame video (640x480, real photos, a moving
camera, faces entering and leaving, a stretch without faces), already decoded in memory: the time
is the pipeline's alone (detector when it runs, crops, face mesh, projection, next ROI). Each mode
runs ``--repeat`` times after one warm-up pass; the table gives the fastest pass (on a shared machine
the others measure the neighbours too), with the CPU time the process used (all its threads: for
blazeport's one thread the least disturbed figure on a busy machine), and prints the load average. ``--mediapipe`` adds
MediaPipe's own ``FaceMesh`` in both modes (its own thread settings) for reference.

Usage::

    python tools/tracking_speed.py                              # tflite and torch, max_num_faces 2
    python tools/tracking_speed.py --backends tflite --max-faces 4 --mediapipe --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blazeport.pipeline.landmarks import load_landmarks  # noqa: E402
from blazeport.video.tracking import FaceMeshTracker  # noqa: E402
from tools.tracking_parity import default_video  # noqa: E402


def timed(run: Callable[[], int], repeat: int) -> tuple[float, float, int]:
    """Wall and CPU seconds (this process, all its threads) of the fastest of ``repeat`` runs after a
    warm-up, and the faces the last run returned."""
    run()
    walls, cpus, faces = [], [], 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        faces = run()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), faces


def blazeport_rows(frames: list[np.ndarray], backend: str, max_faces: int, repeat: int) -> list[dict[str, Any]]:
    landmarker = load_landmarks(backend=backend, max_faces=max_faces, threads=1)
    tracker = FaceMeshTracker(landmarker)
    video_s, video_cpu, video_faces = timed(lambda: sum(map(len, tracker.track(frames))), repeat)
    runs = tracker.stats.detector_runs
    static_s, static_cpu, static_faces = timed(lambda: sum(len(landmarker.process(f)) for f in frames), repeat)
    return [{"pipeline": f"blazeport {backend}", "mode": "video", "seconds": video_s, "cpu_seconds": video_cpu,
             "faces": video_faces, "detector_runs": runs},
            {"pipeline": f"blazeport {backend}", "mode": "static", "seconds": static_s, "cpu_seconds": static_cpu,
             "faces": static_faces, "detector_runs": len(frames)}]


def mediapipe_rows(frames: list[np.ndarray], max_faces: int, repeat: int) -> list[dict[str, Any]]:
    import mediapipe as mp

    rows = []
    for static in (False, True):
        def run(static: bool = static) -> int:
            with mp.solutions.face_mesh.FaceMesh(static_image_mode=static, max_num_faces=max_faces,
                                                 refine_landmarks=False) as mesh:
                return sum(len(mesh.process(f).multi_face_landmarks or []) for f in frames)

        seconds, cpu, faces = timed(run, repeat)
        rows.append({"pipeline": "MediaPipe FaceMesh", "mode": "static" if static else "video", "seconds": seconds,
                     "cpu_seconds": cpu, "faces": faces, "detector_runs": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["tflite", "torch"], choices=["torch", "tflite"])
    ap.add_argument("--max-faces", type=int, default=2, help="max_num_faces (default: 2)")
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per mode after a warm-up (default: 5)")
    ap.add_argument("--mediapipe", action="store_true", help="also MediaPipe's FaceMesh in both modes")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    frames = default_video()
    rows = []
    for backend in args.backends:
        rows += blazeport_rows(frames, backend, args.max_faces, args.repeat)
    if args.mediapipe:
        rows += mediapipe_rows(frames, args.max_faces, args.repeat)
    print(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}, max_num_faces {args.max_faces}, "
          f"1 thread, fastest of {args.repeat} passes, load average {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<20} {'mode':<7} {'frames/s':>9} {'ms/frame':>9} {'CPU ms/frame':>13} {'faces':>6} "
          f"{'detector on':>12}")
    for r in rows:
        r["fps"] = len(frames) / r["seconds"]
        runs = "-" if r["detector_runs"] is None else f"{r['detector_runs']} frames"
        print(f"{r['pipeline']:<20} {r['mode']:<7} {r['fps']:>9.1f} {1000 * r['seconds'] / len(frames):>9.2f} "
              f"{1000 * r['cpu_seconds'] / len(frames):>13.2f} {r['faces']:>6} {runs:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": len(frames), "max_faces": args.max_faces, "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
