"""minitorch_loop: the training loop of the notes "PyTorch Tutorial 1", whole, in one file.

    python minitorch_loop.py            # train on data/train.csv, predict data/test.csv
    python minitorch_loop.py --inspect  # first, one training step looked at closely (notes 二)

Read it beside the notes, top to bottom: Step 1 the data (a Dataset, the DataLoader), Step 2
the network, Step 3 the loss, Step 4 the optimizer, then train / validate / test, save / load,
and main(), the run in the order of notes 六.1. It is written for the bundled data set; for
your own CSV files, use minitorch_run.py, which checks them and is built on this file.
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
from torch.utils.data import DataLoader, Dataset

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")  # see data/README.md


# --- Step 1 (notes 一): read the data into a Dataset; a DataLoader serves it in batches ---
class CsvDataset(Dataset):
    """A CSV file as a Dataset: a header row, then numbers, the target in the last column.

    __init__ reads the file once. split="train" or "valid" keeps that part of its rows, drawn
    by `seed` (the same seed, the same split: the two never overlap); None keeps every row.
    The features are standardised with `stats`, the training rows' (mean, std), computed here
    when stats is None: every file is scaled like the training rows, never by its own numbers.
    labelled=False reads a file without the target column (the homework's test file)."""

    def __init__(self, path, split=None, stats=None, valid_ratio=0.2, seed=0, labelled=True):
        table = torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2))
        if split is not None:
            order = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))
            n_valid = round(valid_ratio * len(table))
            rows = {"train": order[n_valid:], "valid": order[:n_valid]}[split]  # else KeyError
            table = table[rows]
        features = table[:, :-1] if labelled else table  # (N, F) float64: all but the target
        self.stats = (features.mean(0), features.std(0)) if stats is None else stats
        mean, std = self.stats
        # float32, the dtype of the weights: a model and its data must agree (notes 二.2)
        self.x = ((features - mean) / std).float()  # (N, F), each column mean 0, std 1
        self.y = table[:, -1:].float() if labelled else None  # (N, 1): the target, or None

    def __getitem__(self, i):  # row i: x (F,), and y (1,) when the file has targets
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])

    def __len__(self):
        return len(self.x)


