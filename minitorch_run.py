"""minitorch_run: the lesson's training loop (minitorch_loop.py) for your own CSV files.

    python minitorch_run.py --train my_train.csv --test my_test.csv   # --help: every flag

main() is the lesson's main() with what a real run adds; the network, loss, optimizer and loop
steps are the lesson's own. minitorch_tool/ holds a room per concern: flags, csvs, scaling,
checkpoints, outputs (the run's files), pictures, torchrun, speed and errors (one line)."""

import sys

from minitorch_tool import errors  # no torch in it: Ctrl-C during `import torch` is one line

if __name__ == "__main__":
    errors.catch_stop_signals()

import copy
import math
import os
import time

import torch
from torch.utils.data import Subset

import minitorch_loop as ml
from minitorch_tool import checkpoints, flags, outputs, pictures, speed, torchrun
from minitorch_tool.csvs import TableDataset
from minitorch_tool.errors import InputError


def main(argv=()):
    """The lesson's run (notes 六.1-六.4) on checked files; main() in a notebook, too."""
    argv, out = list(argv), None
    with errors.one_line_errors(lambda: out and out.summary(argv)) as cleanup:
        args = flags.parse_args(argv)
        device = torchrun.join(args.device, cleanup)  # under torchrun: GPU LOCAL_RANK
        stopped = None if args.resume is None else checkpoints.read(args.resume, resume=True)
        settings = flags.settings(args, stopped)  # the flags', or the stopped run's
        torch.manual_seed(settings["seed"])  # the initial weights and the batch order
        torch.set_num_threads(1)  # as the lesson: no slower here, and never slowed by load
        # Step 1: the checked CSVs as Datasets; the validation rows held out of the training file
        data = TableDataset(args.train, valid_ratio=settings["valid_ratio"], seed=settings["seed"])
        train_set, valid_set = Subset(data, data.train_rows), Subset(data, data.valid_rows)
        test_set = TableDataset(args.test, stats=data.stats)  # read now: a bad file stops early
        sampler = torchrun.this_ranks_share(train_set, settings["seed"])  # None unless torchrun
        loaders = (speed.make_loader(train_set, settings["batch_size"], True, sampler),  # shuffled
                   speed.make_loader(valid_set, settings["batch_size"], shuffle=False))
        # Steps 2-4: the lesson's network, loss and optimizer
        model = ml.MLP(data.x.shape[1]).to(device)
        criterion = ml.make_criterion()
        optimizer = ml.make_optimizer(model, settings["lr"])
        run = {"epoch": 0, "history": [], "best_epoch": 0, "best_loss": math.inf, "best": None,
               "settings": settings, "data": checkpoints.fingerprint(data)}
        if stopped is not None:  # --resume: where the stopped run was, to the bit
            checkpoints.check_same_data(stopped, run["data"], data.x.shape[1], args)
            run.update({k: stopped[k] for k in run if k not in ("settings", "data")})
            model.load_state_dict(stopped["model"])
            lrs = [group["lr"] for group in optimizer.param_groups]  # make_optimizer's, of --lr
            optimizer.load_state_dict(stopped["optimizer"])  # which brings the old lrs back
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            torch.set_rng_state(stopped["rng"])  # the batch order of the epochs to come
            print(f"resuming {args.resume} after epoch {stopped['epoch']}")
        out = outputs.Out(args.out, cleanup, device)  # the last check: files are written next
        print(f"{len(train_set)} training rows, {len(valid_set)} validation rows, "
              f"{data.x.shape[1]} features; device {device}")
        # 六.2-六.3: epochs of training and validation, each saved to --out
        fit(model, loaders, criterion, optimizer, device, data.stats, run, out, args.train)
        # 六.4: the test, by the best model loaded back (on rank 0 alone under torchrun)
        if torchrun.writes_files():
            model, _ = checkpoints.load_model(os.path.join(out.path, "model.safetensors"), device)
            preds = predict(model, test_set, device, args.test)
            files, line = outputs.results(test_set, preds, run, data.y[data.train_rows])
            valid_preds = predict(model, valid_set, device, args.train)
            files |= pictures.pngs(run["history"], run["best_epoch"], data.stats, [
                (data.y[data.valid_rows], valid_preds), (test_set.y, preds)])
            out.write(files)  # all four, or (a full disk, say) none of them
            print(line)


