"""minitorch_loop: the PyTorch training loop of "PyTorch Tutorial 1", end to end, in one file.

    python minitorch_loop.py       # train on data/, predict data/test.csv; --help: every flag

Part 1 tells the notes' story in their order: Step 1 Dataset and DataLoader, Step 2 the network,
Step 3 the loss, Step 4 the optimizer, train / validate / test, save / load, and main(), the run.
Tensors (notes 二) are in every step: shapes in trailing comments (# (B, F)), devices in
pick_device and .to(device), gradients in train(); test_minitorch_loop.py, section 二, shows
squeeze, unsqueeze, transpose, cat and requires_grad. Part 2, which Part 1 calls by name, holds
what a real run adds: checked input, scaling, safe saves, resume, torchrun, speed, pictures.
"""

import argparse
import contextlib
import copy
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import shlex
import sys
import tempfile
import time
import warnings
import zipfile
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

# ================================ Part 1: the notes' story ================================

# --- Step 1 (notes 一): read data into a Dataset, serve it in batches with a DataLoader ---
class CsvDataset(Dataset):
    """A CSV as a Dataset: a header row, numbers, the target last. __init__ reads it once; a
    training file (stats=None) holds out valid_ratio of its rows for validation; every file is
    scaled with the training rows' statistics (not the validation or test rows': no peeking)."""

    def __init__(self, path, stats=None, valid_ratio=0.0, seed=0):
        table = read_table(path, stats, valid_ratio)  # Part 2: numbers, checked; ids apart
        features = torch.from_numpy(table.features)  # (N, F) float64: all feature columns
        # A seeded shuffle picks the validation rows: the same seed, the same split.
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        n_valid = round(valid_ratio * len(features))
        self.valid_rows, self.train_rows = order[:n_valid], order[n_valid:]
        self.stats = Scaling.fit(features, table, self.train_rows) if stats is None else stats
        # x' = (x - mean) / std in float64, then float32 like the weights (dtypes must agree)
        self.x = torch.sub(features, self.stats.mean).div_(self.stats.std).float()  # (N, F)
        # y' = (y - target_low) / target_span, inside the Sigmoid's (0, 1); see Scaling, Part 2
        self.y = None if table.target is None else self.stats.scaled(table.target)  # (N, 1)
        self.ids = table.ids  # (N,): the id column, or 0 .. N-1

    def __getitem__(self, i):  # row i: x (F,), y (1,); make_loader's B rows at once: (B, F)
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])

    def __len__(self):
        return len(self.x)


def make_loader(dataset, batch_size, shuffle, sampler=None) -> DataLoader:
    """Batches of rows, shuffled anew each epoch for training, in the dataset's order for
    validation and testing; a `sampler` of row indices replaces the shuffling (torchrun)."""
    loader = DataLoader(dataset, batch_size, shuffle=shuffle)  # the notes' DataLoader
    return fetching_whole_batches(loader, sampler)  # Part 2: __getitem__ gets B rows at once


# --- Notes 二.3: a tensor lives on a device, the CPU unless moved with .to(device) ---
def pick_device(name) -> torch.device:
    """auto takes a CUDA GPU when there is one, else Apple's MPS, else the CPU."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    return checked_device(name)  # Part 2: a device this machine has, or one clear error


# --- Step 2 (notes 三): define the network, a torch.nn.Module ---
class MLP(nn.Module):
    """Linear(F -> hidden) -> ReLU -> Linear(hidden -> 1) -> Sigmoid: one number in (0, 1)."""

    def __init__(self, in_features=32, hidden=64):
        super().__init__()
        # A Sigmoid straight after the ReLU could only output [0.5, 1): ReLU gives z >= 0 and
        # sigmoid(0) = 0.5. The Linear(hidden -> 1) between them can go negative, so all of
        # (0, 1) is reachable, as targets in [0, 1] need.
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),  # weight (hidden, F), bias (hidden,): W x + b
            nn.ReLU(),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.net(x)  # (B, F) -> (B, 1)


# --- Step 3 (notes 四): the loss function ---
def make_criterion() -> nn.Module:
    """Mean squared error, the loss for regression (classification takes CrossEntropyLoss)."""
    return nn.MSELoss()


# --- Step 4 (notes 五): the optimizer ---
def make_optimizer(model, lr) -> torch.optim.Optimizer:
    """Plain SGD: each step moves every parameter by -lr times its gradient."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0)


# --- 六.2-六.4: train, validate, test ---
def train(model, loader, criterion, optimizer, device) -> float:
    """One epoch of mini-batch SGD; returns the mean training loss per sample."""
    model.train()  # training mode: dropout and batch norm (none here) behave as in training
    total, n = torch.zeros((), device=device), 0
    for x, y in progress_bar(loader):  # Part 2: a bar on a terminal, if the epoch is long
        x, y = x.to(device), y.to(device)  # (B, F), (B, 1)
        optimizer.zero_grad()  # backward() adds to .grad, so clear last step's gradients
        pred = model(x)  # (B, 1), the same shape as y: MSELoss must not broadcast
        loss = criterion(pred, y)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(x)  # stays a tensor: .item() here would sync every step
        n += len(x)
    return total.item() / n


def evaluate(model, loader, criterion, device) -> float:
    """The exact mean loss per sample over a labelled set; no weight changes."""
    model.eval()  # evaluation mode: dropout off, batch norm uses its running statistics
    total, n = torch.zeros((), device=device), 0
    with torch.no_grad():  # no graph is recorded for a backward(): less memory and time
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            total += criterion(model(x), y) * len(x)  # batch mean * batch size = batch sum
            n += len(x)
    return total.item() / n  # per sample: a short last batch weighs no more than its rows


