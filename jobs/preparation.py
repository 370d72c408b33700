"""The data party's own preparation of its raw columns: declared rules, fitted on its training rows.

A features file as an organisation exports it holds more than numbers: categories ("OH",
"JFK"), blank cells, identifiers and dates. The data party declares, per column, what to do:

* ``categorical`` — one-hot: a column ``C`` with training categories c1 < c2 < ... becomes the
  0/1 columns ``C=c1``, ``C=c2``, ... (scikit-learn's OneHotEncoder). Cells are compared as
  text, so "1" and "1.0" are two categories. A category unseen at training is encoded as all
  zeros (``handle_unknown="ignore"``): the row sits at the centre of that column's learned
  categories after standardisation, neither one nor another.
* ``impute`` — ``{C: strategy}``: blank cells of C are filled (scikit-learn's SimpleImputer)
  with ``mean``, ``median`` or ``most_frequent`` of C's training rows, or ``constant`` (0 for
  a number column, "missing" for a categorical one; ``constant:VALUE`` for another). Blank
  cells anywhere else are refused.
* ``drop`` — columns left out (ids, dates, free text).

Every other column must hold numbers. The statistics (categories, fill values) are learned on
the training rows only, kept as plain data (``to_dict``: lists of texts and numbers, JSON, never
a pickle) in the data party's checkpoint, and the transformer is rebuilt from them
(``from_dict``) for training and prediction alike, so both go through one path.

What crosses to the label party: nothing of this. The preparation runs inside the data party
before step 0; the label party learns only the resulting width d (the first layer's input
size, public in every run), as it would for a file of d number columns. The categories, the
fill values and the column names stay with the data party.

Refused, each in one line: a column named in a rule that the file lacks (or that is the id
column), a column in two rules, a strategy that does not fit its column (``mean`` of a
categorical one), every text column that no rule names (listed at once), and a blank cell
without an ``impute`` rule (its column, line and id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from jobs import data
from jobs.data import DataError

STRATEGIES = ("mean", "median", "most_frequent", "constant")
NUMBER_ONLY_STRATEGIES = ("mean", "median")
DEFAULT_CATEGORICAL_FILL = "missing"
PREPARATION_VERSION = 1


@dataclass(frozen=True)
class Rules:
    """The data party's declared rules: column names, and per imputed column (strategy, fill)
    with fill None unless ``constant:VALUE`` gave one."""

    categorical: tuple = ()
    impute: dict = field(default_factory=dict)
    drop: tuple = ()

    @property
    def empty(self) -> bool:
        return not (self.categorical or self.impute or self.drop)


def parse_columns(text: str, flag: str) -> tuple:
    """``A,B,C`` -> ('A', 'B', 'C'); an empty name is refused naming the flag."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ValueError(f"{flag} {text!r}: an empty column name (write COL or COL1,COL2)")
    return names


def parse_impute(text: str) -> dict:
    """``COL=STRATEGY[,COL=STRATEGY]`` -> {COL: (strategy, fill or None)}; ``constant:VALUE``
    gives the fill."""
    rules = {}
    for part in text.split(","):
        column, equals, rule = part.partition("=")
        column, rule = column.strip(), rule.strip()
        strategy, colon, fill = rule.partition(":")
        if not equals or not column or strategy not in STRATEGIES:
            raise ValueError(f"--impute {text!r}: write COL=STRATEGY with STRATEGY one of "
                             f"{', '.join(STRATEGIES)} (constant:VALUE for a chosen value)")
        if colon and strategy != "constant":
            raise ValueError(f"--impute {part.strip()!r}: only constant takes a :VALUE")
        rules[column] = (strategy, fill if colon else None)
    return rules


def rules_from_options(categorical=(), impute=(), drop=()) -> Rules:
    """Rules from the repeatable options' texts (each may list several, comma-separated)."""
    cats = tuple(name for text in categorical or () for name in parse_columns(text, "--categorical"))
    drops = tuple(name for text in drop or () for name in parse_columns(text, "--drop"))
    fills: dict = {}
    for text in impute or ():
        fills.update(parse_impute(text))
    return Rules(cats, fills, drops)


