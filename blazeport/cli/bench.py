"""The ``bench`` subcommand: its parser (:func:`add_bench_parser`, added to ``blazeport``'s by
:mod:`blazeport.cli`) and :func:`cmd_bench`, which resolves targets, runs them and reports.

``python -m blazeport.bench ARGS`` is ``blazeport bench ARGS`` (:func:`main`, its own parser):
nothing in :mod:`blazeport.bench` imports :mod:`blazeport.cli`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from blazeport.bench.android import android_commands
from blazeport.bench.android_results import cmd_android_results
from blazeport.bench.folder import print_folder_report, run_folder_bench
from blazeport.bench.mediapipe import MEDIAPIPE, find_mediapipe_python
from blazeport.bench.report import add_ratios, check_targets, host_info, print_report, write_plot
from blazeport.bench.rounds import child_config, configurations, measure_rows
from blazeport.bench.spawn import spawn
from blazeport.bench.targets import BACKENDS, DEFAULT_TEACHER, ORIGINAL, add_baselines, mediapipe_baseline, resolve_targets
from blazeport.bench.video import print_video_report, run_video_bench, video_configs
from blazeport.cli.common import add_postprocess
from blazeport.errors import BlazeportError
from blazeport.files import check_output, write_atomic
from blazeport.modelfiles.runtimes import RUNTIMES, check_device
from blazeport.options import add_overwrite, add_trust_code
from blazeport.pipeline.folder import default_workers
from blazeport.pipeline.photos import sample_image_path
from blazeport.pipeline.preprocess import read_image
from blazeport.specs import SPECS, LandmarkSpec

DEFAULT_CACHE = Path("runs") / "bench-cache"


def _whole_list(text: str, least: int) -> list[int]:
    """Comma-separated whole numbers, each >= ``least``; else the usage error that says so."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"expected {'positive integers' if least == 1 else f'integers >= {least}'}, "
                                         f"got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    return _whole_list(text, 1)


def _count_list(text: str) -> list[int]:
    """Comma-separated whole numbers >= 0 (--decode-threads: 0 is OpenCV's default)."""
    return _whole_list(text, 0)


def _backend_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in BACKENDS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(bad) or text!r}; choose from {', '.join(BACKENDS)}")
    return values


