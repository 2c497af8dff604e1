"""Reading a CSV: numbers, or one line that says where the file breaks; and the Dataset the
tool trains on, whose rows are fetched a whole batch at a time (see speed.py)."""

import csv
import io
import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from minitorch_tool.errors import InputError, quoted, shown
from minitorch_tool.scaling import FLOAT32_MAX, Scaling


class Table(NamedTuple):
    features: np.ndarray  # (N, C) float64: every feature column of the file
    target: np.ndarray | None  # (N, 1) float64, or None: a test file may leave it out
    ids: list[str] | range  # (N,): the cells of an `id` column, as written, or 0 .. N-1
    feature_names: list[str]
    target_name: str  # the header of the target column
    path: str


def read_table(path, stats=None, valid_ratio=0.0) -> Table:
    """A training CSV (stats=None: features, then the target), or a file read with a training
    file's `stats` (the same feature columns, the target optional). A first column named id
    (any case) holds row ids: kept as text, never a feature. A training file must leave rows
    to train on after valid_ratio."""
    header, table, ids = read_csv(path)
    n_rows, n_columns = table.shape
    names = stats and stats.feature_names  # None for a Scaling built by hand
    n_features = n_columns - 1 if stats is None else len(names or stats.mean)
    if n_features < 1:
        raise InputError(f"{path}: no feature columns; it needs features, then the target last")
    if n_columns not in (n_features, n_features + 1):
        raise InputError(f"{path}: {n_columns} columns; expected the training file's "
                         f"{n_features} features, with the target after them or without")
    if names and header[:n_features] != names:  # a shifted column would train on nonsense
        j = next(j for j, (a, b) in enumerate(zip(header, names, strict=False)) if a != b)
        raise InputError(f"{path}: column {j + 1 + (ids is not None)} is {quoted(header[j])}; "
                         f"the training file's is {quoted(names[j])}: it needs the same feature "
                         "columns")
    n_valid = round(valid_ratio * n_rows)  # as CsvDataset splits
    if stats is None and (n_rows - n_valid < 2 or (valid_ratio > 0 and n_valid == 0)):
        raise InputError(f"{path}: {n_rows} rows are too few to hold out {valid_ratio:g} "
                         f"of them for validation and train on at least 2")
    target = table[:, n_features:] if n_columns > n_features else None
    ids = ids if ids is not None else range(n_rows)  # written as 0 .. N-1
    return Table(table[:, :n_features], target, ids, header[:n_features], header[-1], path)


