"""Checkpoints and resume: model.safetensors (the best weights and their scaling) and
last.safetensors (the whole run after its latest epoch). Each is one file, written whole or
not at all, and checked in full before anything in it is used.

The format holds nothing a crafted file could turn into a weapon: the tensors are
safetensors' (no pickle, so no code and no shared references: a flat map of names to tensors
whose sizes the file itself bounds), and the plain values are one JSON document in its header,
checked against the schemas below. Every value is checked as the model will see it (weights
after the cast to the model's dtype), and no text from the file reaches a message whole.
"""

import argparse
import contextlib
import copy
import hashlib
import json
import math

import safetensors
import safetensors.torch
import torch

import minitorch_loop as ml
from minitorch_tool.errors import InputError, quoted, shown
from minitorch_tool.flags import FIXED_SETTINGS, SETTINGS
from minitorch_tool.outputs import make_out_dir
from minitorch_tool.scaling import Scaling

FORMAT = "minitorch_run 1"  # what the JSON's "format" says; another value is refused
HEADER_KEY = "minitorch_run"  # the entry of the safetensors header's metadata with the JSON

# The JSON's schemas: a type; [schema], a list of such; {name: schema}, an object with exactly
# these names; {str: schema}, an object of any names; PLAIN, a number, a flag, null, a short
# text or a few numbers (an optimizer's settings, to which a torch release may add). A float
# is a finite one; an int is never a bool.
PLAIN = "plain"
OPTIONS = {str: PLAIN}
MODEL = {"format": str, "target_low": float, "target_span": float, "target_name": str,
         "feature_names": [str]}
LAST = {**MODEL, "settings": {name: parse.kind for name, parse in SETTINGS.items()},
        "epoch": int, "history": [{"epoch": int, "train_loss": float, "valid_loss": float}],
        "best_epoch": int, "best_loss": float, "data": str, "optimizer_class": str,
        "optimizer_groups": [OPTIONS], "optimizer_plain_state": {str: OPTIONS}}
WEIGHT_DTYPES = {"F64", "F32", "F16", "BF16"}  # safetensors' names; complex ones are refused


class Damaged(Exception):
    """A value of a checkpoint that this program did not write: named, never shown whole."""


# --- Writing: a dict of tensors and a JSON document, as one safetensors file ---
def save_model(out, state_dict, stats, holds):
    """model.safetensors: the weights (model.<name>) and the scaling they were trained with."""
    tensors = {**prefixed("model.", state_dict), **scaling_tensors(stats)}
    write(out, "model.safetensors", tensors, {"format": FORMAT, **scaling_json(stats)}, holds)


def save_last(out, run, model, optimizer, stats):
    """last.safetensors: all a stopped run needs to go on bit for bit: the weights, the best
    model so far (best.<name>), the optimizer, the random generator, the settings, the history
    and a digest of the training rows."""
    state = optimizer.state_dict()
    tensors = {**prefixed("model.", model.state_dict()), **prefixed("best.", run["best"]),
               **scaling_tensors(stats), "rng": torch.get_rng_state()}
    plain = {}
    for i, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{i}.{name}"] = value
            else:
                plain.setdefault(str(i), {})[name] = value
    groups = [{k: v for k, v in group.items() if k != "params"} for group in state["param_groups"]]
    document = {"format": FORMAT, **scaling_json(stats), **{k: run[k] for k in (
        "settings", "epoch", "history", "best_epoch", "best_loss", "data")},
        "optimizer_class": type(optimizer).__name__, "optimizer_groups": groups,
        "optimizer_plain_state": plain}
    write(out, "last.safetensors", tensors, document, f"epoch {run['epoch']}")


def write(out, name, tensors, document, holds):
    cpu = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    header = {HEADER_KEY: json.dumps(document, allow_nan=False)}
    data = safetensors.torch.save(cpu, metadata=header)  # bytes: no error hides in a writer
    with out.file(name, holds) as f:
        f.write(data)


def prefixed(prefix, state_dict):
    return {prefix + name: tensor for name, tensor in state_dict.items()}


def scaling_tensors(stats):
    return {"scaling.mean": stats.mean, "scaling.std": stats.std}


def scaling_json(stats):
    return {name: getattr(stats, name) for name in MODEL if name != "format"}


# --- Reading: every value checked before it is used ---
def load_model(path, device="cpu") -> tuple[ml.MLP, Scaling]:
    """The model saved in `path` (model.safetensors, or the latest weights of a
    last.safetensors), on `device`, and its scaling."""
    tensors, document = read(path, (MODEL, LAST))
    with refusing_damage(path):
        stats = checked_scaling(tensors, document)
        model = ml.MLP(len(stats.mean))
        model.load_state_dict(checked_weights(tensors, "model.", model, path))
    return model.to(device), stats


