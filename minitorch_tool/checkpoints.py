"""Checkpoints: model.safetensors (the best model) and last.safetensors (all a resume needs),
read back checked in full. Nothing in them can be a weapon: tensors are safetensors' (no
pickle, no code), plain values one JSON document in its header, checked against schemas."""

import argparse
import hashlib
import json
import math

import safetensors.torch  # and safetensors.safe_open
import torch

import minitorch_loop as ml
from minitorch_tool.errors import InputError, quoted, shown
from minitorch_tool.flags import SETTINGS
from minitorch_tool.scaling import Scaling

FORMAT = "minitorch_run 1"  # what the JSON's "format" says; another value is refused
HEADER_KEY = "minitorch_run"  # the entry of the safetensors header's metadata with the JSON

# JSON schemas: a type (float finite, int not bool), [each item's], {exact names}, {str: any name}
PLAIN = "plain"  # an optimizer's setting: see plain()
MODEL = {"format": str, "target_low": float, "target_span": float, "target_name": str,
         "feature_names": [str]}
LAST = {**MODEL, "settings": {name: parse.kind for name, parse in SETTINGS.items()},
        "epoch": int, "history": [{"epoch": int, "train_loss": float, "valid_loss": float}],
        "best_epoch": int, "best_loss": float, "data": str, "optimizer_class": str,
        "optimizer_groups": [{str: PLAIN}]}
RUN = ("settings", "epoch", "history", "best_epoch", "best_loss", "data")  # a run's values
ANOTHER_RUN = ": use the code that wrote it, or start afresh in a new --out"


class Damaged(Exception):
    """A value of a checkpoint that this program did not write: named, never shown whole."""


# --- Writing: tensors and a JSON document, as the bytes of one safetensors file ---
def epoch_files(run, model, optimizer, stats, with_model) -> dict:
    """last.safetensors (the whole run) and, with_model, model.safetensors, for Out.write."""
    tensors = {**prefixed("model.", model.state_dict()), **prefixed("best.", run["best"]),
               "rng": torch.get_rng_state()}
    for i, state in optimizer.state_dict()["state"].items():  # tensors, in torch's optimizers
        tensors |= prefixed(f"optimizer.{i}.", state)  # (not LBFGS: train() gives no closure)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    last = as_bytes(tensors, stats, {**{k: run[k] for k in RUN}, "optimizer_groups": groups,
                                     "optimizer_class": type(optimizer).__name__})
    files = {"last.safetensors": (last, f"epoch {run['epoch']}")}
    if with_model:
        best = as_bytes(prefixed("model.", run["best"]), stats, {})
        files["model.safetensors"] = (best, f"epoch {run['best_epoch']}'s model")
    return files


def as_bytes(tensors, stats, document) -> bytes:
    """One safetensors file: `tensors`, the scaling, and as JSON in its header `document`."""
    tensors = {**tensors, "scaling.mean": stats.mean, "scaling.std": stats.std}
    cpu = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    scaling = {k: getattr(stats, k) for k in MODEL if k != "format"}
    text = json.dumps({"format": FORMAT, **scaling, **document}, allow_nan=False)
    return safetensors.torch.save(cpu, metadata={HEADER_KEY: text})


def prefixed(prefix, state_dict):
    return {prefix + name: tensor for name, tensor in state_dict.items()}


# --- Reading: every value checked before it is used ---
def load_model(path, device="cpu") -> tuple[ml.MLP, Scaling]:
    """The model of a model.safetensors (or a last.safetensors) on `device`, and its scaling."""
    saved = read(path)
    model = ml.MLP(len(saved["stats"].mean))
    model.load_state_dict(saved["model"])
    return model.to(device), saved["stats"]