def test(model, loader, device) -> torch.Tensor:
    """Predictions (N, 1) on the CPU, in the loader's order (keep it unshuffled)."""
    model.eval()
    preds = []
    with torch.no_grad():
        for x, *_ in loader:  # a labelled set yields (x, y), an unlabelled one (x,)
            preds.append(model(x.to(device)))  # (B, 1)
    return torch.cat(preds).cpu()  # one copy to the CPU at the end, not one per batch


# --- 六.5: save and load a model's state_dict ---
def save_model(model, stats, path):
    """model.pt: a dict of the state_dict (parameter name -> tensor), "model", and the scaling."""
    with atomic_file(path) as f:  # Part 2: a crash mid-save leaves the old file whole
        torch.save({"model": model.state_dict(), **stats._asdict()}, f)


def load_model(path, device="cpu") -> tuple[MLP, "Scaling"]:
    """The model saved in `path` (model.pt, or last.pt), on `device`, and its scaling."""
    checkpoint = load_checkpoint(path)
    model = MLP(len(checkpoint["mean"]))  # as many inputs as features it was trained on
    model.load_state_dict(checkpoint["model"])
    return model.to(device), Scaling(*(checkpoint[name] for name in Scaling._fields))


def load_checkpoint(path) -> dict:
    """A dict saved by torch.save. weights_only=True: a file from elsewhere cannot run code;
    map_location puts tensors saved on a GPU on the CPU, so a machine without one reads them."""
    with refusing_bad_checkpoints(path):  # Part 2: a missing, torn or unsafe file: one line
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checked_checkpoint(checkpoint, path)  # Part 2: ... and it holds a model to rebuild


# --- 六: the whole process: epochs of training and validation, then the test ---
def fit(model, loaders, criterion, optimizer, device, stats, args, run):
    """Train and validate until args.epochs, or args.patience epochs without a better model."""
    train_loader, valid_loader = loaders
    ddp_model = ddp_wrapped(model)  # Part 2: under torchrun, steps in step with other ranks
    for epoch in range(run["epoch"] + 1, args.epochs + 1):  # run["epoch"]: 0, or resumed
        start = time.perf_counter()
        reshuffle_shares(train_loader, epoch)  # Part 2: under torchrun, new shares each epoch
        train_loss = train(ddp_model, train_loader, criterion, optimizer, device)
        valid_loss = evaluate(model, valid_loader, criterion, device)  # model: what ddp wraps
        losses = mean_over_ranks([train_loss, valid_loss], device)  # Part 2: torchrun
        train_loss, valid_loss = stats.mse_in_target_units(losses)  # Part 2: an MSE of y' -> of y
        check_finite(epoch, train_loss, valid_loss, args)  # Part 2: diverged? stop, save nothing
        improved = valid_loss < run["best_loss"]  # validation picks the model, never the test set
        if improved:
            run.update(best_loss=valid_loss, best_epoch=epoch)
            save_model(model, stats, f"{args.out}/model.pt")
        save_last_pt(run, epoch, model, optimizer, train_loss, valid_loss, args.out)  # Part 2
        print(f"epoch {epoch:3d} | train {train_loss:.5g} | valid {valid_loss:.5g} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")
        if epoch - run["best_epoch"] >= args.patience:
            print(f"no better valid loss for {args.patience} epochs: stopping early")
            break


def main(argv=None):
    """The run (六.1-六.5): data, loaders, model on its device, loss, optimizer; epochs; test."""
    with one_line_errors(argv) as cleanup:  # Part 2: bad input, Ctrl-C: one line, no traceback
        args = parse_args(argv)  # Part 2: the flags, each checked
        stopped = load_stopped_run(args)  # Part 2: with --resume, the stopped run's settings
        torch.manual_seed(args.seed)  # fixes the initial weights, the batch order (or: resumed)
        device = join_torchrun(pick_device(args.device))  # Part 2: torchrun: GPU LOCAL_RANK
        # Step 1: Datasets and DataLoaders; the validation rows come out of the training CSV
        data = CsvDataset(args.train, valid_ratio=args.valid_ratio, seed=args.seed)
        train_set, valid_set = Subset(data, data.train_rows), Subset(data, data.valid_rows)
        test_set = CsvDataset(args.test, stats=data.stats)  # read now: a bad file stops us early
        check_float32_range((data, args.train), (test_set, args.test))  # Part 2: scaled, still fit
        sampler = this_ranks_share(train_set, args.seed)  # Part 2: under torchrun; else None
        loaders = (make_loader(train_set, args.batch_size, shuffle=True, sampler=sampler),
                   make_loader(valid_set, args.batch_size, shuffle=False))
        # Steps 2-4: the model on its device, the loss, the optimizer
        model = MLP(data.x.shape[1]).to(device)
        criterion = make_criterion()
        optimizer = make_optimizer(model, args.lr)
        run = new_or_resumed_run(stopped, model, optimizer, data, device, args, cleanup)  # Part 2
        fit(model, loaders, criterion, optimizer, device, data.stats, args, run)
        if writes_files():  # Part 2: torchrun's rank 0; the best model, loaded back from disk
            model, _ = load_model(f"{args.out}/model.pt", device)
            preds = test(model, make_loader(test_set, args.batch_size, shuffle=False), device)
            report(args.out, preds, test_set, data.y[data.train_rows], run)  # Part 2
            draw_pictures(args.out, run, model, valid_set, test_set, preds, device)  # Part 2


# ============================ Part 2: what a real run adds ============================
# The notes stop where the story does. A run on real files meets what they leave out: a CSV
# with a bad cell, a mistyped flag, a crash in the middle of a save, a run stopped halfway, a
# job spread over several processes, and an epoch that should take no longer than it must.
# Each is handled here, under a name that Part 1 calls.

