"""acml.VerticalMLPClassifier: the sklearn surface (scikit-learn's check_estimator but the
checks named not applicable, pickling without secrets, feature_names_in_, class_weight), the
same weights as acml.train, the same refusals as the CLI, and PlainModel's matching
predict/predict_proba."""

import io
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import acml
from jobs import data
import paillier
from plan import FixedPointPlan

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")

SMALL = dict(hidden=4, epochs=1, batch_size=32, key_bits=512, allow_insecure=True, init_seed=3)


def tiny(rows=96, columns=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, columns))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(rows) > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = tiny()
    labels = np.where(y == 1, "yes", "no")
    return X, labels, acml.VerticalMLPClassifier(**SMALL).fit(X, labels)


def test_estimator_is_in_acml_namespace_and_clones():
    model = acml.VerticalMLPClassifier(**SMALL)
    assert model.get_params()["key_bits"] == 512
    copy = clone(model).set_params(epochs=2)
    assert copy.epochs == 2 and model.epochs == 1


def test_fitted_weights_equal_acml_train_bit_for_bit(fitted):
    X, labels, model = fitted
    classes, ids = np.unique(labels, return_inverse=True)
    dataset = data.Dataset(X, ids, np.arange(len(X)), [f"x{j}" for j in range(X.shape[1])],
                           list(classes), name="X")
    config = acml.Config(hidden=(4,), epochs=1, batch_size=32, key_bits=512,
                         allow_insecure=True, init_seed=3, plan=FixedPointPlan(),
                         allow_insecure_sigma=True)
    reference = acml.train(dataset, None, config)
    mine = model.result_.label_party.weight_share + model.result_.data_party.noise_acc
    theirs = reference.label_party.weight_share + reference.data_party.noise_acc
    assert mine.scale == theirs.scale and np.array_equal(mine.values, theirs.values)
    for a, b in zip(model.result_.label_party.model.layers, reference.label_party.model.layers):
        assert np.array_equal(a.b, b.b)
        if a.W is not None:
            assert np.array_equal(a.W, b.W)


def test_predict_proba_columns_follow_classes(fitted):
    X, labels, model = fitted
    assert list(model.classes_) == ["no", "yes"]
    proba = model.predict_proba(X[:10])
    assert proba.shape == (10, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(model.predict(X[:10]), model.classes_[(proba[:, 1] >= 0.5).astype(int)])
    assert 0.0 <= model.score(X, labels) <= 1.0


def test_plain_model_has_the_same_surface_and_agrees(fitted):
    X, _, model = fitted
    with pytest.raises(ValueError, match="consent"):
        model.to_plain_model()
    plain = model.to_plain_model(i_understand_this_reveals_the_weights=True)
    assert list(plain.classes_) == list(model.classes_)
    assert np.array_equal(plain.predict(X), model.predict(X))
    assert np.abs(plain.predict_proba(X) - model.predict_proba(X)).max() < 1e-4


def test_multiclass_integer_labels():
    X, y = tiny(90, 4, seed=1)
    y3 = y + (X[:, 2] > 0.8).astype(int) * 2  # classes 0, 1, 2, 3 -> take three
    y3 = np.minimum(y3, 2) * 10  # labels 0, 10, 20
    model = acml.VerticalMLPClassifier(**SMALL).fit(X, y3)
    assert list(model.classes_) == [0, 10, 20]
    assert model.predict_proba(X[:4]).shape == (4, 3)
    assert set(model.predict(X)) <= {0, 10, 20}


def test_cross_val_score_and_pipeline():
    X, y = tiny(80, 4, seed=2)
    X = X * 50 + 1000  # raw scale: the pipeline's scaler brings it into the fixed-point range
    pipeline = make_pipeline(StandardScaler(), acml.VerticalMLPClassifier(**SMALL))
    scores = cross_val_score(pipeline, X, y, cv=2)
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))
    assert 0 <= pipeline.fit(X, y).score(X, y) <= 1


@pytest.mark.parametrize("value, message", [
    (np.nan, r"X: non-finite value nan in row 3 \(id 3\), column 'x1'"),
    (np.inf, r"X: non-finite value inf in row 3 \(id 3\), column 'x1'"),
    (300.0, r"X, id '3', column 'x1': value 300 exceeds the fixed-point bound 256"),
])
def test_fit_refuses_bad_features_naming_row_and_column(value, message):
    X, y = tiny(40, 3)
    X[3, 1] = value
    with pytest.raises((ValueError, OverflowError), match=message):
        acml.VerticalMLPClassifier(**SMALL).fit(X, y)


