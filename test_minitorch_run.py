"""The guarantees of minitorch_run.py, the lesson's loop for real files: CSVs read as they
come and checked, any target range, a loader that fetches whole batches, the whole run end
to end, bad input refused in one line, checkpoints that survive crashes and hostile files,
exact resume, an honest --out however a run ends, torchrun. The lesson's own rules, and what
the tool shares with it (CsvDataset's items, the loop steps), are tested in
test_minitorch_loop.py.

Each test states one guarantee in its name and docstring, and checks it against an independent
computation (by hand, in float64 NumPy), never against the code under test.

    make test        # both files; or: .venv/bin/python -m pytest -q test_minitorch_run.py
"""

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import torch.distributed as dist
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Subset

import minitorch_loop as ml  # not `from ... import test`: pytest would collect it as a test
import minitorch_run as mr
from minitorch_tool import checkpoints, csvs, errors, outputs, pictures, speed, torchrun
from minitorch_tool.csvs import TableDataset
from minitorch_tool.errors import InputError
from minitorch_tool.scaling import Scaling

# The lesson's helpers and strategies (its CSVs, the model by hand in float64, the tolerances);
# importing them also loads its hypothesis profile. Helpers only: no test is imported.
from test_minitorch_loop import (
    DATA,
    DEVICES,
    FLOAT32_RTOL,
    Counting,
    Payload,
    batch_sizes,
    close,
    n_features,
    predict64,
    regression,
    rows,
    seeds,
    standardised,
    write_csv,
)

ROOT = Path(mr.__file__).parent
NAMES = list(ml.MLP(3).state_dict())  # the lesson's parameter names: net.0.weight, ... today


def posix_only(what):
    """Skip a test elsewhere than on Linux or macOS: it needs `what`, which Windows lacks."""
    return pytest.mark.skipif(os.name != "posix", reason=f"needs POSIX: {what}")


def indexed_dataset(scratch, n, n_features=2):
    """n rows whose feature 0 is the row number and whose target is row / n; no scaling."""
    x = np.column_stack([np.arange(n)] + [np.ones(n)] * (n_features - 1))
    path = write_csv(scratch / "indexed.csv", x, np.arange(n) / n)
    return TableDataset(path, stats=Scaling(torch.zeros(n_features), torch.ones(n_features)))


def read_checkpoint(path):
    """A checkpoint's tensors and its JSON document, read with safetensors itself."""
    with safetensors.safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["minitorch_run"])  # noqa: SIM118


def write_checkpoint(path, tensors, document):
    """A checkpoint as minitorch_run writes one: tensors, and the JSON in the header."""
    safetensors.torch.save_file(tensors, path, metadata={"minitorch_run": json.dumps(document)})
    return path


def weights_of(tensors, prefix="model."):
    """The state_dict among a checkpoint's tensors, by its prefix (model., best.)."""
    return {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}


@contextlib.contextmanager
def an_out(folder):
    """An outputs.Out on `folder`, locked while the block runs, as a run holds it."""
    with contextlib.ExitStack() as cleanup:
        yield outputs.Out(str(folder), cleanup, "cpu")


def save_model(model, stats, folder):
    """model.safetensors of `model` and its scaling, in `folder`; returns its path."""
    data = checkpoints.as_bytes(checkpoints.prefixed("model.", model.state_dict()), stats, {})
    with an_out(folder) as out:
        out.write({"model.safetensors": (data, "")})
    return folder / "model.safetensors"


def scaled_by_hand(y, fit_rows=slice(None)):
    """The target mapped as the run maps it: the training rows' [min, max] onto [0.05, 0.95]."""
    low, high = y[fit_rows].min(), y[fit_rows].max()
    span = (high - low) / 0.9
    return (y - (low - 0.05 * span)) / span, span


# --- 一 Step 1: TableDataset (the lesson's CsvDataset for real files) and the batched loader ---

@given(n=st.integers(4, 60), n_features=n_features, valid_ratio=st.floats(0, 0.5), seed=seeds)
def test_features_and_target_are_scaled_with_the_training_rows_only(scratch, n, n_features,
                                                                    valid_ratio, seed):
    """The split is the lesson's split_rows; the features' mean and std, and the target's
    range, come from its training rows; every row is scaled with them."""
    x, y = regression(n, n_features, seed, scale=1000)
    path = write_csv(scratch / "d.csv", x, y)
    n_valid = round(valid_ratio * n)
    if n - n_valid < 2 or (valid_ratio > 0 and n_valid == 0):  # too few rows to split
        with pytest.raises(InputError, match="too few"):
            TableDataset(path, valid_ratio=valid_ratio, seed=seed)
        return
    dataset = TableDataset(path, valid_ratio=valid_ratio, seed=seed)
    split = ml.split_rows(n, valid_ratio, seed)
    assert torch.equal(dataset.train_rows, split["train"])
    assert torch.equal(dataset.valid_rows, split["valid"])
    train_rows = split["train"].numpy()
    close(dataset.x.numpy(), standardised(x, train_rows))
    close(dataset.y.numpy()[:, 0], scaled_by_hand(y, train_rows)[0])


@pytest.mark.parametrize("labelled", [True, False])
def test_a_test_file_of_one_row_is_read(tmp_path, labelled):
    """The rule "at least 2 rows to train on" is the training file's; a test file may hold one,
    with its target or without."""
    x, y = regression(20, 3, seed=2)
    train = TableDataset(write_csv(tmp_path / "train.csv", x, y))
    one = TableDataset(write_csv(tmp_path / "one.csv", x[:1], y[:1] if labelled else None),
                       stats=train.stats)
    assert len(one) == 1 and (one.y is None) != labelled
    np.testing.assert_allclose(one.x.numpy(), train.x[:1].numpy())


@given(n=rows, batch_size=batch_sizes, shuffle=st.booleans())
def test_the_batched_loader_yields_the_notes_dataloaders_batches(scratch, n, batch_size,
                                                                 shuffle):
    """make_loader serves the batches of the notes' DataLoader(dataset, batch_size, shuffle):
    the same sizes and shapes, a short last one included; unshuffled the very same batches,
    shuffled every row once per epoch, in a new order each epoch."""
    dataset = indexed_dataset(scratch, max(n, 50) if shuffle else n, 3)
    loader = speed.make_loader(dataset, batch_size, shuffle)
    notes = list(DataLoader(dataset, batch_size, shuffle))
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert [(x.shape, y.shape) for x, y in batches] == [(x.shape, y.shape) for x, y in notes]
        assert len(loader) == len(notes)
        rows = [int(i) for x, y in batches for i in x[:, 0]]
        assert sorted(rows) == list(range(len(dataset)))
        if not shuffle:
            assert all(torch.equal(x, a) and torch.equal(y, b)
                       for (x, y), (a, b) in zip(batches, notes, strict=True))
    orders = [[int(i) for x, _ in batches for i in x[:, 0]] for batches in epochs]
    assert (orders[0] != orders[1]) == shuffle, "a new order each epoch, only when shuffled"


class CountingDataset(Counting, TableDataset):
    """A TableDataset that records each __getitem__ call."""


@example(n=5, batch_size=5)  # the notes: DataLoader(dataset, batch_size=5) calls getitem 5 times
@given(n=rows, batch_size=batch_sizes)
def test_the_batched_loader_calls_getitem_once_per_batch(scratch, n, batch_size):
    """The notes' DataLoader calls __getitem__ once per row; ours (make_loader) once per
    batch, with the batch's row indices."""
    x = np.arange(2 * n, dtype=float).reshape(n, 2)
    dataset = CountingDataset(write_csv(scratch / "count.csv", x, np.zeros(n)),
                              stats=Scaling(torch.zeros(2), torch.ones(2)))
    dataset.calls = []
    for _ in speed.make_loader(dataset, batch_size, shuffle=False):
        pass
    assert len(dataset.calls) == -(-n // batch_size)
    assert torch.cat(dataset.calls).tolist() == list(range(n))


@given(n=rows, batch_size=batch_sizes)
def test_the_batch_sampler_yields_as_many_batches_as_its_len(n, batch_size):
    """TensorBatchSampler: len() and what it yields agree, a short last batch included."""
    sampler = speed.TensorBatchSampler(range(n), batch_size, drop_last=False)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-n // batch_size)


def test_real_exports_read_like_plain_files(tmp_path):
    """A UTF-8 BOM, CRLF line ends, quoted numbers and trailing blank lines change nothing."""
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"a,b,y\n1,2,0.5\n3,4,0.25\n5,6,1\n")
    export = tmp_path / "export.csv"
    export.write_bytes(b'\xef\xbb\xbf"a","b","y"\r\n"1",2,0.5\r\n3,"4",0.25\r\n5,6,"1"\r\n\r\n\r\n')
    a, b = TableDataset(plain), TableDataset(export)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


@posix_only("os.mkfifo")
def test_a_csv_from_a_pipe_is_read_whole_as_from_the_disk(tmp_path):
    """A named pipe, as --train <(zcat train.csv.gz) gives, can be read once: every row of a
    file larger than one read buffer arrives, and old Mac line ends (\\r only) read as from the
    disk."""
    x, y = regression(3000, 4, seed=0)
    text = write_csv(tmp_path / "plain.csv", x, y).read_bytes()
    text = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    (tmp_path / "cr.csv").write_bytes(text)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(text))
    writer.start()
    piped = TableDataset(fifo)
    writer.join()
    assert torch.equal(piped.x, TableDataset(tmp_path / "cr.csv").x) and len(piped) == 3000
    assert torch.equal(piped.x, TableDataset(tmp_path / "plain.csv").x)


def test_a_constant_column_standardises_to_zero(tmp_path):
    """A feature with no spread gets std 1 (not 0: no division by zero), so it reads 0."""
    x, y = regression(20, 3, seed=1)
    x[:, 1] = 7.0
    data = TableDataset(write_csv(tmp_path / "c.csv", x, y))
    assert data.stats.std[1] == 1 and torch.equal(data.x[:, 1], torch.zeros(20))
    close(data.x[:, 0].numpy(), (x[:, 0] - x[:, 0].mean()) / x[:, 0].std(ddof=1))


# --- 六.5 Checkpoints: the format, saved and loaded ---

@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_saved_on_any_device_loads_on_the_cpu(tmp_path, device):
    """load_model(path, "cpu") reads weights saved from a GPU. The scaling's float64
    statistics stay on the CPU (MPS has no float64)."""
    model = ml.MLP(3).to(device)
    stats = Scaling(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                    0.0, 1.0, "y", ["a", "b", "c"])
    loaded, _ = checkpoints.load_model(save_model(model, stats, tmp_path), "cpu")
    for saved, read in zip(model.parameters(), loaded.parameters(), strict=True):
        assert read.device.type == "cpu" and torch.equal(read, saved.cpu())


def test_save_then_load_gives_identical_predictions(tmp_path):
    """A model saved in model.safetensors and read back by load_model predicts the same bits,
    and brings back the scaling it was trained with."""
    x, y = regression(30, 5, seed=4)
    dataset = TableDataset(write_csv(tmp_path / "d.csv", x, y))
    model = ml.MLP(in_features=5)
    loaded, stats = checkpoints.load_model(save_model(model, dataset.stats, tmp_path))
    loader = speed.make_loader(dataset, batch_size=8, shuffle=False)
    assert torch.equal(ml.test(model, loader, "cpu"), ml.test(loaded, loader, "cpu"))
    assert torch.equal(stats.mean, dataset.stats.mean) and torch.equal(stats.std,
                                                                        dataset.stats.std)
    assert stats[2:] == dataset.stats[2:] and stats.target_name == "y"


# --- 六 main(): the whole run, end to end, on users' own files ---

def run_main(tmp_path, n_features, labelled_test=True, *flags):
    """main() on raw CSVs with `n_features` columns; returns (out dir, test features, targets)."""
    x, y = regression(400, n_features, seed=5, scale=1000)
    tmp_path.mkdir(exist_ok=True)
    train_csv = write_csv(tmp_path / "train.csv", x[:300], y[:300])
    test_csv = write_csv(tmp_path / "test.csv", x[300:], y[300:] if labelled_test else None)
    out = tmp_path / "out"
    mr.main(["--train", str(train_csv), "--test", str(test_csv), "--out", str(out),
             "--device", "cpu", *flags])
    return out, x, y


