"""Every progress bar in blazeport is drawn on stderr, and only when stderr is a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from blazeport.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe, CI
    bar = progress_bar(total=3, desc="x", unit="frame")
    assert bar.disable
    bar.update(3)
    bar.close()
    assert sys.stderr.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(total=3, desc="x", unit="frame")
    assert not bar.disable
    bar.update(3)
    bar.close()
    assert "frame/s" in terminal.getvalue()
    assert progress_bar(total=3, desc="x", unit="frame", enabled=False).disable  # the command said no


def test_every_bar_goes_through_the_rule() -> None:
    """No module builds a tqdm bar of its own (tqdm.write is fine)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for folder in ("blazeport", "tools") for p in (root / folder).rglob("*.py")
                 if p.name != "progress.py" and "tqdm(" in p.read_text()]
    assert offenders == []
