"""Tests for nn.py: exact gradients, determinism, the plaintext/encrypted split, and that the
model actually learns real data."""

import functools

import numpy as np
import pytest

from jobs import data
import nn

GRADIENT_TOLERANCE = 1e-6


def numerical_gradient(f, array, eps=1e-6):
    """Central differences (f(a+eps) - f(a-eps)) / 2eps of scalar f w.r.t. each entry of array,
    perturbing the array in place (so f may read it through a layer)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = f()
        array[index] = saved - eps
        minus = f()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """||a - n|| / (||a|| + ||n||): scale-free, and not fooled by individual near-zero entries."""
    denominator = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return np.linalg.norm(analytic - numeric) / max(denominator, 1e-300)


def away_from_zero(rng, shape):
    """Inputs at least 0.1 from 0, so finite differences never straddle ReLU's kink."""
    return rng.choice([-1.0, 1.0], size=shape) * (0.1 + np.abs(rng.standard_normal(shape)))


# ---- gradients ------------------------------------------------------------------------------


def test_dense_backward_matches_finite_differences_for_dx_dW_db():
    rng = np.random.default_rng(1)
    layer = nn.Dense(5, 4, rng=rng)
    layer.b[:] = rng.standard_normal(4)
    x = rng.standard_normal((3, 5))
    upstream = rng.standard_normal((3, 4))
    scalar = lambda: float(np.sum(layer.forward(x) * upstream))  # noqa: E731
    scalar()
    dx = layer.backward(upstream)
    assert relative_error(dx, numerical_gradient(scalar, x)) < GRADIENT_TOLERANCE
    assert relative_error(layer.dW, numerical_gradient(scalar, layer.W)) < GRADIENT_TOLERANCE
    assert relative_error(layer.db, numerical_gradient(scalar, layer.b)) < GRADIENT_TOLERANCE


@pytest.mark.parametrize("name", sorted(nn.ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name):
    rng = np.random.default_rng(2)
    activation = nn.ACTIVATIONS[name]()
    x = away_from_zero(rng, (4, 6))
    upstream = rng.standard_normal((4, 6))
    scalar = lambda: float(np.sum(activation.forward(x) * upstream))  # noqa: E731
    scalar()
    dx = activation.backward(upstream)
    assert relative_error(dx, numerical_gradient(scalar, x)) < GRADIENT_TOLERANCE


def _loss_cases():
    rng = np.random.default_rng(3)
    return [
        ("softmax_ce", nn.softmax_cross_entropy, rng.standard_normal((5, 3)), rng.integers(0, 3, 5)),
        ("bce (m,1)", nn.sigmoid_binary_cross_entropy, rng.standard_normal((6, 1)), rng.integers(0, 2, 6)),
        ("bce (m,)", nn.sigmoid_binary_cross_entropy, rng.standard_normal(6), rng.integers(0, 2, 6)),
        ("mse", nn.mean_squared_error, rng.standard_normal((4, 2)), rng.standard_normal((4, 2))),
    ]


@pytest.mark.parametrize("label, loss_fn, logits, y", _loss_cases(), ids=[c[0] for c in _loss_cases()])
def test_loss_gradient_matches_finite_differences_and_keeps_logit_shape(label, loss_fn, logits, y):
    loss, dlogits = loss_fn(logits, y)
    assert dlogits.shape == logits.shape
    numeric = numerical_gradient(lambda: loss_fn(logits, y)[0], logits)
    assert relative_error(dlogits, numeric) < GRADIENT_TOLERANCE


def test_losses_equal_their_textbook_formulas_on_moderate_inputs():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 3))
    y = np.array([0, 2, 1, 1, 0])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probabilities[np.arange(5), y]))
    assert nn.softmax_cross_entropy(logits, y)[0] == pytest.approx(expected, rel=1e-12)
    z = rng.standard_normal(5)
    t = np.array([0, 1, 1, 0, 1])
    s = 1 / (1 + np.exp(-z))
    expected = -np.mean(t * np.log(s) + (1 - t) * np.log(1 - s))
    assert nn.sigmoid_binary_cross_entropy(z, t)[0] == pytest.approx(expected, rel=1e-12)
    assert nn.mean_squared_error(np.array([[1.0], [3.0]]), np.array([0.0, 1.0]))[0] == pytest.approx(2.5)


