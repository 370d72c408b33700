"""A minimal numpy multilayer perceptron with hand-written backpropagation (float64 throughout).

Every layer is an object with ``forward(x)`` (which caches what the backward pass needs) and
``backward(dout) -> dx``, where ``dout`` is dL/d(output) and ``dx`` is dL/d(input). A Dense layer
additionally stores dL/dW and dL/db in ``dW`` and ``db``.

The first Dense layer is special in the two-party protocol: it is the *interactive layer*,
computed under Paillier encryption because the data party holds X and (masked) W while the
label party holds the labels and everything above. ``MLP.forward`` is therefore written as
``forward_top(layers[0].forward(X))`` so that the plaintext path and the encrypted path run
exactly the same code above the first layer's pre-activation z = X W + b.

Randomness here (initialisation, batch order) is public and reproducible by design: numpy's
seeded generators are used. Secrets (keys, masks) never come from this module.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np

# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _as_float_matrix(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (batch, features) array, got shape {x.shape}")
    return x


class Dense:
    """Affine layer ``out = x @ W + b`` with W of shape (n_in, n_out) and b of shape (n_out,).

    Backward, for dout = dL/dout of shape (m, n_out):
        dW = x^T dout,   db = sum over the batch of dout,   dx = dout W^T.

    Initialisation: ``"he"`` draws W ~ N(0, 2/n_in) (keeps ReLU activations' variance stable);
    ``"glorot"`` draws W ~ U(-a, a) with a = sqrt(6/(n_in+n_out)) (for sigmoid/tanh/identity).
    b starts at zero. ``with_weight=False`` builds the layer without drawing W (``W is None``):
    that is how the label party holds the interactive layer, whose W belongs to the data party.
    """

    def __init__(self, n_in: int, n_out: int, *, rng: np.random.Generator, init: str = "he",
                 with_weight: bool = True):
        if int(n_in) != n_in or int(n_out) != n_out or n_in < 1 or n_out < 1:
            raise ValueError(f"Dense sizes must be positive integers, got n_in={n_in}, n_out={n_out}")
        self.n_in, self.n_out = int(n_in), int(n_out)
        if init not in ("he", "glorot"):
            raise ValueError(f"unknown init {init!r}; expected 'he' or 'glorot'")
        self.init = init
        self.W: np.ndarray | None = None
        if with_weight:
            if init == "he":
                self.W = rng.standard_normal((self.n_in, self.n_out)) * np.sqrt(2.0 / self.n_in)
            else:
                limit = np.sqrt(6.0 / (self.n_in + self.n_out))
                self.W = rng.uniform(-limit, limit, size=(self.n_in, self.n_out))
        self.b = np.zeros(self.n_out, dtype=np.float64)
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None
        self.x: np.ndarray | None = None

    def forward(self, x) -> np.ndarray:
        if self.W is None:
            raise ValueError("this Dense layer holds no weight (built with with_weight=False; "
                             "the data party owns W), so it cannot run forward")
        x = _as_float_matrix(x, "Dense input")
        if x.shape[1] != self.n_in:
            raise ValueError(f"Dense input has {x.shape[1]} features, layer expects {self.n_in}")
        self.x = x
        return x @ self.W + self.b

    def backward_bias(self, dout) -> np.ndarray:
        """Fill and return ``db`` = sum over the batch of dout. Needs no cached input, so the
        label party (which never sees X) can compute the interactive layer's bias gradient."""
        dout = _as_float_matrix(dout, "Dense upstream gradient")
        if dout.shape[1] != self.n_out:
            raise ValueError(f"upstream gradient has {dout.shape[1]} columns, layer has {self.n_out}")
        self.db = dout.sum(axis=0)
        return self.db

    def backward(self, dout) -> np.ndarray:
        if self.x is None or self.W is None:
            raise ValueError("Dense.backward called before forward (or on a layer without W)")
        dout = _as_float_matrix(dout, "Dense upstream gradient")
        if dout.shape != (self.x.shape[0], self.n_out):
            raise ValueError(f"upstream gradient shape {dout.shape} does not match the layer "
                             f"output shape {(self.x.shape[0], self.n_out)}")
        self.dW = self.x.T @ dout
        self.backward_bias(dout)
        return dout @ self.W.T


class ReLU:
    """relu(x) = max(x, 0); derivative 1 where x > 0, else 0 (0 chosen at the kink x = 0)."""

    def forward(self, x):
        x = np.asarray(x, dtype=np.float64)
        self.positive = x > 0
        return np.where(self.positive, x, 0.0)

    def backward(self, dout):
        return np.where(self.positive, dout, 0.0)


def sigmoid(x):
    """Logistic function 1/(1+e^-x), evaluated without overflow for large |x|: only
    e^{-|x|} <= 1 is ever computed."""
    x = np.asarray(x, dtype=np.float64)
    decay = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + decay), decay / (1.0 + decay))


class Sigmoid:
    """s = sigmoid(x); ds/dx = s (1 - s), computed from the cached output."""

    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)


class Tanh:
    """t = tanh(x); dt/dx = 1 - t^2, computed from the cached output."""

    def forward(self, x):
        self.out = np.tanh(np.asarray(x, dtype=np.float64))
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out ** 2)


