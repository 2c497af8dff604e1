"""make bench: the lesson's and the tool's speed beside the floor, side by side in one run.

    .venv/bin/python bench.py        # a couple of minutes on a 2-core CPU
    python bench.py cuda             # on a GPU machine: its loop rows and the whole runs

Each row times our code and a baseline in alternation, in the same process where it can,
and reports the median of each and their ratio: the machine's noise hits both alike.
The thread rows say whether the programs should leave torch's intra-op thread count alone.
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
from minitorch_tool.csvs import TableDataset
from minitorch_tool.speed import make_loader

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


def graphed_epoch(model, x, y, criterion, optimizer, batch_size):
    """The floor's epoch with its step captured once as a CUDA graph: one launch per step
    instead of a dozen. The graph reads fixed tensors, so each batch is copied into them;
    batch_size must divide len(x)."""
    static_x, static_y = x[:batch_size].clone(), y[:batch_size].clone()  # (B, F), (B, 1)

    def step():
        # grads of None: the captured backward allocates them from the graph's pool and
        # refills them on each replay, rather than adding to the last step's
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(static_x), static_y)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream()  # the documented warm-up: a few eager steps off the main stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()  # recorded, not run
    weight = next(model.parameters())
    before = weight.clone()
    graph.replay()
    if torch.equal(before, weight):
        raise RuntimeError("a replay of the captured step left the weights unchanged")

    def epoch():
        for rows in torch.randperm(len(x), device=x.device).view(-1, batch_size):
            torch.index_select(x, 0, rows, out=static_x)
            torch.index_select(y, 0, rows, out=static_y)
            graph.replay()
    return epoch


def epochs(batch_size, device):
    """Makes zero-argument epochs on the same 4800 rows, each on its own fresh model: train()
    over the tool's batched loader ("tool") or the lesson's per-row DataLoader (the notes'
    own, "lesson"), the floor ("floor"), and on a GPU the floor as a CUDA graph ("graph")."""
    train_csv = ROOT / "data" / "train.csv"
    data = TableDataset(train_csv, valid_ratio=0.2, seed=0)
    lesson = ml.CsvDataset(train_csv, "train", seed=0)
    x, y = data.x[data.train_rows].to(device), data.y[data.train_rows].to(device)
    criterion = nn.MSELoss()
    loaders = {"tool": make_loader(Subset(data, data.train_rows), batch_size, shuffle=True),
               "lesson": DataLoader(lesson, batch_size, shuffle=True)}

    def epoch(name):
        torch.manual_seed(0)
        model = ml.MLP(data.x.shape[1]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0)
        if name == "floor":
            return lambda: floor_epoch(model, x, y, criterion, optimizer, batch_size)
        if name == "graph":
            return graphed_epoch(model, x, y, criterion, optimizer, batch_size)
        return lambda: ml.train(model, loaders[name], criterion, optimizer, device)
    return epoch


def loop_rows(device):
    rows = []
    for batch_size in (16, 256):
        epoch = epochs(batch_size, device)
        graph = ("graph",) if device.type == "cuda" and batch_size == 16 else ()
        times = side_by_side({name: epoch(name) for name in ("tool", "lesson", "floor", *graph)},
                             device)
        where = f"4800 rows, batch {batch_size}, {device.type}"
        rows.append((f"tool: `train` epoch, batched loader ({where}), s", times["tool"],
                     "in-memory floor", times["floor"]))
        rows.append((f"lesson: `train` epoch, per-row DataLoader ({where}), s",
                     times["lesson"], "in-memory floor", times["floor"]))
        if graph:
            rows.append((f"cuda-graph step epoch, data on the device ({where}), s",
                         times["graph"], "in-memory floor", times["floor"]))
    return rows


def at_threads(count, fn):
    """fn run at `count` intra-op threads: the count is the process's, so each sets its own."""
    def run():
        torch.set_num_threads(count)
        fn()
    return run


