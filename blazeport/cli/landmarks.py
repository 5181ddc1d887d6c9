"""``blazeport landmarks``: face detection, then MediaPipe's 468 face landmarks per face (and iris)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tqdm import tqdm

from blazeport.cli.common import add_max_pixels, add_runtime_options, positive_int, print_json
from blazeport.cli.inputs import plan_inputs
from blazeport.cli.video import (
    VideoTotals,
    add_video_options,
    check_video_args,
    run_video,
    video_summary,
)
from blazeport.options import add_overwrite, add_trust_code
from blazeport.pipeline.draw import draw_landmarks, save_rgb
from blazeport.pipeline.landmarks import load_landmarks
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized
from blazeport.progress import progress_bar
from blazeport.video.landmarks import video_landmarks


def cmd_landmarks(args: argparse.Namespace) -> int:
    check_video_args(args)
    plan = plan_inputs(args)
    paths, out_dir, drawings, jobs, json_lines = plan.paths, plan.out_dir, plan.drawings, plan.jobs, plan.json_lines
    landmarker = load_landmarks(args.model, backend=args.backend, detector=args.detector,
                                iris=args.iris_model if args.iris else False,
                                threads=args.threads, max_faces=args.max_faces,
                                min_detection_confidence=args.min_detection_confidence, min_presence=args.min_presence,
                                device=args.device, trust_code=args.trust_code, refine=args.refine)
    verbose = not args.json and not args.quiet
    bar = progress_bar(total=len(paths), desc="landmarks", unit="img", enabled=not verbose and not args.quiet
                       and len(paths) > 1)
    results: list[dict[str, Any]] = []
    skipped = 0
    t0 = time.perf_counter()
    for index, path in enumerate(paths):  # photos first, then videos (below)
        bar.update()
        try:
            image, (w, h) = read_image_sized(path, args.max_pixels)
        except ImageReadError as exc:
            skipped += 1
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        faces = landmarker.process(image)
        results.append({"image": str(path), "width": w, "height": h, "faces": [f.to_dict() for f in faces]})
        if json_lines:
            tqdm.write(json.dumps(results[-1]), file=sys.stdout)
        if out_dir:
            save_rgb(drawings[index], draw_landmarks(image, faces, mesh=not args.no_mesh), replace=args.overwrite)
        if verbose:
            tqdm.write(f"{path}: {len(faces)} face(s)", file=sys.stdout)
            for f in faces:
                x, y = f.landmarks[:, 0] * w, f.landmarks[:, 1] * h
                eyes = "".join(f"  {eye} iris ({e.iris[0][0] * w:.0f}, {e.iris[0][1] * h:.0f}) px"
                               for eye, e in f.iris.items())
                if len(f.landmarks) > 468:  # the attention mesh's irises: centres 468 (left) and 473 (right)
                    eyes += "".join(f"  refined {eye} iris ({f.landmarks[i][0] * w:.0f}, {f.landmarks[i][1] * h:.0f}) px"
                                    for eye, i in (("left", 468), ("right", 473)))
                tqdm.write(f"  presence {f.score:.3f}  {len(f.landmarks)} landmarks in x={x.min():.0f}-{x.max():.0f} "
                           f"y={y.min():.0f}-{y.max():.0f} px  detection score {f.detection.score:.3f}{eyes}",
                           file=sys.stdout)
    bar.close()
    elapsed = time.perf_counter() - t0
    if args.json and not json_lines:
        print_json(results)
    if not args.quiet and (paths or not jobs):
        where = f", drawings in {out_dir}" if out_dir else ""
        print(f"{len(results)} image(s), {sum(len(r['faces']) for r in results)} face(s), {skipped} skipped, "
              f"{elapsed:.2f} s ({args.model or landmarker.spec.name}, {landmarker.runtime}){where}", file=sys.stderr)
    totals = VideoTotals()
    for job in jobs:  # frame by frame, decoded ahead in a reader thread (blazeport.video.frames)
        run_video(job, lambda frames: video_landmarks(landmarker, frames, static=args.static),
                  lambda rgb, faces: draw_landmarks(rgb, faces, mesh=not args.no_mesh), lambda f: f.to_dict(), "faces",
                  "face", totals, json_lines=json_lines, verbose=verbose, quiet=args.quiet, overwrite=args.overwrite,
                  fps=args.fps, max_pixels=args.max_pixels)
    if jobs and not args.quiet:
        mode = "static" if args.static else "tracking"
        print(video_summary(totals, "face", f"{args.model or landmarker.spec.name}, {landmarker.runtime}, {mode}"),
              file=sys.stderr)
    return 1 if skipped or totals.skipped or totals.ended_early else 0


def _max_faces(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``landmarks`` subcommand's arguments."""
    p = sub.add_parser(
        "landmarks", help="468 face landmarks per face (MediaPipe's face mesh), optionally iris landmarks",
        description="Detect faces (short range), cut MediaPipe's rotated ROI around each, run the face landmark "
        "model and project its 468 landmarks back onto the image, as MediaPipe's FaceMesh(static_image_mode=True) "
        "does. With --iris, also the iris model on both eyes. With no IMAGE, uses a real photo bundled with "
        "scikit-image. Coordinates are normalized to the image (z in the units of x).", formatter_class=fmt)
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image or video files, folders (their photos and videos), URLs OpenCV's FFmpeg opens or an "
                   "image sequence as a printf pattern (frames/%%04d.png)")
    p.add_argument("--model", help="face landmark model: spec name or file (default: face_landmark, or "
                   "face_landmark_with_attention with --refine)")
    p.add_argument("--refine", action="store_true", help="478 landmarks: the face mesh with attention, refined lips, "
                   "eyes and irises, as FaceMesh(refine_landmarks=True)")
    p.add_argument("--detector", default="short_range", help="face detector: spec name or file (default: short_range, "
                   "as FaceMesh)")
    p.add_argument("--iris", action="store_true", help="also iris landmarks (71 eye contour + 5 iris per eye)")
    p.add_argument("--iris-model", default="iris_landmark", metavar="MODEL",
                   help="iris model for --iris: spec name or file (default: iris_landmark)")
    p.add_argument("--max-faces", type=_max_faces, default=1, metavar="N",
                   help="faces per image, highest detection scores first, or 'all' (default: 1, as FaceMesh's "
                   "max_num_faces)")
    p.add_argument("--min-detection-confidence", type=float, default=0.5, metavar="S",
                   help="detector score threshold (default: 0.5)")
    p.add_argument("--min-presence", type=float, default=0.5, metavar="S",
                   help="keep a face whose presence score is above S (default: 0.5, FaceMesh's min_tracking_confidence)")
    p.add_argument("--out", help="folder for copies of the images with the meshes drawn, and of videos (.mp4)")
    p.add_argument("--static", action="store_true",
                   help="on video: every frame on its own, as FaceMesh(static_image_mode=True); default: MediaPipe's "
                   "tracking loop (static_image_mode=False), where a frame's landmarks give the next frame's regions")
    add_video_options(p)
    p.add_argument("--no-mesh", action="store_true", help="draw contours and points only, not the tessellation")
    add_runtime_options(p, "the models")
    p.add_argument("--json", action="store_true", help="print the landmarks as JSON: per image, per face: score, "
                   "landmarks [[x, y, z] x 468, or 478 with --refine], roi, detection, iris; with a video among the "
                   "inputs, JSON Lines: one object per image, then one per frame ({\"frame\", \"time_ms\", \"video\", "
                   "\"width\", \"height\", \"faces\"})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    add_max_pixels(p)
    add_trust_code(p)
    add_overwrite(p, "drawn under a free name (photo_2.jpg)")
    p.set_defaults(func=cmd_landmarks)
