"""Datasets for the two-party setting: built-in real data (offline) and users' CSV files.

In vertical federated learning the *data party* holds the features and the *label party* holds
the labels; the two are joined on a shared example id. So a user supplies two CSVs:

    features.csv  id,f1,f2,...      (every column except the id is a numeric feature)
    labels.csv    id,label,...      (only the label column is used; labels may be any text)

Each party loads only its own file (``load_features_csv`` / ``load_labels_csv``) and the two
agree on row order with ``pair_rows_by_id``; ``load_csv_pair`` does all three in one process.

Bad input raises ``DataError`` with one line naming the file, the 1-based line number in the
file (the header is line 1) and the column. Nothing is silently dropped, filled or coerced.

What is refused, and why (each has a test in tests/jobs/test_data.py):

* files: missing, not UTF-8 / not gzip, empty, header only, a duplicate or empty header name,
  a row with more or fewer fields than the header, a header that looks ``;``- or tab-separated;
* ids: an empty id, the same id twice (ids are text: "007" and "7" differ);
* features: an empty cell, text that is not a plain decimal number (``1_000`` and non-ASCII
  digits, which Python's ``float`` would accept, are refused too), NaN/inf, and any
  ``|value| > FEATURE_LIMIT`` (1e15, see there);
* labels: an empty cell, NaN/inf, a missing-value marker (``NA``, ``N/A``, ``null``, ``?``),
  numbers mixed with text in one column, two texts differing only in letter case, a single
  class, more than ``max_classes`` classes (a continuous column given as the label).

Labels are compared by value: if every label is a number, "1", "1.0", "+1" and "1e0" are one
class (named "1"); otherwise labels are text compared exactly (after trimming spaces).
A UTF-8 byte-order mark at the start of a file is ignored; blank lines are skipped.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import nn


class DataError(ValueError):
    """A dataset file or array is malformed; the message says where and what."""


# The largest feature magnitude accepted anywhere in this module (CSV loaders, Dataset,
# Standardizer). Real features (money, counts, measurements) are far smaller; a value beyond it
# is almost always a unit or parsing error (an id, a timestamp in nanoseconds, 1e300 typed for
# "huge"). Below it, standardising is exact enough and cannot overflow: squares stay below 1e30,
# so a column's sum of squared deviations is finite for any row count float64 can index, and
# integers up to 1e15 < 2**53 are still exact in float64.
FEATURE_LIMIT = 1e15

# A plain decimal number: optional sign, digits with an optional point, optional exponent.
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)

# Label cells that mean "missing" in common exports (R, pandas, SQL, spreadsheets); compared
# without letter case. A float-parsable NaN or inf is refused as well.
MISSING_LABEL_MARKERS = ("na", "n/a", "nan", "null", "?")


def describe_classes(class_names, counts=None) -> str:
    """One report line for a label set: ``"2 classes: 0, 1"``; with ``counts`` (examples per
    class, in class order) ``"2 classes: bad (300), good (700)"``. More than 12 classes are
    shown as the first 12 and "...". The caller adds what it will train ("— training softmax")."""
    names = [str(name) for name in class_names]
    if counts is not None:
        counts = [int(count) for count in counts]
        if len(counts) != len(names):
            raise ValueError(f"{len(counts)} counts for {len(names)} classes")
        names = [f"{name} ({count})" for name, count in zip(names, counts)]
    shown = names if len(names) <= 12 else names[:12] + ["..."]
    word = "class" if len(names) == 1 else "classes"
    return f"{len(names)} {word}: {', '.join(shown)}"


def _feature_bound_error(value: float) -> str | None:
    """Why a parsed feature value is refused, or None if it is fine."""
    if not math.isfinite(value):
        return "is not finite"
    if abs(value) > FEATURE_LIMIT:
        return (f"has magnitude above the supported limit {FEATURE_LIMIT:g} "
                f"(data.FEATURE_LIMIT; rescale the column, e.g. to thousands)")
    return None


def _first_bad_feature(X: np.ndarray):
    """(row, column, reason) of the first value that is not finite or beyond FEATURE_LIMIT."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(X) | (np.abs(X) > FEATURE_LIMIT)
    if not bad.any():
        return None
    row, col = (int(i) for i in np.argwhere(bad)[0])
    return row, col, _feature_bound_error(float(X[row, col]))


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
        self.y = _as_class_ids(self.y, self.name)
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
        bad = _first_bad_feature(self.X)
        if bad is not None:
            row, col, reason = bad
            kind = "non-finite value" if reason == "is not finite" else "value"
            row_id = self.ids.tolist()[row]  # a plain Python value, for a readable message
            raise DataError(f"{self.name}: {kind} {float(self.X[row, col])!r} in row {row} "
                            f"(id {row_id!r}), column {self.feature_names[col]!r} {reason}")
        if n and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels must be class ids 0..{len(self.class_names) - 1}")
        if len(set(self.class_names)) != len(self.class_names):
            duplicate = next(c for i, c in enumerate(self.class_names) if c in self.class_names[:i])
            raise DataError(f"{self.name}: class name {duplicate!r} appears twice in class_names")
        seen_ids: dict = {}
        for row, key in enumerate(self.ids.tolist()):  # tolist: plain Python values
            if key in seen_ids:
                raise DataError(f"{self.name}: duplicate id {key!r} in rows {seen_ids[key]} and {row}")
            seen_ids[key] = row

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.X.shape[0]