class InputError(Exception):
    """A bad file or flag: main() prints the message as one line and exits with code 2."""


@contextlib.contextmanager
def one_line_errors(argv):
    """The run's guard. An InputError ends it with one line on stderr and exit code 2, Ctrl-C
    with one line that says how to go on and exit code 130; no traceback either way (and under
    torchrun, from rank 0 only). Output to a closed pipe (| head) is dropped, not fatal. Yields
    an ExitStack for what must be undone at the end (the lock on --out); under torchrun the
    process group is left, whatever ends the run."""
    started, stdout = time.time(), sys.stdout
    sys.stdout = QuietWhenPipeCloses(stdout or open(os.devnull, "w"))  # noqa: SIM115 (>&-)
    try:
        with contextlib.ExitStack() as cleanup:
            yield cleanup
    except InputError as e:
        say_error(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        say_error(interrupted(sys.argv[1:] if argv is None else argv, started))
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


def interrupted(argv, started) -> str:
    """What Ctrl-C leaves: the last finished epoch in last.pt, if this run saved one."""
    args = parse_args(argv)
    last = f"{args.out}/last.pt"
    if not os.path.exists(last) or os.path.getmtime(last) < started:
        return f"interrupted before an epoch ended: {args.out} is as it was"
    flags = [a for a, prev in zip(argv, [None, *argv], strict=False)
             if "--resume" not in (prev, a.split("=")[0])]  # drop an old --resume X
    command = shlex.join(["python", "minitorch_loop.py", *flags, "--resume", last])
    return f"interrupted: {last} holds the last finished epoch; go on with: {command}"


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


# --- Reading a CSV: numbers, or one line that says where the file breaks ---
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32


class Table(NamedTuple):
    features: np.ndarray  # (N, C) float64: every feature column of the file
    target: np.ndarray | None  # (N, 1) float64, or None: a test file may leave it out
    ids: list[str]  # (N,): the cells of an `id` column, as written, or 0 .. N-1
    feature_names: list[str]
    target_name: str  # the header of the target column
    path: str


def read_table(path, stats=None, valid_ratio=0.0) -> Table:
    """A training CSV (stats=None: features, then the target), or a file read with a training
    file's `stats` (the same feature columns, the target optional). A first column named id
    (any case) holds row ids: kept as text, never a feature. A training file must leave rows
    to train on after valid_ratio."""
    header, table, ids = read_csv(path)
    n_rows, n_columns = table.shape
    names = stats and stats.feature_names  # None for a Scaling built by hand
    n_features = n_columns - 1 if stats is None else len(names or stats.mean)
    if n_features < 1:
        raise InputError(f"{path}: no feature columns; it needs features, then the target last")
    if n_columns not in (n_features, n_features + 1):
        raise InputError(f"{path}: {n_columns} columns; expected the training file's "
                         f"{n_features} features, with the target after them or without")
    if names and header[:n_features] != names:  # a shifted column would train on nonsense
        j = next(j for j, (a, b) in enumerate(zip(header, names, strict=False)) if a != b)
        raise InputError(f"{path}: column {j + 1 + (ids is not None)} is {header[j]!r}; the "
                         f"training file's is {names[j]!r}: it needs the same feature columns")
    n_valid = round(valid_ratio * n_rows)  # as CsvDataset splits
    if stats is None and (n_rows - n_valid < 2 or (valid_ratio > 0 and n_valid == 0)):
        raise InputError(f"{path}: {n_rows} rows are too few to hold out {valid_ratio:g} "
                         f"of them for validation and train on at least 2")
    target = table[:, n_features:] if n_columns > n_features else None
    ids = ids if ids is not None else [str(i) for i in range(n_rows)]
    return Table(table[:, :n_features], target, ids, header[:n_features], header[-1], path)


def read_csv(path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """A CSV with a header row -> (column names, (N, C) float64 table of its numbers, and the
    cells of an id column as text, or None), read once (a pipe, as in --train <(...), cannot
    be read twice). Every number must fit float32, the model's dtype."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # utf-8-sig: drop a BOM
            f = file if file.seekable() else io.StringIO(file.read())
            header = next(csv.reader(f), None)
            check_header(path, header)
            first = int(has_ids(header))  # 1: column 0 holds ids, which need not be numbers
            table = numbers_after_the_header(f, first)
            if table is not None and len(table) == 0:
                raise InputError(f"{path}: a header but no data rows")
            if table is None or table.shape[1] != len(header):
                raise InputError(f"{path}: {first_bad_cell(f, header, first)}")
            bad = np.argwhere(~(np.abs(table[:, first:]) <= FLOAT32_MAX))  # NaN, inf, too large
            if len(bad):
                raise InputError(f"{path}: {first_bad_cell(f, header, first, *bad[0])}")
            ids = first_cells(f) if first else None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (binary data?)") from None
    except csv.Error as e:  # NUL bytes, a cell of over 131072 characters
        raise InputError(f"{path}: not a table of numbers ({e})") from None
    return header[first:], table[:, first:], ids


def numbers_after_the_header(f, first) -> np.ndarray | None:
    """The rest of `f` as an (N, C) table, parsed by numpy (C code), or None if it is not one;
    with first=1 column 0 (ids) is read as 0."""
    ids = {0: lambda cell: 0.0} if first else None
    try:
        with warnings.catch_warnings(action="ignore"):  # numpy warns on a header-only file
            return np.loadtxt(f, delimiter=",", quotechar='"', ndmin=2, comments=None,
                              converters=ids)
    except ValueError:  # not a number somewhere: first_bad_cell finds it
        return None


def first_cells(f) -> list[str]:
    """The first cell of each data row of `f`, as written (blank lines skipped, as by numpy)."""
    f.seek(0)
    rows = csv.reader(f)
    next(rows)
    return [cells[0] for cells in rows if cells]


def check_header(path, header):
    if header is None:
        raise InputError(f"{path}: the file is empty")
    if not any(header):
        raise InputError(f"{path}: line 1 is blank; the first line must name the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise InputError(f"{path}: line 1 has no commas; columns must be comma-separated")
    if all(is_number(name) for name in header):
        raise InputError(f"{path}: line 1 holds numbers; the first line must name the columns")


def has_ids(header) -> bool:
    return header[0].strip().lower() == "id"


def is_number(text) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def first_bad_cell(f, header, first=0, row=None, column=None) -> str:
    """Where the table in `f` breaks: a row of the wrong width, a cell that is not a number
    (from column `first` on), or the cell at (`row`, `column`), too large for float32."""
    f.seek(0)
    reader = csv.reader(f)
    next(reader)
    for i, cells in enumerate(filter(None, reader)):  # blank lines are skipped, as by numpy
        where = f"line {reader.line_num}"
        if len(cells) != len(header):
            return f"{where} has {len(cells)} columns; the header, {len(header)}"
        bad = [j for j, cell in enumerate(cells) if j >= first and not is_number(cell)]
        if bad or i == row:
            j = bad[0] if bad else first + column
            problem = "is not a finite number" if bad else "is too large for float32"
            return f"{where}, column {j + 1} ({header[j]}): {cells[j]!r} {problem}"
    return "not a table of numbers"  # what numpy refuses and float() takes, as 1_000


# --- Scale: the model sees standardised features and a target inside the Sigmoid's range ---
class Scaling(NamedTuple):
    """The training rows' scale: each feature's mean and std, and the target's range, mapped
    into the Sigmoid's (0, 1) as y' = (y - target_low) / target_span. Training runs on y', so
    --lr means the same for any range; every number printed or written is in the target's own
    units. Saved with the weights: new rows must be scaled the same way."""
    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    target_low: float = 0.0
    target_span: float = 1.0
    target_name: str = "prediction"
    feature_names: list[str] | None = None  # the file's, all of them: F, or more if some are
    #                                         left out (CsvDataset: table.features[:, :8])

    @staticmethod
    def fit(features, table, rows):  # `features`: those of `table` the model takes, (N, F)
        std = features[rows].std(0)  # a constant column gets std 1, so it standardises to 0
        low, span = target_range(table, rows)  # [min, max] -> [0.05, 0.95]
        return Scaling(features[rows].mean(0), torch.where(std > 0, std, 1.0), low, span,
                       table.target_name, table.feature_names)

    def scaled(self, target):  # (N, 1) float64 in the target's units -> float32 y'
        return torch.from_numpy((target - self.target_low) / self.target_span).float()

    def in_target_units(self, y):  # y' -> y, in float64: a target of 1.7e9 needs its digits
        return y.double() * self.target_span + self.target_low

    def mse_in_target_units(self, losses):  # an MSE of y' times target_span² is one of y
        return [loss * self.target_span**2 for loss in losses]


TARGET_MARGIN = 0.05  # the training targets' [min, max] maps to [0.05, 0.95]


def target_range(table, rows) -> tuple[float, float]:
    """target_low and target_span for Scaling, from the training rows. The Sigmoid nears 0 and
    1 only for large inputs, where its slope (so the gradient) vanishes: the ends of the
    training range map to 0.05 and 0.95, where the slope is still a fifth of its peak, and a
    test row a little beyond them stays reachable. Every target, [0, 1] ones included, takes
    this one path. A target with no spread (or one whose square underflows) is refused."""
    target = table.target[rows]
    low, high = float(target.min()), float(target.max())
    if not (high - low) ** 2 > 0:  # the losses, MSEs of y' times target_span², would be 0
        spread = (f"is {low:g} in every training row" if low == high else
                  f"spans only {high - low:g} over the training rows")
        raise InputError(f"{table.path}: target {table.target_name} {spread}: there is "
                         "nothing to learn")
    span = (high - low) / (1 - 2 * TARGET_MARGIN)
    return low - TARGET_MARGIN * span, span


def check_float32_range(*datasets_and_paths):
    """A validation or test row far outside the training rows' range can overflow float32
    once scaled with their statistics (a cell of 1e36 where their std is 0.001): one line,
    before training."""
    for dataset, path in datasets_and_paths:
        for name, values in (("feature", dataset.x), ("target", dataset.y)):
            if values is not None and not torch.isfinite(values).all():
                row, column = (int(i) + 1 for i in (~torch.isfinite(values)).nonzero()[0])
                raise InputError(f"{path}: data row {row}, {name} {column}: too far from the "
                                 "training rows' values; scaled, it overflows float32")


# --- Flags and devices: checked before anything is read or written ---
class OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that names the flag, and no usage block
        raise InputError(message)


def bounded(kind, low, high):
    """An argparse type: an int from `low` to `high`, or a float strictly between them."""
    def parse(text):
        value = kind(text)  # on a ValueError argparse says "invalid <__name__> value: ..."
        if kind is int and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        if kind is float and not low < value < high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be above {low:g} and below {high:g}, "
                                             f"got {text}")
        return value
    parse.__name__, parse.kind = kind.__name__, kind
    return parse


# What last.pt keeps of the flags, and how each is checked, from a command line or a file.
# The largest counts fit int64; seeds beyond 32 bits would alias in the random generators.
SETTINGS = {
    "seed": bounded(int, 0, 2**32 - 1),
    "valid_ratio": bounded(float, 0, 1),
    "lr": bounded(float, float(np.finfo(np.float32).tiny), FLOAT32_MAX),  # > 0 in float32 too
    "batch_size": bounded(int, 1, 2**63 - 1),
    "epochs": bounded(int, 1, 2**63 - 1),
    "patience": bounded(int, 1, 2**63 - 1),
}
FIXED_SETTINGS = ("seed", "valid_ratio")  # they pick the validation rows: a resume keeps them


def parse_args(argv):
    p = OneLineArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", default="data/train.csv",
                   help="training CSV: a header row, features, the target last")
    p.add_argument("--test", default="data/test.csv", help="test CSV, with or without the target")
    p.add_argument("--epochs", type=SETTINGS["epochs"], default=4,
                   help="epochs in all, resumed ones included")
    p.add_argument("--batch-size", type=SETTINGS["batch_size"], default=16,
                   help="rows per SGD step, as in the notes")
    p.add_argument("--lr", type=SETTINGS["lr"], default=0.7,
                   help="SGD learning rate; MSE through a Sigmoid has small gradients")
    p.add_argument("--seed", type=SETTINGS["seed"], default=0,
                   help="fixes the split, the initial weights and the batch order")
    p.add_argument("--valid-ratio", type=SETTINGS["valid_ratio"], default=0.2,
                   help="share of the training CSV held out for validation")
    p.add_argument("--patience", type=SETTINGS["patience"], default=3,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto takes a GPU when there is one")
    p.add_argument("--out", default="runs",
                   help="directory for the checkpoints, predictions, metrics and pictures")
    p.add_argument("--resume", metavar="LAST_PT",
                   help="continue the run saved in this last.pt, with its settings")
    args = p.parse_args(argv)
    p.set_defaults(**dict.fromkeys(vars(args)))  # parsed again without defaults: what was typed
    args.typed = {name for name, value in vars(p.parse_args(argv)).items() if value is not None}
    return args


def checked_device(name) -> torch.device:
    """torch.device(name), if it names a device this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: unknown; use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "mps": torch.backends.mps.is_available(),
                 "cuda": (device.index or 0) < torch.cuda.device_count()}
    if not available.get(device.type):
        raise InputError(f"--device {name}: not available on this machine")
    return torch.device("cpu") if device.type == "cpu" else device  # cpu:0 is the cpu


# --- Crash-safe saves, and checkpoints checked like any input ---
OUTPUTS = ("model.pt", "last.pt", "predictions.csv", "metrics.json", "loss.png", "predictions.png")
MODEL_KEYS = ("model", *Scaling._fields)  # model.pt: the weights and how to scale their input


@contextlib.contextmanager
def atomic_file(path):
    """A file to write `path` through: a new temporary file beside it, renamed over it once
    whole. A crash or kill -9 at any moment leaves the old file or the new one, never half of
    one (os.replace is atomic, and fsync first means a power cut cannot reorder the two). An
    error (a full disk) or Ctrl-C removes the temporary file. tempfile creates it with a name
    no other run uses, and never through a link planted there. Under torchrun only rank 0
    writes: on the other ranks the file is os.devnull."""
    if not writes_files():
        with open(os.devnull, "wb") as f:
            yield f
        return
    folder, name = os.path.split(os.fspath(path))
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=folder or ".", prefix=f".{name}.", delete=False) as f:
            tmp = f.name
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # read it (os.umask sets a new one and returns the old one) ...
        os.umask(umask)  # ... and put it back
        os.chmod(tmp, 0o666 & ~umask)  # tempfile's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        cause = e if isinstance(e, OSError) else e.__context__  # torch.save: a RuntimeError
        if isinstance(cause, OSError):
            raise InputError(f"{path}: cannot write it ({cause.strerror or cause})") from None
        raise


