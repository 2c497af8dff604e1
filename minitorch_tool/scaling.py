"""Scaling: the model sees standardised features and a target inside the Sigmoid's range."""

import math
import sys
from typing import NamedTuple

import numpy as np
import torch

from minitorch_tool.errors import InputError, shown

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32


class Scaling(NamedTuple):
    """The training rows' scale: each feature's mean and std, and the target's range, mapped
    into the Sigmoid's (0, 1) as y' = (y - target_low) / target_span. Training runs on y', so
    --lr means the same for any range; every number printed or written is in the target's own
    units. Saved with the weights: new rows must be scaled the same way."""
    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    target_low: float = 0.0
    target_span: float = 1.0
    target_name: str = "prediction"
    feature_names: list[str] | None = None  # the file's, all of them: F, or more if some are
    #                                         left out (CsvDataset: table.features[:, :8])

    @staticmethod
    def fit(features, table, rows):  # `features`: those of `table` the model takes, (N, F)
        fit = features[rows]  # (N_train, F): one copy of the training rows
        std = fit.std(0)  # a constant column gets std 1, so it standardises to 0
        low, span = target_range(table, rows)  # [min, max] -> [0.05, 0.95]
        return Scaling(fit.mean(0), torch.where(std > 0, std, 1.0), low, span,
                       table.target_name, table.feature_names)

    def scaled(self, target):  # (N, 1) float64 in the target's units -> float32 y'
        return torch.from_numpy((target - self.target_low) / self.target_span).float()

    def in_target_units(self, y):  # y' -> y, in float64: a target of 1.7e9 needs its digits
        return y.double() * self.target_span + self.target_low

    def mse_in_target_units(self, losses):  # an MSE of y' times target_span² is one of y
        return [loss * self.target_span**2 for loss in losses]


TARGET_MARGIN = 0.05  # the training targets' [min, max] maps to [0.05, 0.95]
# The losses are float32 numbers of y', shown times target_span² in float64: with a span below
# this, a loss as small as float32 holds would round to 0 there, and an error would vanish.
SMALLEST_SPAN = math.sqrt(sys.float_info.min / float(np.finfo(np.float32).smallest_subnormal))


def target_range(table, rows) -> tuple[float, float]:
    """target_low and target_span for Scaling, from the training rows. The Sigmoid nears 0 and
    1 only for large inputs, where its slope (so the gradient) vanishes: the ends of the
    training range map to 0.05 and 0.95, where the slope is still a fifth of its peak, and a
    test row a little beyond them stays reachable. Every target, [0, 1] ones included, takes
    this one path. A target with no spread, or one too small to show its errors, is refused."""
    target = table.target[rows]
    low, high = float(target.min()), float(target.max())
    name = shown(table.target_name)
    if low == high:
        raise InputError(f"{table.path}: target {name} is {low:g} in every training row: "
                         "there is nothing to learn")
    span = (high - low) / (1 - 2 * TARGET_MARGIN)
    if not span >= SMALLEST_SPAN:
        raise InputError(f"{table.path}: target {name} spans only {high - low:g} over the "
                         "training rows: errors that small cannot be told from 0 in its units "
                         "(float64); rescale it, say times 1e150")
    return low - TARGET_MARGIN * span, span


def check_float32_range(*datasets_and_paths):
    """A validation or test row far outside the training rows' range can overflow float32
    once scaled with their statistics (a cell of 1e36 where their std is 0.001); a validation
    target far outside them, the validation loss (a target of 1e21 where theirs lie in [0, 1]:
    its squared error is beyond float32). Either is one line that names the row, before
    training; the loss's inf would otherwise read as a run that diverged."""
    for dataset, path in datasets_and_paths:
        for name, values in (("feature", dataset.x), ("target", dataset.y)):
            if values is not None and not torch.isfinite(values).all():
                row, column = (int(i) + 1 for i in (~torch.isfinite(values)).nonzero()[0])
                raise InputError(f"{path}: data row {row}, {name} {column}: too far from the "
                                 "training rows' values; scaled, it overflows float32")
        rows = getattr(dataset, "valid_rows", [])
        if dataset.y is not None and len(rows):  # predictions lie in (0, 1): a bound per row
            worst = (dataset.y[rows, 0].double().abs() + 1) ** 2
            if worst.sum() > FLOAT32_MAX:
                row = int(rows[worst.argmax()]) + 1
                target = dataset.stats.in_target_units(dataset.y[row - 1]).item()
                raise InputError(f"{path}: data row {row}, a validation row, has target "
                                 f"{target:g}, so far from the training rows' targets that its "
                                 "squared error overflows float32, the model's dtype")