class Identity:
    """f(x) = x. Useful for a linear interactive layer (the paper's plain logistic regression)."""

    def forward(self, x):
        return np.asarray(x, dtype=np.float64)

    def backward(self, dout):
        return np.asarray(dout, dtype=np.float64)


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "identity": Identity}
INIT_FOR_ACTIVATION = {"relu": "he", "sigmoid": "glorot", "tanh": "glorot", "identity": "glorot"}

# --------------------------------------------------------------------------------------------
# Losses: each returns (mean loss over the batch, dL/dlogits) with dL/dlogits already divided
# by the batch size m.
# --------------------------------------------------------------------------------------------


def _class_ids(y, m: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (m,):
        raise ValueError(f"labels must have shape ({m},), got {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    if m and (y.min() < 0 or y.max() >= n_classes):
        bad = y[(y < 0) | (y >= n_classes)][0]
        raise ValueError(f"label {bad} is outside the class range 0..{n_classes - 1}")
    return y.astype(np.int64)


def softmax(logits) -> np.ndarray:
    """Row-wise softmax; the row maximum is subtracted first so exp never overflows."""
    logits = _as_float_matrix(logits, "logits")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _row_weights(class_weight, y: np.ndarray, n_classes: int) -> np.ndarray | None:
    """w[y_i] for each row, or None when there are no class weights (then nothing is multiplied,
    so an unweighted run stays bit for bit what it was)."""
    if class_weight is None:
        return None
    weights = np.asarray(class_weight, dtype=np.float64)
    if weights.shape != (n_classes,):
        raise ValueError(f"class weights must be {n_classes} numbers, one per class, "
                         f"got shape {weights.shape}")
    return weights[y]


def softmax_cross_entropy(logits, y, class_weight=None):
    """Mean over the batch of -log softmax(logits)[y].

    With shifted = logits - max (per row), -log p_y = log sum_j e^{shifted_j} - shifted_y
    (log-sum-exp), which is finite for any finite logits. Gradient: (softmax - onehot(y)) / m.

    ``class_weight`` (one number per class, or None): row i's loss and gradient are multiplied
    by w[y_i], and the sum is still divided by m (not by the weights' sum), so that with
    "balanced" weights (:func:`balanced_class_weights`, mean 1 over the training rows) the
    learning rate keeps its meaning. The caveat: a batch's loss then depends on how many rows
    of each class it drew.
    """
    logits = _as_float_matrix(logits, "logits")
    m, n_classes = logits.shape
    if m == 0:
        raise ValueError("cannot compute a loss over an empty batch")
    y = _class_ids(y, m, n_classes)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(m)
    dlogits = np.exp(shifted - log_sum_exp[:, None])
    dlogits[rows, y] -= 1.0
    weights = _row_weights(class_weight, y, n_classes)
    if weights is None:
        return float(np.mean(log_sum_exp - shifted[rows, y])), dlogits / m
    loss = float(np.mean(weights * (log_sum_exp - shifted[rows, y])))
    return loss, dlogits * weights[:, None] / m


def sigmoid_binary_cross_entropy(logits, y, class_weight=None):
    """Mean over the batch of -[y log s + (1-y) log(1-s)] with s = sigmoid(z), y in {0, 1}.

    Algebraically this equals log(1 + e^z) - y z, evaluated as ``logaddexp(0, z) - y z`` so it
    stays finite for any finite z (no log(0)). Gradient: (sigmoid(z) - y) / m, returned in the
    logits' own shape, (m, 1) or (m,). ``class_weight`` (two numbers, for classes 0 and 1):
    row i's loss and gradient times w[y_i], as in :func:`softmax_cross_entropy`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not (logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)):
        raise ValueError(f"binary logits must have shape (m,) or (m, 1), got {logits.shape}")
    z = logits.reshape(-1)
    m = z.shape[0]
    if m == 0:
        raise ValueError("cannot compute a loss over an empty batch")
    y = np.asarray(y)
    if y.shape == (m, 1):
        y = y.reshape(-1)
    ids = _class_ids(y, m, 2)
    target = ids.astype(np.float64)
    weights = _row_weights(class_weight, ids, 2)
    if weights is None:
        loss = float(np.mean(np.logaddexp(0.0, z) - target * z))
        dlogits = (sigmoid(z) - target) / m
    else:
        loss = float(np.mean(weights * (np.logaddexp(0.0, z) - target * z)))
        dlogits = weights * (sigmoid(z) - target) / m
    return loss, dlogits.reshape(logits.shape)


def mean_squared_error(pred, y, class_weight=None):
    """Mean over the batch of the per-example squared error sum_j (pred_j - y_j)^2.

    Gradient: 2 (pred - y) / m. For a single output, y may be (m,) while pred is (m, 1).
    A regression loss has no classes: ``class_weight`` must be None.
    """
    if class_weight is not None:
        raise ValueError("class weights need a classification loss, not mse")
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if pred.ndim == 0 or pred.shape[0] == 0:
        raise ValueError("cannot compute a loss over an empty batch")
    if target.shape != pred.shape:
        if target.size == pred.size and target.ndim == 1 and pred.shape == (target.shape[0], 1):
            target = target.reshape(pred.shape)
        else:
            raise ValueError(f"targets of shape {target.shape} do not match predictions {pred.shape}")
    m = pred.shape[0]
    diff = pred - target
    loss = float(np.sum(diff ** 2) / m)
    return loss, 2.0 * diff / m


LOSSES = {"softmax_ce": softmax_cross_entropy, "sigmoid_bce": sigmoid_binary_cross_entropy,
          "mse": mean_squared_error}

BALANCED = "balanced"


def balanced_class_weights(y, n_classes: int) -> np.ndarray:
    """w_k = n / (n_classes · n_k), n_k the rows of class k among the n labels y: every class
    then weighs n / n_classes in total, and the weights' mean over the rows is 1 (scikit-learn's
    "balanced"). A class with no row has no such weight: refused, naming it."""
    y = _class_ids(np.asarray(y), len(y), n_classes)
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class weight 'balanced': class {int(np.flatnonzero(counts == 0)[0])} "
                         "has no training row, so it has no weight")
    return len(y) / (n_classes * counts.astype(np.float64))


def class_weights(spec, y, n_classes: int) -> np.ndarray | None:
    """The per-class loss weights a run trains with, from its setting ``spec``: None (none:
    every row weighs 1), "balanced" (:func:`balanced_class_weights` of the training labels y),
    or a sequence of n_classes positive finite numbers, in class-id order. Only the label
    party can compute "balanced": it alone holds y."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != BALANCED:
            raise ValueError(f"class weight {spec!r}: expected 'balanced' or one number per class")
        return balanced_class_weights(y, n_classes)
    weights = np.asarray(spec, dtype=np.float64)
    if weights.shape != (n_classes,):
        raise ValueError(f"class weights {list(np.ravel(weights))}: expected {n_classes} numbers, "
                         "one per class")
    if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
        raise ValueError(f"class weights {weights.tolist()}: each must be a finite number > 0")
    return weights

# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def init_layer(layer_sizes, index: int, activation: str = "relu", seed: int = 0, *,
               with_weight: bool = True) -> Dense:
    """Build Dense layer ``index`` of an MLP exactly as ``MLP`` does.

    Each layer draws from its own generator ``np.random.default_rng([seed, index])``, so the
    data party can reproduce the interactive layer (index 0) without building the rest of the
    network, and the label party can build layers 1.. without ever drawing layer 0's weight.
    """
    sizes = [int(size) for size in layer_sizes]
    if not 0 <= index < len(sizes) - 1:
        raise ValueError(f"layer index {index} out of range for layer sizes {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    rng = np.random.default_rng([_check_seed(seed), index])
    return Dense(sizes[index], sizes[index + 1], rng=rng, init=INIT_FOR_ACTIVATION[activation],
                 with_weight=with_weight)


def class_weight_setting(class_weight):
    """A class-weight setting as JSON keeps it: None, "balanced", or a list of floats."""
    if class_weight is None or isinstance(class_weight, str):
        return class_weight
    return [float(weight) for weight in class_weight]


def check_threshold(threshold, positive_class: int = 1, n_outputs: int = 1,
                    loss: str = "sigmoid_bce") -> tuple:
    """(threshold, positive class) once they make sense: a threshold only for two classes (one
    sigmoid output), strictly inside (0, 1); the positive class 0 or 1."""
    if positive_class not in (0, 1) or isinstance(positive_class, bool):
        raise ValueError(f"the positive class must be class id 0 or 1, got {positive_class!r}")
    if threshold is None:
        return None, int(positive_class)
    if loss != "sigmoid_bce" or n_outputs != 1:
        raise ValueError(f"a decision threshold needs two classes (one sigmoid output); this "
                         f"network has {n_outputs} outputs")
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float, np.floating))
                                           and 0.0 < float(threshold) < 1.0):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return float(threshold), int(positive_class)