def save_checkpoint(checkpoint, path):
    with atomic_file(path) as f:
        torch.save(checkpoint, f)


@contextlib.contextmanager
def refusing_bad_checkpoints(path):
    """Around torch.load: a missing file, a file that is no torch.save archive, one that holds
    more than tensors and plain values, or a damaged one, each becomes one InputError."""
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as e:  # missing, a directory, not readable
        raise InputError(f"{path}: {e.strerror}") from None
    if not is_zip:  # torch.save writes a zip archive; a torn one has no end
        raise InputError(f"{path}: not a checkpoint (truncated, or not from torch.save)")
    try:
        with warnings.catch_warnings(action="ignore"):  # the one-line error says it all
            yield
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused by torch.load(weights_only=True): it holds more "
                         "than tensors and plain values") from None
    except Exception:  # noqa: BLE001 (torch.load raises many kinds, all meaning "damaged")
        raise InputError(f"{path}: not a checkpoint (damaged)") from None


def checked_checkpoint(checkpoint, path, keys=MODEL_KEYS) -> dict:
    """What torch.load read, if it holds `keys` as this file writes them. weights_only=True
    stops code, not wrong values: each one is checked like a flag before it is used."""
    if not isinstance(checkpoint, dict) or not set(keys) <= checkpoint.keys():
        raise InputError(f"{path}: not a minitorch_loop checkpoint (it needs {', '.join(keys)})")
    try:
        check_model_state(checkpoint, path)
        if "settings" in keys:
            check_run_state(checkpoint, path)
    except (AssertionError, ArithmeticError, AttributeError, LookupError, RuntimeError,
            TypeError, ValueError, argparse.ArgumentTypeError) as e:
        detail = " ".join(str(e).split()) or "a bad value"  # on one line
        raise InputError(f"{path}: a damaged or foreign checkpoint ({detail}); start afresh "
                         "in a new --out") from None
    return checkpoint


