"""Two parties in two processes: the checked channel over the wire, and one session per process.

* :class:`SocketChannel` is a :class:`channel.Channel` with one party in this process. Sending,
  it runs ``make`` and the checks and writes one frame (wire.py); receiving, it reads the next
  frame, refuses it unless its declaration is exactly the one the protocol expects next (step,
  sender, receiver, name, kind, reason, shape and widths, which both sides compute from public
  facts), decodes it, runs the same checks and then ``take``.
* :func:`align` is the step before step 0: the ids both parties hold, and the public split.
* :func:`run_data_party` and :func:`run_label_party` are one session each: align, split, then
  protocol.setup, protocol.train and protocol.predict — the very script that runs in one
  process. With a checkpoint directory each party saves its own file after every epoch, and
  resumes from it; :func:`predict_as_data` and :func:`predict_as_label` predict new rows with
  each party holding only its own checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import acml
import checkpoint
import rundir
import data
import nn
import protocol
from channel import DATA, LABEL, PUBLIC, Channel, leakage_lines
from flaws import SECURE
from parties import DataParty, LabelParty
from plan import MAX_EPOCHS, MAX_INPUTS, SEED_LIMIT, FixedPointPlan, check_sigma
from wire import TransportError, decode_payload, encode_payload


class SocketChannel(Channel):
    """The channel of one process: ``party`` (a DataParty or LabelParty) runs here as ``role``,
    the other across ``connection``."""

    def __init__(self, connection, role: str, party, *, sigma: int = 40, transcript=None):
        super().__init__(**{f"{role}_party": party}, sigma=sigma, transcript=transcript)
        self.connection, self.role = connection, role

    def seat(self, party) -> None:
        """After the alignment: the party that trains takes the place of the id list."""
        self.local[self.role] = party
        self._check_mask_source(self.role, party.mask_source)

    def _transmit(self, message, payload) -> None:
        layout, body = encode_payload(payload)
        self.connection.send_frame({"type": "message", "declaration": message.declaration(),
                                    "layout": layout}, body, what=message.where)

    def _receive(self, message):
        header, body = self.connection.receive_frame(message.where)
        expected = message.declaration()
        got = header.get("declaration") if header.get("type") == "message" else None
        if got != expected:
            raise TransportError(f"{self.connection.peer} sent {_describe(got)} where the "
                                 f"protocol expects {message.where} ({message.kind})")
        layout = header.get("layout")
        if not isinstance(layout, dict):
            raise TransportError(f"{message.where}: the frame has no payload layout")
        return decode_payload(layout, body, self.public_key, message.where)

    def finish(self) -> None:
        """Each side says it is done, so neither ends cleanly while the other is still working."""
        self.connection.send_frame({"type": "done"}, what="the end of the session")
        header, body = self.connection.receive_frame("the end of the session")
        if header.get("type") != "done" or body:
            raise TransportError(f"{self.connection.peer} sent a {header.get('type')!r} frame "
                                 "where the session ends")


def _describe(declaration) -> str:
    if not isinstance(declaration, dict):
        return "a frame that is no protocol message"
    return (f"step {declaration.get('step')} message {declaration.get('name')!r} "
            f"({declaration.get('kind')}, {declaration.get('sender')} → "
            f"{declaration.get('receiver')}, shape {declaration.get('shape')}, widths "
            f"{declaration.get('mask_bits')}/{declaration.get('value_bits')})")


# ----------------------------------------------------------------------------------------------
# Before step 0: the ids both parties hold, and the split
# ----------------------------------------------------------------------------------------------
class IdList:
    """What a party brings to the alignment: its ids; at the label party also the public split
    (test fraction, seed); at the data party the interactive layer's input width. Ids are
    treated as public here: each party learns the other's whole id list."""

    mask_source = None  # it draws no masks

    def __init__(self, ids, *, test_fraction=None, seed=None, n_inputs=None):
        self.keys = [str(value) for value in ids]
        self.test_fraction, self.seed, self.n_inputs = test_fraction, seed, n_inputs
        self.common: list[str] = []
        self.rows = np.zeros(0, dtype=np.int64)
        self.n_other_ids = 0

    def offer(self) -> dict:
        return {"ids": self.keys, "test_fraction": self.test_fraction, "seed": self.seed}

    def take_offer(self, offer) -> None:
        if not isinstance(offer, dict) or set(offer) != {"ids", "test_fraction", "seed"}:
            raise TransportError("the label party's alignment message needs exactly ids, "
                                 "test_fraction and seed")
        _check_id_list(offer["ids"], "the label party's ids")
        data.check_split(offer["test_fraction"], offer["seed"])
        if offer["seed"] >= SEED_LIMIT:
            raise TransportError(f"the label party's seed {offer['seed']} is not below 2**63")
        self.test_fraction, self.seed = offer["test_fraction"], offer["seed"]
        self._intersect(offer["ids"])

    def answer(self) -> dict:
        return {"ids": self.keys, "n_inputs": self.n_inputs}

    def take_answer(self, answer) -> None:
        if not isinstance(answer, dict) or set(answer) != {"ids", "n_inputs"}:
            raise TransportError("the data party's alignment message needs exactly ids and "
                                 "n_inputs")
        _check_id_list(answer["ids"], "the data party's ids")
        n_inputs = answer["n_inputs"]
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or not \
                1 <= n_inputs <= MAX_INPUTS:
            raise TransportError(f"the data party declares {n_inputs!r} inputs; the cap is "
                                 f"1..{MAX_INPUTS:,}")
        self.n_inputs = n_inputs
        self._intersect(answer["ids"])

    def _intersect(self, other_ids) -> None:
        self.common, self.rows = data.common_rows(self.keys, other_ids)
        self.n_other_ids = len(other_ids)
        if not self.common:
            raise data.DataError("no id is shared by this party's file and the other party's")


