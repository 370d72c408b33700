"""Datasets for the two-party setting: built-in real data (offline) and users' CSV files.

In vertical federated learning the *data party* holds the features and the *label party* holds
the labels; the two are joined on a shared example id. So a user supplies two CSVs:

    features.csv  id,f1,f2,...      (every column except the id is a numeric feature)
    labels.csv    id,label,...      (only the label column is used; labels may be any text)

Each party loads only its own file (``load_features_csv`` / ``load_labels_csv``) and the two
agree on row order with ``align``; ``load_csv_pair`` does all three in one process.

Bad input raises ``DataError`` with one line naming the file, the 1-based line number in the
file (the header is line 1) and the column. Nothing is silently dropped, filled or coerced.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset file or array is malformed; the message says where and what."""


@dataclass
class Dataset:
    """X (n, d) float64 features, y (n,) int64 class ids 0..k-1, ids (n,) example ids."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    name: str = "dataset"

    def __post_init__(self):
        self.X = np.asarray(self.X, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.ids = np.asarray(self.ids)
        self.feature_names = [str(name) for name in self.feature_names]
        self.class_names = [str(name) for name in self.class_names]
        n = self.X.shape[0] if self.X.ndim == 2 else -1
        if self.X.ndim != 2:
            raise DataError(f"{self.name}: X must be 2-D, got shape {self.X.shape}")
        if self.y.shape != (n,) or self.ids.shape != (n,):
            raise DataError(f"{self.name}: X has {n} rows but y has shape {self.y.shape} "
                            f"and ids shape {self.ids.shape}")
        if len(self.feature_names) != self.X.shape[1]:
            raise DataError(f"{self.name}: {len(self.feature_names)} feature names for "
                            f"{self.X.shape[1]} columns")
        if not np.all(np.isfinite(self.X)):
            row, col = np.argwhere(~np.isfinite(self.X))[0]
            raise DataError(f"{self.name}: non-finite value in row {row}, "
                            f"column {self.feature_names[col]!r}")
        if n and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels must be class ids 0..{len(self.class_names) - 1}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.X.shape[0]


def take(dataset: Dataset, rows: np.ndarray, suffix: str) -> Dataset:
    return Dataset(dataset.X[rows], dataset.y[rows], dataset.ids[rows], list(dataset.feature_names),
                   list(dataset.class_names), f"{dataset.name}{suffix}")


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------


def _read_table(path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's 1-based line number. Blank lines are skipped; every
    other row must have as many fields as the header. ``.gz`` files are decompressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header, rows, lines = None, [], []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line, e.g. the trailing newline at the end of the file
                if header is None:
                    header = [field.strip() for field in row]
                    header_line = reader.line_num
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: expected {len(header)} fields "
                                    f"(as in the header on line {header_line}), found {len(row)}")
                rows.append([field.strip() for field in row])
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise DataError(f"{path}: cannot read as CSV ({error})") from None
    if header is None:
        raise DataError(f"{path}: file is empty (expected a header row)")
    seen: dict[str, int] = {}
    for index, name in enumerate(header):
        if not name:
            raise DataError(f"{path}, line {header_line}: header field {index + 1} is empty")
        if name in seen:
            raise DataError(f"{path}, line {header_line}: column {name!r} appears twice in the header")
        seen[name] = index
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    return header, rows, lines


def _column(header: list[str], name: str, path, role: str) -> int:
    if name not in header:
        raise DataError(f"{path}: no {role} column {name!r} in the header "
                        f"(columns: {', '.join(header)})")
    return header.index(name)


def _ids(header, rows, lines, path, id_column) -> np.ndarray:
    column = _column(header, id_column, path, "id")
    first_line: dict[str, int] = {}
    for row, line in zip(rows, lines):
        value = row[column]
        if value == "":
            raise DataError(f"{path}, line {line}, column {id_column!r}: empty cell")
        if value in first_line:
            raise DataError(f"{path}: duplicate id {value!r} on lines {first_line[value]} and {line}")
        first_line[value] = line
    return np.array([row[column] for row in rows], dtype=object)


def load_features_csv(path, id_column: str, *, exclude_columns=()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The data party's file: (ids, X (n, d) float64, feature_names).

    Every column except the id column (and any in ``exclude_columns``) is a feature and must
    hold a finite number in every row.
    """
    header, rows, lines = _read_table(path)
    ids = _ids(header, rows, lines, path, id_column)
    for name in exclude_columns:
        _column(header, name, path, "excluded")
    skip = {id_column, *exclude_columns}
    feature_columns = [index for index, name in enumerate(header) if name not in skip]
    if not feature_columns:
        raise DataError(f"{path}: no feature columns besides the id column {id_column!r}")
    X = np.empty((len(rows), len(feature_columns)), dtype=np.float64)
    for row_index, (row, line) in enumerate(zip(rows, lines)):
        for out_index, column in enumerate(feature_columns):
            text = row[column]
            where = f"{path}, line {line}, column {header[column]!r}"
            if text == "":
                raise DataError(f"{where}: empty cell")
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{where}: not a number: {text!r}") from None
            if not math.isfinite(value):
                raise DataError(f"{where}: value {text!r} is not finite")
            X[row_index, out_index] = value
    return ids, X, [header[column] for column in feature_columns]