def check_model_state(checkpoint, path):
    """Statistics of one size, finite, std > 0; the target's scale; finite weights of the
    network that MLP builds for that size, or one line that says how the two networks differ."""
    mean, std = checkpoint["mean"], checkpoint["std"]
    assert all(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 1
               for t in (mean, std)) and 0 < len(mean) == len(std), "mean and std"
    assert torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all(), "std"
    low, span = checkpoint["target_low"], checkpoint["target_span"]
    assert type(low) is type(span) is float and math.isfinite(low) and 0 < span < math.inf, \
        "target_low, target_span"
    assert isinstance(checkpoint["target_name"], str), "target_name"
    names = checkpoint["feature_names"]
    assert isinstance(names, list) and len(names) >= len(mean) and all(
        isinstance(name, str) for name in names), "feature_names"
    weights, built = checkpoint["model"], MLP(len(mean)).state_dict()
    assert isinstance(weights, dict) and all(isinstance(w, torch.Tensor)
                                             for w in weights.values()), "weights"
    if {k: w.shape for k, w in weights.items()} != {k: w.shape for k, w in built.items()}:
        saved, now = layer_sizes(weights), layer_sizes(built)
        differ = f"layers {saved}; MLP now builds {now}" if saved != now else (
            f"parameters {', '.join(weights)}; MLP's are now {', '.join(built)}")
        raise InputError(f"{path}: its network has {differ}: retrain (a new --out), or load it "
                         "with the code that trained it")
    assert all(torch.isfinite(w).all() for w in weights.values()), "weights"


