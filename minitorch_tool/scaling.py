"""Scaling: the model sees standardised features and a target inside the Sigmoid's range."""

import math
from typing import NamedTuple

import numpy as np
import torch

from minitorch_tool.errors import InputError, shown

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32
TARGET_MARGIN = 0.05  # the training targets' [min, max] maps to [0.05, 0.95]
# Losses of y' (float32) are shown times target_span² (float64): below this span, they round to 0
SMALLEST_SPAN = math.sqrt(np.finfo(np.float64).tiny / np.finfo(np.float32).smallest_subnormal)


class Scaling(NamedTuple):
    """The training rows' scale, saved with the weights: each feature's mean and std, and
    y' = (y - target_low) / target_span inside the Sigmoid's (0, 1): --lr fits any range."""
    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    target_low: float = 0.0
    target_span: float = 1.0
    target_name: str = "prediction"
    feature_names: list[str] | None = None  # the file's (None: a Scaling made by hand)

    @staticmethod
    def fit(features, target, header, path):
        """From the training rows (float64). The Sigmoid nears 0 and 1 only where its slope, so
        the gradient, vanishes: the targets map to [0.05, 0.95], where the slope is a fifth of
        its peak and a test row a little beyond stays reachable."""
        low, high, name = float(target.min()), float(target.max()), shown(header[-1])
        if low == high:
            raise InputError(f"{path}: target {name} is {low:g} in every training row: "
                             "there is nothing to learn")
        span = (high - low) / (1 - 2 * TARGET_MARGIN)
        if not span >= SMALLEST_SPAN:
            raise InputError(f"{path}: target {name} spans only {high - low:g} over the training "
                             "rows, too little to tell its errors from 0: rescale it (times 1e150)")
        std = features.std(0)  # a constant column gets std 1, so it standardises to 0
        return Scaling(features.mean(0), torch.where(std > 0, std, 1.0),
                       low - TARGET_MARGIN * span, span, header[-1], header[:-1])

    def scaled(self, target):  # (N, 1) float64 in the target's units -> float32 y'
        return torch.from_numpy((target - self.target_low) / self.target_span).float()

    def in_target_units(self, y):  # y' -> y, in float64: a target of 1.7e9 needs its digits
        return y.double() * self.target_span + self.target_low