# --- Notes 二.3: a tensor lives on a device, the CPU unless moved with .to(device) ---
def pick_device(name) -> torch.device:
    """A torch.device; auto takes a CUDA GPU (cuda:0) if there is one, else Apple's MPS, else
    the CPU."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    return torch.device(name)


# --- Step 2 (notes 三): define the network, a torch.nn.Module ---
class MLP(nn.Module):
    """Linear(F -> hidden) -> ReLU -> Linear(hidden -> 1) -> Sigmoid: one number in (0, 1).

    The slides' example network is Linear -> Sigmoid -> Linear, which ends in a Linear: any
    number. This one ends in a Sigmoid, because the bundled targets lie in (0, 1)."""

    def __init__(self, in_features=32, hidden=64):
        super().__init__()
        # A Sigmoid straight after the ReLU could only output [0.5, 1): ReLU gives z >= 0 and
        # sigmoid(0) = 0.5. The Linear(hidden -> 1) between them can go negative, so all of
        # (0, 1) is reachable.
        self.net = nn.Sequential(  # calls its layers in order, as a forward() by hand would
            nn.Linear(in_features, hidden),  # weight W (hidden, F), bias b: W x + b per row
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


# --- Notes 二.4 and 五: one training step, looked at closely (--inspect) ---
def inspect_step(model, criterion, lr, dataset, batch_size, device):
    """Print one step's tensors: shapes, the loss, a weight, its .grad after backward() and
    the weight after step(). On copies: the run itself is the same with or without this."""
    model = copy.deepcopy(model)
    optimizer = make_optimizer(model, lr)
    # A batch as the DataLoader makes one: B calls of __getitem__ (here rows 0 .. B-1, not
    # shuffled), then a stack
    rows = [dataset[i] for i in range(batch_size)]  # B pairs (x (F,), y (1,))
    x, y = (torch.stack(column) for column in zip(*rows, strict=True))  # (B, F), (B, 1)
    x, y = x.to(device), y.to(device)
    print(f"x {tuple(x.shape)} {x.dtype} on {x.device}; y {tuple(y.shape)}")
    optimizer.zero_grad()
    pred = model(x)
    loss = criterion(pred, y)
    print(f"pred = model(x): {tuple(pred.shape)}, requires_grad={pred.requires_grad}; "
          f"loss = criterion(pred, y) = {loss.item():.6g}, shape {tuple(loss.shape)}")
    w = model.net[0].weight  # (hidden, F): W of the first Linear
    before = w[0, 0].item()
    loss.backward()  # fills .grad of every parameter with d loss / d parameter
    grad = w.grad[0, 0].item()
    print(f"w = net[0].weight[0, 0] = {before:.6g}; after backward(), w.grad = {grad:.6g}")
    optimizer.step()
    print(f"after step(): w = {w[0, 0].item():.6g}; "
          f"w - lr * w.grad = {before - lr * grad:.6g}, plain SGD's step\n")


# --- 六.2-六.4: train, validate, test ---
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
        total += loss.detach() * len(x)  # stays on the device: .item() would wait every step
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
        for batch in loader:  # (x, y), or (x,) from a file without targets
            preds.append(model(batch[0].to(device)))  # (B, 1)
    return torch.cat(preds).cpu()  # one copy to the CPU at the end, not one per batch


# --- 六: the whole process: set up, then epochs of training and validation, then the test ---
def parse_args(argv):
    p = argparse.ArgumentParser(description="The notes' training loop on the bundled data.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="passes over the training rows")
    p.add_argument("--batch-size", type=int, default=16, help="rows per SGD step")
    p.add_argument("--lr", type=float, default=0.7,
                   help="SGD learning rate; MSE through a Sigmoid has small gradients")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the validation rows, the initial weights, the batch order")
    p.add_argument("--out", default="runs/lesson", help="where model.pt and predictions go")
    p.add_argument("--inspect", action="store_true",
                   help="first print one training step's tensors and gradients")
    return p.parse_args(argv)


def main(argv=()):
    """The run (六.1-六.5). main() in a notebook runs with the defaults; the command line
    passes its own flags (see the end of the file)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights and the batch order, run after run
    device = pick_device(args.device)
    # Step 1: Datasets and DataLoaders; validation rows are held out of the training file
    train_csv, test_csv = os.path.join(DATA, "train.csv"), os.path.join(DATA, "test.csv")
    train_set = CsvDataset(train_csv, "train", seed=args.seed)
    valid_set = CsvDataset(train_csv, "valid", stats=train_set.stats, seed=args.seed)
    test_set = CsvDataset(test_csv, stats=train_set.stats)  # bundled with its targets
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True)  # a new order each epoch
    valid_loader = DataLoader(valid_set, args.batch_size, shuffle=False)
    test_loader = DataLoader(test_set, args.batch_size, shuffle=False)  # keep the file's order
    # Steps 2-4: the model on its device, the loss, the optimizer
    model = MLP(train_set.x.shape[1]).to(device)
    criterion = make_criterion()
    optimizer = make_optimizer(model, args.lr)
    if args.inspect:
        inspect_step(model, criterion, args.lr, train_set, args.batch_size, device)
    print(f"{len(train_set)} training rows, {len(valid_set)} validation rows; device {device}")

    os.makedirs(args.out, exist_ok=True)
    path, best_loss = os.path.join(args.out, "model.pt"), math.inf
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = train(model, train_loader, criterion, optimizer, device)
        valid_loss = evaluate(model, valid_loader, criterion, device)
        improved = valid_loss < best_loss  # validation picks the model, never the test set
        if improved:  # 六.5: the state_dict maps each parameter's name to its tensor
            best_loss = valid_loss
            torch.save(model.state_dict(), path)
        print(f"epoch {epoch:3d} | train {train_loss:.5g} | valid {valid_loss:.5g} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")

    # The best model, loaded back. weights_only=True: a file from elsewhere cannot run code
    # while it loads; map_location puts tensors saved on a GPU where this model is.
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    preds = test(model, test_loader, device)  # (N, 1)
    with open(os.path.join(args.out, "predictions.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prediction"])
        writer.writerows(enumerate(preds[:, 0].tolist()))  # row i: i, its prediction
    if test_set.y is not None:
        test_mse = nn.functional.mse_loss(preds, test_set.y).item()
        print(f"test MSE {test_mse:.5g} with the best model (valid {best_loss:.5g})")
    print(f"wrote {path} and {args.out}/predictions.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
