"""Starting one measured configuration in a fresh interpreter (the parent's side of
:mod:`blazeport.bench.child`): the child prints its result as one tagged JSON line on stdout.

Kept apart from the child's measuring code so the parent-side runners (:mod:`blazeport.bench.rounds`,
:mod:`blazeport.bench.folder`) and the child import one way only, with no circle between them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE_ROOT", "RESULT_TAG", "spawn"]

RESULT_TAG = "BLAZEPORT_BENCH_RESULT "
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds this blazeport package


def spawn(cfg: dict[str, Any], python: str, timeout: float = 900) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; a failure comes back as ``{"error": ...}``.

    The child starts in :data:`PACKAGE_ROOT` with it on ``PYTHONPATH`` too, so it imports this very
    ``blazeport`` (another interpreter, such as MediaPipe's venv, or another checkout installed in
    the same venv, would otherwise import its own); it then moves to ``cfg["cwd"]``."""
    threads = str(cfg["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               TF_CPP_MIN_LOG_LEVEL="3", GLOG_minloglevel="3", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([python, "-m", "blazeport.bench.child"], input=json.dumps(cfg), capture_output=True,
                              text=True, env=env, cwd=PACKAGE_ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return {"error": f"exit status {proc.returncode}: {lines[-1] if lines else 'no output'}"}
