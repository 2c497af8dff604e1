"""What a run writes to --out: each file whole or not at all, one run at a time, and the
predictions, metrics and pictures at the end."""

import contextlib
import csv
import io
import json
import os
import secrets
import sys
import tempfile

import filelock
import torch
from torch import nn
from tqdm import tqdm

import minitorch_loop as ml
from minitorch_tool.errors import InputError
from minitorch_tool.speed import make_loader
from minitorch_tool.torchrun import all_ranks_agree, writes_files

OUTPUTS = ("model.safetensors", "last.safetensors", "predictions.csv", "metrics.json",
           "loss.png", "predictions.png")
LOCK = "run.lock"  # in --out while a run writes there


class Out:
    """--out, and what this run has written there, each file with what it holds: known in
    memory, so an interrupted run says exactly what it changed, never guessed from a file's
    time stamp."""

    def __init__(self, path):
        self.path, self.written = path, {}  # file name -> what it holds

    @contextlib.contextmanager
    def file(self, name, holds=""):
        """A file of --out to write through atomic_file."""
        with atomic_file(os.path.join(self.path, name)) as f:
            yield f
        if writes_files():
            self.written[name] = holds


@contextlib.contextmanager
def atomic_file(path):
    """A file to write `path` through: a new temporary file beside it, renamed over it once
    whole. A crash or kill -9 at any moment leaves the old file or the new one, never half of
    one (os.replace is atomic, and fsync first means a power cut cannot reorder the two). An
    error (a full disk), Ctrl-C or a kill removes the temporary file. It gets a random name,
    is created only if no file or link has that name (O_EXCL: never written through a link
    planted there), and with mode 0o666 less the umask, as open() would give: no chmod later,
    by a path someone else could swap. Under torchrun only rank 0 writes: on the other ranks
    the file is os.devnull."""
    if not writes_files():
        with open(os.devnull, "wb") as f:
            yield f
        return
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # Windows: bytes
    created = False
    try:
        with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
            created = True
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if created:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(e, PermissionError) and created:  # Windows: another program has it open
            raise InputError(f"{path}: cannot replace it ({e.strerror}; is it open in another "
                             "program?)") from None
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write it ({e.strerror or e})") from None
        raise


def make_out_dir(out, cleanup, device):
    """--out, made if need be, writable, with no directory where an output goes, and locked
    for this run until it ends: a second run there is refused, not interleaved with it. The
    lock is filelock's, which works on every platform; its file, run.lock, stays in --out.
    Under torchrun rank 0 checks, and every rank learns the outcome: all go on, or all stop."""
    error = None
    if writes_files():
        try:
            lock_out_dir(out.path, cleanup)
        except InputError as e:
            error = e
    if not all_ranks_agree(error is None, device):
        raise error or InputError("rank 0 could not prepare --out")  # only rank 0 prints


def lock_out_dir(path, cleanup):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # can we write there?
    except OSError as e:
        raise InputError(f"--out {path}: cannot write there ({e.strerror})") from None
    for name in OUTPUTS:
        if os.path.isdir(os.path.join(path, name)):
            raise InputError(f"--out {path}: {name} is a directory; the run writes a file there")
    try:
        cleanup.enter_context(filelock.FileLock(os.path.join(path, LOCK), timeout=0))
    except filelock.Timeout:
        raise InputError(f"--out {path}: another run is writing there; wait for it to end, "
                         "or choose another --out") from None
    except OSError as e:
        raise InputError(f"--out {path}: cannot lock it ({e.strerror})") from None


def report(out, preds, test_set, train_targets, run):
    """Write predictions.csv (the test file's ids, each with its prediction, in the target's
    units) and metrics.json; print the test MSE beside that of always predicting the mean
    training target: a model that learned nothing. All in the target's units. A prediction
    that is not a finite number is one line that names its row, before either is written."""
    row = first_non_finite(preds)
    if row is not None:
        raise InputError(f"{test_set.path}: data row {row + 1}: the model's prediction for it "
                         "is not a finite number (its features lie too far from the training "
                         "rows' for float32); drop or fix the row")
    stats, targets = test_set.stats, test_set.y
    preds, targets, train_targets = (None if t is None else t.double()  # squares of 1e20: float64
                                     for t in (preds, targets, train_targets))
    mse = None if targets is None else nn.functional.mse_loss(preds, targets).item()
    test_mse = None if mse is None else mse * stats.target_span**2
    table = io.StringIO()  # csv quotes what needs it: a target named "y, mm", a text id
    csv.writer(table, lineterminator="\n").writerows([("id", stats.target_name), *zip(
        test_set.ids, map(repr, stats.in_target_units(preds.squeeze(1)).tolist()), strict=True)])
    metrics = {"history": run["history"], "best_epoch": run["best_epoch"], "test_mse": test_mse}
    metrics_text = json.dumps(metrics, allow_nan=False)  # before either file is written
    with out.file("predictions.csv") as f:
        f.write(table.getvalue().encode())
    with out.file("metrics.json") as f:
        f.write(metrics_text.encode())
    if test_mse is None:
        print(f"{len(preds)} predictions in {os.path.join(out.path, 'predictions.csv')} (the "
              "test CSV has no target)")
    else:
        baseline = nn.functional.mse_loss(train_targets.mean().expand_as(targets), targets).item()
        print(f"test MSE {test_mse:.5g} with the best epoch ({run['best_epoch']}); always "
              f"predicting the mean training target scores {baseline * stats.target_span**2:.5g}")


def first_non_finite(preds) -> int | None:
    """The index of the first prediction (N, 1) that is inf or NaN, or None."""
    bad = (~torch.isfinite(preds[:, 0])).nonzero()
    return int(bad[0]) if len(bad) else None


# --- Seeing the run: two pictures (pictures.py), and a progress bar ---
def draw_pictures(out, run, model, valid_set, test_set, test_preds, device) -> dict:
    """loss.png, the learning curve of the whole run, and predictions.png, the best model's
    predictions against the truth on the validation rows (and the test rows, when the test
    file has targets), in the target's units. Returns the figures, by file name."""
    from minitorch_tool import pictures  # here: only a run that draws pays for matplotlib

    stats = test_set.stats
    valid_preds = ml.test(model, make_loader(valid_set, 1024, shuffle=False), device)
    pairs = [(valid_set.dataset.y[valid_set.indices], valid_preds), (test_set.y, test_preds)]
    points = [stats.in_target_units(t).squeeze(1).numpy()
              for true, pred in pairs if true is not None for t in (true, pred)]
    figures = {"loss.png": pictures.loss_figure(run["history"], run["best_epoch"]),
               "predictions.png": pictures.predictions_figure(*points)}
    for name, fig in figures.items():
        with out.file(name) as f:
            fig.savefig(f, format="png")
    return figures


def progress_bar(loader):
    """On a terminal, a tqdm bar over an epoch's batches, shown once the epoch has taken 2 s
    (a short one never shows it) and cleared at its end, so the epoch lines stay as they are.
    Elsewhere (a log, a pipe, CI, another rank) the loader itself: nothing added, no cost."""
    if not sys.stdout.isatty():
        return loader
    return tqdm(loader, delay=2, leave=False, unit="batch", file=sys.stdout)