def read_csv(path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """A CSV with a header row -> (column names, (N, C) float64 table of its numbers, and the
    cells of an id column as text, or None), read once (a pipe, as in --train <(...), cannot
    be read twice). Every number must fit float32, the model's dtype."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # utf-8-sig: drop a BOM
            first_line = file.readline(LONGEST_HEADER)  # before all of it: /dev/zero never ends
            check_first_line(path, first_line)
            f = file
            if not file.seekable():  # a pipe: read once, into memory; newline="": \r ends a
                f = io.StringIO(first_line + file.read(), newline="")  # line, as from a disk
                f.seek(len(first_line))
            header = next(csv.reader([first_line]), None) if first_line else None
            check_header(path, header)
            first = int(has_ids(header))  # 1: column 0 holds ids, which need not be numbers
            table = numbers_after_the_header(f, first)
            if table is not None and len(table) == 0:
                raise InputError(f"{path}: a header but no data rows")
            if table is None or table.shape[1] != len(header):
                raise InputError(f"{path}: {first_bad_cell(f, header, first)}")
            bad = np.argwhere(~(np.abs(table[:, first:]) <= FLOAT32_MAX))  # NaN, inf, too large
            if len(bad):
                raise InputError(f"{path}: {first_bad_cell(f, header, first, *bad[0])}")
            ids = first_cells(f) if first else None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {not_utf8(e.object)}") from None
    except csv.Error as e:  # NUL bytes, a cell of over 131072 characters
        raise InputError(f"{path}: not a table of numbers ({e})") from None
    return header[first:], table[:, first:], ids


LONGEST_HEADER = 1 << 20  # characters: a first line longer than this names no columns


def check_first_line(path, line):
    """Refuse what cannot be a CSV from its first line, before reading the rest."""
    if "\x00" in line:
        raise InputError(f"{path}: not a text file (it holds NUL bytes: binary data, or UTF-16 "
                         "text without a byte order mark?)")
    if len(line) == LONGEST_HEADER and not line.endswith(("\n", "\r")):
        raise InputError(f"{path}: line 1 is over {LONGEST_HEADER} characters long: not a row "
                         "of column names")


def not_utf8(raw) -> str:
    """Why bytes that start with `raw` do not read as UTF-8, for a message."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # the byte order marks of UTF-16
        return "UTF-16 text; save it as UTF-8 (a spreadsheet's \"CSV UTF-8\")"
    if b"\x00" in raw:
        return "not a text file (binary data?)"
    return "not UTF-8 text (Latin-1, or another encoding?); save it as UTF-8"


def numbers_after_the_header(f, first) -> np.ndarray | None:
    """The rest of `f` as an (N, C) table, parsed by numpy (C code), or None if it is not one;
    with first=1 column 0 (ids) is read as 0."""
    ids = {0: lambda cell: 0.0} if first else None
    try:
        with warnings.catch_warnings(action="ignore"):  # numpy warns on a header-only file
            return np.loadtxt(f, delimiter=",", quotechar='"', ndmin=2, comments=None,
                              converters=ids)
    except ValueError:  # not a number somewhere: first_bad_cell finds it
        return None


def first_cells(f) -> list[str]:
    """The first cell of each data row of `f`, as written (blank lines skipped, as by numpy)."""
    f.seek(0)
    rows = csv.reader(f)
    next(rows)
    return [cells[0] for cells in rows if cells]


def check_header(path, header):
    if header is None:
        raise InputError(f"{path}: the file is empty")
    if not any(header):
        raise InputError(f"{path}: line 1 is blank; the first line must name the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise InputError(f"{path}: line 1 has no commas; columns must be comma-separated")
    if all(is_number(name) for name in header):
        raise InputError(f"{path}: line 1 holds numbers; the first line must name the columns")


def has_ids(header) -> bool:
    return header[0].strip().lower() == "id"


def is_number(text) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def first_bad_cell(f, header, first=0, row=None, column=None) -> str:
    """Where the table in `f` breaks: a row of the wrong width, a cell that is not a number
    (from column `first` on), or the cell at (`row`, `column`), too large for float32."""
    f.seek(0)
    reader = csv.reader(f)
    next(reader)
    for i, cells in enumerate(filter(None, reader)):  # blank lines are skipped, as by numpy
        where = f"line {reader.line_num}"
        if len(cells) != len(header):
            return f"{where} has {len(cells)} columns; the header, {len(header)}"
        bad = [j for j, cell in enumerate(cells) if j >= first and not is_number(cell)]
        if bad or i == row:
            j = bad[0] if bad else first + column
            problem = "is not a finite number" if bad else "is too large for float32"
            return f"{where}, column {j + 1} ({shown(header[j])}): {quoted(cells[j])} {problem}"
    return "not a table of numbers"  # what numpy refuses and float() takes, as 1_000



class TableDataset(Dataset):
    """A checked CSV as a Dataset: the lesson's CsvDataset for real files. A training file
    (stats=None) holds out valid_ratio of its rows for validation, drawn by `seed`; every file
    is scaled with the training rows' Scaling, features and target alike. __getitem__ takes a
    row index or a tensor of them: the batched loader (speed.py) asks for B rows at once."""

    def __init__(self, path, stats=None, valid_ratio=0.0, seed=0):
        table = read_table(path, stats, valid_ratio)  # numbers, checked; ids apart
        features = torch.from_numpy(table.features)  # (N, F) float64: all feature columns
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        n_valid = round(valid_ratio * len(features))
        self.valid_rows, self.train_rows = order[:n_valid], order[n_valid:]
        self.stats = Scaling.fit(features, table, self.train_rows) if stats is None else stats
        # x' = (x - mean) / std in float64, then float32 like the weights (dtypes must agree)
        self.x = torch.sub(features, self.stats.mean).div_(self.stats.std).float()  # (N, F)
        # y' = (y - target_low) / target_span, inside the Sigmoid's (0, 1): see Scaling
        self.y = None if table.target is None else self.stats.scaled(table.target)  # (N, 1)
        self.ids = table.ids  # (N,): the id column, or 0 .. N-1
        self.path = path

    def __getitem__(self, i):  # row i: x (F,), y (1,); B rows at once: (B, F), (B, 1)
        return (self.x[i],) if self.y is None else (self.x[i], self.y[i])

    def __len__(self):
        return len(self.x)
