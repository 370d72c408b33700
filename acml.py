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

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from jobs import run_directory
from jobs import data
from speed import kernels
from speed.engine import FastEngine
import nn
import protocol
import channel as channel_module
from channel import Channel, leakage_lines
from attacks.flaws import SECURE, InsecureFlaws, party_classes
from fixed import Fixed
from parties import BottomModel, DataParty, LabelParty, Prediction, make_bottom
from plan import FixedPointPlan, check_features, check_sigma
from jobs.export import MODEL_FORMAT, REVEAL_FLAG, PlainModel, export_model, load_model

__all__ = ["Config", "Result", "load_split", "prepare", "train", "predict", "export_model",
           "load_model", "PlainModel", "joint_first_layer",
           "max_weight_diff", "fixed_point_gap", "DEFAULT_KEY_BITS", "REVEAL_FLAG", "MODEL_FORMAT"]

DEFAULT_KEY_BITS = 2048
KEY_BITS_NOTE = ("2048-bit key by default: with packing, German credit's headline run takes "
                 "under a minute on one core (44 s measured); --workers 2 spreads the work "
                 "over two")


@dataclass
class Config:
    """Hyper-parameters both parties agree on (all public).

    The network's defaults are ``nn.HEADLINE``, measured on German credit over several secret
    W0 draws (tests/test_nn.py::test_headline_defaults_beat_baselines)."""

    hidden: tuple = nn.HEADLINE["hidden"]
    activation: str = nn.HEADLINE["activation"]
    epochs: int = nn.HEADLINE["epochs"]
    batch_size: int = nn.HEADLINE["batch_size"]
    lr: float = nn.HEADLINE["lr"]
    momentum: float = nn.HEADLINE["momentum"]
    key_bits: int = DEFAULT_KEY_BITS
    seed: int = nn.HEADLINE["seed"]  # public: the split, the batch order, the layers above
    allow_insecure: bool = False  # keys under 1024 bits (tests and demos)
    plan: FixedPointPlan = field(default_factory=FixedPointPlan)
    allow_insecure_sigma: bool = False  # plan.sigma under 40 bits (tests and demos)
    bottom: object = None  # None, a width k (ReLU) or (k, activation): the data party's bottom model
    # The data party's own seed for W0 (and its bottom model). None: drawn from `secrets`, as it
    # must be in a deployment — the label party must never be able to compute W0. An int only
    # to reproduce a run exactly (the tests do).
    init_seed: int | None = None
    packing: bool = True  # several values per ciphertext in steps 1 and 4 (same W either way)
    # Batches of whole fixed row blocks of this many rows (nn.block_minibatches), so that the
    # data party encrypts each block once at setup instead of every batch's rows; 0: row
    # batches. At most the rows one packed ciphertext holds (19 at 2048 bits, the default plan).
    block_rows: int = 0

    def label_settings(self, layer_sizes) -> dict:
        """The label party's own settings, as its checkpoint records them (all but epochs)."""
        return {"layer_sizes": list(layer_sizes), "activation": self.activation, "lr": self.lr,
                "momentum": self.momentum, "batch_size": self.batch_size, "seed": self.seed,
                "block_rows": self.block_rows, "fixed_point": self.plan.to_dict()}

    def layer_sizes(self, n_features: int, n_classes: int) -> tuple:
        """The network above the data: its input is X, or the bottom model's output α."""
        out = 1 if n_classes == 2 else n_classes
        if self.bottom is not None:
            n_features = self.bottom if isinstance(self.bottom, int) else self.bottom[0]
        return (n_features, *self.hidden, out)


@dataclass
class Result:
    data_party: DataParty
    label_party: LabelParty
    channel: Channel
    plaintext: nn.MLP
    losses: list
    plaintext_losses: list
    seconds: float
    metrics: dict

    def summary(self) -> str:
        return format_report(self.metrics)


def load_split(name: str, *, test_fraction: float = 0.2, seed: int = nn.HEADLINE["seed"]):
    """A built-in dataset, split (stratified, seeded) and standardised on the training part."""
    return prepare(data.load_builtin(name), test_fraction=test_fraction, seed=seed)