@contextlib.contextmanager
def refusing_damage(path):
    """Damaged, raised by a check of a value, as the one line of an InputError."""
    try:
        yield
    except Damaged as e:
        raise InputError(f"{path}: a damaged or foreign checkpoint ({e}); start afresh in a "
                         "new --out") from None


def read(path, schemas) -> tuple[dict, dict]:
    """A checkpoint's tensors (on the CPU, as saved) and its JSON document, checked against
    the one of `schemas` whose names it has (or the first). Any fault is one InputError that
    names the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:  # missing, a directory, not readable
        raise InputError(f"{path}: {e.strerror}") from None
    if magic == b"PK\x03\x04":  # a zip archive: torch.save's .pt
        raise InputError(f"{path}: a checkpoint of an earlier version (torch.save); this one "
                         "reads .safetensors files only: start afresh in a new --out")
    try:
        with refusing_damage(path), safetensors.safe_open(path, "pt") as f:
            text = (f.metadata() or {}).get(HEADER_KEY)
            if text is None:
                raise InputError(f"{path}: not a minitorch_run checkpoint (no {HEADER_KEY} "
                                 "entry in its header)")
            try:
                document = json.loads(text, parse_constant=refuse_constant)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                raise Damaged("its JSON does not read") from None
            names = document.keys() if isinstance(document, dict) else ()
            check_json(document, next((s for s in schemas if s.keys() == names), schemas[0]),
                       "the document")
            if document["format"] != FORMAT:
                raise Damaged("its format")
            tensor_names = f.keys()
            tensors = {name: f.get_tensor(name) for name in tensor_names}
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    except safetensors.SafetensorError:
        raise InputError(f"{path}: not a checkpoint (truncated, or not a safetensors file)"
                         ) from None
    return tensors, document


def refuse_constant(name):
    raise Damaged(f"a JSON {name}")


def check_json(value, schema, where):
    """`value`, read from JSON, has `schema`'s shape, or Damaged names where it does not."""
    if schema is float:
        ok = type(value) is float and math.isfinite(value)
    elif schema in (int, str):
        ok = type(value) is schema
    elif isinstance(schema, list):
        ok = type(value) is list
        for i, item in enumerate(value if ok else []):
            check_json(item, schema[0], f"{where}[{i}]")
    elif schema == PLAIN:
        ok = plain(value)
    elif str in schema:
        ok = type(value) is dict
        for name in value if ok else []:
            check_json(value[name], schema[str], f"{where}.{quoted(name, 20)}")
    else:
        ok = type(value) is dict and value.keys() == schema.keys()
        for name in schema if ok else []:
            check_json(value[name], schema[name], f"{where}.{name}")
    if not ok:
        raise Damaged(where)


def plain(value) -> bool:  # an optimizer's setting: a number, a flag, None, a word, or a few
    if type(value) is list:  # numbers
        return len(value) <= 8 and all(type(v) in (int, float) for v in value)
    if type(value) is str:
        return len(value) <= 40
    return value is None or type(value) in (bool, int) or (
        type(value) is float and math.isfinite(value))


def checked_scaling(tensors, document) -> Scaling:
    """The training rows' scaling: F means and F stds > 0, finite; a target span > 0."""
    mean, std = (tensors.get(f"scaling.{name}") for name in ("mean", "std"))
    for name, t in (("scaling.mean", mean), ("scaling.std", std)):
        if t is None or t.dtype != torch.float64 or t.dim() != 1 or not 0 < len(t) == len(mean):
            raise Damaged(name)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise Damaged("scaling")
    if not document["target_span"] > 0 or len(document["feature_names"]) < len(mean):
        raise Damaged("target_span, feature_names")
    return Scaling(mean, std, *(document[name] for name in Scaling._fields[2:]))


def checked_weights(tensors, prefix, model, path) -> dict:
    """The `prefix` tensors as a state_dict for `model`: the same names and shapes (else one
    line that says how the two networks differ), floating point, finite once cast to the
    dtype of the model's own parameters."""
    built = model.state_dict()
    saved = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    if not saved:
        raise Damaged(f"no {prefix}* weights")
    if {k: t.shape for k, t in saved.items()} != {k: t.shape for k, t in built.items()}:
        have, now = layer_sizes(saved), layer_sizes(built)
        differ = f"layers {have}; MLP now builds {now}" if have != now else (
            f"parameters {quoted(', '.join(saved))}; MLP's are now {', '.join(built)}")
        raise InputError(f"{path}: its network has {differ}: retrain (a new --out), or load it "
                         "with the code that trained it")
    cast = {}
    for name, t in saved.items():
        cast[name] = t.to(built[name].dtype) if t.is_floating_point() else None
        if cast[name] is None or not torch.isfinite(cast[name]).all():
            raise Damaged(f"{prefix}{name}")
    return cast


