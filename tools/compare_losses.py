"""Distil the same student with several loss combinations and tabulate the results.

Every run uses the same teacher, student, images, seed, epochs and held-out split, so the table
compares losses and nothing else. Runs that already finished (summary.json present) are reused;
interrupted ones are resumed.

    python tools/compare_losses.py --images ../shared/data/unlabeled --out runs/compare --epochs 8

prints a Markdown table (and writes it to OUT/table.md, with the raw numbers in OUT/table.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blazeport.distill.config import TrainConfig
from blazeport.distill.trainer import train

LOSSES = {
    "recipe (kl 0.6 + bce 0.4 + box)": "recipe",
    "recipe, L1 scores": "kl=0.6+score_l1=0.4+box",
    "hinton + box": "hinton+box",
    "recipe + mgd": "recipe+mgd",
    "hard pseudo-labels": "hard",
    "raw outputs (no KL)": "score+box",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student", default="resnet")
    ap.add_argument("--only", nargs="*", help="run only these loss specs")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for label, loss in LOSSES.items():
        if args.only and loss not in args.only:
            continue
        run = out / loss.replace("=", "").replace("+", "_").replace(".", "")
        if not (run / "summary.json").exists():
            train(TrainConfig(teacher="short_range", student=args.student, images=args.images, out=str(run),
                              epochs=args.epochs, loss=loss, resume=(run / "last.pt").exists()))
        s = json.loads((run / "summary.json").read_text())
        rows.append({"label": label, "loss": loss, "best_epoch": s["best_epoch"], **{k: s["best"][k] for k in
                     ("val_AP50", "val_AP", "val_mae_scores", "val_mae_regressors")},
                     "images_per_second": s["train_images_per_second"]})
    lines = [f"| loss | `--loss` | held-out AP50 vs teacher | AP | score MAE | regressor MAE | best epoch (of {args.epochs}) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | `{r['loss']}` | {r['val_AP50']:.3f} | {r['val_AP']:.3f} | {r['val_mae_scores']:.4f} | "
                     f"{r['val_mae_regressors']:.2f} | {r['best_epoch']} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