def read_predictions(out, target_name="y"):
    """predictions.csv as an (N, 2) array of ids and predictions; its header names the target."""
    with open(out / "predictions.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", target_name]
    return np.array([[float(v) for v in row] for row in table[1:]])


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


def check_predictions_come_from_model_pt(out, x, y, valid_ratio):
    """predictions.csv: id 0..N-1, each the model in model.safetensors applied to that test
    row, standardised with the training rows' statistics that it carries, and mapped back to
    the target's units."""
    tensors, checkpoint = read_checkpoint(out / "model.safetensors")
    train_rows = TableDataset(out.parent / "train.csv", valid_ratio=valid_ratio).train_rows
    close(tensors["scaling.mean"].numpy(), x[train_rows.numpy()].mean(0))
    model = ml.MLP(in_features=x.shape[1])
    model.load_state_dict(weights_of(tensors))
    predictions = read_predictions(out)
    np.testing.assert_array_equal(predictions[:, 0], np.arange(100))
    span = scaled_by_hand(y[:300], train_rows.numpy())[1]
    low = y[:300][train_rows.numpy()].min() - 0.05 * span
    expected = predict64(model, standardised(x, train_rows.numpy())[300:])
    np.testing.assert_allclose(predictions[:, 1], expected[:, 0] * span + low, atol=1e-6)
    assert metrics(out)["test_mse"] == pytest.approx(np.mean((predictions[:, 1] - y[300:]) ** 2),
                                                     abs=1e-6)
    return model, standardised(x, train_rows.numpy()), checkpoint


def test_main_writes_one_prediction_per_test_row_in_order(tmp_path):
    """The test file's rows, in order, through the saved best model."""
    out, x, y = run_main(tmp_path, 5, True, "--epochs", "3", "--valid-ratio", "0.25")
    check_predictions_come_from_model_pt(out, x, y, valid_ratio=0.25)


def test_main_predicts_an_unlabelled_test_file(tmp_path, capsys):
    """A test CSV without the target column: predictions for every row, test_mse null, and a
    line that says why there is no test MSE."""
    out, _, _ = run_main(tmp_path, 4, False, "--epochs", "2")
    assert len(read_predictions(out)) == 100 and metrics(out)["test_mse"] is None
    assert "100 predictions, no test MSE: the test CSV has no target column" in (
        capsys.readouterr().out)


def test_a_last_column_of_another_name_is_never_scored(tmp_path, capsys):
    """A test file whose column after the features is not the training target (an id written
    last) is predicted without a test MSE, and a line says why: it is never scored."""
    x, y = regression(200, 3, seed=8)
    train = write_csv(tmp_path / "t.csv", x[:150], y[:150])
    test = tmp_path / "u.csv"
    with open(test, "w", newline="") as f:
        csv.writer(f).writerows([["f0", "f1", "f2", "id"],
                                 *np.column_stack([x[150:], 1000 + np.arange(50)]).tolist()])
    out = main_on(tmp_path / "out", train, test)
    assert metrics(out)["test_mse"] is None and len(read_predictions(out)) == 50
    assert "no test MSE: its last column, 'id', is not the target 'y'" in capsys.readouterr().out


def test_raw_features_in_the_thousands_train_sensibly(tmp_path):
    """Unscaled features and a different column count need no code change to learn."""
    out, _, y = run_main(tmp_path, 7, True, "--epochs", "30")
    baseline = np.mean((y[300:] - y[300:].mean()) ** 2)  # predicting the (test!) mean
    test_mse = metrics(out)["test_mse"]
    assert test_mse < 0.1 * baseline, f"test MSE {test_mse:.4f} vs {baseline:.4f} for a constant"


def main_on(out, train, test, *flags):
    """main() on two CSV files; returns --out."""
    mr.main(["--train", str(train), "--test", str(test), "--out", str(out), "--device", "cpu",
             "--epochs", "3", "--patience", "9", *flags])
    return out


@settings(max_examples=3)
@given(a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3))
def test_any_target_range_trains_the_same(tmp_path_factory, a, b):
    """Equivariance: for targets a*y + b (a > 0), the same seed gives predictions a*p + b and
    losses a² times as large: the target is scaled into (0, 1) the same way either way."""
    tmp = tmp_path_factory.mktemp("affine")
    x, y = regression(200, 3, seed=2)
    runs = []
    for name, target in (("plain", y), ("affine", a * y + b)):
        train = write_csv(tmp / f"{name}_train.csv", x[:150], target[:150])
        test = write_csv(tmp / f"{name}_test.csv", x[150:], target[150:])
        runs.append(main_on(tmp / name, train, test))
    plain, affine = (read_predictions(out)[:, 1] for out in runs)
    close(affine, a * plain + b)
    for p, q in zip(metrics(runs[0])["history"], metrics(runs[1])["history"], strict=True):
        assert q["train_loss"] == pytest.approx(a**2 * p["train_loss"], rel=1e-3)
        assert q["valid_loss"] == pytest.approx(a**2 * p["valid_loss"], rel=1e-3)


def test_the_target_scale_comes_from_the_training_rows_only(tmp_path):
    """Other targets in the validation rows and in the test file change no weight."""
    x, y = regression(200, 3, seed=3)
    valid_rows = ml.split_rows(150, 0.2, 0)["valid"].numpy()
    edited = y.copy()
    edited[valid_rows] = 100 * edited[valid_rows] - 7  # far outside the training range
    edited[150:] *= -50
    outs = [main_on(tmp_path / name, write_csv(tmp_path / f"{name}.csv", x[:150], t[:150]),
                    write_csv(tmp_path / f"{name}_test.csv", x[150:], t[150:]))
            for name, t in (("plain", y), ("edited", edited))]
    (a, a_doc), (b, b_doc) = (read_checkpoint(out / "last.safetensors") for out in outs)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    assert a_doc["target_low"] == b_doc["target_low"] and a_doc["target_span"] == b_doc[
        "target_span"]


def write_with_ids(path, ids, x, y=None):
    names = ["Id"] + [f"f{j}" for j in range(x.shape[1])] + ([] if y is None else ["y"])
    table = np.column_stack([ids, x] + ([] if y is None else [y]))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([names, *table.tolist()])
    return path


def test_an_id_column_is_never_a_feature(tmp_path):
    """A first column named id: the other columns, all of them, are the features (the same
    predictions whatever the ids), and predictions.csv gives back the test file's ids, in
    order."""
    x, y = regression(200, 12, seed=4)
    rng = np.random.default_rng(0)
    predictions = []
    for name, ids in (("ordered", np.arange(200)), ("shuffled", rng.permutation(200) * 7 + 3)):
        out = main_on(tmp_path / name, write_with_ids(tmp_path / f"{name}.csv", ids[:150],
                                                      x[:150], y[:150]),
                      write_with_ids(tmp_path / f"{name}_test.csv", ids[150:], x[150:]))
        predictions.append(read_predictions(out))
        np.testing.assert_array_equal(predictions[-1][:, 0], ids[150:])
    np.testing.assert_array_equal(predictions[0][:, 1], predictions[1][:, 1])
    assert len(checkpoints.load_model(out / "model.safetensors")[1].mean) == 12


def test_ids_come_back_as_written(tmp_path):
    """Ids are text: letters, leading zeros and integers beyond float64's 2**53 come back as
    the test file has them, in predictions.csv, never as a parsed number."""
    x, y = regression(60, 3, seed=5)
    ids = ["A0", "000123", "9007199254740993", "12345678901234567890"] * 15
    out = main_on(tmp_path / "out", write_with_ids(tmp_path / "t.csv", ids[:40], x[:40], y[:40]),
                  write_with_ids(tmp_path / "u.csv", ids[40:], x[40:]))
    with open(out / "predictions.csv") as f:
        assert [row[0] for row in csv.reader(f)][1:] == ids[40:]


def test_predictions_keep_every_digit_of_the_target(tmp_path):
    """A target of 1.7e9 + y (like a timestamp): predictions.csv is exact to float64, not to
    7 digits, and a target named "y, mm" is a quoted header cell."""
    x, y = regression(200, 3, seed=6)
    names = ["f0", "f1", "f2", "y, mm"]
    for name, part in (("t.csv", slice(0, 150)), ("u.csv", slice(150, 200))):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([names, *np.column_stack([x, 1.7e9 + y])[part].tolist()])
    out = main_on(tmp_path / "out", tmp_path / "t.csv", tmp_path / "u.csv")
    predictions = read_predictions(out, "y, mm")[:, 1]
    model, stats = checkpoints.load_model(out / "model.safetensors")
    data = TableDataset(tmp_path / "u.csv", stats=stats)
    by_hand = predict64(model, data.x.double().numpy())[:, 0] * stats.target_span + (
        stats.target_low)
    np.testing.assert_allclose(predictions, by_hand, rtol=1e-12, atol=0)


def test_a_test_target_far_beyond_the_training_range_still_reports(tmp_path):
    """A test target of 1e20 (the training targets in [0, 1]): its squared error is beyond
    float32, not float64; the run ends with a finite test MSE and a valid metrics.json."""
    x, y = regression(200, 3, seed=7)
    y[-1] = 1e20
    out = main_on(tmp_path / "out", write_csv(tmp_path / "t.csv", x[:150], y[:150]),
                  write_csv(tmp_path / "u.csv", x[150:], y[150:]))
    assert metrics(out)["test_mse"] == pytest.approx(1e40 / 50, rel=1e-6)


def homework_like(n, rng):
    """A file shaped like the course's homework: id, one-hot states, 3 days of indicators
    with repeated names, the day-3 percentage of positive tests as the target."""
    states = np.eye(5)[rng.integers(0, 5, n)]
    level = rng.normal(0, 1, (n, 1))
    days = [10 + 3 * level + rng.normal(0, 0.3, (n, 4)) for _ in range(3)]
    positive = [np.clip(np.exp(1.6 + 0.8 * level[:, 0] + 0.05 * d), 0.3, 30.3) for d in range(3)]
    header = ["id", *[f"state{k}" for k in range(5)]]
    columns = [np.arange(n)[:, None], states]
    for d in range(3):
        header += ["cli", "ili", "wearing_mask", "tested_positive"]
        columns += [days[d][:, :3], positive[d][:, None]]
    return header, np.column_stack(columns)


def test_a_homework_shaped_file_runs_end_to_end(tmp_path):
    """id column, one-hot columns, repeated names, a percent target: main() takes it as it
    is, and writes id,tested_positive for the unlabelled test file, in its units."""
    header, table = homework_like(400, np.random.default_rng(1))
    with open(tmp_path / "covid.train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table[:300].tolist()])
    with open(tmp_path / "covid.test.csv", "w", newline="") as f:
        csv.writer(f).writerows([header[:-1], *table[300:, :-1].tolist()])
    out = main_on(tmp_path / "out", tmp_path / "covid.train.csv", tmp_path / "covid.test.csv",
                  "--epochs", "30")
    predictions = read_predictions(out, "tested_positive")
    np.testing.assert_array_equal(predictions[:, 0], np.arange(300, 400))
    errors = predictions[:, 1] - table[300:, -1]
    assert np.mean(errors**2) < 0.2 * np.var(table[300:, -1]), "learned the percentages"


def test_validation_picks_the_model_and_patience_stops_the_run(tmp_path):
    """best_epoch has the lowest valid loss (the MSE of model.safetensors on the validation
    rows, which then predicts the test file); the run ends at the first epoch `patience` past
    the best."""
    out, x, y = run_main(tmp_path, 3, True, "--epochs", "60", "--patience", "2", "--lr", "20")
    history = metrics(out)["history"]
    losses = [h["valid_loss"] for h in history]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    best = 1 + int(np.argmin(losses))
    assert metrics(out)["best_epoch"] == best and best < len(history), "the best is not the last"
    stops = [e for e in range(1, len(losses) + 1) if e - (1 + int(np.argmin(losses[:e]))) >= 2]
    assert len(history) < 60 and len(history) == stops[0], "stopped early, and not too early"
    model, z, _ = check_predictions_come_from_model_pt(out, x, y, valid_ratio=0.2)
    data = TableDataset(out.parent / "train.csv", valid_ratio=0.2)
    scaled, span = scaled_by_hand(y[:300], data.train_rows.numpy())
    valid_rows = data.valid_rows.numpy()
    by_hand = np.mean((predict64(model, z[valid_rows])[:, 0]
                       - scaled[valid_rows]) ** 2) * span**2  # in the target's units
    assert losses[best - 1] == pytest.approx(by_hand, rel=FLOAT32_RTOL), "the loss is the MSE"


class EightHidden(ml.MLP):
    def __init__(self, in_features):
        super().__init__(in_features, hidden=8)


def test_an_edit_of_the_lessons_network_and_optimizer_reaches_the_run(tmp_path, monkeypatch):
    """The tool trains the network MLP builds (here 8 hidden units) with the optimizer
    make_optimizer builds (here Adam, at the given lr): its checkpoints say so."""
    monkeypatch.setattr(ml, "MLP", EightHidden)
    monkeypatch.setattr(ml, "make_optimizer",
                        lambda model, lr: torch.optim.Adam(model.parameters(), lr=lr))
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "1", "--lr", "0.01")
    tensors, document = read_checkpoint(out / "last.safetensors")
    assert tensors[f"model.{NAMES[0]}"].shape == (8, 3)
    assert document["optimizer_class"] == "Adam" and document["optimizer_groups"][0]["lr"] == 0.01