def layer_sizes(state_dict) -> str:
    """The sizes a network's Linear layers map between, as 32-64-1, from their weights."""
    shapes = [w.shape for w in state_dict.values() if w.dim() == 2]  # (out, in) each
    if not shapes:
        return "none"
    return "-".join(str(n) for n in [shapes[0][1], *(shape[0] for shape in shapes)])


# --- Resume: last.safetensors holds the whole run, so a stopped run continues bit for bit ---
def load_stopped_run(args) -> dict | None:
    """With --resume, the stopped run's state, checked in full. Its settings replace the
    flags' defaults; a flag typed with another value takes effect with a note, except --seed
    and --valid-ratio, which fix the validation rows: another value there is refused."""
    if args.resume is None:
        return None
    tensors, document = read(args.resume, (LAST,))
    with refusing_damage(args.resume):
        stopped = checked_run(tensors, document, args.resume)
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


def checked_run(tensors, document, path) -> dict:
    """last.safetensors' values: the settings, the epochs and their history, the weights and
    the best model so far, the optimizer's class, settings and state, the random generator."""
    for name, value in document["settings"].items():
        try:
            SETTINGS[name](repr(value))
        except (ValueError, argparse.ArgumentTypeError):
            raise Damaged(f"settings.{name}") from None
    epoch, history, best_epoch = document["epoch"], document["history"], document["best_epoch"]
    if not (1 <= best_epoch <= epoch == len(history)) or [h["epoch"] for h in history] != list(
            range(1, epoch + 1)):
        raise Damaged("epoch, best_epoch, history")
    if not all(h[k] >= 0 for h in history for k in ("train_loss", "valid_loss")):
        raise Damaged("history")
    if document["best_loss"] != history[best_epoch - 1]["valid_loss"]:
        raise Damaged("best_loss")
    if len(document["data"]) != 64 or not set(document["data"]) <= set("0123456789abcdef"):
        raise Damaged("data")
    stats = checked_scaling(tensors, document)
    model = ml.MLP(len(stats.mean))
    rng = tensors.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise Damaged("rng")
    try:
        torch.Generator().set_state(rng)
    except RuntimeError:  # a byte string that is no state of the generator
        raise Damaged("rng") from None
    expected = {"rng", "scaling.mean", "scaling.std"} | {f"{p}{k}" for p in ("model.", "best.")
                                                         for k in model.state_dict()}
    optimizer = checked_optimizer(tensors, document, model, path)
    if not set(tensors) <= expected | {f"optimizer.{k}" for k in optimizer["tensor_names"]}:
        raise Damaged("its tensors' names")
    return {**{k: document[k] for k in ("settings", "epoch", "history", "best_epoch",
                                          "best_loss", "data")},
            "stats": stats, "model": checked_weights(tensors, "model.", model, path),
            "best": checked_weights(tensors, "best.", model, path), "rng": rng,
            "optimizer": optimizer["state_dict"], "optimizer_class": document["optimizer_class"]}


# Param-group keys that say how a release computes a step, not which step: torch releases add
# and drop them (fused, capturable, ...). They are not compared, so a checkpoint written by
# another release resumes; optimizer.load_state_dict fills in those it lacks.
HOW_NOT_WHAT = {"params", "foreach", "fused", "differentiable", "capturable"}


def checked_optimizer(tensors, document, model, path) -> dict:
    """The optimizer that make_optimizer builds now, with the stopped run's class and the
    settings that change its update (momentum, weight decay, betas, ...; the lr aside: --lr may
    change it), and a state whose tensors fit the model's parameters: its state_dict, rebuilt
    from the file's values, and the names of its tensors."""
    built = ml.make_optimizer(model, document["settings"]["lr"])
    saved_class, built_class = document["optimizer_class"], type(built).__name__
    if saved_class != built_class:
        raise InputError(f"{path}: the stopped run's optimizer is {quoted(saved_class)}; "
                         f"make_optimizer now builds {built_class}: resume with the code it ran "
                         "with, or start a new --out")
    groups, now = document["optimizer_groups"], built.state_dict()["param_groups"]
    if len(groups) != len(now):
        raise Damaged("optimizer_groups")
    # A key the file lacks takes today's value; JSON holds a tuple (Adam's betas) as a list:
    # back to a tuple where today's has one
    group = {**now[0], **{k: tuple(v) if isinstance(now[0].get(k), tuple) else v
                          for k, v in groups[0].items()}}
    changed = [f"{k}={shown(str(group[k]))} (now {now[0][k]})" for k in now[0]
               if k in group and k not in HOW_NOT_WHAT | {"lr"} and group[k] != now[0][k]]
    if changed:
        raise InputError(f"{path}: the stopped run's {built_class} had {', '.join(changed)}: "
                         "resume with the code it ran with, or start a new --out")
    params = list(model.parameters())
    state, names = {}, []
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            index, _, key = name[len("optimizer."):].partition(".")
            if not (is_index(index, len(params)) and key):
                raise Damaged("optimizer state")
            i = int(index)
            if not t.is_floating_point() or t.shape not in (params[i].shape, ()) or not (
                    torch.isfinite(t.to(params[i].dtype)).all()):
                raise Damaged(f"optimizer state {i}")
            state.setdefault(i, {})[key] = t.to(params[i].dtype)
            names.append(f"{index}.{key}")
    for index, values in document["optimizer_plain_state"].items():
        if not is_index(index, len(params)):
            raise Damaged("optimizer state")
        state.setdefault(int(index), {}).update(values)
    params_ids = list(range(len(params)))
    return {"state_dict": {"state": state, "param_groups": [{**group, "params": params_ids}]},
            "tensor_names": names}