@pytest.mark.parametrize("labels, message", [
    ([0.0, 1.0, np.nan, 1.0], "y, row 2: label nan is missing"),
    (["a", "b", None, "a"], "y, row 2: label None is missing"),
    (["a", 1, "b", 2], "cannot be ordered"),
    ([1, 1, 1, 1], "single class"),
])
def test_fit_refuses_bad_labels(labels, message):
    X, _ = tiny(4, 3)
    with pytest.raises(ValueError, match=message):
        acml.VerticalMLPClassifier(**SMALL).fit(X, np.array(
            labels, dtype=object if any(isinstance(v, str) for v in labels) else None))


def test_fit_refuses_insecure_settings_without_the_flag():
    X, y = tiny(20, 3)
    with pytest.raises(ValueError, match="key_bits 512 is under 1024"):
        acml.VerticalMLPClassifier(key_bits=512).fit(X, y)
    with pytest.raises(ValueError, match="sigma 8 is under the secure minimum"):
        acml.VerticalMLPClassifier(sigma=8, key_bits=1024).fit(X, y)


def test_predict_refuses_wrong_width_and_unfitted(fitted):
    X, _, model = fitted
    with pytest.raises(ValueError, match="not fitted"):
        acml.VerticalMLPClassifier(**SMALL).predict(X)
    with pytest.raises(ValueError, match="X has 4 features, but VerticalMLPClassifier is expecting 5"):
        model.predict(X[:, :4])


# scikit-learn's own conformance checks ----------------------------------------------------

CHECKED = acml.VerticalMLPClassifier(hidden=4, epochs=2, batch_size=32, key_bits=256,
                                     allow_insecure=True, init_seed=0)
NOT_APPLICABLE = {
    "check_class_weight_classifiers":
        "its three-class problem (weights 1000 against 0.0001, features up to ±60) multiplies "
        "δ = ∂L/∂z past the fixed-point plan's bound |δ| < 16 (delta_int_bits = 4): step 3 "
        "refuses in one line rather than wrap around. The weights are out of this plan's "
        "range, not mishandled; its two-class problem passes",
}


def expected_failures(estimator):
    return NOT_APPLICABLE


@parametrize_with_checks([CHECKED], expected_failed_checks=expected_failures)
def test_scikit_learn_check_estimator(estimator, check):
    """Every check of sklearn.utils.estimator_checks passes, except NOT_APPLICABLE (named,
    with why): validation messages, NotFittedError, n_features_in_, pickling, clone, ..."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        check(estimator)


def test_the_not_applicable_check_fails_for_the_stated_reason():
    """The one check named not applicable fails by the plan's δ bound, in one line, not by a
    wrong number: on the check's own data, weights of 1000 overflow δ."""
    from sklearn.datasets import make_blobs
    from sklearn.model_selection import train_test_split
    X, y = make_blobs(centers=2, random_state=0, cluster_std=20)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.5, random_state=0)
    binary = clone(CHECKED).set_params(class_weight={0: 1000, 1: 0.0001}).fit(X_train, y_train)
    assert np.mean(binary.predict(X_test) == 0) > 0.87  # the check's two-class half passes
    X, y = make_blobs(centers=3, random_state=0, cluster_std=20)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.5, random_state=0)
    model = clone(CHECKED).set_params(class_weight={0: 1000, 1: 0.0001, 2: 0.0001})
    with pytest.raises(OverflowError, match=r"step 3: \|δ\| = .* exceeds the fixed-point bound"):
        model.fit(X_train, y_train)


class RecordingUnpickler(pickle.Unpickler):
    """Unpickles, noting every class the pickle names."""

    def __init__(self, payload):
        super().__init__(io.BytesIO(payload))
        self.names = set()

    def find_class(self, module, name):
        self.names.add(f"{module}.{name}")
        return super().find_class(module, name)


