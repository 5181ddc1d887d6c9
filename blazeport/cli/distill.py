"""``blazeport distill``: train a student on unlabeled photos with a teacher's outputs as labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from blazeport.cli.common import positive_int, print_json
from blazeport.distill.augment import DEFAULT_AUGMENT, augment_help
from blazeport.distill.loss_terms import TERMS as LOSS_TERMS  # the --loss help lists them; imports no torch


def cmd_distill(args: argparse.Namespace) -> int:
    from blazeport.distill.trainer import TrainConfig, train  # imports torch: only for this command

    cfg = TrainConfig(
        teacher=args.teacher, student=args.student, images=args.images, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, loss=args.loss, temperature=args.temperature, alpha=args.alpha,
        seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        limit=args.limit, resume=args.resume, device=args.device,
        amp=not args.no_amp, threads=args.threads, progress=not args.json, init=args.init, zoom=args.zoom, augment=args.augment,
        sparsity=args.sparsity, workers=args.workers, cache_dir=args.cache_dir, memory_cache_mb=args.memory_cache_mb,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        keep_every=args.keep_every, boxes=args.boxes, boxes_alpha=args.boxes_alpha,
    )
    summary = train(cfg)
    if not summary:  # a non-zero DDP rank
        return 0
    if args.json:
        print_json(summary)
    else:
        best = summary["best"]
        print(f"student {summary['student']} ({summary['params']:,} params, {summary['macs'] / 1e6:.1f} MMACs) <- "
              f"teacher {summary['teacher']}, loss {summary['loss']}")
        print(f"best epoch {summary['best_epoch']} (chosen on validation): AP50 vs teacher {best['val_AP50']:.3f}, "
              f"AP {best['val_AP']:.3f}, score MAE {best['val_mae_scores']:.4f}")
        test = summary["test"]
        print(f"test ({summary['images']['test']} images, never chose anything): AP50 vs teacher {test['test_AP50']:.3f}, "
              f"AP {test['test_AP']:.3f}, score MAE {test['test_mae_scores']:.4f}" if test else
              "test: none (--test-fraction left no test images)")
        if test and test.get("test_breakdown"):
            bands = test["test_breakdown"]["by_face_width"]
            print("test AP50 by the teacher face's width / input width: " + ", ".join(
                f"{k.replace('_', ' ').replace('pct', '%')} {v['AP50']:.3f} ({v['references']} faces)"
                for k, v in bands.items() if v["references"]))
        print(f"weights: {Path(args.out) / 'student.safetensors'}   curves: {Path(args.out) / 'curves.png'}   "
              f"tensorboard --logdir {Path(args.out) / 'tensorboard'}")
    return 0


def _zoom(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX such as 0.5,1.5, got {text!r}") from None
    return lo, hi


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``distill`` subcommand's arguments."""
    p = sub.add_parser("distill", help="distill a converted original into a student on unlabeled images",
                       description="Train a student to reproduce a teacher's outputs on unlabeled photos (the teacher's "
                       "outputs are the labels). Checks the teacher against its .tflite first; writes checkpoints, "
                       "TensorBoard logs, curves.png, metrics.json, summary.json and student.safetensors to --out.",
                       formatter_class=fmt)
    p.add_argument("--teacher", default="short_range", help="converted original to distill (default: short_range)")
    p.add_argument("--student", default="resnet",
                   help="student: a registered name (resnet, resnet_slim, resnet_large, mobilenet, mobilenet_slim, "
                   "mobilenet_large; see `blazeport models`), timm:NAME[,key=value...] (needs timm), or your own "
                   "package.module:factory[,key=value...] returning a backbone (a list of feature maps) or a full "
                   "detector (default: resnet)")
    p.add_argument("--images", nargs="+", required=True,
                   help="folders (searched recursively) or files of unlabeled photos, or WebDataset tar shards "
                   "('shards/{000..099}.tar', quoted; each DDP rank reads its own shards)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader processes that decode and augment photos while the model trains (default 0: in the "
                   "training process). Samples do not depend on it for folders; for shards it sets the read order")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep each downscaled photo as a .npy file here (keyed by path, mtime and size; never beside "
                   "your photos): later epochs and runs skip the JPEG decode")
    p.add_argument("--memory-cache-mb", type=float, default=1024.0, metavar="MB",
                   help="keep downscaled photos in memory up to this many MB (split between workers; default 1024; "
                   "0: decode every time). Memory stays bounded however many photos there are")
    p.add_argument("--out", required=True,
                   help="run folder; one run owns it at a time (OUT/.lock): another run into it is refused, and a "
                   "lock left by a process that has ended is taken over")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--loss", default="recipe",
                   help=f"'+'-joined terms with optional weights: {', '.join(LOSS_TERMS)} (e.g. recipe+mgd=0.5; default: "
                   "recipe)")
    p.add_argument("--temperature", type=float, default=2.0, help="KD temperature T (default 2)")
    p.add_argument("--alpha", type=float, default=0.6, help="recipe's KL share against the score loss (default 0.6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share of the images (chooses best.pt; default 0.1). The split is by a sha1 of each "
                   "photo's bytes, so a copy under another name always lands in the same split as its original; a "
                   "resumed run keeps the rule it started with (runs from before this rule: by file-name hash)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="test share (by the same hash of each photo's bytes; never chooses anything, measured once at "
                   "the end; default 0.1)")
    p.add_argument("--limit", type=int, help="use at most this many images (smoke runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from last.pt, exactly (from inside an epoch too, if last.pt was "
                   "written there)")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also write last.pt after every N-th optimizer step, inside epochs (default: at epoch ends "
                   "only); --resume then continues from that step exactly")
    p.add_argument("--checkpoint-minutes", type=float, metavar="M",
                   help="also write last.pt inside an epoch once M minutes have passed since the last checkpoint "
                   "(with --checkpoint-every: whichever comes first)")
    p.add_argument("--keep-every", type=int, metavar="N",
                   help="also keep the student of every N-th epoch as OUT/epochs/student_eNNNN.safetensors (a file "
                   "`blazeport eval` and `detect` take), to measure on your own held-out photos where more epochs stop "
                   "helping; best.pt still chooses student.safetensors")
    p.add_argument("--init", metavar="STUDENT.safetensors",
                   help="start from this student's weights (same --student and --teacher): fine-tune a shipped or pruned one")
    p.add_argument("--boxes", metavar="FILE",
                   help="hand-drawn faces for some of the photos (blazeport's boxes.json, matched by file name, or COCO "
                   "annotations; keypoints optional): a photo with an entry also learns from its boxes (an SSD loss, "
                   "weighted --boxes-alpha; the teacher's terms 1 - alpha), a photo without one from the teacher alone")
    p.add_argument("--boxes-alpha", type=float, default=0.5, metavar="A",
                   help="a labelled photo's weight on its boxes against the teacher's outputs, as in Hinton's KD "
                   "(default 0.5)")
    p.add_argument("--zoom", type=_zoom, default=(0.6, 1.5), metavar="MIN,MAX",
                   help="augmentation zoom range (default 0.6,1.5; below 1 shrinks faces: 0.4,1.5 practises small faces)")
    p.add_argument("--augment", default=DEFAULT_AUGMENT, metavar="NAME=P,...",
                   help=f"probabilities of the augmentations, NAME=P joined by commas. {augment_help()}. 'none' turns "
                   f"them all off; zoom, shift, flip, colour and blur (always on) are labelled after the change "
                   f"(default: {DEFAULT_AUGMENT})")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="SR",
                   help="network slimming: L1 on BatchNorm scale factors (about 1e-4; default 0, off), so that "
                   "`blazeport prune` can remove channels afterwards; TensorBoard logs the |gamma| distribution")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--threads", type=positive_int, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")
    p.set_defaults(func=cmd_distill)
