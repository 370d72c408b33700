"""A scikit-learn estimator for the simulated two-party setting: both parties in this process.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), acml.VerticalMLPClassifier(key_bits=2048))
    model.fit(X_train, y_train).score(X_test, y_test)

A module of its own because it is the only part of ACML that leans on scikit-learn (its base
classes give get_params/set_params, clone and score; its validation gives X and y the checks
and messages every scikit-learn estimator has, so check_estimator passes); the protocol and the parties stay pure
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

import dataclasses
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import nn
import paillier
from jobs import data
from jobs.checkpoint import DataPartyState, LabelPartyState
from jobs.export import PlainModel
from jobs.settings import Config
from jobs.simulation import predict_encrypted, restored_for_prediction, train
from plan import FixedPointPlan, check_features, check_sigma
from privacy import input_perturbation


def refuse_missing_labels(y) -> None:
    """A missing label (NaN, None, inf) is refused naming its row, before anything else looks
    at y (scikit-learn's own check would say only "Input y contains NaN")."""
    if y is None:
        return
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        return
    if y.dtype.kind == "f":
        missing = np.flatnonzero(~np.isfinite(y))
    elif y.dtype.kind == "O":
        missing = [row for row, value in enumerate(y.tolist())
                   if value is None or (isinstance(value, float) and not np.isfinite(value))]
    else:
        missing = []
    if len(missing):
        row = int(missing[0])
        raise ValueError(f"y, row {row}: label {y.tolist()[row]!r} is missing or not finite; "
                         "give every row a class or remove the row")


def encode_labels(y, n_rows: int):
    """(classes, class ids) for labels of any sklearn kind (ints, floats, strings, bools):
    classes in sorted order (``np.unique``), as sklearn's classifiers order ``classes_``.

    Refused with one line: a shape that is not (n_rows,), a missing label (NaN, None, inf)
    naming its row, labels that cannot be compared (numbers mixed with text), a continuous
    target (scikit-learn's "Unknown label type"), one class only.
    """
    refuse_missing_labels(y)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n_rows,):
        raise ValueError(f"y must be 1-D with one label per row of X ({n_rows}), "
                         f"got shape {y.shape}")
    try:
        classes, ids = np.unique(y, return_inverse=True)
    except TypeError as error:
        raise ValueError(f"y: labels cannot be ordered ({error}); use one kind of label "
                         "(numbers or text) for every row") from None
    check_classification_targets(y)
    if len(classes) < 2:
        raise ValueError(f"y holds a single class ({classes[0]!r}), one class only; training "
                         "needs at least two")
    return classes, ids.astype(np.int64).ravel()


