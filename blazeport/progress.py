"""The one rule for progress bars in blazeport: on stderr, and only when stderr is a terminal.

A bar redrawn into a log file or a CI console is hundreds of carriage-return lines of noise, and a
bar on stdout would corrupt ``--json``; so every command's bar goes through :func:`progress_bar`,
which draws nothing unless ``sys.stderr.isatty()`` (and the command wants one: ``enabled``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str, total: float | None = None,
                 enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (its rate reads ``UNIT/s``), disabled when stderr is not a terminal or
    ``enabled`` is false; ``kwargs`` go to tqdm."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, file=sys.stderr,
                disable=not enabled or not stderr_is_terminal(), **kwargs)