def add_bench_parser(sub: Any, formatter_class: Any = argparse.RawDescriptionHelpFormatter) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help="latency of models on torch / onnx / tflite, with the original and MediaPipe as baselines",
        description="Measure init, first-call and steady-state latency (min, p50, p90, p99, mean, std), peak RSS, "
        "size, params and MACs of each MODEL on each backend and thread count, every configuration in its own "
        "process. Google's original .tflite (LiteRT, XNNPACK) runs alongside as the baseline, and with --e2e "
        "MediaPipe's own FaceDetection.process() on the same file. A spec name is exported to ONNX / TFLite on the "
        f"fly (cached in --cache). Backends: {', '.join(RUNTIMES)} (tflite: the re-export, and the original for an "
        f"original model), {ORIGINAL}.", formatter_class=formatter_class,
        epilog="examples:\n  blazeport bench short_range full_range_sparse --threads 1,2 --e2e --json runs/bench.json\n"
        "  blazeport bench face_detection_short_range.tflite --backend tflite     # on a board: LiteRT only\n"
        "  blazeport bench short_range --backend tflite --threads 1,4 --android   # benchmark_model command lines\n"
        "  blazeport bench --android-results runs/android/*.log                   # ... and their logs read back")
    b.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"spec name ({', '.join(SPECS)}; or a landmark model: face_landmark, "
                   "face_landmark_with_attention, iris_landmark, timed model only), a student architecture to time "
                   "untrained (resnet, ...), a .safetensors, .onnx or .tflite file")
    b.add_argument("--backend", type=_backend_list, default=list(RUNTIMES),
                   help=f"comma-separated: {', '.join(BACKENDS)} (default: {','.join(RUNTIMES)})")
    b.add_argument("--threads", type=_int_list, default=[1], help="comma-separated thread counts (default: 1)")
    b.add_argument("--runs", type=int, default=200, help="timed runs per configuration (default: 200)")
    b.add_argument("--warmup", type=int, default=20, help="untimed runs before timing (default: 20)")
    b.add_argument("--rounds", type=int, default=1,
                   help="split the runs over this many rounds, every configuration once per round (round-robin, "
                   "every other round reversed), so a slow spell of a shared or throttling host hits all of them alike "
                   "(default: 1)")
    b.add_argument("--e2e", action="store_true", help="also measure end to end on --image (file -> detections), "
                   "stage by stage, with MediaPipe as a baseline")
    b.add_argument("--image", help="photo for the input and --e2e (default: scikit-image's astronaut)")
    b.add_argument("--json", metavar="OUT", help="write the full report (raw timings included) to this JSON file")
    b.add_argument("--plot", metavar="OUT.png", help="write a chart: p50 bars with p90 whiskers")
    b.add_argument("--mediapipe-python", metavar="PATH",
                   help="interpreter with mediapipe for the baseline (default: this one if it has mediapipe; 'none': off)")
    b.add_argument("--no-baselines", action="store_true", help="do not add the original .tflite and MediaPipe baselines")
    b.add_argument("--spec", help="spec of a model file (a .onnx/.tflite that carries none needs it; files from "
                   f"`blazeport export` do), and the teacher whose input and head an untrained student gets "
                   f"(default: {DEFAULT_TEACHER})")
    b.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"folder for on-the-fly exports (default: {DEFAULT_CACHE})")
    b.add_argument("--folder", metavar="DIR", help="instead of latency: images/s of the folder pipeline (`detect DIR "
                   "--batch N --workers K`) over DIR's images on each backend, thread count and --batch, against "
                   "MediaPipe's FaceDetection.process loop over the same files and reader (MODEL defaults to short_range)")
    b.add_argument("--video", metavar="FILE", help="instead of latency: frames/s of `detect VIDEO`'s loop over FILE "
                   "(a reader thread decoding ahead, detection per frame; with --draw also --out's drawing and mp4v "
                   "encoding) on each backend and thread count, against MediaPipe's own loop (OpenCV read + "
                   "FaceDetection.process per frame), with per-stage ms (decode, wait, detect, draw)")
    b.add_argument("--draw", action="store_true", help="with --video: also time our loop drawing and encoding the video")
    b.add_argument("--decode-threads", type=_count_list, default=[0],
                   help="with --video: comma-separated FFmpeg decode thread counts (CAP_PROP_N_THREADS) for every loop; "
                   "0: OpenCV's default, one per core, which detect uses (default: 0)")
    b.add_argument("--limit", type=int, help="with --folder: only the first N images (sorted)")
    b.add_argument("--batch", type=_int_list, default=[1], help="with --folder: comma-separated batch sizes (default: 1)")
    b.add_argument("--workers", type=int, default=default_workers(),
                   help="with --folder: reader threads, ours and MediaPipe's alike (default: min(4, cores), here %(default)s)")
    b.add_argument("--fast-decode", action="store_true",
                   help="with --folder: also run each configuration with JPEGs decoded reduced (`detect --fast-decode`), "
                   "and print its speed and its effect on the detections against the exact decode")
    b.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: run the torch and onnx rows on that GPU (the LiteRT, ExecuTorch "
                   "and MediaPipe rows stay on the CPU); with --folder, images/s per --batch on it")
    add_postprocess(b)
    b.add_argument("--android", action="store_true",
                   help="print the equivalent TFLite benchmark_model command lines (adb) for the .tflite files and exit")
    b.add_argument("--android-results", nargs="+", metavar="LOG",
                   help="instead of measuring: read these benchmark_model logs (the --android script saves them) into "
                   "the same table and --json report, each log's graph matched by file name to Google's originals or "
                   "a MODEL .tflite, with the ratio to the original at the same threads and delegates")
    add_trust_code(b)
    add_overwrite(b)
    b.set_defaults(func=cmd_bench)
    return b


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (canonical form of the parsed arguments)."""
    parts = ["blazeport", "bench", *args.models, "--backend", ",".join(args.backend),
             "--threads", ",".join(map(str, args.threads))]
    if args.video:  # one timed pass over the video per round
        parts += ["--video", args.video, "--decode-threads", ",".join(map(str, args.decode_threads))]
        parts += ["--draw"] if args.draw else []
    elif args.folder:  # --runs and --warmup mean nothing to a folder: one pass per round over its files
        parts += ["--folder", args.folder, "--batch", ",".join(map(str, args.batch)), "--workers", str(args.workers)]
        parts += ["--limit", str(args.limit)] if args.limit else []
        parts += ["--fast-decode"] if args.fast_decode else []
    else:
        parts += ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    parts += ["--rounds", str(args.rounds)] if args.rounds > 1 else []
    parts += ["--e2e"] if args.e2e else []
    parts += ["--postprocess", args.postprocess] if args.postprocess != "auto" else []
    parts += ["--trust-code"] if args.trust_code else []
    parts += ["--device", args.device] if args.device != "cpu" else []
    parts += ["--image", args.image] if args.image else []
    parts += ["--mediapipe-python", args.mediapipe_python] if args.mediapipe_python else []
    parts += ["--no-baselines"] if args.no_baselines else []
    parts += ["--json", args.json] if args.json else []
    parts += ["--plot", args.plot] if args.plot else []
    return " ".join(shlex.quote(p) for p in parts)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bench_image(image: str | None) -> Path:
    """--image, or scikit-image's astronaut; read once here for one clear error before anything runs."""
    if image:
        path = Path(image).resolve()
    else:
        try:

            path = sample_image_path("astronaut")
        except (ImportError, FileNotFoundError):
            raise BlazeportError("no default photo (scikit-image is not installed): pass --image PATH") from None
    read_image(path)
    return path


