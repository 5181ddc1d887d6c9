"""``blazeport`` console command: convert, detect, eval, distill, export, bench, models.

Every subcommand has ``--help``; ``--json`` prints machine-readable output on stdout while
progress and messages go to stderr. A :class:`BlazeportError` ends the command with its one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from blazeport.backends import RUNTIMES
from blazeport.convert import convert
from blazeport.data import list_images, sample_image_path
from blazeport.detector import load
from blazeport.distill.loss_terms import TERMS as LOSS_TERMS  # the --loss help lists them; imports no torch
from blazeport.draw import draw_detections, save_rgb
from blazeport.errors import BlazeportError
from blazeport.evaluate import evaluate_against_teacher, evaluate_on_boxes, load_boxes
from blazeport.export import FORMATS, export
from blazeport.files import drawing_paths
from blazeport.loader import open_module
from blazeport.preprocess import MAX_PIXELS, ImageReadError, read_image, read_image_sized
from blazeport.profile import count_macs, count_params
from blazeport.specs import SPECS, WEIGHTS_DIR, get_spec
from blazeport.version import __version__

EXAMPLES = """examples:
  blazeport convert weights/face_detection_short_range.tflite
  blazeport detect                               # the bundled sample photo
  blazeport detect photos/ --out runs/detect --json
  blazeport detect img.jpg --backend tflite      # the original file in LiteRT
  blazeport export short_range --format onnx     # -> short_range.onnx, verified in onnxruntime
  blazeport export full_range_sparse --format tflite --fp16 --json
  blazeport detect img.jpg --model short_range.onnx --backend onnx
  blazeport eval --model full_range --boxes ../shared/data/faces-boxed/boxes.json
  blazeport distill --images ../shared/data/unlabeled --out runs/distill --epochs 30
  blazeport bench short_range full_range_sparse --threads 1,2 --e2e --json runs/bench.json
  blazeport models
"""


def positive_int(text: str) -> int:
    """argparse type for counts such as --threads: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_max_pixels(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help=f"skip (and count) images over N pixels, read from the file header before decoding "
                        f"(default {MAX_PIXELS:,})")


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_convert(args: argparse.Namespace) -> int:

    images = _read_images(args.images, args.max_pixels) if args.images else None
    spec = get_spec(args.spec) if args.spec else None
    report = convert(args.src, args.output, spec, images)
    if not report["written"]:
        print(f"nothing written: {report['output']} was left as it was", file=sys.stderr)
    if args.json:
        _print_json(report)
    else:
        a, r, d = report["max_abs_diff"], report["max_scaled_diff"], report["decoded_diff"]
        arrow = "->" if report["written"] else "-> (not written)"
        print(f"converted {report['source']} {arrow} {report['output']}  ({report['spec']}, {report['params']:,} params)")
        print(f"verified against LiteRT on {report['images']} real photos + {report['random_inputs']} random input:")
        print(f"  regressors      max |diff| {a['regressors']:.2e}   scaled {r['regressors']:.2e}")
        print(f"  classificators  max |diff| {a['classificators']:.2e}   scaled {r['classificators']:.2e}")
        print(f"  decoded         scores {d['scores']:.2e}   coordinates {d['coordinates']:.2e}")
        tol = report["tolerance"]
        verdict = "OK" if report["ok"] else "FAILED"
        print(f"{verdict}: raw |diff| <= {tol['abs']:g} + {tol['rel']:g}*|ref|, decoded and detections within {tol['abs']:g}"
              f"  ({report['seconds']:.1f} s)")
    return 0 if report["ok"] else 1


