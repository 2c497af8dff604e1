"""minitorch_loop: the training loop of the notes "PyTorch Tutorial 1", whole, in one file.

    python minitorch_loop.py            # train on data/train.csv, predict data/test.csv
    python minitorch_loop.py --inspect  # first, gradients and one training step up close

Read it beside the notes, top to bottom: Step 1 the data (a Dataset, the DataLoader), Step 2
the network, Step 3 the loss, Step 4 the optimizer, then train / validate / test, save / load
and main(), the run (notes 六). The bundled data: 6000 training and 1500 test rows of 32 raw
features of very different scales and a target in (0, 1). Your own CSVs: minitorch_run.py.
"""

import argparse
import copy
import csv
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")  # beside this file


# --- Step 1 (notes 一): read the data into a Dataset; a DataLoader serves it in batches ---
def split_rows(n, valid_ratio, seed) -> dict:
    """The row numbers 0 .. n-1 in a random order fixed by `seed`, cut in two: {"train": ...,
    "valid": ...}. The same seed gives the same split, and no row is in both."""
    generator = torch.Generator().manual_seed(seed)  # its own: torch.manual_seed's draws differ
    order = torch.randperm(n, generator=generator)  # 0 .. n-1, shuffled
    n_valid = round(valid_ratio * n)
    return {"train": order[n_valid:], "valid": order[:n_valid]}


class CsvDataset(Dataset):
    """A CSV file as a Dataset: a header row, then numbers, the target in the last column.

    __init__ reads the file once. split="train" or "valid" keeps that part of its rows (see
    split_rows); None keeps all. The features are standardised with `stats`, a (mean, std)
    pair, computed from these rows when None. main() passes the training rows' stats to the
    other files: all are scaled alike. labelled=False: a file without the target column."""

    def __init__(self, path, split=None, stats=None, valid_ratio=0.2, seed=0, labelled=True):
        # ndmin=2: a file of one row is still a table (1, C), not a vector (C,)
        table = torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2))
        if split is not None:
            table = table[split_rows(len(table), valid_ratio, seed)[split]]  # those rows
        features = table[:, :-1] if labelled else table  # (N, F) float64: all but the target
        self.stats = (features.mean(0), features.std(0)) if stats is None else stats
        mean, std = self.stats
        # float32 is the dtype of the weights. A model and its data must agree (notes 二.2).
        self.x = ((features - mean) / std).float()  # (N, F); the training rows: mean 0, std 1
        self.y = table[:, -1:].float() if labelled else None  # (N, 1); [:, -1] would be (N,)

    def __getitem__(self, i):  # row i: x (F,), and y (1,) when the file has targets
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])

    def __len__(self):
        return len(self.x)


# --- Notes 二.3: a tensor lives on a device, the CPU unless moved with .to(device) ---
def pick_device(name) -> torch.device:
    """--device as a torch.device. "auto" takes a CUDA GPU if there is one, else Apple's MPS,
    else the CPU. A device this machine lacks is argparse's error, not a crash."""
    if name == "auto":
        mps = torch.backends.mps.is_available()  # Apple's GPU
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device's name
        device = None
    found = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": torch.backends.mps.is_available()}
    if device is None or (device.index or 0) >= found.get(device.type, 0):  # "cuda": index None
        raise argparse.ArgumentTypeError(f"{name}: no such device here; "
                                         "use auto, cpu, cuda, cuda:N or mps")
    return torch.device("cpu") if device.type == "cpu" else device  # map_location needs "cpu"


