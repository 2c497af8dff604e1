"""Flags and devices: each checked before anything is read or written. The defaults the
lesson shares (epochs, batch size, learning rate, seed, device) are the lesson's own."""

import argparse

import numpy as np

import minitorch_loop as ml
from minitorch_tool.errors import InputError
from minitorch_tool.scaling import FLOAT32_MAX

LESSON = ml.parse_args([])  # the lesson's defaults: one place for each


class OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that names the flag, and no usage block
        raise InputError(message)


def bounded(kind, low, high):
    """An argparse type: an int from `low` to `high`, or a float strictly between them."""
    def parse(text):
        value = kind(text)  # on a ValueError argparse says "invalid <__name__> value: ..."
        if kind is int and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        if kind is float and not low < value < high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be above {low:g} and below {high:g}, "
                                             f"got {text}")
        return value
    parse.__name__, parse.kind = kind.__name__, kind
    return parse


# What a checkpoint keeps of the flags, and how each is checked, from a command line or a file.
# The largest counts fit int64; seeds beyond 32 bits would alias in the random generators.
SETTINGS = {
    "seed": bounded(int, 0, 2**32 - 1),
    "valid_ratio": bounded(float, 0, 1),
    "lr": bounded(float, float(np.finfo(np.float32).tiny), FLOAT32_MAX),  # > 0 in float32 too
    "batch_size": bounded(int, 1, 2**63 - 1),
    "epochs": bounded(int, 1, 2**63 - 1),
    "patience": bounded(int, 1, 2**63 - 1),
}
FIXED_SETTINGS = ("seed", "valid_ratio")  # they pick the validation rows: a resume keeps them


def parse_args(argv):
    p = OneLineArgumentParser(description="The notes' training loop for your own CSV files.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", default="data/train.csv",
                   help="training CSV: a header row, features, the target last")
    p.add_argument("--test", default="data/test.csv", help="test CSV, with or without the target")
    p.add_argument("--epochs", type=SETTINGS["epochs"], default=LESSON.epochs,
                   help="epochs in all, resumed ones included")
    p.add_argument("--batch-size", type=SETTINGS["batch_size"], default=LESSON.batch_size,
                   help="rows per SGD step, as in the notes")
    p.add_argument("--lr", type=SETTINGS["lr"], default=LESSON.lr,
                   help="learning rate; MSE through a Sigmoid has small gradients")
    p.add_argument("--seed", type=SETTINGS["seed"], default=LESSON.seed,
                   help="fixes the split, the initial weights and the batch order")
    p.add_argument("--valid-ratio", type=SETTINGS["valid_ratio"], default=0.2,
                   help="share of the training CSV held out for validation")
    p.add_argument("--patience", type=SETTINGS["patience"], default=3,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--device", type=ml.pick_device, default=LESSON.device,
                   help="auto, cpu, cuda, cuda:N or mps; auto takes a GPU when there is one")
    p.add_argument("--out", default="runs",
                   help="directory for the checkpoints, predictions, metrics and pictures")
    p.add_argument("--resume", metavar="LAST",
                   help="continue the run saved in this last.safetensors, with its settings")
    args = p.parse_args(argv)
    p.set_defaults(**dict.fromkeys(vars(args)))  # parsed again without defaults: what was typed
    args.typed = {name for name, value in vars(p.parse_args(argv)).items() if value is not None}
    return args