MAX_IDS = 10 ** 7  # ids in one alignment message (plan.MAX_SAMPLES rows at most are trained)
MAX_ID_CHARS = 1024  # characters in one id


def _check_id_list(ids, what: str) -> None:
    """A peer's id list: a JSON list of at most MAX_IDS strings of at most MAX_ID_CHARS each."""
    if not isinstance(ids, list):
        raise TransportError(f"{what} are not a list, got {type(ids).__name__}")
    if len(ids) > MAX_IDS:
        raise TransportError(f"{what}: {len(ids):,} ids, more than the cap of {MAX_IDS:,}")
    for position, key in enumerate(ids):
        if not isinstance(key, str) or len(key) > MAX_ID_CHARS:
            raise TransportError(f"{what}: entry {position} is not a string of at most "
                                 f"{MAX_ID_CHARS} characters: {str(key)[:40]!r}")


def align(channel: SocketChannel) -> None:
    """B → A ``ids and split`` (public), A → B ``ids`` (public): each party then knows the ids
    both hold, sorted (``data.common_rows``), and the public split."""
    channel.send("align", LABEL, DATA, "ids and split", PUBLIC,
                 make=lambda label: label.offer(), take=lambda ids, offer: ids.take_offer(offer))
    channel.send("align", DATA, LABEL, "ids", PUBLIC,
                 make=lambda ids: ids.answer(), take=lambda label, answer: label.take_answer(answer))