def test_losses_stay_finite_and_exact_for_huge_logits():
    """Numerical stability: log-sum-exp / logaddexp give the exact large-margin loss, no inf/nan."""
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, grad = nn.softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([1, 1]))
        assert loss == pytest.approx(500.0) and np.all(np.isfinite(grad))
        loss, grad = nn.sigmoid_binary_cross_entropy(np.array([[1000.0], [-1000.0]]), np.array([0, 1]))
        assert loss == pytest.approx(1000.0) and np.all(np.isfinite(grad))
        assert np.allclose(grad[:, 0], [0.5, -0.5])


def test_losses_reject_bad_labels():
    with pytest.raises(ValueError, match="outside the class range"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="outside the class range"):
        nn.sigmoid_binary_cross_entropy(np.zeros((2, 1)), np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 1]))


@pytest.mark.parametrize("activation", sorted(nn.ACTIVATIONS))
@pytest.mark.parametrize("loss, n_out", [("softmax_ce", 3), ("sigmoid_bce", 1), ("mse", 2)])
def test_whole_mlp_backward_matches_finite_differences(activation, loss, n_out):
    rng = np.random.default_rng(5)
    mlp = nn.MLP([4, 6, 5, n_out], activation=activation, seed=7, loss=loss)
    for layer in mlp.layers:  # nonzero biases so db is checked on a generic point
        layer.b[:] = 0.1 * rng.standard_normal(layer.b.shape)
    X = rng.standard_normal((5, 4))
    y = rng.standard_normal((5, n_out)) if loss == "mse" else rng.integers(0, max(n_out, 2), 5)
    scalar = lambda: mlp.loss_and_grad(mlp.forward(X), y)[0]  # noqa: E731
    _, dlogits = mlp.loss_and_grad(mlp.forward(X), y)
    dX = mlp.backward(dlogits)
    analytic = [(layer.dW.copy(), layer.db.copy()) for layer in mlp.layers]
    assert relative_error(dX, numerical_gradient(scalar, X)) < GRADIENT_TOLERANCE
    for layer, (dW, db) in zip(mlp.layers, analytic):
        assert relative_error(dW, numerical_gradient(scalar, layer.W)) < GRADIENT_TOLERANCE
        assert relative_error(db, numerical_gradient(scalar, layer.b)) < GRADIENT_TOLERANCE


def test_forward_top_and_backward_top_are_the_exact_split_of_the_full_pass():
    """The label party's half: forward(X) == forward_top(z) and backward_top returns dL/dz
    (checked by finite differences in z) while leaving layer 0's gradients alone; db0 from
    backward_bias(dz) equals the full backward's db0."""
    rng = np.random.default_rng(6)
    mlp = nn.MLP([3, 5, 4, 3], activation="tanh", seed=1)
    X = rng.standard_normal((6, 3))
    y = rng.integers(0, 3, 6)
    z = mlp.layers[0].forward(X)
    np.testing.assert_array_equal(mlp.forward(X), mlp.forward_top(z))
    scalar = lambda: mlp.loss_and_grad(mlp.forward_top(z), y)[0]  # noqa: E731
    _, dlogits = mlp.loss_and_grad(mlp.forward_top(z), y)
    mlp.layers[0].dW = mlp.layers[0].db = None
    dz = mlp.backward_top(dlogits)
    assert mlp.layers[0].dW is None and mlp.layers[0].db is None
    assert relative_error(dz, numerical_gradient(scalar, z)) < GRADIENT_TOLERANCE
    top_grads = [(layer.dW.copy(), layer.db.copy()) for layer in mlp.layers[1:]]
    db0_label_party = mlp.layers[0].backward_bias(dz).copy()
    mlp.forward(X)
    mlp.backward(dlogits)
    np.testing.assert_array_equal(mlp.layers[0].db, db0_label_party)
    for layer, (dW, db) in zip(mlp.layers[1:], top_grads):
        np.testing.assert_array_equal(layer.dW, dW)
        np.testing.assert_array_equal(layer.db, db)


def test_single_layer_mlp_is_logistic_regression_with_identity_top():
    mlp = nn.MLP([3, 1], seed=0)
    assert mlp.activations == [] and mlp.loss == "sigmoid_bce"
    z = np.array([[0.5], [-2.0]])
    np.testing.assert_array_equal(mlp.forward_top(z), z)
    np.testing.assert_array_equal(mlp.backward_top(z), z)


