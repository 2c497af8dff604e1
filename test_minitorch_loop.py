"""The rules of the notes, as executable lessons about minitorch_loop.py, in the notes' order
(一 to 六): the Dataset and the DataLoader, tensors, devices, gradients, the network, the loss,
the optimizer, the train / validate / test loops, save and load, and the run itself.

Each test states one rule in its name and docstring, and checks it against an independent
computation (by hand, in float64 NumPy), never against the code under test. The tool for real
files (minitorch_run.py) has its own tests, in test_minitorch_run.py.

    .venv/bin/python -m pytest test_minitorch_loop.py -q   # the lesson's tests alone
    HYPOTHESIS_PROFILE=dev .venv/bin/python -m pytest -q     # more, random examples
"""

import copy
import csv
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader

import minitorch_loop as ml  # not `from ... import test`: pytest would collect it as a test

DATA = Path(__file__).parent / "data"
FLOAT32_TOL = 1e-5  # float32 arithmetic against a float64 reference (absolute)
FLOAT32_RTOL = 1e-4  # ... and relative, for values that can grow with the inputs
STEP_TOL = 1e-6  # a step, after - before, of parameters within 1: float32 rounds them by 6e-8

# --- strategies, declared once ---
rows = st.integers(2, 60)  # a training file needs two rows for a standard deviation
batch_sizes = st.integers(1, 70)
n_features = st.integers(1, 8)
seeds = st.integers(0, 2**16)
learning_rates = st.floats(1e-3, 2.0)
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)
float_arrays = hnp.arrays(np.float32, shapes, elements=finite_floats)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device on this machine")),
    pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(),
                                                 reason="no MPS device on this machine")),
]


# --- helpers: users' files, and the model computed by hand ---

def write_csv(path, x, y=None):
    """A CSV with a header row; the target column `y` last, when given."""
    names = [f"f{j}" for j in range(x.shape[1])] + ([] if y is None else ["y"])
    table = x if y is None else np.column_stack([x, y])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([names, *table.tolist()])
    return path


def regression(n, n_features, seed, scale=1.0):
    """Features (times `scale`, around 2 * scale) and targets in [0, 1] that depend on them."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, n_features))
    y = 1 / (1 + np.exp(-(z[:, 0] - 0.5 * np.abs(z[:, -1]) + 0.5)))
    return scale * (2 + z), y


def indexed_dataset(scratch, n, n_features=2):
    """n rows whose feature 0 is the row number and whose target is row / n; no scaling."""
    x = np.column_stack([np.arange(n)] + [np.ones(n)] * (n_features - 1))
    path = write_csv(scratch / "indexed.csv", x, np.arange(n) / n)
    return ml.CsvDataset(path, stats=(torch.zeros(n_features), torch.ones(n_features)))


def standardised(x, fit_rows=slice(None)):
    """Features standardised with the mean and (n - 1) std of `fit_rows`, in float64."""
    fit = x[fit_rows]
    return (x - fit.mean(0)) / fit.std(0, ddof=1)


def weights(model):
    """The MLP's parameters as float64 arrays: W1 (H, F), b1 (H,), W2 (1, H), b2 (1,)."""
    return [p.detach().double().cpu().numpy() for p in model.parameters()]


def forward_by_hand(w, x):
    """Linear -> ReLU -> Linear -> Sigmoid in float64: (pre-activations, hidden, output)."""
    w1, b1, w2, b2 = w
    pre = x @ w1.T + b1  # W x + b for every row: (N, H)
    hidden = np.maximum(pre, 0)
    return pre, hidden, 1 / (1 + np.exp(-(hidden @ w2.T + b2)))  # (N, 1)


def as_float64(model):
    """A float64 copy of the model the module builds, whatever its layers: the reference for
    the tests of the loop, which hold for any network."""
    return copy.deepcopy(model).double()


def predict64(model, x):
    """The model's outputs for rows x (N, F), computed in float64 on a copy."""
    with torch.no_grad():
        return as_float64(model)(torch.from_numpy(x)).numpy()


def grads64(model, x, y):
    """d MSE / d parameters at the model's weights, by autograd on a float64 copy."""
    reference = as_float64(model)
    loss = nn.functional.mse_loss(reference(torch.from_numpy(x)), torch.from_numpy(y))
    return [g.numpy() for g in torch.autograd.grad(loss, list(reference.parameters()))]


def mse_grads_by_hand(w, x, y):
    """d mean((p - y)^2) / d(W1, b1, W2, b2), by the chain rule."""
    pre, hidden, p = forward_by_hand(w, x)
    g_logit = 2 * (p - y) / len(x) * p * (1 - p)  # through MSE and the sigmoid: (N, 1)
    g_pre = (g_logit @ w[2]) * (pre > 0)  # through the second Linear and the ReLU: (N, H)
    return [g_pre.T @ x, g_pre.sum(0), g_logit.T @ hidden, g_logit.sum(0)]


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_TOL)


# --- 一 Step 1: Dataset and DataLoader ---

def test_dataset_items_and_batches_have_the_notes_shapes(tmp_path):
    """An item is x (F,) and y (1,); a batch is (B, F) and (B, 1), as is the model's output."""
    x, y = regression(10, 3, seed=0)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y))
    item_x, item_y = dataset[0]
    assert len(dataset) == 10 and item_x.shape == (3,) and item_y.shape == (1,)
    assert item_x.dtype == item_y.dtype == torch.float32
    batch_x, batch_y = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch_x.shape == (4, 3) and batch_y.shape == (4, 1)
    assert ml.MLP(in_features=3)(batch_x).shape == batch_y.shape, "MSELoss would broadcast"


