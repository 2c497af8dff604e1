"""Tests for minitorch_loop: each one states a rule of the notes and checks it against an
independent computation (by hand, in float64), never against the code under test.

    make test        # or: .venv/bin/python -m pytest -q
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import minitorch_loop as ml  # not `from ... import test`: pytest would collect it as a test

DATA = Path(__file__).parent / "data"
FLOAT32_TOL = 1e-5  # float32 arithmetic against a float64 reference


# --- helpers: small CSVs written the way users' files look ---

def write_csv(path, x, y=None):
    """A CSV with a header row; the target column `y` last, when given."""
    names = [f"f{j}" for j in range(x.shape[1])] + ([] if y is None else ["y"])
    rows = x if y is None else np.column_stack([x, y])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([names, *rows.tolist()])
    return path


def raw_regression(n, n_features, seed):
    """Raw, unscaled features (values in the thousands), targets in [0, 1] from them."""
    rng = np.random.default_rng(seed)
    x = 1000 + 500 * rng.standard_normal((n, n_features))
    z = (x - 1000) / 500
    y = 1 / (1 + np.exp(-(z[:, 0] - np.abs(z[:, 1]) + 0.5)))
    return x, y


def by_hand(model, x):
    """The MLP's forward pass in float64 NumPy from its weights: Wx + b, ReLU, Wx + b, sigmoid."""
    (w1, b1), (w2, b2) = [(p.weight.detach().double().numpy(), p.bias.detach().double().numpy())
                          for p in (model.net[0], model.net[2])]
    h = np.maximum(x @ w1.T + b1, 0)
    return 1 / (1 + np.exp(-(h @ w2.T + b2)))


def standardised(x, rows):
    """Features standardised with the mean and (n-1) std of the given rows, in float64."""
    fit = x[rows]
    return (x - fit.mean(0)) / fit.std(0, ddof=1)


# --- Step 1: Dataset and DataLoader ---

def test_dataset_items_and_batches_have_the_notes_shapes(tmp_path):
    """An item is x (F,) and y (1,); a batch is (B, F) and (B, 1), as is the model's output."""
    x, y = raw_regression(10, 3, seed=0)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y))
    item_x, item_y = dataset[0]
    assert len(dataset) == 10 and item_x.shape == (3,) and item_y.shape == (1,)
    assert item_x.dtype == item_y.dtype == torch.float32
    batch_x, batch_y = next(iter(ml.make_loader(dataset, batch_size=4, shuffle=False)))
    assert batch_x.shape == (4, 3) and batch_y.shape == (4, 1)
    assert ml.MLP(in_features=3)(batch_x).shape == batch_y.shape, "MSELoss would broadcast"


def test_features_are_standardised_with_the_training_rows_only(tmp_path):
    """Mean and std come from the training split; validation rows are scaled with them."""
    x, y = raw_regression(50, 4, seed=1)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y), valid_ratio=0.3, seed=7)
    train_rows, valid_rows = dataset.train_rows.tolist(), dataset.valid_rows.tolist()
    assert len(valid_rows) == 15 and sorted(train_rows + valid_rows) == list(range(50))
    np.testing.assert_allclose(dataset.x.numpy(), standardised(x, train_rows), atol=FLOAT32_TOL)
    np.testing.assert_allclose(dataset.y.numpy()[:, 0], y, atol=FLOAT32_TOL)


def test_unlabelled_file_yields_features_only(tmp_path):
    """A test CSV with the training file's F feature columns and no target gives (x,) items."""
    x, y = raw_regression(20, 3, seed=2)
    train = ml.CsvDataset(write_csv(tmp_path / "train.csv", x, y))
    unlabelled = ml.CsvDataset(write_csv(tmp_path / "test.csv", x[:5]), stats=train.stats)
    assert unlabelled.y is None and len(unlabelled[0]) == 1 and unlabelled[0][0].shape == (3,)
    np.testing.assert_allclose(unlabelled.x.numpy(), train.x[:5].numpy())


# --- The loops ---

def test_one_epoch_lowers_the_loss_on_the_bundled_data():
    """One epoch of train() on data/train.csv lowers the mean loss over the training rows."""
    torch.manual_seed(0)
    dataset = ml.CsvDataset(DATA / "train.csv")
    loader = ml.make_loader(dataset, batch_size=16, shuffle=True)
    model, criterion = ml.MLP(dataset.x.shape[1]), nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = ml.evaluate(model, loader, criterion, "cpu")
    ml.train(model, loader, criterion, optimizer, "cpu")
    after = ml.evaluate(model, loader, criterion, "cpu")
    assert after < 0.8 * before, f"loss went from {before:.5f} to {after:.5f}"


