"""Slice processes: one merge's inputs, cut into contiguous slices, the later ones
read and sorted by processes of their own (docs/guarantees.md "How a run works").

Why processes: reading a tiny raw Parquet file costs pyarrow about half a
millisecond of CPU, most of it holding the GIL, so threads cannot spread a
partition of thousands of files over the cores; processes can. The job merges
the first slice itself; each later slice's process (compressor.merge.worker)
scans its footers, then sorts its rows exactly as a one-process merge sorts a
run, into an Arrow IPC file in the merge's work dir. The job then merges the
slices k ways, ties to the earlier slice (an earlier slice holds earlier
inputs), so the output is the one-process merge's, byte for byte
(slice_merge.merge_in_slices).

This module is the job's side of the conversation: start a slice process, send
its job, receive its messages, stop it. Messages are pickles framed by a length,
on the process's stdout; only this package's own child writes them. A failure in
the child comes back as the same typed error a one-process merge raises (naming
the same file and column), see `describe_error`.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from compressor.merge import errors as merge_errors
from compressor.merge.errors import MergeAborted, MergeInputError, MergeResourceError

#: The child's module, run with `python -m`.
WORKER_MODULE = "compressor.merge.worker"
#: How often a parent waiting for a slice polls its stop request, seconds.
POLL_S = 0.2
#: How long a slice ended by SIGTERM/SIGINT waits for the job's own stop request.
STOP_GRACE_S = 1.0
_FRAME = struct.Struct("<Q")


@dataclass(frozen=True)
class SliceJob:
    """What one slice process is asked to do (a JSON file it is given)."""

    paths: list[str]
    #: The file the sorted rows go to.
    target: str
    work_dir: str
    settings: dict[str, int]

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SliceJob:
        return cls(**json.loads(data))


def send(stream: BinaryIO, message: tuple[str, Any]) -> None:
    """One message: its pickle's length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(body)) + body)
    stream.flush()


def describe_error(exc: BaseException) -> dict[str, Any]:
    """A child's failure as plain data, from which `rebuild_error` makes it again."""
    if isinstance(exc, MergeInputError):
        return {"kind": "input", "class": type(exc).__name__, "path": exc.path,
                "reason": exc.reason, "column": exc.column}
    if isinstance(exc, MergeResourceError):
        return {"kind": "resource", "path": exc.path, "action": exc.action,
                "errno": exc.errno, "message": exc.message}
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, OSError):  # a full temp disk (ENOSPC, EDQUOT) among others
        strerror = str(exc.strerror or first).strip().splitlines()
        return {"kind": "os", "errno": exc.errno, "filename": exc.filename,
                "strerror": strerror[0] if strerror else type(exc).__name__}
    if isinstance(exc, MemoryError):
        return {"kind": "memory", "text": first}
    return {"kind": "other", "type": type(exc).__name__, "text": first}


class SliceFailed(RuntimeError):
    """A slice process failed in a way a one-process merge has no typed error for."""


def rebuild_error(described: dict[str, Any], slice_name: str) -> BaseException:
    """The typed error a child described (the class and words it had).

    A merge error is rebuilt as itself; an OSError keeps its errno (so a full temp
    disk is still recognised as one, docs/guarantees.md "Guarantees under failure"), a
    MemoryError stays one; only what a one-process merge has no class for either
    becomes SliceFailed."""
    kind = described["kind"]
    if kind == "input":
        cls = getattr(merge_errors, described["class"], None)
        if isinstance(cls, type) and issubclass(cls, MergeInputError):
            return cls(described["path"], described["reason"], described["column"])
    if kind == "resource":
        code = described["errno"]
        cause = OSError(code, os.strerror(code)) if code else MemoryError(described["message"])
        error = MergeResourceError(described["path"], described["action"], cause)
        error.message = described["message"]
        return error
    if kind == "os":  # OSError(errno, ...) is the builtin subclass the errno calls for
        if described["errno"] is None:
            return OSError(f"{slice_name}: {described['strerror']}")
        return OSError(described["errno"], described["strerror"], described["filename"])
    if kind == "memory":
        return MemoryError(f"{slice_name}: {described['text']}")
    return SliceFailed(f"{slice_name}: {described.get('type')}: {described.get('text')}")