def _label_sort_key(values: list[str]):
    try:
        numbers = {value: float(value) for value in values}
    except ValueError:
        return None
    return lambda value: numbers[value]


def load_labels_csv(path, id_column: str, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The label party's file: (ids, y (n,) int64 class ids, class_names).

    Class ids number the distinct label values in sorted order (numerically if every value is a
    number, e.g. "2" before "10", otherwise as text); ``class_names[k]`` is the text of class k.
    Other columns of the file are ignored.
    """
    header, rows, lines = _read_table(path)
    ids = _ids(header, rows, lines, path, id_column)
    column = _column(header, label_column, path, "label")
    if column == header.index(id_column):
        raise DataError(f"{path}: the id column and the label column are both {label_column!r}")
    values = []
    for row, line in zip(rows, lines):
        if row[column] == "":
            raise DataError(f"{path}, line {line}, column {label_column!r}: empty cell")
        values.append(row[column])
    distinct = sorted(set(values))
    numeric_key = _label_sort_key(distinct)
    if numeric_key is not None:
        distinct.sort(key=numeric_key)
    if len(distinct) < 2:
        raise DataError(f"{path}: label column {label_column!r} has a single class "
                        f"{distinct[0]!r}; need at least two")
    class_id = {value: index for index, value in enumerate(distinct)}
    y = np.array([class_id[value] for value in values], dtype=np.int64)
    return ids, y, distinct


def align(feature_ids, label_ids, *, allow_unmatched: bool = False,
          feature_source: str = "features file", label_source: str = "labels file"):
    """Row indices (feature_rows, label_rows) pairing equal ids, in the features file's order.

    ``feature_ids[feature_rows] == label_ids[label_rows]`` elementwise. By default every id must
    appear on both sides: an id on one side only is a DataError giving the count and the first
    few. With ``allow_unmatched=True`` the result is the inner join instead. Ids are compared
    as text, so "007" and "7" are different examples.
    """
    feature_keys = [str(value) for value in feature_ids]
    label_keys = [str(value) for value in label_ids]
    for keys, source in ((feature_keys, feature_source), (label_keys, label_source)):
        if len(set(keys)) != len(keys):
            seen = set()
            duplicate = next(key for key in keys if key in seen or seen.add(key))
            raise DataError(f"{source}: duplicate id {duplicate!r}")
    label_row = {key: row for row, key in enumerate(label_keys)}
    if not allow_unmatched:
        feature_set = set(feature_keys)
        without_label = [key for key in feature_keys if key not in label_row]
        without_features = [key for key in label_keys if key not in feature_set]
        for missing, here, there, lacking in (
                (without_label, feature_source, label_source, "a label"),
                (without_features, label_source, feature_source, "features")):
            if missing:
                shown = ", ".join(repr(key) for key in missing[:5])
                more = ", ..." if len(missing) > 5 else ""
                raise DataError(f"{len(missing)} id(s) in the {here} have no {lacking} in the "
                                f"{there}: {shown}{more}")
    pairs = [(row, label_row[key]) for row, key in enumerate(feature_keys) if key in label_row]
    if not pairs:
        raise DataError(f"no id is shared by the {feature_source} and the {label_source}")
    feature_rows = np.array([pair[0] for pair in pairs], dtype=np.int64)
    label_rows = np.array([pair[1] for pair in pairs], dtype=np.int64)
    return feature_rows, label_rows


def load_csv_pair(features_csv, labels_csv, *, id_column: str, label_column: str,
                  allow_unmatched: bool = False) -> Dataset:
    """Load the data party's and the label party's CSVs and join them on ``id_column``.

    Rows come out in the features file's order. The features file must not contain the label
    column (it would leak the labels into the data party's inputs).
    """
    feature_ids, X, feature_names = load_features_csv(features_csv, id_column)
    if label_column in feature_names:
        raise DataError(f"{features_csv}: contains the label column {label_column!r}; remove it "
                        f"(the data party must not hold the labels)")
    label_ids, y, class_names = load_labels_csv(labels_csv, id_column, label_column)
    feature_rows, label_rows = align(feature_ids, label_ids, allow_unmatched=allow_unmatched,
                                     feature_source=f"features file {features_csv}",
                                     label_source=f"labels file {labels_csv}")
    y = y[label_rows]
    if len(np.unique(y)) < 2:
        raise DataError(f"{labels_csv}: after joining on {id_column!r} only one class remains")
    return Dataset(X[feature_rows], y, feature_ids[feature_rows], feature_names, class_names,
                   name=Path(features_csv).stem)


# --------------------------------------------------------------------------------------------
# Built-in datasets (all offline: dmba and scikit-learn ship the files)
# --------------------------------------------------------------------------------------------

BUILTIN_DATASETS = ("german_credit", "universal_bank", "breast_cancer", "digits", "wine")

# file, id column, label column, dropped columns, names of class 0 and class 1
_DMBA_TABLES = {
    "german_credit": ("GermanCredit.csv.gz", "OBS#", "RESPONSE", (), ["bad", "good"]),
    "universal_bank": ("UniversalBank.csv.gz", "ID", "Personal Loan", ("ZIP Code",),
                       ["no loan", "loan"]),
}


def _dmba_csv_dir() -> Path:
    # Locate the package without importing it: importing dmba pulls in matplotlib and prints.
    spec = importlib.util.find_spec("dmba")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'dmba' package is not installed (pip install dmba); it ships the "
                        "German credit and UniversalBank CSVs")
    return Path(list(spec.submodule_search_locations)[0]) / "csvFiles"


def _load_dmba(name: str) -> Dataset:
    filename, id_column, label_column, dropped, class_names = _DMBA_TABLES[name]
    path = _dmba_csv_dir() / filename
    ids, X, feature_names = load_features_csv(path, id_column,
                                              exclude_columns=(label_column, *dropped))
    label_ids, y, label_values = load_labels_csv(path, id_column, label_column)
    if label_values != ["0", "1"]:
        raise DataError(f"{path}: expected 0/1 labels in {label_column!r}, found {label_values}")
    return Dataset(X, y, ids.astype(np.int64), feature_names, class_names, name=name)


def _load_sklearn(name: str) -> Dataset:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    n, d = bunch.data.shape
    names = getattr(bunch, "feature_names", None)
    feature_names = [str(f) for f in names] if names is not None else [f"x{j}" for j in range(d)]
    return Dataset(bunch.data, bunch.target, np.arange(n), feature_names,
                   [str(c) for c in bunch.target_names], name=name)


def load_builtin(name: str) -> Dataset:
    """One of ``BUILTIN_DATASETS``, read from files installed with dmba / scikit-learn."""
    if name in _DMBA_TABLES:
        return _load_dmba(name)
    if name in BUILTIN_DATASETS:
        return _load_sklearn(name)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(BUILTIN_DATASETS)}")


# --------------------------------------------------------------------------------------------
# Splitting and scaling
# --------------------------------------------------------------------------------------------


def train_test_split(dataset: Dataset, *, test_fraction: float = 0.2, seed: int = 0):
    """Seeded stratified split -> (train, test).

    Each class contributes round(test_fraction * its count) examples to the test set (chosen by
    ``np.random.default_rng(seed)``), so class proportions match in both parts. Rows keep their
    original relative order within each part.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(dataset.y), dtype=bool)
    for label in range(dataset.n_classes):
        members = np.flatnonzero(dataset.y == label)
        n_test = int(round(test_fraction * len(members)))
        is_test[rng.permutation(members)[:n_test]] = True
    if is_test.all() or not is_test.any():
        raise DataError(f"{dataset.name}: {len(dataset.y)} rows are too few to split with "
                        f"test_fraction={test_fraction}")
    return take(dataset, np.flatnonzero(~is_test), "[train]"), take(dataset, np.flatnonzero(is_test), "[test]")


class Standardizer:
    """x -> (x - mean) / std per column, with mean and std fitted on the training split only
    (fitting on test data would leak it). A constant column gets std 1, so it maps to 0
    instead of dividing by zero."""

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, X) -> "Standardizer":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"fit needs a non-empty 2-D array, got shape {X.shape}")
        self.mean = X.mean(axis=0)
        # Test constancy exactly (max == min): a constant column's computed std can be a
        # rounding-sized positive number, which would blow rounding noise up to O(1) values.
        constant = X.max(axis=0) == X.min(axis=0)
        self.std = np.where(constant, 1.0, X.std(axis=0))
        return self

    def transform(self, X) -> np.ndarray:
        if self.mean is None:
            raise ValueError("Standardizer.transform called before fit")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected an array with {self.mean.shape[0]} columns, got shape {X.shape}")
        return (X - self.mean) / self.std