@given(n=st.integers(6, 60), n_features=n_features, valid_ratio=st.floats(0.1, 0.5),
       seed=seeds)
def test_features_are_standardised_with_the_training_rows_only(scratch, n, n_features,
                                                               valid_ratio, seed):
    """split="train" and "valid" share out the file's rows; the training rows' features come
    out with mean 0 and std 1 per column, and the validation rows are scaled with the training
    rows' mean and std (not their own): undone with those, they are the file's other rows."""
    x, y = regression(n, n_features, seed, scale=1000)
    path = write_csv(scratch / "d.csv", x, y)
    train = ml.CsvDataset(path, "train", valid_ratio=valid_ratio, seed=seed)
    valid = ml.CsvDataset(path, "valid", stats=train.stats, valid_ratio=valid_ratio, seed=seed)
    assert len(valid) == round(valid_ratio * n) and len(train) + len(valid) == n
    z = train.x.double().numpy()
    close(z.mean(0), np.zeros(n_features))
    close(z.std(0, ddof=1), np.ones(n_features))
    mean, std = (s.numpy() for s in train.stats)
    rows = np.concatenate([d.x.double().numpy() * std + mean for d in (train, valid)])
    targets = np.concatenate([d.y.numpy()[:, 0] for d in (train, valid)])
    order = np.lexsort(rows.T[::-1])
    np.testing.assert_allclose(rows[order], x[np.lexsort(x.T[::-1])], atol=1e-3)  # float32
    np.testing.assert_allclose(np.sort(targets), np.sort(y), rtol=1e-5)


def test_every_column_but_the_target_is_a_feature(tmp_path):
    """All feature columns reach the model, standardised, whatever their number (here 12)."""
    x, y = regression(30, 12, seed=3)
    dataset = ml.CsvDataset(write_csv(tmp_path / "d.csv", x, y))
    close(dataset.x.numpy(), standardised(x))


def test_unlabelled_file_yields_features_only(tmp_path):
    """A test CSV of the training file's F feature columns and no target (labelled=False)
    gives (x,) items, scaled like the training rows."""
    x, y = regression(20, 3, seed=2)
    train = ml.CsvDataset(write_csv(tmp_path / "train.csv", x, y))
    unlabelled = ml.CsvDataset(write_csv(tmp_path / "test.csv", x[:5]), stats=train.stats,
                               labelled=False)
    assert unlabelled.y is None and len(unlabelled[0]) == 1 and unlabelled[0][0].shape == (3,)
    np.testing.assert_allclose(unlabelled.x.numpy(), train.x[:5].numpy())


@pytest.mark.parametrize("labelled", [True, False])
def test_a_test_file_of_one_row_is_read(tmp_path, labelled):
    """The rule "at least 2 rows to train on" is the training file's; a test file may hold one."""
    x, y = regression(20, 3, seed=2)
    train = ml.CsvDataset(write_csv(tmp_path / "train.csv", x, y))
    one = ml.CsvDataset(write_csv(tmp_path / "one.csv", x[:1], y[:1] if labelled else None),
                        stats=train.stats, labelled=labelled)
    assert len(one) == 1
    np.testing.assert_allclose(one.x.numpy(), train.x[:1].numpy())