# ---- learning -------------------------------------------------------------------------------


def test_small_net_overfits_a_tiny_batch():
    """The whole forward/backward/update loop can drive the training loss to ~0."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((8, 5))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    mlp = nn.MLP([5, 32, 3], seed=0)
    history = nn.train_plaintext(mlp, X, y, epochs=400, batch_size=8, lr=0.5, seed=0)
    assert history["batch_loss"][0] > 0.5
    assert history["batch_loss"][-1] < 1e-2
    np.testing.assert_array_equal(mlp.predict(X), y)


def _train_and_score(name, hidden, *, epochs, batch_size, lr, activation="relu", split_seed=0, seed=0):
    dataset = data.load_builtin(name)
    train, test = data.train_test_split(dataset, test_fraction=0.2, seed=split_seed)
    scaler = data.Standardizer().fit(train.X)
    n_out = 1 if dataset.n_classes == 2 else dataset.n_classes
    mlp = nn.MLP([dataset.X.shape[1], *hidden, n_out], activation=activation, seed=seed)
    nn.train_plaintext(mlp, scaler.transform(train.X), train.y, epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed)
    return float(np.mean(mlp.predict(scaler.transform(test.X)) == test.y))


def test_breast_cancer_test_accuracy_at_least_095():
    """The plaintext reference learns real data (0.973 when written; 0.97-0.99 over model seeds)."""
    accuracy = _train_and_score("breast_cancer", [16], epochs=20, batch_size=32, lr=0.05)
    assert accuracy >= 0.95


def test_digits_test_accuracy_at_least_093():
    """Ten-class softmax path learns real data (0.955 when written; up to 0.967 over model seeds)."""
    accuracy = _train_and_score("digits", [64], epochs=20, batch_size=32, lr=0.05)
    assert accuracy >= 0.93


def test_german_credit_test_accuracy_at_least_070_averaged_over_splits():
    """German credit: 70% of applicants are 'good', and a 200-row test set moves accuracy by
    ~0.03 from split to split (split 0 is hard: logistic regression gets 0.68 on it), so the
    floor is on the mean over five fixed stratified splits (0.749 when written; per split
    0.68, 0.765, 0.755, 0.75, 0.795)."""
    accuracies = [_train_and_score("german_credit", [8], epochs=50, batch_size=32, lr=0.01,
                                   activation="tanh", split_seed=split) for split in range(5)]
    assert np.mean(accuracies) >= 0.70


# ---- determinism and the parties' views -----------------------------------------------------


def test_same_seed_gives_bit_identical_weights_and_training_different_seed_differs():
    X = np.random.default_rng(9).standard_normal((40, 6))
    y = (X[:, 0] > 0).astype(int)
    first, second, other = (nn.MLP([6, 8, 4, 1], seed=s) for s in (3, 3, 4))
    for a, b in zip(first.layers, second.layers):
        assert a.W.tobytes() == b.W.tobytes() and a.b.tobytes() == b.b.tobytes()
    for a, c in zip(first.layers, other.layers):
        assert not np.array_equal(a.W, c.W)
    for mlp in (first, second):
        nn.train_plaintext(mlp, X, y, epochs=3, batch_size=7, lr=0.1, seed=3, momentum=0.5)
    for (name, a), (_, b) in zip(first.named_params(), second.named_params()):
        assert a.tobytes() == b.tobytes(), name


def test_layers_are_seeded_independently_so_init_layer_reproduces_any_one():
    full = nn.MLP([5, 7, 3, 2], activation="sigmoid", seed=11)
    for index, layer in enumerate(full.layers):
        alone = nn.init_layer([5, 7, 3, 2], index, "sigmoid", 11)
        assert alone.W.tobytes() == layer.W.tobytes()
    # the documented recipe: layer i draws from np.random.default_rng([seed, i])
    limit = np.sqrt(6 / (7 + 3))
    expected = np.random.default_rng([11, 1]).uniform(-limit, limit, size=(7, 3))
    assert full.layers[1].W.tobytes() == expected.tobytes()
    relu = nn.MLP([5, 7, 2], seed=11)
    expected = np.random.default_rng([11, 0]).standard_normal((5, 7)) * np.sqrt(2 / 5)
    assert relu.layers[0].W.tobytes() == expected.tobytes()
    # a different depth above does not change the first layer
    deeper = nn.MLP([5, 7, 9, 9, 2], activation="sigmoid", seed=11)
    assert deeper.layers[0].W.tobytes() == full.layers[0].W.tobytes()


def test_first_layer_weight_false_leaves_W_none_and_top_identical():
    full = nn.MLP([6, 5, 4, 3], seed=2)
    label_party = nn.MLP([6, 5, 4, 3], seed=2, first_layer_weight=False)
    assert label_party.layers[0].W is None
    np.testing.assert_array_equal(label_party.layers[0].b, full.layers[0].b)
    for a, b in zip(full.layers[1:], label_party.layers[1:]):
        assert a.W.tobytes() == b.W.tobytes() and a.b.tobytes() == b.b.tobytes()
    z = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_array_equal(full.forward_top(z), label_party.forward_top(z))
    with pytest.raises(ValueError, match="holds no weight"):
        label_party.forward(np.zeros((1, 6)))
    with pytest.raises(ValueError, match="first_layer_weight=False"):
        nn.train_plaintext(label_party, np.zeros((2, 6)), np.array([0, 1]), epochs=1, batch_size=2, lr=0.1)


def test_init_scales_follow_he_for_relu_and_glorot_otherwise():
    he = nn.init_layer([400, 300, 2], 0, "relu", 0)
    assert he.W.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    glorot = nn.init_layer([400, 300, 2], 0, "tanh", 0)
    limit = np.sqrt(6 / 700)
    assert np.abs(glorot.W).max() <= limit and glorot.W.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    assert glorot.W.dtype == np.float64 and not glorot.b.any()


def test_default_loss_follows_output_width_and_bad_configs_are_rejected():
    assert nn.MLP([2, 1]).loss == "sigmoid_bce" and nn.MLP([2, 3]).loss == "softmax_ce"
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([2, 3], activation="gelu")
    with pytest.raises(ValueError, match="single output"):
        nn.MLP([2, 3], loss="sigmoid_bce")
    with pytest.raises(ValueError, match="layer_sizes"):
        nn.MLP([2])


def test_predict_scores_are_probabilities_and_predict_gives_class_ids():
    X = np.random.default_rng(1).standard_normal((5, 3))
    binary, multi = nn.MLP([3, 4, 1]), nn.MLP([3, 4, 3])
    p = binary.predict_scores(X)
    assert p.shape == (5,) and np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(binary.predict(X), (p >= 0.5).astype(int))
    q = multi.predict_scores(X)
    assert q.shape == (5, 3) and np.allclose(q.sum(axis=1), 1.0)
    np.testing.assert_array_equal(multi.predict(X), q.argmax(axis=1))
    # the encrypted path reuses the same post-processing on logits it computed itself
    np.testing.assert_array_equal(multi.scores_from_logits(multi.forward(X)), q)
    np.testing.assert_array_equal(binary.classes_from_scores(np.array([0.2, 0.5, 0.9])), [0, 1, 1])


# ---- optimiser, batches, training loop ------------------------------------------------------


@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (7, 20), (1, 1), (100, 32)])
def test_minibatches_cover_every_index_exactly_once_per_epoch(n, batch_size):
    batches = nn.minibatches(n, batch_size, seed=4, epoch=2)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    np.testing.assert_array_equal(np.concatenate(batches),
                                  np.random.default_rng([4, 2]).permutation(n))


def test_minibatch_order_depends_on_epoch_and_seed():
    base = np.concatenate(nn.minibatches(50, 8, seed=0, epoch=0))
    assert not np.array_equal(base, np.concatenate(nn.minibatches(50, 8, seed=0, epoch=1)))
    assert not np.array_equal(base, np.concatenate(nn.minibatches(50, 8, seed=1, epoch=0)))
    np.testing.assert_array_equal(base, np.concatenate(nn.minibatches(50, 8, seed=0, epoch=0)))


def test_sgd_momentum_follows_its_formula_and_state_dict_resumes_exactly():
    param = np.array([1.0, -2.0])
    grads = [np.array([0.5, 0.25]), np.array([-1.0, 2.0]), np.array([0.125, 0.0])]
    optimizer = nn.SGD(0.1, momentum=0.9)
    velocity = np.zeros(2)
    expected = param.copy()
    for grad in grads[:2]:
        optimizer.step([("p", param, grad)])
        velocity = 0.9 * velocity + grad
        expected = expected - 0.1 * velocity
    np.testing.assert_allclose(param, expected, rtol=0, atol=1e-15)
    resumed = nn.SGD(0.1, momentum=0.9)
    resumed.load_state_dict(optimizer.state_dict())
    twin = param.copy()
    optimizer.step([("p", param, grads[2])])
    resumed.step([("p", twin, grads[2])])
    assert param.tobytes() == twin.tobytes()
    plain = np.array([1.0])
    nn.SGD(0.5).step([("q", plain, np.array([2.0]))])
    assert plain[0] == 0.0


def test_train_plaintext_updates_first_weight_by_plain_sgd_and_the_rest_by_momentum():
    """The protocol's masks rely on W0 <- W0 - lr dW0 with no momentum. This replays the
    documented loop by hand and demands bit-identical parameters; momentum on W0 would differ."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((23, 4))
    y = rng.integers(0, 3, 23)
    trained, replay = nn.MLP([4, 6, 3], seed=5), nn.MLP([4, 6, 3], seed=5)
    seen = []
    history = nn.train_plaintext(trained, X, y, epochs=3, batch_size=5, lr=0.2, seed=9, momentum=0.9,
                                 callback=lambda epoch, index, loss: seen.append((epoch, index, loss)))
    optimizer = nn.SGD(0.2, momentum=0.9)
    losses = []
    for epoch in range(3):
        for rows in nn.minibatches(23, 5, seed=9, epoch=epoch):
            loss, dlogits = replay.loss_and_grad(replay.forward(X[rows]), y[rows])
            replay.backward(dlogits)
            replay.layers[0].W -= 0.2 * replay.layers[0].dW
            optimizer.step(replay.top_named_params())
            losses.append(loss)
    for (name, a), (_, b) in zip(trained.named_params(), replay.named_params()):
        assert a.tobytes() == b.tobytes(), name
    assert history["batch_loss"] == losses == [loss for _, _, loss in seen]
    assert [(e, i) for e, i, _ in seen][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0)]
    batch_sizes = [5, 5, 5, 5, 3]
    expected_epoch0 = sum(l * s for l, s in zip(losses[:5], batch_sizes)) / 23
    assert history["epoch_loss"][0] == pytest.approx(expected_epoch0, rel=1e-15)
    assert set(name for name, _, _ in trained.top_named_params()) == {
        "layers.0.b", "layers.1.W", "layers.1.b"}


