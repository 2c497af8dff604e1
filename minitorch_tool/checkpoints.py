"""Checkpoints and resume: model.pt (the best weights and their scaling) and last.pt (the whole
run after its latest epoch), written whole or not at all, and checked like any input."""

import argparse
import contextlib
import copy
import hashlib
import math
import pickle
import warnings
import zipfile

import torch

import minitorch_loop as ml
from minitorch_tool.errors import InputError
from minitorch_tool.flags import FIXED_SETTINGS, SETTINGS
from minitorch_tool.outputs import atomic_file, make_out_dir
from minitorch_tool.scaling import Scaling

MODEL_KEYS = ("model", *Scaling._fields)  # model.pt: the weights and how to scale their input


def save_model(model, stats, path):
    """model.pt: a dict of the state_dict (parameter name -> tensor), "model", and the scaling."""
    save_checkpoint({"model": model.state_dict(), **stats._asdict()}, path)


def load_model(path, device="cpu") -> tuple[ml.MLP, Scaling]:
    """The model saved in `path` (model.pt, or last.pt), on `device`, and its scaling."""
    checkpoint = load_checkpoint(path)
    model = ml.MLP(len(checkpoint["mean"]))  # as many inputs as features it was trained on
    model.load_state_dict(checkpoint["model"])
    return model.to(device), Scaling(*(checkpoint[name] for name in Scaling._fields))


def load_checkpoint(path) -> dict:
    """A dict saved by torch.save. weights_only=True: a file from elsewhere cannot run code;
    map_location puts tensors saved on a GPU on the CPU, so a machine without one reads them."""
    with refusing_bad_checkpoints(path):  # a missing, torn or unsafe file: one line
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checked_checkpoint(checkpoint, path)  # ... and it holds a model to rebuild


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
        raise InputError(f"{path}: not a minitorch_run checkpoint (it needs {', '.join(keys)})")
    try:
        check_model_state(checkpoint, path)
        if "settings" in keys:
            check_run_state(checkpoint, path)
    except (ArithmeticError, AttributeError, LookupError, RuntimeError,
            TypeError, ValueError, argparse.ArgumentTypeError) as e:
        detail = " ".join(str(e).split()) or "a bad value"  # on one line
        raise InputError(f"{path}: a damaged or foreign checkpoint ({detail}); start afresh "
                         "in a new --out") from None
    return checkpoint


def require(ok, what):
    """A check of a value read from a checkpoint: an input check, so never an assert (which
    python -O strips)."""
    if not ok:
        raise ValueError(what)


def check_model_state(checkpoint, path):
    """Statistics of one size, finite, std > 0; the target's scale; finite weights of the
    network that MLP builds for that size, or one line that says how the two networks differ."""
    mean, std = checkpoint["mean"], checkpoint["std"]
    require(all(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 1
               for t in (mean, std)) and 0 < len(mean) == len(std), "mean and std")
    require(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all(), "std")
    low, span = checkpoint["target_low"], checkpoint["target_span"]
    require(type(low) is type(span) is float and math.isfinite(low) and 0 < span < math.inf,
            "target_low, target_span")
    require(isinstance(checkpoint["target_name"], str), "target_name")
    names = checkpoint["feature_names"]
    require(isinstance(names, list) and len(names) >= len(mean) and all(
        isinstance(name, str) for name in names), "feature_names")
    weights, built = checkpoint["model"], ml.MLP(len(mean)).state_dict()
    require(isinstance(weights, dict) and all(isinstance(w, torch.Tensor)
                                             for w in weights.values()), "weights")
    if {k: w.shape for k, w in weights.items()} != {k: w.shape for k, w in built.items()}:
        saved, now = layer_sizes(weights), layer_sizes(built)
        differ = f"layers {saved}; MLP now builds {now}" if saved != now else (
            f"parameters {', '.join(weights)}; MLP's are now {', '.join(built)}")
        raise InputError(f"{path}: its network has {differ}: retrain (a new --out), or load it "
                         "with the code that trained it")
    require(all(torch.isfinite(w).all() for w in weights.values()), "weights")


def layer_sizes(state_dict) -> str:
    """The sizes a network's Linear layers map between, as 32-64-1, from their weights."""
    shapes = [w.shape for w in state_dict.values() if w.dim() == 2]  # (out, in) each
    return "-".join(str(n) for n in [shapes[0][1], *(shape[0] for shape in shapes)])


def check_run_state(run, path):
    """last.pt's own values: the settings, the epochs and their history, the best model so
    far, the optimizer's class, settings and state, and the random generator's state."""
    require(isinstance(run["settings"], dict) and run["settings"].keys() == SETTINGS.keys(),
            "settings")
    for name, value in run["settings"].items():
        parse = SETTINGS[name]
        require(type(value) is parse.kind, f"setting {name}")
        parse(repr(value))
    epoch, history, best_epoch = run["epoch"], run["history"], run["best_epoch"]
    require(type(epoch) is int and type(best_epoch) is int and 1 <= best_epoch <= epoch, "epoch")
    require(isinstance(history, list) and len(history) == epoch, "history")
    require([h["epoch"] for h in history] == list(range(1, epoch + 1)), "history")
    require(all(type(h[k]) is float and 0 <= h[k] < math.inf for h in history
               for k in ("train_loss", "valid_loss")), "losses")
    require(run["best_loss"] == history[best_epoch - 1]["valid_loss"], "best_loss")
    check_model_state(run["best"], path)
    require(all(equal(run["best"][name], run[name]) for name in Scaling._fields), "best")
    require(isinstance(run["data"], str), "data")
    model = ml.MLP(len(run["mean"]))
    check_same_optimizer(run, ml.make_optimizer(model, run["settings"]["lr"]), model, path)
    torch.Generator().set_state(run["rng"])  # raises if it is no state of the generator


# Param-group keys that say how a release computes a step, not which step: torch releases add
# and drop them (fused, capturable, ...). They are not compared, so a checkpoint written by
# another release resumes; optimizer.load_state_dict fills in those it lacks.
HOW_NOT_WHAT = {"params", "foreach", "fused", "differentiable", "capturable"}


def check_same_optimizer(run, optimizer, model, path):
    """The optimizer that make_optimizer builds now, with the stopped run's class and the
    settings that change its update (momentum, weight decay, betas, ...; the lr aside: --lr may
    change it), and a state that fits the model's parameters."""
    saved, built = run["optimizer"]["param_groups"][0], optimizer.state_dict()["param_groups"][0]
    if run["optimizer_class"] != type(optimizer).__name__:
        raise InputError(f"{path}: the stopped run's optimizer is {run['optimizer_class']}; "
                         f"make_optimizer now builds {type(optimizer).__name__}: resume with the "
                         "code it ran with, or start a new --out")
    changed = [k for k in built if k in saved and k not in HOW_NOT_WHAT | {"lr"}
               and saved[k] != built[k]]
    if changed:
        settings = ", ".join(f"{k}={saved[k]} (now {built[k]})" for k in changed)
        raise InputError(f"{path}: the stopped run's {run['optimizer_class']} had {settings}: "
                         "resume with the code it ran with, or start a new --out")
    optimizer.load_state_dict(run["optimizer"])
    for param in model.parameters():
        require(all(t.shape == param.shape for t in optimizer.state[param].values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0), "optimizer state")


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