def set_decision(model: MLP, class_names, threshold=None, positive_class=None) -> None:
    """Replace the model's decision threshold and positive class (given by name), where given;
    one line for a class that does not exist or a threshold on more than two classes."""
    names = [str(name) for name in class_names]
    positive = model.positive_class
    if positive_class is not None:
        if str(positive_class) not in names:
            raise ValueError(f"--positive-class: no class {positive_class!r}; the classes are "
                             f"{', '.join(names)}")
        if len(names) != 2:
            raise ValueError(f"--positive-class is for two classes; the model has {len(names)}")
        positive = names.index(str(positive_class))
    if threshold is not None and len(names) != 2:
        raise ValueError(f"--threshold is for two classes; the model has {len(names)}")
    model.threshold, model.positive_class = check_threshold(
        model.threshold if threshold is None else threshold, positive, model.layer_sizes[-1],
        model.loss)


def decide(scores, threshold=None, positive_class: int = 1) -> np.ndarray:
    """Class ids from P(class 1) of a binary model: with ``threshold`` None, class 1 where
    P(class 1) >= 0.5; else ``positive_class`` where its own probability (P(class 1), or
    1 − P(class 1) for class 0) is at least ``threshold``, the other class elsewhere."""
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is None:
        return (scores >= 0.5).astype(np.int64)
    positive = (scores if positive_class == 1 else 1.0 - scores) >= threshold
    return np.where(positive, positive_class, 1 - positive_class).astype(np.int64)