@given(n=rows, batch_size=batch_sizes, shuffle=st.booleans())
def test_loader_yields_ceil_n_over_b_batches_and_a_short_last_one(scratch, n, batch_size,
                                                                  shuffle):
    """n rows in batches of b: ceil(n/b) batches, the last of n - b(ceil(n/b) - 1) rows."""
    loader = DataLoader(indexed_dataset(scratch, n, 3), batch_size, shuffle)
    batches = list(loader)
    k = -(-n // batch_size)  # ceil(n / b) in integers
    assert len(loader) == k
    assert [len(x) for x, _ in batches] == [batch_size] * (k - 1) + [n - batch_size * (k - 1)]
    assert all(x.shape == (len(x), 3) and y.shape == (len(x), 1) for x, y in batches)


@given(n=rows, batch_size=batch_sizes, shuffle=st.booleans())
def test_an_epoch_visits_every_row_exactly_once(scratch, n, batch_size, shuffle):
    """Shuffled or not, one pass over the loader sees each row once; unshuffled, in order."""
    seen = [int(i) for x, _ in DataLoader(indexed_dataset(scratch, n), batch_size, shuffle)
            for i in x[:, 0]]
    assert sorted(seen) == list(range(n))
    if not shuffle:
        assert seen == list(range(n)), "the test loader must keep the file's order"


def test_shuffling_draws_a_new_order_every_epoch(scratch):
    """shuffle=True (training) gives a different order each epoch; 50! orders make a tie moot."""
    loader = DataLoader(indexed_dataset(scratch, 50), batch_size=8, shuffle=True)
    first, second = ([int(i) for x, _ in loader for i in x[:, 0]] for _ in range(2))
    assert first != second and first != list(range(50))


class Counting:
    """Mixed into a Dataset: records each __getitem__ call in .calls."""

    def __getitem__(self, i):
        self.calls.append(i)
        return super().__getitem__(i)


class CountingDataset(Counting, ml.CsvDataset):
    """A CsvDataset that records each __getitem__ call."""


@example(n=5, batch_size=5)  # the notes: DataLoader(dataset, batch_size=5) calls getitem 5 times
@given(n=rows, batch_size=batch_sizes)
def test_the_dataloader_calls_getitem_once_per_row(scratch, n, batch_size):
    """The notes' DataLoader calls __getitem__(0) ... __getitem__(n-1), each with one row's
    index (an int), and stacks the rows of each batch."""
    x = np.arange(2 * n, dtype=float).reshape(n, 2)
    dataset = CountingDataset(write_csv(scratch / "count.csv", x, np.zeros(n)),
                              stats=(torch.zeros(2), torch.ones(2)))
    dataset.calls = []
    batches = [x for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    assert dataset.calls == list(range(n)) and all(type(i) is int for i in dataset.calls)
    np.testing.assert_array_equal(torch.cat(batches).numpy(), x)


@given(n=rows, batch_size=batch_sizes, n_features=n_features, seed=seeds)
def test_predictions_have_exactly_the_targets_shape(scratch, n, batch_size, n_features, seed):
    """test() returns (N, 1), the targets' shape: the loss compares row with row."""
    x, y = regression(n, n_features, seed)
    dataset = ml.CsvDataset(write_csv(scratch / "d.csv", x, y))
    loader = DataLoader(dataset, batch_size, shuffle=False)
    assert ml.test(ml.MLP(n_features), loader, "cpu").shape == dataset.y.shape == (n, 1)


# --- 二 Tensors: shape, creation, squeeze / unsqueeze / transpose / cat ---

def test_tensor_creation_as_in_the_notes():
    """From a nested list, from NumPy (sharing its memory), zeros and ones of a given shape."""
    x = torch.tensor([[1, -1], [-1, 1]])
    assert x.shape == (2, 2) and x.tolist() == [[1, -1], [-1, 1]]
    a = np.array([[1.0, 2.0]])
    from_numpy = torch.from_numpy(a)
    a[0, 0] = 5.0
    assert from_numpy[0, 0] == 5.0, "from_numpy shares memory with the array"
    assert torch.zeros([2, 2]).shape == (2, 2) and torch.ones([1, 2, 5]).shape == (1, 2, 5)


@example(shape=(2, 3), dim=0)  # the notes: squeeze(0) turns [1, 2, 3] into [2, 3]
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), dim=st.integers(0, 3))
def test_squeeze_removes_a_size_one_dim(shape, dim):
    """x.squeeze(d) drops dim d when its size is 1, as np.squeeze does."""
    dim = min(dim, len(shape))
    a = np.random.default_rng(0).standard_normal(shape[:dim] + (1,) + shape[dim:])
    np.testing.assert_array_equal(torch.from_numpy(a).squeeze(dim).numpy(), np.squeeze(a, dim))


@example(x=np.zeros((2, 3), np.float32), dim=1)  # the notes: unsqueeze(1): [2, 3] -> [2, 1, 3]
@given(x=float_arrays, dim=st.integers(0, 4))
def test_unsqueeze_inserts_a_size_one_dim(x, dim):
    """x.unsqueeze(d) inserts a dim of size 1 at d, as np.expand_dims does."""
    dim = min(dim, x.ndim)
    np.testing.assert_array_equal(torch.from_numpy(x).unsqueeze(dim).numpy(),
                                  np.expand_dims(x, dim))


@example(x=np.zeros((2, 3), np.float32), dims=(0, 1))  # the notes: [2, 3] -> [3, 2]
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, max_side=4),
                    elements=finite_floats),
       dims=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_transpose_swaps_two_dims(x, dims):
    """x.transpose(a, b) swaps dims a and b, as np.swapaxes does."""
    a, b = (d % x.ndim for d in dims)
    np.testing.assert_array_equal(torch.from_numpy(x).transpose(a, b).numpy(),
                                  np.swapaxes(x, a, b))


@example(sizes=[1, 3, 2], shape=(2, 4, 3), dim=1)  # the notes: [2,1,3], [2,3,3], [2,2,3] -> [2,6,3]
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), dim=st.integers(0, 2))
def test_cat_adds_the_sizes_along_one_dim(sizes, shape, dim):
    """torch.cat joins tensors that agree on every other dim; the sizes along `dim` add up."""
    dim = dim % len(shape)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(shape[:dim] + (k,) + shape[dim + 1:]) for k in sizes]
    joined = torch.cat([torch.from_numpy(p) for p in parts], dim=dim)
    assert joined.shape[dim] == sum(sizes)
    np.testing.assert_array_equal(joined.numpy(), np.concatenate(parts, axis=dim))


# --- 二.3 Devices ---

@pytest.mark.parametrize("device", DEVICES)
@given(x=float_arrays)
def test_to_device_keeps_values_dtype_and_shape(device, x):
    """.to(device) moves a tensor without changing it; the trip back to the CPU is exact."""
    cpu = torch.from_numpy(x)
    moved = cpu.to(device)
    assert moved.device.type == device and moved.dtype == cpu.dtype and moved.shape == cpu.shape
    assert torch.equal(moved.cpu(), cpu)