def thread_rows(default):
    """The tool's epoch on the CPU at one thread against torch's default count, `default`."""
    cpu, rows = torch.device("cpu"), []
    try:
        for batch_size in (16, 256):
            epoch = epochs(batch_size, cpu)
            times = side_by_side({count: at_threads(count, epoch("tool"))
                                  for count in (1, default)}, cpu)
            where = f"4800 rows, batch {batch_size}, cpu"
            rows.append((f"tool: `train` epoch at 1 thread ({where}), s", times[1],
                         f"torch's default, {default} threads", times[default]))
    finally:
        torch.set_num_threads(default)
    return rows


PEAK_MEMORY = """
import re, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, {root!r})
import minitorch_loop as ml
from minitorch_tool.csvs import TableDataset
from minitorch_tool.speed import make_loader
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
    """The tool's TableDataset against numpy.loadtxt on a 200 000-row CSV with 33 columns of
    real-looking numbers: 6 significant digits, columns of scales from 0.01 to 1000."""
    path = tmp / "big.csv"
    rng = np.random.default_rng(0)
    scales = np.logspace(-2, 3, 32)
    table = np.column_stack([rng.normal(0, 1, (200_000, 32)) * scales, rng.random(200_000)])
    np.savetxt(path, table, fmt="%.6g", delimiter=",", comments="",
               header=",".join([f"x{i}" for i in range(32)] + ["y"]))
    cpu = torch.device("cpu")
    times = side_by_side({
        "ours": lambda: TableDataset(path),
        "numpy": lambda: np.loadtxt(path, delimiter=",", skiprows=1),
    }, cpu, rounds=3)
    ours_mib = peak_memory_mib(f"TableDataset({str(path)!r})")
    numpy_mib = peak_memory_mib(f"np.loadtxt({str(path)!r}, delimiter=',', skiprows=1)")
    return [("tool: `TableDataset` load (200 000 x 33 CSV), s", times["ours"], "`numpy.loadtxt`",
             times["numpy"]),
            ("peak memory of that load, MiB", ours_mib, "`numpy.loadtxt`", numpy_mib)]


def wall_rows(tmp):
    """Each program's default run, start to finish, against `import torch` alone."""
    def run(*args):
        return lambda: subprocess.run([sys.executable, *args], check=True, cwd=ROOT,
                                      capture_output=True)
    times = side_by_side({
        "lesson": run("minitorch_loop.py", "--out", str(tmp / "lesson")),
        "tool": run("minitorch_run.py", "--out", str(tmp / "tool")),
        "import": run("-c", "import torch"),
    }, torch.device("cpu"), rounds=5)
    return [(f"`python {name}`, s", times[key], '`python -c "import torch"`', times["import"])
            for key, name in (("lesson", "minitorch_loop.py"), ("tool", "minitorch_run.py"))]


def main(argv):
    """Every row, or with `cuda` only the GPU's loop rows and the whole runs. Each row is
    printed once measured: a bench stopped halfway has still said what it measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    threads = torch.get_num_threads()
    print(f"{cpu}, {threads} threads; Python {platform.python_version()}, "
          f"torch {torch.__version__}" + (f"; {torch.cuda.get_device_name()}"
                                          if torch.cuda.is_available() else ""))
    print("\n| measured | ours | baseline | baseline's | ours / baseline | ours - baseline |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    gpu = [torch.device("cuda")] if torch.cuda.is_available() else []
    devices = gpu if "cuda" in argv else [torch.device("cpu"), *gpu]
    with tempfile.TemporaryDirectory() as tmp:
        parts = [lambda d=d: loop_rows(d) for d in devices]
        if "cuda" not in argv:
            parts += [lambda: thread_rows(threads), lambda: csv_rows(Path(tmp))]
        for part in [*parts, lambda: wall_rows(Path(tmp))]:
            for what, ours, baseline, theirs in part():
                print(f"| {what} | {ours:.4g} | {baseline} | {theirs:.4g} | "
                      f"{ours / theirs:.2f} | {ours - theirs:+.3g} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