class MLP:
    """Fully connected net: Dense -> act -> Dense -> act -> ... -> Dense (logits).

    ``layer_sizes`` = [n_features, hidden..., n_outputs]. The loss defaults to ``"sigmoid_bce"``
    for a single output and ``"softmax_ce"`` otherwise; ``"mse"`` is also accepted (then
    ``predict`` returns raw outputs, not class ids).

    ``first_layer_weight=False`` builds the label party's view: ``layers[0].W is None`` (never
    drawn) while ``layers[0].b`` and every layer above are identical to the full model's.

    ``class_weight``: per-class loss weights (:func:`class_weights`), or None. The loss is where
    they act, so the plaintext twin and the label party, which both call ``loss_and_grad``,
    weigh every row alike. ``threshold`` (two classes): the predicted class is
    ``positive_class`` when its probability is at least ``threshold``; None: class 1 when
    P(class 1) >= 0.5, as always.
    """

    def __init__(self, layer_sizes, activation: str = "relu", seed: int = 0, loss: str | None = None,
                 *, first_layer_weight: bool = True, class_weight=None, threshold=None,
                 positive_class: int = 1):
        sizes = list(layer_sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"layer_sizes must be >= 2 positive integers, got {layer_sizes!r}")
        self.layer_sizes = [int(s) for s in sizes]
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.seed = _check_seed(seed)
        if loss is None:
            loss = "sigmoid_bce" if self.layer_sizes[-1] == 1 else "softmax_ce"
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
        if loss == "sigmoid_bce" and self.layer_sizes[-1] != 1:
            raise ValueError("sigmoid_bce needs a single output unit")
        if loss == "softmax_ce" and self.layer_sizes[-1] < 2:
            raise ValueError("softmax_ce needs at least two output units")
        self.loss = loss
        self.class_weight = None if class_weight is None else np.asarray(class_weight, np.float64)
        self.threshold, self.positive_class = check_threshold(threshold, positive_class,
                                                              self.layer_sizes[-1], loss)
        self.layers = [
            init_layer(self.layer_sizes, index, activation, self.seed,
                       with_weight=first_layer_weight or index > 0)
            for index in range(len(self.layer_sizes) - 1)
        ]
        self.activations = [ACTIVATIONS[activation]() for _ in self.layers[:-1]]

    # The split: layers[0] is the interactive layer; forward_top/backward_top are everything above.

    def forward_top(self, z) -> np.ndarray:
        """Logits from the interactive layer's pre-activation z = X W0 + b0 (shape (m, h1))."""
        hidden = _as_float_matrix(z, "interactive-layer output z")
        for activation, layer in zip(self.activations, self.layers[1:]):
            hidden = layer.forward(activation.forward(hidden))
        return hidden

    def backward_top(self, dlogits) -> np.ndarray:
        """Backpropagate dL/dlogits through layers[1:] (filling their dW, db); return dL/dz.

        Layer 0's gradients are not touched: the plaintext path gets them from
        ``layers[0].backward(dz)``; the label party, which has no X, calls
        ``layers[0].backward_bias(dz)`` for db0 and sends dz onward (encrypted) for dW0.
        """
        grad = np.asarray(dlogits, dtype=np.float64)
        if grad.ndim == 1:  # a binary loss may hand back (m,) gradients for (m, 1) logits
            grad = grad[:, None]
        for activation, layer in zip(reversed(self.activations), reversed(self.layers[1:])):
            grad = activation.backward(layer.backward(grad))
        return grad

    def forward(self, X) -> np.ndarray:
        return self.forward_top(self.layers[0].forward(X))

    def backward(self, dlogits) -> np.ndarray:
        return self.layers[0].backward(self.backward_top(dlogits))

    def loss_and_grad(self, logits, y):
        if self.class_weight is None:
            return LOSSES[self.loss](logits, y)
        return LOSSES[self.loss](logits, y, class_weight=self.class_weight)

    def scores_from_logits(self, logits) -> np.ndarray:
        """sigmoid probabilities (m,) for sigmoid_bce; softmax (m, k) for softmax_ce;
        raw outputs for mse ((m,) when there is a single output). Shared by the plaintext and
        the encrypted prediction paths, which differ only in how the logits were computed."""
        logits = _as_float_matrix(logits, "logits")
        if self.loss == "sigmoid_bce":
            return sigmoid(logits[:, 0])
        if self.loss == "softmax_ce":
            return softmax(logits)
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def classes_from_scores(self, scores) -> np.ndarray:
        """Class ids (int64) for the classification losses (threshold 0.5 / argmax, or the
        model's ``threshold`` on P(positive_class)); for mse the scores themselves."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.loss == "sigmoid_bce":
            return decide(scores, self.threshold, self.positive_class)
        if self.loss == "softmax_ce":
            return scores.argmax(axis=1).astype(np.int64)
        return scores

    def predict_scores(self, X) -> np.ndarray:
        return self.scores_from_logits(self.forward(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_from_scores(self.predict_scores(X))

    def top_named_params(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(name, parameter, gradient) for everything the optimiser updates: layer 0's bias and
        all of layers[1:]. Layer 0's weight is excluded: it is always updated by plain SGD
        (W0 -= lr dW0), which the protocol's masking of W0 relies on."""
        yield "layers.0.b", self.layers[0].b, self.layers[0].db
        for index, layer in enumerate(self.layers[1:], start=1):
            yield f"layers.{index}.W", layer.W, layer.dW
            yield f"layers.{index}.b", layer.b, layer.db

    def named_params(self) -> Iterator[tuple[str, np.ndarray | None]]:
        """(name, parameter) for every parameter, layer 0's weight included (None if absent)."""
        for index, layer in enumerate(self.layers):
            yield f"layers.{index}.W", layer.W
            yield f"layers.{index}.b", layer.b


