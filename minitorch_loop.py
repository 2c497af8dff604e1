"""minitorch_loop: the PyTorch training loop of "PyTorch Tutorial 1", end to end, in one file.

Read it top to bottom beside the notes. Step 1 reads a CSV into a Dataset and a DataLoader,
step 2 defines the network, steps 3 and 4 pick the loss and the optimizer, then come the
train / validate / test loops, saving and loading, and main(), which runs them in order:

    python minitorch_loop.py                        # train on data/, predict data/test.csv
    python minitorch_loop.py --resume runs/last.pt  # continue a stopped run, bit for bit
    python minitorch_loop.py --help                 # every flag, with its default
    torchrun --standalone --nproc_per_node=2 minitorch_loop.py   # the same, on 2 processes

Inputs are checked where they enter (reading a CSV, parsing flags, loading a checkpoint), all
before anything is written; a bad one stops the run with one line naming it, and exit code 2.
"""

import argparse
import copy
import csv
import json
import math
import os
import pickle
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset
from torch.utils.data.distributed import DistributedSampler


class InputError(Exception):
    """A bad file or flag: main() prints the message as one line and exits with code 2."""


# --- Step 1 (notes 一): read data into a Dataset, serve it with a DataLoader ---

def read_csv(path) -> tuple[list[str], np.ndarray]:
    """A numeric CSV with a header row -> (column names, (N, C) float64 table)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: drop a BOM
            header = next(csv.reader(f), None)
        with warnings.catch_warnings(action="ignore"):  # numpy warns on a header-only file
            table = np.loadtxt(path, delimiter=",", quotechar='"', skiprows=1, ndmin=2,
                               comments=None, encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except (UnicodeDecodeError, csv.Error):  # invalid UTF-8, or NUL bytes
        raise InputError(f"{path}: not a text file (binary data?)") from None
    except ValueError:  # numpy met something that is not a number: first_bad_cell finds it
        table = None
    if header is None:
        raise InputError(f"{path}: the file is empty")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise InputError(f"{path}: line 1 has no commas; columns must be comma-separated")
    if all(is_number(name) for name in header):
        raise InputError(f"{path}: line 1 holds numbers; the first line must name the columns")
    if table is not None and len(table) == 0:
        raise InputError(f"{path}: a header but no data rows")
    if table is None or table.shape[1] != len(header) or not np.isfinite(table).all():
        raise InputError(f"{path}: {first_bad_cell(path, header)}")
    return header, table


def is_number(text) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def first_bad_cell(path, header) -> str:
    """Where the table breaks: a row of the wrong width, or a cell that is not a number."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in filter(None, reader):  # blank lines are skipped, as numpy skips them
            if len(row) != len(header):
                return f"line {reader.line_num} has {len(row)} columns; the header, {len(header)}"
            for j, cell in enumerate(row):
                if not is_number(cell):
                    return (f"line {reader.line_num}, column {j + 1} ({header[j]}): "
                            f"{cell!r} is not a finite number")
    return "not a table of numbers"  # what numpy refuses and float() takes, as 1_000


class CsvDataset(Dataset):
    """A CSV held as two float32 tensors, read, checked and standardised once, in __init__.

    The last column is the target, in [0, 1]. A training file (``stats=None``) holds out
    ``valid_ratio`` of its rows for validation (``valid_rows``) and standardises every feature
    with the mean and std of the other rows (``train_rows``): the model never peeks at
    validation data. A file read with a training file's ``stats`` may leave out the target.
    """

    def __init__(self, path, stats=None, valid_ratio=0.0, seed=0):
        header, table = read_csv(path)
        (n_rows, n_columns), n_valid = table.shape, round(valid_ratio * len(table))
        n_features = n_columns - 1 if stats is None else len(stats[0])
        if n_features < 1:
            raise InputError(f"{path}: one column; it needs features, then the target last")
        if n_columns not in (n_features, n_features + 1):
            raise InputError(f"{path}: {n_columns} columns; expected the training file's "
                             f"{n_features} features, with the target after them or without")
        labelled = n_columns == n_features + 1
        if labelled and not ((table[:, -1] >= 0) & (table[:, -1] <= 1)).all():
            raise InputError(f"{path}: target {header[-1]} runs from {table[:, -1].min():g} to "
                             f"{table[:, -1].max():g}, but the model's Sigmoid outputs lie in "
                             f"(0, 1); rescale it, e.g. to (y - min) / (max - min)")
        if stats is None and (n_rows - n_valid < 2 or (valid_ratio > 0 and n_valid == 0)):
            raise InputError(f"{path}: {n_rows} rows are too few to hold out {valid_ratio:g} "
                             f"of them for validation and train on at least 2")
        features = torch.from_numpy(table[:, :-1] if labelled else table)  # (N, F) float64
        shuffled = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
        self.valid_rows, self.train_rows = shuffled[:n_valid], shuffled[n_valid:]
        self.stats = column_stats(features[self.train_rows]) if stats is None else stats
        self.x = torch.sub(features, self.stats[0]).div_(self.stats[1]).float()  # (N, F)
        self.y = torch.from_numpy(table[:, -1:]).float() if labelled else None  # (N, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        # i is one row (an int) or a batch of rows (a tensor of B indices):
        # x[i] is (F,) or (B, F), y[i] is (1,) or (B, 1)
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])


