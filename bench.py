"""make bench: minitorch_loop's speed beside the floor, measured side by side in one run.

    .venv/bin/python bench.py        # a couple of minutes on a 2-core CPU

Each row times our code and a baseline in alternation, in the same process where it can,
and reports the median of each and their ratio: the machine's noise hits both alike.
"""

import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import minitorch_loop as ml

ROOT = Path(__file__).parent
ROUNDS = 7


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()  # wait for the GPU's queue, or we time only the launches
    return time.perf_counter() - start


def side_by_side(contenders, device, rounds=ROUNDS):
    """Median seconds of each zero-argument function, run in alternation after a warm-up."""
    times = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def floor_epoch(model, x, y, criterion, optimizer, batch_size):
    """The floor: the same steps over tensors already in memory, in a random order."""
    model.train()
    for rows in torch.randperm(len(x), device=x.device).split(batch_size):
        optimizer.zero_grad()
        loss = criterion(model(x[rows]), y[rows])
        loss.backward()
        optimizer.step()


class GetitemsDataset(ml.CsvDataset):
    """PyTorch's own batch hook: the DataLoader hands __getitems__ each batch's row indices."""

    def __getitems__(self, rows):  # a list of ints -> (x (B, F), y (B, 1)), one slice each
        return self[torch.tensor(rows)]


def epoch_times(data, batch_size, device):
    """Median epoch times: our train() over make_loader, over the notes' per-item DataLoader,
    and over a DataLoader of __getitems__ batches; and the floor."""
    train_set = Subset(data, data.train_rows)
    x, y = data.x[data.train_rows].to(device), data.y[data.train_rows].to(device)
    criterion = nn.MSELoss()
    getitems = GetitemsDataset(ROOT / "data" / "train.csv", valid_ratio=0.2, seed=0)
    loaders = {"ours": ml.make_loader(train_set, batch_size, shuffle=True),
               "per_item": DataLoader(train_set, batch_size, shuffle=True),  # the notes' way
               "getitems": DataLoader(Subset(getitems, data.train_rows.tolist()), batch_size,
                                      shuffle=True, collate_fn=tuple)}  # (x, y) as it comes

    def contender(name):
        torch.manual_seed(0)
        model = ml.MLP(data.x.shape[1]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0)
        if name == "floor":
            return lambda: floor_epoch(model, x, y, criterion, optimizer, batch_size)
        return lambda: ml.train(model, loaders[name], criterion, optimizer, device)

    return side_by_side({name: contender(name) for name in (*loaders, "floor")}, device)


def loop_rows(device):
    data = ml.CsvDataset(ROOT / "data" / "train.csv", valid_ratio=0.2, seed=0)
    rows = []
    for batch_size in (16, 256):
        times = epoch_times(data, batch_size, device)
        where = f"{len(data.train_rows)} rows, batch {batch_size}, {device.type}"
        rows.append((f"`train` epoch ({where}), s", times["ours"], "in-memory floor",
                     times["floor"]))
        rows.append((f"per-item DataLoader epoch ({where}), s", times["per_item"],
                     "in-memory floor", times["floor"]))
        rows.append((f"`__getitems__` DataLoader epoch ({where}), s", times["getitems"],
                     "in-memory floor", times["floor"]))
    return rows


PEAK_MEMORY = """
import re, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, {root!r})
import minitorch_loop as ml
status = Path("/proc/self/status")
Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from now
before = int(re.search(r"VmRSS:\\s+(\\d+)", status.read_text())[1])
{call}
print(int(re.search(r"VmHWM:\\s+(\\d+)", status.read_text())[1]) - before)  # KiB
"""


def peak_memory_mib(call):
    """How far `call` raises a fresh process's peak memory, after the same imports."""
    script = PEAK_MEMORY.format(root=str(ROOT), call=call)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    return int(done.stdout) / 1024


def csv_rows(tmp):
    """CsvDataset against numpy.loadtxt on a 200 000-row CSV with 33 columns."""
    path = tmp / "big.csv"
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(1000, 300, (200_000, 32)), rng.random(200_000)])
    np.savetxt(path, table, fmt="%.6g", delimiter=",", comments="",
               header=",".join([f"x{i}" for i in range(32)] + ["y"]))
    cpu = torch.device("cpu")
    times = side_by_side({
        "ours": lambda: ml.CsvDataset(path),
        "numpy": lambda: np.loadtxt(path, delimiter=",", skiprows=1),
    }, cpu, rounds=3)
    ours_mib = peak_memory_mib(f"ml.CsvDataset({str(path)!r})")
    numpy_mib = peak_memory_mib(f"np.loadtxt({str(path)!r}, delimiter=',', skiprows=1)")
    return [("`CsvDataset` load (200 000 x 33 CSV), s", times["ours"], "`numpy.loadtxt`",
             times["numpy"]),
            ("peak memory of that load, MiB", ours_mib, "`numpy.loadtxt`", numpy_mib)]


def wall_rows(tmp):
    """The default run, start to finish, against `import torch` alone."""
    def run(*args):
        return lambda: subprocess.run([sys.executable, *args], check=True, cwd=ROOT,
                                      capture_output=True)
    times = side_by_side({
        "ours": run("minitorch_loop.py", "--out", str(tmp / "runs")),
        "import": run("-c", "import torch"),
    }, torch.device("cpu"), rounds=5)
    return [("`python minitorch_loop.py`, s", times["ours"], '`python -c "import torch"`',
             times["import"])]


def main():
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"{cpu}, {torch.get_num_threads()} threads; Python {platform.python_version()}, "
          f"torch {torch.__version__}" + (f"; {torch.cuda.get_device_name()}"
                                          if torch.cuda.is_available() else ""))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for d in devices for row in loop_rows(d)]
        rows += csv_rows(Path(tmp)) + wall_rows(Path(tmp))
    print("\n| measured | ours | baseline | baseline's | ours / baseline | ours - baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for what, ours, baseline, theirs in rows:
        print(f"| {what} | {ours:.4g} | {baseline} | {theirs:.4g} | {ours / theirs:.2f} | "
              f"{ours - theirs:+.3g} |")
    if torch.cuda.is_available():
        print("\nOn the GPU every step launches a dozen tiny kernels, and each costs the CPU a few "
              "microseconds to launch whatever the batch size: for a model this small the CPU "
              "computes a step faster than the GPU can be told to.")


if __name__ == "__main__":
    main()