# --- Step 2 (notes 三): define the network, a torch.nn.Module ---
class MLP(nn.Module):
    """Linear(F -> hidden) -> ReLU -> Linear(hidden -> 1) -> Sigmoid: one number in (0, 1).

    It ends in a Sigmoid because the bundled targets lie in (0, 1); the slides' example ends
    in a Linear, which can output any number. The Linear between the ReLU (outputs >= 0) and
    the Sigmoid can go negative, so the Sigmoid can reach all of (0, 1), not only [0.5, 1)."""

    def __init__(self, in_features=32, hidden=64):
        super().__init__()
        self.net = nn.Sequential(  # calls its layers in order (see 三.3 below)
            nn.Linear(in_features, hidden),  # W (hidden, F), b (hidden,); see --inspect
            nn.ReLU(),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.net(x)  # (B, F) -> (B, 1)

    # Notes 三.3: with or without Sequential, the same network. Without, __init__ holds
    #     self.fc1 = nn.Linear(in_features, hidden)
    #     self.relu = nn.ReLU()
    #     self.fc2 = nn.Linear(hidden, 1)
    #     self.sigmoid = nn.Sigmoid()
    # and forward() returns self.sigmoid(self.fc2(self.relu(self.fc1(x)))). No comma may end
    # those lines: `self.relu = nn.ReLU(),` makes a tuple, which cannot be called.


# --- Step 3 (notes 四): the loss function ---
def make_criterion() -> nn.Module:
    """Mean squared error, the loss for regression (classification takes CrossEntropyLoss).
    A function of its own so that minitorch_run.py builds the same loss: one edit, both."""
    return nn.MSELoss()


# --- Step 4 (notes 五): the optimizer ---
def make_optimizer(model, lr) -> torch.optim.Optimizer:
    """Plain SGD: each step moves every parameter by -lr times its gradient. A function of
    its own, like make_criterion, so that minitorch_run.py builds the same optimizer."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0)


# --- Notes 二.4 and 五 up close (--inspect): gradients, then one training step ---
def inspect_gradients():
    """The notes' own example: z = sum of x squared, so dz/dx = 2x. Check it by hand."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], requires_grad=True)
    z = x.pow(2).sum()
    print(f"x = {x.tolist()}, requires_grad=True; z = x.pow(2).sum() = {z.item():g}")
    print(f"x.grad before z.backward(): {x.grad}")  # only backward() computes gradients
    z.backward()
    print(f"x.grad after z.backward(): {x.grad.tolist()}, which is 2 * x\n")


def inspect_step(model, criterion, lr, dataset, batch_size, device):
    """One step's tensors: the batch, the first Linear's weight W, its .grad and the step.
    On copies of the model and the optimizer: the run itself is the same without this."""
    model = copy.deepcopy(model)
    optimizer = make_optimizer(model, lr)
    # A batch as the DataLoader builds one (not shuffled here): B calls of __getitem__, for
    # rows 0 .. B-1, then default_collate stacks the B x's into one tensor, the B y's into one
    rows = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    x, y = default_collate(rows)  # (B, F), (B, 1)
    x, y = x.to(device), y.to(device)
    print(f"x {tuple(x.shape)} {x.dtype} on {x.device}, y {tuple(y.shape)}: "
          f"{len(rows)} calls of __getitem__, then default_collate")
    # modules() yields the model, its Sequential, then each layer; next() takes the 1st Linear
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    w = linear.weight
    # For one row x as a column, the notes' W x + b; for a batch of rows, x @ W.T + b
    print(f"first Linear: W {tuple(w.shape)}, b {tuple(linear.bias.shape)}; "
          f"x @ W.T + b is {tuple(linear(x).shape)}")
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    print(f"loss = criterion(model(x), y) = {loss.item():.6g}, shape {tuple(loss.shape)}")
    print(f"W.grad before loss.backward(): {w.grad}")  # None: no backward() yet
    loss.backward()  # adds d loss / d parameter to each .grad (here None: it becomes that)
    before, grad = w[0, 0].item(), w.grad[0, 0].item()
    print(f"W.grad after: shape {tuple(w.grad.shape)}; W[0, 0] = {before:.6g}, "
          f"W.grad[0, 0] = {grad:.6g}")
    optimizer.step()
    print(f"after optimizer.step(): W[0, 0] = {w[0, 0].item():.6g}; "
          f"W[0, 0] - lr * W.grad[0, 0] = {before - lr * grad:.6g} (plain SGD's step)\n")


# --- 六.2-六.4: train, validate, test ---
def train(model, loader, criterion, optimizer, device) -> float:
    """One epoch of mini-batch SGD; returns the mean training loss per sample."""
    model.train()  # training mode: dropout and batch norm (none here) behave as in training
    total, n = torch.zeros((), device=device), 0  # a 0-dim tensor: one number, on the device
    for x, y in loader:
        x, y = x.to(device), y.to(device)  # (B, F), (B, 1)
        optimizer.zero_grad()  # backward() adds to .grad, so clear the last step's
        pred = model(x)  # (B, 1) like y. Against a y of (B,) MSELoss would broadcast to (B, B)
        loss = criterion(pred, y)
        loss.backward()
        optimizer.step()
        # detach(): the sum needs no graph. It stays on the device: .item() would wait for the
        # GPU to finish every step
        total += loss.detach() * len(x)
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
    return total.item() / n  # per sample: a short last batch counts as its rows, no more


def test(model, loader, device) -> torch.Tensor:
    """Predictions (N, 1) on the CPU, in the loader's order (keep it unshuffled)."""
    model.eval()
    preds = []
    with torch.no_grad():
        for batch in loader:  # (x, y), or (x,) from a file without targets
            preds.append(model(batch[0].to(device)))  # (B, 1)
    return torch.cat(preds).cpu()  # one copy to the CPU at the end, not one per batch


# --- 六: the whole process: set up, then epochs of training and validation, then the test ---
def positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:  # NaN is not above 0 either
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's "invalid int value: '2.5'" names the kind
    return parse


def parse_args(argv):
    """The flags. Each type= function turns a flag's text (the default's too) into its value;
    an ArgumentTypeError or ValueError there is argparse's usage line and error, exit 2."""
    p = argparse.ArgumentParser(description="The notes' training loop on the bundled data.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=positive(int), default=4, help="passes over the rows")
    p.add_argument("--batch-size", type=positive(int), default=16, help="rows per SGD step")
    p.add_argument("--lr", type=positive(float), default=0.7,
                   help="SGD's learning rate for this network (MSE through a Sigmoid has small "
                        "gradients); Adam wants about 1e-3")
    p.add_argument("--device", type=pick_device, default="auto", help="auto, cpu, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the validation rows, the initial weights, the batch order")
    p.add_argument("--out", default="runs/lesson", help="where model.pt and predictions go")
    p.add_argument("--inspect", action="store_true",
                   help="first show gradients and one training step up close")
    return p.parse_args(argv)


def main(argv=()):
    """The run (六.1-六.5). main() in a notebook runs with the defaults; the command line
    passes its own flags (see the end of the file)."""
    args = parse_args(argv)  # a bad flag: argparse's usage and error, exit 2
    torch.set_num_threads(1)  # as fast for this small a network, and busy cores cannot slow it
    torch.manual_seed(args.seed)  # the initial weights and the batch order, run after run
    device = args.device
    # Step 1: Datasets and DataLoaders. Validation rows are held out of the training file.
    train_csv, test_csv = os.path.join(DATA, "train.csv"), os.path.join(DATA, "test.csv")
    train_set = CsvDataset(train_csv, "train", seed=args.seed)
    valid_set = CsvDataset(train_csv, "valid", stats=train_set.stats, seed=args.seed)
    test_set = CsvDataset(test_csv, stats=train_set.stats)  # ours has targets: a test MSE
    targets = torch.cat([train_set.y, valid_set.y])  # every target of the training file
    if not ((0 < targets) & (targets < 1)).all():
        sys.exit(f"{train_csv}: targets outside (0, 1), which the Sigmoid cannot output; "
                 "minitorch_run.py scales any target")
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True)  # a new order each epoch
    valid_loader = DataLoader(valid_set, args.batch_size, shuffle=False)
    test_loader = DataLoader(test_set, args.batch_size, shuffle=False)  # keep the file's order
    # Steps 2-4: the model on its device, the loss, the optimizer
    model = MLP(train_set.x.shape[1]).to(device)
    criterion = make_criterion()
    optimizer = make_optimizer(model, args.lr)
    if args.inspect:
        inspect_gradients()
        inspect_step(model, criterion, args.lr, train_set, args.batch_size, device)
    print(f"{len(train_set)} training rows, {len(valid_set)} validation rows; device {device}")

    os.makedirs(args.out, exist_ok=True)
    path, best_loss = os.path.join(args.out, "model.pt"), math.inf
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = train(model, train_loader, criterion, optimizer, device)
        valid_loss = evaluate(model, valid_loader, criterion, device)
        improved = valid_loss < best_loss  # validation picks the model, never the test set
        if improved:  # NaN < x is False: a NaN loss never counts as better
            best_loss = valid_loss
            torch.save(model.state_dict(), path)  # 六.5: each parameter's name -> its tensor
        print(f"epoch {epoch:3d} | train {train_loss:.5g} | valid {valid_loss:.5g} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")  # *: saved
    if best_loss == math.inf:  # nothing saved: report nothing, touch no earlier file
        sys.exit("no epoch gave a finite validation loss, so no model was saved; "
                 "try a smaller --lr, or look for a feature column that never changes")

    # The best model, loaded back. weights_only=True: a file from elsewhere cannot run code
    # while it loads. map_location puts tensors saved on a GPU where this model is.
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    preds = test(model, test_loader, device)  # (N, 1)
    with open(os.path.join(args.out, "predictions.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prediction"])
        writer.writerows(enumerate(preds.squeeze(1).tolist()))  # (N, 1) -> (N,): i, pred i
    if test_set.y is not None:
        test_mse = criterion(preds, test_set.y).item()
        print(f"test MSE {test_mse:.5g} with the best model (valid {best_loss:.5g})")
    print(f"wrote {path} and {args.out}/predictions.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
