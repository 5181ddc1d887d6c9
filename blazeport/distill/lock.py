"""One owner per run folder: ``OUT/.lock``, held by a distillation run for its whole life.

Why: two ``blazeport distill`` runs into one ``--out`` both used to "succeed". Neither had written
``last.pt`` when the other checked, so both trained, the folder ended with the second run's files
mixed over the first's, and both exited 0. Now the first run owns the folder and any other run into
it (``--resume`` included) is refused at once, in one line, before a teacher, a student or a photo
is loaded.

How the lock works:

- ``OUT/.lock`` holds a JSON record of its owner: pid, host name and start time (what the refusal
  names). The run opens it (creating it, and ``OUT``, if absent) and holds an exclusive POSIX
  record lock (``fcntl.lockf``) on it while it runs. The kernel drops that lock when the process
  ends, however it ends (SIGKILL included), and forked DataLoader workers do not inherit it, so a
  held kernel lock always means a live owner.
- **Released** on a normal end, on an error and on KeyboardInterrupt (:class:`RunLock` is a context
  manager): the lock file is deleted, and ``OUT`` too if this run created it and left nothing else
  in it, so a run refused for bad images still leaves nothing behind.
- **Stale locks.** A lock file whose kernel lock is free was left by an owner that ended without
  releasing it (SIGKILL, SIGTERM, a power cut). If its record names this host and a pid that is no
  longer alive, the lock is taken over, and that is said on stderr. If the pid is alive (the pid
  was reused by an unrelated process, or the record was written by something that holds no kernel
  lock), or the record names another host (a shared filesystem: this machine cannot see that
  one's processes), the run is refused and the message names the file to delete once the user knows
  no run is active there: a wrong refusal costs an ``rm``, a wrong takeover costs a run. A record
  that is empty or not JSON (an owner killed while writing it) names no owner to protect: taken
  over, and said.
- **Filesystems without POSIX locks** (some FUSE mounts): the record alone decides, by the rule
  above; two runs started within the same instant could then both pass.
- **DDP**: only global rank 0, the process that writes the folder, owns the lock;
  :func:`run_folder_lock` broadcasts its verdict, so every rank stops with the same message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blazeport.errors import BlazeportError

try:
    import fcntl
except ImportError:  # not POSIX: the record alone decides (see the module docstring)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "run_folder_lock"]

LOCK_NAME = ".lock"
_HELD: dict[str, RunLock] = {}  # lock files this process owns: a POSIX lock never conflicts with its own process


class _Busy(Exception):
    """Another process holds the kernel lock."""


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int) -> bool:
    """Whether ``pid`` names a process on this host (one we may not signal is alive too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kernel_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting: True when taken, False where the filesystem has no
    POSIX locks; raises :class:`_Busy` when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise _Busy from None
        return False  # ENOLCK, EOPNOTSUPP...
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (its owner may have deleted it as we opened it)."""
    mine = os.fstat(fd)
    try:
        there = os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _read_record(fd: int) -> dict[str, Any] | None:
    """The owner record in the lock file: None when empty, ``{}`` when unreadable."""
    data = os.pread(fd, 1 << 16, 0)
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "owner not recorded yet"
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}"


def _busy_message(out: Path, record: dict[str, Any] | None, hint: str = "") -> str:
    return (f"--out {out} is in use by another `blazeport distill` ({_describe(record)}); wait for it to end or stop "
            f"it, or choose another --out{hint}")


class RunLock:
    """The exclusive ownership of one run folder; :meth:`acquire` it, :meth:`release` it (or use ``with``)."""

    def __init__(self, out: Path, fd: int, record: dict[str, Any], created: list[Path]):
        self.out, self.path, self.fd, self.record, self.created = out, out / LOCK_NAME, fd, record, created
        self.pid = os.getpid()

    @classmethod
    def acquire(cls, out: str | Path) -> RunLock:
        """Own ``out`` (created if missing) or raise one :class:`BlazeportError` naming its owner."""
        out = Path(out)
        created = _make_folders(out)
        try:
            return cls._take(out, created)
        except BaseException:
            _remove_empty(created)
            raise

    @classmethod
    def _take(cls, out: Path, created: list[Path]) -> RunLock:
        path = out / LOCK_NAME
        key = os.path.realpath(path)
        if key in _HELD:
            raise BlazeportError(_busy_message(out, _HELD[key].record))
        for _ in range(10):  # the owner may delete the file between our open and our lock: then retry
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise BlazeportError(f"cannot create the lock file {path} ({exc.strerror or exc}); choose another "
                                     "--out") from None
            try:
                kernel = _kernel_lock(fd)
            except _Busy:
                record = _read_record(fd)
                for _ in range(20):  # the owner writes its record just after locking: give it a moment
                    if record:
                        break
                    time.sleep(0.05)
                    record = _read_record(fd)
                os.close(fd)
                raise BlazeportError(_busy_message(out, record)) from None
            if _same_file(fd, path):
                break
            os.close(fd)
        else:
            raise BlazeportError(f"cannot lock {path}: it keeps being replaced; is another run starting into {out}?")
        try:
            note = _judge(out, path, _read_record(fd), kernel)
        except BaseException:
            os.close(fd)  # refused: the file and its record belong to another run
            raise
        record = {"pid": os.getpid(), "host": _host(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": "blazeport distill"}
        try:
            data = json.dumps(record).encode()
            os.ftruncate(fd, 0)
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise BlazeportError(f"{path}: cannot write ({exc.strerror or exc}); free space or choose another "
                                 "--out") from None
        if note:
            print(note, file=sys.stderr, flush=True)
        lock = cls(out, fd, record, created)
        _HELD[key] = lock
        return lock

    def release(self) -> None:
        """Delete the lock file and drop the kernel lock; remove ``out`` if this run created it and it is empty.

        Only in the process that acquired it: a forked worker that inherits this object releases nothing."""
        if self.fd is None or os.getpid() != self.pid:
            return
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):  # deleted before the kernel lock drops: no one locks a dead file
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        _HELD.pop(os.path.realpath(self.path), None)
        _remove_empty(self.created)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _judge(out: Path, path: Path, record: dict[str, Any] | None, kernel: bool) -> str | None:
    """We hold the kernel lock (or the filesystem has none): is the record left in the file a stale one
    to take over (returns the note to print), or an owner we cannot rule out (raises)?"""
    if record is None:
        return None  # a fresh file (or an empty one): nobody to take over from
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        return f"{out}: took over a lock file with no readable owner record ({path}; its run ended while writing it)"
    if host != _host():
        raise BlazeportError(_busy_message(
            out, record, f"; this is host {_host()}, which cannot see whether it still runs: if no run into {out} is "
            f"active on {host}, delete {path}"))
    if _alive(pid):
        held = "does not hold the lock" if kernel else "may still run"
        raise BlazeportError(_busy_message(
            out, record, f"; pid {pid} {held}: if it is not a blazeport run into this folder, delete {path}"))
    return (f"{out}: took over a stale lock ({_describe(record)}; that process has ended without releasing it; "
            "--resume continues from its last.pt)")


def _make_folders(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; return the ones created, outermost first."""
    missing = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BlazeportError(f"cannot create --out {out} ({exc.strerror or exc}); choose another --out") from None
    return missing[::-1]


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders this run created (innermost first) as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def run_folder_lock(out: str | Path, rank: int = 0, world: int = 1) -> Iterator[RunLock | None]:
    """Hold ``out`` for the block: rank 0 owns the lock, and under DDP every rank raises the same
    one-line error when rank 0 is refused (the other ranks would otherwise wait for it forever)."""
    lock: RunLock | None = None
    error: BlazeportError | None = None
    if rank == 0:
        try:
            lock = RunLock.acquire(out)
        except BlazeportError as exc:
            error = exc
    if world > 1:
        import torch.distributed as dist  # only under torchrun

        if dist.is_initialized():
            verdict = [str(error) if error is not None else None]
            dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None:
                dist.barrier()  # every rank has the verdict before any leaves: gloo aborts a rank whose peer is gone
                error = error or BlazeportError(verdict[0])
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
