"""Pictures: loss.png and predictions.png, drawn without pyplot in matplotlib's default style:
no window opens, and no MPLBACKEND, notebook backend or matplotlibrc changes or breaks them."""

import contextlib
import io
import logging
import os

import numpy as np

from minitorch_tool.errors import InputError, first_line


def pngs(history, best_epoch, stats, pairs) -> dict:
    """loss.png and predictions.png for Out.write; (true, predicted) pairs of scaled targets."""
    points = [stats.in_target_units(t).squeeze(1).numpy()
              for true, pred in pairs if true is not None for t in (true, pred)]
    files = {}
    try:
        with default_style():
            figures = {"loss.png": loss_figure(history, best_epoch),
                       "predictions.png": predictions_figure(*points)}
            for name, fig in figures.items():
                png = io.BytesIO()
                fig.savefig(png, format="png")
                files[name] = (png.getvalue(), "")
    except Exception as e:  # noqa: BLE001 (matplotlib meets the user's rc file, their fonts)
        raise InputError(f"the pictures could not be drawn ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    return files


def loss_figure(history, best_epoch):
    """The learning curve of `history` (metrics.json's), `best_epoch` marked."""
    epochs = [row["epoch"] for row in history]
    train, valid = ([row[key] for row in history] for key in ("train_loss", "valid_loss"))
    fig, ax = new_axes(figsize=(6, 4))
    ax.plot(epochs, train, "o-", markersize=3, label="training")
    ax.plot(epochs, valid, "o-", markersize=3, label="validation")
    ax.axvline(best_epoch, color="gray", linestyle="--", label=f"best epoch ({best_epoch}): kept")
    losses = train + valid
    if min(losses) > 0 and max(losses) > 10 * min(losses):  # a log scale shows both ends
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 2.5
    ax.set(title="Learning curve: the loss after each epoch", xlabel="epoch",
           ylabel="mean squared error (target units²)")
    ax.legend()
    return fig


def predictions_figure(valid_true, valid_pred, test_true=None, test_pred=None):
    """Predicted against true values (in target units), a point per row; y = x is perfect."""
    fig, ax = new_axes(figsize=(5, 5))
    rows = {"validation": (valid_true, valid_pred), "test": (test_true, test_pred)}
    for name, (true, pred) in rows.items():
        if true is not None:  # small see-through dots: where many overlap, the colour deepens
            ax.scatter(true, pred, s=6, alpha=0.4, linewidths=0, label=f"{name} rows")
    values = np.concatenate([v for pair in rows.values() for v in pair if v is not None])
    ends = [values.min(), values.max()]
    ax.plot(ends, ends, color="black", linewidth=1, label="y = x: a perfect prediction")
    ax.set(aspect="equal", title="Predicted against true values", xlabel="true value",
           ylabel="predicted value")
    ax.legend(loc="upper left", markerscale=3)  # loc="best" would test every dot: slow
    return fig


@contextlib.contextmanager
def default_style():
    """matplotlib in its default style, imported quiet and without MPLBACKEND (it may fail)."""
    backend, log = os.environ.pop("MPLBACKEND", None), logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns of an unwritable MPLCONFIGDIR, which is fine
    try:
        import matplotlib.style
    finally:
        log.setLevel(level)
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    with matplotlib.style.context("default"):
        yield


def new_axes(figsize):  # a Figure with one Axes; savefig draws on the Agg canvas, no backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")  # labels never cut off
    return fig, fig.add_subplot()