def column_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's mean and std; a constant column gets std 1, so it standardises to 0."""
    std = features.std(0)
    return features.mean(0), torch.where(std > 0, std, 1.0)


class TensorBatchSampler(BatchSampler):
    """A BatchSampler that hands out each batch of row indices as one tensor, not a list."""

    def __iter__(self):  # one conversion per epoch, then slices: no Python list per batch
        order = np.fromiter(self.sampler, np.int64, len(self.sampler))
        return iter(torch.from_numpy(order).split(self.batch_size))


def make_loader(dataset, batch_size, shuffle, rows=None) -> DataLoader:
    """The one place loaders are built: a new random order each epoch, or the file's order,
    or `rows`, any sampler of row indices (under torchrun, a DistributedSampler).

    The notes' DataLoader(dataset, batch_size) calls __getitem__ once per row and stacks the
    rows (test_per_item_loader_calls_getitem_once_per_row). Our rows sit in one tensor, so
    here __getitem__ gets a batch of indices and answers with one slice: the same batches,
    faster. batch_size=None: nothing to stack; collate_fn=tuple: nothing to convert.
    """
    if rows is None:
        rows = RandomSampler(dataset) if shuffle else range(len(dataset))
    batches = TensorBatchSampler(rows, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=tuple)


# --- Step 2 (notes 三): define the network, a torch.nn.Module ---

class MLP(nn.Module):
    """Linear(F -> 64) -> ReLU -> Linear(64 -> 1) -> Sigmoid: one number in (0, 1) per row."""

    def __init__(self, in_features=32, hidden=64):
        super().__init__()
        # A Sigmoid straight after the ReLU could only output [0.5, 1): ReLU gives z >= 0 and
        # sigmoid(0) = 0.5. The Linear(64 -> 1) between them can go negative, so all of (0, 1)
        # is reachable, as targets in [0, 1] need.
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),  # weight (64, F), bias (64,): W x + b per row
            nn.ReLU(),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.net(x)  # (B, F) -> (B, 1)


# --- Steps 3 and 4 (notes 四, 五): the loss and the optimizer are built in main() ---
# --- The whole process (notes 六): train, validate, test; save and load ---

def train(model, loader, criterion, optimizer, device) -> float:
    """One epoch of mini-batch SGD; returns the mean training loss per sample."""
    model.train()  # training mode: dropout and batch norm (none here) behave as in training
    total, n = torch.zeros((), device=device), 0
    for x, y in loader:
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
    """The exact mean loss per sample over a labelled set, without touching the model."""
    model.eval()  # evaluation mode: dropout off, batch norm uses its running statistics
    total, n = torch.zeros((), device=device), 0
    with torch.no_grad():  # no graph is recorded: less memory and time, and no .grad changes
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


def replace_atomically(path, write):
    """Write a file with `write(f)` into a temporary file beside `path`, then rename it: a
    crash or kill -9 at any moment leaves the old file or the new one, never half of one
    (os.replace is atomic, and fsync first means a power cut cannot reorder the two)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(checkpoint, path):
    replace_atomically(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path, keys=("model", "mean", "std"), device="cpu") -> dict:
    """A checkpoint dict holding `keys`, or an InputError that says what is wrong."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a torn one has no end
        raise InputError(f"{path}: not a checkpoint (truncated, or not from torch.save)")
    try:  # weights_only=True unpickles only tensors and plain Python values, so a file from
        # elsewhere cannot run code; map_location moves tensors saved on a GPU to `device`.
        with warnings.catch_warnings(action="ignore"):  # the one-line error says it all
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused by torch.load(weights_only=True): it holds more "
                         "than tensors and plain values") from None
    except Exception:  # noqa: BLE001 (torch.load raises many kinds, all meaning "damaged")
        raise InputError(f"{path}: not a checkpoint (damaged)") from None
    if not isinstance(checkpoint, dict) or not set(keys) <= checkpoint.keys():
        raise InputError(f"{path}: not a minitorch_loop checkpoint (it needs {', '.join(keys)})")
    return checkpoint