def is_index(text, n) -> bool:
    """Whether `text` is 0 .. n-1, written in ASCII digits ("²" and "٣" are digits too)."""
    return text.isascii() and text.isdigit() and int(text) < n


def new_or_resumed_run(stopped, model, optimizer, data, device, args, out, cleanup) -> dict:
    """The run's state: a new one, or the `stopped` one restored into the model, the
    optimizer and the random number generator. The last check, of --out, comes here: from
    here on, files are written."""
    settings = {name: getattr(args, name) for name in SETTINGS}
    run = {"settings": settings, "epoch": 0, "history": [], "best_epoch": 0,
           "best_loss": math.inf, "best": None, "data": fingerprint(data)}
    if stopped is not None:
        check_same_data(stopped, data, args)
        model.load_state_dict(stopped["model"])
        optimizer.load_state_dict(stopped["optimizer"])
        for group in optimizer.param_groups:  # load_state_dict brought the old lr back
            group["lr"] = args.lr
        torch.set_rng_state(stopped["rng"])  # the batch order of the epochs to come
        print(f"resuming {args.resume} after epoch {stopped['epoch']}")
        run.update({k: stopped[k] for k in ("epoch", "history", "best_epoch", "best_loss",
                                            "best")})
        if run["epoch"] - run["best_epoch"] >= args.patience:
            print(f"it had stopped early, {args.patience} epochs after its best; "
                  "a larger --patience goes on")
            args.epochs = run["epoch"]
    make_out_dir(out, cleanup, device)
    if stopped is not None and run["epoch"] >= args.epochs:  # no epoch to train: write it now
        save_model(out, run["best"], data.stats, f"epoch {run['best_epoch']}'s model")
    print(f"{len(data.train_rows)} training rows, {len(data.valid_rows)} validation rows, "
          f"{data.x.shape[1]} features; device {device}")
    return run


def fingerprint(data) -> str:
    """A digest of the rows a run trains on, features and targets: a resume needs the same."""
    return hashlib.sha256(data.x.numpy().tobytes() + data.y.numpy().tobytes()).hexdigest()


def check_same_data(stopped, data, args):
    trained_on, given = len(stopped["stats"].mean), data.x.shape[1]
    if trained_on != given:
        raise InputError(f"--resume {args.resume}: the stopped run's model takes {trained_on} "
                         f"features; from {args.train} it now gets {given}")
    differ = [name for name, value in data.stats._asdict().items()
              if not equal(getattr(stopped["stats"], name), value)]
    differ += ["rows"] if stopped["data"] != fingerprint(data) else []
    if differ:
        raise InputError(f"--resume {args.resume}: the stopped run trained on other data than "
                         f"{args.train} (their {differ[0]} differs)")  # the first difference


def equal(a, b) -> bool:  # for tensors and plain values alike
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def end_epoch(run, epoch, model, optimizer, stats, losses, out):
    """Record the epoch in `run` and save it: last.safetensors first, with all it takes to
    resume after it (the best model so far among it), then model.safetensors, when this epoch
    is the best or this --out has no model of this run yet (a resume into a new --out)."""
    train_loss, valid_loss = losses
    run["history"].append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss})
    improved = valid_loss < run["best_loss"]  # validation picks the model, never the test set
    if improved:
        # A copy: a state_dict holds the live parameter tensors, which training goes on to
        # change; without it, "the best model" would drift with every later step.
        run.update(best_loss=valid_loss, best_epoch=epoch,
                   best=copy.deepcopy(model.state_dict()))
    run["epoch"] = epoch
    save_last(out, run, model, optimizer, stats)
    if improved or "model.safetensors" not in out.written:
        save_model(out, run["best"], stats, f"epoch {run['best_epoch']}'s model")
    return improved
