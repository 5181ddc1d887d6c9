"""``blazeport models``: the specs and student architectures, with params and MACs.

With torch (``blazeport[torch]``) the counts come from the PyTorch modules and the student
architectures are listed; the core install counts the bundled ``.tflite`` graphs instead (the same
figures for a converted original: the conversion keeps every weight) and names the extra that
lists the architectures."""

from __future__ import annotations

import argparse
import json
from typing import Any

from blazeport.bench.counts import tflite_counts
from blazeport.cli.common import print_json
from blazeport.extras import installed, missing_extra
from blazeport.modelfiles.counting import count_macs, count_params
from blazeport.modelfiles.loader import open_module, runtime_file
from blazeport.specs import LANDMARK_SPECS, SPECS, WEIGHTS_DIR, LandmarkSpec, ModelSpec, spec_named


def _counts(spec: ModelSpec | LandmarkSpec, torch: bool) -> tuple[int | None, int | None]:
    """(params, MACs) of a spec's bundled model: its PyTorch module with torch, else its .tflite graph."""
    weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
    if torch:
        if weights.is_file() or spec.tflite:  # the original is converted on load when not converted yet
            module = open_module(weights if weights.is_file() else WEIGHTS_DIR / spec.tflite, spec)[0]
        else:
            from blazeport.models import build_student  # torch: only with the extra

            module = build_student(spec.architecture, spec_named(spec.teacher, detectors_only=True))
        return count_params(module), count_macs(module, spec.input_size)
    path = runtime_file(spec, ".tflite")
    return tflite_counts(path) if path is not None else (None, None)


def cmd_models(args: argparse.Namespace) -> int:
    torch = installed("torch")
    rows = []
    for spec in SPECS.values():
        weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
        params, macs = _counts(spec, torch)
        rows.append({
            "name": spec.name, "kind": "spec", "aliases": list(spec.aliases), "input": spec.input_size,
            "anchors": spec.num_anchors, "params": params, "macs": macs,
            "family": spec.family, "score_threshold": spec.score_threshold, "source": spec.tflite, "sha256": spec.sha256,
            "teacher": spec.teacher, "converted": weights.is_file(), "description": spec.description,
        })
    for spec in LANDMARK_SPECS.values():  # after detection: the face mesh and iris models
        weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
        params, macs = _counts(spec, torch)
        rows.append({
            "name": spec.name, "kind": "landmarks", "aliases": list(spec.aliases), "input": spec.input_size,
            "outputs": {name: n for name, n in spec.outputs}, "params": params,
            "macs": macs, "family": spec.family, "source": spec.tflite,
            "sha256": spec.sha256, "converted": weights.is_file(), "description": spec.description,
        })
    teacher = spec_named(args.teacher, detectors_only=True)
    for name, (family, _) in _registered(torch).items():
        from blazeport.models import build_student  # torch: only with the extra

        module = build_student(name, teacher)
        rows.append({"name": name, "kind": "student", "input": teacher.input_size, "teacher": teacher.name,
                     "params": count_params(module), "macs": count_macs(module, teacher.input_size),
                     "family": f"{family} ({module.family})" if module.family != family else family,
                     "description": "student architecture for `blazeport distill --student`"})
    zoo_file = WEIGHTS_DIR / "zoo.json"
    zoo = json.loads(zoo_file.read_text()) if zoo_file.is_file() else None
    if args.json:
        print_json({"models": rows, "zoo": zoo} if args.zoo else rows)
        return 0
    print(f"{'name':<29}{'input':>6}{'anchors':>9}{'params':>10}{'MMACs':>8}  {'family':<10}{'weights':<9}source")
    for r in rows:
        if r["kind"] == "spec":
            source = f"{r['source']}  sha256 {r['sha256'][:12]}…" if r["source"] else "distilled (blazeport distill)"
            print(f"{r['name']:<29}{r['input']:>6}{r['anchors']:>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  "
                  f"{r['family']:<10}{'yes' if r['converted'] else 'no':<9}{source}")
    for r in rows:
        if r["kind"] == "landmarks":
            outputs = " + ".join(f"{n} {k}" for k, n in r["outputs"].items())
            print(f"{r['name']:<29}{r['input']:>6}{'-':>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  "
                  f"{r['family']:<10}{'yes' if r['converted'] else 'no':<9}{r['source']}  sha256 {r['sha256'][:12]}…  "
                  f"(landmarks: {outputs})")
    print(f"\nstudent architectures for teacher {teacher.name} (blazeport distill --student NAME; also timm:NAME and "
          "package.module:factory):")
    if not torch:
        print("  " + missing_extra("torch", "listing them"))
    for r in rows:
        if r["kind"] == "student":
            print(f"{r['name']:<29}{r['input']:>6}{'':>9}{r['params']:>10,}{r['macs'] / 1e6:>8.1f}  {r['family']}")
    if zoo:
        print_zoo(zoo)
    return 0


def _registered(torch: bool) -> dict[str, tuple[str, int]]:
    if not torch:
        return {}
    from blazeport.models import REGISTERED  # torch: only with the extra

    return REGISTERED


def print_zoo(zoo: dict[str, Any]) -> None:
    """The student zoo (weights/zoo.json, written by tools/zoo.py): one schedule, one split, one bench run."""
    print(f"\nstudent zoo: distilled from {zoo['teacher']} with one schedule and split, measured {zoo['measured']} "
          "(tools/zoo.py); LiteRT model-only p50 as a ratio to the teacher's original, same run")
    print(f"{'student':<56}{'params':>9}{'MMACs':>7}{'1 thread':>10}{'2 threads':>11}{'test AP50':>11}{'test AP':>9}"
          f"{'img/s':>7}")
    for r in zoo["rows"]:
        ratio = {int(k): v for k, v in r["litert_ratio"].items()}
        test = (f"{r['test_AP50']:>11.3f}{r['test_AP']:>9.3f}" if r["test_AP50"] is not None else f"{'-':>11}{'-':>9}")
        print(f"{r['student']:<56}{r['params']:>9,}{r['macs'] / 1e6:>7.1f}{ratio.get(1, float('nan')):>9.2f}x"
              f"{ratio.get(2, float('nan')):>10.2f}x{test}{r['train_images_per_second']:>7.0f}")


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``models`` subcommand's arguments."""
    p = sub.add_parser("models", help="list the model specs", description="List known model specs.", formatter_class=fmt)
    p.add_argument("--teacher", default="short_range", help="size the student architectures for this teacher's head "
                   "(default: short_range)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--zoo", action="store_true", help="with --json: an object with the models and the student zoo table")
    p.set_defaults(func=cmd_models)