def _build_report(args: argparse.Namespace, host: dict[str, Any], results: list[dict[str, Any]], notes: list[str],
                  image: Path, rounds: int, mp_python: str | None) -> dict[str, Any]:
    for row in results:
        if row["backend"] == MEDIAPIPE:
            host["mediapipe"] = (row.get("versions") or {}).get("mediapipe")
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    add_ratios(results)
    report = {
        "blazeport_bench": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(args),
        "host": host,
        "settings": {"runs": args.runs, "warmup": args.warmup, "rounds": rounds, "threads": args.threads, "e2e": args.e2e,
                     "image": str(image), "backends": args.backend, "mediapipe_python": mp_python,
                     "timer": "time.perf_counter_ns",
                     "rss": "peak RSS of the child's own image: VmHWM (Linux), else ru_maxrss"},
        "notes": notes,
        "results": results,
    }
    report["targets"] = check_targets(results)
    return report


def _place(targets: list[Any], args: argparse.Namespace) -> None:
    """What each child is told beyond its target: the decode + NMS code, and --device for the runtimes
    that take one (checked here, once, before any child starts)."""
    for t in targets:
        t.extra["postprocess"] = args.postprocess
        if t.backend in RUNTIMES and "cuda" in RUNTIMES[t.backend].devices:
            t.extra["device"] = check_device(RUNTIMES[t.backend], args.device)


def cmd_bench_folder(args: argparse.Namespace) -> int:
    """``bench --folder DIR``: images/s of the folder pipeline against MediaPipe's (:mod:`blazeport.bench.folder`)."""
    if not Path(args.folder).is_dir():
        raise BlazeportError(f"--folder {args.folder}: not a folder")
    if (args.limit is not None and args.limit < 1) or args.workers < 0:
        raise BlazeportError("--limit must be >= 1 and --workers >= 0")
    ignored = [flag for flag, given in (("--e2e", args.e2e), ("--plot", args.plot), ("--android", args.android),
                                        ("--runs", args.runs != 200), ("--warmup", args.warmup != 20)) if given]
    if ignored:  # said, not silently dropped
        raise BlazeportError(f"{', '.join(ignored)} do(es) not apply to --folder (one timed pass per round over the "
                             "folder's files); drop it, or run the latency bench without --folder")
    args.models = args.models or [DEFAULT_TEACHER]
    if args.json:
        check_output(args.json, [Path(m) for m in args.models if Path(m).is_file()], "JSON report", args.overwrite)
    notes: list[str] = []
    targets = resolve_targets(args.models, set(args.backend), Path(args.cache), args.spec, notes, _log,
                              args.trust_code)
    landmark = sorted({t.model for t in targets if isinstance(t.spec, LandmarkSpec)})
    if landmark:
        raise BlazeportError(f"--folder times the detection pipeline; {', '.join(landmark)} is a landmark model "
                             "(bench it without --folder: model-only rows)")
    _place(targets, args)
    mp_python = None
    if not args.no_baselines:
        mp_python, why = find_mediapipe_python(args.mediapipe_python)
        notes.append(why)
    host = host_info()
    rows = run_folder_bench(targets, Path(args.folder), args.limit, args.threads, args.batch, args.workers, mp_python,
                            notes, _bench_image(args.image), _log, rounds=max(1, args.rounds), fast_decode=args.fast_decode)
    return _finish_report("blazeport_bench_folder", rows, args, host, notes, print_folder_report)