def load_model(path, device="cpu") -> tuple[MLP, tuple[torch.Tensor, torch.Tensor]]:
    """The model saved in `path` (model.pt, or last.pt) and its feature statistics."""
    checkpoint = load_checkpoint(path, device=device)
    model = MLP(len(checkpoint["mean"])).to(device)
    model.load_state_dict(checkpoint["model"])
    return model, (checkpoint["mean"].cpu(), checkpoint["std"].cpu())


# --- main(): flags, then the whole process in order ---

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that names the flag, and no usage block
        raise InputError(message)


def number(kind, low, high=math.inf):
    """An argparse type: a `kind` (int or float) strictly between `low` and `high`."""
    def parse(text):
        value = kind(text)  # on a ValueError argparse says "invalid <__name__> value: ..."
        if not low < value < high:  # NaN fails this too
            limits = f"above {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {limits}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def parse_args(argv):
    p = ArgumentParser(description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", default="data/train.csv",
                   help="training CSV: a header row, features, the target last")
    p.add_argument("--test", default="data/test.csv", help="test CSV, with or without the target")
    p.add_argument("--epochs", type=number(int, 0), default=4,
                   help="epochs in all, resumed ones included")
    p.add_argument("--batch-size", type=number(int, 0), default=16,
                   help="rows per SGD step, as in the notes")
    p.add_argument("--lr", type=number(float, 0), default=0.7,
                   help="SGD learning rate; MSE through a Sigmoid has small gradients")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the split, the initial weights and the batch order")
    p.add_argument("--valid-ratio", type=number(float, 0, 1), default=0.2,
                   help="share of the training CSV held out for validation")
    p.add_argument("--patience", type=number(int, 0), default=3,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto takes a GPU when there is one")
    p.add_argument("--out", default="runs",
                   help="directory for model.pt, last.pt, predictions.csv and metrics.json")
    p.add_argument("--resume", metavar="LAST_PT",
                   help="continue the run saved in this last.pt, with its seed, lr, batch size "
                   "and split")
    return p.parse_args(argv)


def pick_device(name) -> torch.device:
    """auto takes a CUDA GPU, else Apple's MPS, else the CPU; a named device must be there."""
    gpus, mps = torch.cuda.device_count(), torch.backends.mps.is_available()
    name = ("cuda" if gpus else "mps" if mps else "cpu") if name == "auto" else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: unknown; use auto, cpu, cuda, cuda:N or mps") from None
    if not {"cpu": True, "mps": mps, "cuda": (device.index or 0) < gpus}.get(device.type):
        raise InputError(f"--device {name}: not available on this machine")
    return device


def make_out_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # can we write there?
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror})") from None


def start_or_resume(args, model, optimizer, stats, run) -> dict:
    """The state of the run, as last.pt holds it: a fresh one, or `run` from --resume."""
    if run is None:
        return {"settings": {k: vars(args)[k] for k in SETTINGS}, "mean": stats[0],
                "std": stats[1], "epoch": 0, "history": [], "best_loss": math.inf,
                "best_epoch": 0, "best": None}
    if not torch.equal(run["mean"], stats[0]):
        raise InputError(f"--resume {args.resume}: trained on other data ({len(run['mean'])} "
                         f"features) than {args.train} ({len(stats[0])} features)")
    model.load_state_dict(run["model"])
    optimizer.load_state_dict(run["optimizer"])
    torch.set_rng_state(run["rng"])  # the batch order of the epochs to come
    print(f"resuming {args.resume} after epoch {run['epoch']}")
    return run


def fit(model, optimizer, loaders, criterion, device, args, run):
    """Train until args.epochs or early stopping. After each epoch, save last.pt (all of
    `run`, to resume from) and, when validation improved, model.pt (the best model)."""
    train_loader, valid_loader = loaders
    net = getattr(model, "module", model)  # under torchrun, the model inside the DDP wrapper
    for epoch in range(run["epoch"] + 1, args.epochs + 1):
        start = time.perf_counter()
        if dist.is_initialized():  # DistributedSampler: a new order each epoch, alike on all
            train_loader.sampler.sampler.set_epoch(epoch)
        train_loss = train(model, train_loader, criterion, optimizer, device)
        valid_loss = evaluate(model, valid_loader, criterion, device)
        train_loss, valid_loss = mean_over_ranks([train_loss, valid_loss], device)
        run["history"].append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss})
        improved = valid_loss < run["best_loss"]  # validation picks the model, never the test set
        if improved:  # model.pt: what a later prediction needs
            run.update(best_loss=valid_loss, best_epoch=epoch, best={
                "model": copy.deepcopy(net.state_dict()), "mean": run["mean"], "std": run["std"]})
        run.update(epoch=epoch, model=net.state_dict(), optimizer=optimizer.state_dict(),
                   rng=torch.get_rng_state())
        if writes_files():
            if improved:
                save_checkpoint(run["best"], f"{args.out}/model.pt")
            save_checkpoint(run, f"{args.out}/last.pt")
        print(f"epoch {epoch:3d} | train {train_loss:.5f} | valid {valid_loss:.5f} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")
        if epoch - run["best_epoch"] >= args.patience:
            print(f"no better valid loss for {args.patience} epochs: stopping early")
            break
    if run["best"] is None:
        raise InputError(f"--lr {args.lr}: the validation loss was never finite; lower it")


