"""Flags, each checked before anything is read or written; the defaults are the lesson's."""

import argparse
import os

import numpy as np

import minitorch_loop as ml
from minitorch_tool.errors import InputError

LESSON = ml.parse_args([])  # the lesson's defaults: one place for each
FLOAT32 = np.finfo(np.float32)  # the model computes in float32


class OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that names the flag, and no usage block
        raise InputError(message)


def bounded(kind, low, high):
    """An argparse type: an int from `low` to `high`, or a float strictly between them."""
    def parse(text):
        value = kind(text)  # on a ValueError argparse says "invalid <__name__> value: ..."
        between = f"from {low} to {high}" if kind is int else f"above {low:g} and below {high:g}"
        if not (low <= value <= high if kind is int else low < value < high):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {between}, got {text}")
        return value
    parse.__name__, parse.kind = kind.__name__, kind
    return parse


# The flags a checkpoint keeps, checked alike from both; counts fit int64, seeds 32 bits.
COUNT = bounded(int, 1, 2**63 - 1)
SETTINGS = {"seed": bounded(int, 0, 2**32 - 1), "valid_ratio": bounded(float, 0, 1),
            "lr": bounded(float, float(FLOAT32.tiny), float(FLOAT32.max)),  # > 0 in float32 too
            "batch_size": COUNT, "epochs": COUNT, "patience": COUNT}


def parse_args(argv):
    p = OneLineArgumentParser(description="The notes' training loop for your own CSV files.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", default=os.path.join(ml.DATA, "train.csv"),
                   help="training CSV: a header row, features, the target last")
    p.add_argument("--test", default=os.path.join(ml.DATA, "test.csv"),
                   help="test CSV, with or without the target")
    for name, value, text in (
            ("epochs", LESSON.epochs, "epochs in all, resumed ones included"),
            ("batch_size", LESSON.batch_size, "rows per SGD step, as in the notes"),
            ("lr", LESSON.lr, "learning rate of the lesson's optimizer"),
            ("seed", LESSON.seed, "fixes the split, the initial weights and the batch order"),
            ("valid_ratio", 0.2, "share of the training CSV held out for validation"),
            ("patience", 3, "stop after this many epochs without a better validation loss")):
        p.add_argument(f"--{name.replace('_', '-')}", type=SETTINGS[name], default=value, help=text)
    p.add_argument("--device", type=ml.pick_device, default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto takes a GPU when there is one")
    p.add_argument("--out", default="runs",
                   help="directory for the checkpoints, predictions, metrics and pictures")
    p.add_argument("--resume", metavar="LAST",
                   help="continue the run saved in this last.safetensors, with its settings")
    args = p.parse_args(argv)
    p.set_defaults(**dict.fromkeys(vars(args)))  # parsed again without defaults: what was typed
    args.typed = {name for name, value in vars(p.parse_args(argv)).items() if value is not None}
    return args


def settings(args, stopped) -> dict:
    """The stopped run's settings, but those given as flags (noted; seed, valid_ratio refused)."""
    chosen = {name: getattr(args, name) for name in SETTINGS}
    for name, saved in (stopped or {}).get("settings", {}).items():
        value, flag = chosen[name], "--" + name.replace("_", "-")
        if name not in args.typed or value == saved:
            chosen[name] = saved
        elif name in ("seed", "valid_ratio"):  # they pick the validation rows: kept
            raise InputError(f"{flag} {value}: the stopped run in {args.resume} has {saved}, "
                             "which picks its validation rows; drop the flag, or use a new --out")
        else:
            print(f"{flag} {value} replaces the stopped run's {saved}")
    return chosen

