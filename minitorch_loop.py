"""minitorch_loop: the PyTorch training loop of "PyTorch Tutorial 1", end to end, in one file.

Read it top to bottom beside the notes. Step 1 reads a CSV into a Dataset and a DataLoader,
step 2 defines the network, steps 3 and 4 pick the loss and the optimizer, then come the
train / validate / test loops, saving and loading, and main(), which runs them in order:

    python minitorch_loop.py            # train on data/train.csv, predict data/test.csv
    python minitorch_loop.py --help     # every flag, with its default
"""

import argparse
import json
import math
import os
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

# --- Step 1 (notes 一): read data into a Dataset, serve it with a DataLoader ---

def read_csv(path) -> np.ndarray:
    """A numeric CSV with a header row -> its (N, C) float64 table, header left out."""
    with warnings.catch_warnings(action="ignore"):  # numpy warns on a header-only file
        return np.loadtxt(path, delimiter=",", quotechar='"', skiprows=1, ndmin=2,
                          comments=None, encoding="utf-8-sig")  # utf-8-sig: drop an Excel BOM


class CsvDataset(Dataset):
    """A CSV held as two float32 tensors, read and standardised once, here in __init__.

    The last column is the target. A training file (``stats=None``) holds out ``valid_ratio``
    of its rows for validation (``valid_rows``) and standardises every feature with the mean
    and std of the other rows (``train_rows``): the model never peeks at validation data.
    A file read with a training file's ``stats`` may leave out the target column.
    """

    def __init__(self, path, stats=None, valid_ratio=0.0, seed=0):
        table = read_csv(path)
        labelled = stats is None or table.shape[1] == len(stats[0]) + 1
        features = torch.from_numpy(table[:, :-1] if labelled else table)  # (N, F) float64
        shuffled = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))
        n_valid = round(valid_ratio * len(table))
        self.valid_rows, self.train_rows = shuffled[:n_valid], shuffled[n_valid:]
        if stats is None:
            fit = features[self.train_rows]
            stats = fit.mean(0), fit.std(0).clamp_min(1e-12)  # a constant column stays finite
        self.stats = stats
        self.x = ((features - stats[0]) / stats[1]).float()  # (N, F)
        self.y = torch.from_numpy(table[:, -1:]).float() if labelled else None  # (N, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        # i is one row (an int) or a batch of rows (a tensor of B indices):
        # x[i] is (F,) or (B, F), y[i] is (1,) or (B, 1)
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])


class TensorBatchSampler(BatchSampler):
    """A BatchSampler that hands out each batch of row indices as one tensor, not a list."""

    def __iter__(self):  # one list -> tensor conversion per epoch instead of one per batch
        return iter(torch.tensor(list(self.sampler)).split(self.batch_size))


def make_loader(dataset, batch_size, shuffle) -> DataLoader:
    """The one place loaders are built: a new random order each epoch, or the file's order.

    The notes' DataLoader(dataset, batch_size) calls __getitem__ once per row, then stacks the
    rows into a batch (test_per_item_loader_calls_getitem_once_per_row shows it). Our rows sit
    in one tensor already, so here __getitem__ gets a whole batch of indices and answers with
    one slice: the same batches, without the per-row calls. batch_size=None: no stacking.
    """
    rows = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    batches = TensorBatchSampler(rows, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches)


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


def save_checkpoint(checkpoint, path):
    """torch.save to a temporary file beside `path`, then rename it over `path`.

    os.replace is atomic, so a crash at any moment leaves the old file or the new one,
    never half of one.
    """
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu") -> dict:
    # weights_only=True unpickles tensors and plain Python values only: a checkpoint from
    # elsewhere cannot run code. map_location moves tensors saved on a GPU to `device`.
    return torch.load(path, map_location=device, weights_only=True)


