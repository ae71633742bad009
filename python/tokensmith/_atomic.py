"""Folders that appear whole or not at all, written by one run at a time."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs into one folder are not serialized
    fcntl = None  # type: ignore[assignment]


def temp_folder_for(out: Path) -> Path:
    """The hidden folder next to ``out`` that this process writes it in."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def exists_message(out: Path) -> str:
    return f"{out}: already exists (pass overwrite=True / --overwrite to replace it)"


def partial_folder_for(out: Path) -> Path:
    """The hidden folder next to ``out`` where a resumable run keeps its work."""
    return out.parent / f".{out.name}.partial"


#: What a resumable run writes into its folder once there is something to resume from.
RESUME_STATE = "resume.json"


@contextmanager
def atomic_folder(
    out: Path, *, overwrite: bool = False, error: type[Exception] = FileExistsError, resume: bool | None = None
) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``out``; when the block ends it becomes ``out``
    (one rename), and when the block raises (KeyboardInterrupt too) it is removed, so an
    interrupted run leaves no half-written output.

    A resumable run (``resume`` not None) works in ``.NAME.partial`` instead, and a run that
    ends early keeps it there once it holds a ``RESUME_STATE`` file (the caller's record of
    what is done): ``resume=True`` yields it as it is, to go on from there; ``resume=False``
    starts afresh.

    The run holds a lock on ``out`` from start to end: a second run into the same folder
    fails at once (``error``) instead of both succeeding and one result silently replacing
    the other. Without ``overwrite`` an existing ``out`` is an error, checked under the lock
    when the run starts and again before the rename. With ``overwrite`` the old folder is
    moved aside, the new one renamed in, and the old one deleted.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out, error):
        if not overwrite and out.exists():
            raise error(exists_message(out))
        tmp = temp_folder_for(out) if resume is None else partial_folder_for(out)
        resuming = bool(resume) and (tmp / RESUME_STATE).exists()
        if not resuming:
            shutil.rmtree(tmp, ignore_errors=True)  # a dead run's (whose pid this process now has)
        try:
            tmp.mkdir(exist_ok=resuming)
            yield tmp
            if out.exists():
                if not overwrite:
                    raise error(exists_message(out))  # made since by something that takes no lock
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            if resume is None or not (tmp / RESUME_STATE).exists():
                shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def _lock(out: Path, error: type[Exception]) -> Iterator[None]:
    """An exclusive lock on ``.NAME.lock`` next to ``out``. The operating system drops it
    when the process ends, however it ends (a killed run leaves no stale claim), and the
    file is removed when the run is done."""
    if fcntl is None:
        yield
        return
    path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise error(f"{out}: another run is writing it now") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the live lock file, not one the previous holder just removed
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # still holding the lock: the next run locks a new file
        except OSError:
            pass
        os.close(fd)
