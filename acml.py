"""ACML — two-party deep learning over Paillier encryption, the user-facing module.

    python acml.py train                      # German credit, encrypted vs plaintext
    python acml.py train --dataset digits --hidden 16 --epochs 2 --json report.json
    python acml.py party data --listen HOST:PORT --features F.csv --id-column id --token-file T
    python acml.py party label --connect HOST:PORT --labels L.csv --id-column id \
        --label-column y --token-file T --json report.json

The API in three calls::

    train, test = acml.load_split("german_credit")
    result = acml.train(train, test, acml.Config(hidden=(8,), epochs=2))
    print(result.summary())

``train`` runs both parties in this process (each with only its own state, every message through
the checked channel of protocol.py) and, beside them, the plaintext twin: the same MLP trained on
the same batches in float64. The report compares the two. Combining the two weight shares into W
for that comparison is a diagnostic of this simulation only; no party can do it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import checkpoint
import data
import nn
import paillier
import protocol
import transport
from protocol import FixedPointPlan

DEFAULT_KEY_BITS = 2048
KEY_BITS_NOTE = ("2048-bit key by default: with packing, German credit trains in about a minute "
                 "on one core; --workers 2 spreads the work over two")


@dataclass
class Config:
    """Hyper-parameters both parties agree on (all public)."""

    hidden: tuple = (8,)
    activation: str = "relu"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.0
    key_bits: int = DEFAULT_KEY_BITS
    seed: int = 0
    allow_insecure: bool = False
    plan: FixedPointPlan = field(default_factory=FixedPointPlan)
    bottom: object = None  # None, a width k (ReLU) or (k, activation): the data party's bottom model
    # The data party's own seed for W0 (and its bottom model). None: drawn from `secrets`, as it
    # must be in a deployment — the label party must never be able to compute W0. An int only
    # to reproduce a run exactly (the tests do).
    init_seed: int | None = None
    packing: bool = True  # several values per ciphertext in steps 1 and 4 (same W either way)

    def layer_sizes(self, n_features: int, n_classes: int) -> tuple:
        """The network above the data: its input is X, or the bottom model's output α."""
        out = 1 if n_classes == 2 else n_classes
        if self.bottom is not None:
            n_features = self.bottom if isinstance(self.bottom, int) else self.bottom[0]
        return (n_features, *self.hidden, out)


@dataclass
class Result:
    data_party: protocol.DataParty
    label_party: protocol.LabelParty
    channel: protocol.Channel
    plaintext: nn.MLP
    losses: list
    plaintext_losses: list
    seconds: float
    metrics: dict

    def summary(self) -> str:
        return format_report(self.metrics)


def load_split(name: str, *, test_fraction: float = 0.2, seed: int = 0):
    """A built-in dataset, split (stratified, seeded) and standardised on the training part."""
    return prepare(data.load_builtin(name), test_fraction=test_fraction, seed=seed)


def prepare(dataset: data.Dataset, *, test_fraction: float = 0.2, seed: int = 0,
            return_standardizer: bool = False):
    """Split, then standardise both parts with the mean and std of the training part.

    The standardiser belongs to the data party: ``return_standardizer=True`` returns it too,
    for ``train(..., standardizer=...)`` to save in the data party's checkpoint.
    """
    train_set, test_set = data.train_test_split(dataset, test_fraction=test_fraction, seed=seed)
    scaler = data.Standardizer().fit(train_set.X)
    train_set.X = scaler.transform(train_set.X)
    test_set.X = scaler.transform(test_set.X)
    if return_standardizer:
        return train_set, test_set, scaler
    return train_set, test_set


def joint_first_layer(data_party: protocol.DataParty, label_party: protocol.LabelParty):
    """W = W_B + ε_acc as floats. Simulation diagnostics and tests only: no party can do this."""
    return (label_party.weight_share + data_party.noise_acc).decode()