def test_the_same_seed_gives_the_same_loss_history(tmp_path):
    """Two runs with one seed agree to the bit on the CPU; another seed differs."""
    runs = [metrics(run_main(tmp_path / f"run{i}", 3, True, "--epochs", "3", "--seed", seed)[0])
            for i, seed in enumerate(["1", "1", "2"])]
    assert runs[0]["history"] == runs[1]["history"] != runs[2]["history"]


def test_the_tool_finds_the_bundled_data_from_any_folder(tmp_path, monkeypatch):
    """Run from another working directory with no --train or --test, the tool trains on the
    bundled data, found beside the lesson, as the lesson finds it."""
    monkeypatch.chdir(tmp_path)
    mr.main(["--epochs", "1", "--out", "elsewhere", "--device", "cpu"])
    assert len(read_predictions(tmp_path / "elsewhere")) == len(TableDataset(DATA / "test.csv"))


# --- Seeing the run: pictures and a progress bar ---

def test_a_run_draws_its_history_and_its_validation_predictions(tmp_path, monkeypatch):
    """loss.png and predictions.png are PNGs that read back; the curve is metrics.json's
    history with best_epoch marked; the scatter holds one point per validation row at (true,
    predicted by model.safetensors), in the target's units."""
    from matplotlib.image import imread
    drawn = {}
    for name in ("loss_figure", "predictions_figure"):
        real = getattr(pictures, name)
        monkeypatch.setattr(pictures, name, lambda *a, real=real, name=name: drawn.setdefault(
            name, real(*a)))
    out, x, y = run_main(tmp_path, 3, False, "--epochs", "3")
    for name in ("loss.png", "predictions.png"):
        height, width, _ = imread(out / name).shape
        assert 200 <= height <= 2000 and 200 <= width <= 2000
    lines = {line.get_label(): line for line in drawn["loss_figure"].axes[0].get_lines()}
    history, best = metrics(out)["history"], metrics(out)["best_epoch"]
    assert list(lines["validation"].get_ydata()) == [h["valid_loss"] for h in history]
    assert list(lines["training"].get_ydata()) == [h["train_loss"] for h in history]
    assert set(lines[f"best epoch ({best}): kept"].get_xdata()) == {best}
    data = TableDataset(out.parent / "train.csv", valid_ratio=0.2)
    rows, train_rows = data.valid_rows.numpy(), data.train_rows.numpy()
    model, _ = checkpoints.load_model(out / "model.safetensors")
    span = scaled_by_hand(y[:300], train_rows)[1]
    low = y[:300][train_rows].min() - 0.05 * span
    predicted = predict64(model, standardised(x[:300], train_rows)[rows])
    dots = drawn["predictions_figure"].axes[0].collections
    assert len(dots) == 1, "no test targets, no test dots"
    close(dots[0].get_offsets(), np.column_stack([y[rows], predicted[:, 0] * span + low]))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_only_on_a_terminal(monkeypatch, tmp_path, capsys):
    """Output to a file or a pipe gets the loader itself (no bar, no cost), and the run's
    output is its lines alone; a terminal gets a tqdm bar over the same batches."""
    loader = [(torch.ones(2, 1), torch.ones(2, 1))] * 3
    assert speed.progress_bar(loader) is loader
    run_main(tmp_path, 3, True, "--epochs", "2")
    printed = capsys.readouterr().out
    assert "\r" not in printed and "batch" not in printed
    monkeypatch.setattr(sys, "stdout", Terminal())
    bar = speed.progress_bar(loader)
    assert bar is not loader and list(bar) == loader


# --- Never trust a file: bad input stops with one line and exit code 2, damaging nothing ---

@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A finished run (its CSVs, and its checkpoints in out/) to build bad commands from."""
    root = tmp_path_factory.mktemp("previous")
    run_main(root, 3, True, "--epochs", "2")
    return root


def fails(capsys, previous_run, tmp_path, *flags) -> str:
    """main() with `flags` stops with exit code 2 and a single line on stderr, and every
    file an earlier run left in --out keeps its bytes. Returns the line."""
    out = tmp_path / "out"
    out.mkdir()
    for name in outputs.OUTPUTS:
        (out / name).write_bytes(f"an earlier run's {name}".encode())  # no run writes this
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    good = ["--train", previous_run / "train.csv", "--test", previous_run / "test.csv",
            "--out", out, "--epochs", 2]
    with pytest.raises(SystemExit) as stop:  # argparse keeps a flag's last value: `flags` win
        mr.main([str(arg) for arg in good + list(flags)])
    line = capsys.readouterr().err
    assert stop.value.code == 2 and line.startswith("error: ") and line.count("\n") == 1, line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"}
    assert after == before, "a file was touched"
    return line


BAD_CSVS = {  # what the file holds -> what the message says
    "empty": (b"", "the file is empty"),
    "header only": (b"a,b,y\n", "a header but no data rows"),
    "too few rows to split": (b"a,b,y\n1,2,0.5\n3,4,0.2\n", "2 rows are too few"),
    "ragged row": (b"a,b,y\n1,2,0.5\n3,4\n5,6,0.1\n", "line 3 has 2 columns"),
    "non-numeric cell": (b"a,b,y\n1,2,0.5\n3,abc,0.5\n", "line 3, column 2 (b): 'abc' is not"),
    "NaN": (b"a,b,y\n1,2,0.5\n3,4,0.5\nnan,4,0.5\n", "line 4, column 1 (a): 'nan' is not a"),
    "inf": (b"a,b,y\n1,2,0.5\n3,-inf,0.5\n", "line 3, column 2 (b): '-inf' is not a finite"),
    "semicolons": (b"a;b;y\n1;2;0.5\n3;4;0.5\n", "line 1 has no commas"),
    "tabs": (b"a\tb\ty\n1\t2\t0.5\n3\t4\t0.5\n", "line 1 has no commas"),
    "binary garbage": (bytes(range(256)) * 16, "not a text file"),
    "no header": (b"1,2,0.5\n3,4,0.5\n5,6,0.5\n", "line 1 holds numbers"),
    "one column": (b"y\n0.5\n0.2\n0.1\n", "no feature columns"),
    "only an id and a target": (b"ID,y\n1,0.5\n2,0.2\n3,0.1\n", "no feature columns"),
    "a constant target": (b"a,b,y\n1,2,5\n3,4,5\n5,6,5\n",
                          "target y is 5 in every training row: there is nothing to learn"),
    "a target spread whose square underflows": (
        b"a,b,y\n1,2,1e-300\n3,4,2e-300\n5,6,0\n",
        "target y spans only 1e-300 over the training rows"),
    "beyond float32": (b"a,b,y\n1,2,0.5\n3,1e200,0.5\n5,6,0.5\n",
                       "line 3, column 2 (b): '1e200' is too large for float32"),
    "blank first line": (b"\na,b,y\n1,2,0.5\n", "line 1 is blank"),
    "a first line of spaces": (b" \t , \na,b,y\n1,2,0.5\n", "line 1 is blank"),
    "an unclosed quote in line 1": (b'id,a,b,"y\nr1,1,2,0.5\nr2,3,4,0.5\nr3,5,6,0.1\n',
                                    "line 1 has an unclosed quote"),
    "a huge cell": (b"a,b,y\n1,2,0.5\n3," + b"4" * 200_000 + b",0.5\n",
                    "not a table of numbers (field larger than field limit"),
    "UTF-16": ("a,b,é\n1,2,0.5\n3,4,0.25\n5,6,1\n".encode("utf-16"),
               "UTF-16 text; save it as UTF-8"),
    "Latin-1": ("a,b,é\n1,2,0.5\n3,4,0.25\n5,6,1\n".encode("latin-1"),
                "not UTF-8 text (Latin-1?); save it as UTF-8"),
}


@pytest.mark.parametrize("content, message", BAD_CSVS.values(), ids=BAD_CSVS.keys())
def test_a_bad_training_csv_is_named_with_line_and_column(capsys, previous_run, tmp_path,
                                                          content, message):
    """Each broken file gets one line that names it, and where it breaks."""
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    assert f"{bad}: {message}" in fails(capsys, previous_run, tmp_path, "--train", bad)


@pytest.mark.parametrize("name, message", [("missing.csv", "No such file or directory"),
                                           (".", "Is a directory")])
def test_a_missing_file_or_a_directory_is_named(capsys, previous_run, tmp_path, name, message):
    """A path that is not a readable file: its name and the system's reason."""
    assert f"{tmp_path / name}: {message}" in fails(capsys, previous_run, tmp_path,
                                                    "--train", tmp_path / name)


@pytest.mark.parametrize("columns", [2, 5])
def test_a_test_csv_must_have_the_training_features(capsys, previous_run, tmp_path, columns):
    """A test CSV has the training file's F feature columns, and maybe the target: F or F+1."""
    bad = write_csv(tmp_path / "test.csv", np.full((4, columns), 0.5))
    assert f"{bad}: {columns} columns; expected the training file's 3 features" in fails(
        capsys, previous_run, tmp_path, "--test", bad)


def test_a_test_file_with_other_columns_is_refused(capsys, previous_run, tmp_path):
    """A test file whose columns are not the training file's (here an unnamed index column
    first, as pandas writes it) would shift every feature: one line naming the column."""
    x, _ = regression(5, 3, seed=0)
    bad = tmp_path / "shifted.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["", "f0", "f1", "f2"], *np.column_stack([range(5), x])])
    assert f"{bad}: feature column 1 is ''; the training file's is 'f0'" in fails(
        capsys, previous_run, tmp_path, "--test", bad)


@pytest.mark.parametrize("cell, message", [
    (1e300, "line 3, column 1 (f0): '1e+300' is too large for float32"),
    (1e36, "data row 2, feature 1: too far from the training rows' values"),  # std 0.0005
])
def test_a_test_cell_that_overflows_float32_is_named(capsys, previous_run, tmp_path, cell,
                                                     message):
    """Finite in float64 is not enough: the model computes in float32, on standardised values."""
    x = np.array([[1.0, 2, 3], [1.001, 4, 5], [1.0, 3, 1], [1.001, 5, 2], [1, 2, 2]])
    train = write_csv(tmp_path / "train.csv", x, np.linspace(0, 1, 5))
    test = write_csv(tmp_path / "test.csv", np.array([[1.0, 2, 3], [cell, 2, 3]]))
    line = fails(capsys, previous_run, tmp_path, "--train", train, "--test", test,
                 "--valid-ratio", "0.2")
    assert f"{test}: {message}" in line


