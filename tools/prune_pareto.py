"""Build the pruning Pareto table: prune a sparsity-trained student at several ratios, measure each
before and after fine-tuning on the test split, and time them all in one bench run.

    python tools/prune_pareto.py runs/prune/resnet_sparse/student.safetensors --student resnet \\
        --teacher short_range --images ../shared/data/unlabeled --ratios 0.25,0.5,0.75 --epochs 10

Every step is a plain ``blazeport`` command (printed as it runs; a finished step is reused):
``blazeport prune`` per ratio, ``blazeport distill --init`` to fine-tune each pruned file with the
same data, split and seed as the base run, and one ``blazeport bench`` of every file in LiteRT at 1
and 2 threads beside the teacher's original, so the latency ratios come from the same run. AP50 /
AP against the teacher are on the *test* split (it chose nothing: the fine-tuning runs pick their
epoch on the validation split); the pruned files before fine-tuning are measured on that same
test split here. Writes ``--table`` (JSON), ``--plot`` (PNG) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import date
from pathlib import Path

import torch
from matplotlib.figure import Figure
from zoo import run  # tools/zoo.py: runs a blazeport command line with this interpreter

from blazeport.distill.trainer import Data, Teacher, TrainConfig
from blazeport.distill.validation import validate
from blazeport.files import write_atomic
from blazeport.modelfiles.weights import load_safetensors


def test_split_ap(path: Path, teacher: Teacher, data: Data) -> dict[str, float]:
    """AP50 / AP of a student file against the teacher on the distillation test split."""
    module, _ = load_safetensors(path)
    with torch.no_grad():
        m = validate(module, teacher.module, data.test_batches, teacher.spec, teacher.anchors, prefix="test_")
    return {"test_AP50": m["test_AP50"], "test_AP": m["test_AP"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="the sparsity-trained student (.safetensors)")
    ap.add_argument("--student", default="resnet", help="its --student (for distill --init)")
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("runs/pareto"))
    ap.add_argument("--table", type=Path, default=Path("weights/pareto.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/pareto.png"))
    args = ap.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / "base.safetensors"  # bench labels a file by its name: one name per row
    shutil.copyfile(args.base, base)

    commands, rows = [], []
    for r in ratios:
        tag = f"p{round(r * 100)}"
        pruned, ft = args.out / f"{tag}_pruned.safetensors", args.out / tag
        cmd = ["blazeport", "prune", str(base), "--ratio", str(r), "-o", str(pruned), "--json"]
        commands.append(shlex.join(cmd[:-1]))
        if not pruned.is_file():
            run(cmd)
        cmd = ["blazeport", "distill", "--init", str(pruned), "--student", args.student, "--teacher", args.teacher,
               "--images", *args.images, "--out", str(ft), "--epochs", str(args.epochs), "--lr", str(args.lr),
               "--threads", str(args.threads), "--json"]
        commands.append(shlex.join(cmd[:-1]))
        if not (ft / "summary.json").is_file():
            run(cmd + (["--resume"] if (ft / "last.pt").is_file() else []))
        shutil.copyfile(ft / "student.safetensors", args.out / f"{tag}_finetuned.safetensors")
        rows.append((r, tag, pruned, json.loads((ft / "summary.json").read_text())))

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(teacher=args.teacher, images=args.images)  # the distill defaults: the same split and seed
    teacher = Teacher.load(cfg.teacher, torch.device("cpu"))
    data = Data.load(cfg, teacher.spec.input_size, torch.device("cpu"))

    bench_json = args.out / "bench.json"
    files = [base, *(args.out / f"{tag}_finetuned.safetensors" for _, tag, _, _ in rows)]
    bench = ["blazeport", "bench", *map(str, files), "--backend", "tflite", "--threads", "1,2", "--runs", str(args.runs),
             "--warmup", "30", "--rounds", "3", "--json", str(bench_json)]
    run(bench)
    results = [x for x in json.loads(bench_json.read_text())["results"] if x["mode"] == "model"]

    def latency(stem: str) -> dict[str, dict[int, float]]:
        mine = [x for x in results if x["model"] == stem and x["backend"] == "tflite"]
        return {"litert_ms": {x["threads"]: x["stats"]["p50"] for x in mine},
                "litert_ratio": {x["threads"]: x["ratios"]["vs_original"] for x in mine}}

    base_module, _ = load_safetensors(base)
    from blazeport.modelfiles.counting import count_macs, count_params

    table = [{"ratio": 0.0, "params": count_params(base_module), "macs": count_macs(base_module, teacher.spec.input_size),
              **latency(base.stem), "before": test_split_ap(base, teacher, data), "after": None}]
    for r, tag, pruned, s in rows:
        test = s.get("test") or {}
        table.append({"ratio": r, "params": s["params"], "macs": s["macs"], **latency(f"{tag}_finetuned"),
                      "before": test_split_ap(pruned, teacher, data),
                      "after": {"test_AP50": test.get("test_AP50"), "test_AP": test.get("test_AP")},
                      "val_AP50": s["best"]["val_AP50"], "best_epoch": s["best_epoch"], "epochs": s["epochs"]})
    doc = {"measured": str(date.today()), "teacher": args.teacher, "base": str(args.base), "student": args.student,
           "test_images": len(data.test_set), "commands": commands, "bench_command": shlex.join(bench), "rows": table}
    args.table.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.table, (json.dumps(doc, indent=1) + "\n").encode())
    plot(doc, args.plot)
    print(markdown(doc))
    return 0


def plot(doc: dict, path: Path) -> None:
    """Test AP50 against LiteRT latency (x the teacher's original, 1 thread), before and after fine-tuning."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    rows = doc["rows"]
    x = [r["litert_ratio"][1] for r in rows]
    ax.plot(x, [r["after"]["test_AP50"] if r["after"] else r["before"]["test_AP50"] for r in rows], "o-",
            label="fine-tuned (base: as trained)")
    ax.plot(x[1:], [r["before"]["test_AP50"] for r in rows[1:]], "x--", label="pruned, before fine-tuning")
    for r, xi in zip(rows, x, strict=True):
        ax.annotate(f"{r['ratio']:g}", (xi, r["after"]["test_AP50"] if r["after"] else r["before"]["test_AP50"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(0.6, color="grey", lw=0.8, ls=":")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"LiteRT latency, x the original {doc['teacher']} (1 thread)")
    ax.set_ylabel("test AP50 against the teacher")
    ax.set_title(f"{doc['student']} student pruned by BN |gamma| (labels: prune ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(doc: dict) -> str:
    lines = ["| prune ratio | params | MMACs | LiteRT 1 thread (x teacher) | 2 threads (x teacher) "
             "| test AP50 / AP before fine-tuning | after fine-tuning |", "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lat = {int(k): v for k, v in r["litert_ms"].items()}
        rr = {int(k): v for k, v in r["litert_ratio"].items()}
        cell = [f"{lat[t]:.2f} ms ({rr[t]:.2f}x)" if t in lat and t in rr else "-" for t in (1, 2)]
        b, a = r["before"], r["after"]
        after = f"{a['test_AP50']:.3f} / {a['test_AP']:.3f}" if a else "(the base)"
        lines.append(f"| {r['ratio']:g} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {cell[0]} | {cell[1]} | "
                     f"{b['test_AP50']:.3f} / {b['test_AP']:.3f} | {after} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
