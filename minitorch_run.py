"""minitorch_run: the lesson's training loop (minitorch_loop.py) for your own CSV files.

    python minitorch_run.py --train my_train.csv --test my_test.csv   # --help: every flag

The network, the loss, the optimizer and the train / evaluate / test steps are the lesson's
own: an edit there reaches this program too. What a real run adds lives in minitorch_tool/,
one room per concern: checked CSVs with ids and any target range (csvs, scaling), crash-safe
checked checkpoints and resume (checkpoints), one run at a time per --out and the files it
writes (outputs, pictures), torchrun, and a loader that fetches whole batches (speed).
"""

import os
import signal
import sys

if __name__ == "__main__":  # a stop while torch loads, before main() is up: one line, exit
    def stopped_while_starting(signum, frame):
        print("interrupted while starting: nothing was written", file=sys.stderr)
        os._exit(128 + signum)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stopped_while_starting)

import math
import shlex
import time

import torch
from torch.utils.data import Subset

import minitorch_loop as ml
from minitorch_tool import checkpoints, torchrun
from minitorch_tool.csvs import TableDataset
from minitorch_tool.errors import InputError, one_line_errors
from minitorch_tool.flags import parse_args
from minitorch_tool.outputs import Out, draw_pictures, first_non_finite, progress_bar, report
from minitorch_tool.scaling import check_float32_range
from minitorch_tool.speed import make_loader


def main(argv=()):
    """The run: the lesson's set-up (notes 六.1) on checked files, epochs, the test. main() in
    a notebook runs with the defaults; the command line passes its own flags."""
    argv, out = list(argv), None
    with one_line_errors(lambda: interrupted(argv, out)) as cleanup:
        args = parse_args(argv)
        out = Out(args.out)  # what this run writes there, it knows in memory
        stopped = checkpoints.load_stopped_run(args)  # with --resume: the stopped run, checked
        torch.manual_seed(args.seed)  # the initial weights, the batch order (or: resumed)
        device = torchrun.join_torchrun(args.device)  # torchrun: GPU LOCAL_RANK
        data = TableDataset(args.train, valid_ratio=args.valid_ratio, seed=args.seed)
        train_set, valid_set = Subset(data, data.train_rows), Subset(data, data.valid_rows)
        test_set = TableDataset(args.test, stats=data.stats)  # read now: a bad file stops early
        check_float32_range((data, args.train), (test_set, args.test))
        sampler = torchrun.this_ranks_share(train_set, args.seed)  # None unless torchrun
        loaders = (make_loader(train_set, args.batch_size, shuffle=True, sampler=sampler),
                   make_loader(valid_set, args.batch_size, shuffle=False))
        model = ml.MLP(data.x.shape[1]).to(device)
        criterion = ml.make_criterion()
        optimizer = ml.make_optimizer(model, args.lr)
        run = checkpoints.new_or_resumed_run(stopped, model, optimizer, data, device, args, out,
                                             cleanup)
        fit(model, loaders, criterion, optimizer, device, data.stats, args, run, out)
        if torchrun.writes_files():  # rank 0: the best model, loaded back from disk
            model, _ = checkpoints.load_model(os.path.join(out.path, "model.safetensors"),
                                              device)
            preds = ml.test(model, make_loader(test_set, args.batch_size, shuffle=False), device)
            report(out, preds, test_set, data.y[data.train_rows], run)
            draw_pictures(out, run, model, valid_set, test_set, preds, device)


def fit(model, loaders, criterion, optimizer, device, stats, args, run, out):
    """Train and validate until args.epochs, or args.patience epochs without a better model."""
    train_loader, valid_loader = loaders
    ddp_model = torchrun.ddp_wrapped(model)  # under torchrun, steps in step with other ranks
    for epoch in range(run["epoch"] + 1, args.epochs + 1):  # run["epoch"]: 0, or resumed
        start = time.perf_counter()
        torchrun.reshuffle_shares(train_loader, epoch)
        train_loss = ml.train(ddp_model, progress_bar(train_loader), criterion, optimizer,
                              device)
        valid_loss = ml.evaluate(model, valid_loader, criterion, device)  # what ddp wraps
        losses = torchrun.mean_over_ranks([train_loss, valid_loss], device)
        losses = stats.mse_in_target_units(losses)  # an MSE of y' -> of y
        check_finite(epoch, losses, model, valid_loader, device, args)  # else stop, save nothing
        improved = checkpoints.end_epoch(run, epoch, model, optimizer, stats, losses, out)
        print(f"epoch {epoch:3d} | train {losses[0]:.5g} | valid {losses[1]:.5g} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")
        if epoch - run["best_epoch"] >= args.patience:
            print(f"no better valid loss for {args.patience} epochs: stopping early")
            break


def check_finite(epoch, losses, model, valid_loader, device, args):
    """A loss of inf or NaN stops the run before it saves anything, so --out keeps the last
    finite epoch (or the files of before). A validation loss alone: a validation row whose
    features lie so far out that the model's output overflows float32, named. Else the run
    diverged. (A target whose squared error float32 cannot hold is refused before training.)"""
    train_loss, valid_loss = losses
    if math.isfinite(train_loss) and not math.isfinite(valid_loss):
        i = first_non_finite(ml.test(model, valid_loader, device))
        if i is not None:
            raise InputError(f"{args.train}: data row {int(valid_loader.dataset.indices[i]) + 1}"
                             ", a validation row: the model's output for it is not a finite "
                             "number (its features lie too far from the training rows' for "
                             "float32); drop or fix the row")
    if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
        raise InputError(f"epoch {epoch}: the loss is {train_loss:g} (train), {valid_loss:g} "
                         f"(valid): the run diverged; lower --lr (now {args.lr:g}), or look for "
                         f"a feature whose values are far larger than the others'")


def interrupted(argv, out) -> str:
    """What a stopped run leaves, from what it knows it wrote: nothing, or files that are each
    whole, and, once a last.safetensors of this run is among them, how to go on."""
    if out is None or not out.written:
        where = "--out" if out is None else out.path
        return f"interrupted before an epoch ended: {where} is as it was"
    wrote = ", ".join(f"{name} ({holds})" if holds else name for name, holds in out.written.items())
    line = f"interrupted: this run wrote {wrote} in {out.path}"
    if "last.safetensors" not in out.written:
        return line
    last = os.path.join(out.path, "last.safetensors")
    flags = [a for a, prev in zip(argv, [None, *argv], strict=False)
             if "--resume" not in (prev, a.split("=")[0])]  # drop an old --resume X
    command = shlex.join(["python", "minitorch_run.py", *flags, "--resume", last])
    return f"{line}; go on with: {command}"


if __name__ == "__main__":
    main(sys.argv[1:])
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # the run has ended: a late signal ends the
        if hasattr(signal, name):  # process as it would any other, with nothing to report
            signal.signal(getattr(signal, name), signal.SIG_DFL)
