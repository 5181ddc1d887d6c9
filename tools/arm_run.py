"""Running python on each side for tools/arm_check.py (steps 3 and 4 of its docstring): the emulated
aarch64 python under qemu (``Guest``), the wheel pip-installed into a venv under emulation and into a
``--target`` folder for the host's x86-64 python, and the one ``blazeport detect`` command line both run,
with its JSON output read back. Kept apart from the sysroot (tools/arm_sysroot.py), which it only uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.arm_proc import SetupError, _run, _tail
from tools.arm_sysroot import GUEST_PYTHON
from tools.arm_wheel import _normalize, runtime_requirements

# --------------------------------------------------------------------------------------------------
# running python on each side


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The host environment without what would steer another interpreter to the host's packages
    (PYTHONPATH, a venv, ~/.local via the user site)."""
    dropped = ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_TARGET", "PIP_PREFIX", "QEMU_")) and k not in dropped}
    env.update({"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_INPUT": "1"})
    env.update(extra or {})
    return env


@dataclass
class Guest:
    """How to run the emulated python: qemu, the sysroot it reads first (``-L``), the CPU model."""

    qemu: str
    sysroot: Path
    cpu: str | None = None

    def run(self, python: Path, args: Sequence[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """``python args`` under qemu, from a neutral folder (the sysroot) so no checkout is importable."""
        env = _clean_env({"QEMU_CPU": self.cpu} if self.cpu else None)
        try:
            return _run([self.qemu, "-L", str(self.sysroot), str(python), *args], env=env, timeout=timeout,
                        cwd=self.sysroot)
        except subprocess.TimeoutExpired as exc:
            raise SetupError(f"emulated command timed out after {timeout:.0f} s: {' '.join(args[:3])} ...") from exc


@dataclass
class Side:
    """What one platform ran: the interpreter, how blazeport got there, package versions, timings."""

    platform: str
    python: str
    blazeport_from: str
    packages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def installed_packages(site_packages: Path) -> dict[str, str]:
    """``{name: version}`` from the ``*.dist-info`` folders of a site-packages, read on the host (no
    emulated process needed)."""
    found = {}
    for info in site_packages.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[_normalize(name)] = version
    return dict(sorted(found.items()))


def arm_install(guest: Guest, venv: Path, wheel: Path, mode: str, runtime_deps: Sequence[str],
                wheel_requires: Sequence[str]) -> Side:
    """A venv of the emulated python and the wheel pip-installed into it under emulation (see the
    module docstring for the two modes). Raises SetupError if pip fails or the default install
    brought torch."""
    python = guest.sysroot / GUEST_PYTHON
    side = Side("aarch64 (qemu-user)", f"{python} (Debian bookworm arm64)", f"{wheel.name} in a venv, deps={mode}")
    t0 = time.perf_counter()
    proc = guest.run(python, ["-m", "venv", "--without-pip", str(venv)])  # ensurepip would exec a child python
    if proc.returncode != 0:
        raise SetupError(f"creating the emulated venv failed:\n{_tail(proc)}")
    side.seconds["venv"] = round(time.perf_counter() - t0, 1)
    pip_wheels = sorted((guest.sysroot / "usr/share/python-wheels").glob("pip-*.whl"))
    if not pip_wheels:
        raise SetupError(f"no pip wheel in {guest.sysroot}/usr/share/python-wheels (python3-pip-whl)")
    pip = [str(pip_wheels[-1] / "pip"), "install", "--only-binary", ":all:", "--no-warn-script-location", "--progress-bar", "off"]
    steps = [("install", [*pip, str(wheel)])] if mode == "default" else [
        ("install deps", [*pip, *runtime_requirements(runtime_deps, wheel_requires)]),
        ("install wheel", [*pip, "--no-deps", str(wheel)])]
    for step, cmd in steps:
        print(f"  {step} under emulation: pip {' '.join(cmd[1:])}", file=sys.stderr)
        t0 = time.perf_counter()
        proc = guest.run(venv / "bin" / "python", cmd)
        side.seconds[step] = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            raise SetupError(f"pip {step} on aarch64 failed (exit {proc.returncode}); aarch64 wheels are required "
                             f"for every dependency:\n{_tail(proc)}")
    side.packages = installed_packages(venv / "lib" / "python3.11" / "site-packages")
    if mode == "default" and "torch" in side.packages:
        raise SetupError(f"the default install pulled torch {side.packages['torch']} on aarch64: the wheel's default "
                         "dependencies must not need torch")
    return side


def x86_install(python: str, wheel: Path, target: Path) -> Side:
    """The same wheel installed with ``--no-deps --no-index`` into ``target`` for the host python, whose
    environment supplies the dependencies; checked to import from ``target``, not from a checkout."""
    t0 = time.perf_counter()
    proc = _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                env=_clean_env())
    if proc.returncode != 0:
        raise SetupError(f"installing the wheel for the x86 python ({python}) failed:\n{_tail(proc)}")
    seconds = round(time.perf_counter() - t0, 1)
    probe = ("import blazeport, importlib.metadata as m, json, platform\n"
             "names = ('numpy', 'opencv-python-headless', 'opencv-python', 'ai-edge-litert', 'tflite', 'flatbuffers', 'tqdm')\n"
             "v = {}\n"
             "for n in names:\n"
             "    try: v[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps({'file': blazeport.__file__, 'machine': platform.machine(), 'versions': v}))\n")
    proc = _run([python, "-c", probe], env=_clean_env({"PYTHONPATH": str(target)}), cwd=target)
    if proc.returncode != 0:
        raise SetupError(f"the x86 python ({python}) cannot import the wheel's blazeport:\n{_tail(proc)}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(info["file"]).resolve().is_relative_to(target.resolve()):
        raise SetupError(f"the x86 python imported blazeport from {info['file']}, not from the wheel in {target}")
    side = Side(f"x86-64 ({info['machine']})", python, f"{wheel.name} --no-deps in a --target folder; deps from the "
                "host python's environment", info["versions"])
    side.seconds["install"] = seconds
    return side


def detect_args(photos: Sequence[Path], model: str) -> list[str]:
    """The one ``blazeport detect`` command line both sides run."""
    return ["detect", *map(str, photos), "--model", model, "--backend", "tflite", "--postprocess", "numpy", "--json"]


def parse_detections(proc: subprocess.CompletedProcess[str], where: str) -> list[dict[str, Any]]:
    """The JSON list that ``blazeport detect --json`` printed, or a SetupError with its stderr."""
    if proc.returncode != 0:
        hint = ""
        if proc.returncode in (-11, 139):  # SIGSEGV, as qemu reports it or as a shell would
            hint = (" (a segfault: under qemu this is what LiteRT / ONNX Runtime do when they read the host's x86 "
                    "/proc/cpuinfo; check that SYSROOT/proc/cpuinfo is the ARM one)")
        raise SetupError(f"`blazeport detect` on {where} failed (exit {proc.returncode}){hint}:\n{_tail(proc)}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise SetupError(f"`blazeport detect --json` on {where} printed no JSON ({exc}):\n{_tail(proc)}") from exc