def read(path, resume=False) -> dict:
    """A checkpoint's scaling and weights (and, to resume, its run), checked; or InputError."""
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip archive: torch.save's .pt, which runs code
                raise InputError(f"{path}: a torch.save file (an earlier version's, or the "
                                 "lesson's model.pt), never loaded here: it could run code")
        with safetensors.safe_open(path, "pt") as f:
            text = (f.metadata() or {}).get(HEADER_KEY)
            if text is None:
                raise InputError(f"{path}: not a minitorch_run checkpoint")
            try:
                document = json.loads(text)  # NaN, Infinity: check_json refuses them
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                raise Damaged("its JSON does not read") from None
            names = document.keys() if isinstance(document, dict) else ()
            if resume and names == MODEL.keys():
                raise InputError(f"{path}: a model file; --resume takes a run's last.safetensors")
            check_json(document, LAST if resume or names == LAST.keys() else MODEL, "the document")
            if document["format"] != FORMAT:
                raise Damaged("its format")
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (no dict)
        stats = checked_scaling(tensors, document)
        with torch.device("meta"):  # its shapes only: no memory for what a file claims
            model = ml.MLP(len(stats.mean))
        saved = {"stats": stats, "model": checked_weights(tensors, "model.", model, path)}
        return saved | (checked_run(tensors, document, model, path) if resume else {})
    except Damaged as e:
        raise InputError(f"{path}: a damaged or foreign checkpoint ({e}){ANOTHER_RUN}") from None
    except OSError as e:  # missing, a directory, not readable
        raise InputError(f"{path}: {e.strerror or e}") from None
    except safetensors.SafetensorError:
        raise InputError(f"{path}: not a checkpoint (truncated, or not safetensors)") from None


def check_json(value, schema, where):
    if schema is float:
        ok = type(value) is float and math.isfinite(value)
    elif schema in (int, str):
        ok = type(value) is schema
    elif schema == PLAIN:
        ok = plain(value)
    elif isinstance(schema, list):
        ok = type(value) is list
        for i, item in enumerate(value if ok else []):
            check_json(item, schema[0], f"{where}[{i}]")
    else:
        ok = type(value) is dict and (str in schema or value.keys() == schema.keys())
        for name in value if ok else []:
            check_json(value[name], schema.get(str) or schema[name], f"{where}.{shown(name, 20)}")
    if not ok:
        raise Damaged(where)


def plain(value) -> bool:  # None, a flag, a number, a word, or up to 8 of them (Adam's betas)
    values = value if type(value) is list and len(value) <= 8 else [value]
    return all(v is None or type(v) in (bool, int, str) or type(v) is float and math.isfinite(v)
               for v in values)


def checked_scaling(tensors, document) -> Scaling:
    """A finite mean and a finite std > 0 for each feature name, a target span > 0."""
    n = len(document["feature_names"])
    for name in ("scaling.mean", "scaling.std"):
        t = tensors.get(name)
        if t is None or t.dtype != torch.float64 or t.shape != (n,) or not torch.isfinite(t).all():
            raise Damaged(name)
    if n == 0 or not (tensors["scaling.std"] > 0).all() or not document["target_span"] > 0:
        raise Damaged("scaling")
    return Scaling(tensors["scaling.mean"], tensors["scaling.std"],
                   *(document[name] for name in Scaling._fields[2:]))


def checked_weights(tensors, prefix, model, path) -> dict:
    """The `prefix` tensors as `model`'s state_dict: its names and shapes, finite in its dtype."""
    built = model.state_dict()
    saved = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    if not saved:
        raise Damaged(f"no {prefix}* weights")
    if {k: t.shape for k, t in saved.items()} != {k: t.shape for k, t in built.items()}:
        have, now = layer_sizes(saved), layer_sizes(built)
        differ = f"layers {have}; MLP now builds {now}" if have != now else (
            f"parameters {quoted(', '.join(saved))}; MLP's are now {', '.join(built)}")
        raise InputError(f"{path}: its network has {differ}{ANOTHER_RUN}")
    cast = {k: t.to(built[k].dtype) for k, t in saved.items() if t.is_floating_point()}
    for name in saved:
        if name not in cast or not torch.isfinite(cast[name]).all():
            raise Damaged(prefix + name)
    return cast


def layer_sizes(state_dict) -> str:
    shapes = [w.shape for w in state_dict.values() if w.dim() == 2] or [(0, 0)]  # (out, in)
    return "-".join(str(n) for n in [shapes[0][1], *(shape[0] for shape in shapes)])