def test_evaluate_is_the_exact_per_sample_mean(tmp_path):
    """evaluate() = sum of squared errors / N, even when the last batch is short (7 = 3+3+1)."""
    x, y = raw_regression(7, 3, seed=3)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y))
    model = ml.MLP(in_features=3)
    loader = ml.make_loader(dataset, batch_size=3, shuffle=False)
    expected = np.mean((by_hand(model, standardised(x, range(7)))[:, 0] - y) ** 2)
    assert ml.evaluate(model, loader, nn.MSELoss(), "cpu") == pytest.approx(expected, abs=1e-6)


def test_save_then_load_gives_identical_predictions(tmp_path):
    """A model saved with save_checkpoint and read back by load_model predicts the same bits."""
    x, y = raw_regression(30, 5, seed=4)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y))
    model = ml.MLP(in_features=5)
    mean, std = dataset.stats
    ml.save_checkpoint({"model": model.state_dict(), "in_features": 5, "mean": mean, "std": std},
                       tmp_path / "model.pt")
    loaded, (loaded_mean, loaded_std) = ml.load_model(tmp_path / "model.pt")
    loader = ml.make_loader(dataset, batch_size=8, shuffle=False)
    assert torch.equal(ml.test(model, loader, "cpu"), ml.test(loaded, loader, "cpu"))
    assert torch.equal(loaded_mean, mean) and torch.equal(loaded_std, std)


# --- main(): the whole run, end to end, on users' own files ---

def run_main(tmp_path, n_features, labelled_test, epochs=3):
    """main() on a raw CSV with `n_features` columns; returns (out dir, test features, targets)."""
    x, y = raw_regression(400, n_features, seed=5)
    train_csv = write_csv(tmp_path / "train.csv", x[:300], y[:300])
    test_csv = write_csv(tmp_path / "test.csv", x[300:], y[300:] if labelled_test else None)
    out = tmp_path / "out"
    ml.main(["--train", str(train_csv), "--test", str(test_csv), "--out", str(out),
             "--epochs", str(epochs), "--device", "cpu"])
    return out, x[300:], y[300:]


def read_predictions(out):
    with open(out / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "prediction"]
    return np.array([[float(v) for v in row] for row in rows[1:]])


def test_main_writes_one_prediction_per_test_row_in_order(tmp_path):
    """predictions.csv: id 0..N-1, each the saved model applied to that row of the test CSV."""
    out, test_x, test_y = run_main(tmp_path, n_features=5, labelled_test=True)
    predictions = read_predictions(out)
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    model = ml.MLP(in_features=5)
    model.load_state_dict(checkpoint["model"])
    z = (test_x - checkpoint["mean"].double().numpy()) / checkpoint["std"].double().numpy()
    np.testing.assert_array_equal(predictions[:, 0], np.arange(100))
    np.testing.assert_allclose(predictions[:, 1], by_hand(model, z)[:, 0], atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    expected_mse = np.mean((predictions[:, 1] - test_y) ** 2)
    assert metrics["test_mse"] == pytest.approx(expected_mse, abs=1e-6)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    best = min(metrics["history"], key=lambda h: h["valid_loss"])
    assert metrics["best_epoch"] == best["epoch"], "validation, not the test set, picks the model"


def test_main_predicts_an_unlabelled_test_file(tmp_path):
    """A test CSV without the target column: predictions for every row, and test_mse null."""
    out, _, _ = run_main(tmp_path, n_features=4, labelled_test=False)
    assert len(read_predictions(out)) == 100
    assert json.loads((out / "metrics.json").read_text())["test_mse"] is None


def test_raw_features_in_the_thousands_train_sensibly(tmp_path):
    """Unscaled features and a different column count need no code change to learn."""
    out, _, test_y = run_main(tmp_path, n_features=7, labelled_test=True, epochs=30)
    baseline = np.mean((test_y - test_y.mean()) ** 2)  # predicting the (test!) mean
    test_mse = json.loads((out / "metrics.json").read_text())["test_mse"]
    assert test_mse < 0.1 * baseline, f"test MSE {test_mse:.4f} vs {baseline:.4f} for a constant"