BAD_FLAGS = [
    (["--epochs", "0"], "argument --epochs: must be from 1 to 9223372036854775807, got 0"),
    (["--epochs", str(2**64)], "argument --epochs: must be from 1 to 9223372036854775807"),
    (["--batch-size", "-3"], "argument --batch-size: must be from 1 to 9223372036854775807"),
    (["--batch-size", str(2**64)], "argument --batch-size: must be from 1 to"),
    (["--seed", "4294967296"], "argument --seed: must be from 0 to 4294967295"),  # aliases 0
    (["--seed", "-1"], "argument --seed: must be from 0 to 4294967295"),
    (["--lr", "1e308"], "argument --lr: must be above 1.17549e-38 and below 3.40282e+38"),
    (["--lr", "1e-46"], "argument --lr: must be above 1.17549e-38"),  # 0 in float32
    (["--lr", "0"], "argument --lr: must be above 1.17549e-38"),
    (["--lr", "-0.1"], "argument --lr: must be above 1.17549e-38"),
    (["--lr", "nan"], "argument --lr: must be above 1.17549e-38"),
    (["--lr", "inf"], "argument --lr: must be above 1.17549e-38"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--valid-ratio", "1"], "argument --valid-ratio: must be above 0 and below 1"),
    (["--patience", "0"], "argument --patience: must be from 1 to"),
    (["--device", "tpu9"], "argument --device: tpu9: no such device here"),
    (["--device", f"cuda:{torch.cuda.device_count()}"], "argument --device: cuda:"),
    (["--shuffle"], "unrecognized arguments: --shuffle"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_a_bad_flag_is_named(capsys, previous_run, tmp_path, flags, message):
    """Each bad flag gets one line that names it."""
    assert message in fails(capsys, previous_run, tmp_path, *flags)


def test_an_out_that_cannot_be_written_is_named(capsys, previous_run, tmp_path):
    """--out under a plain file cannot be created: the flag is named, nothing is written."""
    (tmp_path / "a_file").write_text("")
    assert "--out" in fails(capsys, previous_run, tmp_path, "--out", tmp_path / "a_file" / "x")


def test_a_second_run_on_a_busy_out_is_refused(capsys, previous_run, tmp_path):
    """One run at a time per --out: while another holds its lock (filelock's, on run.lock),
    a run is refused."""
    busy = tmp_path / "busy"
    busy.mkdir()
    with filelock.FileLock(busy / "run.lock"):  # what a running run holds
        line = fails(capsys, previous_run, tmp_path, "--out", busy)
    assert "another run is writing there" in line and os.listdir(busy) == ["run.lock"]


@pytest.mark.parametrize("name", ["model.safetensors", "run.lock"])
def test_a_directory_where_an_output_goes_is_found_before_training(capsys, previous_run,
                                                                     tmp_path, name):
    """out/model.safetensors (or the lock) a directory: one line that names it, before the
    first epoch, nothing else written."""
    (tmp_path / "o2" / name).mkdir(parents=True)
    line = fails(capsys, previous_run, tmp_path, "--out", tmp_path / "o2")
    assert f"{name} is a directory" in line
    assert os.listdir(tmp_path / "o2") == [name]
    assert "epoch" not in capsys.readouterr().out


def test_a_target_in_tiny_units_is_refused_not_shown_as_zero(capsys, previous_run, tmp_path):
    """The same file with its target times 1e-161: every loss times target_span² would round
    to 0 in float64, and the run would report a test MSE of 0. One line instead."""
    x, y = regression(60, 3, seed=0)
    tiny = write_csv(tmp_path / "tiny.csv", x, y * 1e-161)
    line = fails(capsys, previous_run, tmp_path, "--train", tiny, "--test", tiny)
    assert "target y spans only" in line and "too little to tell its errors from 0" in line


@pytest.mark.parametrize("target", [1e20, 1e21])
def test_a_validation_target_whose_error_overflows_float32_is_named(capsys, previous_run,
                                                                     tmp_path, target):
    """One target of 1e20 or 1e21 among validation rows whose training rows lie in [0, 1]:
    its squared error is beyond float32. The row is named, before anything is written; the
    run never says "diverged" for it."""
    x, y = regression(60, 3, seed=0)
    row = int(ml.split_rows(60, 0.2, 0)["valid"][0])
    y[row] = target
    path = write_csv(tmp_path / "t.csv", x, y)
    line = fails(capsys, previous_run, tmp_path, "--train", path, "--valid-ratio", "0.2")
    assert f"data row {row + 1} (validation): its target {target:g}" in line
    assert "diverged" not in line


SIGNS = np.array([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)])


def far_out(n_rows, rows):
    """Features near 2 and targets in [0, 1], but `rows` (8 of them) hold ±3e38 in every sign
    pattern: within float32, yet far enough out that the model's output overflows for some."""
    x, y = regression(n_rows, 3, seed=0)
    x[rows] = 3e38 * SIGNS
    return x, y


def test_a_validation_row_the_model_cannot_predict_is_named_not_called_divergence(
        capsys, previous_run, tmp_path):
    """Validation rows of ±3e38: the training loss is finite, the validation loss NaN. The
    line names the first such row; it does not say the run diverged."""
    rows = ml.split_rows(200, 0.2, 0)["valid"][:8]
    path = write_csv(tmp_path / "t.csv", *far_out(200, rows))
    line = fails(capsys, previous_run, tmp_path, "--train", path, "--test", path)
    named = int(re.search(r"data row (\d+): the model's prediction is not", line)[1])
    assert named - 1 in rows.tolist() and "diverged" not in line


def test_a_diverged_run_stops_before_it_writes(capsys, previous_run, tmp_path):
    """A loss that turns inf or NaN stops the run at once, naming --lr; --out keeps its files."""
    assert "the run diverged; lower --lr (now 1e+30)" in fails(capsys, previous_run, tmp_path,
                                                                 "--lr", "1e30")


def test_text_from_a_file_never_reaches_the_terminal_raw(capsys, previous_run, tmp_path):
    """A column name or an optimizer's class name with escape sequences, from a CSV or a
    checkpoint: the line shows them escaped (\\x1b), and cut short."""
    x, _ = regression(5, 3, seed=0)
    bad = tmp_path / "escape.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([[ESCAPE * 20, "f1", "f2"], *x.tolist()])
    class_name = crafted(previous_run, tmp_path,
                         lambda t, d: d.update(optimizer_class=ESCAPE + "SGD"))
    for flags in (("--test", bad), ("--resume", class_name)):
        line = fails(capsys, previous_run, tmp_path, *flags)
        shutil.rmtree(tmp_path / "out")
        assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;owned\\x07" in line
        assert len(line) < 400


ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # sets the terminal's title, clears the screen


def test_a_bad_flag_is_one_line_even_when_stderr_cannot_take_it(monkeypatch, capsys):
    """2>/dev/full, 2>&1 | true, or a closed stderr: the line cannot be written, and the exit
    code still says what happened: 2."""
    read, write = os.pipe()
    os.close(read)  # as `| true` leaves it: a write raises BrokenPipeError
    with open(write, "w") as pipe:
        for stderr in (pipe, None):
            monkeypatch.setattr(sys, "stderr", stderr)
            with pytest.raises(SystemExit) as stop:
                mr.main(["--lr", "0"])
            assert stop.value.code == 2


def test_under_torchrun_only_rank_0_prints_an_error(monkeypatch, capsys):
    """Every rank meets the same bad flag; one line in all, from rank 0. A RANK set by hand,
    without torchrun (which sets TORCHELASTIC_RUN_ID), silences nothing: one line."""
    errors_seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    for torchrun_id, local_rank, rank in (("job", "1", "1"), ("job", "0", "0"),
                                          (None, "0", "1"), (None, None, "1")):
        for name, value in (("TORCHELASTIC_RUN_ID", torchrun_id), ("LOCAL_RANK", local_rank),
                            ("RANK", rank)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as stop:
            mr.main(["--lr", "0"])
        assert stop.value.code == 2
        errors_seen.append(capsys.readouterr().err)
    assert errors_seen[0] == "" and errors_seen[1] == errors_seen[2] == errors_seen[3] != ""
    assert errors_seen[1].count("\n") == 1


# --- Checkpoints: hostile files refused, saves that survive crashes, resume to the bit ---

def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(capsys, previous_run, tmp_path):
    """--resume of a file whose unpickling runs code (torch.save's .pt): never unpickled, one
    clear line."""
    marker, evil = tmp_path / "payload_ran", tmp_path / "evil.pt"
    torch.save({"settings": Payload(str(marker))}, evil)
    line = fails(capsys, previous_run, tmp_path, "--resume", evil)
    assert "a torch.save file" in line and "it could run code" in line and not marker.exists()
    torch.load(evil, weights_only=False)["settings"].close()  # what the refusal prevents:
    assert marker.exists(), "the payload is real"


def crafted(previous_run, tmp_path, craft, name="crafted.safetensors"):
    """The previous run's last.safetensors, changed by craft(tensors, document)."""
    tensors, document = read_checkpoint(previous_run / "out" / "last.safetensors")
    craft(tensors, document)
    return write_checkpoint(tmp_path / name, tensors, document)


def refused(path, message="a damaged or foreign checkpoint"):
    """The line with which --resume refuses `path` (main() reads it first of all)."""
    with pytest.raises(InputError, match=re.escape(message)) as refusal:
        checkpoints.read(path, resume=True)
    return str(refusal.value)


def setting(name, value):
    return lambda tensors, document: document["settings"].update({name: value})


def in_history(name, value):
    return lambda tensors, document: document["history"][0].update({name: value})


def fill(name, value):
    return lambda tensors, document: tensors[name].fill_(value)


def replace(name, tensor):
    return lambda tensors, document: tensors.update({name: tensor})


def nested(depth):
    """A JSON list `depth` deep: [[[...]]]."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


CRAFTED = {  # what a hostile or damaged last.safetensors changes -> how
    "settings that name another --out": setting("out", "elsewhere"),
    "settings of null": lambda t, d: d.update(settings=None),
    "a negative lr": setting("lr", -5.0),
    "a batch size as text": setting("batch_size", "16"),
    "a seed beyond 32 bits": setting("seed", 2**70),
    "a bool for a count": setting("epochs", True),
    "a seed nested 60 deep": setting("seed", nested(60)),
    "an epoch as text": lambda t, d: d.update(epoch="x"),
    "a history of the wrong length": lambda t, d: d.update(history=[]),
    "no best model": lambda t, d: [t.pop(k) for k in list(t) if k.startswith("best.")],
    "a NaN weight": fill(f"model.{NAMES[-1]}", float("nan")),
    "a weight finite in float64, inf in float32": replace(
        f"model.{NAMES[-1]}", torch.full_like(ml.MLP(3).state_dict()[NAMES[-1]], 1e300,
                                              dtype=torch.float64)),
    "complex weights": replace(f"best.{NAMES[-1]}", torch.ones(
        ml.MLP(3).state_dict()[NAMES[-1]].shape, dtype=torch.complex64)),
    "no optimizer settings": lambda t, d: d.update(optimizer_groups=[]),
    "a NaN among an optimizer setting's numbers": lambda t, d: d["optimizer_groups"][0].update(
        betas=[float("nan"), 0.9]),
    "a random generator state of the wrong size": replace("rng", torch.zeros(3, dtype=torch.uint8)),
    "a std of zero": fill("scaling.std", 0.0),
    "a random generator state of floats": lambda t, d: t.update(rng=t["rng"].float()),
    "a random generator state that is none": fill("rng", 255),
    "an epoch of 2**40": lambda t, d: d.update(epoch=2**40),
    "a loss as a list": in_history("train_loss", [0.5]),
    "a negative loss": in_history("valid_loss", -1.0),
    "an extra value in a history entry": in_history("note", 1.0),
    "an epoch of true": lambda t, d: d["history"][0].update(epoch=True),
    "a tensor it does not write": replace("extra", torch.ones(2)),
    "an optimizer state for no parameter": replace("optimizer.99.momentum_buffer", torch.ones(2)),
    "an optimizer state at index ²": replace("optimizer.².momentum_buffer", torch.ones(2)),
    "an optimizer state at index ٣": replace("optimizer.٣.momentum_buffer", torch.ones(2)),
    "an optimizer state of a whole number": replace("optimizer.0.step", torch.ones(2).long()),
    "a format of another version": lambda t, d: d.update(format="minitorch_run 99"),
}


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
def test_every_value_of_a_checkpoint_is_checked(previous_run, tmp_path, craft):
    """Every value of a checkpoint is checked, as the model will see it, before it is used:
    a bad one is one line (test_a_crafted_checkpoint_stops_the_run_before_it_writes: from
    main(), before anything is written)."""
    refused(crafted(previous_run, tmp_path, craft))


def test_a_crafted_checkpoint_stops_the_run_before_it_writes(capsys, previous_run, tmp_path):
    """A damaged last.safetensors given to main(): one line, exit 2, --out untouched."""
    bad = crafted(previous_run, tmp_path, fill("scaling.std", 0.0))
    line = fails(capsys, previous_run, tmp_path, "--resume", bad)
    assert "a damaged or foreign checkpoint (scaling)" in line


def test_json_that_python_reads_but_no_run_writes_is_refused(previous_run, tmp_path):
    """JSON that Python's parser would take (NaN, 1e400) or nest too deep for it: one line."""
    tensors, _ = read_checkpoint(previous_run / "out" / "last.safetensors")
    for i, text in enumerate(['{"format": NaN}', '{"format": 1e400}', "[" * 100_000]):
        path = tmp_path / f"bad{i}.safetensors"
        safetensors.torch.save_file(tensors, path, metadata={"minitorch_run": text})
        with pytest.raises(InputError, match="a damaged or foreign checkpoint"):
            checkpoints.load_model(path)


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a checkpoint (truncated, or not safetensors)"),
    ("a csv", "not a checkpoint (truncated, or not safetensors)"),
    ("another safetensors", "not a minitorch_run checkpoint"),
    ("a model file", "a model file; --resume takes a run's last.safetensors"),
])
def test_a_file_that_is_no_stopped_run_is_named(previous_run, tmp_path, damage, message):
    """--resume of a torn file, of a file that is no checkpoint, of someone else's
    safetensors file, or of the run's model.safetensors (its last.safetensors is beside it)."""
    bad = tmp_path / "bad.safetensors"
    last = (previous_run / "out" / "last.safetensors").read_bytes()
    if damage == "truncated":
        bad.write_bytes(last[: len(last) // 2])
    elif damage == "a csv":
        bad.write_bytes((previous_run / "train.csv").read_bytes())
    elif damage == "another safetensors":
        safetensors.torch.save_file({"weights": torch.ones(3)}, bad)
    else:
        bad = previous_run / "out" / "model.safetensors"
    assert refused(bad, message).startswith(f"{bad}: ")


def test_an_empty_resume_is_a_missing_file(capsys, previous_run, tmp_path):
    """--resume "" (a variable that was never set) names no checkpoint: refused, never taken
    for no --resume, which would start afresh over the stopped run's last.safetensors."""
    assert "No such file or directory" in fails(capsys, previous_run, tmp_path, "--resume", "")


@pytest.mark.parametrize("n_features, message", [
    (4, "the stopped run took 3 features; {train} has 4"),
    (3, "the stopped run trained on other rows than {train}'s"),
])
def test_a_checkpoint_for_other_data_is_refused(capsys, previous_run, tmp_path, n_features,
                                                message):
    """--resume with a training file of another width, or of the same width and other rows:
    named, not crashed into."""
    x, y = regression(50, n_features, seed=0)
    other = write_csv(tmp_path / "other.csv", x, y)
    line = fails(capsys, previous_run, tmp_path, "--train", other, "--test", other,
                 "--resume", previous_run / "out" / "last.safetensors")
    assert message.format(train=other) in line


def test_a_resume_on_edited_targets_is_refused(capsys, previous_run, tmp_path):
    """The same features with other targets are other data: a resume refuses them."""
    rows = list(csv.reader((previous_run / "train.csv").read_text().splitlines()))
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r[:-1] + [str(1 - float(r[-1]))] for r in rows[1:]])
    line = fails(capsys, previous_run, tmp_path, "--train", edited,
                 "--resume", previous_run / "out" / "last.safetensors")
    assert f"the stopped run trained on other rows than {edited}'s" in line


def sizes(state_dict) -> str:
    """A network's layer sizes, as 3-64-1, from the shapes of its Linear weights (out, in)."""
    shapes = [tuple(w.shape) for w in state_dict.values() if w.dim() == 2]
    return "-".join(map(str, [shapes[0][1]] + [out for out, _ in shapes]))


def another_network(tensors, document):
    other = ml.MLP(3, hidden=5)  # the lesson's network, whatever its names, 5 hidden units
    for prefix in ("model.", "best."):
        for name in weights_of(tensors, prefix):
            del tensors[prefix + name]
        tensors.update({f"{prefix}{k}": w.clone() for k, w in other.state_dict().items()})


def test_a_checkpoint_of_another_network_is_one_line(previous_run, tmp_path):
    """Weights of a network other than the one MLP builds (another hidden size, another layer):
    one line naming both networks' layer sizes, from --resume and from load_model alike."""
    other = crafted(previous_run, tmp_path, another_network)
    message = (f"its network has layers {sizes(ml.MLP(3, hidden=5).state_dict())}; MLP now "
               f"builds {sizes(ml.MLP(3).state_dict())}")
    refused(other, message)
    with pytest.raises(InputError, match=message):
        checkpoints.load_model(other)


@pytest.mark.parametrize("setting", ["class", "weight_decay", "maximize"])
def test_a_checkpoint_of_another_optimizer_is_one_line(previous_run, tmp_path, setting):
    """--resume of a run whose optimizer differs from the one make_optimizer builds (another
    class, other settings): one line that says what differs, never a silent change."""
    built = ml.make_optimizer(ml.MLP(3), 0.1)
    if setting == "class":
        def craft(tensors, document):
            document["optimizer_class"] = "Adagrad"
        message = f"is 'Adagrad'; make_optimizer now builds {type(built).__name__}"
    else:
        now = built.param_groups[0][setting]
        saved = not now if setting == "maximize" else now + 1e-4

        def craft(tensors, document):
            document["optimizer_groups"][0][setting] = saved
        message = f"had {setting}={saved} (now {now})"
    refused(crafted(previous_run, tmp_path, craft), message)


def test_a_huge_optimizer_setting_is_cut_short_in_the_line(previous_run, tmp_path):
    """A crafted optimizer setting of 2 MB: refused, and shown in the line cut short."""
    def craft(tensors, document):
        document["optimizer_groups"][0]["momentum"] = "\x1b[31mA" * 200_000

    line = refused(crafted(previous_run, tmp_path, craft), "momentum")
    assert len(line) < 400


def test_a_checkpoint_with_another_releases_optimizer_keys_resumes(previous_run, tmp_path):
    """Torch releases add and drop param-group keys that say how a step is computed (fused,
    foreach, ...): a last.safetensors without today's, or with one today's torch does not
    know, resumes; what changes the update (momentum, weight decay, ...) is still compared,
    and a key the file lacks (nesterov, here) takes today's value."""
    def other_release(tensors, document):
        group = document["optimizer_groups"][0]
        for key in ("fused", "foreach", "differentiable", "nesterov"):
            group.pop(key, None)
        group["a_later_releases_flag"] = True

    other = crafted(previous_run, tmp_path, other_release)
    out, _, _ = run_main(tmp_path, 3, True, "--resume", str(other), "--epochs", "3")
    assert metrics(out)["best_epoch"] >= 1 and len(metrics(out)["history"]) == 3


def test_a_model_file_of_weights_beyond_float32_is_refused(previous_run, tmp_path):
    """1e300 is finite in float64 and inf in float32, the model's dtype: load_model refuses
    it, where it would have predicted NaN."""
    tensors, document = read_checkpoint(previous_run / "out" / "model.safetensors")
    tensors[f"model.{NAMES[0]}"] = tensors[f"model.{NAMES[0]}"].double()
    tensors[f"model.{NAMES[0]}"][0, 0] = 1e300
    path = write_checkpoint(tmp_path / "model.safetensors", tensors, document)
    with pytest.raises(InputError, match=f"a damaged or foreign checkpoint .model.{NAMES[0]}"):
        checkpoints.load_model(path)


def test_a_bug_in_the_checks_is_a_traceback_not_a_damaged_checkpoint(previous_run,
                                                                      monkeypatch):
    """The checks catch what a bad file raises, not everything: a bug of ours surfaces."""
    def buggy(tensors, document):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(checkpoints, "checked_scaling", buggy)
    with pytest.raises(TypeError, match="a bug of ours"):
        checkpoints.load_model(previous_run / "out" / "model.safetensors")


def test_checkpoints_are_safetensors_with_a_json_document(previous_run):
    """model.safetensors and last.safetensors: safetensors files (tensors, no pickle) whose
    header holds one JSON document of plain values; the weights are the network's."""
    for name, prefixes in (("model.safetensors", {"model", "scaling"}),
                           ("last.safetensors", {"model", "best", "scaling", "rng"})):
        tensors, document = read_checkpoint(previous_run / "out" / name)
        optimizer = {"optimizer"} if name == "last.safetensors" else set()  # Adam's, say
        assert prefixes <= {k.split(".")[0] for k in tensors} <= prefixes | optimizer
        assert document["format"]
        assert weights_of(tensors).keys() == ml.MLP(3).state_dict().keys()


KEEPS_SAVING = """
import contextlib, sys, safetensors.torch, torch
sys.path.insert(0, {root!r})
from minitorch_tool.outputs import Out
with contextlib.ExitStack() as cleanup:
    out = Out({folder!r}, cleanup, "cpu")
    for i in range(10**6):
        data = safetensors.torch.save({{"w": torch.full((2_000_000,), float(i))}}, {{"i": str(i)}})
        print("saving", i, flush=True)
        out.write({{"model.safetensors": (data, "")}})
"""


@posix_only("SIGKILL")
def test_kill_9_while_saving_leaves_a_whole_checkpoint(tmp_path):
    """A process killed at an arbitrary moment of its saves leaves a file that loads, and
    holds one whole checkpoint."""
    script = KEEPS_SAVING.format(root=str(ROOT), folder=str(tmp_path))
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          text=True) as child:
        for _ in range(3):  # let it save twice, then kill it inside the third save
            child.stdout.readline()
        time.sleep(0.005)  # here: while it writes or fsyncs its temporary file
        child.send_signal(signal.SIGKILL)
    with safetensors.safe_open(tmp_path / "model.safetensors", "pt") as f:
        i, w = f.metadata()["i"], f.get_tensor("w")
    assert torch.equal(w, torch.full((2_000_000,), float(i)))