@pytest.mark.parametrize("device", DEVICES)
def test_model_and_batches_live_on_the_chosen_device(scratch, device):
    """model.to(device) moves every parameter; train, evaluate and test move every batch."""
    x, y = regression(20, 3, seed=0)
    loader = DataLoader(ml.CsvDataset(write_csv(scratch / "d.csv", x, y)), 8, shuffle=True)
    model = ml.MLP(3).to(device)
    assert all(p.device.type == device for p in model.parameters())
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].device.type))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ml.train(model, loader, nn.MSELoss(), optimizer, device)
    ml.evaluate(model, loader, nn.MSELoss(), device)
    assert ml.test(model, loader, device).device.type == "cpu", "predictions come back"
    assert seen == [device] * 9


@pytest.mark.parametrize("device", DEVICES)
def test_a_state_dict_saved_on_any_device_loads_on_the_cpu(tmp_path, device):
    """torch.save(model.state_dict()) on a GPU, torch.load(..., map_location="cpu") on a
    machine without one: the same values, on the CPU."""
    model = ml.MLP(3).to(device)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = ml.MLP(3)
    loaded.load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu",
                                      weights_only=True))
    for saved, read in zip(model.parameters(), loaded.parameters(), strict=True):
        assert read.device.type == "cpu" and torch.equal(read, saved.cpu())


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_any_name_of_the_cpu_is_a_map_location_torch_load_knows(tmp_path, name):
    """--device cpu:0 names the CPU too; torch.load's map_location knows it only as "cpu"."""
    torch.save(ml.MLP(3).state_dict(), tmp_path / "model.pt")
    device = ml.pick_device(name)
    loaded = torch.load(tmp_path / "model.pt", map_location=device, weights_only=True)
    assert all(t.device.type == "cpu" for t in loaded.values())


OTHER_DEVICES = [
    "meta",  # holds shapes, no data: a second device on every machine
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device on this machine")),
]


@pytest.mark.parametrize("other", OTHER_DEVICES)
def test_a_model_and_a_batch_on_different_devices_raise(other):
    """The notes: tensors on different devices cannot meet in one operation."""
    with pytest.raises(RuntimeError, match="device"):
        ml.MLP(3)(torch.ones(2, 3, device=other))


def test_a_model_and_a_batch_of_different_dtypes_raise():
    """The notes: model and data must share a data type (float32 here), or it fails."""
    with pytest.raises(RuntimeError, match="dtype"):
        ml.MLP(3)(torch.ones(2, 3, dtype=torch.float64))


# --- 二.4 Gradients ---

@example(x=np.array([[1.0, 0.0], [-1.0, 1.0]]))  # the notes: x.grad is [[2, 0], [-2, 2]]
@given(x=hnp.arrays(np.float64, shapes, elements=st.floats(-1e3, 1e3)))
def test_backward_of_sum_of_squares_is_two_x(x):
    """z = x.pow(2).sum(); z.backward() leaves dz/dx = 2x in x.grad."""
    t = torch.tensor(x, requires_grad=True)
    t.pow(2).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 2 * x)


@settings(max_examples=5)
@given(batch=st.integers(1, 6), n_features=n_features, seed=seeds)
def test_mlp_gradients_match_finite_differences(batch, n_features, seed):
    """gradcheck: autograd's gradients for inputs and every parameter, against float64
    finite differences."""
    torch.manual_seed(seed)
    model = ml.MLP(n_features, hidden=6).double()
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    x = torch.randn(batch, n_features, dtype=torch.float64, requires_grad=True)

    def forward(x, *params):
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


# --- 三 Step 2: the network ---

@given(n_in=st.integers(1, 40), n_out=st.integers(1, 70))
@example(n_in=32, n_out=64)  # the notes: Linear(32, 64) has W of 64 x 32
def test_linear_weight_is_out_by_in(n_in, n_out):
    """nn.Linear(in, out).weight is (out, in) and .bias is (out,): W x + b maps in to out."""
    layer = nn.Linear(n_in, n_out)
    assert layer.weight.shape == (n_out, n_in) and layer.bias.shape == (n_out,)


@given(lead=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), seed=seeds)
def test_linear_is_x_times_w_transposed_plus_b_for_any_batch_shape(lead, seed):
    """Linear(32, 64) maps (*, 32) to (*, 64): each row x gives W x + b."""
    torch.manual_seed(seed)
    layer = nn.Linear(32, 64)
    x = torch.randn(*lead, 32)
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    out = layer(x)
    assert out.shape == (*lead, 64)
    close(out.detach().numpy(), x.double().numpy() @ w.T + b)


@given(batch=st.integers(1, 40), n_features=st.integers(1, 40), seed=seeds)
def test_mlp_is_linear_relu_linear_sigmoid(batch, n_features, seed):
    """MLP maps (B, F) to (B, 1) as Linear -> ReLU -> Linear -> Sigmoid computed by hand."""
    torch.manual_seed(seed)
    model = ml.MLP(n_features)
    x = torch.randn(batch, n_features) * 3
    out = model(x)
    assert out.shape == (batch, 1)
    close(out.detach().numpy(), forward_by_hand(weights(model), x.double().numpy())[2])