# --------------------------------------------------------------------------------------------
# The headline run's settings (``python acml.py train``: German credit, public seed 1)
# --------------------------------------------------------------------------------------------

# Chosen by a plaintext study (the encrypted run equals nn.train_plaintext up to quantisation):
# German credit, data.train_test_split(test_fraction=0.2, seed=s), data.Standardizer on the
# training part, W0 redrawn from several init seeds (as the data party's secret W0 is). A grid
# over width (8, 16, 32; two hidden layers too), epochs (3-20), lr (0.03-0.3), batch (32, 64),
# momentum (0-0.9), scored over splits 0-9 x 4-5 W0 draws: no setting beats scikit-learn's
# LogisticRegression by more than 0.005 AUC on average (best: width 32, AUC 0.788 vs 0.783) —
# on German credit logistic regression is about as good as it gets. tanh, not relu, is what
# fixes the ranking (the old relu (8,) lr 0.1 headline: AUC 0.62 on split 0); width 16 costs
# half of 32's encrypted work (rows x epochs x width) for 0.003-0.009 less AUC; more epochs
# overfit; momentum 0.9 on the layers above did not help; class weighting ("balanced") cost
# 0.06 accuracy for +0.002 AUC, so there is none; the decision threshold stays 0.5.
#
# The seed. The public seed draws the split, the batch order and the layers above. Seed 0's
# split is the one outlier of ten: logistic regression scores 0.680 on it, below the majority
# class (0.700), against 0.730-0.795 on seeds 1-9, so nothing shows on it whether a model
# learned. The default is seed 1: the smallest of the three seeds (1, 5, 6) whose split is
# closest to logistic regression's median over seeds 0-9 in both accuracy and AUC. Measured
# (seed s for split, batches and top layers; 10 W0 draws each; majority class 0.700 on all):
#
#   seed                      0      1      2      3      4      5      6      7      8      9    mean
#   logreg accuracy         0.680  0.765  0.795  0.740  0.775  0.760  0.760  0.765  0.730  0.775  0.755
#   HEADLINE accuracy       0.694  0.766  0.770  0.729  0.773  0.755  0.750  0.742  0.754  0.762  0.750
#   logreg AUC              0.727  0.779  0.812  0.756  0.844  0.779  0.784  0.773  0.791  0.785  0.783
#   HEADLINE AUC            0.728  0.786  0.803  0.730  0.834  0.776  0.778  0.758  0.803  0.786  0.778
#
# On seed 1 the worst of the 10 W0 draws still scores accuracy 0.750 and AUC 0.767. Stability:
# max |delta| = 0.027 at lr 0.3 (the protocol's bound is 16); tanh keeps |delta| < 0.5 even at
# lr 30, while relu (8,) blows up from lr 10.
# tests/test_nn.py::test_headline_defaults_beat_baselines re-measures this.
HEADLINE = dict(hidden=(16,), activation="tanh", epochs=3, lr=0.3, batch_size=64, momentum=0.0,
                seed=1)

# --------------------------------------------------------------------------------------------
# Optimiser and training
# --------------------------------------------------------------------------------------------


class SGD:
    """Stochastic gradient descent with optional (heavy-ball) momentum, updating in place.

    For each named parameter p with gradient g:  v <- momentum * v + g;  p <- p - lr * v
    (v starts at 0; with momentum = 0 this is exactly p <- p - lr * g). Velocities are keyed by
    parameter name, so the same optimiser can be driven from either party's view of the model.
    """

    def __init__(self, lr: float, momentum: float = 0.0):
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, named_params: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        for name, param, grad in named_params:
            if grad is None:
                raise ValueError(f"parameter {name!r} has no gradient; run backward first")
            if grad.shape != param.shape:
                raise ValueError(f"gradient shape {grad.shape} != parameter shape {param.shape} "
                                 f"for {name!r}")
            if self.momentum == 0.0:
                param -= self.lr * grad
                continue
            velocity = self.velocity.get(name)
            if velocity is None:
                velocity = self.velocity[name] = np.zeros_like(param, dtype=np.float64)
            velocity *= self.momentum
            velocity += grad
            param -= self.lr * velocity

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: velocity.copy() for name, velocity in self.velocity.items()}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = {str(name): np.array(value, dtype=np.float64) for name, value in state.items()}


