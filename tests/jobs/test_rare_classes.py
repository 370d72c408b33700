"""Rare classes: class weights in the loss (the label party's, from its own labels), a decision
threshold on the positive class's probability, and the positive class the reports name. The
encrypted run stays equal to its fixed-point reference and to the plaintext twin under every
one of these options."""

import numpy as np
import pytest
from conftest import insecure_keypair, one_line_error
from sklearn.utils.class_weight import compute_class_weight

import acml
import nn
from fixed import Fixed
from jobs import data

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")
KEY_BITS = 384


def skewed(rows=120, columns=4, rate=0.15, seed=0, n_classes=2):
    """Features and labels with a rare class: class 1 (and 2) on about ``rate`` of the rows."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, columns))
    score = X[:, 0] + 0.5 * X[:, 1] + 0.5 * rng.standard_normal(rows)
    y = (score > np.quantile(score, 1 - rate)).astype(np.int64)
    if n_classes == 3:
        y[score < np.quantile(score, rate)] = 2
    names = ["common", "rare", "other"][:n_classes]
    dataset = data.Dataset(X, y, np.arange(rows), [f"x{j}" for j in range(columns)], names,
                           name="skewed")
    return acml.prepare(dataset, test_fraction=0.25, seed=seed)


def config(**changes):
    base = dict(hidden=(4,), activation="tanh", epochs=2, batch_size=16, lr=0.3,
                key_bits=KEY_BITS, allow_insecure=True, seed=0, init_seed=0)
    base.update(changes)
    return acml.Config(**base)


def fixed_point_reference(train_set, cfg):
    """The run's fixed-point arithmetic with no encryption and no masks, its top model built
    with the class weights the label party derives from the same labels: (W_int, top)."""
    plan = cfg.plan
    sizes = cfg.layer_sizes(train_set.X.shape[1], train_set.n_classes)
    features = Fixed.encode(train_set.X, plan.x_frac_bits)
    weight = Fixed.encode(nn.init_layer(sizes, 0, cfg.activation, cfg.init_seed).W,
                          plan.w_frac_bits)
    weights = nn.class_weights(cfg.class_weight, train_set.y, train_set.n_classes)
    top = nn.MLP(sizes, activation=cfg.activation, seed=cfg.seed, first_layer_weight=False,
                 class_weight=weights)
    optimizer = nn.SGD(plan.snap_lr(cfg.lr), cfg.momentum)
    lr_int = plan.quantize_lr(cfg.lr)
    for epoch in range(cfg.epochs):
        for rows in nn.minibatches(len(train_set.y), cfg.batch_size, seed=cfg.seed, epoch=epoch):
            z = (features[rows] @ weight).decode() + top.layers[0].b
            _, dlogits = top.loss_and_grad(top.forward_top(z), train_set.y[rows])
            delta = top.backward_top(dlogits)
            top.layers[0].backward_bias(delta)
            optimizer.step(top.top_named_params())
            step = features[rows].T @ Fixed.encode(delta, plan.delta_frac_bits)
            weight = weight - Fixed.from_ints(lr_int * step.values, plan.w_frac_bits)
    return weight, top


@pytest.mark.parametrize("n_classes, class_weight, threshold", [
    (2, "balanced", None), (2, [1.0, 4.0], 0.3), (3, "balanced", None), (3, [1.0, 3.0, 2.0], None)])
def test_class_weights_keep_the_encrypted_run_exact(n_classes, class_weight, threshold):
    """Exactness under class weights: W_B + ε_acc equals the unencrypted fixed-point run with
    the same weights integer for integer, the layers above are bit-identical, the plaintext twin
    is within quantisation and predicts every test row alike; and the weights did change the
    training (the unweighted run ends elsewhere)."""
    train_set, test_set = skewed(n_classes=n_classes)
    cfg = config(class_weight=class_weight, threshold=threshold)
    keypair = insecure_keypair(KEY_BITS)
    result = acml.train(train_set, test_set, cfg, keypair=keypair)
    weight, top = fixed_point_reference(train_set, cfg)
    joint = result.label_party.weight_share + result.data_party.noise_acc
    assert np.array_equal(joint.values, weight.values)
    for mine, theirs in zip(result.label_party.model.layers, top.layers):
        assert np.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert np.array_equal(mine.W, theirs.W)
    # the twin is float64: within quantisation (the unweighted runs here: 5e-7 to 1.2e-6)
    assert result.metrics["max_abs_weight_diff"] < 1e-5
    assert result.metrics["predictions_differing"] == 0
    unweighted, _ = fixed_point_reference(train_set, config())
    assert not np.array_equal(unweighted.values, weight.values)


def test_balanced_weights_are_sklearns_and_average_one_over_the_rows():
    y = np.array([0] * 90 + [1] * 10 + [2] * 20)
    weights = nn.class_weights("balanced", y, 3)
    assert np.allclose(weights, compute_class_weight("balanced", classes=np.arange(3), y=y))
    assert weights[y].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class 2 has no training row"):
        nn.class_weights("balanced", np.array([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="finite number > 0"):
        nn.class_weights([1.0, 0.0], np.array([0, 1]), 2)


@pytest.mark.parametrize("loss, outputs", [(nn.sigmoid_binary_cross_entropy, 1),
                                           (nn.softmax_cross_entropy, 3)])
def test_weighted_loss_is_each_rows_loss_times_its_class_weight_and_its_gradient(loss, outputs):
    """L_w = (1/m) Σ w[y_i] l_i and its gradient is d L_w / d logits (central differences);
    weights of 1 give the unweighted loss and gradient bit for bit."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, outputs))
    y = rng.integers(0, max(2, outputs), 7)
    weights = np.array([0.5, 3.0, 1.5][:max(2, outputs)])
    value, grad = loss(logits, y, class_weight=weights)
    per_row = [loss(logits[i:i + 1], y[i:i + 1])[0] for i in range(7)]
    assert value == pytest.approx(np.mean(weights[y] * per_row), rel=1e-12)
    step = 1e-6
    for index in np.ndindex(logits.shape):
        shifted = logits.copy()
        shifted[index] += step
        up = loss(shifted, y, class_weight=weights)[0]
        shifted[index] -= 2 * step
        down = loss(shifted, y, class_weight=weights)[0]
        assert grad[index] == pytest.approx((up - down) / (2 * step), abs=1e-7)
    plain = loss(logits, y)
    ones = loss(logits, y, class_weight=np.ones(max(2, outputs)))
    assert plain[0] == ones[0] and np.array_equal(plain[1], ones[1])