@dataclass
class RawFeatures:
    """A features file as text: ids, its column names (the id column excluded), the cells
    (n, c) of text with blanks as "", each row's line in the file."""

    path: str
    id_column: str
    ids: np.ndarray
    columns: list
    cells: np.ndarray
    lines: list

    def column(self, name: str) -> np.ndarray:
        return self.cells[:, self.columns.index(name)]

    def where(self, row: int, column: str) -> str:
        return f"{self.path}, line {self.lines[row]} (id {self.ids[row]!r}), column {column!r}"


def read_raw_features(path, id_column: str) -> RawFeatures:
    """The data party's file with its cells as text (data.read_id_table's checks)."""
    ids, header, rows, lines = data.read_id_table(path, id_column)
    keep = [index for index, name in enumerate(header) if name != id_column]
    if not keep:
        raise DataError(f"{path}: no feature columns besides the id column {id_column!r}")
    cells = np.array([[row[index] for index in keep] for row in rows], dtype=object)
    return RawFeatures(str(path), id_column, ids, [header[index] for index in keep], cells, lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_rules(raw: RawFeatures, rules: Rules) -> None:
    """The rules against the file: every named column exists, none in two rules, strategies
    that fit, then every undeclared text column (all at once), then the first blank cell in a
    column without an impute rule."""
    path = raw.path
    named = [(name, "--categorical") for name in rules.categorical] + \
            [(name, "--drop") for name in rules.drop] + [(name, "--impute") for name in rules.impute]
    for name, flag in named:
        if name == raw.id_column:
            raise DataError(f"{flag} {name!r}: that is the id column, which is never a feature")
        if name not in raw.columns:
            raise DataError(f"{flag} {name!r}: {path} has no such column (columns: "
                            f"{', '.join(raw.columns)})")
    both = set(rules.categorical) & set(rules.drop)
    if both:
        raise DataError(f"column {sorted(both)[0]!r} is in both --categorical and --drop")
    for name in rules.impute:
        if name in rules.drop:
            raise DataError(f"--impute {name}: the column is dropped (--drop); give one of the two")
        strategy = rules.impute[name][0]
        if name in rules.categorical and strategy in NUMBER_ONLY_STRATEGIES:
            raise DataError(f"--impute {name}={strategy}: {name!r} is categorical; use "
                            f"most_frequent or constant")
    numeric = [name for name in raw.columns
               if name not in rules.categorical and name not in rules.drop]
    text_columns = []
    for name in numeric:
        cells = raw.column(name)
        first = next((row for row, text in enumerate(cells) if text and not _is_number(text)),
                     None)
        if first is not None:
            text_columns.append(f"{name!r} (e.g. {cells[first]!r} on line {raw.lines[first]})")
    if text_columns:
        word = "column" if len(text_columns) == 1 else "columns"
        verb = "is" if len(text_columns) == 1 else "are"
        raise DataError(f"{path}: {word} {', '.join(text_columns)} {verb} text: name "
                        f"{'it' if len(text_columns) == 1 else 'them'} in --categorical or --drop")
    kept = [name for name in raw.columns if name not in rules.drop]
    blank_columns = [name for name in kept
                     if name not in rules.impute and np.any(raw.column(name) == "")]
    if blank_columns:
        name = blank_columns[0]
        row = int(np.flatnonzero(raw.column(name) == "")[0])
        rest = blank_columns[1:]
        others = "" if not rest else (
            f" ({'column' if len(rest) == 1 else 'columns'} "
            f"{', '.join(repr(other) for other in rest)} {'has' if len(rest) == 1 else 'have'} "
            f"blank cells too)")
        raise DataError(f"{raw.where(row, name)}: empty cell; give --impute {name}=STRATEGY "
                        f"({', '.join(STRATEGIES)}) or --drop {name}{others}")


class Preparation:
    """The fitted preparation: per kept column, in the file's order, its kind ("number" or
    "category"), its fill value for blanks (None: blanks refused) and, if categorical, its
    categories (the whole file's). Built by ``fit`` (scikit-learn learns the statistics) or ``from_dict``
    (from a checkpoint); ``transform`` applies the ColumnTransformer rebuilt from them."""

    def __init__(self, columns: list, dropped: list):
        self.columns = columns  # [{"name", "kind", "fill", "categories"}]
        self.dropped = list(dropped)
        self.transformer = _rebuild(columns)

    @property
    def feature_names(self) -> list:
        """The prepared columns' names: ``C`` for a number column, ``C=category`` per category."""
        names = []
        for column in self.columns:
            if column["kind"] == "category":
                names += [f"{column['name']}={category}" for category in column["categories"]]
            else:
                names.append(column["name"])
        return names

    @property
    def is_identity(self) -> bool:
        """Only number columns, nothing filled: the file's numbers as they are."""
        return not self.dropped and all(column["kind"] == "number" and column["fill"] is None
                                        for column in self.columns)

    @classmethod
    def fit(cls, raw: RawFeatures, rows, rules: Rules) -> "Preparation":
        """Learn fill values from ``raw``'s ``rows`` (the training rows) with SimpleImputer, and
        the categories from all of ``raw``'s rows with OneHotEncoder (see below: the width d
        must not depend on which rows the label party's ids select). Checks the rules first
        (check_rules)."""
        check_rules(raw, rules)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise DataError(f"{raw.path}: no training rows to fit the preparation on")
        columns = []
        for name in raw.columns:
            if name in rules.drop:
                continue
            kind = "category" if name in rules.categorical else "number"
            fill = None
            if name in rules.impute:  # the training rows' statistic
                cells = raw.column(name)[rows]
                values = (_numbers(raw, name, rows) if kind == "number"
                          else np.where(cells == "", np.nan, cells).astype(object))
                fill = _learned_fill(raw, name, kind, values, *rules.impute[name])
            categories = None
            if kind == "category":
                # The categories of the whole file, not of the training rows: the label party
                # chooses which ids are common and the split, so categories of the training
                # rows alone would let d tell it whether an id holds a category no other
                # training row has (a review measured it). The file's categories are the data
                # party's own fact, whatever the label party holds.
                every = raw.column(name)
                every = np.where(every == "", "" if fill is None else fill, every)
                every = every[every != ""]
                encoder = OneHotEncoder().fit(every.reshape(-1, 1).astype(str))
                categories = [str(category) for category in encoder.categories_[0]]
            columns.append({"name": name, "kind": kind, "fill": fill, "categories": categories})
        return cls(columns, [name for name in raw.columns if name in rules.drop])

    def transform(self, raw: RawFeatures) -> np.ndarray:
        """(n, d) float64: every row of ``raw`` prepared. The file must have every kept column
        (in any order; dropped ones may be absent) and no other; a blank cell in a column
        without a fill value, or text in a number column, is refused naming its line and id."""
        missing = [column["name"] for column in self.columns if column["name"] not in raw.columns]
        known = {column["name"] for column in self.columns} | set(self.dropped)
        unexpected = [name for name in raw.columns if name not in known]
        if missing or unexpected:
            raise DataError(f"{raw.path}: its columns are not those of the training file: "
                            f"missing {missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}")
        every_row = np.arange(len(raw.ids))
        table = np.empty((len(raw.ids), len(self.columns)), dtype=object)
        for index, column in enumerate(self.columns):
            name, cells = column["name"], raw.column(column["name"])
            blank = cells == ""
            if blank.any() and column["fill"] is None:
                row = int(np.flatnonzero(blank)[0])
                raise DataError(f"{raw.where(row, name)}: empty cell, and the training file had "
                                f"no blank in this column (no --impute rule was learned for it)")
            if column["kind"] == "number":
                values = np.full(len(cells), np.nan)
                values[~blank] = _numbers(raw, name, every_row[~blank])
                table[:, index] = values
            else:
                table[:, index] = np.where(blank, np.nan, cells)
        return np.asarray(self.transformer.transform(table), dtype=np.float64)

    def to_dict(self) -> dict:
        """Plain data (JSON): what the data party keeps in its checkpoint."""
        return {"version": PREPARATION_VERSION, "columns": [dict(column) for column in self.columns],
                "dropped": list(self.dropped)}

    @classmethod
    def from_dict(cls, saved) -> "Preparation":
        """The preparation rebuilt from ``to_dict``'s data; ValueError if it is malformed."""
        if not isinstance(saved, dict) or saved.get("version") != PREPARATION_VERSION:
            raise ValueError("the preparation is not a version-1 dictionary")
        columns, dropped = saved.get("columns"), saved.get("dropped")
        if not isinstance(columns, list) or not columns or not isinstance(dropped, list):
            raise ValueError("the preparation has no columns")
        clean = []
        for column in columns:
            if not isinstance(column, dict) or not isinstance(column.get("name"), str) \
                    or column.get("kind") not in ("number", "category"):
                raise ValueError(f"the preparation has a malformed column {column!r}")
            fill, categories = column.get("fill"), column.get("categories")
            if column["kind"] == "number":
                if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))
                                         or not np.isfinite(fill)):
                    raise ValueError(f"column {column['name']!r}: a fill value that is no number")
                if categories is not None:
                    raise ValueError(f"number column {column['name']!r} has categories")
            else:
                if fill is not None and not isinstance(fill, str):
                    raise ValueError(f"column {column['name']!r}: a fill value that is no text")
                if not isinstance(categories, list) or not categories \
                        or not all(isinstance(category, str) for category in categories) \
                        or categories != sorted(set(categories)):
                    raise ValueError(f"column {column['name']!r}: malformed categories")
            clean.append({"name": column["name"], "kind": column["kind"],
                          "fill": None if fill is None else (float(fill) if column["kind"] ==
                                                             "number" else fill),
                          "categories": None if categories is None else list(categories)})
        return cls(clean, [str(name) for name in dropped])

    def describe(self) -> str:
        """One line for the report: what was done to the columns (no statistics)."""
        categorical = [column for column in self.columns if column["kind"] == "category"]
        filled = [column["name"] for column in self.columns if column["fill"] is not None]
        parts = [f"{len(self.columns) + len(self.dropped)} columns -> {len(self.feature_names)} "
                 f"features"]
        if categorical:
            parts.append("one-hot " + ", ".join(f"{column['name']} ({len(column['categories'])})"
                                                for column in categorical))
        if filled:
            parts.append("blanks filled in " + ", ".join(filled))
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        return "; ".join(parts)