# ---- divergence and the headline defaults ---------------------------------------------------


def test_diverging_training_raises_instead_of_returning_nan_weights():
    """relu with a huge learning rate overflows; the loop must stop with a one-line error
    naming the epoch and batch, and no numpy RuntimeWarning may leak."""
    import warnings

    X = np.random.default_rng(0).standard_normal((64, 30)) * 5
    y = (X[:, 0] > 0).astype(int)
    mlp = nn.MLP([30, 8, 1], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match=r"diverged at epoch \d+, batch \d+.*lr=1000000.0"):
            nn.train_plaintext(mlp, X, y, epochs=50, batch_size=32, lr=1e6, momentum=0.9)


@functools.lru_cache(maxsize=None)
def _german_credit_split(split_seed):
    """Standardised (X_train, y_train, X_test, y_test) of the headline recipe's split."""
    dataset = data.load_builtin("german_credit")
    train, test = data.train_test_split(dataset, test_fraction=0.2, seed=split_seed)
    scaler = data.Standardizer().fit(train.X)
    return scaler.transform(train.X), train.y, scaler.transform(test.X), test.y


def _headline_run(seed, init_seed, settings=None):
    """(test accuracy, test AUC, max |δ|, report) of the headline recipe in plaintext: German
    credit split by public ``seed``, standardised on the training part, the layers above and
    the batch order from ``seed`` too, W0 redrawn from ``init_seed`` (as the data party's secret
    seed does in acml.train)."""
    settings = dict(nn.HEADLINE if settings is None else settings)
    X_train, y_train, X_test, y_test = _german_credit_split(seed)
    sizes = [X_train.shape[1], *settings["hidden"], 1]
    mlp = nn.MLP(sizes, settings["activation"], seed=seed)
    mlp.layers[0].W = nn.init_layer(sizes, 0, settings["activation"], init_seed).W
    deltas = []  # δ = dL/dz, what the protocol encodes with |δ| < 2**delta_int_bits = 16
    backward_top = mlp.backward_top
    mlp.backward_top = lambda dlogits: deltas.append(backward_top(dlogits)) or deltas[-1]
    nn.train_plaintext(mlp, X_train, y_train, epochs=settings["epochs"],
                       batch_size=settings["batch_size"], lr=settings["lr"],
                       momentum=settings["momentum"], seed=seed)
    scores = mlp.predict_scores(X_test)
    report = nn.classification_report(y_test, mlp.classes_from_scores(scores), scores)
    return report["accuracy"], report["auc"], max(float(np.abs(d).max()) for d in deltas), report


