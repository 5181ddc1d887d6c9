#!/usr/bin/env python
"""Check that the blazeport wheel installs and detects the same faces on aarch64 Linux as on x86-64,
end to end, under qemu user-mode emulation on an x86-64 Debian machine.

    python tools/arm_check.py                                   # build a wheel, default install, 4 photos
    python tools/arm_check.py --wheel dist/blazeport-0.1.0-py3-none-any.whl --json arm.json
    python tools/arm_check.py --deps runtime-list --model weights/face_detection_short_range.tflite
    python tools/arm_check.py --install-deps                    # may run apt-get install qemu-user-static

What it does, and why each step is done this way:

1. ``qemu-aarch64-static`` (Debian's qemu-user-static) runs aarch64 binaries one process at a time; no
   binfmt_misc registration is needed or used. The tool runs ``apt-get`` only with ``--install-deps``.
2. A sysroot with Debian bookworm's arm64 CPython 3.11 (the version blazeport requires) and its shared
   libraries: the ``.deb`` files are fetched with a private apt state (its own sources list, lists and
   cache in a temporary folder), so the host's dpkg architectures and apt lists are left untouched, and
   unpacked with ``dpkg-deb -x``; no maintainer script runs. Built once (about a minute) into a user
   cache folder and reused. **The trap:** qemu 7.2 hands the guest the host's x86 ``/proc/cpuinfo``, and
   LiteRT and ONNX Runtime (pytorch/cpuinfo inside them) then segfault while allocating tensors or
   creating a session. ``-L SYSROOT`` serves ``SYSROOT/proc/cpuinfo`` first, so an ARM one is written
   there (Cortex-A72 cores).
3. A venv of the emulated python, and the wheel installed into it by pip running *under emulation*, so
   pip picks the ``manylinux_*_aarch64`` wheels a real ARM machine would get. ``--deps default`` (the
   default) is ``pip install WHEEL``: the wheel with its default dependencies, which is what the issue
   asks to work. A default dependency list that names torch is reported as the failure it is (the
   runtime path must not need torch), not worked around. ``--deps runtime-list`` installs the wheel with
   ``--no-deps`` plus an explicit list (``--runtime-deps``; versions constrained by the wheel's own
   Requires-Dist when it names them), to check the runtime path while the default list is still heavy.
   Only binary wheels are accepted (``--only-binary :all:``): building an sdist would make pip start a
   child interpreter, which qemu-user cannot exec without binfmt_misc.
4. ``blazeport detect PHOTOS --backend tflite --json --postprocess numpy`` through the venv's console
   script under emulation, and the same on x86-64: the same wheel installed with ``--no-deps`` into a
   temporary ``--target`` folder, run by the host python (``--x86-python``) whose environment supplies
   the dependencies. ``--postprocess numpy`` on both sides, so the numba extra (if the host has it) is
   not a difference between them; the detections are the same either way.
5. The comparison: the same photos, the same number of faces in each, and every score, box coordinate
   and keypoint within ``--tolerance`` (1e-4), faces paired by closeness. A table, the worst difference,
   and the exit status: 0 match, 1 mismatch, 2 setup failure (one message saying what failed).

Timings under emulation mean nothing (one inference is ~300 ms emulated against ~1 ms native); they are
printed and reported only to say how long the check takes. Network: apt (deb.debian.org) while building
the sysroot, PyPI during the emulated install step; nothing else.

This file is the command (the photos, the wheel's checks, the five steps in order, the report); the steps
live beside it: ``arm_sysroot`` (1, 2), ``arm_wheel`` (reading and building the wheel), ``arm_run`` (3, 4),
``arm_compare`` (5), and ``arm_proc`` (``SetupError`` and the subprocess helpers they share).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"  # as tests/conftest.py finds it
PHOTO_DIR = SHARED_DATA / "faces-boxed" / "images"
DEFAULT_PHOTO_COUNT = 4

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.arm_compare import TOLERANCE, Comparison, compare, format_table  # noqa: E402
from tools.arm_proc import SetupError, _run  # noqa: E402
from tools.arm_run import Guest, _clean_env, arm_install, detect_args, parse_detections, x86_install  # noqa: E402
from tools.arm_sysroot import DEFAULT_SYSROOT, QEMU, _host_cpus, build_sysroot, ensure_qemu  # noqa: E402
from tools.arm_wheel import build_wheel, requirement_name, wheel_metadata  # noqa: E402

# What `blazeport detect --backend tflite` imports once torch is unimportable (found by running it with
# sys.modules["torch"] = None and recording blazeport's third-party imports): numpy, cv2, ai_edge_litert,
# tflite + flatbuffers (the flatbuffer reader), tqdm.
DEFAULT_RUNTIME_DEPS = ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite", "flatbuffers", "tqdm")

EMULATION_NOTE = ("timings under emulation mean nothing (qemu translates every instruction; one inference is "
                  "~300 ms emulated against ~1 ms native): they say how long the check takes, not how fast ARM is")



# --------------------------------------------------------------------------------------------------
# the command


def default_photos(count: int = DEFAULT_PHOTO_COUNT) -> list[Path]:
    """The first ``count`` photos of ``../shared/data/faces-boxed/images`` (real photos, several faces)."""
    if not PHOTO_DIR.is_dir():
        raise SetupError(f"real photos not found at {PHOTO_DIR} (the shared data folder beside the checkout); "
                         "pass --photos FILE ...")
    photos = sorted(PHOTO_DIR.glob("*.jpg"))[:count]
    if not photos:
        raise SetupError(f"no .jpg photos in {PHOTO_DIR}; pass --photos FILE ...")
    return photos


def wheel_problems(model: str, mode: str, requires: Sequence[str], wheel_names: Sequence[str]) -> list[str]:
    """Why this wheel cannot be checked as asked, found before any install: a default dependency list that
    names torch (with ``--deps default``), or a spec-name ``--model`` while the wheel carries no model."""
    problems = []
    torch = [r for r in requires if requirement_name(r) == "torch"]
    if mode == "default" and torch:
        problems.append(f"the wheel's default dependencies include {torch[0]}: `pip install WHEEL` pulls torch, which "
                        "the runtime (tflite/onnx) path must not need; this is the packaging bug to fix (torch as the "
                        "optional extra blazeport[torch]). Meanwhile check the runtime path with --deps runtime-list")
    if Path(model).suffix not in (".tflite", ".onnx") and not any(n.endswith(".tflite") for n in wheel_names):
        problems.append(f"the wheel carries no .tflite model, so `--model {model}` cannot be found once installed "
                        "(models are not package data yet); pass --model PATH/face_detection_short_range.tflite, "
                        "e.g. the checkout's weights/ file")
    return problems


def _model_argument(model: str) -> str:
    """``--model`` as both sides get it: a file path made absolute (the guest sees host paths where the
    sysroot has none), a spec name as it is."""
    path = Path(model)
    if path.suffix in (".tflite", ".onnx"):
        if not path.is_file():
            raise SetupError(f"--model {model}: no such file")
        return str(path.resolve())
    return model


def run_check(args: argparse.Namespace, report: dict[str, Any]) -> Comparison:
    """Steps 1-5 of the module docstring; fills ``report`` as it goes (so a setup failure still reports
    how far it got)."""
    photos = [p.resolve() for p in args.photos] if args.photos else default_photos()
    missing = [str(p) for p in photos if not p.is_file()]
    if missing:
        raise SetupError(f"photo(s) not found: {', '.join(missing)}")
    report["photos"] = [str(p) for p in photos]
    qemu = ensure_qemu(args.install_deps)
    report["qemu"] = _run([qemu, "--version"]).stdout.splitlines()[0]
    print(f"[1/5] {report['qemu']}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="blazeport-arm-check-") as tmp_name:
        tmp = Path(tmp_name)
        if args.wheel:
            wheel = args.wheel.resolve()
            if not wheel.is_file():
                raise SetupError(f"--wheel {args.wheel}: no such file")
        else:
            print(f"      building a wheel of {ROOT} (pip wheel --no-deps)", file=sys.stderr)
            wheel = build_wheel(tmp / "wheel", args.x86_python)
        requires, names = wheel_metadata(wheel)
        report["wheel"] = {"file": str(wheel), "default_requires": requires}
        model = _model_argument(args.model)
        report.update(model=model, install_mode=args.deps)
        problems = wheel_problems(model, args.deps, requires, names)
        if problems:
            raise SetupError(f"{wheel.name}: " + "; and ".join(problems))

        print(f"[2/5] arm64 sysroot {args.sysroot}", file=sys.stderr)
        cores = _host_cpus()
        sysroot_info = build_sysroot(args.sysroot, cores)
        report["sysroot"] = {"path": str(args.sysroot), "reused": sysroot_info["reused"],
                             "packages": len(sysroot_info["packages"]), "built_s": sysroot_info.get("built_s"),
                             "cpuinfo": f"{cores} x Cortex-A72 (written to SYSROOT/proc/cpuinfo)"}
        guest = Guest(qemu, args.sysroot, args.qemu_cpu)

        print(f"[3/5] installing {wheel.name} on aarch64 under emulation (deps={args.deps})", file=sys.stderr)
        venv_parent = args.sysroot / "venvs"
        venv_parent.mkdir(exist_ok=True)
        venv = Path(tempfile.mkdtemp(prefix="run-", dir=venv_parent))
        try:
            arm = arm_install(guest, venv, wheel, args.deps, args.runtime_deps, requires)
            report["aarch64"] = asdict(arm)
            x86 = x86_install(args.x86_python, wheel, tmp / "x86-target")
            report["x86_64"] = asdict(x86)

            cmd = detect_args(photos, model)
            print(f"[4/5] blazeport {' '.join(cmd)}  (aarch64, emulated)", file=sys.stderr)
            t0 = time.perf_counter()
            proc = guest.run(venv / "bin" / "python", [str(venv / "bin" / "blazeport"), *cmd])
            arm.seconds["detect"] = round(time.perf_counter() - t0, 1)
            arm_dets = parse_detections(proc, "aarch64")
            print("      the same on x86-64", file=sys.stderr)
            t0 = time.perf_counter()
            proc = _run([args.x86_python, str(tmp / "x86-target" / "bin" / "blazeport"), *cmd],
                        env=_clean_env({"PYTHONPATH": str(tmp / "x86-target")}), cwd=tmp)
            x86.seconds["detect"] = round(time.perf_counter() - t0, 1)
            x86_dets = parse_detections(proc, "x86-64")
            report["aarch64"], report["x86_64"] = asdict(arm), asdict(x86)
        finally:
            if args.keep_venv:
                print(f"      kept the aarch64 venv: {venv}", file=sys.stderr)
            else:
                shutil.rmtree(venv, ignore_errors=True)

    print("[5/5] comparing", file=sys.stderr)
    comparison = compare(x86_dets, arm_dets, args.tolerance)
    report["comparison"] = {"faces": comparison.faces, "worst_difference": comparison.worst,
                            "tolerance": comparison.tolerance, "rows": [asdict(r) for r in comparison.rows],
                            "problems": comparison.problems}
    return comparison


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 same detections, 1 different detections, 2 setup failure. "
                                f"Note: {EMULATION_NOTE}.")
    p.add_argument("--wheel", type=Path, help="a blazeport wheel (default: build one from this checkout with "
                   "`pip wheel --no-deps` into a temporary folder)")
    p.add_argument("--photos", type=Path, nargs="+", metavar="PHOTO",
                   help=f"photos to detect on (default: the first {DEFAULT_PHOTO_COUNT} of {PHOTO_DIR})")
    p.add_argument("--model", default="short_range",
                   help="what `blazeport detect --model` gets on both sides: a spec name the wheel carries, or a "
                   ".tflite file (e.g. weights/face_detection_short_range.tflite while models are not package data); "
                   "default: %(default)s")
    p.add_argument("--deps", choices=("default", "runtime-list"), default="default",
                   help="aarch64 install: `default` = pip install WHEEL with its default dependencies (fails if they "
                   "include torch); `runtime-list` = the wheel with --no-deps plus --runtime-deps; default: %(default)s")
    p.add_argument("--runtime-deps", nargs="+", default=list(DEFAULT_RUNTIME_DEPS), metavar="NAME",
                   help="the runtime-list install's packages, versions as the wheel's Requires-Dist constrains them "
                   f"(default: {' '.join(DEFAULT_RUNTIME_DEPS)})")
    p.add_argument("--sysroot", type=Path, default=DEFAULT_SYSROOT,
                   help="arm64 Debian sysroot, built once (35 packages, ~70 MB, up to a minute) and reused; "
                   "default: %(default)s")
    p.add_argument("--x86-python", default=sys.executable,
                   help="the host python that runs the x86 side; its environment supplies the dependencies "
                   "(default: this one, %(default)s)")
    p.add_argument("--qemu-cpu", help="QEMU_CPU for the guest, e.g. cortex-a72 (default: qemu's own, the `max` CPU)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest allowed difference of any number "
                   "(default: %(default)g)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report (versions, timings, every photo) here")
    p.add_argument("--install-deps", action="store_true",
                   help=f"run `apt-get install qemu-user-static` if {QEMU} is missing (needs root)")
    p.add_argument("--keep-venv", action="store_true", help="keep the aarch64 venv (under SYSROOT/venvs) for a look")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report: dict[str, Any] = {"tool": "tools/arm_check.py", "note": EMULATION_NOTE}
    try:
        comparison = run_check(args, report)
    except SetupError as exc:
        report.update(result="setup failure", message=str(exc))
        _write_report(args.json, report)
        print(f"arm_check: setup failure: {exc}", file=sys.stderr)
        return 2
    print(format_table(comparison))
    arm, x86 = report["aarch64"]["seconds"], report["x86_64"]["seconds"]
    print(f"aarch64 (emulated): {', '.join(f'{k} {v:.1f} s' for k, v in arm.items())}; "
          f"x86-64 detect {x86['detect']:.1f} s. Note: {EMULATION_NOTE}.")
    if comparison.ok:
        message = (f"aarch64 matches x86-64: {len(comparison.rows)} photo(s), {comparison.faces} face(s), worst "
                   f"difference {comparison.worst:.3g} <= {comparison.tolerance:g}")
    else:
        message = "aarch64 differs from x86-64: " + "; ".join(comparison.problems)
    report.update(result="match" if comparison.ok else "mismatch", message=message)
    _write_report(args.json, report)
    print(("OK: " if comparison.ok else "MISMATCH: ") + message)
    return 0 if comparison.ok else 1


def _finite(obj: Any) -> Any:
    """``obj`` with infinities (a face or photo missing on one side) as null: the report stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _write_report(path: Path | None, report: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(dict(report)), indent=2, default=str, allow_nan=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