def test_mlp_defaults_are_the_notes_sizes():
    """MLP() is Linear(32 -> 64) -> ReLU -> Linear(64 -> 1) -> Sigmoid, with or without
    Sequential (its layers, in the order they were given)."""
    layers = [m for m in ml.MLP().modules() if not list(m.children())]
    first, relu, second, sigmoid = layers
    assert first.weight.shape == (64, 32) and second.weight.shape == (1, 64)
    assert isinstance(relu, nn.ReLU) and isinstance(sigmoid, nn.Sigmoid)


class HandWritten(nn.Module):
    """The network of MLP's notes-三.3 comment: its layers one by one, a forward by hand."""

    def __init__(self, in_features=32, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.fc2(self.relu(self.fc1(x))))


@given(batch=st.integers(1, 20), n_features=n_features, seed=seeds)
def test_with_or_without_sequential_is_the_same_network(batch, n_features, seed):
    """With the same weights, MLP (nn.Sequential) and the hand-written forward of its comment
    give identical outputs and identical gradients."""
    torch.manual_seed(seed)
    model, hand = ml.MLP(n_features), HandWritten(n_features)
    with torch.no_grad():
        for mine, theirs in zip(hand.parameters(), model.parameters(), strict=True):
            mine.copy_(theirs)
    x, y = torch.randn(batch, n_features), torch.rand(batch, 1)
    outputs = []
    for net in (model, hand):
        out = net(x)
        nn.functional.mse_loss(out, y).backward()
        outputs.append(out.detach())
    assert torch.equal(*outputs)
    for a, b in zip(model.parameters(), hand.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


# --- 四 Step 3: the loss ---

@given(pred=hnp.arrays(np.float64, shapes, elements=st.floats(-10, 10)), seed=seeds)
def test_mse_gradient_is_two_times_error_over_n(pred, seed):
    """d MSE / d pred = 2 (pred - y) / N, N counting every element."""
    y = np.random.default_rng(seed).standard_normal(pred.shape)
    p = torch.tensor(pred, requires_grad=True)
    nn.MSELoss()(p, torch.from_numpy(y)).backward()
    close(p.grad.numpy(), 2 * (pred - y) / pred.size)


def test_a_target_of_shape_b_makes_mse_broadcast_silently_wrong():
    """The homework's pitfall: output (B, 1) against target (B,) broadcasts to (B, B)."""
    pred, y = torch.tensor([[0.1], [0.5], [0.9]]), torch.tensor([0.2, 0.4, 0.8])
    by_hand = np.mean((np.array([0.1, 0.5, 0.9]) - np.array([0.2, 0.4, 0.8])) ** 2)
    assert nn.MSELoss()(pred, y[:, None]).item() == pytest.approx(by_hand)
    with pytest.warns(UserWarning, match="target size"):
        wrong = nn.MSELoss()(pred, y).item()
    assert wrong != pytest.approx(by_hand)


# --- 五 Step 4: the optimizer; 六 the loops ---

def sgd_setup(scratch, n, n_features, lr, seed):
    """A model and a one-batch loader over n rows, plus the rows by hand (float64)."""
    x, y = regression(n, n_features, seed)
    dataset = ml.CsvDataset(write_csv(scratch / "d.csv", x, y))
    torch.manual_seed(seed)
    model = ml.MLP(n_features, hidden=8)
    optimizer = ml.make_optimizer(model, lr)  # whatever optimizer the module builds
    loader = DataLoader(dataset, batch_size=n, shuffle=True)
    return model, optimizer, loader, standardised(x), y[:, None]


@given(n=rows, n_features=n_features, lr=learning_rates, seed=seeds)
def test_a_one_batch_epoch_is_one_sgd_step_by_hand(scratch, n, n_features, lr, seed):
    """The notes' optimizer: make_optimizer builds plain SGD, so train() over one batch of every
    row moves each parameter p by exactly -lr * dL/dp (the gradient by autograd, in float64)."""
    model, optimizer, loader, x, y = sgd_setup(scratch, n, n_features, lr, seed)
    w, grads = weights(model), grads64(model, x, y)
    ml.train(model, loader, nn.MSELoss(), optimizer, "cpu")
    for after, before, grad in zip(weights(model), w, grads, strict=True):
        np.testing.assert_allclose(after - before, -lr * grad, rtol=FLOAT32_RTOL, atol=STEP_TOL)


@given(n=rows, n_features=n_features, lr=st.floats(0.5, 2.0), seed=seeds)
def test_zero_grad_makes_each_step_use_only_its_own_gradient(scratch, n, n_features, lr, seed):
    """Two one-batch epochs are two steps, each on its own gradient; had the first step's
    gradient stayed in .grad, the second would add it again. The reference: the same optimizer
    on a copy, its .grad set afresh from autograd before each step, on the same rows in the
    same order and dtype (an adaptive optimizer, Adam, would magnify float32's rounding)."""
    model, optimizer, _, _, _ = sgd_setup(scratch, n, n_features, lr, seed)
    dataset = ml.CsvDataset(scratch / "d.csv")
    loader = DataLoader(dataset, batch_size=n, shuffle=False)
    reference = copy.deepcopy(model)
    reference_optimizer = ml.make_optimizer(reference, lr)
    for _ in range(2):
        loss = nn.functional.mse_loss(reference(dataset.x), dataset.y)
        for p, g in zip(reference.parameters(), torch.autograd.grad(loss, list(
                reference.parameters())), strict=True):
            p.grad = g
        reference_optimizer.step()
        ml.train(model, loader, nn.MSELoss(), optimizer, "cpu")
    for after, expected in zip(weights(model), weights(reference), strict=True):
        close(after, expected)


@given(n=rows, batch_size=batch_sizes, n_features=n_features, seed=seeds)
def test_train_returns_the_per_sample_mean_loss(scratch, n, batch_size, n_features, seed):
    """With lr = 0 the weights stay put, so train()'s loss is the plain mean over all rows."""
    x, y = regression(n, n_features, seed)
    dataset = ml.CsvDataset(write_csv(scratch / "d.csv", x, y))
    model = ml.MLP(n_features)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = ml.train(model, DataLoader(dataset, batch_size, True), nn.MSELoss(), optimizer,
                    "cpu")
    expected = np.mean((predict64(model, standardised(x))[:, 0] - y) ** 2)
    assert loss == pytest.approx(expected, rel=FLOAT32_RTOL, abs=1e-7)


@example(n=7, batch_size=3, n_features=3, seed=3)  # 7 = 3 + 3 + 1: a short last batch
@given(n=rows, batch_size=batch_sizes, n_features=n_features, seed=seeds)
def test_evaluate_is_the_exact_per_sample_mean(scratch, n, batch_size, n_features, seed):
    """evaluate() = sum of squared errors / N for any batch size: a short last batch weighs
    what its rows weigh, not what a full batch would."""
    x, y = regression(n, n_features, seed)
    dataset = ml.CsvDataset(write_csv(scratch / "d.csv", x, y))
    model = ml.MLP(n_features)
    loss = ml.evaluate(model, DataLoader(dataset, batch_size, False), nn.MSELoss(), "cpu")
    expected = np.mean((predict64(model, standardised(x))[:, 0] - y) ** 2)
    assert loss == pytest.approx(expected, rel=FLOAT32_RTOL, abs=1e-7)


def test_evaluate_and_test_record_no_graph_and_change_nothing(scratch):
    """Under no_grad no output has a grad_fn; parameters and their .grad stay as they were."""
    x, y = regression(20, 3, seed=0)
    loader = DataLoader(ml.CsvDataset(write_csv(scratch / "d.csv", x, y)), 8, False)
    model = ml.MLP(3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [p.detach().clone() for p in model.parameters()]
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out))
    ml.evaluate(model, loader, nn.MSELoss(), "cpu")
    preds = ml.test(model, loader, "cpu")
    assert len(outputs) == 6 and all(o.grad_fn is None for o in [*outputs, preds])
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b) and torch.equal(p.grad, torch.full_like(p, 7.0))