def minibatches(n: int, batch_size: int, *, seed: int, epoch: int,
                block_rows: int = 0) -> list[np.ndarray]:
    """Indices 0..n-1 shuffled by ``np.random.default_rng([seed, epoch]).permutation(n)`` and
    cut into consecutive batches of ``batch_size`` (the last may be shorter). Both parties call
    this with the same public (seed, epoch) to agree on the batch order without talking.
    ``block_rows`` > 0: the batches of :func:`block_minibatches` instead."""
    if block_rows:
        return block_minibatches(n, batch_size, block_rows, seed=seed, epoch=epoch)
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    order = np.random.default_rng([_check_seed(seed), _check_seed(epoch)]).permutation(n)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def row_blocks(n: int, block_rows: int, *, seed: int) -> list[np.ndarray]:
    """The fixed row blocks of a run: ``default_rng([seed, 0, 1]).permutation(n)`` cut into
    blocks of ``block_rows`` rows, the same in every epoch; the last block holds the n mod b
    rows left over, if any. (The trailing 1 keeps this stream apart from minibatches'.)"""
    if n < 1 or isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) \
            or block_rows < 1:
        raise ValueError(f"need n >= 1 and block_rows >= 1, got n={n}, block_rows={block_rows!r}")
    order = np.random.default_rng([_check_seed(seed), 0, 1]).permutation(n)
    return [order[start:start + block_rows] for start in range(0, n, block_rows)]


def block_minibatches(n: int, batch_size: int, block_rows: int, *, seed: int,
                      epoch: int) -> list[np.ndarray]:
    """Batches made of whole row blocks (:func:`row_blocks`): each epoch shuffles the ORDER of
    the full blocks by ``default_rng([seed, epoch, 2])`` (the short block, if any, always goes
    last) and cuts it into runs of batch_size / block_rows blocks; the last batch may be
    shorter. A batch lists its blocks' rows block after block.

    Why: the rows that share a block share one packed ciphertext in step 1, so the data party
    can encrypt every block once, at setup, instead of every batch afresh (protocol.setup).
    The caveat: rows of one block always meet in the same batch, so the batches are less
    random than a row shuffle's (README, Performance, measures what that does to training).
    """
    blocks = row_blocks(n, block_rows, seed=seed)
    if batch_size < 1 or batch_size % block_rows:
        raise ValueError(f"the batch size {batch_size} must be a positive multiple of "
                         f"block_rows {block_rows}")
    full = n // block_rows
    order = list(np.random.default_rng([_check_seed(seed), _check_seed(epoch), 2])
                 .permutation(full)) + list(range(full, len(blocks)))
    per_batch = batch_size // block_rows
    return [np.concatenate([blocks[index] for index in order[start:start + per_batch]])
            for start in range(0, len(order), per_batch)]


def train_plaintext(mlp: MLP, X, y, *, epochs: int, batch_size: int, lr: float, seed: int = 0,
                    momentum: float = 0.0, block_rows: int = 0,
                    callback: Callable[[int, int, float], None] | None = None) -> dict:
    """Train ``mlp`` in place on (X, y) with minibatch SGD; the reference the protocol must match.

    Per batch: forward, loss, backward, then updates — layer 0's weight by plain SGD
    (W0 -= lr * dW0, never momentum), every other parameter (``mlp.top_named_params()``) by
    ``SGD(lr, momentum)``. Returns {"batch_loss": [...], "epoch_loss": [...]}, where an epoch's
    loss is the batch losses' mean weighted by batch size (the mean per-example loss seen).
    ``block_rows``: the batch order of :func:`block_minibatches` (0: of :func:`minibatches`).
    A run whose loss or weights stop being finite raises FloatingPointError (a one-line
    message naming the epoch and batch) instead of returning nan weights.
    """
    if mlp.layers[0].W is None:
        raise ValueError("this MLP has no first-layer weight (first_layer_weight=False); "
                         "plaintext training needs the full model")
    X = _as_float_matrix(X, "X")
    y = np.asarray(y)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    optimizer = SGD(lr, momentum)
    history = {"batch_loss": [], "epoch_loss": []}
    first = mlp.layers[0]
    for epoch in range(int(epochs)):
        weighted_loss = 0.0
        for batch_index, rows in enumerate(minibatches(X.shape[0], batch_size, seed=seed, epoch=epoch,
                                                           block_rows=block_rows)):
            # A diverging run overflows to inf/nan; numpy's warnings are replaced by the check
            # below, which stops at the first non-finite loss instead of returning nan weights.
            with np.errstate(over="ignore", invalid="ignore"):
                logits = mlp.forward(X[rows])
                loss, dlogits = mlp.loss_and_grad(logits, y[rows])
                mlp.backward(dlogits)
                first.W -= lr * first.dW
                optimizer.step(mlp.top_named_params())
            if not (np.isfinite(loss) and all(np.all(np.isfinite(p)) for _, p in mlp.named_params())):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}, batch {batch_index}: loss {loss}, or a "
                    f"weight, is not finite; lower the learning rate (lr={lr}, momentum={momentum})")
            history["batch_loss"].append(loss)
            weighted_loss += loss * len(rows)
            if callback is not None:
                callback(epoch, batch_index, loss)
        history["epoch_loss"].append(weighted_loss / X.shape[0])
    return history


# --------------------------------------------------------------------------------------------
# Metrics: the project's one AUC and one classification report (labels first, like sklearn)
# --------------------------------------------------------------------------------------------