def cmd_detect(args: argparse.Namespace) -> int:

    arguments = args.images or [sample_image_path("astronaut")]
    paths = list_images(arguments)
    if not paths:
        raise BlazeportError(f"no images found in {' '.join(args.images)}")
    out_dir = Path(args.out) if args.out else None
    # every drawing's name is decided, and checked against the inputs, before any work
    drawings = drawing_paths(arguments, paths, out_dir) if out_dir else []
    if out_dir and out_dir.exists() and not out_dir.is_dir():
        raise BlazeportError(f"--out {out_dir}: is a file; give a folder for the drawings")
    detector = load(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold,
                              spec=args.spec)
    results, skipped = [], 0
    # one line per image is the progress in text mode; --json gets a bar on stderr instead
    verbose = not args.json and not args.quiet
    bar = tqdm(paths, desc="detect", unit="img", disable=verbose or args.quiet or len(paths) < 2, file=sys.stderr)
    t0 = time.perf_counter()
    for i, path in enumerate(bar):
        try:
            # a JPEG over 50 MP decodes reduced: sizes and pixels are reported in the file's own
            image, (w, h) = read_image_sized(path, max_pixels=args.max_pixels)
        except ImageReadError as exc:
            skipped += 1
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        dets = detector.detect(image)
        results.append({"image": str(path), "width": w, "height": h, "detections": [d.to_dict() for d in dets]})
        if out_dir:
            save_rgb(drawings[i], draw_detections(image, dets))
        if verbose:
            tqdm.write(f"{path}: {len(dets)} face(s)", file=sys.stdout)
            for d in dets:
                (x, y, bw, bh), _ = d.pixels(w, h)
                tqdm.write(f"  score {d.score:.3f}  box x={x:.0f} y={y:.0f} w={bw:.0f} h={bh:.0f} px", file=sys.stdout)
    elapsed = time.perf_counter() - t0
    if args.json:
        _print_json(results)
    if not args.quiet:
        where = f", drawings in {out_dir}" if out_dir else ""
        print(f"{len(results)} image(s), {sum(len(r['detections']) for r in results)} face(s), "
              f"{skipped} skipped, {elapsed:.2f} s ({args.model}, {args.backend}){where}", file=sys.stderr)
    return 1 if skipped else 0


def cmd_eval(args: argparse.Namespace) -> int:
    """COCO AP against a boxes file or a teacher; exit 1 when an image could not be read."""

    images = [Path(p) for p in args.images] if args.images else None
    if args.boxes:
        boxes = load_boxes(args.boxes)
        if images is None:
            images = [Path(args.boxes).parent / "images"]
            if not images[0].is_dir():
                raise BlazeportError(f"{images[0]} does not exist; pass --images DIR with the photos of {args.boxes}")
    elif images is None:
        raise BlazeportError("--teacher needs --images DIR (the photos to compare the two detectors on)")
    for p in images:
        if not p.exists():
            raise BlazeportError(f"{p}: no such file or folder")
    detector = load(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold)
    if args.boxes:
        result = evaluate_on_boxes(detector, images, boxes, progress=True, max_pixels=args.max_pixels)
        against = str(args.boxes)
        if result["images"] == 0:
            raise BlazeportError(f"none of the images in {' '.join(map(str, images))} has an entry in {args.boxes} "
                                 "(matched by file name)")
    else:
        teacher = load(args.teacher, backend=args.teacher_backend, threads=args.threads)
        result = evaluate_against_teacher(detector, teacher, images, progress=True, max_pixels=args.max_pixels)
        against = f"teacher {args.teacher} ({args.teacher_backend}, threshold {teacher.spec.score_threshold:g})"
        if result["images"] == 0:
            raise BlazeportError(f"no readable images in {' '.join(map(str, images))}")
    for msg in result.pop("messages"):
        if "no entry in the boxes file" not in msg:
            print(f"skipped: {msg}", file=sys.stderr)
    threshold = detector.spec.score_threshold if args.threshold is None else args.threshold
    report = {"model": str(args.model), "backend": args.backend, "threshold": threshold, "against": against, **result}
    if args.json:
        _print_json({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in report.items()})
    else:
        print(f"{args.model} ({args.backend}, threshold {threshold:g}) against {against}")
        keys = ["AP50", "AP", "AP75", "AR100", "found50", "images", "references", "predictions", "skipped"]
        print("".join(f"{k:>12}" for k in keys))
        print("".join(f"{report[k]:>12.3f}" if isinstance(report[k], float) else f"{report[k]:>12}" for k in keys))
    return 1 if result.get("unreadable") else 0


