"""Pictures: a run as two pictures, which minitorch_run.py writes to --out.

loss.png, the learning curve: training and validation loss per epoch, the best epoch marked.
Both falling: the model is still learning. Validation turning up while training goes on
falling: the model has begun to memorise its training rows (overfitting); the model kept is
the one at the bottom of the validation curve.

predictions.png: each row's prediction against its true value. A perfect model puts every
point on the line y = x; the spread around it is the error, and a cloud tilted or bent away
from it shows values the model gets wrong the same way every time.

The figures are matplotlib Figures on the Agg canvas, made without pyplot, under matplotlib's
default style: no window opens, and nothing of the user's environment (MPLBACKEND, a notebook's
backend, a matplotlibrc with text.usetex or a huge savefig.dpi) changes or breaks them.
"""

import contextlib
import io
import logging
import os

import numpy as np

from minitorch_tool.errors import InputError, first_line


def pngs(history, best_epoch, stats, pairs) -> dict:
    """loss.png (the learning curve of `history`) and predictions.png (each (true, predicted)
    pair of scaled targets, (N, 1) each, in the target's units; a pair without its true values
    is left out), as PNG bytes for Out.write: drawn in memory, so a picture that fails
    replaces no file of --out."""
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
    """The learning curve of `history` (metrics.json's list of {"epoch", "train_loss",
    "valid_loss"}), `best_epoch` marked; a log scale when the losses span over a decade."""
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
    """Predicted against true values, one point per row: the validation rows, and the test
    rows when their targets are known; each argument a vector of N values, in target units."""
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
    """matplotlib, imported here at the first picture (it takes about half a second), under
    its default style. While it imports: MPLBACKEND unset (a notebook's inline backend may not
    be installed here, and an unknown one fails the import), and its log quiet but for errors
    (where MPLCONFIGDIR cannot be written it uses a temporary one, which is fine, and warns)."""
    backend, log = os.environ.pop("MPLBACKEND", None), logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import matplotlib.style
    finally:
        log.setLevel(level)
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    with matplotlib.style.context("default"):
        yield


def new_axes(figsize):
    """A Figure with one Axes, on the Agg canvas: no backend is asked for one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")  # labels never cut off
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()
