"""``blazeport detect``: faces in images and videos, drawn and printed or as JSON.

Photos run through :func:`blazeport.pipeline.folder.detect_folder`; videos (files, a folder's videos, URLs,
image sequences, ``--camera N``) after them, frame by frame (:mod:`blazeport.cli.video`). With a video
among the inputs, ``--json`` prints JSON Lines: one object per photo, then one per frame as it is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tqdm import tqdm

from blazeport.cli.common import (
    add_max_pixels,
    add_postprocess,
    add_runtime_options,
    non_negative_int,
    positive_int,
    print_json,
)
from blazeport.cli.inputs import plan_inputs
from blazeport.cli.video import (
    VideoTotals,
    add_video_options,
    check_video_args,
    run_video,
    video_summary,
)
from blazeport.errors import BlazeportError
from blazeport.options import add_overwrite, add_trust_code
from blazeport.pipeline.detector import load
from blazeport.pipeline.draw import draw_detections, save_rgb
from blazeport.pipeline.folder import FAST_DECODE_SIDE, default_workers, detect_folder
from blazeport.progress import progress_bar


def cmd_detect(args: argparse.Namespace) -> int:
    check_video_args(args)
    plan = plan_inputs(args)
    if args.smooth and not (plan.videos or args.camera is not None):
        raise BlazeportError("--smooth filters detections over time: it applies to videos and --camera, not photos")
    paths, out_dir, drawings, jobs, json_lines = plan.paths, plan.out_dir, plan.drawings, plan.jobs, plan.json_lines
    detector = load(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold,
                    spec=args.spec, postprocess=args.postprocess, device=args.device, trust_code=args.trust_code)
    results, skipped = [], 0
    # one line per image is the progress in text mode; --json gets a bar on stderr instead
    verbose = not args.json and not args.quiet
    bar = progress_bar(total=len(paths), desc="detect", unit="img", enabled=not verbose and not args.quiet
                       and len(paths) > 1)
    t0 = time.perf_counter()
    # decoding runs ahead in reader threads; results come back in input order (blazeport.pipeline.folder)
    # a JPEG over 50 MP decodes reduced: sizes and pixels are reported in the file's own
    for item, dets in detect_folder(detector, paths, batch=args.batch, workers=args.workers, max_pixels=args.max_pixels,
                                    fast_decode=args.fast_decode) if paths else ():
        bar.update()
        if dets is None:
            skipped += 1
            tqdm.write(f"skipped: {item.error}", file=sys.stderr)
            continue
        path, image, (w, h) = item.path, item.image, item.size
        results.append({"image": str(path), "width": w, "height": h, "detections": [d.to_dict() for d in dets]})
        if json_lines:
            tqdm.write(json.dumps(results[-1]), file=sys.stdout)
        if out_dir:
            save_rgb(drawings[item.index], draw_detections(image, dets), replace=args.overwrite)
        if verbose:
            tqdm.write(f"{path}: {len(dets)} {detector.spec.subject}(s)", file=sys.stdout)
            for d in dets:
                (x, y, bw, bh), _ = d.pixels(w, h)
                tqdm.write(f"  score {d.score:.3f}  box x={x:.0f} y={y:.0f} w={bw:.0f} h={bh:.0f} px", file=sys.stdout)
    bar.close()
    elapsed = time.perf_counter() - t0
    if args.json and not json_lines:
        print_json(results)
    if not args.quiet and (paths or not jobs):
        where = f", drawings in {out_dir}" if out_dir else ""
        print(f"{len(results)} image(s), {sum(len(r['detections']) for r in results)} {detector.spec.subject}(s), "
              f"{skipped} skipped, {elapsed:.2f} s ({args.model}, {detector.backend.name}){where}", file=sys.stderr)
    totals = VideoTotals()
    for job in jobs:  # frame by frame, decoded ahead in a reader thread (blazeport.video.frames)
        run_video(job, lambda frames: detector.detect_frames(frames, smooth=args.smooth), draw_detections,
                  lambda d: d.to_dict(), "detections", detector.spec.subject, totals, json_lines=json_lines, verbose=verbose,
                  quiet=args.quiet, overwrite=args.overwrite, fps=args.fps, max_pixels=args.max_pixels)
    if jobs and not args.quiet:
        print(video_summary(totals, detector.spec.subject, f"{args.model}, {detector.backend.name}"), file=sys.stderr)
    return 1 if skipped or totals.skipped or totals.ended_early else 0


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``detect`` subcommand's arguments."""
    p = sub.add_parser("detect", help="detect faces in images and videos and draw them",
                       description="Run the detection pipeline (letterbox, model, decode, weighted NMS) on images and "
                       "on every frame of videos, as MediaPipe's FaceDetection does. With no IMAGE, uses a real photo "
                       "bundled with scikit-image.", formatter_class=fmt)
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image or video files, folders (their photos and videos), URLs OpenCV's FFmpeg opens (rtsp://, "
                   "http://...) or an image sequence as a printf pattern (frames/%%04d.png)")
    p.add_argument("--model", default="short_range", help="spec name, .safetensors, .tflite or .onnx (default: short_range)")
    p.add_argument("--spec", help="spec of a .onnx/.tflite file that does not carry one (files from `blazeport export` do)")
    p.add_argument("--out", help="folder for copies of the images with detections drawn, and of videos (.mp4, mp4v, "
                   "the input's size and frame rate)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the spec's)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="images per detector call (default: 1); one forward per batch on torch and on a dynamic-batch "
                   ".onnx, image by image on the other runtimes; same detections as one at a time. Holds up to "
                   "BATCH + 2 x WORKERS decoded images in memory")
    p.add_argument("--workers", type=non_negative_int, default=default_workers(),
                   help="threads that decode images ahead of the detector; 0 decodes in the detector's thread "
                   "(default: min(4, cores), here %(default)s)")
    p.add_argument("--fast-decode", action="store_true",
                   help=f"decode JPEGs reduced (libjpeg's 1/2, 1/4, 1/8 IDCT) to a long side of at least "
                   f"{FAST_DECODE_SIDE}x the model's input: faster reading, slightly different detections (measured "
                   "by `blazeport bench --folder DIR --fast-decode`); default: decode in full, as MediaPipe does")
    add_runtime_options(p)
    add_postprocess(p)
    p.add_argument("--json", action="store_true", help="print detections as JSON (normalized coordinates); with a video "
                   "among the inputs, JSON Lines: one object per image, then one per frame ({\"frame\", \"time_ms\", "
                   "\"video\", \"width\", \"height\", \"detections\"})")
    p.add_argument("--smooth", action="store_true",
                   help="on video: smooth boxes and keypoints over time with MediaPipe's one-euro filter (min_cutoff "
                   "0.05, beta 80, derivate_cutoff 1: its face landmarker's); default off, as MediaPipe's FaceDetection")
    add_video_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    add_max_pixels(p)
    add_trust_code(p)
    add_overwrite(p, "drawn under a free name (photo_2.jpg)")
    p.set_defaults(func=cmd_detect)