def load_model(path, device="cpu") -> tuple[MLP, tuple[torch.Tensor, torch.Tensor]]:
    """The model saved in `path` and the feature statistics it was trained with."""
    checkpoint = load_checkpoint(path, device)
    model = MLP(checkpoint["in_features"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return model, (checkpoint["mean"].cpu(), checkpoint["std"].cpu())


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="data/train.csv",
                   help="training CSV: a header row, features, the target last "
                   "(default: %(default)s)")
    p.add_argument("--test", default="data/test.csv",
                   help="test CSV, with or without the target column (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5,
                   help="passes over the training rows, at most (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="rows per SGD step, as in the notes (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.5,
                   help="SGD learning rate; MSE through a Sigmoid has small gradients "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the split, the initial weights and the batch order "
                   "(default: %(default)s)")
    p.add_argument("--valid-ratio", type=float, default=0.2,
                   help="share of the training CSV held out for validation (default: %(default)s)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation loss "
                   "(default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto takes a GPU when there is one "
                   "(default: %(default)s)")
    p.add_argument("--out", default="runs",
                   help="directory for model.pt, predictions.csv, metrics.json "
                   "(default: %(default)s)")
    return p.parse_args(argv)


def pick_device(name) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fit(model, train_loader, valid_loader, criterion, optimizer, device, args, stats):
    """Train for up to args.epochs; keep the model with the lowest valid loss in model.pt."""
    history, best_loss, best_epoch = [], math.inf, 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = train(model, train_loader, criterion, optimizer, device)
        valid_loss = evaluate(model, valid_loader, criterion, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss})
        improved = valid_loss < best_loss  # validation picks the model, never the test set
        if improved:
            best_loss, best_epoch = valid_loss, epoch
            save_checkpoint({"model": model.state_dict(), "in_features": len(stats[0]),
                             "mean": stats[0], "std": stats[1]}, f"{args.out}/model.pt")
        print(f"epoch {epoch:3d} | train {train_loss:.5f} | valid {valid_loss:.5f} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")
        if epoch - best_epoch >= args.patience:
            print(f"no better valid loss for {args.patience} epochs: stopping early")
            break
    return history, best_epoch


def report(out, preds, targets, guess, history, best_epoch):
    """Write predictions.csv (one row per test row, in order) and metrics.json; print the score.

    `guess` is the mean training target: what a model that learned nothing would predict.
    """
    test_mse = None if targets is None else nn.functional.mse_loss(preds, targets).item()
    with open(f"{out}/predictions.csv", "w") as f:
        f.write("id,prediction\n")
        f.writelines(f"{i},{p:.6f}\n" for i, p in enumerate(preds.squeeze(1).tolist()))
    with open(f"{out}/metrics.json", "w") as f:
        json.dump({"history": history, "best_epoch": best_epoch, "test_mse": test_mse}, f,
                  indent=1)
    if test_mse is None:
        print(f"{len(preds)} predictions in {out}/predictions.csv (the test CSV has no target)")
    else:
        baseline = nn.functional.mse_loss(guess.expand_as(targets), targets).item()
        print(f"test MSE {test_mse:.5f} with the best epoch ({best_epoch}); "
              f"always predicting the mean training target scores {baseline:.5f}")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # one seed fixes the initial weights and the batch order
    device = pick_device(args.device)
    # Step 1: the data. Validation rows come out of the training CSV (seeded, repeatable).
    data = CsvDataset(args.train, valid_ratio=args.valid_ratio, seed=args.seed)
    test_set = CsvDataset(args.test, stats=data.stats)
    train_loader = make_loader(Subset(data, data.train_rows), args.batch_size, shuffle=True)
    valid_loader = make_loader(Subset(data, data.valid_rows), args.batch_size, shuffle=False)
    test_loader = make_loader(test_set, args.batch_size, shuffle=False)
    print(f"{len(data.train_rows)} training rows, {len(data.valid_rows)} validation rows, "
          f"{data.x.shape[1]} features; device {device}")
    # Steps 2-4: the model on its device, the loss, the optimizer.
    model = MLP(data.x.shape[1]).to(device)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0)
    os.makedirs(args.out, exist_ok=True)
    history, best_epoch = fit(model, train_loader, valid_loader, criterion, optimizer, device,
                              args, data.stats)
    # Reload the best weights, as a later prediction would, and predict the test set.
    model, _ = load_model(f"{args.out}/model.pt", device)
    preds = test(model, test_loader, device)  # (N, 1)
    report(args.out, preds, test_set.y, data.y[data.train_rows].mean(), history, best_epoch)


if __name__ == "__main__":
    main()