def test_train_sets_training_mode_evaluate_and_test_set_eval_mode(scratch):
    """model.train() before training, model.eval() before validating or testing."""
    x, y = regression(20, 3, seed=0)
    loader = DataLoader(ml.CsvDataset(write_csv(scratch / "d.csv", x, y)), 8, False)
    model = ml.MLP(3)
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.eval()
    ml.train(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    assert modes == [True] * 3
    for run in (lambda: ml.evaluate(model, loader, nn.MSELoss(), "cpu"),
                lambda: ml.test(model, loader, "cpu")):
        modes.clear()
        model.train()
        run()
        assert modes == [False] * 3


def test_train_reads_from_the_device_per_epoch_not_per_batch(scratch, monkeypatch):
    """No .item() (a host-device sync) per batch: the loss is summed on the device and read
    at the end, so an epoch of 20 batches reads as often as one of 10."""
    x, y = regression(40, 3, seed=0)
    dataset = ml.CsvDataset(write_csv(scratch / "d.csv", x, y))
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):  # each waits for the device
        read = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, read=read, name=name: reads.append(name) or read(t, *a))
    counts = []
    for batch_size in (4, 2):
        model = ml.MLP(3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        reads.clear()
        ml.train(model, DataLoader(dataset, batch_size, True), nn.MSELoss(), optimizer, "cpu")
        counts.append(len(reads))
    assert counts[0] == counts[1] < 10, f"reads for 10 and 20 batches: {counts}"


def test_one_epoch_lowers_the_loss_on_the_bundled_data():
    """One epoch of train() on data/train.csv lowers the mean loss over the training rows."""
    torch.manual_seed(0)
    dataset = ml.CsvDataset(DATA / "train.csv")
    loader = DataLoader(dataset, batch_size=16, shuffle=True)
    model, criterion = ml.MLP(dataset.x.shape[1]), nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = ml.evaluate(model, loader, criterion, "cpu")
    ml.train(model, loader, criterion, optimizer, "cpu")
    after = ml.evaluate(model, loader, criterion, "cpu")
    assert after < before, f"loss went from {before:.5f} to {after:.5f}"



# --- 六.5 Save and load; 六 the run, end to end ---

def run_lesson(tmp_path, capsys, *flags):
    """main() with `flags` and --out tmp_path; returns its printed lines."""
    ml.main(["--device", "cpu", "--out", str(tmp_path), *flags])
    return capsys.readouterr().out.splitlines()


EPOCH_LINE = re.compile(r"epoch +(\d+) \| train (\S+) \| valid (\S+) \| \S+s( \*)?$")


def test_the_run_keeps_the_best_validation_model_and_predicts_with_it(tmp_path, capsys):
    """Each epoch prints its losses, * where validation improved; model.pt is the state_dict
    of the epoch with the lowest valid loss (its MSE on the validation rows, by hand), and
    predictions.csv is that model on the test rows, in the file's order."""
    epochs = [EPOCH_LINE.match(line) for line in run_lesson(tmp_path, capsys, "--epochs", "3",
                                                             "--lr", "2")]
    valid = [float(m[3]) for m in epochs if m]
    assert len(valid) == 3
    assert [bool(m[4]) for m in epochs if m] == [v < min(valid[:i], default=np.inf)
                                                 for i, v in enumerate(valid)]
    train = ml.CsvDataset(DATA / "train.csv", "train")
    model = ml.MLP(train.x.shape[1])
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    valid_set = ml.CsvDataset(DATA / "train.csv", "valid", stats=train.stats)
    by_hand = np.mean((predict64(model, valid_set.x.double().numpy()) - valid_set.y.numpy())**2)
    assert by_hand == pytest.approx(min(valid), rel=1e-4), "model.pt is the best epoch's"
    with open(tmp_path / "predictions.csv") as f:
        table = list(csv.reader(f))
    test_set = ml.CsvDataset(DATA / "test.csv", stats=train.stats)
    assert table[0] == ["id", "prediction"] and len(table) == 1 + len(test_set)
    np.testing.assert_array_equal([int(row[0]) for row in table[1:]], range(len(test_set)))
    close([float(row[1]) for row in table[1:]],
          predict64(model, test_set.x.double().numpy())[:, 0])


STEP_LINES = re.compile(r"W\.grad before loss\.backward\(\): None\nW\.grad after: shape "
                        r"\((\d+), (\d+)\); W\[0, 0\] = (\S+), W\.grad\[0, 0\] = (\S+)\n"
                        r"after optimizer\.step\(\): W\[0, 0\] = (\S+);")


def test_inspect_shows_one_step_by_hand_and_changes_nothing(tmp_path, capsys):
    """--inspect prints the first batch's shapes, the first Linear's W (64, 32), its .grad,
    None before backward() (autograd on a float64 copy agrees after), and W after the
    optimizer's step (the same step on a float64 copy); the run after it is the run without
    it, to the bit."""
    plain = run_lesson(tmp_path / "plain", capsys, "--epochs", "1", "--lr", "0.5")
    looked = run_lesson(tmp_path / "inspect", capsys, "--epochs", "1", "--lr", "0.5", "--inspect")
    text = "\n".join(looked)
    train = ml.CsvDataset(DATA / "train.csv", "train")
    n_features = train.x.shape[1]
    assert f"x (16, {n_features}) torch.float32 on cpu, y (16, 1): 16 calls" in text
    assert f"first Linear: W (64, {n_features}), b (64,); x @ W.T + b is (16, 64)" in text
    out, n_in, before, grad, after = STEP_LINES.search(text).groups()
    assert (int(out), int(n_in)) == (64, n_features)
    torch.manual_seed(0)  # main()'s initial weights for seed 0
    reference = as_float64(ml.MLP(n_features))
    expected = grads64(reference, train.x[:16].double().numpy(), train.y[:16].double().numpy())
    for p, g in zip(reference.parameters(), expected, strict=True):
        p.grad = torch.from_numpy(g)
    w = weights(reference)[0][0, 0]
    ml.make_optimizer(reference, 0.5).step()
    assert float(before) == pytest.approx(w, abs=1e-6)
    assert float(grad) == pytest.approx(expected[0][0, 0], abs=2e-6)
    assert float(after) == pytest.approx(weights(reference)[0][0, 0], abs=2e-6)
    untimed = [[re.sub(r"\| \S+s", "", line) for line in lines[-len(plain):-1]]
               for lines in (plain, looked)]  # the epoch lines, less their seconds
    assert untimed[0] == untimed[1]
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("plain", "inspect"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_inspect_shows_the_notes_gradient_of_a_sum_of_squares(tmp_path, capsys):
    """Notes 二.4 by hand: for z = x.pow(2).sum(), x.grad is None before z.backward() and
    2 * x after it."""
    text = "\n".join(run_lesson(tmp_path, capsys, "--epochs", "1", "--inspect"))
    x = np.array([[1.0, 0.0], [-1.0, 1.0]])
    assert f"x = {x.tolist()}, requires_grad=True; z = x.pow(2).sum() = {(x**2).sum():g}" in text
    assert "x.grad before z.backward(): None" in text
    assert f"x.grad after z.backward(): {(2 * x).tolist()}, which is 2 * x" in text


def test_inspect_takes_any_batch_size_and_a_hand_written_network(tmp_path, capsys,
                                                                  monkeypatch):
    """--inspect finds the first Linear of any network (the hand-written forward of notes 三.3
    too), and a batch larger than the training rows is all of them."""
    monkeypatch.setattr(ml, "MLP", HandWritten)
    text = "\n".join(run_lesson(tmp_path, capsys, "--epochs", "1", "--inspect",
                                "--batch-size", "5000"))
    train = ml.CsvDataset(DATA / "train.csv", "train")
    assert f"{len(train)} calls of __getitem__" in text
    assert f"W (64, {train.x.shape[1]})" in text


def test_main_builds_the_notes_loaders_and_optimizer(tmp_path, capsys, monkeypatch):
    """The notes: DataLoader(dataset, batch_size, shuffle=True) for training only; SGD with
    the given lr and momentum 0."""
    loaders, optimizers = [], []

    class RecordingLoader(DataLoader):
        def __init__(self, dataset, batch_size, shuffle=False, **kwargs):
            super().__init__(dataset, batch_size, shuffle=shuffle, **kwargs)
            loaders.append((len(dataset), batch_size, shuffle))

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(ml, "DataLoader", RecordingLoader)
    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    run_lesson(tmp_path, capsys, "--epochs", "1", "--lr", "0.25", "--batch-size", "64")
    assert sorted(loaders) == [(1200, 64, False), (1500, 64, False), (4800, 64, True)]
    (optimizer,) = optimizers
    assert optimizer.defaults["lr"] == 0.25 and optimizer.defaults["momentum"] == 0


def test_main_in_a_notebook_takes_the_defaults(monkeypatch):
    """main() with no argument parses no flags: a notebook kernel's own argv (-f kernel.json)
    is never read as ours."""
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    seen = []

    def parse_args(argv):
        seen.append(list(argv))
        raise StopIteration  # enough: we only look at what main() parses

    monkeypatch.setattr(ml, "parse_args", parse_args)
    with pytest.raises(StopIteration):
        ml.main()
    assert seen == [[]]


# --- The lesson's edges: argparse refuses a bad flag; a run reports only what it trained ---

NO_SUCH_CUDA = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: never there


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--lr", "-1"], ["--epochs", "0"],
                                   ["--lr", "nan"], ["--device", NO_SUCH_CUDA],
                                   ["--device", "gpu"]], ids=" ".join)
