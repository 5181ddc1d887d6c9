"""The setup-failure exception and the subprocess helpers that every step of tools/arm_check.py uses
(building the wheel, the sysroot, installing and running each side, the command itself). They live here,
apart from those steps, so that each step's module can import them without importing another step."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any


class SetupError(Exception):
    """The check could not be carried out (exit 2); the message says what failed and what to do."""


def _run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 25) -> str:
    text = (proc.stderr or "") + (proc.stdout or "")
    return "\n".join(text.strip().splitlines()[-lines:])
