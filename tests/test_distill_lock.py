"""A run folder has one owner: ``OUT/.lock`` (blazeport.distill.lock).

Two ``blazeport distill`` runs into one ``--out`` used to both exit 0, the folder ending with the
second run's files. Here a second run is refused at once, in one line, before a teacher, a student
or a photo is loaded, and nothing in the folder changes; a lock left by a process that has ended is
taken over (and said); the lock is gone after a run however it ended.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import blazeport
from blazeport.distill import inputs, trainer
from blazeport.distill.lock import LOCK_NAME, RunLock, run_folder_lock
from blazeport.distill.trainer import NonFiniteLoss, train
from blazeport.errors import BlazeportError
from tests.conftest import small_run
from tests.test_distill_safety import _refused_by_cli

ROOT = Path(__file__).resolve().parent.parent




_cfg = small_run


def _cli_distill(photos: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--images", str(photos), "--out", str(out), "--student", "resnet_slim", "--epochs", "1",
            "--batch-size", "8", "--val-fraction", "0.25", "--limit", "8", "--threads", "1", "--json", *extra]


def _env() -> dict[str, str]:
    """A subprocess that imports THIS checkout's blazeport."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def _held_by_another_process(out: Path) -> Iterator[subprocess.Popen]:
    """Another live process owns ``out`` (it took the lock the way a run does) until the block ends."""
    code = ("import sys\nfrom blazeport.distill.lock import RunLock\nwith RunLock.acquire(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a refused run goes on to read a checkpoint, load the teacher, any image or the student."""
    def fail(what: str) -> Any:
        return lambda *a, **k: pytest.fail(f"{what} before the lock refused the run")

    monkeypatch.setattr(trainer, "checkpoint_to_resume", fail("checkpoint read"))
    monkeypatch.setattr(blazeport, "load", fail("teacher loaded"))
    monkeypatch.setattr(inputs, "ImageIndex", fail("images listed"))  # Data.load lists them (distill/inputs.py)
    monkeypatch.setattr(trainer, "build_student", fail("student built for training"))


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_owned_by_a_live_run_is_refused_before_anything_loads(resume: bool, photos: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       nothing_loads: None) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not read: the lock refuses first")
    with _held_by_another_process(out) as owner:
        before = _snapshot(out)
        err = _refused_by_cli(_cli_distill(photos, out, *(["--resume"] if resume else [])), capsys)
        assert f"--out {out} is in use" in err and f"pid {owner.pid} on host {socket.gethostname()}" in err
        assert "choose another --out" in err
        with pytest.raises(BlazeportError, match="is in use by another"):
            train(_cfg(photos, out, resume=resume))
        assert _snapshot(out) == before  # the owner's record included
    assert not (out / LOCK_NAME).exists()  # the owner released it when it ended


def test_two_runs_into_one_folder_one_trains_the_other_is_refused(photos: Path, tmp_path: Path) -> None:
    """The probe's finding itself: two CLI runs started together into one --out."""
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "blazeport.cli", *_cli_distill(photos, out)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2).strip()
    assert len(refused.splitlines()) == 1 and f"--out {out} is in use" in refused, refused
    assert (out / "summary.json").exists() and not (out / LOCK_NAME).exists()


def test_a_recorded_live_pid_is_refused_and_the_file_named(photos: Path, tmp_path: Path, nothing_loads: None) -> None:
    """A lock file naming a live process of this host (its pid reused, or a lock held without the kernel lock)
    is not taken over: the message says which file to delete once the user knows."""
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "2024-01-01T00:00:00"}
        (out / LOCK_NAME).write_text(json.dumps(record))
        before = _snapshot(out)
        with pytest.raises(BlazeportError, match=rf"pid {sleeper.pid} on host .*delete {out / LOCK_NAME}") as err:
            train(_cfg(photos, out))
        assert len(str(err.value).splitlines()) == 1
        assert _snapshot(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_of_another_host_is_refused(photos: Path, tmp_path: Path, nothing_loads: None) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "started": "yesterday"}))
    before = _snapshot(out)
    with pytest.raises(BlazeportError, match=r"pid 4242 on host elsewhere\.example.*cannot see whether it still runs"):
        train(_cfg(photos, out, resume=True))
    assert _snapshot(out) == before


def test_a_stale_lock_is_taken_over_said_and_released_after_the_run(photos: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)  # that process has exited (and been reaped): its pid names no process
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "earlier"}))
    summary = train(_cfg(photos, out))
    err = capsys.readouterr().err
    assert f"took over a stale lock (pid {dead} on host {socket.gethostname()}" in err
    assert summary["final"]["epoch"] == 1 and (out / "summary.json").exists()
    assert not (out / LOCK_NAME).exists()  # released after a normal run


def test_the_lock_is_held_during_the_run_and_released_however_it_ends(photos: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    seen: list[dict[str, Any]] = []
    real_setup = trainer.Run.setup

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        seen.append(json.loads((out / LOCK_NAME).read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Run, "setup", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(photos, out))
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not out.exists()  # the lock created the folder; nothing else was written, so it went with the lock

    monkeypatch.setattr(trainer.Run, "setup", real_setup)
    with pytest.raises(NonFiniteLoss):  # a run that fails after writing into the folder
        train(_cfg(photos, out, fail_at_step=0))
    assert (out / "config.json").exists() and not (out / LOCK_NAME).exists()


def test_one_process_cannot_own_a_folder_twice(tmp_path: Path) -> None:
    """POSIX locks never conflict within one process: a second train() in the same process is refused too."""
    out = tmp_path / "run"
    with RunLock.acquire(out), pytest.raises(BlazeportError, match=rf"pid {os.getpid()}"):
        RunLock.acquire(out)
    assert not out.exists()
    with RunLock.acquire(out):  # released: free again
        pass


def test_only_rank_zero_owns_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with run_folder_lock(out, rank=1, world=2) as lock:  # no process group here: nothing to broadcast
        assert lock is None and not out.exists()
    with run_folder_lock(out, rank=0, world=1) as lock:
        assert lock is not None and (out / LOCK_NAME).exists()
    assert not out.exists()


_RANK = """
import sys
import torch.distributed as dist
from blazeport.distill.lock import run_folder_lock
from blazeport.errors import BlazeportError
out, rank, init = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", rank=rank, world_size=2, init_method=init)
try:
    with run_folder_lock(out, rank, 2) as lock:
        print("owner" if lock is not None else "member", flush=True)
        dist.barrier()
except BlazeportError as exc:
    print(f"refused: {exc}", flush=True)
"""


def _two_ranks(out: Path) -> list[str]:
    """What each of two gloo ranks (as torchrun starts them) says when it asks for ``out``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(out), str(rank), init], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    said = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), said
    return [stdout.strip() for stdout, _ in said]


def test_under_ddp_rank_zero_owns_the_folder_and_every_rank_stops_with_its_refusal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _two_ranks(out) == ["owner", "member"]
    assert not out.exists()  # released by rank 0 (and the folder it created, empty, with it)
    with _held_by_another_process(out) as owner:
        said = _two_ranks(out)  # rank 1 learns of rank 0's refusal instead of waiting for it forever
    assert said[0] == said[1] and said[0].startswith(f"refused: --out {out} is in use") and f"pid {owner.pid}" in said[0]