def cmd_bench_video(args: argparse.Namespace) -> int:
    """``bench --video FILE``: frames/s of detect's video loop against MediaPipe's (:mod:`blazeport.bench.video`)."""
    if not Path(args.video).is_file():
        raise BlazeportError(f"--video {args.video}: not a file")
    ignored = [flag for flag, given in (("--e2e", args.e2e), ("--plot", args.plot), ("--android", args.android),
                                        ("--folder", args.folder), ("--batch", args.batch != [1]),
                                        ("--fast-decode", args.fast_decode), ("--runs", args.runs != 200),
                                        ("--warmup", args.warmup != 20)) if given]
    if ignored:
        raise BlazeportError(f"{', '.join(ignored)} do(es) not apply to --video (one timed pass over the video per "
                             "round); drop it")
    args.models = args.models or [DEFAULT_TEACHER]
    if args.json:
        check_output(args.json, [Path(args.video), *(Path(m) for m in args.models if Path(m).is_file())], "JSON report",
                     args.overwrite)
    notes: list[str] = []
    targets = resolve_targets(args.models, set(args.backend), Path(args.cache), args.spec, notes, _log, args.trust_code)
    _place(targets, args)
    if not args.no_baselines:
        mp_python, why = find_mediapipe_python(args.mediapipe_python)
        notes.append(why)
        for ref in {t.reference.name: t.reference for t in targets if t.reference is not None}.values():
            targets = [*targets, *mediapipe_baseline(ref, mp_python, notes)]
    host = host_info()
    rows = run_video_bench(video_configs(targets, args.threads, args.decode_threads, args.draw), Path(args.video),
                           max(1, args.rounds), child_config, spawn, _bench_image(args.image), _log)
    return _finish_report("blazeport_bench_video", rows, args, host, notes, print_video_report)


def _finish_report(kind: str, rows: list[dict[str, Any]], args: argparse.Namespace, host: dict[str, Any],
                   notes: list[str], show: Any) -> int:
    """What bench --folder and --video end with: the end load average, the notes, the table (``show``), the
    JSON report (``kind`` names its format), and exit status 1 when a row failed."""
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    for note in notes:
        _log(f"note: {note}")
    show(rows)
    report = {kind: 1, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": command_line(args), "host": host, "notes": notes, "results": rows}
    if args.json:
        out = write_atomic(args.json, json.dumps(report, indent=1).encode(), args.overwrite)
        _log(f"report: {out}")
    return 1 if any(r.get("error") for r in rows) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.android_results:
        return cmd_android_results(args, _log)
    if args.video:
        return cmd_bench_video(args)
    if args.folder:
        return cmd_bench_folder(args)
    if not args.models:
        raise BlazeportError("give a MODEL to benchmark (or --folder DIR)")
    if args.runs < 1 or args.warmup < 0:
        raise BlazeportError("--runs must be >= 1 and --warmup >= 0")
    if args.fast_decode or args.batch != [1]:
        raise BlazeportError("--fast-decode and --batch apply to --folder DIR (images/s over a folder)")
    image = _bench_image(args.image)
    inputs = [image, *(m for m in args.models if Path(m).is_file())]
    for out, what in ((args.json, "JSON report"), (args.plot, "chart")):
        if out:
            check_output(out, inputs, what, args.overwrite)
    notes: list[str] = []
    targets = resolve_targets(args.models, set(args.backend), Path(args.cache), args.spec, notes, _log,
                              args.trust_code)
    if args.android:
        print(android_commands(targets, args.threads, args.runs, args.warmup))
        return 0
    if args.e2e and any(isinstance(t.spec, LandmarkSpec) for t in targets):
        notes.append("landmark models are timed model only (their end to end is the landmark pipeline after "
                     "detection, which --e2e does not time)")
    mp_python = None
    if args.e2e and not args.no_baselines:
        mp_python, why = find_mediapipe_python(args.mediapipe_python)
        notes.append(why)
    if not args.no_baselines:
        targets = add_baselines(targets, args.e2e, mp_python, notes)
    _place(targets, args)
    configs = configurations(targets, args.threads, ["model", "e2e"] if args.e2e else ["model"])
    host = host_info()
    rounds = max(1, min(args.rounds, args.runs))
    results = measure_rows(configs, args.runs, args.warmup, rounds, image, _log)
    report = _build_report(args, host, results, notes, image, rounds, mp_python)
    print_report(report)
    if args.json:
        out = write_atomic(args.json, json.dumps(report, indent=1).encode(), args.overwrite)
        _log(f"report: {out}")
    if args.plot:
        write_plot(report, Path(args.plot), args.overwrite)
        _log(f"chart: {args.plot}")
    return 1 if any(r.get("error") for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m blazeport.bench ARGS``: ``blazeport bench ARGS`` with the bench's own parser."""
    parser = argparse.ArgumentParser(prog="blazeport")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_bench(args)
    except BlazeportError as exc:
        print(f"blazeport bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blazeport bench: interrupted", file=sys.stderr)
        return 130