@functools.lru_cache(maxsize=None)
def _logistic_regression(split_seed):
    """(accuracy, AUC) of scikit-learn's LogisticRegression on the headline recipe's split."""
    from sklearn.linear_model import LogisticRegression

    X_train, y_train, X_test, y_test = _german_credit_split(split_seed)
    model = LogisticRegression(max_iter=5000).fit(X_train, y_train)
    accuracy = float(np.mean(model.predict(X_test) == y_test))
    return accuracy, nn.roc_auc(y_test, model.predict_proba(X_test)[:, 1])


def test_headline_seed_is_a_median_split_for_logistic_regression():
    """The default public seed is not picked for the network's sake: it is the smallest seed in
    0-9 whose split is closest to logistic regression's median accuracy and AUC over seeds 0-9
    (seed 0's split is the outlier: logistic regression 0.680 there, below the majority class).
    Fails if the default seed is changed to any other split."""
    scores = {seed: _logistic_regression(seed) for seed in range(10)}
    medians = [np.median([score[i] for score in scores.values()]) for i in (0, 1)]
    distance = {seed: round(sum(abs(score[i] - medians[i]) for i in (0, 1)), 9)
                for seed, score in scores.items()}
    assert min(distance, key=lambda seed: (distance[seed], seed)) == nn.HEADLINE["seed"]
    assert scores[0][0] < 0.7  # the outlier: below the majority class