def test_a_failed_write_replaces_none_of_its_files(tmp_path, monkeypatch):
    """Out.write writes all its files beside their names before it renames any: a failure
    while writing one (a full disk) is one InputError that names it, the old files whole, and
    no temporary file left. A file that Windows will not replace because another program holds
    it open is one line that says so."""
    for name in ("metrics.json", "loss.png"):
        (tmp_path / name).write_text("old")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: real_fsync(fd) if os.fstat(fd).st_size < 10 else
                        (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with an_out(tmp_path) as out, pytest.raises(InputError, match="loss.png: cannot write it "
                                                                  r"\(No space left"):
        out.write({"metrics.json": (b"new", ""), "loss.png": (b"a new picture", "")})
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))
    with an_out(tmp_path) as out, pytest.raises(InputError, match="cannot write it "
                                                "\\(Permission denied; is it open in another"):
        out.write({"metrics.json": (b"new", "")})
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "metrics.json", "run.lock"]
    assert all((tmp_path / n).read_text() == "old" for n in ("loss.png", "metrics.json"))


@posix_only("symlinks without privileges, a umask and mode bits")
def test_a_save_never_writes_through_a_planted_link_and_gets_the_umasks_mode(tmp_path,
                                                                           monkeypatch):
    """Temporary files get new random names, created exclusively: a link at a guessable name
    cannot make a write go to the file it points to. A saved file gets what open() would give
    (0644 under umask 022), with no chmod by a path someone could swap and no umask flipped."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out").mkdir()
    for planted in ("metrics.json.tmp", ".metrics.json.tmp"):
        (tmp_path / "out" / planted).symlink_to(victim)
    old = os.umask(0o022)
    try:
        for name in ("chmod", "umask"):
            monkeypatch.setattr(os, name, lambda *a, name=name: pytest.fail(f"os.{name} called"))
        with an_out(tmp_path / "out") as out:
            out.write({"metrics.json": (b"{}", "")})
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert victim.read_text() == "keep me"
    assert (tmp_path / "out" / "metrics.json").stat().st_mode & 0o777 == 0o644


def biases_apart(model, lr):
    """SGD with momentum in two param groups, the biases' listed last (the state's order) and
    at half the lr (a resume keeps what make_optimizer makes of --lr)."""
    groups = [[p for name, p in model.named_parameters() if name.endswith("bias") == bias]
              for bias in (False, True)]
    return torch.optim.SGD([{"params": groups[0]},
                            {"params": groups[1], "momentum": 0.5, "lr": lr / 2}],
                           lr=lr, momentum=0.9)


@pytest.mark.parametrize("optimizer", ["the lesson's", "Adam", "two groups"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                  optimizer):
    """Stop after 2 epochs, --resume to 4: the same weights, optimizer state, history and
    predictions, to the bit, as 4 epochs in one go; with the lesson's optimizer, with Adam,
    whose state (steps, running averages) travels in last.safetensors, and with two param
    groups. The optimizer state is loaded once, into the optimizer that trains."""
    if optimizer != "the lesson's":
        monkeypatch.setattr(ml, "make_optimizer", biases_apart if optimizer == "two groups" else
                            lambda model, lr: torch.optim.Adam(model.parameters(), lr=lr))
    loads, real = [], torch.optim.Optimizer.load_state_dict
    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict",
                        lambda self, state: loads.append(self) or real(self, state))
    flags = ("--epochs", "4", "--patience", "9", "--seed", "3", "--lr", "0.3")
    whole, _, _ = run_main(tmp_path / "whole", 3, True, *flags)
    stopped, _, _ = run_main(tmp_path / "stopped", 3, True, *flags[:-2], "--lr", "0.3",
                             "--epochs", "2")
    resumed, _, _ = run_main(tmp_path / "stopped", 3, True, "--epochs", "4", "--patience", "9",
                             "--resume", str(stopped / "last.safetensors"))
    (a, a_doc), (b, b_doc) = (read_checkpoint(out / "last.safetensors") for out in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # rng, optimizer too
    assert a_doc == b_doc  # history, settings, optimizer settings
    assert (whole / "predictions.csv").read_bytes() == (resumed / "predictions.csv").read_bytes()
    assert len(loads) == 1


def test_a_flag_typed_on_resume_takes_effect_with_a_note(tmp_path, capsys):
    """--resume with --lr 0.1: the run goes on with 0.1, says so, and last.safetensors
    records it."""
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "1", "--lr", "0.05")
    run_main(tmp_path, 3, True, "--epochs", "2", "--lr", "0.1", "--resume",
             str(out / "last.safetensors"))
    assert "--lr 0.1 replaces the stopped run's 0.05" in capsys.readouterr().out
    _, last = read_checkpoint(out / "last.safetensors")
    assert last["settings"]["lr"] == last["optimizer_groups"][0]["lr"] == 0.1


def test_a_resume_restores_the_stopped_runs_settings(tmp_path):
    """--resume alone: the stopped run's epochs, patience, lr and batch size, not the defaults."""
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "3", "--patience", "9", "--lr", "0.2",
                         "--batch-size", "5")
    (out / "metrics.json").unlink()
    run_main(tmp_path, 3, True, "--resume", str(out / "last.safetensors"))
    _, last = read_checkpoint(out / "last.safetensors")
    assert last["settings"] == {"seed": 0, "valid_ratio": 0.2, "lr": 0.2, "batch_size": 5,
                                "epochs": 3, "patience": 9} and last["epoch"] == 3


