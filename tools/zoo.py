"""Build the student zoo table: every row distilled with one schedule on one split, then benchmarked in one run.

    python tools/zoo.py --teacher short_range --images ../shared/data/unlabeled --epochs 60 --out runs/zoo \\
        resnet resnet_large mobilenet examples.mnv3_backbone:mnv3_small examples.efficientnet_lite_backbone:efficientnet_lite0

Each row is a plain ``blazeport distill`` command (the same data, split, seed and schedule for all;
a row whose run folder already holds ``summary.json`` is reused, one with ``last.pt`` resumed).
Then one ``blazeport bench`` run times every student's exported ``.tflite`` in LiteRT at 1 and 2
threads beside the teacher's original, so the latency ratios come from the same run. The table
(params, MACs, latency ratios, AP50 / AP against the teacher on the *test* split, which chose
nothing, the validation AP50 that chose the checkpoint, training images/s) is written to
``--table`` (default ``weights/zoo.json``, which ``blazeport models`` prints) and printed as
Markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

from blazeport.files import write_atomic


def run(cmd: list[str]) -> None:
    """Run a ``blazeport ...`` command line with this interpreter (no activated venv needed)."""
    print("$", shlex.join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "blazeport.cli", *cmd[1:]], check=True)


def distill_command(args: argparse.Namespace, student: str, out: Path) -> list[str]:
    cmd = ["blazeport", "distill", "--teacher", args.teacher, "--student", student, "--images", *args.images,
           "--out", str(out), "--epochs", str(args.epochs), "--threads", str(args.threads), "--json"]
    return cmd + (["--resume"] if (out / "last.pt").is_file() else [])


def folder_name(student: str) -> str:
    return student.replace(":", "-").replace(",", "_").replace("=", "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("students", nargs="+")
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/zoo"))
    ap.add_argument("--table", type=Path, default=Path("weights/zoo.json"))
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()

    rows, commands = [], []
    for student in args.students:
        out = args.out / args.teacher / folder_name(student)
        cmd = distill_command(args, student, out)
        commands.append(shlex.join([c for c in cmd if c not in ("--json", "--resume")]))
        if not (out / "summary.json").is_file():
            run(cmd)
        rows.append((student, out, json.loads((out / "summary.json").read_text())))

    bench_json = args.out / args.teacher / "bench.json"
    files = []
    for student, out, _ in rows:  # bench labels a file by its name: one name per row
        files.append(args.out / args.teacher / f"{folder_name(student)}.safetensors")
        shutil.copyfile(out / "student.safetensors", files[-1])
    bench = ["blazeport", "bench", *map(str, files), "--backend", "tflite", "--threads", "1,2", "--runs", str(args.runs),
             "--warmup", "30", "--rounds", "3", "--json", str(bench_json)]
    run(bench)
    results = [r for r in json.loads(bench_json.read_text())["results"] if r["mode"] == "model"]
    teacher_ms = {r["threads"]: r["stats"]["p50"] for r in results if r["backend"] == "tflite-original"}

    table = []
    for (student, _, s), f in zip(rows, files, strict=True):
        mine = [r for r in results if r["model"] == f.stem and r["backend"] == "tflite"]
        test = s.get("test") or {}
        table.append({
            "student": student, "teacher": args.teacher, "params": s["params"], "macs": s["macs"],
            "litert_ms": {r["threads"]: r["stats"]["p50"] for r in mine},
            "litert_ratio": {r["threads"]: r["ratios"]["vs_original"] for r in mine},
            "test_AP50": test.get("test_AP50"), "test_AP": test.get("test_AP"), "test_faces": test.get("test_faces"),
            "val_AP50": s["best"]["val_AP50"], "best_epoch": s["best_epoch"], "epochs": s["epochs"],
            "images": s["images"], "train_images_per_second": s["train_images_per_second"],
        })
    doc = {"measured": str(date.today()), "teacher": args.teacher, "teacher_litert_ms": teacher_ms,
           "distill_commands": commands, "bench_command": shlex.join(bench), "rows": table}
    args.table.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.table, (json.dumps(doc, indent=1) + "\n").encode())
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    lines = ["| student | params | MMACs | LiteRT 1 thread (x teacher) | 2 threads (x teacher) | test AP50 / AP "
             "| val AP50 (chose epoch) | train img/s |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ratio = r["litert_ratio"]
        lat = {int(k): v for k, v in r["litert_ms"].items()}
        rr = {int(k): v for k, v in ratio.items()}
        cell = [f"{lat[t]:.2f} ms ({rr[t]:.2f}x)" if t in lat and t in rr else "-" for t in (1, 2)]
        test = f"{r['test_AP50']:.3f} / {r['test_AP']:.3f}" if r["test_AP50"] is not None else "-"
        lines.append(f"| `{r['student']}` | {r['params']:,} | {r['macs'] / 1e6:.1f} | {cell[0]} | {cell[1]} | {test} | "
                     f"{r['val_AP50']:.3f} ({r['best_epoch']}/{r['epochs']}) | {r['train_images_per_second']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