def layer_sizes(state_dict) -> str:
    """The sizes a network's Linear layers map between, as 32-64-1, from their weights."""
    shapes = [w.shape for w in state_dict.values() if w.dim() == 2]  # (out, in) each
    return "-".join(str(n) for n in [shapes[0][1], *(shape[0] for shape in shapes)])


def check_run_state(run, path):
    """last.pt's own values: the settings, the epochs and their history, the best model so
    far, the optimizer's class, settings and state, and the random generator's state."""
    assert isinstance(run["settings"], dict) and run["settings"].keys() == SETTINGS.keys(), \
        f"settings {run['settings']!r}"
    for name, value in run["settings"].items():
        parse = SETTINGS[name]
        assert type(value) is parse.kind, f"{name} {value!r}"
        parse(repr(value))
    epoch, history, best_epoch = run["epoch"], run["history"], run["best_epoch"]
    assert type(epoch) is int and type(best_epoch) is int and 1 <= best_epoch <= epoch, "epoch"
    assert isinstance(history, list) and len(history) == epoch, "history"
    assert [h["epoch"] for h in history] == list(range(1, epoch + 1)), "history"
    assert all(type(h[k]) is float and 0 <= h[k] < math.inf for h in history
               for k in ("train_loss", "valid_loss")), "losses"
    assert run["best_loss"] == history[best_epoch - 1]["valid_loss"], "best_loss"
    check_model_state(run["best"], path)
    assert all(equal(run["best"][name], run[name]) for name in Scaling._fields), "best"
    assert isinstance(run["data"], str), "data"
    model = MLP(len(run["mean"]))
    check_same_optimizer(run, make_optimizer(model, run["settings"]["lr"]), model, path)
    torch.Generator().set_state(run["rng"])  # raises if it is no state of the generator


def check_same_optimizer(run, optimizer, model, path):
    """The optimizer that make_optimizer builds now, with the stopped run's class and settings
    (the lr aside: --lr may change it), and a state that fits the model's parameters."""
    saved, built = run["optimizer"]["param_groups"][0], optimizer.state_dict()["param_groups"][0]
    if run["optimizer_class"] != type(optimizer).__name__ or saved.keys() != built.keys():
        raise InputError(f"{path}: the stopped run's optimizer is {run['optimizer_class']}; "
                         f"make_optimizer now builds {type(optimizer).__name__}: resume with the "
                         "code it ran with, or start a new --out")
    changed = [k for k in built if k not in ("params", "lr") and saved[k] != built[k]]
    if changed:
        settings = ", ".join(f"{k}={saved[k]} (now {built[k]})" for k in changed)
        raise InputError(f"{path}: the stopped run's {run['optimizer_class']} had {settings}: "
                         "resume with the code it ran with, or start a new --out")
    optimizer.load_state_dict(run["optimizer"])
    for param in model.parameters():
        assert all(t.shape == param.shape for t in optimizer.state[param].values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0), "optimizer state"


# --- Resume: last.pt holds the whole run, so a stopped run continues bit for bit ---
RESUME_KEYS = (*MODEL_KEYS, "settings", "epoch", "history", "best_epoch", "best_loss", "best",
               "optimizer", "optimizer_class", "rng", "data")


def load_stopped_run(args) -> dict | None:
    """With --resume, the stopped run's state. Its settings replace the flags' defaults; a flag
    typed with another value takes effect with a note, except --seed and --valid-ratio, which
    fix the validation rows: another value there is refused."""
    if args.resume is None:
        return None
    stopped = checked_checkpoint(load_checkpoint(args.resume), args.resume, RESUME_KEYS)
    for name, saved in stopped["settings"].items():
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if name not in args.typed or value == saved:
            setattr(args, name, saved)
        elif name in FIXED_SETTINGS:
            raise InputError(f"{flag} {value}: the stopped run in {args.resume} has {flag} "
                             f"{saved}, which picks its validation rows; drop the flag to "
                             "resume, or start a new run in a new --out")
        else:
            print(f"{flag} {value} replaces the stopped run's {saved}")
    return stopped


