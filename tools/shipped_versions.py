#!/usr/bin/env python
"""Every version of a shipped student that the repository's history holds, scored on the same folders.

    python tools/shipped_versions.py short_range_resnet \\
        --external dlib_voc=$DATA/faces-boxed/images packages=~/.cache/blazeport/package_images/photos

The shipping rule says a new student file ships only if it is not worse than the file it replaces on
every held-out source; this is the table that shows each replacement. It walks ``git log --follow`` of
``blazeport/bundled/weights/NAME.safetensors`` (and its earlier place, ``weights/``), keeps each distinct
file (by the sha256 of its tensors: a commit that moved the file or only re-wrote its header is folded into
the one before; a commit that went back to earlier weights is a row that says so), writes
each to a temporary folder and scores it with ``blazeport eval --teacher --by-size --json`` against its
teacher on every ``--external`` folder. ``--candidate FILE`` adds a file that is not shipped yet as the last
row. Prints a Markdown table (commit, date, subject, AP50 / AP per folder, AP50 of faces under 15% of
the input) and writes ``--json`` if given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors.numpy import load

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blazeport.files import write_atomic  # noqa: E402
from tools.source_holdout import named_folders  # noqa: E402

BUNDLED = "blazeport/bundled/weights"


def versions(name: str) -> list[dict[str, str]]:
    """Each distinct shipped file of ``name``, oldest first: commit, date, subject, path at that commit, sha256."""
    log = subprocess.run(["git", "log", "--follow", "--format=%h%x09%ad%x09%s", "--date=short", "--name-only", "--",
                          f"{BUNDLED}/{name}.safetensors"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    entries, current = [], None
    for line in log.splitlines():
        if "\t" in line:
            commit, date, subject = line.split("\t", 2)
            current = {"commit": commit, "date": date, "subject": subject}
        elif line.strip() and current is not None:
            entries.append({**current, "path": line.strip()})
            current = None
    shipped: list[dict[str, str]] = []
    first: dict[str, str] = {}  # weights digest -> the commit that first shipped them
    for e in reversed(entries):  # oldest first: a commit with the previous weights only moved or re-wrote them
        data = subprocess.run(["git", "show", f"{e['commit']}:{e['path']}"], cwd=ROOT, capture_output=True,
                              check=True).stdout
        digest = weights_digest(data)
        if shipped and shipped[-1]["weights_sha256"] == digest:
            continue
        restores = first.get(digest)  # a commit that went back to weights shipped before is a version of its own
        shipped.append({**e, "sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": digest,
                        **({"restores": restores} if restores else {})})
        first.setdefault(digest, e["commit"])
    return shipped


def weights_digest(data: bytes) -> str:
    """The sha256 of a safetensors file's tensors (names and bytes, sorted by name), not of its header: a
    commit that only re-wrote the header (key order, spec fields) shipped the same weights."""
    h = hashlib.sha256()
    for name, array in sorted(load(data).items()):
        h.update(name.encode() + b"\0" + array.tobytes())
    return h.hexdigest()


def score(model: Path, teacher: str, folder: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "blazeport.cli", "eval", "--model", str(model), "--teacher", teacher,
                           "--images", str(folder), "--by-size", "--json"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: an unreadable image was skipped and counted
        raise RuntimeError(f"eval of {model} on {folder} failed:\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout)
    small = r.get("breakdown", {}).get("by_face_width", {}).get("under_15pct", {})
    return {"AP50": r["AP50"], "AP": r["AP"], "faces": r["references"], "small_AP50": small.get("AP50"),
            "small_faces": small.get("references", 0)}


def _own_report(path: Path) -> bool:
    """Whether ``path`` is an earlier report of this tool (which ``--json`` may replace); any other existing
    file is left alone and the write refused."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and {"name", "teacher", "command", "rows"} <= set(old)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="a shipped student, e.g. short_range_resnet")
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--external", nargs="+", required=True, metavar="NAME=DIR")
    ap.add_argument("--candidate", type=Path, help="a student file not shipped yet: the last row")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    folders = named_folders(args.external, ap)
    if args.json and args.json.exists() and not _own_report(args.json):
        ap.error(f"--json {args.json}: that file exists and is not a report of this tool; choose another path")
    rows = versions(args.name)
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            path = Path(tmp) / f"{args.name}_{row['commit']}.safetensors"
            path.write_bytes(subprocess.run(["git", "show", f"{row['commit']}:{row['path']}"], cwd=ROOT,
                                            capture_output=True, check=True).stdout)
            row["scores"] = {label: score(path, args.teacher, f) for label, f in folders.items()}
        if args.candidate:
            rows.append({"commit": "candidate", "date": "", "subject": str(args.candidate), "path": str(args.candidate),
                         "sha256": hashlib.sha256(args.candidate.read_bytes()).hexdigest(),
                         "weights_sha256": weights_digest(args.candidate.read_bytes()),
                         "scores": {label: score(args.candidate, args.teacher, f) for label, f in folders.items()}})

    def cell(s: dict[str, Any]) -> str:
        small = "-" if s["small_AP50"] is None or s["small_AP50"] != s["small_AP50"] else f"{s['small_AP50']:.2f}"
        return f"{s['AP50']:.3f} / {s['AP']:.3f} (small {small})"

    print("| commit | date | what shipped | " + " | ".join(f"{k} ({rows[0]['scores'][k]['faces']} faces)"
                                                    for k in folders) + " |")
    print("|---|---|---|" + "---|" * len(folders))
    for row in rows:
        what = (f"restores `{row['restores']}`: " if row.get("restores") else "") + row["subject"][:90]
        print(f"| `{row['commit']}` | {row['date']} | {what} | "
              + " | ".join(cell(row["scores"][k]) for k in folders) + " |")
    if args.json:
        report = json.dumps({"name": args.name, "teacher": args.teacher, "command": " ".join(sys.argv),
                             "rows": rows}, indent=2).encode()
        write_atomic(args.json, report, replace=_own_report(args.json))  # never over a file this tool did not write
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