def _numbers(raw: RawFeatures, name: str, rows) -> np.ndarray:
    """A number column's non-blank cells at ``rows`` as floats (NaN for blanks), each checked
    as every loader checks a feature (data.parse_feature)."""
    cells = raw.column(name)
    out = np.full(len(rows), np.nan)
    for position, row in enumerate(rows):
        text = cells[row]
        if text != "":
            out[position] = data.parse_feature(text, raw.path, raw.lines[row], name, raw.ids[row])
    return out


def _learned_fill(raw: RawFeatures, name: str, kind: str, values, strategy: str, fill):
    """The fill value of a column, learned by SimpleImputer on the training rows' values."""
    present = values[~_blank(values)]
    if strategy != "constant" and len(present) == 0:
        raise DataError(f"--impute {name}={strategy}: {raw.path} has no value in column {name!r} "
                        f"among the training rows to learn it from; use constant")
    if strategy == "constant":
        if fill is None:
            return 0.0 if kind == "number" else DEFAULT_CATEGORICAL_FILL
        if kind == "number":
            if not _is_number(fill) or not abs(float(fill)) <= data.FEATURE_LIMIT:
                raise DataError(f"--impute {name}=constant:{fill}: {name!r} is a number column; "
                                f"give a number")
            return float(fill)
        return str(fill)
    column = values.reshape(-1, 1)
    if kind == "number":
        imputer = SimpleImputer(strategy=strategy).fit(column.astype(np.float64))
        return float(imputer.statistics_[0])
    imputer = SimpleImputer(strategy=strategy, missing_values=np.nan).fit(column)
    return str(imputer.statistics_[0])