def _metric_labels(labels, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class ids, got shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            raise ValueError(f"{what}: {labels[~whole][0]} at position "
                             f"{int(np.flatnonzero(~whole)[0])} is not a class id")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what}: class id {int(labels.min())} is negative")
    return labels


AUC_UNDEFINED = "one class in the test rows: AUC undefined"


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve for binary labels (1 = positive) and real scores (higher = more
    positive): the chance that a random positive scores above a random negative, ties counted
    half. Computed from ranks (Mann–Whitney U): with average ranks r (1-based, tied scores
    share the mean of their ranks), n1 positives and n0 negatives,

        AUC = (sum of the positives' ranks - n1 (n1 + 1) / 2) / (n1 n0).

    Returns nan when one class is absent (the curve is undefined). Labels must be 0/1 and
    scores finite, with one score per label.
    """
    labels = _metric_labels(labels, "labels")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"scores have shape {scores.shape} but labels have shape {labels.shape}")
    if labels.size and labels.max() > 1:
        raise ValueError(f"roc_auc needs binary labels 0/1, found class {int(labels.max())}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"score {scores[~np.isfinite(scores)][0]} at position "
                         f"{int(np.flatnonzero(~np.isfinite(scores))[0])} is not finite")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    # Runs of equal scores are contiguous once sorted; each run gets its average (1-based) rank.
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(labels.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def threshold_counts(labels, scores) -> tuple:
    """(last, TP) over the distinct scores taken as thresholds from the highest down: for each
    threshold t, ``last`` is the index (in score order, highest first) of the last row scoring
    ≥ t, so last + 1 rows are predicted positive, and TP how many of them are positives."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], labels[order]
    # the last row of each run of equal scores closes one threshold
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    return last, np.cumsum(hits)[last]


def average_precision(labels, scores) -> float:
    """Area under the precision–recall curve, as the step sum over the distinct scores t taken
    as thresholds from the highest down (scikit-learn's average_precision_score):

        AP = sum_t (R_t − R_{t−1}) · P_t,   P_t = TP_t / (TP_t + FP_t),  R_t = TP_t / n1,

    TP_t, FP_t the positives and negatives scoring ≥ t, R_0 = 0. A constant guess scores the
    positive rate n1 / n (not 0.5, as ROC AUC): on rare classes the number to read. Returns nan
    when there is no positive (the recall is undefined). Labels 0/1, finite scores.
    """
    labels = _metric_labels(labels, "labels")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"scores have shape {scores.shape} but labels have shape {labels.shape}")
    if labels.size and labels.max() > 1:
        raise ValueError(f"average_precision needs binary labels 0/1, found class "
                         f"{int(labels.max())}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"score {scores[~np.isfinite(scores)][0]} at position "
                         f"{int(np.flatnonzero(~np.isfinite(scores))[0])} is not finite")
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    last, true_positives = threshold_counts(labels, scores)
    precision = true_positives / (last + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, and 0.0 when the denominator is 0 (as scikit-learn's
    zero_division=0: a class never predicted has precision 0, never nan)."""
    return float(numerator / denominator) if denominator else 0.0


def classification_report(labels, predicted, scores=None, n_classes: int | None = None, *,
                          positive_class: int = 1) -> dict:
    """Test-set metrics for class ids ``labels`` (true) and ``predicted``, both 0..n_classes-1.

    ``n_classes`` defaults to 1 + the largest id seen (at least 2). Returns a JSON-ready dict:

    * ``n``, ``n_classes``; ``accuracy`` = fraction predicted right;
    * ``balanced_accuracy``: the mean over the classes present in ``labels`` of their recall
      (scikit-learn's balanced_accuracy_score): 1/k for a constant guess whatever the class
      balance, where accuracy rewards always predicting the majority;
    * ``majority_class`` and ``majority_baseline``: the most common class in ``labels`` and its
      rate, i.e. the accuracy of always predicting it (the floor a model must beat);
    * ``confusion``: nested lists, ``confusion[t][p]`` = rows of true class t predicted p;
    * ``per_class``: for each class k, precision = TP/(TP+FP), recall = TP/(TP+FN),
      f1 = 2PR/(P+R) = 2TP/(2TP+FP+FN), support = rows of true class k (0.0 where a denominator is 0);
    * ``precision``, ``recall``, ``f1`` with ``average`` saying which: for 2 classes those of
      ``positive_class`` (``positive_class`` says which; the caller names the minority class);
      otherwise the macro average (unweighted mean over all ``n_classes`` classes, absent ones
      included);
    * ``auc`` and ``average_precision`` (PR-AUC), for 2 classes when ``scores`` (P(class 1),
      shape (n,), or (n, 2) class probabilities) is given, computed for the positive class
      (its probability against "is it that class"); otherwise None. ROC AUC is the same for
      either class; average precision is not. When the labels hold one class, the AUC is
      undefined: ``auc`` is None (never NaN, which is no JSON value) and ``auc_note`` says why
      (AUC_UNDEFINED); likewise ``average_precision`` with no positive row.
    """
    labels = _metric_labels(labels, "labels")
    predicted = _metric_labels(predicted, "predicted")
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted has shape {predicted.shape} but labels have shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("classification_report needs at least one example")
    largest = int(max(labels.max(), predicted.max()))
    if n_classes is None:
        n_classes = max(2, largest + 1)
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    n_classes = int(n_classes)
    if largest >= n_classes:
        raise ValueError(f"class id {largest} is outside 0..{n_classes - 1} (n_classes={n_classes})")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion)
    per_class = []
    for k in range(n_classes):
        precision = _ratio(true_positive[k], confusion[:, k].sum())
        recall = _ratio(true_positive[k], confusion[k, :].sum())
        # f1 = 2PR/(P+R) = 2TP/(2TP+FP+FN), computed in counts so no rounding enters
        errors = confusion[:, k].sum() + confusion[k, :].sum() - 2 * true_positive[k]
        per_class.append({"class": k, "precision": precision, "recall": recall,
                          "f1": _ratio(2 * true_positive[k], 2 * true_positive[k] + errors),
                          "support": int(confusion[k, :].sum())})
    counts = np.bincount(labels, minlength=n_classes)
    report = {
        "n": int(labels.size),
        "n_classes": n_classes,
        "accuracy": float(true_positive.sum() / labels.size),
        "balanced_accuracy": float(np.mean([c["recall"] for c in per_class if c["support"]])),
        "majority_class": int(counts.argmax()),
        "majority_baseline": float(counts.max() / labels.size),
        "confusion": confusion.tolist(),
        "per_class": per_class,
        "auc": None,
    }
    if n_classes == 2:
        _, positive_class = check_threshold(None, positive_class)
        report.update(average=f"positive class {positive_class}", positive_class=positive_class,
                      **{key: per_class[positive_class][key]
                         for key in ("precision", "recall", "f1")})
        report["average_precision"] = None
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
            if scores.ndim == 2 and scores.shape[1] == 2:
                scores = scores[:, 1]
            is_positive = (labels == positive_class).astype(np.int64)
            positive_scores = scores if positive_class == 1 else 1.0 - scores
            auc = roc_auc(is_positive, positive_scores)
            # NaN is no JSON value: an undefined AUC is None, with the reason beside it
            if math.isnan(auc):
                report["auc_note"] = AUC_UNDEFINED
            else:
                report["auc"] = auc
            precision = average_precision(is_positive, positive_scores)
            report["average_precision"] = None if math.isnan(precision) else precision
    else:
        report.update(average="macro", **{key: float(np.mean([c[key] for c in per_class]))
                                          for key in ("precision", "recall", "f1")})
    return report


def minority_class(labels, n_classes: int) -> int:
    """The class with the fewest rows among ``labels`` (ties: the lower id): the default
    positive class, the one whose precision and recall a report names."""
    counts = np.bincount(_metric_labels(labels, "labels"), minlength=n_classes)
    return int(np.argmin(counts))


def default_positive_class(labels, n_classes: int) -> int:
    """The positive class when none is asked for: the minority class of ``labels`` for two
    classes (class 1 with no labels, as a party that only predicts has), else class 1 (the
    reports then average over all classes)."""
    labels = np.asarray(labels)
    return minority_class(labels, n_classes) if n_classes == 2 and labels.size else 1


def curve_points(labels, scores) -> dict:
    """The ROC curve (false-positive rate, true-positive rate) and the precision–recall curve
    (recall, precision) of binary labels and scores, one point per distinct score taken as the
    threshold from the highest down (the points :func:`roc_auc` and :func:`average_precision`
    sum over), for plotting. ROC starts at (0, 0); the PR curve at recall 0, precision 1."""
    labels = _metric_labels(labels, "labels")
    scores = np.asarray(scores, dtype=np.float64)
    last, true_positives = threshold_counts(labels, scores)
    true_positives = true_positives.astype(np.float64)
    false_positives = (last + 1) - true_positives
    positives, negatives = max(int(labels.sum()), 1), max(int(labels.size - labels.sum()), 1)
    return {"fpr": np.r_[0.0, false_positives / negatives].tolist(),
            "tpr": np.r_[0.0, true_positives / positives].tolist(),
            "recall": np.r_[0.0, true_positives / positives].tolist(),
            "precision": np.r_[1.0, true_positives / (last + 1)].tolist()}


def probabilities(scores) -> np.ndarray:
    """(m, k) class probabilities, columns in class order, from a model's scores: P(class 1)
    of shape (m,) becomes the columns 1 − p, p; a softmax (m, k) is returned as it is."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return np.column_stack([1.0 - scores, scores])
    return scores


def check_class_ids(labels, n_outputs: int) -> None:
    """y must be 1-D class ids 0..k−1 (k = 2 for a single output unit), finite, integer-valued,
    with at least two classes present. An empty y is allowed: a label party that only predicts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    if labels.size == 0:
        return
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"label row {row}: value {labels[row]} is not an integer class id")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    n_classes = 2 if n_outputs == 1 else n_outputs
    outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if outside.size:
        row = int(outside[0])
        raise ValueError(f"label row {row}: class {labels[row]} is outside 0..{n_classes - 1} "
                         f"(the network has {n_outputs} output unit(s))")
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError(f"the labels hold a single class ({classes[0]}); training needs at "
                         "least two")