# --------------------------------------------------------------------------------------------
# The two-party CSV setting: both parties align and split from public facts alone
# --------------------------------------------------------------------------------------------
def common_rows(own_ids, other_ids) -> tuple[list[str], np.ndarray]:
    """(the ids both parties hold, sorted as text; the rows of ``own_ids`` holding them, in
    that order). Each party computes it alone once the ids are exchanged, so that row i at the
    data party and row i at the label party are the same example."""
    keys = [str(value) for value in own_ids]
    if len(set(keys)) != len(keys):
        seen = set()
        duplicate = next(key for key in keys if key in seen or seen.add(key))
        raise DataError(f"duplicate id {duplicate!r}; each row needs its own id")
    common = sorted(set(keys) & {str(value) for value in other_ids})
    position = {key: row for row, key in enumerate(keys)}
    return common, np.array([position[key] for key in common], dtype=np.int64)


def check_split(test_fraction, seed) -> None:
    """The public split parameters: a fraction in [0, 1) and a non-negative integer seed."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of n aligned rows: a seeded permutation, NOT stratified.

    Both parties compute it alone from public (n, test_fraction, seed). A stratified split would
    need the labels, which the data party must not see.
    """
    check_split(test_fraction, seed)
    n_test = int(round(test_fraction * n))
    if n - n_test < 1:
        raise DataError(f"{n} aligned rows are too few to split with test fraction "
                        f"{test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