def _as_class_ids(y, name: str) -> np.ndarray:
    """y as int64 class ids; a float array must hold whole finite numbers (0.5 is not
    truncated to 0, NaN is not cast to a garbage integer)."""
    y = np.asarray(y)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: label {float(y[row])!r} in row {row} is not a whole-number class id")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{name}: labels must be integer class ids 0..k-1, got dtype {y.dtype} "
                        "(text labels: use load_labels_csv, which numbers them)")
    return y.astype(np.int64)


def take(dataset: Dataset, rows: np.ndarray, suffix: str) -> Dataset:
    return Dataset(dataset.X[rows], dataset.y[rows], dataset.ids[rows], list(dataset.feature_names),
                   list(dataset.class_names), f"{dataset.name}{suffix}")


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------


def not_a_regular_file(path) -> str | None:
    """What ``path`` is when it exists but is not a regular file, or None. Only regular files
    are read: opening a named pipe (FIFO) blocks until a writer comes, maybe forever, and a
    device or a directory is no table. os.stat opens nothing, so asking never blocks; a path
    that cannot be stat-ed is left to the open that follows, which says why."""
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"is {kind}, not a regular file"


def _read_table(path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's 1-based line number. Blank lines are skipped; every
    other row must have as many fields as the header. ``.gz`` files are decompressed; a
    truncated or corrupt one is a one-line DataError. Only regular files are opened
    (not_a_regular_file)."""
    path = Path(path)
    problem = not_a_regular_file(path)
    if problem:
        raise DataError(f"{path}: {problem}")
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
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # a cut or corrupt .gz
        raise DataError(f"{path}: cannot read as CSV: not a whole gzip file ({error})") from None
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
        hint = ""
        if len(header) == 1:
            for separator, word in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
                if separator in header[0]:
                    hint = f"; the header is one field holding {word}: save the file comma-separated"
                    break
        raise DataError(f"{path}: no {role} column {name!r} in the header "
                        f"(columns: {', '.join(header)}){hint}")
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


def parse_feature(text: str, path, line: int, column: str, row_id) -> float:
    """One feature cell as a float: a plain decimal number, finite, |value| <= FEATURE_LIMIT;
    otherwise a one-line DataError naming the file, line, id and column."""
    where = f"{path}, line {line} (id {row_id!r}), column {column!r}"
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: not a number: {text!r}") from None
    reason = _feature_bound_error(value)
    if reason is not None:
        raise DataError(f"{where}: value {text!r} {reason}")
    if not _DECIMAL.fullmatch(text):  # float() also takes "1_000" and non-ASCII digits
        raise DataError(f"{where}: not a plain decimal number: {text!r}")
    return value


def read_id_table(path, id_column: str) -> tuple[np.ndarray, list[str], list[list[str]], list[int]]:
    """(ids, header, rows of text cells, 1-based line of each row) of a CSV keyed by
    ``id_column``: the file and id checks of every loader here, the cells left as text (for
    jobs/preparation.py, which decides per column what its text means)."""
    header, rows, lines = _read_table(path)
    return _ids(header, rows, lines, path, id_column), header, rows, lines


def load_features_csv(path, id_column: str, *, exclude_columns=()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The data party's file: (ids, X (n, d) float64, feature_names).

    Every column except the id column (and any in ``exclude_columns``) is a feature and must
    hold a plain decimal number in every row, finite and with |value| <= FEATURE_LIMIT (1e15).
    An error names the file, the line, the row's id, the column and the text of the value.
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
            if text == "":
                raise DataError(f"{path}, line {line}, column {header[column]!r}: empty cell")
            X[row_index, out_index] = parse_feature(text, path, line, header[column], ids[row_index])
    return ids, X, [header[column] for column in feature_columns]


def _label_number(text: str):
    """The label's numeric value (int when whole, so 1 == 1.0 as dict keys), or None for text."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    if math.isinf(value):
        return None  # an overflowing exponent such as 1e999; refused by the caller
    if value == int(value):
        # exact for integer texts of any length; "1.0", "1e0" and "-0" land on the same int
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else int(value)
    return value


def load_labels_csv(path, id_column: str, label_column: str, *,
                    max_classes: int = 100) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The label party's file: (ids, y (n,) int64 class ids, class_names).

    Labels are compared by value. If every label is a number, labels with the same numeric
    value are one class ("1", "1.0", "+1", "1e0"), named by the value ("1", or "0.5" for a
    fraction), and class ids follow numeric order ("2" before "10"). Otherwise every label is
    text, compared exactly, and class ids follow sorted text order. ``class_names[k]`` names
    class k (``describe_classes(class_names)`` gives a report line). Refused, each naming the
    line, id and column: an empty cell, NaN/inf, a missing-value marker (MISSING_LABEL_MARKERS),
    numbers mixed with text, two texts differing only in letter case, and then a single class
    or more than ``max_classes`` classes (a continuous column given as the label).
    Other columns of the file are ignored.
    """
    header, rows, lines = _read_table(path)
    ids = _ids(header, rows, lines, path, id_column)
    column = _column(header, label_column, path, "label")
    if column == header.index(id_column):
        raise DataError(f"{path}: the id column and the label column are both {label_column!r}")
    values, numbers = [], []
    first_number = first_text = None  # (line, id, text) of the first numeric / textual label
    for row_id, row, line in zip(ids, rows, lines):
        text = row[column]
        where = f"{path}, line {line} (id {row_id!r}), column {label_column!r}"
        if text == "":
            raise DataError(f"{where}: empty cell")
        bare = text.lower().lstrip("+-")
        if bare in MISSING_LABEL_MARKERS or bare in ("inf", "infinity"):
            raise DataError(f"{where}: label {text!r} is a missing or non-finite value; "
                            f"give every row a class or remove the row")
        number = _label_number(text)
        if number is None and _DECIMAL.fullmatch(text):
            raise DataError(f"{where}: label {text!r} is not a finite number")
        if number is None:
            first_text = first_text or (line, row_id, text)
        else:
            first_number = first_number or (line, row_id, text)
        values.append(text)
        numbers.append(number)
    if first_number and first_text:
        raise DataError(f"{path}, column {label_column!r}: labels mix numbers ({first_number[2]!r} "
                        f"on line {first_number[0]}) and text ({first_text[2]!r} on line "
                        f"{first_text[0]}); use one kind for every row")
    if first_number:
        keys = numbers
        distinct = sorted(set(keys))
        class_names = [str(key) if isinstance(key, int) else repr(key) for key in distinct]
    else:
        keys = values
        distinct = sorted(set(keys))
        by_case: dict[str, str] = {}
        for value in distinct:
            other = by_case.setdefault(value.casefold(), value)
            if other != value:
                raise DataError(f"{path}, column {label_column!r}: labels {other!r} and {value!r} "
                                f"differ only in letter case; make them the same class or rename one")
        class_names = list(distinct)
    if len(distinct) < 2:
        raise DataError(f"{path}: label column {label_column!r} has a single class "
                        f"{class_names[0]!r}; need at least two")
    if len(distinct) > max_classes:
        raise DataError(f"{path}: label column {label_column!r} has {len(distinct)} distinct "
                        f"values in {len(rows)} rows, more than max_classes={max_classes}; is it "
                        f"a class label (not a continuous value or an id)?")
    class_id = {key: index for index, key in enumerate(distinct)}
    y = np.array([class_id[key] for key in keys], dtype=np.int64)
    return ids, y, class_names


def _first_duplicate(keys):
    """The first id (text) that occurs a second time in ``keys``, in order; None if none does."""
    seen = set()
    return next((key for key in keys if key in seen or seen.add(key)), None)


def pair_rows_by_id(feature_ids, label_ids, *, allow_unmatched: bool = False,
                    feature_source: str = "features file", label_source: str = "labels file",
                    unmatched_hint: str = ""):
    """Row indices (feature_rows, label_rows) pairing equal ids, in the features file's order:
    both id lists in one process, in the clear (load_csv_pair; two processes align their ids
    over the wire instead, network/alignment.py).

    ``feature_ids[feature_rows] == label_ids[label_rows]`` elementwise. By default every id must
    appear on both sides: an id on one side only is a DataError giving the count and the first
    few, then ``unmatched_hint`` (e.g. the option that keeps the common ids). With
    ``allow_unmatched=True`` the result is the inner join instead. Ids are compared as text,
    so "007" and "7" are different examples.
    """
    feature_keys = [str(value) for value in feature_ids]
    label_keys = [str(value) for value in label_ids]
    for keys, source in ((feature_keys, feature_source), (label_keys, label_source)):
        duplicate = _first_duplicate(keys)
        if duplicate is not None:
            raise DataError(f"{source}: duplicate id {duplicate!r}")
    label_row = {key: row for row, key in enumerate(label_keys)}
    if not allow_unmatched:
        feature_set = set(feature_keys)
        without_label = [key for key in feature_keys if key not in label_row]
        without_features = [key for key in label_keys if key not in feature_set]
        for missing, here, there, lacking in (
                (without_label, feature_source, label_source, "label"),
                (without_features, label_source, feature_source, "features")):
            if missing:
                shown = ", ".join(repr(key) for key in missing[:5])
                more = ", ..." if len(missing) > 5 else ""
                raise DataError(f"{len(missing)} id(s) in the {here} have no {lacking} in the "
                                f"{there}: {shown}{more}{unmatched_hint}")
    pairs = [(row, label_row[key]) for row, key in enumerate(feature_keys) if key in label_row]
    if not pairs:
        raise DataError(f"no id is shared by the {feature_source} and the {label_source}")
    feature_rows = np.array([pair[0] for pair in pairs], dtype=np.int64)
    label_rows = np.array([pair[1] for pair in pairs], dtype=np.int64)
    return feature_rows, label_rows


def check_joined_classes(y, class_names, labels_csv, id_column: str) -> None:
    """After the join, every class must keep a row (else the model would get an output for a
    class it never sees) and at least two classes must remain."""
    if len(np.unique(y)) < 2:
        raise DataError(f"{labels_csv}: after joining on {id_column!r} only one class remains")
    absent = [name for k, name in enumerate(class_names) if not np.any(y == k)]
    if absent:
        raise DataError(f"{labels_csv}: after joining on {id_column!r} class {absent[0]!r} has "
                        f"no rows left (all its ids lack features); drop those rows from the labels file")


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
    feature_rows, label_rows = pair_rows_by_id(
        feature_ids, label_ids, allow_unmatched=allow_unmatched,
        feature_source=f"features file {features_csv}", label_source=f"labels file {labels_csv}")
    y = y[label_rows]
    check_joined_classes(y, class_names, labels_csv, id_column)
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
    (fitting on test data would leak it).

    Constant columns: a column whose training values are all equal (max == min, tested
    exactly) gets std 1 instead of 0, so it maps to exactly 0 on the training data and no
    division by zero happens; a later value v different from the constant c maps to v - c
    (shifted, not rescaled). ``constant_columns`` (a bool mask, set by ``fit``) lists them, for
    a caller to report: such a column carries no information for training.

    Refused with a one-line DataError naming the row, the column and the value: NaN/inf, any
    |value| > FEATURE_LIMIT, and a result that is not representable (e.g. dividing by a
    subnormal std overflows). No numpy RuntimeWarning escapes: the arithmetic runs under
    ``np.errstate`` and its result is checked. ``feature_names`` (optional) names the columns
    in the messages; otherwise they are named by index.
    """

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.constant_columns: np.ndarray | None = None

    @staticmethod
    def _check(X, what: str, feature_names) -> None:
        bad = _first_bad_feature(X)
        if bad is not None:
            row, col, reason = bad
            name = repr(feature_names[col]) if feature_names is not None else str(col)
            raise DataError(f"Standardizer.{what}: value {float(X[row, col])!r} in row {row}, "
                            f"column {name} {reason}")

    def fit(self, X, *, feature_names=None) -> "Standardizer":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"fit needs a non-empty 2-D array, got shape {X.shape}")
        self._check(X, "fit", feature_names)
        # Below FEATURE_LIMIT neither can overflow; the errstate and the check are a guard.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mean = X.mean(axis=0)
            std = X.std(axis=0)
            # Deviations below ~1e-154 have squares that underflow (1e-300 and 3e-300 would
            # get std 0): for such columns, compute std = s * std(X / s) with s = max |X - mean|.
            spread = np.abs(X - mean).max(axis=0)
            tiny = (spread > 0) & (spread < 1e-100)
            if tiny.any():
                std[tiny] = spread[tiny] * ((X[:, tiny] - mean[tiny]) / spread[tiny]).std(axis=0)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            col = int(np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))[0])
            name = repr(feature_names[col]) if feature_names is not None else str(col)
            raise DataError(f"Standardizer.fit: column {name} overflows when standardised "
                            f"(mean {mean[col]:g}, std {std[col]:g})")
        # Test constancy exactly (max == min): a constant column's computed std can be a
        # rounding-sized positive number, which would blow rounding noise up to O(1) values.
        constant = X.max(axis=0) == X.min(axis=0)
        self.mean, self.std, self.constant_columns = mean, np.where(constant, 1.0, std), constant
        return self

    def transform(self, X, *, feature_names=None) -> np.ndarray:
        if self.mean is None:
            raise ValueError("Standardizer.transform called before fit")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected an array with {self.mean.shape[0]} columns, got shape {X.shape}")
        self._check(X, "transform", feature_names)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            out = (X - self.mean) / self.std
        if not np.all(np.isfinite(out)):
            row, col = (int(i) for i in np.argwhere(~np.isfinite(out))[0])
            name = repr(feature_names[col]) if feature_names is not None else str(col)
            raise DataError(f"Standardizer.transform: value {float(X[row, col])!r} in row {row}, column "
                            f"{name} is not representable after standardising (the column's "
                            f"std is {self.std[col]:g})")
        return out



