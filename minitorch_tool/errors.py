"""Errors: however a run ends early, one line on stderr and no traceback. A bad file or flag
exits with 2, a torch failure (out of memory, a torchrun peer gone) with 1, Ctrl-C or a kill
with 128 + the signal's number. The first line wins: a signal after it changes nothing.

This room imports no torch, so that minitorch_run.py can catch a Ctrl-C while torch loads.
"""

import contextlib
import io
import os
import signal
import sys
import threading

# What stops a run from outside: Ctrl-C, kill (and docker stop, timeout, a scheduler's time
# limit), a closed terminal. Windows has no SIGHUP.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name)]


class InputError(Exception):
    """A bad file or flag: the run prints the message as one line and exits with code 2."""


phase = "starting"  # while torch loads; then "running" in a run; "ended" once its line is out


def on_stop_signal(signum, frame):
    """A stop signal: while the program starts, one line and exit; in a run, KeyboardInterrupt
    (with the signal's number) where the run is, as Ctrl-C; after the run's line, nothing."""
    global phase
    if phase == "starting":
        say("interrupted while starting: nothing was written")
        os._exit(128 + signum)
    if phase == "running":
        phase = "ended"  # a second signal, while the first is handled, is ignored
        raise KeyboardInterrupt(signum)  # what is half-written is removed on the way out


def catch_stop_signals() -> dict:
    """Stop signals go to on_stop_signal from now on, but those the process was started to
    ignore (nohup, trap '' HUP); returns the handlers it replaces."""
    return {s: signal.signal(s, on_stop_signal) for s in STOP_SIGNALS
            if signal.getsignal(s) is not signal.SIG_IGN}


@contextlib.contextmanager
def one_line_errors(summary):
    """The run's guard: whatever stops the run is one line, `summary()` appended (what --out
    holds now, or None before the run has an --out). Yields an ExitStack for what must be
    undone at the end (the lock on --out, the torchrun process group). stdout is a Console:
    a closed pipe or a console's encoding cannot stop the run."""
    global phase
    ours = threading.current_thread() is threading.main_thread()  # only it has signals
    stdout, sys.stdout = sys.stdout, Console(sys.stdout)
    replaced, phase = (catch_stop_signals(), "running") if ours else ({}, phase)
    try:
        with contextlib.ExitStack() as cleanup:
            try:
                yield cleanup
            finally:  # the run is over: no signal stops its line, or the cleanup
                phase = "ended" if ours else phase
    except (Exception, KeyboardInterrupt) as e:
        code, line = ending(e)
        held = summary()
        if code is None:  # a bug of ours: what --out holds, then its traceback
            say(f"error: {type(e).__name__}, a bug (its traceback follows); "
                f"{held or 'nothing was written'}")
            raise
        say(f"{line}: {held or 'nothing was written'}" if code > 128 else
            f"{line}; {held}" if held else line)
        sys.exit(code)
    finally:  # a notebook's own handlers back; on the command line, every later signal
        sys.stdout = stdout  # ignored, to the exit (Python restores no SIG_IGN as it ends)
        for signum, handler in replaced.items():
            signal.signal(signum, signal.SIG_IGN if handler is on_stop_signal else handler)


def ending(error) -> tuple[int | None, str | None]:
    """The exit code and the line for what stopped the run, or (None, None): a bug of ours."""
    import torch  # loaded by now: imported here so that this room loads without it

    if isinstance(error, InputError):
        return 2, f"error: {error}"
    if isinstance(error, KeyboardInterrupt):  # 128 + the signal: 130 Ctrl-C, 143 kill, 129 hup
        return 128 + (error.args or [signal.SIGINT])[0], "interrupted"
    if isinstance(error, MemoryError | torch.OutOfMemoryError) or (
            "can't allocate memory" in str(error)):  # the CPU allocator's RuntimeError
        return 1, f"error: out of memory ({first_line(error)}); try a smaller --batch-size"
    if isinstance(error, torch.distributed.DistError):  # a process of the job stopped
        return 1, f"error: a process of this torchrun job stopped ({first_line(error)})"
    return None, None


def say(line):
    """The line on stderr, every control character escaped (a file's name or cell could hold
    an escape sequence for the terminal), from rank 0 only: under torchrun every rank meets
    the same error. Never fails: with stderr closed or full the exit code speaks."""
    if rank() == 0:
        Console(sys.stderr).write(printable(line) + "\n")


def rank() -> int:
    """This process's rank as torchrun set it (with TORCHELASTIC_RUN_ID, a RANK below
    WORLD_SIZE), or 0: a plain run, or variables set by hand, whose errors must be seen."""
    rank, world = (os.environ.get(name, "") for name in ("RANK", "WORLD_SIZE"))
    valid = all(n.isascii() and n.isdigit() for n in (rank, world)) and int(rank) < int(world)
    return int(rank) if valid and "TORCHELASTIC_RUN_ID" in os.environ else 0


def printable(text) -> str:
    """`text` with every character that is not printable (ESC, \\n, \\r, ...) as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def shown(text, limit=40) -> str:
    """A name from a file, for a message: cut to `limit` characters (say escapes it)."""
    return text[:limit] + ("..." if len(text) > limit else "")


def quoted(text, limit=40) -> str:
    """A value from a file, for a message: quoted, and cut to `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class Console:
    """A stream (stdout, stderr) whose writes never stop the run. A character the console's
    encoding lacks (cp1252 and 結果) is written as its escape. When the program reading a
    pipe exits (| head -1), or the disk is full, the rest goes to os.devnull."""

    def __init__(self, stream):
        self.stream = stream or io.StringIO()  # None: Python started with it closed (>&-)

    def write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()  # now, while we can catch it, not at exit
        except UnicodeEncodeError:
            encoding = self.stream.encoding
            self.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except (OSError, ValueError):  # BrokenPipeError among them; ValueError: closed
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return len(text)

    def __getattr__(self, name):  # flush, fileno, isatty, ...: the stream's own
        return getattr(self.stream, name)