# --- Resume: last.safetensors holds the whole run, so a stopped run continues bit for bit ---
def checked_run(tensors, document, model, path) -> dict:
    """The run's values, its best model, random generator and optimizer (`model` gives shapes)."""
    for name, value in document["settings"].items():
        try:
            SETTINGS[name](repr(value))
        except (ValueError, argparse.ArgumentTypeError):
            raise Damaged(f"settings.{name}") from None
    history, epoch, best = document["history"], document["epoch"], document["best_epoch"]
    if epoch != len(history) or [h["epoch"] for h in history] != list(range(1, epoch + 1)):
        raise Damaged("epoch, history")
    if not all(h[k] >= 0 for h in history for k in ("train_loss", "valid_loss")):
        raise Damaged("history")
    if not 1 <= best <= epoch or document["best_loss"] != history[best - 1]["valid_loss"]:
        raise Damaged("best_epoch, best_loss")
    rng = tensors.get("rng")
    try:  # a ByteTensor that is a state of the generator
        torch.Generator().set_state(rng if rng is not None and rng.dim() == 1 else None)
    except (RuntimeError, TypeError):
        raise Damaged("rng") from None
    others = {k for k in tensors if not k.startswith(("model.", "best.", "optimizer."))}
    if not others <= {"rng", "scaling.mean", "scaling.std"}:  # the rest, checked_weights'
        raise Damaged("its tensors' names")
    return {**{k: document[k] for k in RUN}, "rng": rng,
            "best": checked_weights(tensors, "best.", model, path),
            "optimizer": checked_optimizer(tensors, document, model, path)}


# How a torch release computes a step, not which step: today's taken, so another's file resumes
NOT_COMPARED = {"params", "foreach", "fused", "differentiable", "capturable"}


def checked_optimizer(tensors, document, model, path) -> dict:
    """The optimizer's state_dict: make_optimizer's class and settings, tensors that fit."""
    built = ml.make_optimizer(model, document["settings"]["lr"])
    saved_class, built_class = document["optimizer_class"], type(built).__name__
    if saved_class != built_class:
        raise InputError(f"{path}: the stopped run's optimizer is {quoted(saved_class)}; "
                         f"make_optimizer now builds {built_class}{ANOTHER_RUN}")
    groups, changed = built.state_dict()["param_groups"], []
    if len(groups) != len(document["optimizer_groups"]):
        raise Damaged("optimizer_groups")
    for now, saved in zip(groups, document["optimizer_groups"], strict=True):
        for k, v in saved.items():  # JSON holds a tuple (Adam's betas) as a list
            v = tuple(v) if type(v) is list and type(now.get(k)) is tuple else v
            if k in now and k not in NOT_COMPARED and v != now[k]:
                changed.append(f"{k}={shown(str(v))} (now {now[k]})")
    if changed:
        raise InputError(f"{path}: the stopped run's {built_class} had {', '.join(changed)}"
                         f"{ANOTHER_RUN}")
    params = enumerate(p for group in built.param_groups for p in group["params"])  # its order
    params, state = {str(i): p for i, p in params}, {}  # text keys: "²" is a digit, no index
    for name in (name for name in tensors if name.startswith("optimizer.")):
        index, _, key = name.removeprefix("optimizer.").partition(".")
        p = params.get(index) if key and tensors[name].is_floating_point() else None
        t = None if p is None else tensors[name].to(p.dtype)
        if t is None or t.shape not in (p.shape, ()) or not torch.isfinite(t).all():
            raise Damaged(f"optimizer state {shown(name, 30)}")
        state.setdefault(int(index), {})[key] = t
    return {"state": state, "param_groups": groups}


def fingerprint(data) -> str:
    """A digest of the scaled rows a run trains on: a resume needs the same inputs."""
    return hashlib.sha256(data.x.numpy().tobytes() + data.y.numpy().tobytes()).hexdigest()


def check_same_data(stopped, digest, n_features, args):
    """The stopped run trained on --train's rows: as many features, rows of this `digest`."""
    n, where = len(stopped["stats"].mean), f"--resume {args.resume}: the stopped run"
    if n != n_features:
        raise InputError(f"{where} took {n} features; {args.train} has {n_features}")
    if stopped["data"] != digest:
        raise InputError(f"{where} trained on other rows than {args.train}'s")