def fit(model, loaders, criterion, optimizer, device, stats, run, out, path):
    """Epochs until the last, or `patience` without a better model; each saved to --out."""
    train_loader, valid_loader = loaders
    net = torchrun.ddp_wrapped(model)  # under torchrun, steps in step with the other ranks
    epochs, patience = run["settings"]["epochs"], run["settings"]["patience"]
    if run["epoch"] - run["best_epoch"] >= patience:
        print(f"no epoch to train: it had stopped early; a --patience above {patience} goes on")
        epochs = run["epoch"]
    if run["epoch"] >= epochs:  # a resume with no epoch to train: --out gets its files too
        out.write(checkpoints.epoch_files(run, model, optimizer, stats, with_model=True))
    for epoch in range(run["epoch"] + 1, epochs + 1):
        start = time.perf_counter()
        torchrun.reshuffle_shares(train_loader, epoch)
        train_loss = ml.train(net, speed.progress_bar(train_loader), criterion, optimizer, device)
        valid_loss = ml.evaluate(model, valid_loader, criterion, device)  # what ddp wraps
        losses = torchrun.mean_over_ranks([train_loss, valid_loss], device)
        losses = [loss * stats.target_span**2 for loss in losses]  # MSEs of y' -> MSEs of y
        check_finite(epoch, losses, model, valid_loader.dataset, device, stats, run, path)
        run["history"].append({"epoch": epoch, "train_loss": losses[0], "valid_loss": losses[1]})
        improved = losses[1] < run["best_loss"]  # validation picks the model, never the test set
        if improved:  # a copy: a state_dict holds the live tensors, which training changes
            run.update(best_loss=losses[1], best_epoch=epoch,
                       best=copy.deepcopy(model.state_dict()))
        run["epoch"] = epoch
        out.write(checkpoints.epoch_files(run, model, optimizer, stats, with_model=(
            improved or "model.safetensors" not in out.written)))  # or a resume's first epoch
        print(f"epoch {epoch:3d} | train {losses[0]:.5g} | valid {losses[1]:.5g} | "
              f"{time.perf_counter() - start:.2f}s{' *' if improved else ''}")
        if epoch - run["best_epoch"] >= patience:
            print(f"no better valid loss for {patience} epochs: stopping early")
            break


def check_finite(epoch, losses, model, valid_set, device, stats, run, path):
    """An inf or NaN loss stops the run unsaved: the validation row it fails on, or diverged."""
    if all(map(math.isfinite, losses)):
        return
    if math.isfinite(losses[0]):
        preds = predict(model, valid_set, device, path)  # names a row it cannot predict
        targets = valid_set.dataset.y[valid_set.indices]
        i = int((preds.double() - targets.double()).square().argmax())
        raise InputError(f"{path}: data row {int(valid_set.indices[i]) + 1} (validation): its "
                         f"target {stats.in_target_units(targets[i]).item():g} is too far from "
                         "the training rows' targets: its squared error overflows float32")
    raise InputError(f"epoch {epoch}: the loss is {losses[0]:g} (train), {losses[1]:g} (valid): "
                     f"the run diverged; lower --lr (now {run['settings']['lr']:g})")


def predict(model, dataset, device, path) -> torch.Tensor:
    """The model's predictions (N, 1) for `dataset`, or the first row it cannot predict, named."""
    preds = ml.test(model, speed.make_loader(dataset, 1024, shuffle=False), device)
    bad = (~torch.isfinite(preds[:, 0])).nonzero()
    if len(bad):
        row = int(getattr(dataset, "indices", range(len(preds)))[int(bad[0])]) + 1
        raise InputError(f"{path}: data row {row}: the model's prediction is not a finite "
                         "number (its features lie too far from the training rows')")
    return preds


if __name__ == "__main__":
    main(sys.argv[1:])