@pytest.mark.parametrize("flag", ["--seed", "--valid-ratio"])
def test_a_resume_with_another_split_is_refused(capsys, previous_run, tmp_path, flag):
    """--seed and --valid-ratio pick the validation rows: a resume cannot change them."""
    line = fails(capsys, previous_run, tmp_path, flag, "0.5" if "ratio" in flag else "7",
                 "--resume", previous_run / "out" / "last.safetensors")
    assert f"{flag} " in line and "picks its validation rows" in line


def test_an_early_stopped_run_stays_stopped_and_keeps_a_copy_of_its_best(tmp_path, capsys):
    """last.safetensors keeps its best model as a copy (deepcopy of the state_dict, which
    holds live tensors): equal to model.safetensors, not to the last weights; resumed, the
    stopped run trains no more epochs."""
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "60", "--patience", "2", "--lr", "20")
    tensors, last = read_checkpoint(out / "last.safetensors")
    best = weights_of(read_checkpoint(out / "model.safetensors")[0])
    assert last["best_epoch"] < last["epoch"] < 60
    assert all(torch.equal(tensors[f"best.{k}"], w) for k, w in best.items())
    assert not all(torch.equal(tensors[f"model.{k}"], w) for k, w in best.items())
    run_main(tmp_path, 3, True, "--resume", str(out / "last.safetensors"))
    assert "no epoch to train: it had stopped early" in capsys.readouterr().out
    assert len(metrics(out)["history"]) == last["epoch"], "no epoch was added"


def test_a_resume_into_another_out_that_fails_writes_nothing(capsys, previous_run, tmp_path):
    """The best model so far reaches a new --out with the first finished epoch, not before:
    a resumed run that diverges at once leaves that --out as it was."""
    line = fails(capsys, previous_run, tmp_path, "--resume",
                 previous_run / "out" / "last.safetensors", "--epochs", "5", "--lr", "1e30")
    assert "the run diverged" in line


def test_a_resume_into_another_out_with_no_epoch_left_writes_its_run_there(previous_run,
                                                                           tmp_path):
    """--resume A/last.safetensors --out B, with no epoch left to train: B holds one run, A's.
    B's last.safetensors is the run B's model, predictions and metrics came from, so that a
    later --resume B/last.safetensors goes on with it, not with B's own earlier run."""
    b = tmp_path / "b"
    run_main(b, 3, True, "--epochs", "1", "--seed", "5")  # B's own earlier run
    a = previous_run / "out" / "last.safetensors"
    mr.main(["--train", str(previous_run / "train.csv"), "--test",
             str(previous_run / "test.csv"), "--out", str(b / "out"), "--resume", str(a)])
    (a_tensors, a_doc), (b_tensors, b_doc) = map(read_checkpoint,
                                                 (a, b / "out" / "last.safetensors"))
    assert a_doc == b_doc and all(torch.equal(a_tensors[k], b_tensors[k]) for k in a_tensors)
    assert metrics(b / "out")["history"] == a_doc["history"]


# --- Never lose work: however a run ends, its one line says what --out holds ---

def an_earlier_run(previous_run, tmp_path):
    """An --out that holds an earlier run's six files; returns it and their bytes."""
    out = tmp_path / "out"
    shutil.copytree(previous_run / "out", out)
    return out, {p.name: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"}


def stopped(capsys, out, previous_run, *flags):
    """main() on the previous run's CSVs (or those `flags` name) into `out`, which must stop:
    (exit code, its line)."""
    with pytest.raises(SystemExit) as stop:
        mr.main(["--train", str(previous_run / "train.csv"), "--test",
                 str(previous_run / "test.csv"), "--out", str(out), "--epochs", "2",
                 *map(str, flags)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return stop.value.code, err.rstrip("\n")


EARLIER = ("an earlier run's predictions.csv, metrics.json, loss.png, predictions.png "
           "stay there")


def test_a_test_row_the_model_cannot_predict_replaces_none_of_the_results(
        capsys, previous_run, tmp_path):
    """Test rows of ±3e38 fit float32, but the model's output for some does not, which only
    training shows: one line naming the first such row and what the run wrote (its
    checkpoints); predictions.csv, metrics.json and the pictures all stay the earlier run's."""
    out, before = an_earlier_run(previous_run, tmp_path)
    train = write_csv(tmp_path / "train.csv", *regression(200, 3, seed=1))  # features near 2
    test = write_csv(tmp_path / "t.csv", *far_out(40, range(8)))
    code, line = stopped(capsys, out, previous_run, "--train", train, "--test", test)
    assert code == 2 and re.search(r"t.csv: data row [1-8]: the model's prediction is "
                                   "not a finite number", line), line
    assert (f"this run wrote last.safetensors (epoch 2), model.safetensors (epoch 2's model) "
            f"in {out}; {EARLIER}; go on with: python minitorch_run.py ") in line
    for name in ("predictions.csv", "metrics.json", "loss.png", "predictions.png"):
        assert (out / name).read_bytes() == before[name]


def test_a_full_disk_at_the_pictures_replaces_none_of_the_results(capsys, previous_run,
                                                                   tmp_path, monkeypatch):
    """The disk fills while loss.png is written (here: its temporary file cannot be made): one
    line that names the file and what the run wrote; predictions.csv, metrics.json and the
    pictures stay the earlier run's, and no temporary file is left."""
    out, before = an_earlier_run(previous_run, tmp_path)
    real_open = os.open

    def full_at_the_pictures(path, *args):
        if ".loss.png." in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", full_at_the_pictures)
    code, line = stopped(capsys, out, previous_run)
    assert code == 2 and "loss.png: cannot write it (No space left on device); this run " in line
    assert EARLIER in line
    assert {p.name: p.read_bytes() for p in out.iterdir()
            if p.name not in ("last.safetensors", "model.safetensors", "run.lock")} == {
        n: b for n, b in before.items() if n not in ("last.safetensors", "model.safetensors")}


@pytest.mark.parametrize("group", ["model.safetensors", "metrics.json"])
def test_a_signal_while_files_are_renamed_waits_for_the_whole_group(
        capsys, previous_run, tmp_path, monkeypatch, group):
    """A stop signal whose handler runs between two renames of a group (epoch 1's two
    checkpoints; the four results) stops the run once the group is renamed whole: the line
    names each file of the group as this run's, and the results are never half this run's."""
    out, before = an_earlier_run(previous_run, tmp_path)
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name == group:
            errors.on_stop_signal(signal.SIGTERM, None)  # where Python would run the handler

    monkeypatch.setattr(os, "replace", replace)
    code, line = stopped(capsys, out, previous_run)
    wrote = ("last.safetensors (epoch 1), model.safetensors (epoch 1's model)" if
             group == "model.safetensors" else "last.safetensors (epoch 2), model.safetensors "
             "(epoch 2's model), predictions.csv, metrics.json, loss.png, predictions.png")
    assert code == 143 and line.startswith(f"interrupted: this run wrote {wrote} in {out}; ")
    assert (EARLIER in line) == (group == "model.safetensors")
    results = ("predictions.csv", "metrics.json", "loss.png", "predictions.png")
    assert len({(out / name).read_bytes() == before[name] for name in results}) == 1
    assert not [p for p in os.listdir(out) if p.startswith(".")], "no temporary file left"


def test_the_command_to_go_on_with_is_one_a_shell_takes(monkeypatch):
    """The "go on with" command: the program as it was run, the flags without an earlier
    --resume; where a flag holds a character the line would show escaped (a tab), not a
    command that would fail but what to add."""
    monkeypatch.setattr(sys, "argv", ["/my runs/minitorch_run.py"])
    last, tab = (os.path.join(out, "last.safetensors") for out in ("o", "a\tb"))
    assert outputs.resume_command(["--out", "o", "--resume=a", "--resume", "b"], "o") == (
        f"python '/my runs/minitorch_run.py' --out o --resume {last}")
    assert outputs.resume_command(["--out", "a\tb"], "a\tb") == (
        f"your command, with --resume {tab}")


def test_a_torchrun_peer_that_dies_is_one_line():
    """gloo's error when another rank is killed mid-step (a RuntimeError, not a DistError):
    the line for a lost process of the job, exit 1, not a bug's traceback."""
    gone = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
                        "Connection closed by peer [127.0.0.1]:42164.")
    code, line = errors.ending(gone)
    assert code == 1 and line.startswith("error: a process of this torchrun job stopped ([")


@pytest.mark.parametrize("existed", [True, False])
def test_ctrl_c_before_any_file_is_replaced_says_so(capsys, previous_run, tmp_path,
                                                    monkeypatch, existed):
    """Ctrl-C inside the first save, with a last.safetensors stamped in the future (cp -p, a
    tar): the run wrote nothing, and says so from its record, not from time stamps: "--out is
    as it was", or, for an --out this run made, "nothing was written"."""
    out, before = an_earlier_run(previous_run, tmp_path) if existed else (tmp_path / "new", {})
    if existed:
        os.utime(out / "last.safetensors", (time.time() + 3600, time.time() + 3600))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt))
    code, line = stopped(capsys, out, previous_run)
    assert code == 130
    assert line == f"interrupted: {out} is as it was" if existed else (
        line == "interrupted: nothing was written")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"} == before


@posix_only("signals")
@pytest.mark.parametrize("name, code, twice", [("SIGTERM", 143, False), ("SIGHUP", 129, False),
                                               ("SIGINT", 130, True)])