def test_threshold_decides_on_the_positive_class_probability():
    scores = np.array([0.1, 0.25, 0.5, 0.7, 0.9])  # P(class 1)
    assert nn.decide(scores).tolist() == [0, 0, 1, 1, 1]
    assert nn.decide(scores, 0.2, 1).tolist() == [0, 1, 1, 1, 1]
    assert nn.decide(scores, 0.4, 0).tolist() == [0, 0, 0, 1, 1]  # class 0 where 1 − s >= 0.4
    with pytest.raises(ValueError, match="two classes"):
        nn.MLP([3, 4, 3], threshold=0.3)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        nn.MLP([3, 4, 1], threshold=1.0)


def test_positive_class_defaults_to_the_minority_and_the_report_names_it():
    """Class 1 is the majority here; the reports' precision, recall, F1 and PR-AUC are then of
    class 0, the minority of the training labels, named in the report."""
    train_set, test_set = skewed(rate=0.8)  # class "rare" is now the common one
    assert np.bincount(train_set.y).argmin() == 0
    result = acml.train(train_set, test_set, config(), keypair=insecure_keypair(KEY_BITS))
    assert result.metrics["positive_class"] == 0
    assert result.metrics["test_report"]["positive_class"] == 0
    assert "of the positive class 'common'" in result.summary()
    assert "average precision of 'common'" in result.summary()


def test_threshold_moves_the_predictions_and_both_runs_agree():
    """A low threshold on the rare class predicts it more often; encrypted and plaintext agree
    on every row, and the report says the rule."""
    train_set, test_set = skewed(rows=200)
    keypair = insecure_keypair(KEY_BITS)
    default = acml.train(train_set, test_set, config(), keypair=keypair).metrics
    low = acml.train(train_set, test_set, config(threshold=0.1), keypair=keypair)
    rare = low.metrics["positive_class"]
    assert rare == 1
    caught = [m["test_report"]["confusion"][1][1] + m["test_report"]["confusion"][0][1]
              for m in (default, low.metrics)]
    assert caught[1] > caught[0]
    assert low.metrics["predictions_differing"] == 0
    assert "predicts 'rare' when P(rare) >= 0.1" in low.summary()


def test_cli_class_flags_refused_in_one_line(capsys, tmp_path):
    base = ["train", "--dataset", "wine", "--key-bits", "384", "--insecure-small-key",
            "--quiet"]
    assert "--threshold is for two classes; the labels hold 3" in one_line_error(
        capsys, base + ["--threshold", "0.3"])
    assert "--positive-class: no class 'nope'; the classes are malignant, benign" in \
        one_line_error(capsys, ["train", "--dataset", "breast_cancer", "--key-bits", "384",
                                "--insecure-small-key", "--positive-class", "nope"])
    assert "--class-weight: no class 'x'" in one_line_error(
        capsys, base + ["--class-weight", "x=2"])
    assert "CLASS=WEIGHT" in one_line_error(capsys, base + ["--class-weight", "class_0=0"])
    assert "--threshold" in one_line_error(capsys, base + ["--threshold", "1.5"])


def test_the_rehearsal_reports_what_the_encrypted_runs_twin_reports_under_the_class_options():
    """Property: `--plaintext` rehearses the same run: under balanced class weights and a
    threshold, its test report (positive class, accuracy, balanced accuracy, PR-AUC) is the
    encrypted run's plaintext twin's, so settings chosen in the rehearsal mean the same later."""
    from jobs import simulation
    train_set, test_set = skewed()
    cfg = config(class_weight="balanced", threshold=0.4)
    rehearsal = simulation.rehearse(train_set, test_set, cfg)
    encrypted = acml.train(train_set, test_set, cfg, keypair=insecure_keypair(KEY_BITS))
    twin = encrypted.metrics["plaintext_test_report"]
    assert rehearsal.metrics["positive_class"] == encrypted.metrics["positive_class"] == 1
    for key in ("accuracy", "balanced_accuracy", "average_precision", "auc"):
        assert rehearsal.metrics["test_report"][key] == twin[key], key
