"""Errors: a bad file or flag, Ctrl-C or a kill ends a run with one line and no traceback."""

import contextlib
import os
import signal
import sys
import threading

import torch.distributed as dist

# What stops a run from outside: Ctrl-C, kill (and docker stop, timeout, a scheduler's time
# limit), a closed terminal. Windows has no SIGHUP.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name)]


class InputError(Exception):
    """A bad file or flag: the run prints the message as one line and exits with code 2."""


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the run is, like Ctrl-C: what is half-written is removed."""

    def __init__(self, signum):
        super().__init__(signum)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for kill


@contextlib.contextmanager
def one_line_errors(interrupted):
    """The run's guard. An InputError ends it with one line on stderr and exit code 2; Ctrl-C,
    SIGTERM or SIGHUP with the line interrupted() returns and exit code 128 + the signal's
    number; no traceback either way (and under torchrun, from rank 0 only). A second signal
    while the first is handled waits. Output to a closed pipe (| head) is dropped, not fatal.
    Yields an ExitStack for what must be undone at the end (the lock on --out); the process
    group of torchrun is left, and the signal handlers put back, whatever ends the run."""
    stdout = sys.stdout
    sys.stdout = QuietWhenPipeCloses(stdout or open(os.devnull, "w"))  # noqa: SIM115 (>&-)
    handlers = catch_stop_signals()
    try:
        with contextlib.ExitStack() as cleanup:
            yield cleanup
    except InputError as e:
        say_error(f"error: {e}")
        sys.exit(2)
    except dist.DistError as e:  # a process of the torchrun job stopped: its rank 0 says why
        say_error(f"error: a process of this torchrun job stopped ({first_line(e)})")
        sys.exit(2)
    except KeyboardInterrupt as e:
        say_error(interrupted())
        sys.exit(getattr(e, "exit_code", 128 + signal.SIGINT))
    finally:
        sys.stdout = stdout
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def catch_stop_signals() -> dict:
    """From here on a stop signal raises Stopped where the run is; the handlers it replaces
    are returned, to be put back. Only the main thread can set them (a notebook's is)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        for s in STOP_SIGNALS:  # a second Ctrl-C must not break the cleanup of the first
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    return {s: signal.signal(s, stop) for s in STOP_SIGNALS}


def say_error(line):
    """The line on stderr, every control character in it escaped (a file's name or cell
    could hold an escape sequence for the terminal), from rank 0 only: under torchrun every
    rank meets the same error. Never fails: with stderr closed or full the exit code speaks."""
    rank = dist.get_rank() if dist.is_initialized() else rank_before_joining()
    if rank != 0:
        return
    try:
        print(printable(line), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # 2>/dev/full, 2>&1 | true, a closed stderr
        with contextlib.suppress(OSError, ValueError):  # nor at exit, when Python flushes
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


def rank_before_joining() -> int:
    """This process's rank as torchrun set it (with TORCHELASTIC_RUN_ID, a RANK below
    WORLD_SIZE), or 0: a plain run, or variables set by hand, whose errors must be seen."""
    rank, world = (os.environ.get(name, "") for name in ("RANK", "WORLD_SIZE"))
    valid = all(n.isascii() and n.isdigit() for n in (rank, world)) and int(rank) < int(world)
    return int(rank) if valid and "TORCHELASTIC_RUN_ID" in os.environ else 0


def printable(text) -> str:
    """`text` with every character that is not printable (ESC, \\n, \\r, ...) as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def shown(text, limit=40) -> str:
    """A name from a file, for a message: cut to `limit` characters (say_error escapes it)."""
    return text[:limit] + ("..." if len(text) > limit else "")


def quoted(text, limit=40) -> str:
    """A value from a file, for a message: quoted, and cut to `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class QuietWhenPipeCloses:
    """sys.stdout for the run. When the program reading a pipe exits (| head -1), print would
    raise BrokenPipeError and stop the run halfway through its files; instead the rest of the
    output goes to os.devnull. The same for any other failed write (> /dev/full)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()  # now, while we can catch it, not at exit
        except OSError:  # BrokenPipeError among them
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return len(text)

    def __getattr__(self, name):  # flush, fileno, isatty, ...: the stream's own
        return getattr(self.stream, name)
