"""Tests for data.py: built-in datasets load offline with the documented shapes, users' CSVs
are joined correctly, and every malformed input fails with one line naming file, line, column."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import data
from jobs.data import DataError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def raises_one_line(pattern, call, *args, **kwargs):
    """Run call and demand a DataError whose single-line message matches every regex given."""
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in ([pattern] if isinstance(pattern, str) else pattern):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


FEATURES = "id,age,income\na,30,1.5\nb,41,2.0\nc,25,0.5\nd,52,3.25\n"
LABELS = "id,outcome,note\nd,yes,x\nb,no,y\na,yes,z\nc,no,w\n"


# ---- built-in datasets ----------------------------------------------------------------------


def test_german_credit_loads_from_dmba_with_documented_shape():
    dataset = data.load_builtin("german_credit")
    assert dataset.X.shape == (1000, 30) and dataset.X.dtype == np.float64
    assert dataset.y.dtype == np.int64 and np.bincount(dataset.y).tolist() == [300, 700]
    assert "OBS#" not in dataset.feature_names and "RESPONSE" not in dataset.feature_names
    assert dataset.feature_names[:2] == ["CHK_ACCT", "DURATION"]
    assert dataset.class_names == ["bad", "good"] and dataset.n_classes == 2
    np.testing.assert_array_equal(dataset.ids[:3], [1, 2, 3])
    # first row of the file: 1,0,6,4,...,AMOUNT=1169,... RESPONSE=1
    assert dataset.X[0, 1] == 6 and dataset.X[0, dataset.feature_names.index("AMOUNT")] == 1169
    assert dataset.y[0] == 1


def test_universal_bank_loads_from_dmba_without_zip_code():
    dataset = data.load_builtin("universal_bank")
    assert dataset.X.shape == (5000, 11)
    assert "ZIP Code" not in dataset.feature_names and "Personal Loan" not in dataset.feature_names
    assert "ID" not in dataset.feature_names and "Income" in dataset.feature_names
    assert int(dataset.y.sum()) == 480


@pytest.mark.parametrize("name, shape, n_classes", [
    ("breast_cancer", (569, 30), 2), ("digits", (1797, 64), 10), ("wine", (178, 13), 3)])
def test_sklearn_datasets_load_with_documented_shape(name, shape, n_classes):
    dataset = data.load_builtin(name)
    assert dataset.X.shape == shape and dataset.n_classes == n_classes
    assert len(dataset.feature_names) == shape[1] and len(dataset.ids) == shape[0]
    assert set(np.unique(dataset.y)) == set(range(n_classes))


def test_unknown_builtin_name_lists_the_valid_names():
    with pytest.raises(ValueError) as caught:
        data.load_builtin("mnist")
    for name in data.BUILTIN_DATASETS:
        assert name in str(caught.value)


def test_dmba_datasets_load_without_importing_dmba_or_matplotlib():
    """dmba's __init__ imports matplotlib and prints; data.py must only locate its files."""
    code = ("import sys; from jobs import data; data.load_builtin('german_credit'); "
            "assert 'dmba' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


# ---- CSV pairs: the happy path --------------------------------------------------------------


def test_csv_pair_joins_on_id_in_features_file_order(tmp_path):
    dataset = data.load_csv_pair(write(tmp_path, "f.csv", FEATURES), write(tmp_path, "l.csv", LABELS),
                                 id_column="id", label_column="outcome")
    assert list(dataset.ids) == ["a", "b", "c", "d"]
    assert dataset.feature_names == ["age", "income"]
    assert dataset.class_names == ["no", "yes"]
    np.testing.assert_array_equal(dataset.y, [1, 0, 0, 1])
    np.testing.assert_array_equal(dataset.X[:, 1], [1.5, 2.0, 0.5, 3.25])
    assert dataset.X.dtype == np.float64 and dataset.y.dtype == np.int64


def test_numeric_labels_are_numbered_in_numeric_order(tmp_path):
    labels = write(tmp_path, "l.csv", "id,grade\na,10\nb,2\nc,2\nd,-1\n")
    ids, y, class_names = data.load_labels_csv(labels, "id", "grade")
    assert class_names == ["-1", "2", "10"]
    np.testing.assert_array_equal(y, [2, 1, 1, 0])


def test_ids_are_compared_as_text_and_blank_lines_are_skipped(tmp_path):
    features = write(tmp_path, "f.csv", "id,x\n007,1\n\n7,2\n")
    labels = write(tmp_path, "l.csv", "id,y\n7,1\n007,0\n")
    dataset = data.load_csv_pair(features, labels, id_column="id", label_column="y")
    assert list(dataset.ids) == ["007", "7"] and list(dataset.y) == [0, 1]


def test_pair_rows_by_id_returns_matching_row_indices_and_inner_join_on_request():
    feature_rows, label_rows = data.pair_rows_by_id(["a", "b", "c"], ["c", "a", "b"])
    np.testing.assert_array_equal(feature_rows, [0, 1, 2])
    np.testing.assert_array_equal(label_rows, [1, 2, 0])
    feature_rows, label_rows = data.pair_rows_by_id(["a", "b", "c"], ["c", "z", "a"], allow_unmatched=True)
    np.testing.assert_array_equal(feature_rows, [0, 2])
    np.testing.assert_array_equal(label_rows, [2, 0])


def test_gzip_csv_is_read_transparently(tmp_path):
    import gzip

    path = tmp_path / "f.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(FEATURES)
    ids, X, names = data.load_features_csv(path, "id")
    assert X.shape == (4, 2) and names == ["age", "income"]


# ---- CSV errors: each one line naming file, line and column ---------------------------------


def test_missing_id_column_in_features_file(tmp_path):
    path = write(tmp_path, "f.csv", "key,age\na,1\n")
    raises_one_line(["f.csv", "id column 'id'", "columns: key, age"], data.load_features_csv, path, "id")


def test_missing_id_column_in_labels_file(tmp_path):
    path = write(tmp_path, "l.csv", "key,outcome\na,1\nb,0\n")
    raises_one_line(["l.csv", "id column 'id'"], data.load_labels_csv, path, "id", "outcome")


def test_missing_label_column(tmp_path):
    path = write(tmp_path, "l.csv", "id,result\na,1\nb,0\n")
    raises_one_line(["l.csv", "label column 'outcome'"], data.load_labels_csv, path, "id", "outcome")


def test_duplicate_id_names_the_id_and_both_lines(tmp_path):
    path = write(tmp_path, "f.csv", "id,age\na,1\nb,2\n\na,3\n")
    raises_one_line(["f.csv", "duplicate id 'a'", "lines 2 and 5"], data.load_features_csv, path, "id")


def test_duplicate_id_in_labels_file(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\nq,1\nq,0\n")
    raises_one_line(["l.csv", "duplicate id 'q'", "lines 2 and 3"], data.load_labels_csv, path, "id", "y")


def test_ids_missing_from_the_labels_file_are_counted_and_named(tmp_path):
    features = write(tmp_path, "f.csv", "id,x\n" + "".join(f"r{i},{i}\n" for i in range(9)))
    labels = write(tmp_path, "l.csv", "id,y\nr0,0\nr1,1\n")
    raises_one_line(["7 id(s)", "f.csv", "have no label", "'r2', 'r3', 'r4', 'r5', 'r6', ..."],
                    data.load_csv_pair, features, labels, id_column="id", label_column="y")


def test_ids_missing_from_the_features_file_are_counted_and_named(tmp_path):
    features = write(tmp_path, "f.csv", "id,x\na,1\nb,2\n")
    labels = write(tmp_path, "l.csv", "id,y\na,0\nb,1\nzz,1\n")
    raises_one_line(["1 id(s)", "l.csv", "no features", "'zz'"],
                    data.load_csv_pair, features, labels, id_column="id", label_column="y")


def test_non_numeric_feature_names_column_line_and_value(tmp_path):
    path = write(tmp_path, "f.csv", "id,age,income\na,30,1.5\nb,forty,2\n")
    raises_one_line(["f.csv", "line 3", "column 'age'", "'forty'"], data.load_features_csv, path, "id")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
def test_non_finite_feature_names_column_and_line(tmp_path, value):
    path = write(tmp_path, "f.csv", f"id,age,income\na,30,1.5\nb,31,{value}\n")
    raises_one_line(["f.csv", "line 3", "column 'income'", "not finite"], data.load_features_csv, path, "id")


def test_empty_feature_cell(tmp_path):
    path = write(tmp_path, "f.csv", "id,age,income\na,30,\n")
    raises_one_line(["f.csv", "line 2", "column 'income'", "empty cell"], data.load_features_csv, path, "id")


def test_empty_label_cell(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,1\nb,\nc,0\n")
    raises_one_line(["l.csv", "line 3", "column 'y'", "empty cell"], data.load_labels_csv, path, "id", "y")


def test_empty_id_cell(tmp_path):
    path = write(tmp_path, "f.csv", "id,x\na,1\n,2\n")
    raises_one_line(["f.csv", "line 3", "column 'id'", "empty cell"], data.load_features_csv, path, "id")


def test_label_column_with_a_single_class(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,1\nb,1\n")
    raises_one_line(["l.csv", "label column 'y'", "single class '1'"], data.load_labels_csv, path, "id", "y")


def test_empty_file(tmp_path):
    path = write(tmp_path, "f.csv", "")
    raises_one_line(["f.csv", "empty"], data.load_features_csv, path, "id")


def test_header_without_rows(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\n")
    raises_one_line(["l.csv", "no data rows"], data.load_labels_csv, path, "id", "y")


@pytest.mark.parametrize("bad_row, found", [("b,2", 2), ("b,2,3,4", 4)])
def test_row_with_wrong_number_of_fields(tmp_path, bad_row, found):
    path = write(tmp_path, "f.csv", f"id,x,z\na,1,1\n{bad_row}\n")
    raises_one_line(["f.csv", "line 3", "expected 3 fields", f"found {found}"],
                    data.load_features_csv, path, "id")


def test_features_file_holding_the_label_column_is_refused(tmp_path):
    """The data party must not receive labels hidden among its features."""
    features = write(tmp_path, "f.csv", "id,x,outcome\na,1,0\nb,2,1\n")
    labels = write(tmp_path, "l.csv", "id,outcome\na,0\nb,1\n")
    raises_one_line(["f.csv", "label column 'outcome'"], data.load_csv_pair, features, labels,
                    id_column="id", label_column="outcome")


def test_missing_file_is_a_data_error(tmp_path):
    raises_one_line(["nope.csv", "not found"], data.load_features_csv, tmp_path / "nope.csv", "id")


# ---- split and scaling ----------------------------------------------------------------------


def _toy_dataset(n_per_class=(30, 10, 20)):
    y = np.concatenate([np.full(n, label) for label, n in enumerate(n_per_class)])
    X = np.arange(len(y) * 2, dtype=float).reshape(-1, 2)
    return data.Dataset(X, y, np.arange(len(y)), ["u", "v"], ["a", "b", "c"], name="toy")


def test_split_is_stratified_disjoint_covering_and_seeded():
    dataset = _toy_dataset()
    train, test = data.train_test_split(dataset, test_fraction=0.25, seed=3)
    assert np.bincount(test.y).tolist() == [8, 2, 5]  # round(0.25 * each class count)
    assert np.bincount(train.y).tolist() == [22, 8, 15]
    assert set(train.ids).isdisjoint(test.ids) and len(train) + len(test) == len(dataset)
    np.testing.assert_array_equal(test.X, dataset.X[test.ids])  # rows travel with their ids
    again, _ = data.train_test_split(dataset, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.ids, train.ids)
    other, _ = data.train_test_split(dataset, test_fraction=0.25, seed=4)
    assert not np.array_equal(other.ids, train.ids)


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(_toy_dataset(), test_fraction=1.0)


def test_standardizer_uses_training_statistics_and_maps_constant_columns_to_zero():
    train = np.array([[1.0, 0.1], [3.0, 0.1], [5.0, 0.1]])
    scaler = data.Standardizer().fit(train)
    np.testing.assert_allclose(scaler.mean, [3.0, 0.1])
    np.testing.assert_allclose(scaler.std, [np.sqrt(8 / 3), 1.0])
    np.testing.assert_allclose(scaler.transform(train).mean(axis=0), 0.0, atol=1e-15)
    assert np.all(np.abs(scaler.transform(train)[:, 1]) < 1e-15)
    np.testing.assert_allclose(scaler.transform(np.array([[7.0, 0.1]]))[0, 0], 4 / np.sqrt(8 / 3))
    with pytest.raises(ValueError, match="before fit"):
        data.Standardizer().transform(train)
    with pytest.raises(ValueError, match="2 columns"):
        scaler.transform(np.zeros((1, 3)))


def test_dataset_rejects_inconsistent_arrays():
    with pytest.raises(DataError, match="class ids"):
        data.Dataset(np.zeros((2, 1)), np.array([0, 2]), np.arange(2), ["x"], ["a", "b"])
    with pytest.raises(DataError, match="feature names"):
        data.Dataset(np.zeros((2, 1)), np.array([0, 1]), np.arange(2), ["x", "y"], ["a", "b"])
    with pytest.raises(DataError, match="non-finite"):
        data.Dataset(np.array([[np.nan], [0.0]]), np.array([0, 1]), np.arange(2), ["x"], ["a", "b"])


# ---- labels are parsed by value -------------------------------------------------------------


def test_numeric_labels_written_differently_are_one_class(tmp_path):
    """"1", "1.0", " 1 ", "+1", "1e0" are the same number, so the same class (was: 4 classes)."""
    path = write(tmp_path, "l.csv", "id,y\na,0\nb,1\nc,0.0\nd,1.0\ne, 1 \nf,+1\ng,1e0\nh,-0\n")
    ids, y, class_names = data.load_labels_csv(path, "id", "y")
    assert class_names == ["0", "1"]
    np.testing.assert_array_equal(y, [0, 1, 0, 1, 1, 1, 1, 0])
    assert data.describe_classes(class_names) == "2 classes: 0, 1"


def test_fractional_numeric_labels_keep_numeric_order_and_value_names(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,2\nb,0.5\nc,10\nd,0.50\n")
    _, y, class_names = data.load_labels_csv(path, "id", "y")
    assert class_names == ["0.5", "2", "10"]
    np.testing.assert_array_equal(y, [1, 0, 2, 0])


def test_long_integer_labels_are_compared_exactly_not_through_float(tmp_path):
    """2**53 and 2**53 + 1 are equal as floats but are different labels."""
    path = write(tmp_path, "l.csv", f"id,y\na,{2**53}\nb,{2**53 + 1}\n")
    assert data.load_labels_csv(path, "id", "y")[2] == [str(2**53), str(2**53 + 1)]


def test_three_classes_are_reported_as_three(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,low\nb,high\nc,mid\nd,low\n")
    _, y, class_names = data.load_labels_csv(path, "id", "y")
    assert class_names == ["high", "low", "mid"]
    assert data.describe_classes(class_names) == "3 classes: high, low, mid"
    assert data.describe_classes(class_names, np.bincount(y)) == "3 classes: high (1), low (2), mid (1)"


def test_describe_classes_shortens_long_lists():
    line = data.describe_classes([str(k) for k in range(20)])
    assert line.startswith("20 classes: 0, 1,") and line.endswith("10, 11, ...")


@pytest.mark.parametrize("value", ["NaN", "nan", "-nan", "inf", "-Infinity", "NA", "N/A", "null", "?"])
def test_missing_or_non_finite_label_names_line_id_and_column(tmp_path, value):
    """A NaN label used to become an extra class; now it is refused, naming the row."""
    path = write(tmp_path, "l.csv", f"id,y\na,0\nb,1\nc,{value}\n")
    raises_one_line(["l.csv", "line 4", "id 'c'", "column 'y'", repr(value), "missing or non-finite"],
                    data.load_labels_csv, path, "id", "y")


def test_overflowing_numeric_label_is_refused(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,0\nb,1\nc,1e999\n")
    raises_one_line(["line 4", "id 'c'", "'1e999'", "not a finite number"],
                    data.load_labels_csv, path, "id", "y")


def test_labels_mixing_numbers_and_text_are_refused(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,0\nb,1\nc,yes\n")
    raises_one_line(["column 'y'", "mix numbers", "'0' on line 2", "'yes' on line 4"],
                    data.load_labels_csv, path, "id", "y")


def test_text_labels_differing_only_in_case_are_refused(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\na,yes\nb,no\nc,Yes\n")
    raises_one_line(["column 'y'", "'Yes' and 'yes'", "letter case"], data.load_labels_csv, path, "id", "y")


def test_a_continuous_column_given_as_label_is_refused(tmp_path):
    path = write(tmp_path, "l.csv", "id,y\n" + "".join(f"r{i},{i * 0.37:.2f}\n" for i in range(150)))
    raises_one_line(["150 distinct values in 150 rows", "max_classes=100"],
                    data.load_labels_csv, path, "id", "y")
    _, _, names = data.load_labels_csv(path, "id", "y", max_classes=200)
    assert len(names) == 150


def test_a_class_left_without_rows_after_the_join_is_refused(tmp_path):
    """With allow_unmatched the model would get an output unit for a class it never sees."""
    features = write(tmp_path, "f.csv", "id,x\na,1\nb,2\nc,3\n")
    labels = write(tmp_path, "l.csv", "id,y\na,0\nb,1\nc,1\nz,2\n")
    raises_one_line(["l.csv", "class '2' has no rows left"], data.load_csv_pair, features, labels,
                    id_column="id", label_column="y", allow_unmatched=True)


# ---- absurd feature values ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e300", "-2e15", "1e16"])
def test_feature_beyond_the_documented_limit_names_id_column_and_value(tmp_path, value):
    """1e300 used to make the column's std inf, the column silently 0, and a RuntimeWarning leak."""
    path = write(tmp_path, "f.csv", f"id,age,income\na,30,1.5\nb,31,{value}\n")
    raises_one_line(["f.csv", "line 3", "id 'b'", "column 'income'", repr(value), "1e+15"],
                    data.load_features_csv, path, "id")


def test_feature_at_the_limit_is_accepted(tmp_path):
    path = write(tmp_path, "f.csv", "id,x\na,1e15\nb,-1e15\n")
    np.testing.assert_array_equal(data.load_features_csv(path, "id")[1][:, 0], [1e15, -1e15])
    assert data.FEATURE_LIMIT == 1e15


@pytest.mark.parametrize("value", ["1_000", "\u0661\u0662", "0x10", "1,5"])
def test_feature_text_python_float_would_misread_is_refused(tmp_path, value):
    """float() accepts "1_000" and Arabic-Indic digits; a CSV number must be plain decimal."""
    path = write(tmp_path, "f.csv", f'id,x\na,1\nb,"{value}"\n')
    raises_one_line(["line 3", "id 'b'", "column 'x'", repr(value)], data.load_features_csv, path, "id")


def test_standardizer_refuses_absurd_values_without_leaking_runtime_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning fails the test
        for bad, fragment in ((1e300, "1e+300"), (np.inf, "not finite"), (np.nan, "not finite")):
            X = np.array([[1.0, 2.0], [3.0, bad], [5.0, 6.0]])
            with pytest.raises(DataError, match="row 1, column 'b'") as caught:
                data.Standardizer().fit(X, feature_names=["a", "b"])
            assert fragment in str(caught.value)
        scaler = data.Standardizer().fit(np.array([[1.0], [3.0]]))
        with pytest.raises(DataError, match="transform: value 1e\\+300 in row 0, column 0"):
            scaler.transform(np.array([[1e300]]))


def test_standardizer_transform_refuses_an_unrepresentable_result():
    """A std set from outside (e.g. a checkpoint) that is subnormal would overflow to inf."""
    scaler = data.Standardizer()
    scaler.mean, scaler.std = np.array([0.0]), np.array([1e-310])
    raises_one_line(["transform", "row 0, column 0", "not representable"], scaler.transform,
                    np.array([[1.0]]))


def test_standardizer_tiny_valued_column_keeps_its_spread():
    """Values 1e-300 and 3e-300 differ, but their squared deviations underflow to 0: the std
    must still be 1e-300 (not 0, which would divide by zero)."""
    scaler = data.Standardizer().fit(np.array([[1e-300], [3e-300]]))
    assert scaler.std[0] == pytest.approx(1e-300) and not scaler.constant_columns[0]
    np.testing.assert_allclose(scaler.transform(np.array([[1e-300], [3e-300]]))[:, 0], [-1, 1])


def test_constant_column_maps_to_zero_and_later_values_are_shifted_not_scaled():
    scaler = data.Standardizer().fit(np.array([[1.0, 7.0], [3.0, 7.0]]))
    np.testing.assert_array_equal(scaler.constant_columns, [False, True])
    assert scaler.std[1] == 1.0
    np.testing.assert_array_equal(scaler.transform(np.array([[1.0, 7.0], [2.0, 9.5]]))[:, 1], [0.0, 2.5])


def test_dataset_refuses_fractional_or_nan_labels_duplicate_ids_and_huge_values():
    X = np.zeros((2, 1))
    with pytest.raises(DataError, match="label 0.5 in row 0 is not a whole-number class id"):
        data.Dataset(X, np.array([0.5, 1.0]), np.arange(2), ["x"], ["a", "b"])
    with pytest.raises(DataError, match="label nan in row 1"):
        data.Dataset(X, np.array([0.0, np.nan]), np.arange(2), ["x"], ["a", "b"])
    with pytest.raises(DataError, match="duplicate id 3 in rows 0 and 1"):
        data.Dataset(X, np.array([0, 1]), np.array([3, 3]), ["x"], ["a", "b"])
    with pytest.raises(DataError, match="value 1e\\+16 in row 0 \\(id 'p'\\), column 'x'"):
        data.Dataset(np.array([[1e16], [0.0]]), np.array([0, 1]), np.array(["p", "q"]), ["x"], ["a", "b"])
    with pytest.raises(DataError, match="class name 'a' appears twice"):
        data.Dataset(X, np.array([0, 1]), np.arange(2), ["x"], ["a", "a"])
    np.testing.assert_array_equal(
        data.Dataset(X, np.array([0.0, 1.0]), np.arange(2), ["x"], ["a", "b"]).y, [0, 1])


# ---- other file-level paths -----------------------------------------------------------------


def test_byte_order_mark_is_ignored_so_the_id_column_is_found(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes("id,x\na,1\nb,2\n".encode("utf-8-sig"))
    ids, X, names = data.load_features_csv(path, "id")
    assert list(ids) == ["a", "b"] and names == ["x"]


@pytest.mark.parametrize("separator, word", [(";", "semicolons"), ("\t", "tabs")])
def test_semicolon_or_tab_separated_file_gets_a_hint(tmp_path, separator, word):
    path = write(tmp_path, "f.csv", separator.join(["id", "x"]) + "\na" + separator + "1\n")
    raises_one_line(["no id column 'id'", word, "comma-separated"], data.load_features_csv, path, "id")


def test_non_utf8_file_and_fake_gzip_are_data_errors(tmp_path):
    latin = tmp_path / "f.csv"
    latin.write_bytes("id,x\n\xe9,1\n".encode("latin-1"))
    raises_one_line(["f.csv", "cannot read as CSV"], data.load_features_csv, latin, "id")
    fake = write(tmp_path, "g.csv.gz", "id,x\na,1\n")
    raises_one_line(["g.csv.gz", "cannot read as CSV"], data.load_features_csv, fake, "id")


def test_header_only_file_with_blank_lines_and_blank_only_file(tmp_path):
    raises_one_line("no data rows", data.load_features_csv, write(tmp_path, "a.csv", "id,x\n\n\n"), "id")
    raises_one_line("empty", data.load_features_csv, write(tmp_path, "b.csv", "\n\n"), "id")


def test_duplicate_and_empty_header_names(tmp_path):
    raises_one_line(["column 'x' appears twice"], data.load_features_csv,
                    write(tmp_path, "a.csv", "id,x,x\na,1,2\n"), "id")
    raises_one_line(["header field 2 is empty"], data.load_features_csv,
                    write(tmp_path, "b.csv", "id,,x\na,1,2\n"), "id")


def test_ids_equal_after_trimming_spaces_are_duplicates(tmp_path):
    path = write(tmp_path, "f.csv", "id,x\na,1\n a ,2\n")
    raises_one_line(["duplicate id 'a'", "lines 2 and 3"], data.load_features_csv, path, "id")


def test_dmba_german_credit_has_no_warning_and_two_classes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = data.load_builtin("german_credit")
    assert data.describe_classes(dataset.class_names, np.bincount(dataset.y)) == \
        "2 classes: bad (300), good (700)"
