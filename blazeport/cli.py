"""``blazeport`` console command: convert, detect, models.

Every subcommand has ``--help``; ``--json`` prints machine-readable output on stdout while
progress and messages go to stderr. A :class:`BlazeportError` ends the command with its one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from blazeport.errors import BlazeportError

EXAMPLES = """examples:
  blazeport convert weights/face_detection_short_range.tflite
  blazeport detect                               # the bundled sample photo
  blazeport detect photos/ --out runs/detect --json
  blazeport detect img.jpg --backend tflite      # the original file in LiteRT
  blazeport models
"""


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_convert(args: argparse.Namespace) -> int:
    from blazeport.convert import convert
    from blazeport.data import list_images
    from blazeport.preprocess import ImageReadError, read_image
    from blazeport.specs import get_spec

    images = None
    if args.images:
        images = []
        for p in list_images(args.images):
            try:
                images.append(read_image(p))
            except ImageReadError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
        if not images:
            raise BlazeportError(f"no readable images in {' '.join(args.images)}")
    spec = get_spec(args.spec) if args.spec else None
    report = convert(args.src, args.output, spec, images)
    if args.json:
        _print_json(report)
    else:
        a, r, d = report["max_abs_diff"], report["max_scaled_diff"], report["decoded_diff"]
        print(f"converted {report['source']} -> {report['output']}  ({report['spec']}, {report['params']:,} params)")
        print(f"verified against LiteRT on {report['images']} real photos + {report['random_inputs']} random input:")
        print(f"  regressors      max |diff| {a['regressors']:.2e}   scaled {r['regressors']:.2e}")
        print(f"  classificators  max |diff| {a['classificators']:.2e}   scaled {r['classificators']:.2e}")
        print(f"  decoded         scores {d['scores']:.2e}   coordinates {d['coordinates']:.2e}")
        tol = report["tolerance"]
        verdict = "OK" if report["ok"] else "FAILED"
        print(f"{verdict}: raw |diff| <= {tol['abs']:g} + {tol['rel']:g}*|ref|, decoded within {tol['abs']:g}"
              f"  ({report['seconds']:.1f} s)")
    return 0 if report["ok"] else 1


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import blazeport
    from blazeport.data import list_images, sample_image_path
    from blazeport.draw import draw_detections, save_rgb
    from blazeport.preprocess import ImageReadError, read_image

    paths = list_images(args.images) if args.images else [sample_image_path("astronaut")]
    if not paths:
        raise BlazeportError(f"no images found in {' '.join(args.images)}")
    detector = blazeport.load(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], 0
    # one line per image is the progress in text mode; --json gets a bar on stderr instead
    verbose = not args.json and not args.quiet
    bar = tqdm(paths, desc="detect", unit="img", disable=verbose or args.quiet or len(paths) < 2, file=sys.stderr)
    t0 = time.perf_counter()
    for path in bar:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            skipped += 1
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        dets = detector.detect(image)
        h, w = image.shape[:2]
        results.append({"image": str(path), "width": w, "height": h, "detections": [d.to_dict() for d in dets]})
        if out_dir:
            save_rgb(str(out_dir / f"{Path(path).stem}.jpg"), draw_detections(image, dets))
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


def cmd_models(args: argparse.Namespace) -> int:
    from blazeport.convert import load_safetensors, load_tflite
    from blazeport.detector import WEIGHTS_DIR
    from blazeport.profile import count_macs, count_params
    from blazeport.specs import SPECS

    rows = []
    for spec in SPECS.values():
        weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
        module = load_safetensors(weights)[0] if weights.is_file() else load_tflite(WEIGHTS_DIR / spec.tflite)[0]
        rows.append({
            "name": spec.name,
            "aliases": list(spec.aliases),
            "input": spec.input_size,
            "anchors": spec.num_anchors,
            "params": count_params(module),
            "macs": count_macs(module, spec.input_size),
            "family": spec.family,
            "score_threshold": spec.score_threshold,
            "source": spec.tflite,
            "sha256": spec.sha256,
            "converted": weights.is_file(),
            "description": spec.description,
        })
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':<19}{'input':>6}{'anchors':>9}{'params':>10}{'MMACs':>8}  {'family':<10}{'converted':<10}source")
    for r in rows:
        print(f"{r['name']:<19}{r['input']:>6}{r['anchors']:>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  "
              f"{r['family']:<10}{'yes' if r['converted'] else 'no':<10}{r['source']}  sha256 {r['sha256'][:12]}…")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="blazeport", description=__doc__.split("\n")[0], epilog=EXAMPLES, formatter_class=fmt)
    from blazeport import __version__

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
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("detect", help="detect faces in images and draw them",
                       description="Run the detection pipeline (letterbox, model, decode, weighted NMS) on images. "
                       "With no IMAGE, uses a real photo bundled with scikit-image.", formatter_class=fmt)
    d.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    d.add_argument("--model", default="short_range", help="spec name, .safetensors or .tflite (default: short_range)")
    d.add_argument("--backend", default="torch", choices=("torch", "tflite"), help="runtime (default: torch)")
    d.add_argument("--out", help="folder for copies of the images with detections drawn")
    d.add_argument("--threshold", type=float, help="score threshold (default: the spec's)")
    d.add_argument("--threads", type=int, help="CPU threads for the backend")
    d.add_argument("--json", action="store_true", help="print detections as JSON (normalized coordinates)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    d.set_defaults(func=cmd_detect)

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