def report(out, preds, targets, guess, run):
    """Write predictions.csv (one row per test row, in order) and metrics.json; print the
    test MSE beside that of `guess`, the mean training target: a model that learned nothing."""
    test_mse = None if targets is None else nn.functional.mse_loss(preds, targets).item()
    rows = "".join(f"{i},{p:.6f}\n" for i, p in enumerate(preds.squeeze(1).tolist()))
    metrics = {"history": run["history"], "best_epoch": run["best_epoch"], "test_mse": test_mse}
    replace_atomically(f"{out}/predictions.csv",
                       lambda f: f.write(f"id,prediction\n{rows}".encode()))
    replace_atomically(f"{out}/metrics.json", lambda f: f.write(json.dumps(metrics).encode()))
    if test_mse is None:
        print(f"{len(preds)} predictions in {out}/predictions.csv (the test CSV has no target)")
    else:
        baseline = nn.functional.mse_loss(guess.expand_as(targets), targets).item()
        print(f"test MSE {test_mse:.5f} with the best epoch ({run['best_epoch']}); "
              f"always predicting the mean training target scores {baseline:.5f}")


# --- Scaling out: torchrun starts N copies of this file (ranks) that train as one ---

def start_distributed(device) -> torch.device:
    """Under torchrun (it sets LOCAL_RANK), join the process group: nccl between GPUs (one a
    rank), gloo between CPU processes; only rank 0 prints. A plain run is left as it is."""
    if "LOCAL_RANK" not in os.environ:
        return device
    if device.type == "cuda":
        device = pick_device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not writes_files():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return device


def writes_files() -> bool:
    """A plain run, or rank 0 of a torchrun job: the one process that writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def mean_over_ranks(values, device) -> list[float]:
    """Under torchrun, each number averaged over the ranks. Every rank validates all the rows
    with the same weights: the one-process number, which averaging keeps, on every rank."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()


SETTINGS = ("seed", "lr", "batch_size", "valid_ratio")  # what --resume takes from last.pt
RESUME_KEYS = ("settings", "mean", "epoch", "model", "optimizer", "rng", "best")


def main(argv=None):
    try:
        args = parse_args(argv)
        resumed = args.resume and load_checkpoint(args.resume, RESUME_KEYS)
        if resumed:  # the stopped run's settings fix its data split and batch order
            vars(args).update(resumed["settings"])
        torch.manual_seed(args.seed)  # one seed fixes the initial weights and the batch order
        device = start_distributed(pick_device(args.device))
        # Step 1: the data. Validation rows come out of the training CSV (seeded, repeatable).
        data = CsvDataset(args.train, valid_ratio=args.valid_ratio, seed=args.seed)
        test_set = CsvDataset(args.test, stats=data.stats)
        train_set = Subset(data, data.train_rows)
        shares = DistributedSampler(train_set, seed=args.seed) if dist.is_initialized() else None
        loaders = (make_loader(train_set, args.batch_size, shuffle=True, rows=shares),
                   make_loader(Subset(data, data.valid_rows), args.batch_size, shuffle=False))
        # Steps 2-4: the model on its device, the loss, the optimizer.
        model = MLP(data.x.shape[1]).to(device)
        criterion = nn.MSELoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0)
        run = start_or_resume(args, model, optimizer, data.stats, resumed)
        make_out_dir(args.out)  # the last check: from here on, files are written
        if resumed and writes_files():  # the best model so far, in this --out too
            save_checkpoint(run["best"], f"{args.out}/model.pt")
        if dist.is_initialized():  # DDP: backward() averages the gradients over the ranks
            model = nn.parallel.DistributedDataParallel(model)
        print(f"{len(data.train_rows)} training rows, {len(data.valid_rows)} validation rows, "
              f"{data.x.shape[1]} features; device {device}")
        fit(model, optimizer, loaders, criterion, device, args, run)
        if writes_files():  # reload the best weights, as a later prediction would; predict
            model, _ = load_model(f"{args.out}/model.pt", device)
            preds = test(model, make_loader(test_set, args.batch_size, shuffle=False), device)
            report(args.out, preds, test_set.y, data.y[data.train_rows].mean(), run)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
