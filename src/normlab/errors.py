"""The exceptions a user meets (a mistake they can fix, a run that failed, a run stopped by a signal) and the one
home of signal handling: how SIGINT/SIGTERM become Interrupted in the main thread, in runs on other threads,
and around Ray's calls.

Messages below the command line name settings by their config names inside braces ("{batch_size}");
``UserError.render`` turns them into whatever the caller calls them: ``--batch-size`` on the command
line, ``batch_size`` from Python.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def python_name(setting: str) -> str:
    return setting


def shown(text: str) -> str:
    """``text`` with its control characters escaped (``\\x0a``): a newline in a folder's name must not forge a line,
    nor a C1 code (U+009B, or the byte 0x9b of a path that is not UTF-8) start a terminal sequence."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\udc80-\udc9f]", lambda m: f"\\x{ord(m.group()) & 0xff:02x}", text)


def say(line: str) -> None:
    """Print a log line: its leading newlines are blank lines, any other control character is shown escaped."""
    body = line.lstrip("\n")
    print("\n" * (len(line) - len(body)) + shown(body))


class UserError(Exception):
    """Bad input or missing data: what is wrong and how to fix it, in one line.

    ``setting`` and ``value``, when given, say which setting holds the bad value; the message follows them.
    """

    def __init__(self, message: str, setting: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message, self.setting, self.value = message, setting, value

    def render(self, name: Callable[[str], str] = python_name) -> str:
        """The line, control characters of paths and values shown escaped (a newline in a folder's name must not
        forge a second line)."""
        text = re.sub(r"\{([a-z_]+)\}", lambda m: name(m.group(1)), self.message)
        if self.setting is not None:
            value = " ".join(map(str, self.value)) if isinstance(self.value, list | tuple) else self.value
            text = f"{name(self.setting)} {value}: {text}"
        return shown(text)

    def __str__(self) -> str:
        return self.render()


class RunFailed(Exception):
    """A run (or some runs of a study) ended without a result: exit code 1, not a usage error."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the work; ``code`` is 128 + the signal, as a shell reports it; ``saved`` says
    what was kept, once the caller knows. A BaseException, as KeyboardInterrupt is: the ``except Exception`` of
    a library (or of normlab's own file checks) must not take it for an error of its own."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.code, self.saved = signum, 128 + signum, ""


# What stops the work as Ctrl-C does, saving what can be, and exits 128 + the signal: kill's SIGTERM, a closed terminal
# or a dropped ssh (SIGHUP), and a closed pipe on stdout (SIGPIPE: ``normlab study | head -1``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


class GuardedStream:
    """stdout or stderr that never raises: once a write fails (a closed pipe, a full disk, a terminal gone) the
    rest of the output goes nowhere, so the work is not lost for want of a place to print. A closed pipe also
    sends SIGPIPE, which stops the work (STOP_SIGNALS); other faults are said once on stderr, if it still writes."""

    def __init__(self, stream: Any, name: str, closed: bool = False) -> None:
        self.stream, self.name, self.failed = stream, name, closed
        self.error: Exception | None = OSError(errno.EBADF, "it is closed") if closed else None
        self.result = False  # the output is the command's result (summary, explain): its loss is said by the command

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                try:
                    return self.stream.write(text)
                except UnicodeEncodeError:  # a character the terminal's encoding lacks (λ on ASCII) is escaped
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except (OSError, ValueError) as e:
                self._fail(e)
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self.stream.flush()
            except (OSError, ValueError) as e:
                self._fail(e)

    def _fail(self, error: Exception) -> None:
        self.failed, self.error = True, error
        if self.name == "stdout" and not isinstance(error, BrokenPipeError) and not self.result:
            print(f"normlab: cannot write to stdout ({getattr(error, 'strerror', None) or error}); the work goes on "
                  "without printing, its results are in its folder", file=sys.stderr, flush=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def guard_output() -> None:
    """Put GuardedStreams in place of sys.stdout and sys.stderr (a closed one, None, becomes a stream to nowhere),
    writing a path's bytes as they are."""
    for name in ("stdout", "stderr"):
        closed = getattr(sys, name) is None
        stream = getattr(sys, name) or open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")  # a path's bytes that are not UTF-8 print as they are
        if not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream, name, closed))


def print_result(text: str) -> None:
    """Print what a command exists to print (summary, explain): a stdout that cannot take it (full, closed) is
    RunFailed, exit 1, where a training command would go on; a reader that stopped reading (| head) is not."""
    if isinstance(sys.stdout, GuardedStream):
        sys.stdout.result = True
    print(text)
    sys.stdout.flush()
    error = getattr(sys.stdout, "error", None)
    if error is not None and not isinstance(error, BrokenPipeError):
        raise RunFailed(f"cannot write to stdout ({getattr(error, 'strerror', None) or error}); nothing was printed")


@contextmanager
def signals_raise_interrupted() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise Interrupted wherever the program is, so ``finally`` blocks and atomic writes
    clean up; what a run had saved (its last epoch's checkpoint) stays. Only in the main thread. Each signal is
    also appended to the list yielded: one that lands in a weakref callback or a ``__del__`` is swallowed there
    (Python prints "Exception ignored") and the work goes on, so the caller looks there when the work ends."""
    received: list[int] = []

    def handle(signum: int, frame: object) -> None:
        received.append(signum)
        raise Interrupted(signum)

    def unraisable(hook: Any) -> None:  # the swallowed Interrupted is noted in ``received``, not printed
        if not isinstance(hook.exc_value, Interrupted):
            default(hook)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    default, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield received
    finally:
        sys.unraisablehook = default
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_on_signal(message: str) -> None:
    """From here to the process's end (the interpreter's teardown takes a second after torch), a stop signal prints
    ``message`` after the signal's name and exits 128 + the signal at once."""

    def handle(signum: int, frame: object) -> None:
        if signum != signal.SIGPIPE:  # a reader that stopped reading wants no word
            print(f"normlab: stopped by {signal.Signals(signum).name}; {message}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, handle)


class StopFlag(threading.Event):
    """Set when the work must stop: every run in a thread checks it at each SGD step."""

    def check(self) -> None:
        if self.is_set():
            raise Interrupted(signal.SIGTERM)


@contextmanager
def signals_recorded() -> Iterator[list[int]]:
    """SIGINT and SIGTERM appended to the list yielded instead of raising: for code inside calls (Ray's) that turn
    an exception from a signal handler into another error. Only in the main thread."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signal_handlers_kept() -> Iterator[None]:
    """The SIGINT and SIGTERM handlers as they were before the block, put back after it: ray.init installs its own,
    which exit with 15 or 1 and no word. Only in the main thread."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if main else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