def test_headline_defaults_beat_baselines():
    """nn.HEADLINE (the settings of `python acml.py train`) must clearly beat the majority class
    in accuracy and logistic regression's AUC on the default seed's split, over 10 secret W0
    draws; and, over the splits of seeds 0-9, beat the majority class and come within 0.01 of
    logistic regression's AUC.

    Measured when chosen: seed 1, 10 draws: accuracy 0.766 (worst 0.750) vs majority 0.700, AUC
    0.786 vs logistic regression 0.779; seeds 0-9: accuracy 0.750, AUC 0.778 vs 0.783. The old
    headline (relu, hidden 8, lr 0.1) fails this test. δ stays far below the protocol's bound
    |δ| < 16."""
    assert set(nn.HEADLINE) == {"hidden", "activation", "epochs", "lr", "batch_size", "momentum",
                                "seed"}
    assert nn.HEADLINE["epochs"] <= 10 and nn.HEADLINE["batch_size"] >= 32
    seed = nn.HEADLINE["seed"]
    runs = [_headline_run(seed, init_seed) for init_seed in range(2000, 2010)]
    majority = runs[0][3]["majority_baseline"]
    assert majority == pytest.approx(0.7)
    accuracies, aucs = [run[0] for run in runs], [run[1] for run in runs]
    assert np.mean(accuracies) > majority + 0.05 and min(accuracies) > majority + 0.03
    assert np.mean(aucs) > _logistic_regression(seed)[1]
    everywhere = [_headline_run(split, init_seed) for split in range(10)
                  for init_seed in range(2000, 2003)]
    assert np.mean([run[0] for run in everywhere]) > majority + 0.04
    logistic_auc = np.mean([_logistic_regression(split)[1] for split in range(10)])
    assert np.mean([run[1] for run in everywhere]) > logistic_auc - 0.01
    assert max(run[2] for run in runs + everywhere) < 1.0  # the protocol's bound is 16