class SliceProcess:
    """One slice process. It is started before its job is known: it imports what it
    needs (about a quarter of a second), then waits for the path of its job file on
    its stdin; messages come on its stdout.

    A job file, not the job itself on stdin: a slice of thousands of paths is more
    than a pipe holds, and writing it would wait for the child to finish importing
    before this process could go on with its own slice. A path always fits.
    """

    def __init__(self) -> None:
        self.name = "a slice process"
        self.first_path = ""
        self._proc = subprocess.Popen(
            # -P: not the working directory first on sys.path, which may hold
            # another `compressor` (a checkout the operator runs from)
            [sys.executable, "-P", "-m", WORKER_MODULE, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env(), close_fds=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin
        self._out = self._proc.stdout

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def give(self, name: str, job: SliceJob, first_path: str, job_file: Path) -> None:
        """Hand it its job. A process that is gone by then fails its first `receive`,
        naming `first_path`."""
        self.name = name
        self.first_path = first_path
        job_file.write_bytes(job.to_json())
        try:
            self._in.write(os.fsencode(job_file) + b"\n")
            self._in.close()
        except BrokenPipeError:
            pass

    def receive(self, should_stop: Callable[[], bool]) -> tuple[str, Any]:
        """The next message; MergeAborted on a stop request; an error naming the
        slice's first input if the process ended without saying why."""
        while True:
            ready, _, _ = select.select([self._out], [], [], POLL_S)
            if ready:
                break
            if should_stop():
                raise MergeAborted("merge interrupted")
        header = self._out.read(_FRAME.size)
        if len(header) < _FRAME.size:
            raise self._died(should_stop)
        (length,) = _FRAME.unpack(header)
        body = self._out.read(length)
        if len(body) < length:
            raise self._died(should_stop)
        kind, payload = pickle.loads(body)
        if kind == "error":
            raise rebuild_error(payload, self.name)
        return kind, payload

    def _died(self, should_stop: Callable[[], bool]) -> BaseException:
        """Why the process ended without a word: the job stopping (a signal that reached
        every process of the job, before this one could ignore it), or a resource error."""
        status = self._proc.wait()
        if status in (-signal.SIGTERM, -signal.SIGINT):
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:  # the job's own handler runs in a moment
                if should_stop():
                    return MergeAborted("merge interrupted")
                time.sleep(0.01)
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        return MergeResourceError(self.first_path, f"sorting {self.name} in its own process",
                                  ChildProcessError(f"the process ended ({how})"))

    def finish(self) -> None:
        """Reap a process that has said its last word."""
        self._out.close()
        self._proc.wait()

    def kill(self) -> None:
        """Stop it now, whatever it is doing (safe to call more than once)."""
        if self._proc.poll() is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
        self._proc.wait()
        for pipe in (self._in, self._out):
            try:
                pipe.close()
            except BrokenPipeError:
                pass


class Spares:
    """Slice processes started ahead of their merge (docs/guarantees.md "How a run
    works"): the command starts them before its own imports (compressor/launch.py)
    and the run tops them up before it plans, so their imports overlap the job's
    instead of delaying the first merge's slices; the merge takes one where it would
    start a process. A spare's job path is the only thing it waits for."""

    def __init__(self) -> None:
        self._idle: list[SliceProcess] = []
        self._lock = threading.Lock()

    def start(self, count: int) -> None:
        with self._lock:
            while len(self._idle) < count:
                self._idle.append(SliceProcess())

    def keep(self, count: int) -> None:
        """Stop the spares beyond `count` (the plan needs no more)."""
        with self._lock:
            extra, self._idle = self._idle[count:], self._idle[:count]
        for process in extra:
            process.kill()

    def take(self) -> SliceProcess:
        """A spare that is still alive, else a new process."""
        with self._lock:
            while self._idle:
                process = self._idle.pop(0)
                if process.alive:
                    return process
                process.kill()
        return SliceProcess()

    def count(self) -> int:
        with self._lock:
            return len(self._idle)


#: The process's spares: one set, as the cores they stand for are the machine's.
SPARES = Spares()
#: Most spares a run starts before it knows its plan: one per core beyond the first.
MAX_SPARE_SLICES = 3
#: The environment variable that lowers it (0: no spares; docs/operations.md).
SPARES_VARIABLE = "MERGE_SPARE_SLICES"


def spare_limit(environ: Mapping[str, str]) -> int:
    """MERGE_SPARE_SLICES, else MAX_SPARE_SLICES; ValueError (one line naming the
    variable) for anything but 0..MAX_SPARE_SLICES."""
    text = environ.get(SPARES_VARIABLE, "").strip()
    if not text:
        return MAX_SPARE_SLICES
    if not text.isdigit() or int(text) > MAX_SPARE_SLICES:
        raise ValueError(f"{SPARES_VARIABLE}: expected 0 to {MAX_SPARE_SLICES}, got {text!r}")
    return int(text)


def spares_for(cores: int, workers: int | None, limit: int = MAX_SPARE_SLICES) -> int:
    """Spare slice processes for a run on `cores` with `workers` (None: chosen from the
    plan): none when the workers fill the cores, else one per other core, at most
    `limit`."""
    if (workers or 1) >= cores:
        return 0
    return min(limit, cores - 1)


def start_spare_slices(count: int) -> None:
    """Start slice processes ahead of the merges that will use them, up to `count`."""
    SPARES.start(count)


def keep_spare_slices(count: int) -> None:
    """Keep at most `count` spares; `keep_spare_slices(0)` stops them all."""
    SPARES.keep(count)


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable however it was found."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory holding compressor/
    paths = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root if not paths else f"{root}{os.pathsep}{paths}"
    return env
