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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"  # as tests/conftest.py finds it
PHOTO_DIR = SHARED_DATA / "faces-boxed" / "images"
DEFAULT_PHOTO_COUNT = 4
TOLERANCE = 1e-4
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blazeport"
DEFAULT_SYSROOT = CACHE / "arm64-sysroot"
QEMU = "qemu-aarch64-static"
GUEST_PYTHON = "usr/bin/python3.11"
SYSROOT_MARKER = ".blazeport-sysroot.json"
SYSROOT_VERSION = 1  # bump when the package set or the cpuinfo changes: an older sysroot is rebuilt

# What `blazeport detect --backend tflite` imports once torch is unimportable (found by running it with
# sys.modules["torch"] = None and recording blazeport's third-party imports): numpy, cv2, ai_edge_litert,
# tflite + flatbuffers (the flatbuffer reader), tqdm.
DEFAULT_RUNTIME_DEPS = ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite", "flatbuffers", "tqdm")

# Bookworm ships python3.11, the version blazeport requires; a private sources list pins it whatever the
# host's release is.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBIAN_SOURCES = (
    "deb [arch=arm64 signed-by={keyring}] http://deb.debian.org/debian bookworm main\n"
    "deb [arch=arm64 signed-by={keyring}] http://deb.debian.org/debian bookworm-updates main\n"
    "deb [arch=arm64 signed-by={keyring}] http://deb.debian.org/debian-security bookworm-security main\n"
)
# The interpreter, venv + pip's wheel, and the libraries manylinux wheels expect from the system
# (libstdc++, libgcc_s, zlib); their Depends/Pre-Depends are followed from here.
ROOT_PACKAGES = ("python3.11", "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl", "libssl3",
                 "libstdc++6", "libgcc-s1", "zlib1g")
# Only maintainer scripts and package management need these; nothing here runs them (pip vendors its
# certificates, `dpkg-deb -x` runs no script).
SKIP_PACKAGES = frozenset({"ca-certificates", "openssl", "debconf", "cdebconf", "dpkg", "perl-base", "perl",
                           "perl-modules-5.36", "libperl5.36", "tar", "install-info", "python3"})

# Two Cortex-A72 cores (Raspberry Pi 4 class): what pytorch/cpuinfo inside LiteRT and ONNX Runtime parses.
CPUINFO_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

"""

EMULATION_NOTE = ("timings under emulation mean nothing (qemu translates every instruction; one inference is "
                  "~300 ms emulated against ~1 ms native): they say how long the check takes, not how fast ARM is")


class SetupError(Exception):
    """The check could not be carried out (exit 2); the message says what failed and what to do."""


# --------------------------------------------------------------------------------------------------
# comparison (pure: unit-tested without qemu)


@dataclass
class PhotoRow:
    """One photo's verdict: faces on each side, the worst difference over its paired faces, and why it
    failed (empty when it matched)."""

    image: str
    faces_x86: int
    faces_arm: int
    worst: float = 0.0
    worst_field: str = ""
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass
class Comparison:
    """Every photo's row, the worst difference over all of them, and the failures as sentences."""

    rows: list[PhotoRow] = field(default_factory=list)
    tolerance: float = TOLERANCE
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def worst(self) -> float:
        return max((r.worst for r in self.rows), default=0.0)

    @property
    def faces(self) -> int:
        return sum(r.faces_x86 for r in self.rows)


def _values(det: Mapping[str, Any]) -> list[tuple[str, float]]:
    """A detection flattened to named numbers: score, box[0..3], keypoints[i][j]."""
    named = [("score", float(det["score"]))]
    named += [(f"box[{i}]", float(v)) for i, v in enumerate(det["box"])]
    named += [(f"keypoints[{i}][{j}]", float(v)) for i, kp in enumerate(det["keypoints"]) for j, v in enumerate(kp)]
    return named


