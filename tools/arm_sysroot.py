"""qemu and the arm64 sysroot of tools/arm_check.py (steps 1 and 2 of its docstring, which says why each
is done this way): finding or installing ``qemu-aarch64-static``, and Debian bookworm's arm64 CPython 3.11
fetched with a private apt state, unpacked with ``dpkg-deb -x`` and given an ARM ``/proc/cpuinfo``. Kept
apart because it is the one part that talks to apt and dpkg and builds a cached folder outside the checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.arm_proc import SetupError, _run, _tail

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blazeport"
DEFAULT_SYSROOT = CACHE / "arm64-sysroot"
QEMU = "qemu-aarch64-static"
GUEST_PYTHON = "usr/bin/python3.11"
SYSROOT_MARKER = ".blazeport-sysroot.json"
SYSROOT_VERSION = 1  # bump when the package set or the cpuinfo changes: an older sysroot is rebuilt

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


# --------------------------------------------------------------------------------------------------
# qemu and the sysroot


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