def new_or_resumed_run(stopped, model, optimizer, data, device, args, cleanup) -> dict:
    """The run's state, as last.pt holds it: a new one, or the `stopped` one restored into the
    model, the optimizer and the random number generator. The last check, of --out, comes
    here: from here on, files are written."""
    settings = {name: getattr(args, name) for name in SETTINGS}
    if stopped is None:
        run = {"settings": settings, **data.stats._asdict(), "epoch": 0, "history": [],
               "best_epoch": 0, "best_loss": math.inf, "best": None, "data": fingerprint(data)}
    else:
        check_same_data(stopped, data, args)
        model.load_state_dict(stopped["model"])
        optimizer.load_state_dict(stopped["optimizer"])
        for group in optimizer.param_groups:  # load_state_dict brought the old lr back
            group["lr"] = args.lr
        torch.set_rng_state(stopped["rng"])  # the batch order of the epochs to come
        print(f"resuming {args.resume} after epoch {stopped['epoch']}")
        run = {**{key: stopped[key] for key in RESUME_KEYS}, "settings": settings}
        if run["epoch"] - run["best_epoch"] >= args.patience:
            print(f"it had stopped early, {args.patience} epochs after its best; "
                  "a larger --patience goes on")
            args.epochs = run["epoch"]
    make_out_dir(args.out, cleanup)
    if stopped is not None and run["epoch"] >= args.epochs:  # no epoch to train: write it now
        save_checkpoint(run["best"], f"{args.out}/model.pt")
    elif stopped is not None:  # this --out gets the best model so far with the next epoch's
        run["model_pt_behind"] = True  # files, not before: a run that fails writes nothing
    print(f"{len(data.train_rows)} training rows, {len(data.valid_rows)} validation rows, "
          f"{data.x.shape[1]} features; device {device}")
    return run


def fingerprint(data) -> str:
    """A digest of the rows a run trains on, features and targets: a resume needs the same."""
    return hashlib.sha256(data.x.numpy().tobytes() + data.y.numpy().tobytes()).hexdigest()


def check_same_data(stopped, data, args):
    trained_on, given = len(stopped["mean"]), data.x.shape[1]
    if trained_on != given:
        raise InputError(f"--resume {args.resume}: the stopped run's model takes {trained_on} "
                         f"features; from {args.train} it now gets {given}")
    differ = [name for name, value in data.stats._asdict().items()
              if not equal(stopped[name], value)]
    differ += ["rows"] if stopped["data"] != fingerprint(data) else []
    if differ:
        raise InputError(f"--resume {args.resume}: the stopped run trained on other data than "
                         f"{args.train} (their {differ[0]} differs)")  # the first difference


def equal(a, b) -> bool:  # for tensors and plain values alike
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def make_out_dir(out, cleanup):
    """--out, made if need be, writable, with no directory where an output goes, and locked
    for this run until it ends: a second run there is refused, not interleaved with it."""
    if not writes_files():
        return
    try:
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # can we write there?
        lock = os.open(out, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror})") from None
    cleanup.callback(os.close, lock)  # closing it releases the lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"--out {out}: another run is writing there; wait for it to end, "
                         "or choose another --out") from None
    for name in OUTPUTS:
        if os.path.isdir(f"{out}/{name}"):
            raise InputError(f"--out {out}: {name} is a directory; the run writes a file there")


def check_finite(epoch, train_loss, valid_loss, args):
    """A loss of inf or NaN: the run diverged. It stops before it saves anything, so --out
    keeps the last finite epoch (or the files of before)."""
    if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
        raise InputError(f"epoch {epoch}: the loss is {train_loss:g} (train), {valid_loss:g} "
                         f"(valid): the run diverged; lower --lr (now {args.lr:g}), or look for "
                         f"a feature whose values are far larger than the others'")


def save_last_pt(run, epoch, model, optimizer, train_loss, valid_loss, out):
    """Record the epoch in `run`, with all it takes to resume after it, and save it as last.pt."""
    run["history"].append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss})
    if run["best_epoch"] == epoch:  # what model.pt holds, for a resumed run to write again
        # A copy: a state_dict holds the live parameter tensors, which training goes on to
        # change; without it, "the best model" would drift with every later step.
        run["best"] = {"model": copy.deepcopy(model.state_dict()),
                       **{name: run[name] for name in Scaling._fields}}
    run.update(epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
               optimizer_class=type(optimizer).__name__, rng=torch.get_rng_state())
    if run.pop("model_pt_behind", False) and run["best_epoch"] != epoch:
        save_checkpoint(run["best"], f"{out}/model.pt")
    save_checkpoint(run, f"{out}/last.pt")


def report(out, preds, test_set, train_targets, run):
    """Write predictions.csv (the test file's ids, each with its prediction, in the target's
    units) and metrics.json; print the test MSE beside that of always predicting the mean
    training target: a model that learned nothing. All in the target's units."""
    stats, targets = test_set.stats, test_set.y
    preds, targets, train_targets = (None if t is None else t.double()  # squares of 1e20: float64
                                     for t in (preds, targets, train_targets))
    mse = None if targets is None else nn.functional.mse_loss(preds, targets).item()
    test_mse = None if mse is None else mse * stats.target_span**2
    table = io.StringIO()  # csv quotes what needs it: a target named "y, mm", a text id
    csv.writer(table, lineterminator="\n").writerows([("id", stats.target_name), *zip(
        test_set.ids, map(repr, stats.in_target_units(preds.squeeze(1)).tolist()), strict=True)])
    metrics = {"history": run["history"], "best_epoch": run["best_epoch"], "test_mse": test_mse}
    with atomic_file(f"{out}/predictions.csv") as f:
        f.write(table.getvalue().encode())
    with atomic_file(f"{out}/metrics.json") as f:
        f.write(json.dumps(metrics, allow_nan=False).encode())
    if test_mse is None:
        print(f"{len(preds)} predictions in {out}/predictions.csv (the test CSV has no target)")
    else:
        baseline = nn.functional.mse_loss(train_targets.mean().expand_as(targets), targets).item()
        print(f"test MSE {test_mse:.5g} with the best epoch ({run['best_epoch']}); always "
              f"predicting the mean training target scores {baseline * stats.target_span**2:.5g}")


