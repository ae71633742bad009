"""Worker processes for ``data.prepare``: an ordered, bounded pool of plain subprocesses.

Why not ``multiprocessing``:

- Its "spawn" and "forkserver" start methods prepare every child by re-importing the caller's
  ``__main__``. A script that calls ``prepare(..., num_workers=2)`` at top level without an
  ``if __name__ == "__main__":`` guard runs its top-level code again in each child, and the pool
  fails ("An attempt has been made to start a new process before the current process has
  finished its bootstrapping phase"). Users should not need a guard to call a library.
- A daemonic process (a ``multiprocessing.Pool`` task, a PyTorch ``DataLoader`` worker, ...)
  may not have ``multiprocessing`` children at all ("daemonic processes are not allowed to have
  children"). That rule is ``multiprocessing``'s bookkeeping, not the operating system's.

Why not "fork": the Rust core runs a rayon thread pool, and a fork copies the locks that other
threads hold without the threads, so a child can hang forever (CPython 3.12 warns about it).

So each worker is a fresh ``python -c 'from tokensmith.data._workers import serve; serve()'``
started with :mod:`subprocess`. It imports tokensmith and what the pickled function and state
name, never the caller's ``__main__`` (a function or class defined in ``__main__`` therefore
cannot be sent; ``prepare`` sends only its own). The child gets the parent's ``sys.path`` as
``PYTHONPATH`` so it finds the same tokensmith (a ``PYTHONPATH=python`` checkout as well as a
site-packages install) and the modules next to the caller's script; its stderr is the parent's.

Wire format, both ways: frames of an 8-byte little-endian length and a pickle. The parent sends
``(function, state)`` once, then ``(index, item)`` frames; the child answers each with
``(index, True, function(state, item))`` or ``(index, False, (pickled exception or None,
traceback text))``, in the order received. The parent closes a child's stdin to stop it. A
feeder thread per child writes its frames and a reader thread per child reads its answers, so
neither side blocks on a full pipe when items or results are larger than the pipe buffer.

A dead child (killed, crashed, ``os._exit``) closes its stdout: the parent raises
:class:`WorkerError` naming the exit code instead of waiting forever. When the parent stops
early (an exception, ``KeyboardInterrupt``, an abandoned iterator) it kills and reaps the
children; when the parent itself dies, the children read end-of-file or a broken pipe and exit.
Children ignore SIGINT: a Ctrl+C in a terminal reaches the whole process group, and the parent
alone decides what it means.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

__all__ = ["WorkerError", "WorkerPool", "available_cpus", "serve"]

_LENGTH = struct.Struct("<Q")
_START_INDEX = -1  # the index of the answer a child gives when it cannot start

# ``-c`` puts the current folder ("") first on sys.path, ahead of PYTHONPATH; dropping it leaves
# the child with the parent's path (which has the current folder only if the parent's had it),
# so a stray ``tokensmith`` folder or ``pickle.py`` in the current folder cannot shadow modules.
_CHILD_CODE = (
    'import sys; sys.path[:1] = [] if sys.path[:1] == [""] else sys.path[:1]; '
    "from tokensmith.data._workers import serve; serve()"
)


def available_cpus() -> int:
    """The number of CPUs this process may run on: its affinity mask (``taskset``, container
    cpusets, ``PYTHON_CPU_COUNT`` on 3.13+), not every CPU of the machine.

    >>> available_cpus() >= 1
    True
    """
    count: int | None
    if hasattr(os, "process_cpu_count"):  # 3.13+
        count = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, count or 1)


class WorkerError(RuntimeError):
    """A worker process died or could not start. ``index`` is the position (in the items given
    to :meth:`WorkerPool.imap`) of the first item it had not answered, when known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its ``__cause__``."""

    def __str__(self) -> str:
        return f"\n\n(in a worker process)\n{self.args[0]}"


# ----------------------------------------------------------------------------- frames


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at end of file (also in the middle of a frame: the writer died)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


# ----------------------------------------------------------------------------- child


def serve() -> None:
    """The body of a worker process: answer frames on stdin with frames on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    # What the work prints (or a library it calls) must never land inside the frames: fd 1 and
    # sys.stdout now go to stderr, and stdin reads nothing.
    sys.stdout.flush()
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        first = _read_frame(requests)
        if first is None:
            return
        try:
            function, state = pickle.loads(first)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            _write_frame(replies, _dumps((_START_INDEX, False, _describe(e))))
            sys.exit(1)
        while (frame := _read_frame(requests)) is not None:
            index, item = pickle.loads(frame)
            try:
                answer = _dumps((index, True, function(state, item)))
            except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
                answer = _dumps((index, False, _describe(e)))
            _write_frame(replies, answer)
    except BrokenPipeError:
        os._exit(1)  # the parent is gone; nobody is left to tell


