"""Errors: however a run ends early, one line on stderr (the first wins) and exit 2 for a bad
file or flag, 1 for torch (no memory, a torchrun peer gone), 128 + N for signal N."""

import contextlib
import io
import os
import signal
import sys
import threading

# Ctrl-C, kill (docker stop, timeout, a scheduler's limit), a closed terminal; Windows: no HUP
STOP_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
phase = "starting"  # while torch loads; then "running" in a run; "ended" once its line is out
held_signals = None  # while a group of files is renamed: the stop signals that wait for it


class InputError(Exception):
    """A bad file or flag: the run prints the message as one line and exits with code 2."""


def on_stop_signal(signum, frame):
    """Starting: one line and exit. Running: KeyboardInterrupt, or held. Ended: nothing."""
    global phase
    if phase == "starting":
        say("interrupted while starting: nothing was written")
        os._exit(128 + signum)
    if phase == "running" and held_signals is not None:
        held_signals.append(signum)
    elif phase == "running":
        phase = "ended"  # a second signal, while the first is handled, is ignored
        raise KeyboardInterrupt(signum)  # what is half-written is removed on the way out


@contextlib.contextmanager
def signals_held():
    """Stop signals wait for the block's end. A handler runs between two bytecodes of the main
    thread, never inside os.replace: a group of renames is done whole."""
    global held_signals
    held_signals = []
    try:
        yield
    finally:
        waiting, held_signals = held_signals, None
    if waiting:
        on_stop_signal(waiting[0], None)


def catch_stop_signals() -> dict:  # but those ignored from the start (nohup, trap '' HUP)
    return {s: signal.signal(s, on_stop_signal) for s in STOP_SIGNALS
            if signal.getsignal(s) is not signal.SIG_IGN}


@contextlib.contextmanager
def one_line_errors(summary):
    """Whatever stops the run is one line, with `summary()`; yields the run's ExitStack."""
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
        outcome = summary() or ("" if code in (1, 2) else "nothing was written")  # in --out
        say(f"{line}{': ' if code and code > 128 else '; '}{outcome}" if outcome else line)
        if code is None:  # a bug of ours: its traceback follows the line
            raise
        sys.exit(code)
    finally:  # the handlers we replaced put back (a notebook keeps its own); on the command
        sys.stdout = stdout  # line, stop signals ignored from here until the process exits
        for signum, handler in replaced.items():
            signal.signal(signum, signal.SIG_IGN if handler is on_stop_signal else handler)


def ending(error) -> tuple[int | None, str]:
    """The exit code and the line for what stopped the run; no code for a bug of ours."""
    import torch  # loaded by now: imported here so that this room loads without it
    if isinstance(error, InputError):
        return 2, f"error: {error}"
    if isinstance(error, KeyboardInterrupt):  # 128 + the signal: 130 Ctrl-C, 143 kill, 129 hup
        return 128 + (error.args or [signal.SIGINT])[0], "interrupted"
    if isinstance(error, MemoryError | torch.OutOfMemoryError) or "can't allocate" in str(error):
        return 1, f"error: out of memory ({first_line(error)}); try a smaller --batch-size"
    if isinstance(error, torch.distributed.DistError) or "/gloo/" in str(error):  # a peer gone
        return 1, f"error: a process of this torchrun job stopped ({first_line(error)})"
    return None, f"error: {type(error).__name__}, a bug (its traceback follows)"


def say(line):
    """The line on stderr, from rank 0 only, unprintable characters escaped (a file's text)."""
    rank, world = (os.environ.get(name, "") for name in ("RANK", "WORLD_SIZE"))
    ranked = all(n.isascii() and n.isdigit() for n in (rank, world)) and int(rank) < int(world)
    if not (ranked and "TORCHELASTIC_RUN_ID" in os.environ and int(rank) > 0):  # by hand: rank 0
        Console(sys.stderr).write("".join(
            c if c.isprintable() else c.encode("unicode_escape").decode() for c in line) + "\n")


def shown(text, limit=40) -> str:  # a name from a file, cut short (say escapes it)
    return text[:limit] + ("..." if len(text) > limit else "")


def quoted(text, limit=40) -> str:  # a value from a file, quoted and cut short
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class Console:
    """A stream whose writes never stop the run (cp1252 and 結果, | head -1, a full disk)."""

    def __init__(self, stream):
        self.stream = stream or io.StringIO()  # None: Python started with it closed (>&-)

    def write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()  # now, while we can catch it, not at exit
        except UnicodeEncodeError:  # a character the encoding lacks, as its escape
            self.write(text.encode(self.encoding, "backslashreplace").decode(self.encoding))
        except (OSError, ValueError):  # BrokenPipeError among them; ValueError: closed
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return len(text)

    def __getattr__(self, name):  # flush, fileno, isatty, ...: the stream's own
        return getattr(self.stream, name)
