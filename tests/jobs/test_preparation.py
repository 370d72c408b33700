"""The data party's preparation of raw columns (jobs/preparation.py) and the `train` options
around raw files: --categorical, --impute, --drop, --keep-common-ids and --plaintext."""

import csv
import json

import numpy as np
import pytest

import acml
from conftest import insecure_keypair, one_line_error, write_csv
from jobs import checkpoint, data, preparation, run_directory, simulation
from jobs.data import DataError
from jobs.settings import Config
from jobs.twin import max_weight_diff
from plan import FixedPointPlan

CITIES = ["Oslo", "Lima", "Pune"]
SMALL_KEY = ["--key-bits", "256", "--insecure-small-key", "--quiet"]


def raw_rows(n=40, seed=3):
    """Rows of a raw features file: an id, a city (text), an age with blanks, a free-text note,
    a number; and the label, 1 mostly for Oslo."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for row in range(n):
        city = CITIES[row % 3]
        age = "" if row % 7 == 3 else str(20 + int(rng.integers(0, 40)))
        features.append([f"r{row:03d}", city, age, f"note {row}", f"{rng.normal():.4f}"])
        labels.append([f"r{row:03d}", "yes" if (city == "Oslo") ^ (row % 11 == 0) else "no"])
    return features, labels


def write_pair(tmp_path, n=40):
    features, labels = raw_rows(n)
    header = ["id", "city", "age", "note", "x"]
    return (str(write_csv(tmp_path / "f.csv", header, features)),
            str(write_csv(tmp_path / "l.csv", ["id", "y"], labels)))


RULES = preparation.Rules(categorical=("city",), impute={"age": ("mean", None)}, drop=("note",))
PAIR_OPTIONS = ["--id-column", "id", "--label-column", "y"]
RULE_OPTIONS = ["--categorical", "city", "--impute", "age=mean", "--drop", "note"]


def raises_one_line(fragments, call, *args, **kwargs):
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def fitted_on_every_row(tmp_path):
    """The features file of write_pair, read raw, and RULES fitted on all of its rows."""
    features, _ = write_pair(tmp_path)
    raw = preparation.read_raw_features(features, "id")
    return raw, preparation.Preparation.fit(raw, np.arange(len(raw.ids)), RULES)


def test_categorical_column_becomes_one_hot_columns_named_by_its_training_categories(tmp_path):
    raw, fitted = fitted_on_every_row(tmp_path)
    X = fitted.transform(raw)
    assert fitted.feature_names == ["city=Lima", "city=Oslo", "city=Pune", "age", "x"]
    for row, city in enumerate(raw.column("city")):
        np.testing.assert_array_equal(X[row, :3], [city == name for name in sorted(CITIES)])


def test_impute_fills_blanks_with_the_statistic_of_the_training_rows_only(tmp_path):
    features, _ = write_pair(tmp_path)
    raw = preparation.read_raw_features(features, "id")
    train_rows = np.arange(0, 20)
    ages = np.array([float(a) for a in raw.column("age")[train_rows] if a])
    for strategy, expected in (("mean", ages.mean()), ("median", np.median(ages))):
        rules = preparation.Rules(("city",), {"age": (strategy, None)}, ("note",))
        fitted = preparation.Preparation.fit(raw, train_rows, rules)
        X = fitted.transform(raw)
        blank = raw.column("age") == ""
        assert blank[20:].any()  # a blank outside the training rows is filled by the same value
        np.testing.assert_array_equal(X[blank, 3], expected)
        np.testing.assert_array_equal(X[~blank, 3], raw.column("age")[~blank].astype(float))
    constant = preparation.Preparation.fit(
        raw, train_rows, preparation.Rules(("city",), {"age": ("constant", "-1")}, ("note",)))
    assert set(constant.transform(raw)[raw.column("age") == "", 3]) == {-1.0}


def test_most_frequent_fills_a_blank_category(tmp_path):
    path = write_csv(tmp_path / "f.csv", ["id", "c"], [["a", "u"], ["b", "v"], ["c", "v"],
                                                        ["d", ""]])
    raw = preparation.read_raw_features(path, "id")
    fitted = preparation.Preparation.fit(
        raw, np.arange(4), preparation.Rules(("c",), {"c": ("most_frequent", None)}))
    np.testing.assert_array_equal(fitted.transform(raw), [[1, 0], [0, 1], [0, 1], [0, 1]])


def test_drop_leaves_the_column_out_and_it_may_be_absent_at_prediction(tmp_path):
    raw, fitted = fitted_on_every_row(tmp_path)
    assert not any(name.startswith("note") for name in fitted.feature_names)
    rows = [[r[0], r[1], r[2], r[4]] for r in raw_rows()[0]]
    without = preparation.read_raw_features(
        write_csv(tmp_path / "new.csv", ["id", "city", "age", "x"], rows), "id")
    np.testing.assert_array_equal(fitted.transform(without), fitted.transform(raw))


def test_every_undeclared_text_column_is_named_in_one_line_with_the_options(capsys, tmp_path,
                                                                           no_training):
    features, labels = write_pair(tmp_path)
    line = one_line_error(capsys, ["train", "--features", features, "--labels", labels,
                                   *PAIR_OPTIONS, *SMALL_KEY])
    for fragment in ("'city' (e.g. 'Oslo' on line 2)", "'note' (e.g. 'note 0' on line 2)",
                     "are text", "--categorical or --drop"):
        assert fragment in line, line


def test_a_blank_without_an_impute_rule_names_its_column_line_and_id(capsys, tmp_path,
                                                                     no_training):
    features, labels = write_pair(tmp_path)
    line = one_line_error(capsys, ["train", "--features", features, "--labels", labels,
                                   *PAIR_OPTIONS, *SMALL_KEY, "--categorical", "city",
                                   "--drop", "note"])
    assert "line 5 (id 'r003'), column 'age': empty cell" in line, line
    assert "--impute age=STRATEGY" in line, line


@pytest.mark.parametrize("options, fragment", [
    (["--categorical", "town"], "--categorical 'town': "),
    (["--categorical", "city", "--drop", "city,note"], "both --categorical and --drop"),
    (["--categorical", "city,note", "--impute", "city=mean"], "'city' is categorical"),
    (["--categorical", "city,note", "--impute", "age"], "--impute 'age'"),
    (["--categorical", "city,note", "--impute", "age=mean:3"], "only constant takes"),
    (["--categorical", "id"], "the id column"),
    (["--categorical", "city", "--drop", "note", "--impute", "age=constant:old"],
     "give a number"),
])
def test_a_rule_that_does_not_fit_the_file_is_one_line_naming_the_option(
        capsys, tmp_path, no_training, options, fragment):
    features, labels = write_pair(tmp_path)
    line = one_line_error(capsys, ["train", "--features", features, "--labels", labels,
                                   *PAIR_OPTIONS, *SMALL_KEY, *options])
    assert fragment in line, line


def test_preparation_options_on_a_builtin_dataset_are_refused(capsys, no_training):
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--drop", "x", *SMALL_KEY])
    assert "--drop: for --features/--labels files" in line, line


def test_the_stored_preparation_is_plain_data_that_rebuilds_the_same_transform(tmp_path):
    features, _ = write_pair(tmp_path)
    raw = preparation.read_raw_features(features, "id")
    fitted = preparation.Preparation.fit(raw, np.arange(25), RULES)
    stored = json.loads(json.dumps(fitted.to_dict()))  # JSON: lists, texts and numbers
    rebuilt = preparation.Preparation.from_dict(stored)
    np.testing.assert_array_equal(rebuilt.transform(raw), fitted.transform(raw))
    assert rebuilt.feature_names == fitted.feature_names
    broken = dict(stored, columns=[dict(stored["columns"][0], categories=["b", "a"])])
    with pytest.raises(ValueError, match="malformed categories"):
        preparation.Preparation.from_dict(broken)


def test_an_unseen_category_at_prediction_is_all_zero_and_the_others_unchanged(tmp_path):
    raw, fitted = fitted_on_every_row(tmp_path)
    new = preparation.read_raw_features(write_csv(
        tmp_path / "new.csv", ["id", "city", "age", "note", "x"],
        [["n1", "Rome", "30", "", "0.5"], ["n2", "Lima", "", "", "0.5"]]), "id")
    X = fitted.transform(new)
    np.testing.assert_array_equal(X[0, :3], [0, 0, 0])
    np.testing.assert_array_equal(X[1, :3], [1, 0, 0])
    assert X[1, 3] == fitted.to_dict()["columns"][1]["fill"]


def test_a_new_blank_where_training_had_none_is_refused_naming_line_and_id(tmp_path):
    raw, fitted = fitted_on_every_row(tmp_path)
    new = preparation.read_raw_features(write_csv(
        tmp_path / "new.csv", ["id", "city", "age", "note", "x"],
        [["n1", "Lima", "30", "", "0.5"], ["n2", "Lima", "31", "", ""]]), "id")
    raises_one_line(["line 3 (id 'n2'), column 'x': empty cell"], fitted.transform, new)


def read_predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_checkpoint_keeps_the_preparation_and_predict_applies_it(capsys, tmp_path):
    """Categories and fill values learned at training are in the data party's checkpoint and
    prepare the rows to predict, an unseen category included: `predict` on a raw file scores
    exactly what the same model scores on the rows prepared by hand."""
    features, labels = write_pair(tmp_path)
    run = tmp_path / "run"
    assert acml.main(["train", "--features", features, "--labels", labels, *PAIR_OPTIONS,
                      *SMALL_KEY, *RULE_OPTIONS, "--hidden", "2", "--epochs", "1",
                      "--checkpoint-dir", str(run)]) == 0
    data_state, _ = run_directory.load_pair(run, allow_insecure=True)
    raw = preparation.read_raw_features(features, "id")
    train_set, _, _, = data.prepare(
        preparation.load_prepared_pair(features, labels, id_column="id", label_column="y",
                                       rules=RULES, keep_common_ids=False, test_fraction=0.2,
                                       seed=Config.seed)[0],
        stratified=False, seed=Config.seed, return_standardizer=True)
    train_ages = [float(raw.column("age")[list(raw.ids).index(key)]) for key in train_set.ids
                  if raw.column("age")[list(raw.ids).index(key)]]
    assert data_state.preparation["columns"][0]["categories"] == sorted(CITIES)
    assert data_state.preparation["columns"][1]["fill"] == np.mean(train_ages)

    new = write_csv(tmp_path / "new.csv", ["x", "id", "age", "city"],  # another column order
                    [["0.25", "n1", "", "Rome"], ["-1.5", "n2", "33", "Oslo"]])
    out = tmp_path / "p.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(run), "--features", str(new),
                      "--id-column", "id", "--insecure-small-key", "--out", str(out)]) == 0
    by_hand = np.array([[0, 0, 0, np.mean(train_ages), 0.25], [0, 1, 0, 33, -1.5]])
    expected = simulation.predict(run, by_hand, allow_insecure=True)
    got = read_predictions(out)
    assert [row["id"] for row in got] == ["n1", "n2"]
    np.testing.assert_array_equal([float(row["p_yes"]) for row in got], expected.scores)


def test_a_corrupted_stored_preparation_is_refused_on_load(tmp_path):
    features, labels = write_pair(tmp_path)
    run = tmp_path / "run"
    assert acml.main(["train", "--features", features, "--labels", labels, *PAIR_OPTIONS,
                      *SMALL_KEY, *RULE_OPTIONS, "--hidden", "2", "--epochs", "1",
                      "--checkpoint-dir", str(run)]) == 0
    path = run_directory.party_path(run, "data")
    state = checkpoint.DataPartyState.load(path, allow_insecure=True)
    state.preparation = dict(state.preparation, columns=state.preparation["columns"][1:])
    state.save(path)
    with pytest.raises(ValueError, match="corrupted checkpoint: the preparation produces"):
        checkpoint.DataPartyState.load(path, allow_insecure=True)


def test_ids_on_one_side_only_are_refused_naming_keep_common_ids(capsys, tmp_path, no_training):
    features, labels = write_pair(tmp_path)
    rows = raw_rows()[1][3:] + [["z1", "yes"]]
    labels = str(write_csv(tmp_path / "l2.csv", ["id", "y"], rows))
    line = one_line_error(capsys, ["train", "--features", features, "--labels", labels,
                                   *PAIR_OPTIONS, *SMALL_KEY, *RULE_OPTIONS])
    assert "3 id(s) in the features file" in line and "--keep-common-ids" in line, line


def test_keep_common_ids_prints_the_counts_and_trains_on_the_shared_ids(capsys, tmp_path):
    features, _ = write_pair(tmp_path)
    rows = raw_rows()[1][3:] + [["z1", "yes"], ["z2", "no"]]
    labels = str(write_csv(tmp_path / "l2.csv", ["id", "y"], rows))
    report = tmp_path / "r.json"
    assert acml.main(["train", "--features", features, "--labels", labels, *PAIR_OPTIONS,
                      *SMALL_KEY, *RULE_OPTIONS, "--keep-common-ids", "--plaintext",
                      "--json", str(report)]) == 0
    err = capsys.readouterr().err
    assert ("kept the 37 ids shared by the features file's 40 and the labels file's 39 "
            "(3 only in the features file, 2 only in the labels file, left out)") in err, err
    metrics = json.loads(report.read_text())
    assert metrics["n_train"] + metrics["n_test"] == 37


def test_plaintext_rehearsal_says_so_in_its_first_line_and_in_the_json(capsys, tmp_path):
    features, labels = write_pair(tmp_path)
    report = tmp_path / "r.json"
    assert acml.main(["train", "--features", features, "--labels", labels, *PAIR_OPTIONS,
                      *SMALL_KEY, *RULE_OPTIONS, "--plaintext", "--json", str(report)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].startswith("PLAINTEXT REHEARSAL (no encryption")
    assert "plaintext rehearsal: no encryption" in out.err
    metrics = json.loads(report.read_text())
    assert metrics["mode"] == "plaintext" and metrics["encrypted"] is False


def test_plaintext_refuses_what_only_an_encrypted_run_has(capsys, tmp_path, no_training):
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--plaintext",
                                   "--checkpoint-dir", str(tmp_path / "run"), *SMALL_KEY])
    assert "--plaintext" in line and "--checkpoint-dir" in line, line


def test_plaintext_rehearsal_trains_the_encrypted_runs_weights(tmp_path):
    """With the same settings and init seed, the rehearsal is the encrypted run's twin bit for
    bit, and the two parties' weights equal it within the fixed-point quantisation."""
    features, labels = write_pair(tmp_path, n=48)
    dataset, prepared, _ = preparation.load_prepared_pair(
        features, labels, id_column="id", label_column="y", rules=RULES, keep_common_ids=False,
        test_fraction=0.25, seed=1)
    train_set, test_set = data.prepare(dataset, test_fraction=0.25, seed=1, stratified=False)
    config = Config(hidden=(3, 2), epochs=2, batch_size=8, lr=0.2, momentum=0.5, key_bits=256,
                    allow_insecure=True, init_seed=77, seed=1, plan=FixedPointPlan())
    rehearsal = simulation.rehearse(train_set, test_set, config)
    result = simulation.train(train_set, test_set, config, keypair=insecure_keypair(256),
                              preparation=prepared)
    for mine, theirs in zip(rehearsal.plaintext.layers, result.plaintext.layers):
        np.testing.assert_array_equal(mine.W, theirs.W)
        np.testing.assert_array_equal(mine.b, theirs.b)
    assert rehearsal.losses == result.plaintext_losses
    gap = max_weight_diff(result.data_party, result.label_party, rehearsal.plaintext)
    assert gap == result.metrics["max_abs_weight_diff"] and 0 < gap < 1e-4
    assert rehearsal.metrics["test_accuracy"] == result.metrics["plaintext_test_accuracy"]