# --- Seeing the run: two pictures (minitorch_pictures.py), and a progress bar ---
def draw_pictures(out, run, model, valid_set, test_set, test_preds, device) -> dict:
    """loss.png, the learning curve of the whole run, and predictions.png, the best model's
    predictions against the truth on the validation rows (and the test rows, when the test
    file has targets), in the target's units. Returns the figures, by file name."""
    import minitorch_pictures as pictures  # here: only a run that draws pays for matplotlib

    stats = test_set.stats
    valid_preds = test(model, make_loader(valid_set, 1024, shuffle=False), device)
    pairs = [(valid_set.dataset.y[valid_set.indices], valid_preds), (test_set.y, test_preds)]
    points = [stats.in_target_units(t).squeeze(1).numpy()
              for true, pred in pairs if true is not None for t in (true, pred)]
    figures = {"loss.png": pictures.loss_figure(run["history"], run["best_epoch"]),
               "predictions.png": pictures.predictions_figure(*points)}
    for name, fig in figures.items():
        with atomic_file(f"{out}/{name}") as f:
            fig.savefig(f, format="png")
    return figures


def progress_bar(loader):
    """On a terminal, a tqdm bar over an epoch's batches, shown once the epoch has taken 2 s
    (a short one never shows it) and cleared at its end, so the epoch lines stay as they are.
    Elsewhere (a log, a pipe, CI, another rank) the loader itself: nothing added, no cost."""
    if not sys.stdout.isatty():
        return loader
    return tqdm(loader, delay=2, leave=False, unit="batch", file=sys.stdout)


# --- torchrun: N copies of this file (ranks) train as one ---
def join_torchrun(device) -> torch.device:
    """Under torchrun (it sets LOCAL_RANK), join the process group: nccl between GPUs, where
    rank r takes GPU LOCAL_RANK whatever --device names; gloo between CPU processes. Only rank 0
    prints. A plain run is left as it is."""
    if "LOCAL_RANK" not in os.environ:
        return device
    n_gpus, per_node = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and per_node > n_gpus:  # every rank sees it: rank 0 says it
        raise InputError(f"torchrun starts {per_node} processes on this machine, which has "
                         f"{n_gpus} GPU(s), one per process: --nproc_per_node={n_gpus}, or "
                         "--device cpu")
    if device.type == "cuda":
        device = checked_device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except ValueError as e:  # LOCAL_RANK set by hand, without the rest torchrun sets
        raise InputError(f"LOCAL_RANK is set but this is no torchrun job ({e})") from None
    if not writes_files():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return device


def writes_files() -> bool:
    """A plain run, or rank 0 of a torchrun job: the one process that writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def this_ranks_share(dataset, seed) -> DistributedSampler | None:
    """Under torchrun, this rank's share of the rows, in a new order each epoch (set_epoch)."""
    return DistributedSampler(dataset, seed=seed) if dist.is_initialized() else None


def reshuffle_shares(loader, epoch):
    if dist.is_initialized():  # the same new order on every rank, each taking its share
        loader.sampler.sampler.set_epoch(epoch)  # make_loader's batches of this rank's share


def ddp_wrapped(model) -> nn.Module:
    """Under torchrun, the model in DistributedDataParallel: backward() averages the gradients
    over the ranks, so every rank takes the same step. The wrapper trains; the model inside is
    what is evaluated and saved."""
    return nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model


def mean_over_ranks(values, device) -> list[float]:
    """Under torchrun, each number averaged over the ranks, so every rank takes the same
    decisions (a better model, early stopping): one that stopped alone would leave the others
    waiting forever. Every rank validates all the rows with the same weights, so the valid
    loss is the one-process number."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()


# --- Speed: a batch is one slice of the dataset's tensors, not B calls to __getitem__ ---
def fetching_whole_batches(loader, sampler=None) -> DataLoader:
    """`loader`'s batches, in its sampler's order (or `sampler`'s), each fetched as one slice.

    The notes' DataLoader calls __getitem__ once per row and stacks the B rows
    (test_per_item_loader_calls_getitem_once_per_row): an epoch at batch 16 takes 1.31 to 1.54
    times as long as the same steps over tensors already in memory, 4.89 to 5.21 times at batch
    256 (make bench, over runs). CsvDataset holds its rows in one tensor, so here __getitem__
    gets a tensor of the batch's row indices and answers with one slice: 1.05 to 1.22 times,
    at either size (Dataset.__getitems__, PyTorch's own hook for this, takes 1.36 to 1.80
    times at batch 256).
    batch_size=None: nothing to stack; collate_fn=tuple: nothing to convert.
    """
    sampler = loader.sampler if sampler is None else sampler
    batches = TensorBatchSampler(sampler, loader.batch_size, drop_last=False)
    return DataLoader(loader.dataset, batch_size=None, sampler=batches, collate_fn=tuple)


class TensorBatchSampler(BatchSampler):
    """A BatchSampler that hands out each batch of row indices as one tensor, not a list."""

    def __iter__(self):  # one conversion per epoch, then slices: no Python list per batch
        order = np.fromiter(self.sampler, np.int64, len(self.sampler))
        return iter(torch.from_numpy(order).split(self.batch_size))


if __name__ == "__main__":
    main()
