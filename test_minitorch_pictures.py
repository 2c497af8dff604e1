"""The rules of minitorch_tool/pictures.py: real PNGs, a curve that plots exactly the history it is
given with the best epoch marked, a log scale only for losses that span over a decade, and one
dot per row at (true, predicted). Each test reads the figure's artists (lines, dots, scales),
not its pixels, and compares them with the data it passed in.
"""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from minitorch_tool import pictures

losses = st.floats(1e-6, 1e3)  # as a run prints them: positive and finite
values = st.floats(-1e3, 1e3)


def history_of(train, valid, first=1):
    return [{"epoch": first + i, "train_loss": t, "valid_loss": v}
            for i, (t, v) in enumerate(zip(train, valid, strict=True))]


def lines_by_label(fig):
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_both_figures_save_as_pngs_that_read_back():
    """savefig(..., format="png") writes a PNG that reads back as an image of 200-2000 pixels."""
    true = np.random.default_rng(0).normal(size=1200)
    figures = [pictures.loss_figure(history_of([1.2, 0.4, 0.2], [1.0, 0.5, 0.7]), 2),
               pictures.predictions_figure(true[:900], true[:900] + 0.1, true[900:], true[900:])]
    for fig in figures:
        png = io.BytesIO()
        fig.savefig(png, format="png")
        png.seek(0)
        height, width, channels = imread(png, format="png").shape
        assert 200 <= height <= 2000 and 200 <= width <= 2000 and channels in (3, 4)


@given(train=st.lists(losses, min_size=1, max_size=30), data=st.data())
def test_the_curve_plots_the_history_and_marks_the_best_epoch(train, data):
    """x: the epochs (a resumed run's too); y: train_loss and valid_loss; a vertical line at
    best_epoch."""
    valid = data.draw(st.lists(losses, min_size=len(train), max_size=len(train)))
    first = data.draw(st.integers(1, 50))
    best = data.draw(st.integers(first, first + len(train) - 1))
    lines = lines_by_label(pictures.loss_figure(history_of(train, valid, first), best))
    epochs = list(range(first, first + len(train)))
    for label, losses_ in (("training", train), ("validation", valid)):
        assert list(lines[label].get_xdata()) == epochs
        assert list(lines[label].get_ydata()) == losses_
    assert set(lines[f"best epoch ({best}): kept"].get_xdata()) == {best}


@pytest.mark.parametrize("train, valid, scale", [
    ([1.0, 0.3, 0.09], [1.0, 0.4, 0.2], "log"),  # training alone falls more than 10 times
    ([2.0, 1.5, 1.0], [0.15, 0.12, 0.1], "log"),  # neither alone; the two together
    ([1.0, 0.5, 0.11], [1.0, 0.6, 0.4], "linear"),  # 1.0 / 0.11 < 10
])
def test_a_log_scale_only_when_the_losses_span_over_a_decade(train, valid, scale):
    """The y scale is log when max / min > 10 over both curves, linear otherwise."""
    assert pictures.loss_figure(history_of(train, valid), 1).axes[0].get_yscale() == scale


@settings(max_examples=8)  # each example draws a figure
@given(n=st.integers(1, 300), with_test=st.booleans(), data=st.data())
def test_one_dot_per_row_at_true_predicted(n, with_test, data):
    """The first scatter holds the validation rows at (true, predicted), in order; a second
    one the test rows, when given; the line y = x runs through all of them."""
    columns = [np.array(data.draw(st.lists(values, min_size=n, max_size=n)))
               for _ in range(4 if with_test else 2)]
    ax = pictures.predictions_figure(*columns).axes[0]
    pairs = [columns[i:i + 2] for i in range(0, len(columns), 2)]
    assert len(ax.collections) == len(pairs)
    for dots, (true, pred) in zip(ax.collections, pairs, strict=True):
        np.testing.assert_array_equal(dots.get_offsets(), np.column_stack([true, pred]))
    diagonal = lines_by_label(ax.figure)["y = x: a perfect prediction"].get_xydata()
    everything = np.concatenate(columns)
    np.testing.assert_array_equal(diagonal, [[everything.min()] * 2, [everything.max()] * 2])
