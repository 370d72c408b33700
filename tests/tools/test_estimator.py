"""acml.VerticalMLPClassifier: the sklearn surface, the same weights as acml.train, the same
refusals as the CLI, and PlainModel's matching predict/predict_proba."""


import numpy as np
import pytest
from sklearn.base import clone
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
    with pytest.raises(ValueError, match="4 columns"):
        model.predict(X[:, :4])
