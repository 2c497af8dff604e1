"""CSVs: a file read as numbers, or one line that says where it breaks; and TableDataset."""

import csv
import io
import math
import warnings

import numpy as np
import torch

import minitorch_loop as ml
from minitorch_tool.errors import InputError, quoted, shown
from minitorch_tool.scaling import FLOAT32_MAX, Scaling

LONGEST_HEADER = 1 << 20  # characters: a first line longer than this names no columns


def count_features(path, header, stats) -> int:
    """A training file's columns but the last; another file's, the training file's, by name."""
    names = stats and stats.feature_names  # None for a Scaling made by hand
    n_features = len(header) - 1 if stats is None else len(names or stats.mean)
    if n_features < 1:
        raise InputError(f"{path}: no feature columns; it needs features, then the target last")
    if len(header) not in (n_features, n_features + 1):
        raise InputError(f"{path}: {len(header)} columns; expected the training file's "
                         f"{n_features} features, with the target after them or without")
    if names and header[:n_features] != names:  # a shifted column would train on nonsense
        j = next(j for j, (a, b) in enumerate(zip(header, names, strict=False)) if a != b)
        raise InputError(f"{path}: feature column {j + 1} is {quoted(header[j])}; the training "
                         f"file's is {quoted(names[j])}: it needs the same feature columns")
    return n_features


def read_csv(path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """(column names, (N, C) float64 that fits float32, ids or None), read once (a pipe)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # utf-8-sig: drop a BOM
            first_line = file.readline(LONGEST_HEADER)  # not all of it: /dev/zero never ends
            header = column_names(path, first_line)
            if not file.seekable():  # a pipe cannot seek: read it once, into memory
                file = io.StringIO(first_line + file.read(), newline="")  # a lone \r ends a line
                file.seek(len(first_line))
            ids = [] if header[0].strip().lower() == "id" else None  # column 0's cells, as text
            table, first = numbers_after_the_header(file, ids), int(ids is not None)
            if table is not None and len(table) == 0:
                raise InputError(f"{path}: a header but no data rows")
            if table is None or table.shape[1] != len(header) or not (
                    np.abs(table[:, first:]) <= FLOAT32_MAX).all():  # NaN, inf, too large
                raise InputError(f"{path}: {first_bad_cell(file, header, first)}")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # UTF-16 begins with a byte order mark; binary data has NULs
        why = ("UTF-16 text" if e.object[:2] in (b"\xff\xfe", b"\xfe\xff") else
               "not a text file" if b"\x00" in e.object else "not UTF-8 text (Latin-1?)")
        raise InputError(f"{path}: {why}; save it as UTF-8 (a spreadsheet's CSV UTF-8)") from None
    except csv.Error as e:  # NUL bytes, a cell of over 131072 characters
        raise InputError(f"{path}: not a table of numbers ({e})") from None
    return header[first:], table[:, first:], ids


def column_names(path, line) -> list[str]:
    """Line 1 as the column names, or one line that says why it is none."""
    if "\x00" in line:
        raise InputError(f"{path}: not a text file (NUL bytes: binary, or UTF-16 with no BOM?)")
    if len(line) == LONGEST_HEADER and not line.endswith(("\n", "\r")):
        raise InputError(f"{path}: line 1 is over {LONGEST_HEADER} characters long: no header")
    header = next(csv.reader([line]), None) if line else None
    if header is None:
        raise InputError(f"{path}: the file is empty")
    if not "".join(header).strip():
        raise InputError(f"{path}: line 1 is blank; the first line must name the columns")
    if line.count('"') % 2:  # csv would read the next lines into one cell
        raise InputError(f"{path}: line 1 has an unclosed quote (\"); it must name the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise InputError(f"{path}: line 1 has no commas; columns must be comma-separated")
    if all(size(name) < math.inf for name in header):
        raise InputError(f"{path}: line 1 holds numbers; the first line must name the columns")
    return header


def numbers_after_the_header(f, ids) -> np.ndarray | None:
    """The rest of `f` as an (N, C) table, or None; a list `ids` takes column 0 as written."""
    keep = None if ids is None else {0: lambda cell: ids.append(cell) or 0.0}
    try:
        with warnings.catch_warnings(action="ignore"):  # numpy warns on a header-only file
            return np.loadtxt(f, delimiter=",", quotechar='"', ndmin=2, comments=None,
                              converters=keep)
    except ValueError:  # not a number somewhere: first_bad_cell finds it
        return None


def size(text) -> float:  # abs(the number in `text`), or NaN: not a number
    try:
        return abs(float(text))
    except ValueError:
        return math.nan


def first_bad_cell(f, header, first) -> str:
    """Where the table breaks: a row's width, or a cell that is no finite float32."""
    f.seek(0)
    reader = csv.reader(f)
    next(reader)
    for cells in filter(None, reader):  # blank lines are skipped, as by numpy
        where = f"line {reader.line_num}"
        if len(cells) != len(header):
            return f"{where} has {len(cells)} columns; the header, {len(header)}"
        for j, cell in enumerate(cells[first:], first):
            if not size(cell) <= FLOAT32_MAX:
                problem = ("is too large for float32" if size(cell) < math.inf else
                           "is not a finite number")
                return f"{where}, column {j + 1} ({shown(header[j])}): {quoted(cell)} {problem}"
    return "not a table of numbers"  # what numpy refuses and float() takes, as 1_000


class TableDataset(ml.CsvDataset):
    """A checked CSV as the lesson's CsvDataset, scaled by the training rows' Scaling."""

    def __init__(self, path, stats=None, valid_ratio=0.0, seed=0):
        header, table, ids = read_csv(path)  # numbers, checked; the ids apart
        n_features = count_features(path, header, stats)
        rows = ml.split_rows(len(table), valid_ratio, seed)
        self.train_rows, self.valid_rows = rows["train"], rows["valid"]
        if stats is None and (len(self.train_rows) < 2 or valid_ratio and not len(self.valid_rows)):
            raise InputError(f"{path}: {len(table)} rows are too few to hold out {valid_ratio:g} "
                             "of them for validation and train on at least 2")
        self.unscored = "the test CSV has no target column" if len(header) == n_features else None
        if not self.unscored and stats and stats.feature_names and header[-1] != stats.target_name:
            self.unscored = (f"its last column, {quoted(header[-1])}, is not the target "
                             f"{quoted(stats.target_name)}")
        features = torch.from_numpy(table[:, :n_features])  # (N, F) float64
        target = None if self.unscored else table[:, n_features:]  # (N, 1) float64, or None
        self.stats = stats or Scaling.fit(features[self.train_rows],
                                          target[self.train_rows], header, path)
        # x' = (x - mean) / std in float64, then float32 like the weights (dtypes must agree)
        self.x = torch.sub(features, self.stats.mean).div_(self.stats.std).float()  # (N, F)
        # y' = (y - target_low) / target_span, inside the Sigmoid's (0, 1): see Scaling
        self.y = None if target is None else self.stats.scaled(target)  # (N, 1)
        self.ids = ids if ids is not None else range(len(table))  # as written, or 0 .. N-1
        for name, values in (("feature", self.x), ("target", self.y)):  # float32 overflows
            bad = [] if values is None else (~torch.isfinite(values)).nonzero() + 1  # 1-based
            if len(bad):  # a row far from the training rows (1e36 where their std is 0.001)
                raise InputError(f"{path}: data row {int(bad[0, 0])}, {name} {int(bad[0, 1])}: "
                                 "too far from the training rows' values; scaled, it overflows")
