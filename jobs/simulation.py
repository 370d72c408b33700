"""Both parties in one process, and beside them the plaintext twin: the run behind ``acml.train``.

Each party holds only its own state and every message goes through the checked channel of
protocol.py, as in two processes (network/transport.py); what one process adds is the
omniscient comparison with the twin (twin.py), which no party could compute.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from dataclasses import dataclass

import numpy as np

import nn
import protocol
from attacks.flaws import SECURE, InsecureFlaws, party_classes
from channel import Channel
from jobs import preparation, run_directory
from jobs.estimate import estimate_run
from jobs.progress import PREDICTION_CHUNK_ROWS, batches, encrypting_rows, phase_bar
from jobs.report import (classes_line, format_report, plural, run_metrics, test_metrics,
                         test_report_lines)
from jobs.settings import Config
from jobs.twin import max_weight_diff, train_twin, twin_predictions
from parties import INIT_SEED_BITS, DataParty, LabelParty, Prediction, make_bottom
from plan import check_features, check_sigma
from privacy import input_perturbation
from speed import kernels
from speed.engine import FastEngine


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
    # The data party's input perturbation (None: off). Rows predicted later with this run
    # (the estimator) are perturbed by it too, each call with noise of its own.
    input_perturbation: input_perturbation.InputPerturbation | None = None
    # The test rows' labels and the encrypted prediction's scores (None without test rows):
    # what the report's ROC and precision–recall curves are drawn from (report.plot_run).
    test_labels: np.ndarray | None = None
    test_scores: np.ndarray | None = None

    def summary(self) -> str:
        return format_report(self.metrics)


def train(train_set, test_set=None, config: Config | None = None, *, progress: bool = False,
          keypair=None, checkpoint_dir=None, resume: bool = False, standardizer=None,
          executor=None, transcript=None, insecure_flaws: InsecureFlaws = SECURE,
          estimate: bool = False, precompute: bool = True, preparation=None) -> Result:
    """Train encrypted (two parties) and plaintext (the twin) on the same batches, and compare.

    ``checkpoint_dir``: after every epoch each party saves its own file there
    (``data_party.npz``, ``label_party.npz``; see checkpoint.DataPartyState/LabelPartyState).
    ``standardizer`` — the data party's, from ``prepare(..., return_standardizer=True)`` — is
    saved with the data party, so that prediction applies it to new rows; so is
    ``preparation`` (jobs/preparation.py: how the raw columns became features). ``resume=True``
    continues from those files up to ``config.epochs``: the same data and settings are required,
    the key pair comes from the data party's file, and [[X]] is encrypted afresh. ``losses``
    then covers the resumed epochs only.

    ``executor`` (any concurrent.futures.Executor, e.g. a ProcessPoolExecutor or a dask client's
    get_executor()) runs the modular exponentiations of both parties; None runs them here.
    ``precompute`` (new runs): each party fills a pool of randomizers ahead of need (at setup
    and between epochs); ``step_seconds`` then reports that offline work as step "pool".
    ``transcript`` (a text file open for writing) receives every message as a JSON line.
    ``insecure_flaws`` switches known flaws on in both parties, for teaching (flaws.py).

    ``progress`` shows tqdm bars on stderr for step 0's [[X]], the batches and the prediction.
    ``estimate`` (off unless asked; the CLI asks unless --quiet) first times a few Paillier
    operations with the run's key and prints the time the run should take (estimate.py); the
    estimate, beside the measured time, goes to ``metrics["estimate"]``.

    ``config.dp_epsilon`` (and ``dp_delta``): the data party's input perturbation. It clips and
    perturbs its standardised training rows once, before step 0, and the test rows before it
    asks for their prediction (privacy/input_perturbation.py); everything after is the protocol
    on the noisy rows. The twin trains on the SAME noisy rows — it is the omniscient simulation,
    reading the data party's rows as they entered the protocol — so the exactness comparison
    still holds. Resuming takes the budget and the noise seed from the data party's checkpoint.
    """
    config = config or Config()
    if keypair is None and not resume:  # made on another core while the inputs are checked
        keypair = kernels.keypair_in_background(config.key_bits,
                                                allow_insecure=config.allow_insecure)
    try:
        sizes = check_run(train_set, test_set, config, checkpoint_dir, resume, keypair)
        if checkpoint_dir is None:
            return _train(train_set, test_set, config, sizes, progress, keypair, None, False,
                          standardizer, executor, transcript, insecure_flaws, estimate,
                          precompute, preparation)
        with run_directory.hold(checkpoint_dir):  # both parties', for the whole run
            return _train(train_set, test_set, config, sizes, progress, keypair,
                          checkpoint_dir, resume, standardizer, executor, transcript,
                          insecure_flaws, estimate, precompute, preparation)
    except BaseException:
        if hasattr(keypair, "cancel"):  # no run: stop the search instead of finishing a key
            keypair.cancel()
        raise


def _train(train_set, test_set, config, sizes, progress, keypair, checkpoint_dir, resume,
           standardizer, executor, transcript, insecure_flaws, estimate, precompute,
           preparation) -> Result:
    budget = input_perturbation.check_options(config.dp_epsilon, config.dp_delta,
                                              names=("Config.dp_epsilon", "Config.dp_delta"))
    start = time.perf_counter()

    # The two parties, each with only its own state: new, or each from its own checkpoint.
    pair = None
    if resume:
        pair = run_directory.find_pair(checkpoint_dir, allow_insecure=config.allow_insecure,
                                       resuming=True)
        pair.data.check_same_perturbation(budget)
    if pair is not None and pair.label is not None:
        perturbation = pair.data.input_perturbation(purpose="train")
        train_set, test_set = perturbed_sets(perturbation, train_set, test_set, config)
        keypair = pair.data.keypair
        data_party, label_party = resumed_parties(pair, train_set, config, sizes, executor)
        feature_mean, feature_std = pair.data.feature_mean, pair.data.feature_std
    else:
        if pair is not None:
            # No common epoch after a kill in the first epoch: a new run from the data
            # party's start — its key pair, init seed and noise seed — is the interrupted run.
            pair.data.check_resumable(make_bottom(config.bottom, train_set.X.shape[1], 0),
                                      config.key_bits)
            config = dataclasses.replace(config, init_seed=pair.data.init_seed)
            keypair = pair.data.keypair
            perturbation = pair.data.input_perturbation(purpose="train")
        else:
            if checkpoint_dir is not None:
                run_directory.refuse_to_overwrite(checkpoint_dir)
            # The data party's side, before it builds itself: its rows as the protocol sees them.
            perturbation = input_perturbation.for_data_party(budget, purpose="train",
                                                             init_seed=config.init_seed)
        train_set, test_set = perturbed_sets(perturbation, train_set, test_set, config)
        if hasattr(keypair, "result"):  # kernels.keypair_in_background's Future
            keypair = keypair.result()
        data_party, label_party = new_parties(train_set, config, sizes, keypair, executor,
                                              insecure_flaws, precompute)
        feature_mean = None if standardizer is None else standardizer.mean
        feature_std = None if standardizer is None else standardizer.std
        resume = False  # step 0 of a new run: W0 − ε_acc is sent
    # The decision rule is a choice of this run, also after a resume: the label party's.
    label_party.model.threshold, label_party.model.positive_class = config.decision(
        train_set.y, train_set.n_classes)
    channel = Channel(data_party=data_party, label_party=label_party, sigma=config.plan.sigma,
                      transcript=transcript)

    run_estimate = None
    if estimate:  # optional, and its own step: it times ciphertexts of its own, not the run's
        run_estimate = estimate_run(keypair[1], config, len(train_set.y), sizes[0],
                                    0 if test_set is None else len(test_set.y),
                                    epochs_done=label_party.epochs_completed,
                                    flaws_enabled=bool(insecure_flaws.enabled()))
        if progress:
            print(run_estimate["line"], file=sys.stderr)
    estimated_work_start = time.perf_counter()  # what the estimate covers starts here: after
    # the key pair (key generation is no Paillier operation of the run) and the estimate itself

    # The protocol: setup (step 0), then the epochs (steps 1, 2, 3, 4b, 4), as in protocol.py.
    with encrypting_rows(data_party, len(train_set.y),
                         shown=progress and not resume and config.bottom is None):
        public = protocol.setup(channel, start="resume" if resume else "new")
    first_epoch = public.training.epochs_completed
    n_batches = -(-len(train_set.y) // config.batch_size)
    save = None if checkpoint_dir is None else run_directory.saver(
        checkpoint_dir, data_party=data_party, label_party=label_party,
        feature_names=train_set.feature_names, feature_mean=feature_mean,
        feature_std=feature_std, class_names=train_set.class_names,
        input_perturbation=perturbation, preparation=preparation)
    with batches((config.epochs - first_epoch) * n_batches, label_party,
                 shown=progress) as bar:
        protocol.train(channel, public, after_epoch=save, after_batch=bar)
    encrypted_seconds = time.perf_counter() - start

    # The twin starts where the two parties started: the layers above from the public seed, the
    # first layer (and any bottom model) from the data party's own init seed, which only this
    # omniscient simulation can read — the label party never learns W0.
    plaintext, plaintext_bottom, history = train_twin(train_set, config, sizes,
                                                      data_party.init_seed)

    # The report: the two runs compared, on the training batches and on the test rows.
    metrics = run_metrics(train_set, config, sizes, data_party, label_party, public,
                          history["batch_loss"], encrypted_seconds,
                          max_weight_diff(data_party, label_party, plaintext, plaintext_bottom))
    if test_set is not None:
        scores = predict_encrypted(channel, data_party, label_party, test_set.X,
                                   progress=progress)
        predicted = label_party.model.classes_from_scores(scores)
        plain_predicted, plain_scores = twin_predictions(plaintext, plaintext_bottom, test_set.X)
        metrics.update(test_metrics(test_set.y, len(train_set.class_names), predicted, scores,
                                    plain_predicted, plain_scores,
                                    positive_class=label_party.model.positive_class))
    metrics.update(channel.metrics())
    if perturbation is not None:
        metrics["input_perturbation"] = perturbation.settings()
    if run_estimate is not None:
        metrics["estimate"] = {key: value for key, value in run_estimate.items() if key != "line"}
        metrics["estimate"]["measured_seconds"] = time.perf_counter() - estimated_work_start
    # Online per step; the randomizer pools' precomputation (offline) apart, as step "pool".
    metrics["step_seconds"] = kernels.split_offline(metrics["step_seconds"], data_party.engine,
                                                    label_party.engine)
    if pair is not None:
        metrics["resumed_after_epoch"] = first_epoch
        metrics["checkpoint_notes"] = pair.notes
    return Result(data_party, label_party, channel, plaintext, label_party.losses,
                  list(history["batch_loss"]), encrypted_seconds, metrics, perturbation,
                  None if test_set is None else test_set.y, None if test_set is None else scores)


@dataclass
class Rehearsal:
    """A plaintext rehearsal: the twin alone, with no encryption and no second party."""

    plaintext: nn.MLP
    plaintext_bottom: object
    losses: list
    seconds: float
    metrics: dict
    test_labels: np.ndarray | None = None  # for the plots: the test rows' classes and scores
    test_scores: np.ndarray | None = None

    def summary(self) -> str:
        m = self.metrics
        lines = [f"PLAINTEXT REHEARSAL (no encryption, no privacy): dataset {m['dataset']}: "
                 f"{m['n_train']} training rows, layers {m['layer_sizes']}, "
                 f"{plural(m['epochs'], 'epoch')} of batches of {m['batch_size']}, η = {m['lr']:g}, "
                 f"seed {m['seed']}, init seed {m['init_seed']}",
                 f"classes            {m['classes']}"]
        if "test_report" in m:
            lines += test_report_lines({"plaintext": m["test_report"]}, m["class_names"])
        lines.append(f"final loss         plaintext {m['final_loss']:.6f}")
        lines.append(f"wall time          {m['seconds']:.2f} s plaintext training")
        lines.append(f"the encrypted run  the same command without --plaintext, with "
                     f"--init-seed {m['init_seed']}, trains these weights within the fixed-point "
                     f"quantisation (its report's max |W − W_plain|)")
        return "\n".join(lines)


def rehearse(train_set, test_set=None, config: Config | None = None) -> Rehearsal:
    """The plaintext twin alone (twin.train_twin): the network, batches, learning rate (snapped
    to the plan's grid), momentum and input perturbation of ``train``, in float64 with no key,
    no masks and no second party — seconds instead of minutes, to choose settings.

    W0 comes from ``config.init_seed`` (drawn from ``secrets`` if None, as the data party draws
    it, and reported): ``train`` with the same config and that init seed builds this very twin,
    bit for bit, and its two parties' weights equal it within the fixed-point quantisation
    (its ``max_abs_weight_diff``). Without the same init seed the encrypted run starts from
    another W0. Nothing here is private: it is a rehearsal on one machine holding both files.
    """
    config = config or Config()
    sizes = check_run(train_set, test_set, config, None, False, None)
    budget = input_perturbation.check_options(config.dp_epsilon, config.dp_delta,
                                              names=("Config.dp_epsilon", "Config.dp_delta"))
    init_seed = (secrets.randbits(INIT_SEED_BITS) if config.init_seed is None
                 else config.init_seed)
    start = time.perf_counter()
    perturbation = input_perturbation.for_data_party(budget, purpose="train", init_seed=init_seed)
    train_set, test_set = perturbed_sets(perturbation, train_set, test_set, config)
    plaintext, plaintext_bottom, history = train_twin(train_set, config, sizes, init_seed)
    n_batches = -(-len(train_set.y) // config.batch_size)
    metrics = {"mode": "plaintext", "encrypted": False, "dataset": train_set.name,
               "classes": classes_line(train_set.class_names),
               "class_names": list(train_set.class_names), "n_train": int(len(train_set.y)),
               "n_test": 0, "layer_sizes": list(sizes), "epochs": config.epochs,
               "batch_size": config.batch_size, "lr": config.lr, "momentum": config.momentum,
               "activation": config.activation, "seed": config.seed, "init_seed": init_seed,
               "final_loss": float(np.mean(history["batch_loss"][-n_batches:])),
               "batch_losses": [float(loss) for loss in history["batch_loss"]],
               "loss_history": {"plaintext": [float(loss) for loss in history["batch_loss"]],
                                "batches_per_epoch": n_batches}}
    if test_set is not None:
        predicted, scores = twin_predictions(plaintext, plaintext_bottom, test_set.X)
        report = nn.classification_report(test_set.y, predicted, scores,
                                          len(train_set.class_names),
                                          positive_class=plaintext.positive_class)
        metrics.update(n_test=int(len(test_set.y)), test_accuracy=report["accuracy"],
                       majority_class_rate=report["majority_baseline"], test_report=report,
                       test_balanced_accuracy=report["balanced_accuracy"],
                       positive_class=plaintext.positive_class)
        if len(train_set.class_names) == 2:
            metrics["test_average_precision"] = report["average_precision"]
        if report["auc"] is not None:
            metrics["test_auc"] = report["auc"]
    if perturbation is not None:
        metrics["input_perturbation"] = perturbation.settings()
    metrics["seconds"] = time.perf_counter() - start
    return Rehearsal(plaintext, plaintext_bottom, list(history["batch_loss"]), metrics["seconds"],
                     metrics, None if test_set is None else test_set.y,
                     None if test_set is None else scores)


def perturbed_sets(perturbation, train_set, test_set, config: Config):
    """The data party's rows as the protocol sees them: the training rows perturbed (call 0 of
    the seed's stream), then the test rows (call 1), each clamped into the plan's range. The
    labels, ids and names are untouched; with ``perturbation`` None, the sets themselves."""
    if perturbation is None:
        return train_set, test_set
    train_set = dataclasses.replace(train_set, X=input_perturbation.perturb_rows(
        perturbation, train_set.X, config.plan))
    if test_set is not None:
        test_set = dataclasses.replace(test_set, X=input_perturbation.perturb_rows(
            perturbation, test_set.X, config.plan))
    return train_set, test_set


def check_run(train_set, test_set, config: Config, checkpoint_dir, resume: bool,
              keypair) -> tuple:
    """The layer sizes, once the inputs pass: σ's policy, every feature within the plan's
    bound (one line naming the row and the column otherwise), and a resume that has its
    checkpoint directory and takes its key pair from there."""
    check_sigma(config.plan.sigma, config.allow_insecure_sigma, "Config.plan.sigma")
    for dataset in (train_set, test_set):
        if dataset is not None:
            check_features(dataset.X, config.plan, what=dataset.name,
                           names=dataset.feature_names, ids=dataset.ids)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs the checkpoint directory to resume from")
    if resume and keypair is not None:
        raise ValueError("resume takes the key pair from the data party's checkpoint; "
                         "pass no keypair")
    return config.layer_sizes(train_set.X.shape[1], train_set.n_classes)


def new_parties(train_set, config: Config, sizes, keypair, executor,
                insecure_flaws: InsecureFlaws, precompute: bool):
    """The data party (features, the key pair, W0's mask) and the label party (labels, the
    network), each built from its own inputs only."""
    data_class, label_class = party_classes(insecure_flaws)  # the real parties unless asked
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
                              block_rows=config.block_rows,
                              allow_bottom=config.bottom is not None,  # both are the user's own
                              class_weight=config.class_weight)
    return data_party, label_party


def resumed_parties(pair, train_set, config: Config, sizes, executor):
    """Both parties from the latest epoch BOTH saved (run_directory.find_pair): after a crash
    between the two writes, the data party's newest file is passed over and that epoch trained
    again, bit for bit. Each checkpoint must match this run's data and settings."""
    data_state, label_state = pair.data, pair.label
    asked_bottom = make_bottom(config.bottom, train_set.X.shape[1], 0)
    data_state.check_resumable(asked_bottom, config.key_bits)
    label_state.check_resumable(config.label_settings(sizes), config.epochs)
    data_party = data_state.restore(train_set.X, engine=FastEngine(executor=executor))
    label_party = label_state.restore(train_set.y, epochs=config.epochs,
                                      engine=FastEngine(executor=executor), packing=config.packing,
                                      allow_bottom=config.bottom is not None)
    return data_party, label_party


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


def predict(checkpoint_dir, X, *, feature_names=None, ids=None, source: str = "features",
            allow_insecure: bool = False, executor=None, dp_epsilon=None,
            dp_delta=None, threshold=None, positive_class=None) -> Prediction:
    """Encrypted prediction on new rows X (raw, as in the features file) from both checkpoints.

    The data party standardises X with its saved mean and std, applies its bottom model if it
    has one, and encrypts the result; the label party runs step 1 with its weight share and the
    layers above (protocol.setup with start "predict", then protocol.predict). Neither party's
    share is combined with the other's. With ``feature_names``, the columns of X are matched to
    the training features by name (any order, none missing, none extra).

    Input perturbation: the data party perturbs the standardised rows as it perturbed its
    training rows (the checkpoint's ε, δ and C), with a fresh noise seed
    (DataPartyState.input_perturbation). ``dp_epsilon``/``dp_delta`` replace the checkpoint's
    budget (ε = ∞: these rows unperturbed), and perturb the rows of a run trained without it.

    ``threshold`` and ``positive_class`` (a class name; two classes only) replace the label
    party's decision rule saved in its checkpoint (nn.decide); the scores are the same.
    """
    with run_directory.hold(checkpoint_dir, shared=True):  # no run is renaming them meanwhile
        data_state, label_state = run_directory.load_pair(checkpoint_dir,
                                                          allow_insecure=allow_insecure)
    return predict_with(data_state, label_state, X, feature_names=feature_names, ids=ids,
                        source=source, executor=executor, dp_epsilon=dp_epsilon,
                        dp_delta=dp_delta, threshold=threshold, positive_class=positive_class)


def predict_file(checkpoint_dir, features_csv, id_column: str, *, allow_insecure: bool = False,
                 executor=None, dp_epsilon=None, dp_delta=None, threshold=None,
                 positive_class=None) -> tuple:
    """(ids, Prediction) for the rows of a features file, its raw columns prepared as the data
    party prepared its training file (the checkpoint's preparation: its categories and fill
    values; an unseen category is all zeros), or read as numbers when it kept none."""
    with run_directory.hold(checkpoint_dir, shared=True):  # no run is renaming them meanwhile
        data_state, label_state = run_directory.load_pair(checkpoint_dir,
                                                          allow_insecure=allow_insecure)
    ids, X, names = preparation.load_features_as_trained(features_csv, id_column,
                                                         data_state.prepared())
    return ids, predict_with(data_state, label_state, X, feature_names=names, ids=ids,
                             source=str(features_csv), executor=executor, dp_epsilon=dp_epsilon,
                             dp_delta=dp_delta, threshold=threshold,
                             positive_class=positive_class)


def predict_with(data_state, label_state, X, *, feature_names=None, ids=None,
                 source: str = "features", executor=None, dp_epsilon=None,
                 dp_delta=None, threshold=None, positive_class=None) -> Prediction:
    """``predict`` with both parties' states already loaded."""
    X = data_state.rows_to_predict(X, feature_names=feature_names, ids=ids, source=source)
    X = data_state.perturb_rows_to_predict(X, dp_epsilon, dp_delta)
    channel, data_party, label_party, public = restored_for_prediction(data_state, label_state,
                                                                       X, executor)
    nn.set_decision(label_party.model, label_state.class_names, threshold, positive_class)
    protocol.predict(channel, public)
    return label_party.prediction(label_state.class_names)


def restored_for_prediction(data_state, label_state, X, executor=None) -> tuple:
    """Both parties rebuilt from their states to predict rows X (already as the protocol sees
    them: standardised, perturbed), over one channel, and step 0 of a prediction:
    (channel, data party, label party, public facts)."""
    data_party = data_state.restore(X, same_features=False, engine=FastEngine(executor=executor))
    data_party.set_rows_to_predict(X)
    label_party = label_state.restore(engine=FastEngine(executor=executor))
    channel = Channel(data_party=data_party, label_party=label_party, sigma=data_state.plan.sigma)
    return channel, data_party, label_party, protocol.setup(channel, start="predict")
