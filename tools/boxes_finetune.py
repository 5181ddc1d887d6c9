#!/usr/bin/env python
"""A small measure of ``distill --boxes``: a student fine-tuned with and without hand-drawn boxes, scored against
hand-drawn boxes it never trained on, beside the teacher on the same boxes.

    python tools/boxes_finetune.py --boxed $DATA/faces-boxed --unlabeled $DATA/unlabeled/human_samples \\
        --out runs/boxes_finetune --epochs 10

``faces-boxed/boxes.json`` splits its 9 annotated photos into ``training`` (4 photos) and ``testing`` (5).
The run folder gets the training photos (each copied ``--copies`` times, so that a batch meets them: the
copies have the same bytes, so they share one split, and each copy gets the original's entry) beside the
unlabeled photos of ``--unlabeled``. Two runs of ``blazeport distill`` start from the shipped student
(``--init``) with the same seed, schedule and photos: one with the teacher alone, one with ``--boxes``.
Then ``blazeport eval --boxes``'s measure (:func:`blazeport.pipeline.evaluate.evaluate_on_boxes`, COCO AP at each
model's own threshold) on the ``testing`` photos, for the teacher, the shipped student and both
fine-tuned ones. Writes ``OUT/boxes_finetune.json`` and ``OUT/boxes_finetune.md``; ``--out`` must be a new
or empty folder (the tool fills it: photos, runs, report), and every file goes through write_atomic.

This is a short run on a handful of photos: a check that the boxes move the student in the right
direction, not a recipe's figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blazeport  # noqa: E402
from blazeport import files  # noqa: E402
from blazeport.pipeline.evaluate import evaluate_on_boxes  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402


def prepare(boxed: Path, unlabeled: Path, out: Path, copies: int) -> dict[str, Any]:
    """OUT/images (training photos x copies + unlabeled), OUT/train_boxes.json, OUT/test_images, OUT/test_boxes.json."""
    table = json.loads((boxed / "boxes.json").read_text())
    images, tests = out / "images", out / "test_images"
    train_boxes, test_boxes = {}, {}
    for name, entry in table.items():
        src = boxed / "images" / name
        if entry.get("split") == "testing":
            files.write_atomic(tests / name, src.read_bytes())
            test_boxes[name] = entry
            continue
        for k in range(copies):
            copy = f"{Path(name).stem}_c{k}{Path(name).suffix}"
            files.write_atomic(images / copy, src.read_bytes())
            train_boxes[copy] = entry
    for p in list_images([unlabeled]):
        files.write_atomic(images / f"u_{p.name}", p.read_bytes())
    files.write_atomic(out / "train_boxes.json", json.dumps(train_boxes).encode())
    files.write_atomic(out / "test_boxes.json", json.dumps(test_boxes).encode())
    return {"train_photos": len(train_boxes) // copies, "train_faces": sum(len(e["boxes_xywh"]) for e in train_boxes.values())
            // copies, "test_photos": len(test_boxes), "test_faces": sum(len(e["boxes_xywh"]) for e in test_boxes.values()),
            "unlabeled": len(list_images([unlabeled]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxed", type=Path, required=True, help="the faces-boxed folder (images/ and boxes.json)")
    ap.add_argument("--unlabeled", type=Path, required=True, help="unlabeled photos trained on beside them")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from blazeport.distill.trainer import TrainConfig, train

    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {args.out} is not empty: this tool fills a folder of its own (photos, runs, report)")
    facts = prepare(args.boxed, args.unlabeled, args.out, args.copies)
    shipped = ROOT / "weights" / "short_range_resnet.safetensors"
    base = dict(teacher="short_range", student="resnet", images=[str(args.out / "images")], epochs=args.epochs,
                batch_size=16, lr=1e-3, warmup_epochs=0.5, seed=0, init=str(shipped), progress=False,
                threads=args.threads, test_fraction=0.0)
    runs = {"teacher only": args.out / "teacher_only", "with --boxes": args.out / "with_boxes"}
    summaries = {}
    for label, folder in runs.items():
        extra = {"boxes": str(args.out / "train_boxes.json"), "boxes_alpha": args.alpha} if "boxes" in label else {}
        summaries[label] = train(TrainConfig(out=str(folder), **base, **extra))
    models = {"short_range (teacher)": "short_range", "short_range_resnet (shipped)": str(shipped),
              **{f"fine-tuned, {k}": str(v / "student.safetensors") for k, v in runs.items()}}
    scores = {}
    for label, model in models.items():
        r = evaluate_on_boxes(blazeport.load(model), args.out / "test_images", args.out / "test_boxes.json")
        scores[label] = {k: r[k] for k in ("AP50", "AP", "found50", "references", "predictions")}
    report = {"facts": facts, "epochs": args.epochs, "copies": args.copies, "alpha": args.alpha, "scores": scores,
              "validation_AP50_vs_teacher": {k: s["best"].get("val_AP50") for k, s in summaries.items()},
              "train_labels_last_epoch": {k: s["final"].get("train_labels") for k, s in summaries.items()}}
    lines = ["| model | faces found at IoU 0.5 | detections | AP50 | AP |", "|---|---|---|---|---|"]
    for label, r in scores.items():
        lines.append(f"| {label} | {r['found50']} of {r['references']} | {r['predictions']} | {r['AP50']:.3f} | {r['AP']:.3f} |")
    files.write_atomic(args.out / "boxes_finetune.json", json.dumps(report, indent=2).encode())
    files.write_atomic(args.out / "boxes_finetune.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    print(json.dumps({k: report[k] for k in ("facts", "validation_AP50_vs_teacher", "train_labels_last_epoch")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