def test_a_bad_flag_is_argparses_error(capsys, flags):
    """A count or a rate that must be positive, or a device this machine lacks: argparse's
    usage line and one error line that names the flag, exit 2, no traceback."""
    with pytest.raises(SystemExit) as stop:
        ml.main(flags)
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and err[0].startswith("usage: ")
    assert err[-1].startswith(f"{Path(sys.argv[0]).name}: error: argument {flags[0]}: ")


@pytest.fixture
def earlier_run(tmp_path, capsys):
    """An --out that holds an earlier run's model.pt and predictions.csv, and their bytes."""
    run_lesson(tmp_path, capsys, "--epochs", "1")
    return tmp_path, {name: (tmp_path / name).read_bytes() for name in OUTPUTS}


OUTPUTS = ("model.pt", "predictions.csv")


def stopped_line(capsys, *flags) -> str:
    """main(flags) must stop with exit 1 and one line on stderr (from sys.exit), which it
    returns."""
    with pytest.raises(SystemExit) as stop:
        ml.main(["--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert isinstance(stop.value.code, str) and err == "", "one line, through sys.exit"
    return stop.value.code


def test_a_run_with_no_finite_validation_loss_reports_nothing(earlier_run, tmp_path, capsys):
    """--lr 1e30 makes every loss NaN: one line that names the likely causes, exit 1, no
    predictions, and the earlier run's files byte for byte as they were. Into an empty
    folder: the same line, and no file."""
    out, before = earlier_run
    line = stopped_line(capsys, "--epochs", "1", "--lr", "1e30", "--out", str(out))
    assert "no epoch gave a finite validation loss" in line and "--lr" in line
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    empty = tmp_path / "empty"
    assert stopped_line(capsys, "--epochs", "1", "--lr", "1e30", "--out", str(empty)) == line
    assert not any(empty.iterdir())


def own_data(folder, x, y):
    """A data folder of the lesson's shape (train.csv, test.csv), made of x and y."""
    folder.mkdir()
    write_csv(folder / "train.csv", x, y)
    write_csv(folder / "test.csv", x[:5], y[:5])
    return str(folder)


def test_a_constant_feature_column_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    """A column whose std is 0 scales to NaN: no epoch can improve, so the run says so."""
    x, y = regression(40, 3, seed=0)
    x[:, 1] = 7.0
    monkeypatch.setattr(ml, "DATA", own_data(tmp_path / "data", x, y))
    line = stopped_line(capsys, "--epochs", "1", "--out", str(tmp_path / "out"))
    assert "feature column that never changes" in line
    assert not (tmp_path / "out" / "model.pt").exists()


def test_targets_the_sigmoid_cannot_reach_stop_before_training(tmp_path, capsys, monkeypatch):
    """Targets outside (0, 1): one line, before any epoch, naming minitorch_run.py."""
    x, y = regression(40, 3, seed=0)
    monkeypatch.setattr(ml, "DATA", own_data(tmp_path / "data", x, 100 * y))
    line = stopped_line(capsys, "--out", str(tmp_path / "out"))
    assert "outside (0, 1)" in line and "minitorch_run.py" in line
    assert not (tmp_path / "out").exists()


class Payload:
    """A pickle whose loading runs code: unpickling it calls open(marker, "w")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_the_lessons_load_never_runs_code_from_the_file(tmp_path, capsys, monkeypatch):
    """The run's save writes a pickle that would run code; the lesson's own torch.load
    (weights_only=True) refuses it, and the code never runs."""
    marker = tmp_path / "the payload ran"
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path: save(Payload(str(marker)), path))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_lesson(tmp_path / "out", capsys, "--epochs", "1")
    assert not marker.exists(), "torch.load ran the file's code"