def prepare(dataset: data.Dataset, *, test_fraction: float = 0.2,
            seed: int = nn.HEADLINE["seed"], return_standardizer: bool = False,
            stratified: bool = True):
    """Split, then standardise both parts with the mean and std of the training part.

    ``stratified`` — a built-in dataset is split per class (data.train_test_split); two party
    CSVs are split as two parties split them, from public facts only (``stratified=False``:
    data.split_rows on the rows in sorted-id order), so that ``train --features F --labels L``
    equals the two-process run on the same files. The standardiser belongs to the data party:
    ``return_standardizer=True`` returns it too, for ``train(..., standardizer=...)``.
    """
    if stratified:
        train_set, test_set = data.train_test_split(dataset, test_fraction=test_fraction,
                                                    seed=seed)
    else:
        # the two parties' row order first: the ids sorted as text (data.common_rows)
        keys = [str(value) for value in dataset.ids]
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        train_rows, test_rows = data.split_rows(len(dataset.y), test_fraction, seed)
        train_set, test_set = (data.take(dataset, order[rows], suffix)
                               for rows, suffix in ((train_rows, "[train]"), (test_rows, "[test]")))
    scaler = data.Standardizer().fit(train_set.X)
    train_set.X = scaler.transform(train_set.X)
    test_set.X = scaler.transform(test_set.X)
    if return_standardizer:
        return train_set, test_set, scaler
    return train_set, test_set


def joint_first_layer(data_party: DataParty, label_party: LabelParty):
    """W = W_B + ε_acc as floats. Simulation diagnostics and tests only: no party can do this."""
    return (label_party.weight_share + data_party.noise_acc).decode()