def test_a_stop_signal_inside_a_save_is_one_line_and_leaves_no_temporary_file(
        capsys, previous_run, tmp_path, monkeypatch, name, code, twice):
    """kill (SIGTERM), a closed terminal (SIGHUP), Ctrl-C (twice, the second while the first
    line is printed), each sent to this process in the middle of a save (epoch 2's
    last.safetensors, written, not yet synced): exit 128 + the first signal, one line with what
    was written and the command to go on, the half-written file removed, the whole ones
    whole."""
    signum, real_fsync, real_say, calls = getattr(signal, name), os.fsync, errors.say, []

    def fsync(fd):  # the third: epoch 1 wrote last.safetensors, then model.safetensors
        calls.append(fd)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        real_fsync(fd)

    def say(line):  # a second Ctrl-C, while the first line is printed
        os.kill(os.getpid(), signal.SIGINT)
        real_say(line)

    monkeypatch.setattr(os, "fsync", fsync)
    if twice:
        monkeypatch.setattr(errors, "say", say)
    out = tmp_path / "out"
    exit_code, line = stopped(capsys, out, previous_run, "--epochs", "3")
    assert exit_code == code
    assert line.startswith("interrupted: this run wrote last.safetensors (epoch 1), "
                           f"model.safetensors (epoch 1's model) in {out}; go on with: ")
    assert sorted(os.listdir(out)) == ["last.safetensors", "model.safetensors", "run.lock"]
    assert read_checkpoint(out / "last.safetensors")[1]["epoch"] == 1


def test_what_fails_at_the_end_is_one_line_that_says_what_out_holds(
        capsys, previous_run, tmp_path, monkeypatch):
    """Whatever fails while the pictures are drawn (a user's matplotlibrc that is not UTF-8, a
    broken font cache: here a ValueError) is one line, and the results stay the earlier run's;
    a bug of ours elsewhere is its traceback, after a line that says what --out holds."""
    out, before = an_earlier_run(previous_run, tmp_path)
    monkeypatch.setattr(pictures, "loss_figure", lambda *a: (_ for _ in ()).throw(
        ValueError("arange: cannot compute length")))
    code, line = stopped(capsys, out, previous_run)
    assert code == 2 and line.startswith("error: the pictures could not be drawn (ValueError: "
                                         "arange: cannot compute length); this run wrote ")
    assert EARLIER in line and (out / "loss.png").read_bytes() == before["loss.png"]
    monkeypatch.setattr(outputs, "results", lambda *a: {}["a bug"])
    with pytest.raises(KeyError):
        mr.main(["--train", str(previous_run / "train.csv"), "--test",
                 str(previous_run / "test.csv"), "--out", str(out), "--epochs", "1"])
    assert capsys.readouterr().err.startswith("error: KeyError, a bug (its traceback follows); "
                                              "this run wrote last.safetensors (epoch 1)")


def test_a_csv_that_grows_while_it_is_read_keeps_its_ids_with_its_rows(tmp_path, monkeypatch):
    """A test file with ids that grows once its numbers are read: the ids are the rows' own,
    read in the same pass, never predictions zipped to the wrong ids."""
    x, _ = regression(10, 3, seed=0)
    path = write_with_ids(tmp_path / "grows.csv", np.arange(10) + 100, x)
    real = csvs.numbers_after_the_header

    def grows(f, ids):
        table = real(f, ids)
        with open(path, "a") as more:
            more.write("110,1,2,3\n")
        return table

    monkeypatch.setattr(csvs, "numbers_after_the_header", grows)
    data = TableDataset(path, stats=Scaling(torch.zeros(3), torch.ones(3)))
    assert [float(i) for i in data.ids] == list(range(100, 110)) and len(data) == 10
    torch.testing.assert_close(data.x, torch.from_numpy(x).float())


@posix_only("signals")
def test_signals_the_process_was_started_to_ignore_stay_ignored(tmp_path, monkeypatch):
    """nohup (SIGHUP ignored) or trap '' INT: a run leaves those signals ignored, as Python
    does, so a closed terminal cannot stop a run started with nohup."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        seen = []
        real_fit = mr.fit
        monkeypatch.setattr(mr, "fit", lambda *a: seen.append(signal.getsignal(signal.SIGHUP))
                            or real_fit(*a))
        run_main(tmp_path, 3, True, "--epochs", "1")
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_run_in_another_thread_leaves_the_main_threads_signals_alone(tmp_path):
    """A notebook can run main() in a thread, where no signal handler can be set: it touches
    no state of the main thread's signals, so a Ctrl-C there still stops the main thread's
    run as it should."""
    thread = threading.Thread(target=run_main, args=(tmp_path, 3, True, "--epochs", "1"))
    with errors.one_line_errors(lambda: None):  # a run of the main thread, under way
        handler = signal.getsignal(signal.SIGINT)
        thread.start()
        thread.join()
        assert errors.phase == "running" and signal.getsignal(signal.SIGINT) is handler
    assert metrics(tmp_path / "out")["best_epoch"] == 1


def test_the_first_line_wins_over_later_signals(capsys, previous_run, tmp_path, monkeypatch):
    """A signal while the error line is made or printed, or after it (a double Ctrl-C, a
    SIGTERM after a SIGINT), or while a finished run lets go of its lock, changes neither the
    output nor the exit code."""
    real_say, real_ending = errors.say, errors.ending

    def signalled(real):
        def call(*args):
            errors.on_stop_signal(signal.SIGTERM, None)  # as the handler is called by a signal
            return real(*args)
        return call

    monkeypatch.setattr(errors, "say", signalled(real_say))
    monkeypatch.setattr(errors, "ending", signalled(real_ending))
    code, line = stopped(capsys, tmp_path / "out", previous_run, "--lr", "0")
    assert code == 2 and line.startswith("error: argument --lr")
    assert errors.on_stop_signal(signal.SIGINT, None) is None  # after the line: nothing
    monkeypatch.setattr(filelock.FileLock, "__exit__", signalled(filelock.FileLock.__exit__))
    run_main(tmp_path, 3, True, "--epochs", "1")
    assert capsys.readouterr().err == ""


def test_a_closed_stdout_or_a_reader_that_leaves_does_not_stop_the_run(tmp_path, monkeypatch):
    """python minitorch_run.py >&- (no stdout), or | head -1 (the reader leaves after one
    line: every later write is a broken pipe): the run still writes every file."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as pipe:
        for stdout in (None, pipe):
            monkeypatch.setattr(sys, "stdout", stdout)
            out, _, _ = run_main(tmp_path / str(stdout is None), 3, True, "--epochs", "1")
            assert metrics(out)["best_epoch"] == 1 and (out / "predictions.png").exists()


def start_run(tmp_path, *flags, **popen):
    """minitorch_run.py as a process on small CSVs, writing to tmp_path/out."""
    x, y = regression(300, 3, seed=0)
    train = write_csv(tmp_path / "train.csv", x, y)
    return subprocess.Popen(
        [sys.executable, mr.__file__, "--train", str(train), "--test", str(train), "--out",
         "out", *flags], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, **popen)


@posix_only("SIGINT to a child process")
def test_ctrl_c_says_how_to_resume(tmp_path):
    """Ctrl-C after an epoch, on the command line: exit 130, one line naming what the run
    wrote and the exact command to go on with; last.safetensors is whole."""
    with start_run(tmp_path, "--epochs", "100000", "--patience", "100000") as child:
        while not child.stdout.readline().startswith("epoch"):
            pass
        child.send_signal(signal.SIGINT)
        err = child.stderr.read()
    assert child.returncode == 130 and err.count("\n") == 1, err
    assert err.startswith("interrupted: this run wrote last.safetensors (epoch ")
    assert err.rstrip().endswith("--patience 100000 --resume out/last.safetensors")
    assert read_checkpoint(tmp_path / "out" / "last.safetensors")[1]["epoch"] >= 1


STOPPED_WHILE_TORCH_LOADS = """
import importlib.abc, os, runpy, signal, sys

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # as `import torch` begins: Ctrl-C
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Hook())
sys.path.insert(0, {root!r})  # as `python minitorch_run.py` puts the program's folder first
sys.argv = ["minitorch_run.py"]
runpy.run_path({path!r}, run_name="__main__")
"""


@posix_only("signals")
def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    """Ctrl-C in the first second or two, while torch imports: one line, exit 130, no
    traceback, nothing written."""
    script = STOPPED_WHILE_TORCH_LOADS.format(path=mr.__file__, root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 130
    assert done.stderr == "interrupted while starting: nothing was written\n"
    assert os.listdir(tmp_path) == []


HOSTILE = """
import json, os, re, resource, struct, sys
sys.path.insert(0, {root!r})
import numpy as np
import torch
import minitorch_run as mr
flags = ["--train", {train!r}, "--test", {test!r}, "--out", {out!r}]
bomb = []
for _ in range(60):  # 2**60 leaves once expanded; 60 shared references in the pickle
    bomb = [bomb, bomb]
torch.save({{"settings": {{"seed": bomb}}}}, "bomb.pt")
with open("deep.safetensors", "wb") as f:  # a header whose JSON nests 100 000 deep
    header = json.dumps({{"__metadata__": {{"minitorch_run": "[" * 100_000}}}}).encode()
    f.write(struct.pack("<Q", len(header)) + header)
with open("huge.safetensors", "wb") as f:  # a tensor of 2**40 floats, 16 bytes of data
    header = json.dumps({{"w": {{"dtype": "F32", "shape": [2**40],
                               "data_offsets": [0, 2**42]}}}}).encode()
    f.write(struct.pack("<Q", len(header)) + header + bytes(16))
with open("one_line.csv", "w") as f:  # 50 MB and no newline
    f.write("x" * 50_000_000)
x = np.random.default_rng(0).random((120_000, 30))  # 35 MB of text, 29 MB as float64
np.savetxt("big.csv", x, fmt="%.6f", delimiter=",", header=",".join(f"c{{j}}" for j in
           range(30)), comments="")
mapped = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) << 10
limit = mapped + (1 << 30)  # 1 GiB more address space than torch (CPU or CUDA build) maps
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
runs = [["--resume", "bomb.pt"], ["--resume", "deep.safetensors"],
        ["--resume", "huge.safetensors"], ["--train", "one_line.csv"], ["--train", "/dev/zero"]]
for extra in runs:
    try:
        mr.main(flags + extra)
    except SystemExit as e:
        print("exit", e.code, flush=True)
tight = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) << 10
resource.setrlimit(resource.RLIMIT_AS, (tight + (40 << 20), limit))  # 40 MiB more: too few
try:
    mr.main(flags + ["--train", "big.csv", "--test", "big.csv"])
except SystemExit as e:
    print("exit", e.code, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(),
                    reason="needs Linux: /proc, RLIMIT_AS, /dev/zero")
def test_hostile_files_are_one_line_in_bounded_memory(previous_run, tmp_path):
    """A pickle of shared references (2**60 leaves), JSON nested 100 000 deep, a header that
    claims a terabyte, a 50 MB line, /dev/zero: each is one line and exit code 2 with at most
    1 GiB of address space beyond what torch maps, and --out keeps its files. A CSV that does
    not fit the memory the process may use is one line too, exit 1. (The timeout only
    guards a hang.)"""
    out = tmp_path / "out"
    shutil.copytree(previous_run / "out", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = HOSTILE.format(root=str(ROOT), out=str(out), train=str(previous_run / "train.csv"),
                            test=str(previous_run / "test.csv"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.stdout.split("\n")[:-1] == ["exit 2"] * 5 + ["exit 1"], done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 6 and all(line.startswith("error: ") for line in lines), lines
    assert "a torch.save file" in lines[0]
    assert "its JSON does not read" in lines[1] and "not a checkpoint" in lines[2]
    assert "line 1 is over 1048576 characters long" in lines[3]
    assert "not a text file" in lines[4] and "error: out of memory" in lines[5]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- Scaling out: torchrun and DistributedDataParallel (CPU, gloo, 2 processes) ---

DDP_LR = 0.01  # small: with Adam (an exercise), larger steps amplify the rounding in which
#               the ranks' averaged gradients and one process's batch mean differ


def one_step(model, optimizer, x, y):
    """One step of the module's optimizer on the mean squared error of (x, y)."""
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()


def test_torchrun_on_two_processes_trains_as_one_run(tmp_path):
    """torchrun --nproc_per_node=2: exit 0, each epoch printed once, no warning. What makes
    DDP correct: averaging the gradients of 2 ranks of b rows each is one step on their 2b
    rows, so last.safetensors holds the weights of one process stepping on both ranks' batches
    together (24 rows a rank: 5+5+5+5+4, a short last one), in a new order each epoch
    (DistributedSampler: a permutation seeded with seed + epoch, rank r taking every second
    index from r). The reported valid loss is the one-process number."""
    x, y = regression(60, 3, seed=0)
    data_csv = write_csv(tmp_path / "d.csv", x, y)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", mr.__file__, "--epochs", "2",
         "--device", "cpu",  # gloo between CPU processes, also where there is a GPU
         "--lr", str(DDP_LR), "--batch-size", "5", "--train", str(data_csv), "--test",
         str(data_csv), "--out", "out"], cwd=tmp_path, capture_output=True, text=True,
        check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [line[:9] for line in done.stdout.splitlines() if line.startswith("epoch")] == [
        "epoch   1", "epoch   2"]
    data = TableDataset(data_csv, valid_ratio=0.2, seed=0)
    torch.manual_seed(0)
    reference = ml.MLP(3)  # main()'s initial weights for seed 0
    optimizer = ml.make_optimizer(reference, DDP_LR)
    for epoch in (1, 2):
        order = torch.randperm(48, generator=torch.Generator().manual_seed(0 + epoch))
        for k in range(0, 24, 5):  # 5 rows from each rank's share: one step on 10
            rows = data.train_rows[torch.cat([order[0::2][k:k + 5], order[1::2][k:k + 5]])]
            one_step(reference, optimizer, data.x[rows], data.y[rows])
    last = weights_of(read_checkpoint(tmp_path / "out" / "last.safetensors")[0])
    for name, p in reference.state_dict().items():
        close(last[name].numpy(), p.numpy())
    model, _ = checkpoints.load_model(tmp_path / "out" / "model.safetensors")
    valid = speed.make_loader(Subset(data, data.valid_rows), 5, shuffle=False)
    best = metrics(tmp_path / "out")["best_epoch"]
    units = data.stats.target_span**2  # the run reports the MSE in the target's units
    assert metrics(tmp_path / "out")["history"][best - 1]["valid_loss"] == pytest.approx(
        ml.evaluate(model, valid, nn.MSELoss(), "cpu") * units, rel=1e-6)


