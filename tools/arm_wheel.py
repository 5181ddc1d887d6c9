"""The blazeport wheel as tools/arm_check.py sees it: its default requirements and files read from the
zip, requirement names, the ``--runtime-deps`` list constrained by the wheel's own Requires-Dist, and
``pip wheel --no-deps`` of the checkout from a copy of its files. Kept apart from installing and running
the wheel (tools/arm_run.py) because these only read or build it, on the host."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from collections.abc import Sequence
from email.parser import Parser
from pathlib import Path

from tools.arm_proc import SetupError, _run, _tail

ROOT = Path(__file__).resolve().parent.parent


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