def _blank(values) -> np.ndarray:
    return np.array([value is None or (isinstance(value, float) and np.isnan(value))
                     for value in values], dtype=bool)


def _rebuild(columns: list) -> ColumnTransformer:
    """The ColumnTransformer of the stored statistics: per column, a SimpleImputer with the
    stored fill (constant strategy, so nothing is re-learned), and for a categorical column a
    OneHotEncoder with the stored categories (unseen ones -> all zeros). Fitted on one row of
    the stored values only to satisfy scikit-learn; nothing is learned from it."""
    parts = []
    for index, column in enumerate(columns):
        steps = []
        if column["kind"] == "number":
            if column["fill"] is not None:
                steps.append(SimpleImputer(strategy="constant", fill_value=column["fill"]))
            transformer = make_pipeline(*steps) if steps else "passthrough"
        else:
            if column["fill"] is not None:
                steps.append(SimpleImputer(strategy="constant", fill_value=column["fill"],
                                           missing_values=np.nan))
            steps.append(OneHotEncoder(categories=[np.array(column["categories"], dtype=object)],
                                       handle_unknown="ignore", sparse_output=False,
                                       dtype=np.float64))
            transformer = make_pipeline(*steps)
        parts.append((f"column{index}", transformer, [index]))
    transformer = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
    sample = np.empty((1, len(columns)), dtype=object)
    for index, column in enumerate(columns):
        sample[0, index] = (column["categories"][0] if column["kind"] == "category"
                            else (column["fill"] if column["fill"] is not None else 0.0))
    return transformer.fit(sample)