def _describe(e: BaseException) -> tuple[bytes | None, str]:
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        return _dumps(e), text
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        return None, text


# ----------------------------------------------------------------------------- parent


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths: list[str] = []
    for p in sys.path:
        if isinstance(p, str):
            p = os.path.abspath(p) if p else os.getcwd()  # "" is the current folder
            if p not in paths:
                paths.append(p)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class _Worker:
    """One child process, the thread that writes its frames and the thread that reads its answers."""

    def __init__(self, start_frame: bytes, env: dict[str, str], answers: queue.SimpleQueue) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.pending: deque[int] = deque()  # indices sent and not answered yet, in order
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._outbox.put(start_frame)
        self._answers = answers
        self._feeder = threading.Thread(target=self._feed, name=f"tokensmith-feed-{self.process.pid}", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"tokensmith-read-{self.process.pid}", daemon=True)
        self._feeder.start()
        self._reader.start()

    def send(self, index: int, frame: bytes) -> None:
        self.pending.append(index)
        self._outbox.put(frame)

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (frame := self._outbox.get()) is not None:
                _write_frame(stdin, frame)
        except (OSError, ValueError):
            pass  # the child died; its reader reports that
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while (frame := _read_frame(stdout)) is not None:
                self._answers.put((self, pickle.loads(frame)))
        except Exception as e:  # noqa: BLE001 - handed to the main thread
            self._answers.put((self, e))
        finally:
            self._answers.put((self, None))

    def stop(self) -> None:
        """Ask the child to finish: it exits after answering what it was sent."""
        self._outbox.put(None)

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.kill()
            except OSError:
                pass
        self._outbox.put(None)

    def join(self, timeout: float | None = None) -> int:
        """Wait for the child (killing it after ``timeout`` seconds) and its threads."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._feeder.join(5)
        self._reader.join(5)
        # At interpreter shutdown daemon threads are frozen where they stand, perhaps inside a
        # read holding the pipe's lock: closing it then aborts the process. The OS closes it.
        if self.process.stdout is not None and not self._reader.is_alive() and not sys.is_finalizing():
            self.process.stdout.close()
        return code

    def describe_exit(self) -> str:
        try:
            code = self.process.wait(5)  # it closed its stdout: it is exiting
        except subprocess.TimeoutExpired:
            self.process.kill()
            return f"worker process {self.process.pid} closed its output and was killed"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if name == "SIGKILL" else ""
            return f"worker process {self.process.pid} was killed by {name}{hint} (exit code {code})"
        return f"worker process {self.process.pid} died with exit code {code}"


class WorkerPool:
    """``function(state, item)`` for each item, in ``workers`` child processes, results in the
    order of the items. ``function`` and ``state`` are pickled once per child; ``function`` must
    be importable by name (a module-level function outside ``__main__``).

    >>> with WorkerPool(_encode_chunk, encoder, 4) as pool:          # doctest: +SKIP
    ...     for encoded in pool.imap(chunks):
    ...         ...

    At most ``max_in_flight`` items are sent and not yet returned (default four per worker), and
    beyond one item per worker no more than ``max_bytes_in_flight`` bytes of pickled items, so
    memory stays bounded whatever the size of the input.
    """

    def __init__(
        self,
        function: Callable[[Any, Any], Any],
        state: Any,
        workers: int,
        *,
        max_in_flight: int | None = None,
        max_bytes_in_flight: int = 256 << 20,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if not sys.executable:
            raise WorkerError("cannot start worker processes: sys.executable is not set (use num_workers=1)")
        self.max_in_flight = max(workers, max_in_flight or 4 * workers)
        self.max_bytes_in_flight = max_bytes_in_flight
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._next_index = 0
        self._closed = False
        start_frame = _dumps((function, state))
        env = _child_env()
        try:
            for _ in range(workers):
                self._workers.append(_Worker(start_frame, env, self._answers))
        except BaseException:
            self.terminate()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def imap(self, items: Iterable[Any]) -> Iterator[Any]:
        """Results in the order of ``items``. An exception raised by ``function`` in a worker is
        raised here (its remote traceback as ``__cause__``); a worker that dies raises
        :class:`WorkerError`. Either, or leaving the loop early, terminates the pool."""
        if self._closed:
            raise ValueError("the worker pool is closed")
        base = self._next_index  # indices of this call start here (WorkerError.index is relative)
        sizes: dict[int, int] = {}  # index -> bytes of its frame, for items sent and not yielded
        done: dict[int, Any] = {}
        sent = yielded = bytes_in_flight = 0
        source = iter(items)
        finished = False
        try:
            while True:
                while source is not None and (
                    sent - yielded < len(self._workers)
                    or (sent - yielded < self.max_in_flight and bytes_in_flight < self.max_bytes_in_flight)
                ):
                    try:
                        item = next(source)
                    except StopIteration:
                        source = None
                        break
                    index = base + sent
                    frame = _dumps((index, item))
                    del item
                    min(self._workers, key=lambda w: len(w.pending)).send(index, frame)
                    sizes[index] = len(frame)
                    bytes_in_flight += len(frame)
                    sent += 1
                    self._next_index = base + sent
                if yielded == sent:
                    finished = True
                    return
                while base + yielded not in done:
                    self._receive(done, base)
                result = done.pop(base + yielded)
                bytes_in_flight -= sizes.pop(base + yielded)
                yielded += 1
                yield result
        finally:
            if not finished:
                self.terminate()

    def _receive(self, done: dict[int, Any], base: int) -> None:
        worker, answer = self._answers.get()
        if answer is None or isinstance(answer, BaseException):
            index = worker.pending[0] - base if worker.pending else None
            message = worker.describe_exit()
            if isinstance(answer, BaseException):
                message += f" (its output could not be read: {answer!r})"
            raise WorkerError(message, index)
        index, ok, value = answer
        if index == _START_INDEX:
            raise WorkerError(
                f"worker process {worker.process.pid} could not load what it runs "
                f"({value[1].strip().splitlines()[-1]}); functions and classes sent to workers must be "
                "importable by name, from a module outside __main__"
            ) from _RemoteTraceback(value[1])
        worker.pending.popleft()
        if ok:
            done[index] = value
            return
        pickled, text = value
        error: BaseException | None = None
        if pickled is not None:
            try:
                error = pickle.loads(pickled)
            except Exception:  # noqa: BLE001 - fall back to the text
                error = None
        if not isinstance(error, BaseException):
            error = WorkerError(f"a worker raised: {text.strip().splitlines()[-1]}", index - base)
        raise error from _RemoteTraceback(text)

    def close(self) -> None:
        """Let the workers finish what they were sent, then wait for them."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.stop()
        for w in self._workers:
            w.join(60)

    def terminate(self) -> None:
        """Kill the workers now and reap them (no orphans, no zombies)."""
        self._closed = True
        for w in self._workers:
            w.kill()
        for w in self._workers:
            w.join()