def _difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, str]:
    """The largest absolute difference between two detections and the field it is in (inf if their
    shapes differ, e.g. another number of keypoints)."""
    va, vb = _values(a), _values(b)
    if [n for n, _ in va] != [n for n, _ in vb]:
        return math.inf, "shape"
    worst, where = 0.0, ""  # no field to name when every number is equal
    for (name, x), (_, y) in zip(va, vb, strict=True):
        d = abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
        if d > worst:
            worst, where = d, name
    return worst, where


def _pair(x86: Sequence[Mapping[str, Any]], arm: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """Pair faces by closeness (greedy on the largest difference), not by list order: two faces with
    near-equal scores may come out of NMS in either order on another platform and still be the same faces."""
    candidates = sorted((*_difference(a, b), i, j) for i, a in enumerate(x86) for j, b in enumerate(arm))
    used_x, used_a, pairs = set(), set(), []
    for d, where, i, j in candidates:
        if i not in used_x and j not in used_a:
            used_x.add(i)
            used_a.add(j)
            pairs.append((d, where))
    return pairs


def compare(x86: Sequence[Mapping[str, Any]], arm: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> Comparison:
    """Compare two ``blazeport detect --json`` outputs (lists of ``{"image", "width", "height",
    "detections"}``): the same photos, the same image sizes, the same number of faces per photo, and
    every number of every paired face within ``tolerance``. Each failure names its photo."""
    result = Comparison(tolerance=tolerance)
    by_image = {r["image"]: r for r in arm}
    for ref in x86:
        name = ref["image"]
        other = by_image.pop(name, None)
        if other is None:
            row = PhotoRow(name, len(ref["detections"]), 0, math.inf, "", "missing from the aarch64 output")
        else:
            row = _compare_photo(name, ref, other, tolerance)
        result.rows.append(row)
    for name, other in by_image.items():
        result.rows.append(PhotoRow(name, 0, len(other["detections"]), math.inf, "", "missing from the x86 output"))
    result.problems = [f"{r.image}: {r.problem}" for r in result.rows if r.problem]
    return result


def _compare_photo(name: str, ref: Mapping[str, Any], other: Mapping[str, Any], tolerance: float) -> PhotoRow:
    dx, da = ref["detections"], other["detections"]
    row = PhotoRow(name, len(dx), len(da))
    if (ref.get("width"), ref.get("height")) != (other.get("width"), other.get("height")):
        row.problem = (f"image size {ref.get('width')}x{ref.get('height')} on x86, "
                       f"{other.get('width')}x{other.get('height')} on aarch64")
    pairs = _pair(dx, da)
    if pairs:
        row.worst, row.worst_field = max(pairs)
    if len(dx) != len(da):
        row.worst = math.inf
        row.problem = row.problem or f"{len(dx)} face(s) on x86, {len(da)} on aarch64"
    elif row.worst > tolerance and not row.problem:
        row.problem = f"{row.worst_field} differs by {row.worst:.3g} (tolerance {tolerance:g})"
    return row


def format_table(comparison: Comparison) -> str:
    """A small fixed-width table: one line per photo, then the worst difference."""
    width = max([len(Path(r.image).name) for r in comparison.rows] + [5])
    lines = [f"{'photo':<{width}}  {'x86':>4}  {'arm':>4}  {'worst diff':>10}  field"]
    for r in comparison.rows:
        worst = "-" if not (r.faces_x86 or r.faces_arm) else f"{r.worst:.3g}"
        status = "" if r.ok else f"  FAIL: {r.problem}"
        lines.append(f"{Path(r.image).name:<{width}}  {r.faces_x86:>4}  {r.faces_arm:>4}  {worst:>10}  {r.worst_field}{status}")
    lines.append(f"{len(comparison.rows)} photo(s), {comparison.faces} face(s) on x86; worst difference "
                 f"{comparison.worst:.3g} (tolerance {comparison.tolerance:g})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the wheel


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(wheel: Path) -> tuple[list[str], list[str]]:
    """``(default requirements, file names)`` of a wheel, read as a zip: the Requires-Dist lines that
    no extra guards (what a plain ``pip install WHEEL`` installs), and every member."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if meta_name is None:
            raise SetupError(f"{wheel}: no .dist-info/METADATA inside; not a wheel")
        meta = Parser().parsestr(zf.read(meta_name).decode("utf-8"))
    requires = [r for r in meta.get_all("Requires-Dist") or [] if not re.search(r"\bextra\s*==", r)]
    return requires, names


def requirement_name(requirement: str) -> str:
    """The normalized project name at the start of a requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return _normalize(match.group(1)) if match else ""


def runtime_requirements(names: Sequence[str], wheel_requires: Sequence[str]) -> list[str]:
    """The ``--runtime-deps`` names, each constrained as the wheel's own Requires-Dist constrains it
    (``numpy>=1.26``), so the runtime-list install gets the versions the default install would."""
    by_name = {requirement_name(r): r.split(";")[0].strip() for r in wheel_requires}
    return [by_name.get(_normalize(n), n) for n in names]


def build_wheel(out_dir: Path, python: str) -> Path:
    """``pip wheel --no-deps`` of the checkout, built from a copy of its files (tracked and untracked,
    not ignored) so that nothing (``build/``, ``*.egg-info``) is written into the repo."""
    src = out_dir / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=False)
    if files.returncode != 0:
        raise SetupError(f"cannot list the checkout's files (git ls-files in {ROOT}): {files.stderr.decode().strip()}")
    for rel in filter(None, files.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    proc = _run([python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(src)])
    wheels = sorted(out_dir.glob("blazeport-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SetupError(f"building the wheel failed (pip wheel --no-deps):\n{_tail(proc)}")
    return wheels[0]


# --------------------------------------------------------------------------------------------------
# qemu and the sysroot


def _run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 25) -> str:
    text = (proc.stderr or "") + (proc.stdout or "")
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_qemu(install_deps: bool) -> str:
    """The path of ``qemu-aarch64-static``; installed with apt-get only when ``install_deps``."""
    found = shutil.which(QEMU)
    if found:
        return found
    if not install_deps:
        raise SetupError(f"{QEMU} not found. Install it with `apt-get update && apt-get install -y qemu-user-static` "
                         "(Debian/Ubuntu), or rerun with --install-deps to let this tool run apt-get")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "qemu-user-static"]):
        proc = _run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode != 0:
            raise SetupError(f"`{' '.join(cmd)}` failed:\n{_tail(proc)}")
    found = shutil.which(QEMU)
    if not found:
        raise SetupError(f"qemu-user-static installed but {QEMU} is still not on PATH")
    return found


def cpuinfo_text(cores: int = 2) -> str:
    """An aarch64 ``/proc/cpuinfo`` for ``cores`` Cortex-A72 cores (see the module docstring for why)."""
    return "".join(CPUINFO_CORE.format(n=n) for n in range(cores))


def _host_cpus() -> int:
    """How many CPUs the guest will see in /sys (which qemu passes through): the ARM cpuinfo lists as
    many, so the two agree."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 2


def _apt_options(state: Path) -> list[str]:
    """apt-get/apt-cache options for a private arm64 apt: its own sources, lists and cache under
    ``state``, an empty dpkg status; the host's apt configuration (proxies) still applies."""
    return ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::Etc::sourcelist={state / 'sources.list'}", "-o", f"Dir::Etc::sourceparts={state / 'sources.d'}",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1", "-q"]


def resolve_packages(options: Sequence[str], roots: Sequence[str] = ROOT_PACKAGES) -> list[str]:
    """``roots`` and their Depends/Pre-Depends, recursively (first choice of each alternative; virtual
    packages and ``SKIP_PACKAGES`` left out): one ``apt-cache depends`` per level."""
    seen: set[str] = set()
    todo = [p for p in roots if p not in SKIP_PACKAGES]
    while todo:
        seen.update(todo)
        proc = _run(["apt-cache", *options, "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                     "--no-breaks", "--no-replaces", "--no-enhances", *todo])
        if proc.returncode != 0:
            raise SetupError(f"apt-cache depends failed:\n{_tail(proc)}")
        found: list[str] = []
        group: list[str] = []  # " |Depends: a" lines open a group of alternatives; the first plain line ends it
        for line in proc.stdout.splitlines():
            match = re.match(r"^ ([ |])(?:Pre)?Depends: (\S+)", line)
            if not match:
                continue
            group.append(match.group(2))
            if match.group(1) != "|":
                choice = next((n for n in group if not n.startswith("<")), None)
                if choice:
                    found.append(choice.split(":")[0])
                group = []
        todo = sorted({n for n in found if n not in seen and n not in SKIP_PACKAGES})
    return sorted(seen)


def build_sysroot(sysroot: Path, cores: int) -> dict[str, Any]:
    """Debian bookworm's arm64 python3.11 unpacked into ``sysroot`` (reused when its marker says it is
    complete and current), with the ARM ``/proc/cpuinfo`` always (re)written. Returns the marker."""
    marker = sysroot / SYSROOT_MARKER
    if marker.is_file() and (sysroot / GUEST_PYTHON).is_file():
        info = json.loads(marker.read_text())
        if info.get("version") == SYSROOT_VERSION:
            _write_cpuinfo(sysroot, cores)
            return {**info, "reused": True}
    if sysroot.exists() and any(sysroot.iterdir()) and not marker.is_file():
        raise SetupError(f"--sysroot {sysroot} exists and was not made by this tool (no {SYSROOT_MARKER}); "
                         "refusing to replace it: give an empty or new folder")
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise SetupError(f"{tool} not found: building the arm64 sysroot needs Debian's apt and dpkg")
    if not KEYRING.is_file():
        raise SetupError(f"{KEYRING} not found: `apt-get install debian-archive-keyring` (to verify Debian's arm64 packages)")
    t0 = time.perf_counter()
    partial = sysroot.with_name(sysroot.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="blazeport-apt-") as tmp:
        state = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial", "sources.d", "debs"):
            (state / sub).mkdir(parents=True)
        (state / "sources.list").write_text(DEBIAN_SOURCES.format(keyring=KEYRING))
        options = _apt_options(state)
        proc = _run(["apt-get", *options, "update"])
        if proc.returncode != 0:
            raise SetupError(f"apt-get update (private arm64 lists, deb.debian.org) failed:\n{_tail(proc)}")
        packages = resolve_packages(options)
        proc = _run(["apt-get", *options, "download", *packages], cwd=state / "debs")
        if proc.returncode != 0:
            raise SetupError(f"apt-get download of {len(packages)} arm64 packages failed:\n{_tail(proc)}")
        debs = sorted((state / "debs").glob("*.deb"))
        partial.mkdir(parents=True)
        for deb in debs:
            proc = _run(["dpkg-deb", "-x", str(deb), str(partial)])
            if proc.returncode != 0:
                raise SetupError(f"dpkg-deb -x {deb.name} failed:\n{_tail(proc)}")
        info = {"version": SYSROOT_VERSION, "debian": "bookworm", "packages": [d.name for d in debs],
                "built_s": round(time.perf_counter() - t0, 1)}
    if not (partial / GUEST_PYTHON).is_file():
        raise SetupError(f"the arm64 packages unpacked but {GUEST_PYTHON} is missing from {partial}")
    (partial / SYSROOT_MARKER).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(sysroot, ignore_errors=True)
    partial.rename(sysroot)
    _write_cpuinfo(sysroot, cores)
    return {**info, "reused": False}


def _write_cpuinfo(sysroot: Path, cores: int) -> None:
    proc_dir = sysroot / "proc"
    proc_dir.mkdir(exist_ok=True)
    (proc_dir / "cpuinfo").write_text(cpuinfo_text(cores))


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