# ----------------------------------------------------------------------------------------------
# Sessions: one per process
# ----------------------------------------------------------------------------------------------
def _own_checkpoint(checkpoint_dir, role: str, resume: bool, allow_insecure: bool = False):
    """(this party's main file in ``checkpoint_dir``, its saved states): a usable file must
    exist to resume (rundir.saved_states, its latest epoch and the one before), and none
    otherwise. (None, None) without a directory; saved states None for a new run."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume needs the checkpoint directory to resume from")
        return None, None
    path = rundir.party_path(checkpoint_dir, role)
    if not resume:
        rundir.refuse_to_overwrite(checkpoint_dir, (role,))
        return path, None
    saved = rundir.saved_states(checkpoint_dir, role, allow_insecure=allow_insecure)
    if saved.duplicated:
        raise ValueError(f"{checkpoint_dir}: two files of {role} party state hold one epoch; "
                         "the saver never leaves that — keep one of them")
    if not saved.states:
        raise ValueError("nothing to resume: " + rundir.nothing_saved(checkpoint_dir, role,
                                                                          saved))
    return path, saved


MAX_OFFERED_EPOCHS = 16  # the saver keeps two; a few more if files were copied in


def _epochs(value, what: str) -> list:
    if not (isinstance(value, list) and 0 < len(value) <= MAX_OFFERED_EPOCHS and all(
            isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= MAX_EPOCHS
            for e in value)):
        raise TransportError(f"{what} is not a list of 1 to {MAX_OFFERED_EPOCHS} epoch numbers")
    return value


def agree_epoch(channel: SocketChannel, saved) -> int:
    """Resuming, before step 0: the epoch both parties continue from.

    A → B ``checkpointed epochs`` (public): the epochs the data party has a usable file of (its
    latest and the one before). B answers B → A ``resume from epoch`` (public): the latest of
    them that it has too, or null if none — then both refuse. A crash between the parties'
    writes leaves one party an epoch ahead; both continue from the other's epoch, and the
    ahead party trains that epoch again (step 0's training plan then carries the same
    ``epochs_completed``, which the data party checks)."""
    mine = saved.epochs[:MAX_OFFERED_EPOCHS]
    got = {}

    def choose(_, offered):
        got["offered"] = _epochs(offered, "the data party's checkpointed epochs")
        got["epoch"] = rundir.pick_epoch(got["offered"], mine)

    def take_choice(_, epoch):
        if epoch is not None and epoch not in mine:
            raise TransportError(f"the label party resumes from epoch {epoch!r}, of which this "
                                 f"party has no file (it has epochs {sorted(mine)})")
        got["epoch"] = epoch

    channel.send("resume", DATA, LABEL, "checkpointed epochs", PUBLIC,
                 make=lambda _: list(mine), take=choose)
    channel.send("resume", LABEL, DATA, "resume from epoch", PUBLIC,
                 make=lambda _: got["epoch"], take=take_choice)
    if got["epoch"] is None:
        theirs = got.get("offered", "the other party's")
        raise ValueError(f"nothing to resume: no epoch both parties saved (this party has "
                         f"{sorted(mine)}, the other {theirs}); train afresh into new directories")
    return got["epoch"]


@dataclass
class Session:
    """What one party ends a session with: its party, its channel, and the counts."""

    role: str
    party: object
    channel: SocketChannel
    public: object
    n_ids: int
    n_other_ids: int
    n_common: int
    n_train: int
    n_test: int
    seconds: float
    test_labels: np.ndarray | None = None
    class_names: list | None = None  # the label party's, in class-id order

    def metrics(self) -> dict:
        public, connection = self.public, self.channel.connection
        out = {"role": self.role, "n_ids": self.n_ids, "n_other_ids": self.n_other_ids,
               "n_common": self.n_common, "n_train": self.n_train, "n_test": self.n_test,
               "key_bits": public.public_key.n.bit_length(), "n_inputs": public.n_inputs,
               "training": public.training.to_dict(), "seconds": self.seconds,
               "resumed_after_epoch": self.resumed_after_epoch,
               "wire": {"frames_sent": connection.frames_sent, "bytes_sent": connection.bytes_sent,
                        "frames_received": connection.frames_received,
                        "bytes_received": connection.bytes_received}}
        out.update(self.channel.metrics())
        if self.role == LABEL:
            party, n_batches = self.party, -(-self.n_train // public.training.batch_size)
            out.update({"layer_sizes": list(party.layer_sizes),
                        "label_model_sha256": label_model_fingerprint(party.model)})
            if party.losses:
                out["final_loss"] = float(np.mean(party.losses[-n_batches:]))
                out["batch_losses"] = list(party.losses)
            n_classes = max(2, party.layer_sizes[-1])
            names = self.class_names or [str(k) for k in range(n_classes)]
            out.update(classes=acml.classes_line(names), class_names=list(names))
            if self.n_test and self.test_labels is not None:
                report = nn.classification_report(self.test_labels, party.classes(),
                                                  party.predictions, n_classes)
                out.update(test_accuracy=report["accuracy"], test_report=report,
                           majority_class_rate=report["majority_baseline"])
                if report["auc"] is not None:
                    out["test_auc"] = report["auc"]
        return out

    @property
    def resumed_after_epoch(self) -> int:
        return self.public.training.epochs_completed

    def summary(self) -> str:
        m = self.metrics()
        t = m["training"]
        lines = [f"{self.role} party: {m['n_train']} training and {m['n_test']} test rows of the "
                 f"{m['n_common']} ids shared by its {m['n_ids']} and the other party's "
                 f"{m['n_other_ids']}; the data party's {m['key_bits']}-bit Paillier key",
                 f"training plan: {t['n_hidden']} units ({t['activation']}) in the first layer "
                 f"over {m['n_inputs']} inputs, η = {t['lr']}, batches of {t['batch_size']}, "
                 f"{acml.plural(t['epochs'], 'epoch')}, seed {t['seed']}, "
                 f"σ = {t['fixed_point']['sigma']}"]
        if "classes" in m:
            lines.append(f"classes            {m['classes']}")
        if m["resumed_after_epoch"]:
            lines.append(f"resumed            from the checkpoints after epoch "
                         f"{m['resumed_after_epoch']}")
        if "test_report" in m:
            lines += acml.test_report_lines({"encrypted": m["test_report"]}, m["class_names"])
        if "final_loss" in m:
            lines.append(f"final loss         {m['final_loss']:.6f} (mean over the last epoch)")
        wire = m["wire"]
        lines += [f"wall time          {m['seconds']:.1f} s, both parties and the wire",
                  "time per step      " + "   ".join(
                      f"{step}: {seconds:.1f} s" for step, seconds in m["step_seconds"].items()),
                  f"on the wire        {wire['frames_sent']} frames "
                  f"({wire['bytes_sent'] / 1e6:.2f} MB) sent, {wire['frames_received']} "
                  f"({wire['bytes_received'] / 1e6:.2f} MB) received",
                  "", "what crossed, and what the receiver learns from one such message:"]
        return "\n".join(lines + leakage_lines(m["leakage"]))


def label_model_fingerprint(model) -> str:
    """sha256 of the label party's parameters (the first layer's bias and every layer above),
    float64 big-endian in layer order: two runs trained the same model iff these agree."""
    import hashlib
    digest = hashlib.sha256()
    for layer in model.layers:
        for parameter in (layer.W, layer.b):
            if parameter is not None:
                digest.update(np.ascontiguousarray(parameter, dtype=">f8").tobytes())
    return digest.hexdigest()


def _watch(progress):
    """after_batch for protocol.train, from progress(done, total) (or None)."""
    if progress is None:
        return None
    done = [0]

    def after_batch(rows):
        done[0] += 1
        progress(done[0])
    return after_batch


def run_data_party(connection, ids, X, *, keypair=None, plan: FixedPointPlan | None = None,
                   init_seed=None, bottom=None, executor=None, progress=None,
                   checkpoint_dir=None, resume: bool = False, feature_names=None,
                   allow_insecure: bool = False, insecure_flaws=SECURE,
                   transcript=None, allow_insecure_sigma: bool = False) -> Session:
    """The data party's whole session over an authenticated connection.

    Align on the common ids, split (seeded, public), standardise its own features on the
    training rows, then protocol.setup, the epochs of the label party's plan and, if there is a
    test split, prediction. ``init_seed`` seeds W0 and the bottom model; it must stay secret from
    the label party (None draws 128 bits from ``secrets``). ``bottom`` (a width) puts a bottom
    model under the interactive layer; ``executor`` runs its modular exponentiations.

    ``checkpoint_dir``: after every epoch this party saves its own file there, and only its
    own. ``resume=True`` loads it instead of ``keypair`` and ``init_seed``: the key pair, ε_acc,
    the bottom model and the standardisation fitted before; the same ids, split and seed give
    the same training rows (the checkpoint's sha256 of the features must match).
    """
    start_time = time.perf_counter()
    try:
        path, saved = _own_checkpoint(checkpoint_dir, DATA, resume, allow_insecure)
        state = None
        if resume:
            if keypair is not None or init_seed is not None:
                raise ValueError("resume takes the key pair and ε_acc from the data party's "
                                 "checkpoint; pass no keypair and no init_seed")
            state = saved.states[saved.epochs[0]]  # its plan and shapes; the epoch comes later
            if plan is not None and plan != state.plan:
                raise ValueError(f"the checkpoint's fixed-point plan {state.plan.to_dict()} "
                                 f"differs from this run's {plan.to_dict()}")
            plan = state.plan
        plan = plan or FixedPointPlan()
        if state is None:  # the σ policy before any id leaves
            check_sigma(plan.sigma, allow_insecure_sigma)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != len(ids):
            raise ValueError(f"features of shape {X.shape} for {len(ids)} ids")
        n_inputs = X.shape[1] if bottom is None else int(bottom)
        if state is not None:
            if X.shape[1] != state.n_features:
                raise ValueError(f"features with {X.shape[1]} columns; the checkpoint's model "
                                 f"takes {state.n_features} ({', '.join(state.feature_names)})")
            n_inputs = state.bottom.width if state.bottom is not None else X.shape[1]
        id_list = IdList(ids, n_inputs=n_inputs)
        channel = SocketChannel(connection, DATA, id_list, sigma=plan.sigma, transcript=transcript)
        align(channel)
        if state is not None:
            state = saved.states[agree_epoch(channel, saved)]
        train_rows, test_rows = data.split_rows(len(id_list.common), id_list.test_fraction,
                                                id_list.seed)
        features = X[id_list.rows]
        if state is None:
            scaler = data.Standardizer().fit(features[train_rows])
            party = DataParty(scaler.transform(features[train_rows]), plan=plan, keypair=keypair,
                              init_seed=init_seed, bottom=bottom, executor=executor,
                              insecure_flaws=insecure_flaws,
                              allow_insecure_sigma=allow_insecure_sigma)
        else:
            # The standardisation fitted before, not refitted: the rows must encode exactly
            # as they did, which restore() checks against the checkpoint's sha256.
            scaler = state.standardizer()
            party = state.restore(scaler.transform(features[train_rows]), executor=executor)
        channel.seat(party)
        public = protocol.setup(channel, start="resume" if resume else "new")
        save = None if path is None else rundir.saver(
            checkpoint_dir, data_party=party, feature_names=feature_names,
            feature_mean=scaler.mean, feature_std=scaler.std)
        protocol.train(channel, public, after_epoch=save, after_batch=_watch(progress))
        if len(test_rows):
            party.set_rows_to_predict(scaler.transform(features[test_rows]))
            protocol.predict(channel, public)
        channel.finish()
    finally:
        connection.close()
    return Session(DATA, party, channel, public, len(id_list.keys), id_list.n_other_ids,
                   len(id_list.common), len(train_rows), len(test_rows),
                   time.perf_counter() - start_time)


def run_label_party(connection, ids, y, n_classes: int, config, *, test_fraction: float = 0.2,
                    executor=None, progress=None, checkpoint_dir=None, resume: bool = False,
                    class_names=None, insecure_flaws=SECURE, transcript=None) -> Session:
    """The label party's whole session over an authenticated connection.

    ``config`` is an ``acml.Config`` (hidden widths, activation, lr, momentum, batch size,
    epochs, seed, fixed-point plan, packing); its key size and bottom model are the data party's
    business. Sends its ids and the split (public), builds the network over the data party's
    declared input width, then protocol.setup, the epochs and prediction on the test rows.

    ``checkpoint_dir``: after every epoch this party saves its own file there, and only its
    own. ``resume=True`` loads it, checks that this run's settings are the checkpoint's but for
    ``config.epochs``, and goes on from the epoch it was saved after.
    """
    start_time = time.perf_counter()
    try:
        path, saved = _own_checkpoint(checkpoint_dir, LABEL, resume, config.allow_insecure)
        state = None
        if resume:
            state = saved.states[saved.epochs[-1]]  # its settings; the epoch is agreed later
        y = np.asarray(y)
        if y.shape != (len(ids),):
            raise ValueError(f"labels of shape {y.shape} for {len(ids)} ids")
        data.check_split(test_fraction, config.seed)  # before any id leaves
        if state is None:
            check_sigma(config.plan.sigma, config.allow_insecure_sigma)
        if state is not None:  # before any id leaves; the input width is re-checked below
            state.check_resumable(config.label_settings(state.layer_sizes), config.epochs)
        id_list = IdList(ids, test_fraction=test_fraction, seed=config.seed)
        channel = SocketChannel(connection, LABEL, id_list, sigma=config.plan.sigma,
                                transcript=transcript)
        align(channel)
        if state is not None:
            state = saved.states[agree_epoch(channel, saved)]
        train_rows, test_rows = data.split_rows(len(id_list.common), test_fraction, config.seed)
        labels = y[id_list.rows]
        if len(np.unique(labels[train_rows])) < 2:
            raise data.DataError("the training rows shared with the data party hold one class")
        sizes = config.layer_sizes(id_list.n_inputs, n_classes)
        if state is None:
            party = LabelParty(labels[train_rows], sizes, activation=config.activation,
                               lr=config.lr, momentum=config.momentum,
                               batch_size=config.batch_size, epochs=config.epochs,
                               seed=config.seed, plan=config.plan, executor=executor,
                               packing=config.packing, insecure_flaws=insecure_flaws,
                               allow_insecure=config.allow_insecure,
                               allow_insecure_sigma=config.allow_insecure_sigma)
        else:
            state.check_resumable(config.label_settings(sizes), config.epochs)
            party = state.restore(labels[train_rows], epochs=config.epochs, executor=executor,
                                  packing=config.packing)
        channel.seat(party)
        public = protocol.setup(channel, start="resume" if resume else "new")
        save = None if path is None else rundir.saver(checkpoint_dir, label_party=party,
                                                          class_names=class_names)
        protocol.train(channel, public, after_epoch=save, after_batch=_watch(progress))
        if len(test_rows):
            protocol.predict(channel, public)
        channel.finish()
    finally:
        connection.close()
    return Session(LABEL, party, channel, public, len(id_list.keys), id_list.n_other_ids,
                   len(id_list.common), len(train_rows), len(test_rows),
                   time.perf_counter() - start_time, labels[test_rows],
                   None if class_names is None else list(class_names))


# ----------------------------------------------------------------------------------------------
# Prediction with each party's own checkpoint
# ----------------------------------------------------------------------------------------------
def predict_as_data(connection, ids, X, checkpoint_dir, *, feature_names=None,
                    source: str = "features", executor=None, allow_insecure: bool = False,
                    transcript=None) -> Session:
    """The data party's side of a prediction: its checkpoint, its new rows (raw, as in the
    features file), their ids (sent to the label party, public, so its output names the rows)."""
    start_time = time.perf_counter()
    try:
        state = checkpoint.DataPartyState.load(rundir.party_path(checkpoint_dir, DATA),
                                               allow_insecure=allow_insecure)
        rows = state.rows_to_predict(X, feature_names=feature_names, ids=ids, source=source)
        party = state.restore(rows, same_features=False, executor=executor)
        party.set_rows_to_predict(rows)
        channel = SocketChannel(connection, DATA, party, sigma=state.plan.sigma,
                                transcript=transcript)
        channel.send("predict", DATA, LABEL, "ids to predict", PUBLIC,
                     make=lambda _: [str(value) for value in ids], take=None)
        public = protocol.setup(channel, start="predict")
        protocol.predict(channel, public)
        channel.finish()
    finally:
        connection.close()
    return Session(DATA, party, channel, public, len(ids), 0, len(ids), 0, len(ids),
                   time.perf_counter() - start_time)


def predict_as_label(connection, checkpoint_dir, *, executor=None, allow_insecure: bool = False,
                     transcript=None):
    """The label party's side of a prediction: (its session, the ids, its Prediction)."""
    start_time = time.perf_counter()
    received = {}
    try:
        state = checkpoint.LabelPartyState.load(rundir.party_path(checkpoint_dir, LABEL),
                                                allow_insecure=allow_insecure)
        party = state.restore(executor=executor)
        channel = SocketChannel(connection, LABEL, party, sigma=state.plan.sigma,
                                transcript=transcript)
        channel.send("predict", DATA, LABEL, "ids to predict", PUBLIC, make=None,
                     take=lambda _, ids: received.update(ids=_check_ids(ids)))
        public = protocol.setup(channel, start="predict")
        protocol.predict(channel, public)
        if len(received["ids"]) != len(party.predictions):
            raise TransportError(f"the data party named {len(received['ids'])} ids for "
                                 f"{len(party.predictions)} rows")
        channel.finish()
    finally:
        connection.close()
    n = len(received["ids"])
    session = Session(LABEL, party, channel, public, 0, n, n, 0, n,
                      time.perf_counter() - start_time, None)
    return session, received["ids"], party.prediction(state.class_names)


def _check_ids(ids) -> list[str]:
    _check_id_list(ids, "the data party's ids to predict")
    return ids