def load_prepared_pair(features_csv, labels_csv, *, id_column: str, label_column: str,
                       rules: Rules, keep_common_ids: bool, test_fraction: float, seed: int,
                       unmatched_hint: str = ""):
    """(dataset, preparation, counts): the two parties' files in one process, the data party's
    columns prepared by ``rules`` and fitted on the training rows only — the rows that
    data.prepare(..., stratified=False) will then hold out as the training part (the ids both
    files share, sorted as text, split by data.split_rows). ``counts``: ids in each file and in
    both. ``keep_common_ids`` trains on the ids both files hold; otherwise an id on one side
    only is refused (its message ending with ``unmatched_hint``)."""
    raw = read_raw_features(features_csv, id_column)
    if label_column in raw.columns:
        raise DataError(f"{features_csv}: contains the label column {label_column!r}; remove it "
                        f"(the data party must not hold the labels)")
    check_rules(raw, rules)
    label_ids, y, class_names = data.load_labels_csv(labels_csv, id_column, label_column)
    feature_rows, label_rows = data.pair_rows_by_id(
        raw.ids, label_ids, allow_unmatched=keep_common_ids,
        feature_source=f"features file {features_csv}", label_source=f"labels file {labels_csv}",
        unmatched_hint=unmatched_hint)
    y = y[label_rows]
    data.check_joined_classes(y, class_names, labels_csv, id_column)
    keys = [str(raw.ids[row]) for row in feature_rows]
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    train_rows, _ = data.split_rows(len(keys), test_fraction, seed)
    preparation = Preparation.fit(raw, feature_rows[order[train_rows]], rules)
    X = preparation.transform(raw)[feature_rows]
    dataset = data.Dataset(X, y, raw.ids[feature_rows], preparation.feature_names, class_names,
                           name=Path(features_csv).stem)
    counts = {"n_features_ids": len(raw.ids), "n_label_ids": len(label_ids),
              "n_common": len(feature_rows)}
    return dataset, preparation, counts


def load_features_as_trained(path, id_column: str, preparation: Preparation | None):
    """(ids, X, feature_names) of new rows to predict: prepared by the training's preparation,
    or read as numbers (data.load_features_csv) by a model that kept none."""
    if preparation is None:
        return data.load_features_csv(path, id_column)
    raw = read_raw_features(path, id_column)
    return raw.ids, preparation.transform(raw), preparation.feature_names