def train(train_set: data.Dataset, test_set: data.Dataset | None = None,
          config: Config | None = None, *, progress: bool = False, keypair=None,
          checkpoint_dir=None, resume: bool = False, standardizer=None,
          executor=None) -> Result:
    """Train encrypted (two parties) and plaintext (the twin) on the same batches, and compare.

    ``checkpoint_dir``: after every epoch each party saves its own file there
    (``data_party.npz``, ``label_party.npz``; see checkpoint.DataPartyState/LabelPartyState).
    ``standardizer`` — the data party's, from ``prepare(..., return_standardizer=True)`` — is
    saved with the data party, so that prediction applies it to new rows. ``resume=True``
    continues from those files up to ``config.epochs``: the same data and settings are required,
    the key pair comes from the data party's file, and [[X]] is encrypted afresh. ``losses``
    then covers the resumed epochs only.

    ``executor`` (any concurrent.futures.Executor, e.g. a ProcessPoolExecutor or a dask client's
    get_executor()) runs the modular exponentiations of both parties; None runs them here.
    """
    config = config or Config()
    sizes = config.layer_sizes(train_set.X.shape[1], train_set.n_classes)
    for dataset in (train_set, test_set):
        if dataset is not None:
            check_feature_range(dataset.X, config.plan, feature_names=dataset.feature_names,
                                ids=dataset.ids, source=dataset.name)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs the checkpoint directory to resume from")
    start = time.perf_counter()
    first_epoch = 0
    feature_mean = None if standardizer is None else standardizer.mean
    feature_std = None if standardizer is None else standardizer.std
    if resume:
        if keypair is not None:
            raise ValueError("resume takes the key pair from the data party's checkpoint; "
                             "pass no keypair")
        data_state, label_state = load_checkpoints(checkpoint_dir,
                                                   allow_insecure=config.allow_insecure)
        _check_resumable(config, sizes, data_state, label_state, checkpoint_dir,
                         n_features=train_set.X.shape[1])
        first_epoch = label_state.epochs_completed
        feature_mean, feature_std = data_state.feature_mean, data_state.feature_std
        data_party = data_state.restore(train_set.X)
        label_party = label_state.restore(train_set.y, epochs=config.epochs)
        channel = protocol.Channel(sigma=config.plan.sigma)
        protocol.resume_setup(data_party, label_party, channel, packing=config.packing,
                              executor=executor)
    else:
        if checkpoint_dir is not None:
            _refuse_to_overwrite(checkpoint_dir)
        data_party = protocol.DataParty(train_set.X, plan=config.plan, key_bits=config.key_bits,
                                        allow_insecure=config.allow_insecure, keypair=keypair,
                                        init_seed=config.init_seed, bottom=config.bottom)
        label_party = protocol.LabelParty(train_set.y, sizes, activation=config.activation,
                                          lr=config.lr, momentum=config.momentum,
                                          batch_size=config.batch_size, epochs=config.epochs,
                                          seed=config.seed, plan=config.plan)
        channel = protocol.Channel(sigma=config.plan.sigma)
        protocol.setup(data_party, label_party, channel, packing=config.packing,
                       executor=executor)

    n_batches = -(-len(train_set.y) // config.batch_size)
    bar = _progress_bar((config.epochs - first_epoch) * n_batches) if progress else None
    losses = []
    for epoch in range(first_epoch, config.epochs):
        update = None if bar is None else _bar_updater(bar, epoch)
        losses.extend(protocol.train_epoch(data_party, label_party, channel, epoch, update))
        if checkpoint_dir is not None:
            save_checkpoints(checkpoint_dir, data_party, label_party, epochs_completed=epoch + 1,
                             feature_names=train_set.feature_names, feature_mean=feature_mean,
                             feature_std=feature_std, class_names=train_set.class_names)
    if bar is not None:
        bar.close()
    encrypted_seconds = time.perf_counter() - start

    # The twin starts where the two parties started: the layers above from the public seed, the
    # first layer (and any bottom model) from the data party's own init seed, which only this
    # omniscient simulation can read — the label party never learns W0.
    plaintext = nn.MLP(sizes, activation=config.activation, seed=config.seed)
    plaintext.layers[0].W = nn.init_layer(sizes, 0, config.activation, data_party.init_seed).W
    plaintext_bottom = protocol.make_bottom(config.bottom, train_set.X.shape[1],
                                            data_party.init_seed)
    if plaintext_bottom is None:
        history = nn.train_plaintext(plaintext, train_set.X, train_set.y, epochs=config.epochs,
                                     batch_size=config.batch_size,
                                     lr=config.plan.snap_lr(config.lr), seed=config.seed,
                                     momentum=config.momentum)
    else:
        history = train_plaintext_composite(plaintext_bottom, plaintext, train_set.X, train_set.y,
                                            config)

    metrics = {
        "dataset": train_set.name,
        "n_train": int(len(train_set.y)),
        "n_test": int(len(test_set.y)) if test_set is not None else 0,
        "layer_sizes": list(sizes),
        "key_bits": data_party.public_key.n.bit_length(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seconds": encrypted_seconds,
        "final_loss": float(np.mean(losses[-n_batches:])),
        "plaintext_final_loss": float(np.mean(history["batch_loss"][-n_batches:])),
        "max_abs_weight_diff": max_weight_diff(data_party, label_party, plaintext,
                                               plaintext_bottom),
        "packing": label_party.packing.to_dict() if label_party.packing else None,
    }
    if config.bottom is not None:
        metrics["bottom_width"] = data_party.bottom.width
    if test_set is not None:
        scores = protocol.predict_scores(data_party, label_party, channel, test_set.X)
        predicted = label_party.model.classes_from_scores(scores)
        plain_inputs = test_set.X if plaintext_bottom is None else plaintext_bottom.forward(test_set.X)
        plain_predicted = plaintext.predict(plain_inputs)
        metrics["test_accuracy"] = float(np.mean(predicted == test_set.y))
        metrics["plaintext_test_accuracy"] = float(np.mean(plain_predicted == test_set.y))
        metrics["prediction_agreement"] = float(np.mean(predicted == plain_predicted))
        if label_party.layer_sizes[-1] == 1:  # binary: accuracy hides a lot on skewed classes
            metrics["test_auc"] = roc_auc(scores, test_set.y)
            plain_scores = plaintext.scores_from_logits(plaintext.forward(plain_inputs))
            metrics["plaintext_test_auc"] = roc_auc(plain_scores, test_set.y)
            metrics["majority_class_rate"] = float(max(np.mean(test_set.y), 1 - np.mean(test_set.y)))
    totals = channel.totals()
    metrics["messages"] = sum(t["messages"] for t in totals.values())
    metrics["bytes"] = sum(t["bytes"] for t in totals.values())
    metrics["per_party"] = totals
    metrics["leakage"] = channel.report()
    metrics["step_seconds"] = dict(channel.step_seconds)
    metrics["step_ops"] = {k: dict(v) for k, v in channel.step_ops.items()}
    if resume:
        metrics["resumed_after_epoch"] = first_epoch
    return Result(data_party, label_party, channel, plaintext, losses,
                  list(history["batch_loss"]), encrypted_seconds, metrics)


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


def train_plaintext_composite(bottom: protocol.BottomModel, mlp: nn.MLP, X, y,
                              config: Config) -> dict:
    """The plaintext twin of a run with a bottom model: bottom layer + MLP, float64, the same
    batches. Per batch: α = bottom(X), the MLP's forward and backward on α, then ∂L/∂α = δ·Wᵀ
    with the W of the forward pass, and plain SGD on the bottom and on the first layer's W."""
    lr = config.plan.snap_lr(config.lr)
    optimizer = nn.SGD(lr, config.momentum)
    first = mlp.layers[0]
    history = {"batch_loss": []}
    for epoch in range(config.epochs):
        for rows in nn.minibatches(len(y), config.batch_size, seed=config.seed, epoch=epoch):
            logits = mlp.forward(bottom.forward(X[rows]))
            loss, dlogits = mlp.loss_and_grad(logits, y[rows])
            input_gradient = mlp.backward(dlogits)
            first.W -= lr * first.dW
            optimizer.step(mlp.top_named_params())
            bottom.backward_step(input_gradient, lr)
            history["batch_loss"].append(loss)
    return history


def _bar_updater(bar, epoch: int):
    def update(loss):
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
        bar.update(1)
    return update


def _progress_bar(total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc="encrypted training", unit="batch", file=sys.stderr,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------
def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative
    (ties count half), from the ranks (Mann–Whitney U)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    positives = int(np.sum(labels == 1))
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    # Runs of equal scores are contiguous once sorted; each run gets its average (1-based) rank.
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def format_report(metrics: dict) -> str:
    lines = [f"dataset {metrics['dataset']}: {metrics['n_train']} training rows, layers "
             f"{metrics['layer_sizes']}, {metrics['key_bits']}-bit Paillier key, "
             f"{metrics['epochs']} epochs of batches of {metrics['batch_size']}"]
    if "test_accuracy" in metrics:
        lines.append(f"test accuracy      encrypted {metrics['test_accuracy']:.4f}   plaintext "
                     f"{metrics['plaintext_test_accuracy']:.4f}   same prediction on "
                     f"{100 * metrics['prediction_agreement']:.1f}% of {metrics['n_test']} rows")
    if "test_auc" in metrics:
        lines.append(f"test ROC AUC       encrypted {metrics['test_auc']:.4f}   plaintext "
                     f"{metrics['plaintext_test_auc']:.4f}   (always guessing the majority "
                     f"class: accuracy {metrics['majority_class_rate']:.4f}, AUC 0.5)")
    lines.append(f"final loss         encrypted {metrics['final_loss']:.6f}   plaintext "
                 f"{metrics['plaintext_final_loss']:.6f}")
    lines.append(f"max |W − W_plain|  {metrics['max_abs_weight_diff']:.3e} over all layers "
                 "(fixed-point quantisation)")
    lines.append(f"wall time          {metrics['seconds']:.1f} s encrypted training")
    if metrics.get("packing"):
        lines.append(f"packing            {metrics['packing']['forward']['slots']} rows per "
                     f"ciphertext in step 1, {metrics['packing']['backward']['slots']} features "
                     "per ciphertext in step 4")
    steps = metrics.get("step_seconds", {})
    if steps:
        lines.append("time per step      " + "   ".join(f"{k}: {v:.1f} s" for k, v in steps.items()))
    for party, total in metrics["per_party"].items():
        lines.append(f"{party} party sent   {total['messages']} messages, "
                     f"{total['bytes'] / 1e6:.2f} MB")
    lines.append("")
    lines.append("what crossed, and what the receiver learns:")
    header = f"  {'step':<8}{'from → to':<16}{'message':<22}{'kind':<12}{'count':>6}  learns"
    lines.append(header)
    for row in metrics["leakage"]:
        lines.append(f"  {row['step']:<8}{row['sender'] + ' → ' + row['receiver']:<16}"
                     f"{row['name']:<22}{row['kind']:<12}{row['count']:>6}  {row['learned']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checkpoints, prediction from checkpoints, and the joint export
# ----------------------------------------------------------------------------------------------
REVEAL_FLAG = "--i-understand-this-reveals-the-weights"
MODEL_FORMAT = "acml-plaintext-model"


def check_feature_range(X, plan: FixedPointPlan, *, feature_names, ids, source: str,
                        raw=None, mean=None, std=None) -> None:
    """Every standardised value must be finite and |x| < 2**x_int_bits, before any encryption.

    The error names the row's id, the column and the bound; given the raw values and the
    standardisation (prediction), it gives the range the raw column accepts. Checking up front
    means a bad test row fails in a second, not after an hour of encrypted training.
    """
    X = np.asarray(X, dtype=np.float64)
    limit = 2.0 ** plan.x_int_bits
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(X) | (np.abs(X) >= limit)
    if not bad.any():
        return
    row, col = map(int, np.argwhere(bad)[0])
    where = f"{source}, id {str(ids[row])!r}, column {feature_names[col]!r}"
    if not np.isfinite(X[row, col]):
        raise ValueError(f"{where}: value {X[row, col]} is not finite")
    if raw is not None and mean is not None and std is not None:
        low, high = mean[col] - limit * std[col], mean[col] + limit * std[col]
        raise OverflowError(f"{where}: value {raw[row, col]:g} is beyond the fixed-point range; "
                            f"this column takes values strictly between {low:g} and {high:g} "
                            f"(±{limit:g} standard deviations, x_int_bits={plan.x_int_bits})")
    raise OverflowError(f"{where}: standardised value {X[row, col]:g} is beyond the fixed-point "
                        f"range; the largest magnitude allowed is just below {limit:g} "
                        f"(x_int_bits={plan.x_int_bits})")


def checkpoint_paths(checkpoint_dir) -> tuple[str, str]:
    """(data party's file, label party's file) in ``checkpoint_dir``."""
    return tuple(os.path.join(os.fspath(checkpoint_dir), checkpoint.CHECKPOINT_FILES[role])
                 for role in protocol.PARTIES)


def save_checkpoints(checkpoint_dir, data_party, label_party, *, epochs_completed: int,
                     feature_names=None, feature_mean=None, feature_std=None,
                     class_names=None) -> None:
    """Each party writes its own file, atomically. In a deployment each would do so on its own
    machine; a crash between the two writes leaves files one epoch apart, which loading refuses."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    data_path, label_path = checkpoint_paths(checkpoint_dir)
    checkpoint.DataPartyState.of(data_party, epochs_completed=epochs_completed,
                               feature_names=feature_names, feature_mean=feature_mean,
                               feature_std=feature_std).save(data_path)
    checkpoint.LabelPartyState.of(label_party, epochs_completed=epochs_completed,
                                class_names=class_names).save(label_path)


def load_checkpoints(checkpoint_dir, *, allow_insecure: bool = False):
    """(DataPartyState, LabelPartyState) from ``checkpoint_dir``, each validated, and checked
    to belong together (same key, same epoch, same plans)."""
    data_path, label_path = checkpoint_paths(checkpoint_dir)
    data_state = checkpoint.DataPartyState.load(data_path, allow_insecure=allow_insecure)
    label_state = checkpoint.LabelPartyState.load(label_path, allow_insecure=allow_insecure)
    checkpoint.check_checkpoint_pair(data_state, label_state)
    return data_state, label_state


def _refuse_to_overwrite(checkpoint_dir) -> None:
    for path in checkpoint_paths(checkpoint_dir):
        if os.path.exists(path):
            raise ValueError(f"{path} already exists: resume it, or train into another directory")


def _describe_bottom(bottom) -> str:
    return "none" if bottom is None else f"{bottom.width} wide ({bottom.activation_name})"


def _check_resumable(config: Config, sizes, data_state, label_state, checkpoint_dir, *,
                     n_features: int) -> None:
    asked_bottom = protocol.make_bottom(config.bottom, n_features, config.seed)
    saved_bottom = data_state.bottom
    if _describe_bottom(asked_bottom) != _describe_bottom(saved_bottom):
        raise ValueError(f"the checkpoint's data party has bottom model "
                         f"{_describe_bottom(saved_bottom)}, this run asks for "
                         f"{_describe_bottom(asked_bottom)}; resume with the same --bottom")
    saved = label_state.training
    asked = {"layer_sizes": list(sizes), "activation": config.activation, "lr": config.lr,
             "momentum": config.momentum, "batch_size": config.batch_size, "seed": config.seed}
    for key, value in asked.items():
        if saved[key] != value:
            raise ValueError(f"the checkpoint was trained with {key} = {saved[key]!r}, this run "
                             f"asks for {value!r}; resume with the same settings")
    if label_state.plan != config.plan:
        raise ValueError(f"the checkpoint's fixed-point plan {label_state.plan.to_dict()} differs "
                         f"from this run's {config.plan.to_dict()}")
    key_bits = data_state.public_key.n.bit_length()
    if key_bits != config.key_bits:
        raise ValueError(f"the checkpoint's key has {key_bits} bits, this run asks for "
                         f"{config.key_bits}; resume with the same key size")
    if label_state.epochs_completed >= config.epochs:
        raise ValueError(f"nothing to resume: {checkpoint_dir} holds {label_state.epochs_completed}"
                         f" completed epoch(s) and this run asks for {config.epochs}")


@dataclass
class Prediction:
    """What prediction from checkpoints gives the label party, row by row.

    ``scores`` as the model outputs them: P(class 1) of shape (m,) for two classes, the softmax
    (m, k) otherwise. ``confidence`` is the probability of the predicted class.
    """

    class_ids: np.ndarray
    class_names: list
    scores: np.ndarray
    confidence: np.ndarray


def predict(checkpoint_dir, X, *, feature_names=None, ids=None, source: str = "features",
            allow_insecure: bool = False) -> Prediction:
    """Encrypted prediction on new rows X (raw, as in the features file) from both checkpoints.

    The data party standardises X with its saved mean and std, applies its bottom model if it
    has one, and encrypts the result; the label party runs step 1 with its weight share and the
    layers above (protocol.predict_scores).
    Neither party's share is combined with the other's. With ``feature_names``, the columns of
    X are matched to the training features by name (any order, none missing, none extra).
    """
    data_state, label_state = load_checkpoints(checkpoint_dir, allow_insecure=allow_insecure)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{source}: the rows to predict must be a non-empty table, got shape "
                         f"{X.shape}")
    if feature_names is not None:
        X = _columns_in_training_order(X, list(feature_names), data_state.feature_names, source)
    ids = np.arange(len(X)) if ids is None else np.asarray(ids)
    standardized = data_state.standardize(X)
    check_feature_range(standardized, data_state.plan, feature_names=data_state.feature_names,
                        ids=ids, source=source, raw=X, mean=data_state.feature_mean,
                        std=data_state.feature_std)
    data_party = data_state.restore(standardized, same_features=False)
    label_party = label_state.restore()
    channel = protocol.Channel(sigma=data_state.plan.sigma)
    protocol.connect_for_prediction(data_party, label_party, channel)
    scores = protocol.predict_scores(data_party, label_party, channel, standardized)
    class_ids = label_party.model.classes_from_scores(scores)
    if scores.ndim == 1:
        confidence = np.where(class_ids == 1, scores, 1.0 - scores)
    else:
        confidence = scores[np.arange(len(class_ids)), class_ids]
    return Prediction(class_ids, [label_state.class_names[k] for k in class_ids], scores,
                      confidence)


def _columns_in_training_order(X, names: list, trained: list, source: str) -> np.ndarray:
    missing = [name for name in trained if name not in names]
    unexpected = [name for name in names if name not in trained]
    if missing or unexpected:
        raise ValueError(f"{source}: its columns are not the training features: missing "
                         f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}")
    if X.shape[1] != len(names):
        raise ValueError(f"{source}: {X.shape[1]} columns for {len(names)} names")
    return X[:, [names.index(name) for name in trained]]


def export_model(checkpoint_dir, out, *, i_understand_this_reveals_the_weights: bool = False
                 ) -> dict:
    """Combine the two shares into the plaintext model W = W_B + ε_acc: the weights stop being
    private here, by the explicit consent of both parties.

    Writes ``out`` (.npz, loadable with allow_pickle=False): ``layers.0.W``, ``layers.0.b``,
    ``layers.1.W``, ... as float64; ``standardizer.mean``/``standardizer.std`` (the data
    party's, needed to use the model on raw rows); with a bottom model, its ``bottom.W`` and
    ``bottom.b`` (the model is then bottom, then the MLP); and ``architecture``, a JSON string
    (layer sizes, activation, loss, feature and class names, and ``bottom``: null or its
    n_features, width and activation). Returns the arrays written.
    """
    if not i_understand_this_reveals_the_weights:
        raise ValueError("export combines both parties' shares into the plaintext weights, "
                         f"which then stop being private; consent with {REVEAL_FLAG}")
    data_state, label_state = load_checkpoints(checkpoint_dir, allow_insecure=True)
    sizes = list(label_state.layer_sizes)
    model = nn.MLP(sizes, activation=label_state.training["activation"])
    architecture = {"format": MODEL_FORMAT, "version": 1, "layer_sizes": sizes,
                    "activation": model.activation, "loss": model.loss,
                    "feature_names": data_state.feature_names,
                    "class_names": label_state.class_names,
                    "epochs_completed": label_state.epochs_completed, "bottom": None}
    arrays = {"layers.0.W": (label_state.weight_share + data_state.noise_acc).decode()}
    bottom = data_state.bottom
    if bottom is not None:
        architecture["bottom"] = {"n_features": bottom.n_features, "width": bottom.width,
                                  "activation": bottom.activation_name}
        arrays["bottom.W"], arrays["bottom.b"] = bottom.layer.W, bottom.layer.b
    arrays.update(label_state.parameters)
    arrays["standardizer.mean"] = data_state.feature_mean
    arrays["standardizer.std"] = data_state.feature_std
    arrays = {name: arrays[name] for name in sorted(arrays)}
    arrays["architecture"] = np.array(json.dumps(architecture))
    checkpoint.write_atomically(out, lambda handle: np.savez(handle, **arrays))
    return arrays


@dataclass
class PlainModel:
    """An exported model: the plaintext MLP, plus the data party's standardisation and its
    bottom model (None without one)."""

    mlp: nn.MLP
    feature_mean: np.ndarray
    feature_std: np.ndarray
    feature_names: list
    class_names: list
    bottom: protocol.BottomModel | None = None

    def inputs(self, X) -> np.ndarray:
        """What the MLP takes for raw rows: standardised as at training, then α = bottom(X)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"features of shape {X.shape}: the model takes "
                             f"{len(self.feature_names)} columns")
        standardized = (X - self.feature_mean) / self.feature_std
        return standardized if self.bottom is None else self.bottom.forward(standardized)

    def predict_scores(self, X) -> np.ndarray:
        """Scores for raw rows: standardised as at training, through the bottom model if any,
        then the MLP."""
        return self.mlp.predict_scores(self.inputs(X))


def load_model(path) -> PlainModel:
    """Read an exported model (no pickle) back into an nn.MLP."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        architecture = json.loads(str(arrays.pop("architecture")[()]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable exported model ({error})") from None
    if architecture.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an exported ACML model")
    mlp = nn.MLP(architecture["layer_sizes"], activation=architecture["activation"],
                 loss=architecture["loss"])
    for name, _ in list(mlp.named_params()):
        _, index, attribute = name.split(".")
        layer = mlp.layers[int(index)]
        if name not in arrays:
            raise ValueError(f"{path}: no array {name!r} for the architecture it declares")
        if arrays[name].shape != getattr(layer, attribute).shape:
            raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, the architecture "
                             f"says {getattr(layer, attribute).shape}")
        setattr(layer, attribute, np.array(arrays[name], dtype=np.float64))
    return PlainModel(mlp, arrays["standardizer.mean"], arrays["standardizer.std"],
                      architecture["feature_names"], architecture["class_names"],
                      _exported_bottom(arrays, architecture, path))


def _exported_bottom(arrays: dict, architecture: dict, path) -> protocol.BottomModel | None:
    """The bottom model an export declares (None if it declares none), checked against its
    arrays (shapes, float64, finite) and against the MLP's input width."""
    spec = architecture.get("bottom")
    if spec is None:
        return None
    try:
        shapes = {"bottom.W": (int(spec["n_features"]), int(spec["width"])),
                  "bottom.b": (int(spec["width"]),)}
        activation = spec["activation"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad bottom model in its architecture ({error!r})") from None
    if shapes["bottom.b"][0] != architecture["layer_sizes"][0]:
        raise ValueError(f"{path}: its bottom model is {shapes['bottom.b'][0]} wide, the MLP "
                         f"takes {architecture['layer_sizes'][0]} inputs")
    for name, shape in shapes.items():
        if name not in arrays:
            raise ValueError(f"{path}: no array {name!r} for the bottom model it declares")
        if arrays[name].shape != shape or arrays[name].dtype != np.float64:
            raise ValueError(f"{path}: {name} is {arrays[name].dtype} of shape "
                             f"{arrays[name].shape}, the architecture says float64 of {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{path}: {name} holds a value that is not finite")
    if activation not in nn.ACTIVATIONS:
        raise ValueError(f"{path}: unknown bottom activation {activation!r}")
    return checkpoint.copy_bottom_model(arrays["bottom.W"], arrays["bottom.b"], activation)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
class UsageError(ValueError):
    """Bad input at the command line: reported in one line, exit code 2."""


def _parse_hidden(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes widths like 8 or 16,8, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden widths must be positive, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_training_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default=None, choices=data.BUILTIN_DATASETS,
                        help="a built-in dataset (default: german_credit)")
    source.add_argument("--features", help="features CSV of the data party")
    source.add_argument("--labels", help="labels CSV of the label party")
    source.add_argument("--id-column", help="id column joining the two CSVs")
    source.add_argument("--label-column", help="label column of the labels CSV")
    source.add_argument("--test-fraction", type=float, default=0.2)
    model = parser.add_argument_group("training")
    model.add_argument("--hidden", type=_parse_hidden, default=(8,),
                       help="hidden widths, comma-separated; the first is the interactive layer")
    model.add_argument("--activation", default="relu", choices=sorted(nn.ACTIVATIONS))
    model.add_argument("--epochs", type=_positive(int), default=3)
    model.add_argument("--batch-size", type=_positive(int), default=64)
    model.add_argument("--lr", type=_positive(float), default=0.1)
    model.add_argument("--momentum", type=float, default=0.0,
                       help="momentum for the layers above the first (the first is plain SGD)")
    model.add_argument("--seed", type=int, default=0,
                       help="public seed: the split, the batch order and the layers above")
    model.add_argument("--init-seed", type=int, default=None,
                       help="the data party's own seed for W0, only to reproduce a run "
                            "(default: from secrets; the label party must never know W0)")
    model.add_argument("--bottom", type=_positive(int), default=None, metavar="K",
                       help="give the data party a bottom model X → α (K wide, ReLU) under the "
                            "interactive layer; step 4b then reveals δ·Wᵀ to it (a label leak)")
    crypto = parser.add_argument_group("encryption")
    crypto.add_argument("--key-bits", type=int, default=DEFAULT_KEY_BITS,
                        help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    crypto.add_argument("--insecure-small-key", action="store_true",
                        help="allow keys under 1024 bits (tests and demos only: NOT secure)")
    crypto.add_argument("--sigma", type=int, default=40,
                        help="statistical hiding margin of every mask, in bits (default 40)")
    crypto.add_argument("--no-packing", dest="packing", action="store_false",
                        help="one value per ciphertext (the same weights, many times slower)")
    crypto.add_argument("--workers", type=_positive(int), default=1,
                        help="processes for the modular exponentiations (default 1: this one)")


def datasets_from_args(args, *, return_standardizer: bool = False):
    if args.features or args.labels:
        missing = [flag for flag, value in (("--features", args.features),
                                            ("--labels", args.labels),
                                            ("--id-column", args.id_column),
                                            ("--label-column", args.label_column)) if not value]
        if missing:
            raise UsageError(f"CSV input needs {', '.join(missing)}")
        if args.dataset:
            raise UsageError("give either --dataset or --features/--labels, not both")
        dataset = data.load_csv_pair(args.features, args.labels, id_column=args.id_column,
                                     label_column=args.label_column)
    else:
        dataset = data.load_builtin(args.dataset or "german_credit")
    if not 0.0 < args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    return prepare(dataset, test_fraction=args.test_fraction, seed=args.seed,
                   return_standardizer=return_standardizer)


def config_from_args(args) -> Config:
    if args.key_bits < paillier.INSECURE_KEY_BITS and not args.insecure_small_key:
        raise UsageError(f"--key-bits {args.key_bits} is under {paillier.INSECURE_KEY_BITS} bits "
                         "and not secure; add --insecure-small-key for tests and demos")
    return Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  key_bits=args.key_bits, seed=args.seed, allow_insecure=args.insecure_small_key,
                  plan=FixedPointPlan(sigma=args.sigma), bottom=args.bottom,
                  init_seed=args.init_seed,
                  packing=args.packing)


def command_train(args) -> int:
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    train_set, test_set, scaler = datasets_from_args(args, return_standardizer=True)
    config = config_from_args(args)
    if args.key_bits == DEFAULT_KEY_BITS:
        print(f"note: {KEY_BITS_NOTE}", file=sys.stderr)
    with warnings.catch_warnings(), workers(args.workers) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        result = train(train_set, test_set, config, progress=not args.quiet,
                       checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                       standardizer=scaler, executor=executor)
    if args.resume:
        print(f"resumed from {args.checkpoint_dir} after epoch "
              f"{result.metrics['resumed_after_epoch']}", file=sys.stderr)
    print(result.summary())
    if args.json:
        checkpoint.write_atomically(args.json, lambda handle: json.dump(result.metrics, handle,
                                                                      indent=2), mode="w")
    if args.transcript:
        checkpoint.write_atomically(args.transcript, lambda handle: handle.writelines(
            line + "\n" for line in result.channel.transcript_lines()), mode="w")
    return 0


def command_predict(args) -> int:
    ids, X, names = data.load_features_csv(args.features, args.id_column)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        prediction = predict(args.checkpoint_dir, X, feature_names=names, ids=ids,
                             source=args.features, allow_insecure=args.insecure_small_key)

    def write(handle):
        writer = csv.writer(handle)
        writer.writerow([args.id_column, "predicted_class", "score"])
        for row_id, name, score in zip(ids, prediction.class_names, prediction.confidence):
            writer.writerow([row_id, name, repr(float(score))])

    if args.out:
        checkpoint.write_atomically(args.out, write, mode="w", newline="")
        print(f"wrote {len(ids)} predictions to {args.out}", file=sys.stderr)
    else:
        write(sys.stdout)
    return 0


def command_export(args) -> int:
    if not args.i_understand_this_reveals_the_weights:
        raise UsageError("export combines both parties' shares into the plaintext weights, which "
                         f"then stop being private; add {REVEAL_FLAG} to consent")
    arrays = export_model(args.checkpoint_dir, args.out, i_understand_this_reveals_the_weights=True)
    names = [name for name in arrays if name.startswith(("bottom.", "layers."))]
    print(f"wrote {args.out}: {', '.join(names)}"
          " — these weights are no longer private", file=sys.stderr)
    return 0


def command_party(args) -> int:
    """One party of a two-process training over TCP (transport.py); the label party reports."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    token = transport.read_token(args.token_file)
    frame_cap = int(args.max_frame_mb * 2 ** 20)
    bar = []

    def progress(done, total, loss):
        if not bar:
            bar.append(_progress_bar(total))
        bar[0].update(1)
        if loss is not None:
            bar[0].set_postfix(loss=f"{loss:.4f}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        if args.role == "data":
            ids, X, feature_names = data.load_features_csv(args.features, args.id_column)
            if args.key_bits < paillier.INSECURE_KEY_BITS and not args.insecure_small_key:
                raise UsageError(f"--key-bits {args.key_bits} is under "
                                 f"{paillier.INSECURE_KEY_BITS} bits and not secure; add "
                                 "--insecure-small-key for tests and demos")
            if args.resume and args.init_seed is not None:
                raise UsageError("--resume takes W's mask from the checkpoint; drop --init-seed")
            host, port = transport.parse_address(args.listen, "--listen")
            # Resuming, the key pair is the checkpoint's: no new one.
            keypair = None if args.resume else paillier.generate_keypair(
                args.key_bits, allow_insecure=args.insecure_small_key)
            with transport.listen(host, port) as listener:
                print(f"data party: listening on {transport.address_of(listener)}", flush=True)
                connection = transport.accept_peer(
                    listener, token, timeout=args.timeout, max_frame_bytes=frame_cap,
                    log=lambda line: print(f"data party: {line}", file=sys.stderr, flush=True))
            run = transport.run_data_party(connection, ids, X, keypair=keypair,
                                           plan=FixedPointPlan(sigma=args.sigma),
                                           init_seed=args.init_seed,
                                           progress=None if args.quiet else progress,
                                           checkpoint_dir=args.checkpoint_dir,
                                           resume=args.resume, feature_names=feature_names,
                                           allow_insecure=args.insecure_small_key)
        else:
            ids, y, class_names = data.load_labels_csv(args.labels, args.id_column,
                                                       args.label_column)
            config = Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                            seed=args.seed, plan=FixedPointPlan(sigma=args.sigma),
                            allow_insecure=args.insecure_small_key)
            host, port = transport.parse_address(args.connect, "--connect")
            connection = transport.connect_peer(host, port, token, timeout=args.timeout,
                                                max_frame_bytes=frame_cap)
            run = transport.run_label_party(connection, ids, y, len(class_names), config,
                                            test_fraction=args.test_fraction,
                                            progress=None if args.quiet else progress,
                                            checkpoint_dir=args.checkpoint_dir,
                                            resume=args.resume, class_names=class_names)
    if bar:
        bar[0].close()
    if args.role == "data":
        print(run.summary())
        return 0
    metrics = {"dataset": Path(args.labels).stem, **run.metrics()}
    print(transport.format_label_report(metrics))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(metrics, handle, indent=2)
    if args.transcript:
        with open(args.transcript, "w") as handle:
            for line in run.channel.transcript_lines():
                handle.write(line + "\n")
    return 0


def add_party_parser(commands) -> None:
    """`party data` listens with the features and the key pair; `party label` connects with the
    labels, chooses the network and the training plan, and writes the report."""
    party = commands.add_parser("party", help="one of two parties training together over TCP")
    roles = party.add_subparsers(dest="role", required=True)
    data_role = roles.add_parser("data", help="the data party: features and the key pair; listens")
    data_role.add_argument("--listen", required=True, metavar="HOST:PORT",
                           help="address to listen on (port 0: any free port, printed)")
    data_role.add_argument("--features", required=True, help="this party's features CSV")
    data_role.add_argument("--id-column", required=True, help="id column of the features CSV")
    data_role.add_argument("--key-bits", type=int, default=DEFAULT_KEY_BITS,
                           help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    data_role.add_argument("--insecure-small-key", action="store_true",
                           help="allow keys under 1024 bits (tests and demos only: NOT secure)")
    data_role.add_argument("--init-seed", type=int, default=None,
                           help="seed of the first layer's initial weight W0, to reproduce a run; "
                                "W0 must stay secret from the label party (default: from secrets)")
    label_role = roles.add_parser("label", help="the label party: labels and the network; "
                                                "connects, and writes the report")
    label_role.add_argument("--connect", required=True, metavar="HOST:PORT",
                            help="the data party's address")
    label_role.add_argument("--labels", required=True, help="this party's labels CSV")
    label_role.add_argument("--id-column", required=True, help="id column of the labels CSV")
    label_role.add_argument("--label-column", required=True, help="label column of the labels CSV")
    label_role.add_argument("--hidden", type=_parse_hidden, default=(8,),
                            help="hidden widths, comma-separated; the first is the interactive layer")
    label_role.add_argument("--activation", default="relu", choices=sorted(nn.ACTIVATIONS))
    label_role.add_argument("--epochs", type=_positive(int), default=3)
    label_role.add_argument("--batch-size", type=_positive(int), default=64)
    label_role.add_argument("--lr", type=_positive(float), default=0.1)
    label_role.add_argument("--momentum", type=float, default=0.0,
                            help="momentum for the layers above the first (the first is plain SGD)")
    label_role.add_argument("--seed", type=int, default=0,
                            help="public seed of the split, the batch order and the layers above")
    label_role.add_argument("--test-fraction", type=float, default=0.2,
                            help="rows held out for prediction: a seeded split, not stratified "
                                 "(the data party has no labels); 0 for none")
    label_role.add_argument("--insecure-small-key", action="store_true",
                            help="accept a checkpoint whose key is under 1024 bits when resuming "
                                 "(tests and demos only: NOT secure)")
    label_role.add_argument("--json", help="write the report as JSON to this path")
    label_role.add_argument("--transcript", help="write every message as JSON lines")
    for role in (data_role, label_role):
        role.add_argument("--sigma", type=int, default=40,
                          help="statistical hiding margin of every mask, in bits (default 40); "
                               "both parties must agree")
        role.add_argument("--token-file", help="file holding the shared secret token (default: "
                                               "the ACML_TOKEN environment variable)")
        role.add_argument("--timeout", type=_positive(float), default=transport.DEFAULT_TIMEOUT,
                          help="seconds to wait for the peer: to connect, and for each message "
                               f"(default {transport.DEFAULT_TIMEOUT:g})")
        role.add_argument("--max-frame-mb", type=_positive(float), default=256,
                          help="refuse larger messages (default 256)")
        role.add_argument("--quiet", action="store_true", help="no progress bar")
        role.add_argument("--checkpoint-dir", metavar="DIR",
                          help="after every epoch, save this party's own file here (and only "
                               "its own: each party keeps its own directory)")
        role.add_argument("--resume", action="store_true",
                          help="continue from this party's file in --checkpoint-dir up to the "
                               "label party's --epochs; both parties must resume, from the "
                               "same epoch")
        role.set_defaults(handler=command_party)

def command_audit(args) -> int:
    import audit  # the audit pulls in every flaw's machinery: only load it when asked

    key_bits = audit.DEFAULT_KEY_BITS if args.key_bits is None else args.key_bits
    if args.key_bits is not None and key_bits < paillier.INSECURE_KEY_BITS \
            and not args.insecure_small_key:
        raise UsageError(f"--key-bits {key_bits} is below {paillier.INSECURE_KEY_BITS}: pass "
                         "--insecure-small-key too (the audit's default small key needs no flag)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        warnings.simplefilter("ignore", protocol.InsecureFlawWarning)
        audits = audit.run_audit(key_bits=key_bits)
    print(audit.format_table(audits, key_bits))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([row.to_json() for row in audits], handle, indent=2)
    expected = all(row.caught and row.succeeds_on_flawed and row.fails_on_real for row in audits)
    return 0 if expected else 1


def command_bench(args) -> int:
    import bench  # benchmarks are not the library: loaded only for this command

    bench.run(quick=args.quick, workers=args.workers, json_path=args.json)
    return 0


@contextmanager
def workers(count: int):
    """A process pool of ``count`` workers for the modular exponentiations (None for 1)."""
    if count <= 1:
        yield None
        return
    with ProcessPoolExecutor(count) as executor:
        yield executor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train encrypted and plaintext, compare")
    add_training_options(train_parser)
    train_parser.add_argument("--json", help="write the report as JSON to this path")
    train_parser.add_argument("--transcript", help="write every message as JSON lines")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train_parser.add_argument("--checkpoint-dir", metavar="DIR",
                              help="after every epoch each party saves its own file in DIR")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run saved in --checkpoint-dir up to --epochs")
    train_parser.set_defaults(handler=command_train)
    predict_parser = commands.add_parser(
        "predict", help="encrypted prediction on new rows, with both parties' checkpoints")
    predict_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    predict_parser.add_argument("--features", required=True, help="features CSV of the new rows")
    predict_parser.add_argument("--id-column", required=True, help="id column of that CSV")
    predict_parser.add_argument("--out", help="write id, predicted_class, score here (CSV); "
                                              "default: stdout")
    predict_parser.add_argument("--insecure-small-key", action="store_true",
                                help="accept a checkpoint key under 1024 bits (NOT secure)")
    predict_parser.set_defaults(handler=command_predict)
    export_parser = commands.add_parser(
        "export", help="combine both shares into a plaintext model: reveals the weights")
    export_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    export_parser.add_argument("--out", required=True, help="the model file (.npz)")
    export_parser.add_argument(REVEAL_FLAG, action="store_true",
                               help="both parties consent to revealing the weights")
    export_parser.set_defaults(handler=command_export)
    add_party_parser(commands)
    audit_parser = commands.add_parser("audit", help="re-create the six known flaws of production "
                                       "implementations; catch and attack each")
    audit_parser.add_argument("--json", help="write the table as a JSON list to this path")
    audit_parser.add_argument("--key-bits", type=int, default=None,
                              help="Paillier modulus size (default: a small demo key)")
    audit_parser.add_argument("--insecure-small-key", action="store_true",
                              help="allow an explicit --key-bits under 1024")
    audit_parser.set_defaults(handler=command_audit)
    bench_parser = commands.add_parser("bench", help="benchmark against python-paillier")
    bench_parser.add_argument("--quick", action="store_true",
                              help="tiny sizes and small keys: a smoke test of the benchmark")
    bench_parser.add_argument("--workers", type=_positive(int), default=2,
                              help="processes for the runs on workers (default 2)")
    bench_parser.add_argument("--json", help="write the results as JSON to this path")
    bench_parser.set_defaults(handler=command_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OverflowError, OSError, protocol.LeakageError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"acml.py {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