def cmd_distill(args: argparse.Namespace) -> int:
    from blazeport.distill.trainer import TrainConfig, train  # imports torch: only for this command

    cfg = TrainConfig(
        teacher=args.teacher, student=args.student, images=args.images, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, loss=args.loss, temperature=args.temperature, alpha=args.alpha,
        seed=args.seed, val_fraction=args.val_fraction, limit=args.limit, resume=args.resume, device=args.device,
        amp=not args.no_amp, threads=args.threads, progress=not args.json,
    )
    summary = train(cfg)
    if not summary:  # a non-zero DDP rank
        return 0
    if args.json:
        _print_json(summary)
    else:
        best = summary["best"]
        print(f"student {summary['student']} ({summary['params']:,} params, {summary['macs'] / 1e6:.1f} MMACs) <- "
              f"teacher {summary['teacher']}, loss {summary['loss']}")
        print(f"best epoch {summary['best_epoch']}: held-out AP50 vs teacher {best['val_AP50']:.3f}, AP {best['val_AP']:.3f}, "
              f"score MAE {best['val_mae_scores']:.4f}")
        print(f"weights: {Path(args.out) / 'student.safetensors'}   curves: {Path(args.out) / 'curves.png'}   "
              f"tensorboard --logdir {Path(args.out) / 'tensorboard'}")
    return 0


def _read_images(paths: list[str], max_pixels: int | None) -> list:

    images = []
    for p in list_images(paths):
        try:
            images.append(read_image(p, max_pixels=max_pixels))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if not images:
        raise BlazeportError(f"no readable images in {' '.join(paths)}")
    return images


def cmd_export(args: argparse.Namespace) -> int:

    images = _read_images(args.images, args.max_pixels) if args.images else None
    r = export(args.model, args.format, args.output, fp16=args.fp16, dynamic_batch=args.dynamic_batch, images=images)
    if not r["written"]:
        print(f"nothing written: {r['output']} was left as it was", file=sys.stderr)
    if args.json:
        _print_json(r)
        return 0 if r["ok"] else 1
    a, s, d, det = r["max_abs_diff"], r["max_scaled_diff"], r["decoded_diff"], r["detections"]
    batch = "dynamic batch" if r["input_shape"][0] == "batch" else "batch 1"
    opset = f", opset {r['opset']}" if r["opset"] else ""
    print(f"exported {r['spec']} ({r['source']}) -> {r['output']}  ({r['format']}{opset}, {r['layout']} input, {batch}, "
          f"{r['weights']} weights)")
    orig = f"   (original .tflite {r['original_size_bytes']:,} B)" if r.get("original_size_bytes") else ""
    print(f"  size {r['size_bytes']:,} B{orig}   export {r['seconds']:.1f} s   verify {r['verify_seconds']:.1f} s")
    print(f"verified in {r['runtime']} against PyTorch on {r['images']} real photos + {r['random_inputs']} random input:")
    print(f"  regressors      max |diff| {a['regressors']:.2e}   scaled {s['regressors']:.2e}")
    print(f"  classificators  max |diff| {a['classificators']:.2e}   scaled {s['classificators']:.2e}")
    print(f"  decoded         scores {d['scores']:.2e}   coordinates {d['coordinates']:.2e}")
    same = "same count" if det["same_count"] else "COUNT DIFFERS"
    print(f"  detections      {det['faces_checked']} vs {det['faces']} faces ({same}); worst coordinate "
          f"{det['max_coordinate_diff']:.2e}, score {det['max_score_diff']:.2e}")
    print(f"ops {r['format']:<7} {', '.join(f'{k} {v}' for k, v in r['op_counts'].items())}")
    if r["original_op_counts"]:
        print(f"ops original {', '.join(f'{k} {v}' for k, v in r['original_op_counts'].items())}  ({Path(r['original']).name})")
    tol = r["tolerance"]
    if r["gated"]:
        verdict = "OK" if r["ok"] else "FAILED"
        print(f"{verdict}: raw |diff| <= {tol['abs']:g} + {tol['rel']:g}*|ref|, decoded and detections within {tol['abs']:g}")
    else:
        print(f"{'OK' if r['ok'] else 'FAILED'}: float16 weights, differences reported, not gated "
              f"(the float32 gate {'would pass' if r['passes_gate'] else 'would not pass'})")
    return 0 if r["ok"] else 1


