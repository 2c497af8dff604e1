"""Scaling: the model sees standardised features and a target inside the Sigmoid's range."""

from typing import NamedTuple

import numpy as np
import torch

from minitorch_tool.errors import InputError

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


def target_range(table, rows) -> tuple[float, float]:
    """target_low and target_span for Scaling, from the training rows. The Sigmoid nears 0 and
    1 only for large inputs, where its slope (so the gradient) vanishes: the ends of the
    training range map to 0.05 and 0.95, where the slope is still a fifth of its peak, and a
    test row a little beyond them stays reachable. Every target, [0, 1] ones included, takes
    this one path. A target with no spread (or one whose square underflows) is refused."""
    target = table.target[rows]
    low, high = float(target.min()), float(target.max())
    if not (high - low) ** 2 > 0:  # the losses, MSEs of y' times target_span², would be 0
        spread = (f"is {low:g} in every training row" if low == high else
                  f"spans only {high - low:g} over the training rows")
        raise InputError(f"{table.path}: target {table.target_name} {spread}: there is "
                         "nothing to learn")
    span = (high - low) / (1 - 2 * TARGET_MARGIN)
    return low - TARGET_MARGIN * span, span


def check_float32_range(*datasets_and_paths):
    """A validation or test row far outside the training rows' range can overflow float32
    once scaled with their statistics (a cell of 1e36 where their std is 0.001): one line,
    before training."""
    for dataset, path in datasets_and_paths:
        for name, values in (("feature", dataset.x), ("target", dataset.y)):
            if values is not None and not torch.isfinite(values).all():
                row, column = (int(i) + 1 for i in (~torch.isfinite(values)).nonzero()[0])
                raise InputError(f"{path}: data row {row}, {name} {column}: too far from the "
                                 "training rows' values; scaled, it overflows float32")

