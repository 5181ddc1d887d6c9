#!/usr/bin/env python
"""Ship a distilled student under a registered spec name: ``weights/NAME.safetensors`` + ``NAME.json``.

    python tools/ship_student.py runs/fr_mobilenet full_range_sparse_mobilenet

The run's ``student.safetensors`` is rebuilt from its own file, checked to be the student of the
spec's teacher, and written again with the spec from ``blazeport.specs.SPECS`` (name and
description) and the run's summary; ``weights/NAME.json`` gets the run's ``summary.json`` and its
per-epoch history. The new file is written beside the old one and replaces it only after it
reloads with the spec and gives the run's outputs exactly. Add the spec to ``SPECS`` and run ``tools/make_anchors.py`` first.

Then ``weights/NAME.tflite``, the export a core install (no torch) runs by name, is exported again and
verified (``blazeport export``), and ``blazeport/bundled/SHA256SUMS`` is rewritten
(``tools/bundle_manifest.py``): a shipped student and its export never disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import blazeport.export
from blazeport.files import staged, write_atomic
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.specs import WEIGHTS_DIR, spec_named


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the distill run folder")
    ap.add_argument("name", help="the spec name in blazeport.specs.SPECS")
    ap.add_argument("--command", help="the command line that made the run, kept in NAME.json")
    ap.add_argument("--student", type=Path, metavar="FILE",
                    help="which of the run's students ships (default: RUN/student.safetensors, the epoch best.pt chose; "
                    "a kept epoch: RUN/epochs/student_eNNNN.safetensors, from distill --keep-every)")
    args = ap.parse_args(argv)

    spec = spec_named(args.name, detectors_only=True)
    student_file = args.student or args.run / "student.safetensors"
    if student_file.resolve().parent not in (args.run.resolve(), (args.run / "epochs").resolve()):
        ap.error(f"--student {student_file} is not a student of the run {args.run}")
    module, run_spec = load_safetensors(student_file)
    summary = json.loads((args.run / "summary.json").read_text())
    if (run_spec.teacher, run_spec.architecture, run_spec.family) != (spec.teacher, spec.architecture, spec.family):
        sys.exit(f"{args.run}: a {run_spec.architecture} student of {run_spec.teacher}, not what {spec.name} names")
    out = WEIGHTS_DIR / f"{spec.name}.safetensors"
    with staged(out) as stage:  # the shipped file is replaced only once the new one reloads identically
        save_safetensors(module, spec, stage.path, extra={
            "teacher": spec.teacher, "summary": json.dumps({k: summary[k] for k in ("best", "test", "loss", "epochs")})})
        again, again_spec = load_safetensors(stage.path)
        x = torch.rand(2, 3, spec.input_size, spec.input_size) * 2 - 1
        with torch.no_grad():
            for a, b in zip(module(x), again(x), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        if again_spec != spec:
            sys.exit(f"{stage.path}: reloads with another spec; {out} left as it was")
        stage.commit()
    history = json.loads((args.run / "metrics.json").read_text())
    extra = {"command": args.command} if args.command else {}
    if args.student:  # a kept epoch: summary's best/test figures are best.pt's epoch, not this file's
        extra["shipped_student"] = str(student_file.resolve().relative_to(args.run.resolve()))
    write_atomic(out.with_suffix(".json"), (json.dumps({**summary, **extra, "history": history}, indent=1) + "\n").encode())
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bundle_manifest

    # A bundled file is opened only if it matches SHA256SUMS, so the manifest learns the new student (verified
    # above) before the export opens it, and the export's file after.
    bundle_manifest.main([])
    report = blazeport.export.export(out, "tflite", out.with_suffix(".tflite"), overwrite=True)
    if not report["ok"]:
        sys.exit(f"{out.with_suffix('.tflite')}: the export failed verification; the previous export was kept, so it "
                 "does not match the new student: fix and run again")
    bundle_manifest.main([])
    print(f"{out} ({out.stat().st_size:,} bytes), {out.with_suffix('.json')} and {out.with_suffix('.tflite')}: "
          f"{spec.name}, test AP50 {(summary.get('test') or {}).get('test_AP50')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
