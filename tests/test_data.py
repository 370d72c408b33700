"""Tests for data.py: built-in datasets load offline with the documented shapes, users' CSVs
are joined correctly, and every malformed input fails with one line naming file, line, column."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
from data import DataError

REPO = Path(__file__).resolve().parent.parent


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
    code = ("import sys, data; data.load_builtin('german_credit'); "
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


def test_align_returns_matching_row_indices_and_inner_join_on_request():
    feature_rows, label_rows = data.align(["a", "b", "c"], ["c", "a", "b"])
    np.testing.assert_array_equal(feature_rows, [0, 1, 2])
    np.testing.assert_array_equal(label_rows, [1, 2, 0])
    feature_rows, label_rows = data.align(["a", "b", "c"], ["c", "z", "a"], allow_unmatched=True)
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
    raises_one_line(["7 id(s)", "f.csv", "no a label", "'r2', 'r3', 'r4', 'r5', 'r6', ..."],
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