def train(train_set: data.Dataset, test_set: data.Dataset | None = None,
          config: Config | None = None, *, progress: bool = False, keypair=None,
          checkpoint_dir=None, resume: bool = False, standardizer=None, executor=None,
          transcript=None, insecure_flaws: InsecureFlaws = SECURE,
          estimate: bool | None = None, precompute: bool = True) -> Result:
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
    ``precompute`` (new runs): each party fills a pool of randomizers ahead of need (at setup
    and between epochs); ``step_seconds`` then reports that offline work as step "pool".
    ``transcript`` (a text file open for writing) receives every message as a JSON line.
    ``insecure_flaws`` switches known flaws on in both parties, for teaching (flaws.py).

    ``progress`` shows tqdm bars on stderr for step 0's [[X]], the batches and the prediction,
    and prints the time estimate before the run starts (:func:`estimate_run`); ``estimate``
    (default: as ``progress``) computes that estimate, and puts it, beside the measured
    time, in ``metrics["estimate"]``.
    """
    config = config or Config()
    check_sigma(config.plan.sigma, config.allow_insecure_sigma, "Config.plan.sigma")
    sizes = config.layer_sizes(train_set.X.shape[1], train_set.n_classes)
    for dataset in (train_set, test_set):
        if dataset is not None:
            check_features(dataset.X, config.plan, what=dataset.name,
                           names=dataset.feature_names, ids=dataset.ids)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs the checkpoint directory to resume from")
    start = time.perf_counter()
    feature_mean = None if standardizer is None else standardizer.mean
    feature_std = None if standardizer is None else standardizer.std
    if resume:
        if keypair is not None:
            raise ValueError("resume takes the key pair from the data party's checkpoint; "
                             "pass no keypair")
        # The latest epoch BOTH parties saved: after a crash between the two writes, the data
        # party's newest file is passed over and that epoch trained again, bit for bit.
        pair = run_directory.find_pair(checkpoint_dir, allow_insecure=config.allow_insecure,
                                    resuming=True)
        data_state, label_state = pair.data, pair.label
        asked_bottom = make_bottom(config.bottom, train_set.X.shape[1], 0)
        data_state.check_resumable(asked_bottom, config.key_bits)
        label_state.check_resumable(config.label_settings(sizes), config.epochs)
        feature_mean, feature_std = data_state.feature_mean, data_state.feature_std
        data_party = data_state.restore(train_set.X, engine=FastEngine(executor=executor))
        label_party = label_state.restore(train_set.y, epochs=config.epochs,
                                          engine=FastEngine(executor=executor),
                                          packing=config.packing)
    else:
        if checkpoint_dir is not None:
            run_directory.refuse_to_overwrite(checkpoint_dir)
        data_class, label_class = party_classes(insecure_flaws)
        data_party = data_class(train_set.X, plan=config.plan, key_bits=config.key_bits,
                                allow_insecure=config.allow_insecure, keypair=keypair,
                                init_seed=config.init_seed, bottom=config.bottom,
                                engine=FastEngine(executor=executor, precompute=precompute),
                                allow_insecure_sigma=config.allow_insecure_sigma)
        label_party = label_class(train_set.y, sizes, activation=config.activation, lr=config.lr,
                                  momentum=config.momentum, batch_size=config.batch_size,
                                  epochs=config.epochs, seed=config.seed, plan=config.plan,
                                  engine=FastEngine(executor=executor, precompute=precompute),
                                  packing=config.packing, allow_insecure=config.allow_insecure,
                                  allow_insecure_sigma=config.allow_insecure_sigma,
                                  block_rows=config.block_rows)
    channel = Channel(data_party=data_party, label_party=label_party, sigma=config.plan.sigma,
                      transcript=transcript)
    run_estimate = None
    if progress if estimate is None else estimate:
        run_estimate = estimate_run(data_party, config, len(train_set.y), sizes[0],
                                    0 if test_set is None else len(test_set.y),
                                    epochs_done=label_state.epochs_completed if resume else 0)
        if progress:
            print(run_estimate["line"], file=sys.stderr)
    step0_bar = None
    if progress and not resume and config.bottom is None:
        step0_bar = phase_bar(len(train_set.y), "step 0: encrypting [[X]]", "row")
        data_party.on_progress = step0_bar
    public = protocol.setup(channel, start="resume" if resume else "new")
    data_party.on_progress = None
    if step0_bar is not None:
        step0_bar.close()
    first_epoch = public.training.epochs_completed
    n_batches = -(-len(train_set.y) // config.batch_size)
    bar = progress_bar((config.epochs - first_epoch) * n_batches, label_party) if progress else None
    save = None if checkpoint_dir is None else run_directory.saver(
        checkpoint_dir, data_party=data_party, label_party=label_party,
        feature_names=train_set.feature_names, feature_mean=feature_mean,
        feature_std=feature_std, class_names=train_set.class_names)
    protocol.train(channel, public, after_epoch=save, after_batch=bar)
    if bar is not None:
        bar.close()
    encrypted_seconds = time.perf_counter() - start
    losses = label_party.losses

    # The twin starts where the two parties started: the layers above from the public seed, the
    # first layer (and any bottom model) from the data party's own init seed, which only this
    # omniscient simulation can read — the label party never learns W0.
    plaintext = nn.MLP(sizes, activation=config.activation, seed=config.seed)
    plaintext.layers[0].W = nn.init_layer(sizes, 0, config.activation, data_party.init_seed).W
    plaintext_bottom = make_bottom(config.bottom, train_set.X.shape[1], data_party.init_seed)
    if plaintext_bottom is None:
        history = nn.train_plaintext(plaintext, train_set.X, train_set.y, epochs=config.epochs,
                                     batch_size=config.batch_size,
                                     lr=config.plan.snap_lr(config.lr), seed=config.seed,
                                     momentum=config.momentum, block_rows=config.block_rows)
    else:
        history = train_plaintext_composite(plaintext_bottom, plaintext, train_set.X, train_set.y,
                                            config)

    metrics = {
        "dataset": train_set.name,
        "classes": classes_line(train_set.class_names),
        "class_names": list(train_set.class_names),
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
        "packing": None if public.packing is None else public.packing.to_dict(),
    }
    if config.bottom is not None:
        metrics["bottom_width"] = data_party.bottom.width
    if config.block_rows:
        metrics["block_rows"] = config.block_rows
    if test_set is not None:
        scores = predict_encrypted(channel, data_party, label_party, test_set.X,
                                   progress=progress)
        predicted = label_party.model.classes_from_scores(scores)
        plain_inputs = test_set.X if plaintext_bottom is None else plaintext_bottom.forward(test_set.X)
        plain_predicted = plaintext.predict(plain_inputs)
        plain_scores = plaintext.scores_from_logits(plaintext.forward(plain_inputs))
        n_classes = len(train_set.class_names)
        report = nn.classification_report(test_set.y, predicted, scores, n_classes)
        plain_report = nn.classification_report(test_set.y, plain_predicted, plain_scores,
                                                n_classes)
        metrics["test_accuracy"] = report["accuracy"]
        metrics["plaintext_test_accuracy"] = plain_report["accuracy"]
        metrics["prediction_agreement"] = float(np.mean(predicted == plain_predicted))
        metrics["predictions_differing"] = int(np.sum(predicted != plain_predicted))
        # Accuracy hides a lot on skewed classes: the majority baseline, and AUC (binary).
        metrics["majority_class_rate"] = report["majority_baseline"]
        if report["auc"] is not None:
            metrics["test_auc"] = report["auc"]
            metrics["plaintext_test_auc"] = plain_report["auc"]
        metrics["test_report"] = report
        metrics["plaintext_test_report"] = plain_report
    metrics.update(channel.metrics())
    if run_estimate is not None:
        metrics["estimate"] = {key: value for key, value in run_estimate.items() if key != "line"}
        metrics["estimate"]["measured_seconds"] = time.perf_counter() - start
    # Online per step; the randomizer pools' precomputation (offline) apart, as step "pool".
    metrics["step_seconds"] = kernels.split_offline(metrics["step_seconds"], data_party.engine,
                                                    label_party.engine)
    if resume:
        metrics["resumed_after_epoch"] = first_epoch
        metrics["checkpoint_notes"] = pair.notes
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


def fixed_point_gap(X, y, config: Config | None = None, *, n_classes: int | None = None):
    """max |W − W_plain| after each epoch, measured without encryption: the plan's fixed-point
    arithmetic (the exact twin of the encrypted run: W_B + ε_acc equals it integer for integer,
    tests/test_protocol.py) against float64 on the same batches from the same W0.

    A measuring tool (the README's exactness-gap table): yields ``(epoch, steps, gap)``, the gap
    over every weight and bias of every layer. W0 comes from ``config.seed`` (no bottom model).
    No party can compute this in a real run; nothing here is encrypted.
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
    models = [nn.MLP(sizes, activation=config.activation, seed=config.seed,
                     first_layer_weight=False) for _ in range(2)]
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


def train_plaintext_composite(bottom: BottomModel, mlp: nn.MLP, X, y,
                              config: Config, after_batch=None) -> dict:
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
            if after_batch is not None:
                after_batch(epoch, len(history["batch_loss"]), loss)
            history["batch_loss"].append(loss)
    return history


def progress_bar(total: int, label_party: LabelParty | None = None):
    """A tqdm bar over the batches, as ``after_batch`` for protocol.train: it shows the label
    party's last loss where that party runs here."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc="encrypted training", unit="batch", file=sys.stderr,
               dynamic_ncols=True)

    class Bar:
        def __call__(self, rows):
            if label_party is not None and label_party.losses:
                bar.set_postfix(loss=f"{label_party.losses[-1]:.4f}")
            bar.update(1)

        def close(self):
            bar.close()
    return Bar()


PREDICTION_CHUNK_ROWS = 1024  # rows per protocol.predict: a progress report after each


def predict_encrypted(channel, data_party: DataParty, label_party: LabelParty, X, *,
                      progress: bool = False) -> np.ndarray:
    """The label party's scores for rows X (standardised as the training rows), by the real
    encrypted prediction (protocol.predict), PREDICTION_CHUNK_ROWS rows at a time: the same
    scores as one call (each row's z is exact on its own), with a tqdm bar when ``progress``."""
    X = np.asarray(X, dtype=np.float64)
    public = data_party.public
    bar = phase_bar(len(X), "encrypted prediction", "row") if progress else None
    scores = []
    for start in range(0, len(X), PREDICTION_CHUNK_ROWS):
        stop = min(start + PREDICTION_CHUNK_ROWS, len(X))
        data_party.set_rows_to_predict(X[start:stop])
        protocol.predict(channel, public)
        scores.append(label_party.predictions)
        if bar is not None:
            bar(stop, len(X))
    if bar is not None:
        bar.close()
    return np.concatenate(scores, axis=0)


# ----------------------------------------------------------------------------------------------
# The time estimate: measured costs of one operation of each kind, times the plan's counts
# ----------------------------------------------------------------------------------------------
OPERATIONS = {  # kind: what it is, where it runs
    "encrypt": "encryption by the key owner (CRT): [[X]], [[X_batch]], [[X_new]]",
    "mask": "a fresh public-key encryption of a wide mask (label party)",
    "decrypt": "a decryption (data party)",
    "product_w": "one term of [[X]]·W_B (exponent: a weight share)",
    "product_delta": "one term of [[X]]ᵀ·δ (exponent: a fixed-point δ)",
}


def operation_counts(n_rows: int, n_inputs: int, n_hidden: int, batch_size: int, epochs: int,
                     n_predict: int, packing=None, bottom: bool = False,
                     step0: bool = True) -> dict:
    """The Paillier operations a run implies, by kind (OPERATIONS), from public facts only:
    step 0's [[X]], per batch steps 1, 4b and 4, and the prediction of ``n_predict`` rows."""
    forward = (lambda m: m) if packing is None else packing.forward.groups
    width = n_inputs if packing is None else packing.backward.groups(n_inputs)
    counts = dict.fromkeys(OPERATIONS, 0)
    if step0 and not bottom:
        counts["encrypt"] += n_rows * width
    batches = [batch_size] * (n_rows // batch_size) + ([n_rows % batch_size]
                                                       if n_rows % batch_size else [])
    for m in batches * epochs:
        groups = forward(m)
        if bottom or packing is not None:
            counts["encrypt"] += groups * n_inputs
        counts["product_w"] += groups * n_inputs * n_hidden
        counts["mask"] += groups * n_hidden + width * n_hidden
        counts["decrypt"] += groups * n_hidden + width * n_hidden
        counts["product_delta"] += width * m * n_hidden
        if bottom:  # step 4b: [[ε_acc]], δ·[[ε_acc]]ᵀ, re-randomised, decrypted
            counts["encrypt"] += n_inputs * n_hidden
            counts["product_delta"] += m * n_hidden * n_inputs
            counts["mask"] += m * n_inputs
            counts["decrypt"] += m * n_inputs
    for start in range(0, n_predict, PREDICTION_CHUNK_ROWS):
        groups = forward(min(PREDICTION_CHUNK_ROWS, n_predict - start))
        counts["encrypt"] += groups * n_inputs
        counts["product_w"] += groups * n_inputs * n_hidden
        counts["mask"] += groups * n_hidden
        counts["decrypt"] += groups * n_hidden
    return counts


def measure_costs(private_key, plan: FixedPointPlan, n_hidden: int, share_bits: int,
                  n_inputs: int, batch_size: int, samples: int = 4) -> dict:
    """Seconds per operation of each kind (OPERATIONS), measured now with this key: a few of
    each, after one warm-up; a fraction of a second at 2048 bits. A product term is timed in a
    product as wide as the run's (``n_inputs`` terms in step 1, ``batch_size`` in step 4: the
    terms of one output share their squarings). Operation counters are left as they were."""
    import random
    from speed import kernels
    from paillier import OP_COUNTS
    saved = dict(OP_COUNTS)
    draw = random.Random(0)  # public test values: only their sizes matter here
    public_key = private_key.public_key

    def ints(bits, shape):
        values = [draw.getrandbits(bits) * draw.choice((-1, 1)) for _ in range(int(np.prod(shape)))]
        return Fixed.from_ints(np.array(values, dtype=object).reshape(shape), plan.x_frac_bits)

    def timed(work, count):
        work()  # warm-up: tables, constants
        begin = time.perf_counter()
        work()
        return (time.perf_counter() - begin) / count

    values = ints(plan.x_int_bits + plan.x_frac_bits, (1, samples))
    encrypted = kernels.encrypt_array(private_key, values)
    zeros = Fixed.from_ints(np.zeros((1, samples), dtype=np.int64), plan.x_frac_bits)
    weights = ints(share_bits, (n_inputs, n_hidden))
    deltas = ints(plan.delta_int_bits + plan.delta_frac_bits, (batch_size, n_hidden))
    row_step1 = kernels.encrypt_array(private_key, ints(8, (1, n_inputs)))
    row_step4 = kernels.encrypt_array(private_key, ints(8, (1, batch_size)))
    try:
        return {
            "encrypt": timed(lambda: kernels.encrypt_array(private_key, values), samples),
            "mask": timed(lambda: kernels.encrypt_array(public_key, zeros), samples),
            "decrypt": timed(lambda: kernels.decrypt_residues(private_key, encrypted), samples),
            "product_w": timed(lambda: kernels.encrypted_matmul(row_step1, weights),
                               n_inputs * n_hidden),
            "product_delta": timed(lambda: kernels.encrypted_matmul(row_step4, deltas),
                                   batch_size * n_hidden),
        }
    finally:
        OP_COUNTS.clear()
        OP_COUNTS.update(saved)


def estimate_run(data_party: DataParty, config: Config, n_rows: int, n_inputs: int,
                 n_predict: int, *, epochs_done: int = 0) -> dict:
    """An ESTIMATE of the run's time, before it starts: measured seconds per Paillier operation
    (:func:`measure_costs`, with this run's key) times the counts the plan implies
    (:func:`operation_counts`). It counts only the Paillier operations, on one core: Python's
    own bookkeeping and the plaintext twin come on top; an executor divides the work.

    Returns the counts, the seconds per operation, ``seconds`` and ``line``, the sentence
    ``train`` prints."""
    from plan import useful_packing, weight_share_bits
    n_hidden = config.layer_sizes(n_inputs, 2)[1]
    packing = None
    if config.packing and config.bottom is None and not data_party.flaws:
        packing = useful_packing(config.plan, data_party.public_key, config.batch_size,
                                 n_inputs, config.lr)
    counts = operation_counts(n_rows, n_inputs, n_hidden, config.batch_size,
                              config.epochs - epochs_done, n_predict, packing,
                              bottom=config.bottom is not None)
    costs = measure_costs(data_party._private_key, config.plan, n_hidden,
                          weight_share_bits(config.plan, config.batch_size, config.lr),
                          n_inputs, min(config.batch_size, n_rows))
    seconds = sum(counts[kind] * costs[kind] for kind in counts)
    total = sum(counts.values())
    each_ms = 1000 * seconds / max(total, 1)
    amount = (plural(round(seconds / 60), "minute") if seconds >= 90
              else plural(max(1, round(seconds)), "second"))
    line = (f"estimated: about {amount} (from {total:,} operations at {each_ms:.3g} ms each, "
            f"measured now; an estimate of the Paillier work on one core)")
    return {"counts": counts, "seconds_per_operation": costs, "seconds": seconds,
            "operations": total, "line": line}


def phase_bar(total: int, description: str, unit: str):
    """A tqdm bar for one phase, called as ``bar(done, total)`` (DataParty.on_progress)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True)

    class Bar:
        def __call__(self, done, _total=None):
            bar.update(done - bar.n)

        def close(self):
            bar.close()
    return Bar()


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------
def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def classes_line(class_names) -> str:
    """The classes found, and what the network outputs for them:
    ``2 classes: bad, good — one sigmoid output, P(good)`` or
    ``3 classes: a, b, c — training softmax over 3 outputs``."""
    names = [str(name) for name in class_names]
    found = data.describe_classes(names)
    if len(names) == 2:
        return f"{found} — one sigmoid output, P({names[1]})"
    return f"{found} — training softmax over {len(names)} outputs"


def test_report_lines(reports: dict, class_names, differing: int | None = None) -> list:
    """Report lines for nn.classification_report results, one column per model
    (``{"encrypted": ..., "plaintext": ...}``): accuracy beside the majority baseline, AUC
    (binary), precision / recall / F1 and the confusion matrix."""
    first = next(iter(reports.values()))
    names = [str(name) for name in class_names]

    def row(label, cell):
        return f"{label:<18} " + "   ".join(f"{model} {cell(r)}" for model, r in reports.items())

    accuracy = row("test accuracy", lambda r: f"{r['accuracy']:.4f}")
    if differing is not None:
        accuracy += f"   predictions differ on {differing} of {first['n']} rows"
    lines = [accuracy,
             f"majority baseline  {first['majority_baseline']:.4f}: the accuracy of always "
             f"predicting {names[first['majority_class']]!r}, the floor to beat"]
    if first["auc"] is not None:
        lines.append(row("test ROC AUC", lambda r: f"{r['auc']:.4f}")
                     + "   (a constant guess: 0.5)")
    which = (f"of class {names[1]!r}" if first["n_classes"] == 2
             else f"macro average over {first['n_classes']} classes")
    lines.append(row("precision/recall/F1",
                     lambda r: f"{r['precision']:.3f}/{r['recall']:.3f}/{r['f1']:.3f}")
                 + f"   ({which})")
    if first["n_classes"] <= 12:
        lines.append(f"confusion matrix   rows: true class, columns: predicted, in the order "
                     f"{', '.join(names)}")
        lines += [f"  {model:<17}{r['confusion']}" for model, r in reports.items()]
    else:
        lines.append("confusion matrix   in --json (test_report.confusion)")
    return lines


def format_report(metrics: dict) -> str:
    lines = [f"dataset {metrics['dataset']}: {metrics['n_train']} training rows, layers "
             f"{metrics['layer_sizes']}, {metrics['key_bits']}-bit Paillier key, "
             f"{plural(metrics['epochs'], 'epoch')} of batches of {metrics['batch_size']}",
             f"classes            {metrics['classes']}"]
    if "test_report" in metrics:
        lines += test_report_lines({"encrypted": metrics["test_report"],
                                    "plaintext": metrics["plaintext_test_report"]},
                                   metrics["class_names"], metrics["predictions_differing"])
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
    lines.append("what crossed, and what the receiver learns from one such message:")
    return "\n".join(lines + leakage_lines(metrics["leakage"]))  # + the cumulative leaks


CUMULATIVE_LEAKS = channel_module.CUMULATIVE_LEAKS


# ----------------------------------------------------------------------------------------------
# Checkpoints, prediction from checkpoints, and the joint export
# ----------------------------------------------------------------------------------------------


def predict(checkpoint_dir, X, *, feature_names=None, ids=None, source: str = "features",
            allow_insecure: bool = False, executor=None) -> Prediction:
    """Encrypted prediction on new rows X (raw, as in the features file) from both checkpoints.

    The data party standardises X with its saved mean and std, applies its bottom model if it
    has one, and encrypts the result; the label party runs step 1 with its weight share and the
    layers above (protocol.setup with start "predict", then protocol.predict). Neither party's
    share is combined with the other's. With ``feature_names``, the columns of X are matched to
    the training features by name (any order, none missing, none extra).
    """
    data_state, label_state = run_directory.load_pair(checkpoint_dir, allow_insecure=allow_insecure)
    X = data_state.rows_to_predict(X, feature_names=feature_names, ids=ids, source=source)
    data_party = data_state.restore(X, same_features=False, engine=FastEngine(executor=executor))
    data_party.set_rows_to_predict(X)
    label_party = label_state.restore(engine=FastEngine(executor=executor))
    channel = Channel(data_party=data_party, label_party=label_party, sigma=data_state.plan.sigma)
    protocol.predict(channel, protocol.setup(channel, start="predict"))
    return label_party.prediction(label_state.class_names)


def __getattr__(name):
    """``acml.VerticalMLPClassifier`` (estimator.py), imported on first use: the library and
    the CLI do not import scikit-learn until the estimator is asked for."""
    if name == "VerticalMLPClassifier":
        from tools.estimator import VerticalMLPClassifier
        return VerticalMLPClassifier
    raise AttributeError(f"module 'acml' has no attribute {name!r}")


def main(argv=None) -> int:
    """The command line (cli.py): ``python acml.py train``, ``party``, ``audit``, ``bench``…"""
    from tools import cli  # the CLI imports the benchmark and the audit; the library imports neither
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