def refuse_non_finite(X, names) -> None:
    """The first NaN or inf of X, named by row and column (the CLI's words; scikit-learn's
    checks look for "NaN" or "inf" in the message)."""
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        row, column = (int(index) for index in bad[0])
        raise ValueError(f"X: non-finite value {X[row, column]} in row {row} (id {row}), column "
                         f"{names[column]!r}: NaN and inf have no fixed-point encoding")


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

    ``class_weight``: the label party's loss weights, as scikit-learn's classifiers take them —
    None, "balanced" (n / (classes · n_k), from the training labels) or a dict {label: weight}
    (labels absent from it weigh 1). The plaintext twin trains with the same weights.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``feature_names_in_`` (only when X
    had string column names, as in scikit-learn), ``class_weight_`` (the numbers trained
    with, in ``classes_`` order, or None), ``result_`` (the acml.Result: both parties, the
    channel, the plaintext twin and the metrics; None after unpickling), ``metrics_``.

    Pickling keeps each party's state — the label party's weight share and layers, the data
    party's ε_acc and bottom model — and none of the secrets of the run: no key pair, no mask,
    no noise seed. Unpickling draws a fresh key pair of the same size (and fresh noise seeds);
    since z = X·W is exact under any key, the unpickled model predicts what the pickled one did.
    The caveat: one pickle holds both shares of W, as this one process does; whoever reads it
    can add them (``to_plain_model`` does it with consent).
    """

    def __init__(self, hidden=nn.HEADLINE["hidden"], activation=nn.HEADLINE["activation"],
                 epochs=nn.HEADLINE["epochs"], batch_size=nn.HEADLINE["batch_size"],
                 lr=nn.HEADLINE["lr"], momentum=nn.HEADLINE["momentum"], key_bits=2048,
                 sigma=40, packing=True, bottom=None, seed=nn.HEADLINE["seed"], init_seed=None,
                 allow_insecure=False, progress=False, dp_epsilon=None, dp_delta=None,
                 class_weight=None):
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
        self.class_weight = class_weight

    def config(self, classes=None):
        """The acml.Config these parameters mean (checked as the CLI checks its flags);
        ``classes`` (the fitted labels) turn a class_weight dict into class-id order."""
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
                      dp_epsilon=self.dp_epsilon, dp_delta=self.dp_delta,
                      class_weight=self._class_weight_setting(classes))

    def _class_weight_setting(self, classes):
        weight = self.class_weight
        if weight is None or isinstance(weight, str) or classes is None:
            return weight
        if not isinstance(weight, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict {{label: weight}}, "
                             f"got {weight!r}")
        known = {value.item() if hasattr(value, "item") else value for value in classes}
        unknown = [label for label in weight if label not in known]
        if unknown:
            raise ValueError(f"class_weight names label {unknown[0]!r}, which y does not hold "
                             f"(its classes: {', '.join(map(str, classes))})")
        return [float(weight.get(label.item() if hasattr(label, "item") else label, 1.0))
                for label in classes]

    def _names(self) -> list:
        if hasattr(self, "feature_names_in_"):
            return [str(name) for name in self.feature_names_in_]
        return [f"x{column}" for column in range(self.n_features_in_)]

    def fit(self, X, y):
        """Train both parties on (X, y) with acml.train (no test split; no standardisation).
        X and y pass scikit-learn's validation first (shape, dtype, sparse, complex, empty);
        NaN and inf are then refused naming the row and column, as the CLI does."""
        refuse_missing_labels(y)
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False,
                             reset=True)
        classes, ids = encode_labels(y, X.shape[0])
        config = self.config(classes)
        names = self._names()
        refuse_non_finite(X, names)
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
        weights = result.label_party.model.class_weight
        self.class_weight_ = None if weights is None else weights.copy()
        self.result_ = result
        self.metrics_ = result.metrics
        self._perturbation = result.input_perturbation
        self._data_state = DataPartyState.of(result.data_party, epochs_completed=self.epochs,
                                             feature_names=names,
                                             input_perturbation=result.input_perturbation)
        self._label_state = LabelPartyState.of(result.label_party, epochs_completed=self.epochs,
                                               class_names=[str(c) for c in classes])
        return self

    # Pickling: each party's state without the run's secrets, which unpickling draws afresh.

    def __getstate__(self):
        state = dict(self.__dict__)
        if "_data_state" in state:
            state["result_"] = None  # the parties' engines, the channel: live objects
            state["_perturbation"] = None
            state["_key_bits"] = state["_data_state"].public_key.n.bit_length()
            # No secret that prediction does not need: not the key pair, not the seed of W0 and
            # of the bottom model (init_seed, which with --init-seed also derives the DP noise
            # seed), not the noise seed, and not the digest of y (a small y can be found by
            # trying every labelling against it); a review found the last two kept.
            state["_data_state"] = dataclasses.replace(state["_data_state"], keypair=None,
                                                       perturbation_seed=None, init_seed=None)
            state["_label_state"] = dataclasses.replace(state["_label_state"], public_key=None,
                                                        labels_sha256="")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state.get("_data_state") is None:
            return
        data_state, label_state = state["_data_state"], state["_label_state"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
            keypair = paillier.generate_keypair(state.pop("_key_bits"),
                                                allow_insecure=self.allow_insecure)
        self.__dict__.pop("_key_bits", None)
        self._data_state = dataclasses.replace(data_state, keypair=keypair)
        self._label_state = dataclasses.replace(label_state, public_key=keypair[0])
        budget = input_perturbation.check_options(self.dp_epsilon, self.dp_delta)
        clip = None if data_state.perturbation is None else data_state.perturbation["clip"]
        self._perturbation = input_perturbation.for_data_party(budget, purpose="predict",
                                                               clip=clip)

    def _rows(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False, reset=False)
        plan = self._data_state.plan
        refuse_non_finite(X, self._names())
        check_features(X, plan, what="X", names=self._names())
        return input_perturbation.perturb_rows(self._perturbation, X, plan)

    def predict_scores(self, X) -> np.ndarray:
        """The label party's scores from the encrypted prediction: P(classes_[1]) of shape
        (m,) for two classes, the softmax (m, k) otherwise. After unpickling, the parties are
        rebuilt from their states under the fresh key."""
        X = self._rows(X)
        result = getattr(self, "result_", None)
        if result is not None:
            return predict_encrypted(result.channel, result.data_party, result.label_party, X,
                                     progress=self.progress)
        channel, data_party, label_party, _ = restored_for_prediction(self._data_state,
                                                                      self._label_state, X)
        return predict_encrypted(channel, data_party, label_party, X, progress=self.progress)

    def predict_proba(self, X) -> np.ndarray:
        """(m, k) probabilities, columns in ``classes_`` order, from the encrypted prediction."""
        return nn.probabilities(self.predict_scores(X))

    def predict(self, X) -> np.ndarray:
        """The predicted labels (values of ``classes_``), from the encrypted prediction."""
        scores = self.predict_scores(X)
        sizes = self._label_state.layer_sizes
        if sizes[-1] == 1:
            return self.classes_[nn.decide(scores)]
        return self.classes_[scores.argmax(axis=1)]

    def to_plain_model(self, *, i_understand_this_reveals_the_weights: bool = False):
        """The plaintext model W = W_B + ε_acc, as acml.PlainModel (no standardisation: the
        identity). Combining the shares is possible only because both parties live here; it
        ends the weights' privacy, hence the explicit consent (as acml.export_model)."""
        check_is_fitted(self)
        if not i_understand_this_reveals_the_weights:
            raise ValueError("to_plain_model combines both parties' shares into the plaintext "
                             "weights; consent with i_understand_this_reveals_the_weights=True")
        data_state, label_state = self._data_state, self._label_state
        training = label_state.training
        mlp = nn.MLP(list(label_state.layer_sizes), activation=training["activation"])
        mlp.layers[0].W = (label_state.weight_share + data_state.noise_acc).decode()
        for name, value in label_state.parameters.items():
            _, index, attribute = name.split(".")
            setattr(mlp.layers[int(index)], attribute, np.array(value, dtype=np.float64))
        bottom = data_state.bottom
        width = self.n_features_in_
        return PlainModel(mlp, np.zeros(width), np.ones(width), self._names(),
                          list(self.classes_), None if bottom is None else bottom.copy())
