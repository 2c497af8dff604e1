"""Outputs: a run's files in --out, each whole, one run at a time, and what it wrote there."""

import contextlib
import csv
import io
import json
import os
import secrets
import shlex
import sys

import filelock

from minitorch_tool.errors import InputError, signals_held
from minitorch_tool.torchrun import mean_over_ranks, writes_files

OUTPUTS = ("model.safetensors", "last.safetensors", "predictions.csv", "metrics.json",
           "loss.png", "predictions.png")
# O_EXCL: never through a link planted there; O_BINARY: Windows writes the bytes as they are
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


class Out:
    """--out, locked for this run, and what the run wrote there (rank 0 writes, for all)."""

    def __init__(self, path, cleanup, device):
        self.path, self.existed = path, os.path.isdir(path)
        self.earlier = [n for n in OUTPUTS if os.path.isfile(os.path.join(path, n))]
        self.written = {}  # file name -> what it holds
        error = lock(path, cleanup) if writes_files() else None
        if mean_over_ranks([float(error is not None)], device) != [0.0]:  # every rank stops
            raise error or InputError("rank 0 could not prepare --out")  # only rank 0 prints

    def write(self, files):
        """{name: (bytes, what it holds)}, all to temporary files, then each renamed (atomic):
        a full disk replaces none, a crash leaves each old or new (fsync first)."""
        if not writes_files():
            return
        temporary, path, hint = {}, self.path, ""
        try:
            for name, (data, _) in files.items():
                path = os.path.join(self.path, name)
                tmp = temporary[name] = os.path.join(self.path, f".{name}.{secrets.token_hex(6)}")
                with os.fdopen(os.open(tmp, NEW_FILE, 0o666), "wb") as f:  # finally removes it
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            hint = "; is it open in another program?"  # Windows replaces no file held open
            with signals_held():  # a stop signal waits until the whole group is renamed
                for name, (_, holds) in files.items():
                    path = os.path.join(self.path, name)
                    os.replace(temporary[name], path)
                    del temporary[name]
                    self.written[name] = holds
        except OSError as e:  # a full disk; on Windows, a file another program holds open
            hint = hint if isinstance(e, PermissionError) else ""
            raise InputError(f"{path}: cannot write it ({e.strerror or e}{hint})") from None
        finally:
            for tmp in temporary.values():
                with contextlib.suppress(OSError):
                    os.remove(tmp)

    def summary(self, argv) -> str:
        """What --out holds: this run's files, an earlier run's, and how to go on."""
        if not self.written:
            return f"{self.path} is as it was" if self.existed else "nothing was written"
        wrote = ", ".join(f"{n} ({holds})" if holds else n for n, holds in self.written.items())
        earlier = ", ".join(n for n in self.earlier if n not in self.written)
        line = f"this run wrote {wrote} in {self.path}"
        line += f"; an earlier run's {earlier} stay there" if earlier else ""
        if "last.safetensors" in self.written:
            line += f"; go on with: {resume_command(argv, self.path)}"
        return line


def resume_command(argv, out) -> str:
    """The command that goes on with the run, with the program as typed (main() in a notebook:
    its name), or what to add to the command where the line would escape a character."""
    last = os.path.join(out, "last.safetensors")
    flags = [a for a, prev in zip(argv, [None, *argv], strict=False)
             if "--resume" not in (prev, a.split("=")[0])]  # drop an old --resume X
    program = sys.argv[0] if sys.argv[0].endswith("minitorch_run.py") else "minitorch_run.py"
    command = shlex.join(["python", program, *flags, "--resume", last])
    return command if command.isprintable() else f"your command, with --resume {last}"


def lock(path, cleanup) -> InputError | None:
    """--out, made and locked (filelock's run.lock) until the run ends; or the error why not."""
    try:
        os.makedirs(path, exist_ok=True)
        for name in (*OUTPUTS, "run.lock"):
            if os.path.isdir(os.path.join(path, name)):
                return InputError(f"--out {path}: {name} is a directory, not a file")
        cleanup.enter_context(filelock.FileLock(os.path.join(path, "run.lock"), timeout=0))
    except filelock.Timeout:
        return InputError(f"--out {path}: another run is writing there; wait, or use another --out")
    except OSError as e:
        return InputError(f"--out {path}: cannot write there ({e.strerror})")


def results(test_set, preds, run, train_targets) -> tuple[dict, str]:
    """predictions.csv, metrics.json and the line: the test MSE beside predicting the mean."""
    stats, targets = test_set.stats, test_set.y
    preds, train_targets = stats.in_target_units(preds), stats.in_target_units(train_targets)
    table = io.StringIO()  # csv quotes what needs it: a target named "y, mm", a text id
    csv.writer(table, lineterminator="\n").writerows([("id", stats.target_name), *zip(
        test_set.ids, map(repr, preds.squeeze(1).tolist()), strict=True)])
    if targets is None:
        test_mse, line = None, f"{len(preds)} predictions, no test MSE: {test_set.unscored}"
    else:
        targets = stats.in_target_units(targets)
        test_mse = (preds - targets).square().mean().item()  # squares of 1e20: float64
        baseline = (train_targets.mean() - targets).square().mean().item()
        line = (f"test MSE {test_mse:.5g} with the best epoch ({run['best_epoch']}); always "
                f"predicting the mean training target scores {baseline:.5g}")
    metrics = {"history": run["history"], "best_epoch": run["best_epoch"], "test_mse": test_mse}
    return {"predictions.csv": (table.getvalue().encode(), ""),
            "metrics.json": (json.dumps(metrics, allow_nan=False).encode(), "")}, line
