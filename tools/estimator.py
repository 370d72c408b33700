"""A scikit-learn estimator for the simulated two-party setting: both parties in this process.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), acml.VerticalMLPClassifier(key_bits=2048))
    model.fit(X_train, y_train).score(X_test, y_test)

A module of its own because it is the only part of ACML that leans on scikit-learn (its base
classes give get_params/set_params, clone and score); the protocol and the parties stay pure
numpy, and ``import acml`` does not import scikit-learn until the estimator is asked for. It
builds on jobs/ (the run behind ``acml.train`` is jobs/simulation.py's), never on acml.py,
which imports it: no import circle.

``fit`` is ``acml.train`` on (X, y): the same parties, the same checked channel, the same
fixed-point plan, so the fitted weights equal ``acml.train``'s for the same settings and seeds.
``predict``/``predict_proba`` run the real encrypted prediction (protocol.predict): the data
party encrypts the rows, the label party computes the scores. Nothing here combines the two
weight shares, except :meth:`VerticalMLPClassifier.to_plain_model`, which says so.

``fit`` does NOT standardise. ACML's fixed point carries |x| < 2**x_int_bits (256 by default),
so put a ``StandardScaler`` in front of it (the sklearn way); values outside the bound, NaN and
inf are refused with one line naming the row and the column, as the CLI refuses them.
"""

from __future__ import annotations

import numpy as np

try:  # scikit-learn is in requirements.txt; without it the estimator keeps the same surface
    from sklearn.base import BaseEstimator, ClassifierMixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    import inspect

    class BaseEstimator:
        """get_params/set_params from __init__'s signature, as sklearn's BaseEstimator."""

        @classmethod
        def _get_param_names(cls):
            return sorted(name for name in inspect.signature(cls.__init__).parameters
                          if name != "self")

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            for name, value in params.items():
                if name not in self._get_param_names():
                    raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
                setattr(self, name, value)
            return self

    class ClassifierMixin:
        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            matches = (self.predict(X) == np.asarray(y)).astype(np.float64)
            return float(np.average(matches, weights=sample_weight))

import nn
import paillier
from jobs import data
from jobs.export import PlainModel
from jobs.settings import Config
from jobs.simulation import predict_encrypted, train
from jobs.twin import joint_first_layer
from plan import FixedPointPlan, check_features, check_sigma
from privacy import input_perturbation


def encode_labels(y, n_rows: int):
    """(classes, class ids) for labels of any sklearn kind (ints, floats, strings, bools):
    classes in sorted order (``np.unique``), as sklearn's classifiers order ``classes_``.

    Refused with one line: a shape that is not (n_rows,), a missing label (NaN, None, inf)
    naming its row, labels that cannot be compared (numbers mixed with text), one class only.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n_rows,):
        raise ValueError(f"y must be 1-D with one label per row of X ({n_rows}), "
                         f"got shape {y.shape}")
    if y.dtype.kind == "f":
        missing = np.flatnonzero(~np.isfinite(y))
    elif y.dtype.kind == "O":
        missing = [row for row, value in enumerate(y.tolist())
                   if value is None or (isinstance(value, float) and not np.isfinite(value))]
    else:
        missing = []
    if len(missing):
        row = int(missing[0])
        raise ValueError(f"y, row {row}: label {y.tolist()[row]!r} is missing or not finite; give every "
                         "row a class or remove the row")
    try:
        classes, ids = np.unique(y, return_inverse=True)
    except TypeError as error:
        raise ValueError(f"y: labels cannot be ordered ({error}); use one kind of label "
                         "(numbers or text) for every row") from None
    if len(classes) < 2:
        raise ValueError(f"y holds a single class ({classes[0]!r}); training needs at least two")
    return classes, ids.astype(np.int64).ravel()


def _features(X, what: str):
    """X as a 2-D float64 array, and its column names (a DataFrame's, else x0, x1, ...)."""
    names = None
    if hasattr(X, "columns"):
        names = [str(name) for name in X.columns]
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: features must be numbers ({error})") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what}: features must be a non-empty 2-D array, got shape "
                         f"{array.shape}")
    return array, names or [f"x{column}" for column in range(array.shape[1])]


