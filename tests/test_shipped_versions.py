"""tools/shipped_versions.py: a version is new when its weights are, not when only its header was re-written."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from safetensors.numpy import save

versions = importlib.import_module("tools.shipped_versions")


def test_the_same_tensors_under_another_header_are_one_version() -> None:
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    first = save(a, metadata={"spec": '{"name": "x"}'})
    rewritten = save(dict(reversed(list(a.items()))), metadata={"spec": '{"name": "x", "aliases": []}', "more": "1"})
    assert first != rewritten
    assert versions.weights_digest(first) == versions.weights_digest(rewritten)
    changed = save({**a, "b": np.array([1, 1, 1.0001], np.float32)})
    assert versions.weights_digest(changed) != versions.weights_digest(first)
    renamed = save({"w2": a["w"], "b": a["b"]})
    assert versions.weights_digest(renamed) != versions.weights_digest(first)


def test_a_history_of_moves_rewrites_and_a_revert(tmp_path, monkeypatch) -> None:
    """Rows: the first weights, a change, and a revert that says which commit it restores; a header-only
    re-write is no row."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed: the tool reads a git history")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    target = tmp_path / versions.BUNDLED / "m.safetensors"
    target.parent.mkdir(parents=True)
    a, b = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    commits = []
    for message, payload in (("first", save(a)), ("header only", save(a, metadata={"x": "1"})), ("change", save(b)),
                             ("revert", save(a))):
        target.write_bytes(payload)
        git("add", "-A")
        git("commit", "-qm", message)
        commits.append(git("rev-parse", "--short", "HEAD"))
    monkeypatch.setattr(versions, "ROOT", tmp_path)
    rows = versions.versions("m")
    assert [r["subject"] for r in rows] == ["first", "change", "revert"]
    assert rows[2]["restores"] == commits[0] and "restores" not in rows[1]