def test_the_exported_model_carries_the_preparation_and_scores_a_raw_file_as_predict_does(
        tmp_path):
    """The export keeps the data party's preparation, so the plaintext model applies to a raw
    file: its scores equal the encrypted prediction's within the fixed-point quantisation."""
    from jobs.export import load_model
    features, labels = write_pair(tmp_path)
    run, model_path = tmp_path / "run", tmp_path / "model.npz"
    assert acml.main(["train", "--features", features, "--labels", labels, *PAIR_OPTIONS,
                      *SMALL_KEY, *RULE_OPTIONS, "--hidden", "2", "--epochs", "1",
                      "--checkpoint-dir", str(run)]) == 0
    assert acml.main(["export", "--checkpoint-dir", str(run), "--out", str(model_path),
                      "--i-understand-this-reveals-the-weights"]) == 0
    model = load_model(model_path)
    data_state, _ = run_directory.load_pair(run, allow_insecure=True)
    assert model.preparation == data_state.preparation
    new = write_csv(tmp_path / "new.csv", ["id", "city", "age", "x"],
                    [["n1", "Rome", "", "0.25"], ["n2", "Oslo", "33", "-1.5"]])
    ids, X = model.rows_of_file(new, "id")
    encrypted = simulation.predict_file(run, new, "id", allow_insecure=True)[1]
    assert list(ids) == ["n1", "n2"]
    np.testing.assert_allclose(model.predict_scores(X), encrypted.scores, atol=1e-4)


def test_the_width_does_not_depend_on_which_rows_train(tmp_path):
    """Property: the label party chooses which ids are common and how they split, so the width
    d (public) must not change with the training rows: the categories are the whole file's. A
    category held by one row only gives the same prepared columns whether that row trains or
    not (with the training rows' categories, d told whether the row was among them)."""
    path = tmp_path / "features.csv"
    path.write_text("id,city,x\n" + "".join(
        f"c{k:03d},{'Rome' if k == 5 else 'Oslo' if k % 2 else 'Lima'},{k}\n" for k in range(12)))
    raw = preparation.read_raw_features(path, "id")
    rules = preparation.rules_from_options(categorical=["city"])
    with_it = preparation.Preparation.fit(raw, [1, 2, 3, 4, 5, 6], rules)
    without_it = preparation.Preparation.fit(raw, [1, 2, 3, 4, 6, 7], rules)
    assert with_it.feature_names == without_it.feature_names == [
        "city=Lima", "city=Oslo", "city=Rome", "x"]