def check_busy_out(rank, init_file, busy_out, result):
    """Rank `rank` of 2: the check of an --out that another run holds, which only rank 0
    makes; saves what it met."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with an_out(busy_out):
            met = "nothing"
    except InputError as e:
        met = str(e)
    finally:
        dist.destroy_process_group()
    Path(f"{result}{rank}").write_text(met)


def test_a_check_only_rank_0_makes_stops_every_rank(tmp_path):
    """An --out another run holds: rank 0, which alone writes, meets it, and every rank stops
    with it (rank 1 silently), none waiting for the others, none with a traceback."""
    (tmp_path / "busy").mkdir()
    with filelock.FileLock(tmp_path / "busy" / "run.lock"):  # another run holds it
        torch.multiprocessing.spawn(check_busy_out, nprocs=2, args=(
            str(tmp_path / "init"), str(tmp_path / "busy"), str(tmp_path / "met")))
    assert "another run is writing there" in (tmp_path / "met0").read_text()
    assert (tmp_path / "met1").read_text() == "rank 0 could not prepare --out"


def torchrun_environment(monkeypatch, port, **names):
    for name, value in {"TORCHELASTIC_RUN_ID": "job", "LOCAL_RANK": "0", "RANK": "0",
                        "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        **names}.items():
        monkeypatch.setenv(name, value)


def test_the_process_group_is_torn_down_after_a_run_and_after_an_error(tmp_path, monkeypatch,
                                                                       capsys):
    """Under torchrun's environment (here a world of one), main() joins the process group and
    leaves it at the end, and also when a bad input stops the run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun_environment(monkeypatch, port)
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "1")
    assert not dist.is_initialized() and metrics(out)["best_epoch"] == 1
    with pytest.raises(SystemExit):
        mr.main(["--train", str(tmp_path / "missing.csv"), "--out", str(out)])
    assert not dist.is_initialized() and "missing.csv" in capsys.readouterr().err


TORCHRUN = {"TORCHELASTIC_RUN_ID": "job"}


@pytest.mark.parametrize("env, message", [
    ({}, "LOCAL_RANK is set, but this is no torchrun job"),
    ({**TORCHRUN, "RANK": "x"}, "RANK='x': torchrun sets it to a whole number"),
    ({**TORCHRUN, "LOCAL_WORLD_SIZE": "x"}, "LOCAL_WORLD_SIZE='x': torchrun sets it to a whole"),
    ({**TORCHRUN, "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1': torchrun sets it to a whole number"),
    ({**TORCHRUN, "LOCAL_RANK": "²"}, "LOCAL_RANK='²': torchrun sets it to a whole number"),
    ({**TORCHRUN, "RANK": "5", "WORLD_SIZE": "1"}, "RANK=5 of WORLD_SIZE=1, LOCAL_RANK=0 of"),
])
def test_a_torchrun_variable_set_by_hand_is_one_line(capsys, previous_run, tmp_path,
                                                     monkeypatch, env, message):
    """LOCAL_RANK and friends set by hand, not by torchrun: one line, never a traceback."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert message in fails(capsys, previous_run, tmp_path, "--device", "cpu")


def test_a_busy_master_port_is_one_line(capsys, previous_run, tmp_path, monkeypatch):
    """A process group whose MASTER_PORT another program holds: one line, not a
    DistNetworkError traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        torchrun_environment(monkeypatch, busy.getsockname()[1])
        line = fails(capsys, previous_run, tmp_path, "--device", "cpu")
    assert "no process group could be joined" in line and not dist.is_initialized()


def test_torchrun_on_apples_mps_is_one_line(monkeypatch):
    """torch.distributed's backends take CPU or CUDA tensors: MPS under torchrun is refused
    with a line that names the way out."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with pytest.raises(InputError, match="MPS has no process-group backend; add --device cpu"):
        torchrun.join(torch.device("mps"), contextlib.ExitStack())


# --- Where learners are: Windows, notebooks, python -OO, the console and matplotlib they bring ---

IN_A_FRESH_PROCESS = """
import runpy, sys
for name in ("fcntl", "resource", "termios"):
    sys.modules[name] = None  # `import fcntl` fails, as on Windows
sys.path.insert(0, {root!r})
import minitorch_loop as ml
import minitorch_run as mr
ml.main(["--epochs", "1", "--out", "lesson"])
for flags in (["--out", "結果", "--test", {unlabelled!r}],
              ["--out", "結果", "--test", {unlabelled!r}, "--resume", "結果/last.safetensors"],
              ["--out", "refused", "--resume", {bad!r}]):
    try:
        mr.main(["--epochs", "1", "--train", {train!r}, *flags])
    except SystemExit as e:
        print("exit", e.code)
import signal
sys.argv = ["minitorch_run.py", "--train", "missing.csv"]
try:
    runpy.run_path({program!r}, run_name="__main__")
except SystemExit as e:
    print("command line: exit", e.code, "then", signal.getsignal(signal.SIGINT).name)
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", {root!r}]))
"""


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory, previous_run):
    """One process that brings what learners' machines bring: python -OO (no asserts, no
    docstrings); fcntl, resource and termios hidden, as on Windows; a console that encodes
    cp1252 (Windows, output redirected); a notebook's MPLBACKEND, whose module this venv
    lacks; a matplotlibrc with text.usetex and a savefig.dpi of 20000; an MPLCONFIGDIR that
    cannot be written. In it: the lesson and the tool train, the tool writes into --out 結果
    and resumes there, meets a damaged checkpoint and, from the command line, a missing file;
    and pytest collects the suite. Shared by the tests below: one start-up."""
    tmp = tmp_path_factory.mktemp("fresh")
    x, y = regression(100, 3, seed=0)
    (tmp / "rc").mkdir()
    (tmp / "rc" / "matplotlibrc").write_text("text.usetex: True\nsavefig.dpi: 20000\n")
    script = IN_A_FRESH_PROCESS.format(
        root=str(ROOT), program=mr.__file__, train=str(write_csv(tmp / "t.csv", x[:80], y[:80])),
        unlabelled=str(write_csv(tmp / "u.csv", x[80:])),
        bad=str(crafted(previous_run, tmp, fill("scaling.std", 0.0))))
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "MATPLOTLIBRC": str(tmp / "rc"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "MPLCONFIGDIR": "/dev/null/mpl"}
    done = subprocess.run([sys.executable, "-OO", "-c", script], cwd=tmp, capture_output=True,
                          timeout=300, check=False, env=env)
    return tmp, done.returncode, done.stdout.decode("cp1252"), done.stderr.decode("cp1252")


def test_both_programs_train_and_the_suite_is_collected_without_posix_modules(fresh_process):
    """With fcntl, resource and termios missing (as on Windows), both programs train and
    every test is collected. filelock, without fcntl here (and without Windows' msvcrt), falls
    back to a soft lock and says so: the one warning expected."""
    tmp, code, out, err = fresh_process
    assert code == 0, out[-2000:] + err
    warnings = [line for line in err.splitlines() if "Warning" in line]
    assert warnings == [w for w in warnings if "only soft file lock is available" in w]
    assert (tmp / "lesson" / "model.pt").exists() and (tmp / "lesson" / "predictions.csv").exists()
    assert re.fullmatch(r"\d+ tests collected in \S+s", out.splitlines()[-1])  # no errors


def test_python_OO_keeps_every_check_and_the_command_line_prints_no_traceback(fresh_process):
    """python -OO (no asserts, no docstrings): the tool still refuses a damaged checkpoint in
    one line; from the command line, a missing file is one line and exit 2, no traceback, and
    the stop signals are then ignored to the exit: a later one changes no exit code."""
    tmp, _, out, err = fresh_process
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    refusal = (f"error: {tmp / 'crafted.safetensors'}: a damaged or foreign checkpoint "
               "(scaling): use the code that wrote it, or start afresh in a new --out")
    assert lines == [refusal, "error: missing.csv: No such file or directory"]
    assert "Traceback" not in err and "command line: exit 2 then SIG_IGN" in out


def test_a_console_matplotlib_and_a_notebook_cannot_break_the_end_of_a_run(fresh_process):
    """cp1252 cannot encode 結果: the lines that name it say it escaped, never crash. The
    notebook's MPLBACKEND and the matplotlibrc (usetex without LaTeX, dpi 20000) reach no
    picture: every run ends with all its files, the pictures at matplotlib's default size."""
    from matplotlib.image import imread
    tmp, _, out, _ = fresh_process
    assert out.splitlines().count("exit 2") == 1 and "exit 1" not in out
    assert "resuming \\u7d50\\u679c" in out  # 結果, as cp1252 can show it
    assert "no test MSE: the test CSV has no target column" in out
    for name in outputs.OUTPUTS:
        assert (tmp / "結果" / name).exists(), name
    assert imread(tmp / "結果" / "loss.png").shape[:2] == (400, 600)  # 6 x 4 inches, dpi 100


class DeviceDtypes(TorchFunctionMode):
    """Records the dtype of every tensor that the programs' own code (not torch's) creates on,
    or moves to, a device named in the call."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        caller = Path(sys._getframe(1).f_code.co_filename)
        ours = caller.name in ("minitorch_loop.py", "minitorch_run.py") or (
            caller.parent.name == "minitorch_tool")
        to_a_device = "device" in kwargs or (func is torch.Tensor.to and any(
            isinstance(a, torch.device | str) for a in args[1:]))
        if ours and to_a_device and isinstance(out, torch.Tensor):
            self.dtypes.add(out.dtype)
        return out


def test_no_float64_tensor_goes_to_the_runs_device(tmp_path):
    """MPS has no float64: the run keeps its float64 bookkeeping (statistics, predictions in
    target units) on the CPU, and what it moves to or makes on its device is float32."""
    with DeviceDtypes() as seen:
        run_main(tmp_path, 3, True, "--epochs", "1")
    assert torch.float32 in seen.dtypes and torch.float64 not in seen.dtypes


def test_cpu_0_is_the_cpu(tmp_path):
    """--device cpu:0 names the CPU: the run ends, and its checkpoints load."""
    out, _, _ = run_main(tmp_path, 3, True, "--epochs", "1", "--device", "cpu:0")
    assert metrics(out)["best_epoch"] == 1 and checkpoints.load_model(out / "model.safetensors")