def cmd_models(args: argparse.Namespace) -> int:
    from blazeport.models import STUDENTS, build_student  # imports torch: only for this command

    rows = []
    for spec in SPECS.values():
        weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
        if weights.is_file() or spec.tflite:  # the original is converted on load when not converted yet
            module = open_module(weights if weights.is_file() else WEIGHTS_DIR / spec.tflite, spec)[0]
        else:
            module = build_student(spec.architecture)
        rows.append({
            "name": spec.name, "kind": "spec", "aliases": list(spec.aliases), "input": spec.input_size,
            "anchors": spec.num_anchors, "params": count_params(module), "macs": count_macs(module, spec.input_size),
            "family": spec.family, "score_threshold": spec.score_threshold, "source": spec.tflite, "sha256": spec.sha256,
            "teacher": spec.teacher, "converted": weights.is_file(), "description": spec.description,
        })
    for name, cfg in STUDENTS.items():
        module = build_student(name)
        rows.append({"name": name, "kind": "student", "input": cfg.input_size, "params": count_params(module),
                     "macs": count_macs(module, cfg.input_size), "family": module.family,
                     "description": "student architecture for `blazeport distill --student`"})
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':<26}{'input':>6}{'anchors':>9}{'params':>10}{'MMACs':>8}  {'family':<10}{'weights':<9}source")
    for r in rows:
        if r["kind"] == "spec":
            source = f"{r['source']}  sha256 {r['sha256'][:12]}…" if r["source"] else "distilled (blazeport distill)"
            print(f"{r['name']:<26}{r['input']:>6}{r['anchors']:>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  "
                  f"{r['family']:<10}{'yes' if r['converted'] else 'no':<9}{source}")
    print("\nstudent architectures (blazeport distill --student NAME):")
    for r in rows:
        if r["kind"] == "student":
            print(f"{r['name']:<26}{r['input']:>6}{'':>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  {r['family']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="blazeport", description=__doc__.split("\n")[0], epilog=EXAMPLES, formatter_class=fmt)

    p.add_argument("--version", action="version", version=f"blazeport {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a .tflite to PyTorch safetensors and verify it against LiteRT",
                       description="Map every weight of a BlazeFace .tflite onto the PyTorch module by walking the graph, "
                       "save safetensors, then compare with LiteRT on real photos and a random input.", formatter_class=fmt)
    c.add_argument("src", help="original .tflite file (e.g. weights/face_detection_short_range.tflite)")
    c.add_argument("-o", "--output", help="output .safetensors (default: weights/SPEC.safetensors)")
    c.add_argument("--spec", help="model spec to use when the file is not a known original")
    c.add_argument("--images", nargs="+", help="photos or folders to verify on (default: 5 photos bundled with scikit-image)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(c)
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("detect", help="detect faces in images and draw them",
                       description="Run the detection pipeline (letterbox, model, decode, weighted NMS) on images. "
                       "With no IMAGE, uses a real photo bundled with scikit-image.", formatter_class=fmt)
    d.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    d.add_argument("--model", default="short_range", help="spec name, .safetensors, .tflite or .onnx (default: short_range)")
    d.add_argument("--backend", default="torch", choices=tuple(RUNTIMES),
                   help="runtime (default: torch); a .onnx model runs on onnx")
    d.add_argument("--spec", help="spec of a .onnx/.tflite file that does not carry one (files from `blazeport export` do)")
    d.add_argument("--out", help="folder for copies of the images with detections drawn")
    d.add_argument("--threshold", type=float, help="score threshold (default: the spec's)")
    d.add_argument("--threads", type=positive_int, help="CPU threads for the backend")
    d.add_argument("--json", action="store_true", help="print detections as JSON (normalized coordinates)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    add_max_pixels(d)
    d.set_defaults(func=cmd_detect)

    e = sub.add_parser("eval", help="COCO AP of a model against face boxes or a teacher model",
                       description="Average precision (pycocotools: AP50, AP at IoU 0.50:0.95, AP75, AR100) of a model's "
                       "detections, against hand-drawn boxes (--boxes, a boxes.json matched to images by file name) or "
                       "against a teacher model's detections (--teacher). Images without an entry and unreadable images "
                       "are skipped and counted; the exit status is 1 when an image could not be read. The default score "
                       "threshold is the spec's, so the detector is scored as it ships; COCO practice ranks detections "
                       "down to a low threshold (e.g. --threshold 0.1), which gives a fuller precision-recall curve.",
                       formatter_class=fmt)
    e.add_argument("--model", default="short_range", help="spec name, .safetensors or .tflite (default: short_range)")
    e.add_argument("--backend", default="torch", choices=tuple(RUNTIMES), help="runtime (default: torch)")
    e.add_argument("--images", nargs="+", metavar="DIR",
                   help="image folders or files (default with --boxes: the boxes file's folder + /images)")
    refs = e.add_mutually_exclusive_group(required=True)
    refs.add_argument("--boxes", help="reference boxes: JSON {file: {width, height, boxes_xywh: [[left, top, w, h], ...]}}")
    refs.add_argument("--teacher", help="reference model (spec name or file): its detections are the references")
    e.add_argument("--teacher-backend", default="torch", choices=tuple(RUNTIMES),
                   help="runtime of the teacher, which uses its spec's threshold (default: torch)")
    e.add_argument("--threshold", type=float, help="score threshold of the evaluated model (default: the spec's)")
    e.add_argument("--threads", type=positive_int, help="CPU threads for the backends")
    e.add_argument("--json", action="store_true", help="print the result as JSON (nan as null)")
    add_max_pixels(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("distill", help="distill a converted original into a student on unlabeled images",
                       description="Train a student to reproduce a teacher's outputs on unlabeled photos (the teacher's "
                       "outputs are the labels). Checks the teacher against its .tflite first; writes checkpoints, "
                       "TensorBoard logs, curves.png, metrics.json, summary.json and student.safetensors to --out.",
                       formatter_class=fmt)
    t.add_argument("--teacher", default="short_range", help="converted original to distill (default: short_range)")
    t.add_argument("--student", default="resnet", help="student architecture (see `blazeport models`; default: resnet)")
    t.add_argument("--images", nargs="+", required=True, help="folders (searched recursively) or files of unlabeled photos")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--loss", default="recipe",
                   help=f"'+'-joined terms with optional weights: {', '.join(LOSS_TERMS)} (e.g. recipe+mgd=0.5; default: "
                   "recipe)")
    t.add_argument("--temperature", type=float, default=2.0, help="KD temperature T (default 2)")
    t.add_argument("--alpha", type=float, default=0.6, help="recipe's KL share against the score loss (default 0.6)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of the images (by file-name hash)")
    t.add_argument("--limit", type=int, help="use at most this many images (smoke runs)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    t.add_argument("--threads", type=positive_int, help="CPU threads")
    t.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")
    t.set_defaults(func=cmd_distill)


    x = sub.add_parser("export", help="export a model to ONNX or TFLite and verify the written file",
                       description="Export a spec's converted weights (weights/NAME.safetensors) or a .safetensors from "
                       "`blazeport convert` to ONNX (onnxruntime) or TFLite (LiteRT; needs the [export] extra). Input is "
                       "NHWC float32 like Google's .tflite; the spec is stored in the file's metadata. The written file is "
                       "then run on real photos and compared with PyTorch: raw outputs (the conversion gate for float32) "
                       "and detections after decode + NMS. Prints size, export time, worst differences and op counts "
                       "next to the original .tflite's.", formatter_class=fmt)
    x.add_argument("model", metavar="MODEL",
                   help="spec name (short_range, back, full_range, full_range_sparse), a .safetensors or an original .tflite")
    x.add_argument("--format", required=True, choices=tuple(FORMATS), help="file format")
    x.add_argument("-o", "--output", help="output file (default: NAME[_fp16].onnx|.tflite in the current folder)")
    x.add_argument("--fp16", action="store_true", help="float16 weights (compute stays float32); differences reported, not gated")
    x.add_argument("--dynamic-batch", action="store_true", help="ONNX only: a dynamic batch dimension (default: batch 1)")
    x.add_argument("--images", nargs="+", help="photos or folders to verify on (default: 5 photos bundled with scikit-image)")
    x.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(x)
    x.set_defaults(func=cmd_export)

    from blazeport.bench.cli import add_bench_parser

    add_bench_parser(sub, fmt)

    m = sub.add_parser("models", help="list the model specs", description="List known model specs.", formatter_class=fmt)
    m.add_argument("--json", action="store_true", help="print as JSON")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BlazeportError as exc:
        print(f"blazeport {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blazeport {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