class VerticalMLPClassifier(ClassifierMixin, BaseEstimator):
    """The two-party MLP of ACML as a scikit-learn classifier (both parties in this process).

    The parameters are ``acml.Config``'s (defaults: the headline run, nn.HEADLINE), plus
    ``sigma`` (the statistical mask margin, at least 40 bits unless ``allow_insecure``),
    ``key_bits`` (the data party's Paillier key; at least 1024 unless ``allow_insecure``) and
    ``progress`` (tqdm bars and the time estimate on stderr). ``allow_insecure=True`` accepts
    keys under 1024 bits and σ under 40 bits: tests and demos only.

    ``init_seed`` None (the default) lets the data party draw W0 from ``secrets``, as in a
    deployment: two fits then differ. Give it to reproduce a fit exactly.

    ``dp_epsilon``/``dp_delta``: the data party's input perturbation, (ε, δ)-DP for each row of
    X against the label party (privacy/input_perturbation.py; None: off, the default, and then
    the label party learns X from two epochs of z). X is then expected standardised (rows are
    clipped to L2 norm √d); the rows given to predict are perturbed too, each call with fresh
    noise. With ``init_seed`` the noise is reproducible as well.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``result_`` (the acml.Result: both
    parties, the channel, the plaintext twin and the metrics), ``metrics_``.
    """

    def __init__(self, hidden=nn.HEADLINE["hidden"], activation=nn.HEADLINE["activation"],
                 epochs=nn.HEADLINE["epochs"], batch_size=nn.HEADLINE["batch_size"],
                 lr=nn.HEADLINE["lr"], momentum=nn.HEADLINE["momentum"], key_bits=2048,
                 sigma=40, packing=True, bottom=None, seed=nn.HEADLINE["seed"], init_seed=None,
                 allow_insecure=False, progress=False, dp_epsilon=None, dp_delta=None):
        self.hidden = hidden
        self.activation = activation
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.key_bits = key_bits
        self.sigma = sigma
        self.packing = packing
        self.bottom = bottom
        self.seed = seed
        self.init_seed = init_seed
        self.allow_insecure = allow_insecure
        self.progress = progress
        self.dp_epsilon = dp_epsilon
        self.dp_delta = dp_delta

    def config(self):
        """The acml.Config these parameters mean (checked as the CLI checks its flags)."""
        check_sigma(self.sigma, self.allow_insecure, "sigma")
        input_perturbation.check_options(self.dp_epsilon, self.dp_delta)
        if not self.allow_insecure and self.key_bits < paillier.INSECURE_KEY_BITS:
            raise ValueError(f"key_bits {self.key_bits} is under {paillier.INSECURE_KEY_BITS} "
                             "bits and not secure; pass allow_insecure=True for tests and demos")
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        return Config(hidden=hidden, activation=self.activation, epochs=self.epochs,
                      batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                      key_bits=self.key_bits, seed=self.seed, allow_insecure=self.allow_insecure,
                      plan=FixedPointPlan(sigma=self.sigma),
                      allow_insecure_sigma=self.allow_insecure, bottom=self.bottom,
                      init_seed=self.init_seed, packing=self.packing,
                      dp_epsilon=self.dp_epsilon, dp_delta=self.dp_delta)

    def fit(self, X, y):
        """Train both parties on (X, y) with acml.train (no test split; no standardisation)."""
        import warnings
        config = self.config()
        X, names = _features(X, "X")
        classes, ids = encode_labels(y, X.shape[0])
        dataset = data.Dataset(X, ids, np.arange(X.shape[0]), names,
                               [str(c) for c in classes], name="X")
        n_inputs = X.shape[1] if config.bottom is None else (
            config.bottom if isinstance(config.bottom, int) else config.bottom[0])
        config.plan.check_key(config.key_bits, config.batch_size, n_inputs)
        with warnings.catch_warnings():
            if self.allow_insecure:
                warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
            result = train(dataset, None, config, progress=self.progress,
                           estimate=self.progress)
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.feature_names_ = names
        self.result_ = result
        self.metrics_ = result.metrics
        return self

    def _check_fitted(self):
        if not hasattr(self, "result_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def predict_scores(self, X) -> np.ndarray:
        """The label party's scores from the encrypted prediction: P(classes_[1]) of shape
        (m,) for two classes, the softmax (m, k) otherwise."""
        self._check_fitted()
        X, _ = _features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns; the model was fitted on "
                             f"{self.n_features_in_}")
        result = self.result_
        check_features(X, result.data_party.plan, what="X", names=self.feature_names_)
        X = input_perturbation.perturb_rows(result.input_perturbation, X, result.data_party.plan)
        return predict_encrypted(result.channel, result.data_party, result.label_party, X,
                                 progress=self.progress)

    def predict_proba(self, X) -> np.ndarray:
        """(m, k) probabilities, columns in ``classes_`` order, from the encrypted prediction."""
        return nn.probabilities(self.predict_scores(X))

    def predict(self, X) -> np.ndarray:
        """The predicted labels (values of ``classes_``), from the encrypted prediction."""
        model = self.result_.label_party.model if hasattr(self, "result_") else None
        scores = self.predict_scores(X)
        return self.classes_[model.classes_from_scores(scores)]

    def to_plain_model(self, *, i_understand_this_reveals_the_weights: bool = False):
        """The plaintext model W = W_B + ε_acc, as acml.PlainModel (no standardisation: the
        identity). Combining the shares is possible only because both parties live here; it
        ends the weights' privacy, hence the explicit consent (as acml.export_model)."""
        self._check_fitted()
        if not i_understand_this_reveals_the_weights:
            raise ValueError("to_plain_model combines both parties' shares into the plaintext "
                             "weights; consent with i_understand_this_reveals_the_weights=True")
        result = self.result_
        label = result.label_party
        mlp = nn.MLP(list(label.layer_sizes), activation=label.model.activation,
                     loss=label.model.loss)
        mlp.layers[0].W = joint_first_layer(result.data_party, label)
        mlp.layers[0].b = label.model.layers[0].b.copy()
        for mine, theirs in zip(mlp.layers[1:], label.model.layers[1:]):
            mine.W, mine.b = theirs.W.copy(), theirs.b.copy()
        bottom = result.data_party.bottom
        width = self.n_features_in_
        return PlainModel(mlp, np.zeros(width), np.ones(width), list(self.feature_names_),
                          list(self.classes_), None if bottom is None else bottom.copy())