# --------------------------------------------------------------------------------------------
# The two-party CSV setting: both parties align and split from public facts alone
# --------------------------------------------------------------------------------------------
def common_rows(own_ids, other_ids) -> tuple[list[str], np.ndarray]:
    """(the ids both parties hold, sorted as text; the rows of ``own_ids`` holding them, in
    that order). Each party computes it alone once the ids are exchanged, so that row i at the
    data party and row i at the label party are the same example."""
    keys = [str(value) for value in own_ids]
    duplicate = _first_duplicate(keys)
    if duplicate is not None:
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


# ----------------------------------------------------------------------------------------------
# The rows a run trains and tests on: a seeded split, then both parts standardised with the mean
# and std of the training part (the data party's standardiser)
# ----------------------------------------------------------------------------------------------
def load_split(name: str, *, test_fraction: float = 0.2, seed: int = nn.HEADLINE["seed"]):
    """A built-in dataset, split (stratified, seeded) and standardised on the training part."""
    return prepare(load_builtin(name), test_fraction=test_fraction, seed=seed)


def prepare(dataset: Dataset, *, test_fraction: float = 0.2,
            seed: int = nn.HEADLINE["seed"], return_standardizer: bool = False,
            stratified: bool = True):
    """Split, then standardise both parts with the mean and std of the training part.

    ``stratified`` — a built-in dataset is split per class (train_test_split); two party
    CSVs are split as two parties split them, from public facts only (``stratified=False``:
    split_rows on the rows in sorted-id order), so that ``train --features F --labels L``
    equals the two-process run on the same files. The standardiser belongs to the data party:
    ``return_standardizer=True`` returns it too, for ``train(..., standardizer=...)``.
    """
    if stratified:
        train_set, test_set = train_test_split(dataset, test_fraction=test_fraction,
                                                    seed=seed)
    else:
        # the two parties' row order first: the ids sorted as text (common_rows)
        keys = [str(value) for value in dataset.ids]
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        train_rows, test_rows = split_rows(len(dataset.y), test_fraction, seed)
        train_set, test_set = (take(dataset, order[rows], suffix)
                               for rows, suffix in ((train_rows, "[train]"), (test_rows, "[test]")))
    scaler = Standardizer().fit(train_set.X)
    train_set.X = scaler.transform(train_set.X)
    test_set.X = scaler.transform(test_set.X)
    if return_standardizer:
        return train_set, test_set, scaler
    return train_set, test_set