def test_pickle_round_trip_keeps_predictions_and_stores_no_secret(fitted):
    """A fitted estimator pickles; the pickle names no key, no random source, no mask, no
    engine, no seed of W0 and no digest of the labels (secrets are not stored); unpickling draws a fresh key of the same size, and the
    unpickled model predicts exactly what the pickled one does (z = X·W is exact under any
    key) — and again after a second round trip."""
    X, labels, model = fitted
    payload = pickle.dumps(model)
    reader = RecordingUnpickler(payload)
    restored = reader.load()
    forbidden = {name for name in reader.names
                 if name.split(".")[-1] in {"PrivateKey", "SystemRandom", "MaskSource", "Random",
                                            "FastEngine", "Channel", "DataParty", "LabelParty",
                                            "InputPerturbation", "Result"}}
    assert not forbidden, forbidden
    private = model._data_state.keypair[1]
    assert str(private.p) not in str(pickle.loads(payload).__dict__)
    # nor the seed of W0 (and of the DP noise, with --init-seed), nor the digest of y
    assert restored._data_state.init_seed is None and not restored._label_state.labels_sha256
    assert restored.result_ is None and restored._data_state.keypair is not None
    assert restored._data_state.public_key.n != model._data_state.public_key.n  # fresh
    assert restored._data_state.public_key.n.bit_length() == 512
    assert np.array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(restored.predict(X), model.predict(X))
    again = pickle.loads(pickle.dumps(restored))
    assert np.array_equal(again.predict_proba(X[:7]), model.predict_proba(X[:7]))
    plain = restored.to_plain_model(i_understand_this_reveals_the_weights=True)
    assert np.array_equal(plain.predict(X), model.predict(X))


def test_unfitted_estimator_raises_not_fitted_error():
    X, _ = tiny(8, 3)
    for method in ("predict", "predict_proba", "predict_scores"):
        with pytest.raises(NotFittedError):
            getattr(acml.VerticalMLPClassifier(**SMALL), method)(X)
    with pytest.raises(NotFittedError):
        acml.VerticalMLPClassifier(**SMALL).to_plain_model(
            i_understand_this_reveals_the_weights=True)


def test_feature_names_in_and_n_features_in_follow_scikit_learn():
    """A DataFrame's column names become feature_names_in_ (and name a refused cell); a
    plain array gives n_features_in_ only; predicting on other columns is refused."""
    pandas = pytest.importorskip("pandas")
    X, y = tiny(64, 3)
    frame = pandas.DataFrame(X, columns=["age", "income", "debt"])
    model = acml.VerticalMLPClassifier(**SMALL).fit(frame, y)
    assert list(model.feature_names_in_) == ["age", "income", "debt"]
    assert model.n_features_in_ == 3
    bad = frame.copy()
    bad.iloc[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 2 \(id 2\), column 'income'"):
        model.predict(bad)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(frame.rename(columns={"debt": "loans"}))
    bare = acml.VerticalMLPClassifier(**SMALL).fit(X, y)
    assert bare.n_features_in_ == 3 and not hasattr(bare, "feature_names_in_")


def test_class_weight_balanced_and_dict_reach_the_label_partys_loss():
    """class_weight="balanced" trains with scikit-learn's balanced weights, a dict with the
    weights it names (others 1) — the label party's model holds them, the twin equals the
    encrypted run, and a dict naming an absent label is refused."""
    from sklearn.utils.class_weight import compute_class_weight
    X, y = tiny(96, 4)
    labels = np.where(y == 1, "yes", "no")
    labels[:30] = "no"
    balanced = acml.VerticalMLPClassifier(**SMALL, class_weight="balanced").fit(X, labels)
    expected = compute_class_weight("balanced", classes=np.array(["no", "yes"]), y=labels)
    assert np.allclose(balanced.class_weight_, expected)
    assert np.array_equal(balanced.result_.label_party.model.class_weight, balanced.class_weight_)
    assert balanced.metrics_["max_abs_weight_diff"] < 1e-5
    named = acml.VerticalMLPClassifier(**SMALL, class_weight={"yes": 3.0}).fit(X, labels)
    assert named.class_weight_.tolist() == [1.0, 3.0]
    plain = acml.VerticalMLPClassifier(**SMALL).fit(X, labels)
    assert plain.class_weight_ is None
    assert not np.array_equal(plain.predict_proba(X), named.predict_proba(X))
    with pytest.raises(ValueError, match="class_weight names label 'maybe'"):
        acml.VerticalMLPClassifier(**SMALL, class_weight={"maybe": 2.0}).fit(X, labels)
