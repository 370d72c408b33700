"""The plaintext twin: the same network trained on the same batches in float64, from the same W0.

Only an omniscient simulation can build it (W0 comes from the data party's own init seed) and
compare it with the two parties (W = W_B + ε_acc needs both shares). It is the yardstick of
exactness: the encrypted run equals it within the fixed-point quantisation.
"""

from __future__ import annotations

import numpy as np

import nn
from fixed import Fixed
from jobs.settings import Config
from parties import BottomModel, make_bottom
from plan import check_features


def train_twin(train_set, config: Config, sizes, init_seed: int):
    """(twin MLP, twin bottom model or None, history): the layers above from the public seed,
    the first layer (and any bottom model) from the data party's ``init_seed``, trained in
    float64 on the batches of the encrypted run (nn.minibatches with the same seed)."""
    n_classes = max(2, sizes[-1])
    threshold, positive_class = config.decision(train_set.y, n_classes)
    # The label party's own class weights, from the same training labels by the same function.
    plaintext = nn.MLP(sizes, activation=config.activation, seed=config.seed,
                       class_weight=nn.class_weights(config.class_weight, train_set.y, n_classes),
                       threshold=threshold, positive_class=positive_class)
    plaintext.layers[0].W = nn.init_layer(sizes, 0, config.activation, init_seed).W
    plaintext_bottom = make_bottom(config.bottom, train_set.X.shape[1], init_seed)
    if plaintext_bottom is None:
        history = nn.train_plaintext(plaintext, train_set.X, train_set.y, epochs=config.epochs,
                                     batch_size=config.batch_size,
                                     lr=config.plan.snap_lr(config.lr), seed=config.seed,
                                     momentum=config.momentum, block_rows=config.block_rows)
    else:
        history = train_plaintext_composite(plaintext_bottom, plaintext, train_set.X, train_set.y,
                                            config)
    return plaintext, plaintext_bottom, history


def twin_predictions(plaintext: nn.MLP, plaintext_bottom, X):
    """The twin's predicted classes and scores for rows X."""
    inputs = X if plaintext_bottom is None else plaintext_bottom.forward(X)
    return plaintext.predict(inputs), plaintext.scores_from_logits(plaintext.forward(inputs))


def train_plaintext_composite(bottom: BottomModel, mlp: nn.MLP, X, y,
                              config: Config) -> dict:
    """The plaintext twin of a run with a bottom model: bottom layer + MLP, float64, the same
    batches. Per batch: α = bottom(X), the MLP's forward and backward on α, then ∂L/∂α = δ·Wᵀ
    with the W of the forward pass, and plain SGD on the bottom and on the first layer's W."""
    lr = config.plan.snap_lr(config.lr)
    optimizer = nn.SGD(lr, config.momentum)
    first = mlp.layers[0]
    history = {"batch_loss": []}
    for epoch in range(config.epochs):
        for rows in nn.minibatches(len(y), config.batch_size, seed=config.seed, epoch=epoch,
                                   block_rows=config.block_rows):
            logits = mlp.forward(bottom.forward(X[rows]))
            loss, dlogits = mlp.loss_and_grad(logits, y[rows])
            input_gradient = mlp.backward(dlogits)
            first.W -= lr * first.dW
            optimizer.step(mlp.top_named_params())
            bottom.backward_step(input_gradient, lr)
            history["batch_loss"].append(loss)
    return history


def joint_first_layer(data_party, label_party):
    """W = W_B + ε_acc as floats. Simulation diagnostics and tests only: no party can do this."""
    return (label_party.weight_share + data_party.noise_acc).decode()


def max_weight_diff(data_party, label_party, plaintext: nn.MLP, plaintext_bottom=None) -> float:
    """max |W − W_plain| over every weight and bias of every layer (the bottom model's too)."""
    diffs = [np.abs(joint_first_layer(data_party, label_party) - plaintext.layers[0].W).max(),
             np.abs(label_party.model.layers[0].b - plaintext.layers[0].b).max()]
    for mine, theirs in zip(label_party.model.layers[1:], plaintext.layers[1:]):
        diffs += [np.abs(mine.W - theirs.W).max(), np.abs(mine.b - theirs.b).max()]
    if plaintext_bottom is not None:
        mine, theirs = data_party.bottom.layer, plaintext_bottom.layer
        diffs += [np.abs(mine.W - theirs.W).max(), np.abs(mine.b - theirs.b).max()]
    return float(max(diffs))


def fixed_point_gap(X, y, config: Config | None = None, *, n_classes: int | None = None):
    """max |W − W_plain| after each epoch, measured without encryption: the plan's fixed-point
    arithmetic (the exact twin of the encrypted run: W_B + ε_acc equals it integer for integer,
    tests/test_protocol.py) against float64 on the same batches from the same W0.

    A measuring tool (the README's exactness-gap table): yields ``(epoch, steps, gap)``, the gap
    over every weight and bias of every layer. W0 comes from ``config.seed`` (no bottom model,
    ). No party can compute this in a real run; nothing here is encrypted.
    """
    config = config or Config()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    plan = config.plan
    check_features(X, plan)
    sizes = config.layer_sizes(X.shape[1], n_classes or int(y.max()) + 1)
    lr = plan.snap_lr(config.lr)
    lr_int = plan.quantize_lr(config.lr)
    first = nn.init_layer(sizes, 0, config.activation, config.seed).W
    features = Fixed.encode(X, plan.x_frac_bits)
    weight = Fixed.encode(first, plan.w_frac_bits)
    float_weight = first.copy()
    weights = nn.class_weights(config.class_weight, y, max(2, sizes[-1]))
    models = [nn.MLP(sizes, activation=config.activation, seed=config.seed,
                     first_layer_weight=False, class_weight=weights) for _ in range(2)]
    optimizers = [nn.SGD(lr, config.momentum) for _ in models]
    steps = 0
    for epoch in range(config.epochs):
        for rows in nn.minibatches(len(y), config.batch_size, seed=config.seed, epoch=epoch,
                                   block_rows=config.block_rows):
            z_fixed = (features[rows] @ weight).decode()
            z_float = X[rows] @ float_weight
            deltas = []
            for model, optimizer, z in zip(models, optimizers, (z_fixed, z_float)):
                z = z + model.layers[0].b
                _, dlogits = model.loss_and_grad(model.forward_top(z), y[rows])
                delta = model.backward_top(dlogits)
                model.layers[0].backward_bias(delta)
                optimizer.step(model.top_named_params())
                deltas.append(delta)
            delta_int = Fixed.encode(deltas[0], plan.delta_frac_bits)
            weight = weight - Fixed.from_ints(lr_int * (features[rows].T @ delta_int).values,
                                              plan.w_frac_bits)
            float_weight = float_weight - lr * (X[rows].T @ deltas[1])
            steps += 1
        gaps = [np.abs(weight.decode() - float_weight).max()]
        for mine, theirs in zip(models[0].layers, models[1].layers):
            gaps.append(np.abs(mine.b - theirs.b).max())
            if mine.W is not None:
                gaps.append(np.abs(mine.W - theirs.W).max())
        yield epoch + 1, steps, float(max(gaps))
