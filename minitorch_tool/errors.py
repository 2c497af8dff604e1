"""Errors: a bad file or flag, or Ctrl-C, ends a run with one line and no traceback."""

import contextlib
import os
import sys

import torch.distributed as dist


class InputError(Exception):
    """A bad file or flag: the run prints the message as one line and exits with code 2."""


@contextlib.contextmanager
def one_line_errors(interrupted):
    """The run's guard. An InputError ends it with one line on stderr and exit code 2, Ctrl-C
    with the line interrupted() returns and exit code 130; no traceback either way (and under
    torchrun, from rank 0 only). Output to a closed pipe (| head) is dropped, not fatal. Yields
    an ExitStack for what must be undone at the end (the lock on --out); under torchrun the
    process group is left, whatever ends the run."""
    stdout = sys.stdout
    sys.stdout = QuietWhenPipeCloses(stdout or open(os.devnull, "w"))  # noqa: SIM115 (>&-)
    try:
        with contextlib.ExitStack() as cleanup:
            yield cleanup
    except InputError as e:
        say_error(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        say_error(interrupted())
        sys.exit(130)
    finally:
        sys.stdout = stdout
        if dist.is_initialized():
            dist.destroy_process_group()


def say_error(line):
    """The line on stderr (a newline in a file's name would break it: shown as \\n), from rank
    0 only: under torchrun every rank meets the same error."""
    if not dist.is_initialized() and "LOCAL_RANK" in os.environ:  # torchrun, before joining
        rank = int(os.environ.get("RANK", "0"))
    else:
        rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        print(line.replace("\n", "\\n").replace("\r", "\\r"), file=sys.stderr)


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
