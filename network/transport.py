"""Two parties in two processes: the checked channel over the wire, and one session per process.

* :class:`SocketChannel` is a :class:`channel.Channel` with one party in this process. Sending,
  it runs ``make`` and the checks and writes one frame (wire.py); receiving, it reads the next
  frame, refuses it unless its declaration is exactly the one the protocol expects next (step,
  sender, receiver, name, kind, reason, shape and widths, which both sides compute from public
  facts), decodes it, runs the same checks and then ``take``. A streamed message is one frame
  per row block, each naming its block (index, count, rows), which the receiver computes too.
* :func:`alignment.align_ids` is the step before step 0: the ids both parties hold, by private set
  intersection (psi.py) or, if both choose it, in the clear; and the public split.
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

from jobs import checkpoint
from network.idle_fill import IdleFill, peer_ready
from speed import kernels
from jobs import run_directory
from jobs import data
from jobs import preparation
from jobs.progress import batches_to_train
from jobs.report import classes_line, plural, test_report_lines
import nn
import protocol
from network import psi
from network.alignment import (PSI, PSI_MAX_RATIO, Alignment, align_ids, check_id_list,
                               declare_width)
from channel import DATA, LABEL, PUBLIC, Channel, LeakageError, leakage_lines
from attacks.flaws import SECURE, party_classes
from speed.engine import FastEngine
from network.frames import check_layout, decode_payload, encode_payload
from plan import MAX_EPOCHS, STREAM_CHUNKS, FixedPointPlan, check_sigma
from privacy import input_perturbation
from network.wire import PeerStopped, TransportError, one_line


class SocketChannel(Channel):
    """The channel of one process: ``party`` (a DataParty or LabelParty) runs here as ``role``,
    the other across ``connection``. ``idle_fill``: while it waits for a frame, the party here
    fills its randomizer pool for the epoch ahead (idle_fill.py)."""

    def __init__(self, connection, role: str, party, *, sigma: int = 40, transcript=None,
                 idle_fill: bool = True, stream_chunks: int = STREAM_CHUNKS):
        super().__init__(**{f"{role}_party": party}, sigma=sigma, transcript=transcript,
                         stream_chunks=stream_chunks)
        self.connection, self.role = connection, role
        self.idle = IdleFill(idle_fill)
        self._integer_lists = {}  # message name -> (count, max count, max width): see
        # expect_integers
        # "TLSv1.3" on a TLS connection, None on plain TCP (frames authenticated, not encrypted)
        version = getattr(connection.sock, "version", None)
        self.tls_version = version() if callable(version) else None

    def seat(self, party) -> None:
        """After the alignment: the party that trains takes the place of the id list."""
        self.local[self.role] = party
        self._check_mask_source(self.role, party.mask_source)

    def _transmit(self, message, payload, block=None) -> None:
        """One frame; a row block of a streamed message also says which (``block``)."""
        layout, body = encode_payload(payload)
        header = {"type": "message", "declaration": message.declaration(), "layout": layout}
        if block is not None:
            header["block"] = block
        self.connection.send_frame(header, body, what=_block_where(message, block))

    def _transmit_block(self, message, index, slices, block) -> None:
        self._transmit(message, block, _block_header(index, slices))

    def _receive_block(self, message, index, slices):
        rows = slices[index]
        return self._receive(message, _block_header(index, slices),
                             (rows.stop - rows.start, *message.shape[1:]))

    def expect_integers(self, name: str, *, count: int | None = None,
                        max_count: int | None = None, max_width: int, over_cap=None) -> None:
        """The next message called ``name`` to arrive must be a list of ``count`` (any number up
        to ``max_count``, if None) integers of at most ``max_width`` bytes each: checked before
        its body is read. ``over_cap(number)``, if given, is the one line that refuses a list
        over ``max_count`` (psi.PSIError). The id alignment uses it; the protocol's own
        messages declare shapes."""
        self._integer_lists[name] = (count, max_count, max_width, over_cap)

    def _receive(self, message, block=None, shape=None):
        """The next frame, if it is ``message`` (or its row block ``block``, of ``shape``): its
        declaration, which block it is and its payload layout (dtype, shape, element count,
        integer width) are checked before its body is read, the payload only then decoded."""
        expected, where = message.declaration(), _block_where(message, block)
        shape = message.shape if block is None else shape

        def check(header):
            got = header.get("declaration") if header.get("type") == "message" else None
            if got != expected:
                raise TransportError(f"{self.connection.peer} sent {_describe(got)} where the "
                                     f"protocol expects {message.where} ({message.kind})")
            if header.get("block") != block:
                raise TransportError(f"{where}: {self.connection.peer} sent "
                                     f"{_describe_block(header.get('block'))}; this side expects "
                                     f"{_describe_block(block)} (both parties must stream alike: "
                                     "--stream-chunks)")
            layout = header.get("layout")
            if not isinstance(layout, dict):
                raise TransportError(f"{where}: the frame has no payload layout")
            check_layout(layout, where, expected_shape=shape)
            if message.name in self._integer_lists:
                self._check_integer_list(message, layout, *self._integer_lists[message.name])

        self.idle.wait(self.local[self.role], lambda: peer_ready(self.connection.sock),
                       message.step)
        header, body = self.connection.receive_frame(where, expect=check)
        self._integer_lists.pop(message.name, None)
        return decode_payload(header["layout"], body, self.public_key, where,
                              expected_shape=shape)

    @staticmethod
    def _check_integer_list(message, layout, count, max_count, max_width, over_cap) -> None:
        shape = layout["shape"]
        if layout["dtype"] != "int-list" or (count is not None and shape != [count]):
            wanted = "some" if count is None else str(count)
            raise TransportError(f"{message.where}: the frame declares a {layout['dtype']} "
                                 f"payload of shape {shape}, the protocol expects a list of "
                                 f"{wanted} integers")
        if count is None and max_count is not None and shape[0] > max_count:
            if over_cap is not None:
                raise psi.PSIError(over_cap(shape[0]))
            raise TransportError(f"{message.where}: {shape[0]:,} ids, more than the cap of "
                                 f"{max_count:,}")
        if layout["width"] > max_width:
            raise TransportError(f"{message.where}: integers of {layout['width']} bytes, more "
                                 f"than the {max_width} a group element takes")

    def finish(self) -> None:
        """Each side says it is done, so neither ends cleanly while the other is still working."""
        self.connection.send_frame({"type": "done"}, what="the end of the session")
        header, body = self.connection.receive_frame("the end of the session")
        if header.get("type") != "done" or body:
            raise TransportError(f"{self.connection.peer} sent a {header.get('type')!r} frame "
                                 "where the session ends")


def _block_header(index: int, slices) -> dict:
    """What a streamed message's frame says of its row block: both sides compute it alone."""
    return {"index": index, "of": len(slices), "rows": [slices[index].start, slices[index].stop]}


def _describe_block(block) -> str:
    if block is None:
        return "no row block"
    if not isinstance(block, dict) or not isinstance(block.get("index"), int):
        return "a frame whose row block is no block"
    return (f"row block {block['index'] + 1} of {one_line(block.get('of'))[:20]} "
            f"(rows {one_line(block.get('rows'))[:40]})")


def _block_where(message, block) -> str:
    return message.where if block is None else (f"{message.where}, row block "
                                                f"{block['index'] + 1} of {block['of']}")


def _describe(declaration) -> str:
    if not isinstance(declaration, dict):
        return "a frame that is no protocol message"
    return (f"step {declaration.get('step')} message {declaration.get('name')!r} "
            f"({declaration.get('kind')}, {declaration.get('sender')} → "
            f"{declaration.get('receiver')}, shape {declaration.get('shape')}, widths "
            f"{declaration.get('mask_bits')}/{declaration.get('value_bits')})")


def reason_for_the_peer(error: BaseException) -> str:
    """The one line a stopping party sends the other (wire.Connection.stop), so that it says
    "the label party stopped: <this>" instead of "closed the connection".

    A refusal of something the protocol carries (a σ, a training plan, a resume, a PSI set over
    the cap, a malformed or unexpected message: ValueError, LeakageError, TransportError) is
    sent as this side says it, its paths left out (without_paths): it names public facts and what
    the peer itself sent. A problem
    with this party's own data (DataError) or files (OSError) is only named, not quoted, because
    its line can hold an id or a path; an interruption is said as such; anything else is an
    internal error, by its type. The wire sends nothing when the peer already stopped or the
    stream from it failed (Connection.send_stop)."""
    if isinstance(error, KeyboardInterrupt):
        return "it was interrupted (Ctrl-C)"
    if not isinstance(error, Exception):
        return f"it was stopped ({type(error).__name__})"
    if isinstance(error, data.DataError):
        return "a problem with its own data, which it reports on its side"
    if isinstance(error, PeerStopped):
        return "this side stopped too"
    if isinstance(error, (ValueError, LeakageError, TransportError)):
        return without_paths(one_line(error))
    if isinstance(error, OSError):
        return ("it could not read or write its own files "
                f"({error.strerror or type(error).__name__})")
    return f"an internal error on its side ({type(error).__name__})"


def without_paths(line: str) -> str:
    """``line`` with every word that names a file or directory (holds a / or a \\) replaced by
    "<its own path>": where a party keeps its files is nobody else's business (a directory's
    name can hold a client's name), and a refusal makes its point without it."""
    def hidden(word: str) -> str:
        core = word.rstrip(":,;.)")
        if ("/" in core or "\\" in core) and "//" not in core:
            return "<its own path>" + word[len(core):]
        return word
    return " ".join(hidden(word) for word in line.split(" "))


# ----------------------------------------------------------------------------------------------
# Sessions: one per process
# ----------------------------------------------------------------------------------------------
def _own_checkpoint(checkpoint_dir, role: str, resume: bool, allow_insecure: bool = False):
    """(this party's main file in ``checkpoint_dir``, its saved states): a usable file must
    exist to resume (run_directory.saved_states, its latest epoch and the one before), and none
    otherwise. (None, None) without a directory; saved states None for a new run."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume needs the checkpoint directory to resume from")
        return None, None
    path = run_directory.party_path(checkpoint_dir, role)
    if not resume:
        run_directory.refuse_to_overwrite(checkpoint_dir, (role,))
        return path, None
    saved = run_directory.saved_states(checkpoint_dir, role, allow_insecure=allow_insecure)
    if saved.duplicated:
        raise ValueError(f"{checkpoint_dir}: two files of {role} party state hold one epoch; "
                         "the saver never leaves that — keep one of them")
    if not saved.states and (role == DATA or saved.skipped):
        # (a label party with no file at all may be in the first epoch's window: the data
        # party's files decide, in agree_epoch)
        raise ValueError("nothing to resume: " + run_directory.nothing_saved(checkpoint_dir, role,
                                                                          saved))
    return path, saved


MAX_OFFERED_EPOCHS = 16  # the saver keeps two; a few more if files were copied in


def _epochs(value, what: str) -> list:
    if not (isinstance(value, list) and 0 < len(value) <= MAX_OFFERED_EPOCHS and all(
            isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= MAX_EPOCHS
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
    ``epochs_completed``, which the data party checks). In the first epoch's window
    (run_directory.can_restart: no common epoch, none past 1) the answer is 0: both start the
    run again, the data party from its saved start (its epoch 0)."""
    mine = saved.epochs[:MAX_OFFERED_EPOCHS]
    got = {}

    def choose(_, offered):
        got["offered"] = _epochs(offered, "the data party's checkpointed epochs")
        got["epoch"] = run_directory.pick_epoch(got["offered"], mine)
        if run_directory.can_restart(got["offered"], mine):
            got["epoch"] = 0

    def take_choice(_, epoch):
        if epoch == 0:  # the run starts again: only in the first epoch's window
            if not run_directory.can_restart(mine, []):
                raise TransportError(f"the label party starts the run again, but this party "
                                     f"has epochs {sorted(mine)}, past the first")
        elif epoch is not None and epoch not in mine:
            raise TransportError(f"the label party resumes from epoch {epoch!r}, of which this "
                                 f"party has no file (it has epochs {sorted(mine)})")
        got["epoch"] = epoch

    channel.send("resume", DATA, LABEL, "checkpointed epochs", PUBLIC,
                 make=lambda _: list(mine), take=choose)
    channel.send("resume", LABEL, DATA, "resume from epoch", PUBLIC,
                 make=lambda _: got["epoch"], take=take_choice)
    if got["epoch"] is None:  # only the label party saw the other's epochs
        theirs = (f"the data party {sorted(got['offered'])}" if channel.role == LABEL else
                  "the label party none of them")
        raise ValueError(f"nothing to resume: no epoch both parties saved (this party has "
                         f"{sorted(mine)}, {theirs}); train afresh into new directories")
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
    epoch_seconds: list | None = None  # wall time of each epoch here, its pool's fill included
    predicting: bool = False  # a prediction session: no training, the model from checkpoints
    preparation: object = None  # the data party's, fitted on its training rows (its own)

    def metrics(self) -> dict:
        public, connection = self.public, self.channel.connection
        out = {"role": self.role, "n_ids": self.n_ids, "n_other_ids": self.n_other_ids,
               "n_common": self.n_common, "n_train": self.n_train, "n_test": self.n_test,
               "key_bits": public.public_key.n.bit_length(), "n_inputs": public.n_inputs,
               "training": public.training.to_dict(), "seconds": self.seconds,
               "resumed_after_epoch": self.resumed_after_epoch,
               "wire": {"frames_sent": connection.frames_sent, "bytes_sent": connection.bytes_sent,
                        "frames_received": connection.frames_received,
                        "bytes_received": connection.bytes_received,
                        "tls": self.channel.tls_version}}
        out.update(self.channel.metrics())
        # Online per step, as in one process: the pool's filling (at setup, between epochs and
        # while waiting for the peer) apart, as step "pool".
        idle = self.channel.idle
        out["step_seconds"] = idle.split(kernels.split_offline(out["step_seconds"],
                                                             self.party.engine))
        out["idle_fill"] = idle.report()
        pool = getattr(self.party.engine, "randomizer_pool", None)
        if pool is not None:
            out["pool"] = {"seconds": pool.offline_seconds - pool.step0_seconds,
                           "setup_seconds": pool.setup_seconds,
                           "hidden_seconds": idle.seconds, "filled": pool.filled,
                           "shortfall": pool.shortfall}
        out["epoch_seconds"] = list(self.epoch_seconds or [])
        if self.role == LABEL:
            party, n_batches = self.party, -(-self.n_train // public.training.batch_size)
            out.update({"layer_sizes": list(party.layer_sizes),
                        "label_model_sha256": label_model_fingerprint(party.model)})
            if party.losses:
                out["final_loss"] = float(np.mean(party.losses[-n_batches:]))
                out["batch_losses"] = list(party.losses)
            n_classes = max(2, party.layer_sizes[-1])
            names = self.class_names or [str(k) for k in range(n_classes)]
            out.update(classes=classes_line(names), class_names=list(names))
            if self.n_test and self.test_labels is not None:
                report = nn.classification_report(self.test_labels, party.classes(),
                                                  party.predictions, n_classes,
                                                  positive_class=party.model.positive_class)
                out.update(test_accuracy=report["accuracy"], test_report=report,
                           majority_class_rate=report["majority_baseline"])
                if report["auc"] is not None or "auc_note" in report:
                    out["test_auc"] = report["auc"]  # None, never NaN: no JSON value
                if "auc_note" in report:
                    out["test_auc_note"] = report["auc_note"]
        return out

    @property
    def resumed_after_epoch(self) -> int:
        return self.public.training.epochs_completed

    def summary(self) -> str:
        m = self.metrics()
        t = m["training"]
        if self.predicting:
            head = (f"{self.role} party: predicted {plural(m['n_test'], 'row')} with the model "
                    f"saved after epoch {m['resumed_after_epoch']}; the data party's "
                    f"{m['key_bits']}-bit Paillier key")
        else:
            head = (f"{self.role} party: {m['n_train']} training and {m['n_test']} test rows of "
                    f"the {m['n_common']} ids shared by its {m['n_ids']} and the other party's "
                    f"{m['n_other_ids']}; the data party's {m['key_bits']}-bit Paillier key")
        lines = [head,
                 f"training plan: {t['n_hidden']} units ({t['activation']}) in the first layer "
                 f"over {m['n_inputs']} inputs, η = {t['lr']}, batches of {t['batch_size']}, "
                 f"{plural(t['epochs'], 'epoch')}, seed {t['seed']}, "
                 f"σ = {t['fixed_point']['sigma']}"]
        if self.preparation is not None and not self.preparation.is_identity:
            lines.append(f"prepared           {self.preparation.describe()} (on this side only)")
        if "classes" in m:
            lines.append(f"classes            {m['classes']}")
        if m["resumed_after_epoch"] and not self.predicting:
            lines.append(f"resumed            from the checkpoints after epoch "
                         f"{m['resumed_after_epoch']}")
        if "test_report" in m:
            lines += test_report_lines({"encrypted": m["test_report"]}, m["class_names"])
        if "final_loss" in m:
            lines.append(f"final loss         {m['final_loss']:.6f} (mean over the last epoch)")
        wire = m["wire"]
        lines += [f"wall time          {m['seconds']:.1f} s, both parties and the wire",
                  "time per step      " + "   ".join(
                      f"{step}: {seconds:.1f} s" for step, seconds in m["step_seconds"].items()),
                  *_pool_lines(m),
                  f"on the wire        {wire['frames_sent']} frames "
                  f"({wire['bytes_sent'] / 1e6:.2f} MB) sent, {wire['frames_received']} "
                  f"({wire['bytes_received'] / 1e6:.2f} MB) received; every frame "
                  "authenticated, " + (f"encrypted by {wire['tls']}" if wire["tls"] else
                                       "not encrypted (no TLS)"),
                  "", "what crossed, and what the receiver learns from one such message:"]
        return "\n".join(lines + leakage_lines(m["leakage"]))


def _pool_lines(m) -> list:
    """The report's line on the randomizer pool: its filling, and how much was hidden."""
    if "pool" not in m:
        return []
    pool = m["pool"]
    return [f"randomizer pool    {pool['seconds']:.1f} s filled offline (step \"pool\"), "
            f"{pool['hidden_seconds']:.1f} s of it while waiting for the peer, in "
            f"{m['idle_fill']['slices']} slices" + ("" if m["idle_fill"]["enabled"] else
                                                    " (idle filling off)")]


class _EpochClock:
    """after_epoch for protocol.train that also notes each epoch's wall time at this party
    (from the start of training; each epoch's own pool fill between epochs included)."""

    def __init__(self, save):
        self.save, self.seconds, self._mark = save, [], time.perf_counter()

    def __call__(self, epochs_completed: int) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._mark)
        if self.save is not None:
            self.save(epochs_completed)
        self._mark = time.perf_counter()  # a checkpoint's writing is no epoch's time


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


def _watch(progress, public, n_train: int):
    """after_batch for protocol.train, from progress(done, total) (or None): the total is the
    batches this run still trains, known from the public plan once step 0 has agreed it."""
    if progress is None:
        return None
    done, total = [0], batches_to_train(public.training, n_train)

    def after_batch(rows):
        done[0] += 1
        progress(done[0], total)
    return after_batch


def run_data_party(connection, ids, X, *, keypair=None, plan: FixedPointPlan | None = None,
                   init_seed=None, bottom=None, executor=None, progress=None,
                   checkpoint_dir=None, resume: bool = False, feature_names=None,
                   allow_insecure: bool = False, insecure_flaws=SECURE,
                   transcript=None, allow_insecure_sigma: bool = False,
                   align: str = PSI, idle_fill: bool = True,
                   stream_chunks: int = STREAM_CHUNKS, dp_epsilon=None,
                   dp_delta=None, psi_max_ratio: float = PSI_MAX_RATIO,
                   rules=None) -> Session:
    """The data party's whole session over an authenticated connection.

    Align on the common ids (``align``: "psi", private set intersection, or "public-ids",
    the id lists in the clear; the label party's choice must be the same), split (seeded,
    public), standardise its own features on the
    training rows, then protocol.setup, the epochs of the label party's plan and, if there is a
    test split, prediction. ``init_seed`` seeds W0 and the bottom model; it must stay secret from
    the label party (None draws 128 bits from ``secrets``). ``bottom`` (a width) puts a bottom
    model under the interactive layer; ``executor`` runs its modular exponentiations.

    ``checkpoint_dir``: after every epoch this party saves its own file there, and only its
    own. ``resume=True`` loads it instead of ``keypair`` and ``init_seed``: the key pair, ε_acc,
    the bottom model and the standardisation fitted before; the same ids, split and seed give
    the same training rows (the checkpoint's sha256 of the features must match).

    ``idle_fill``: while waiting for the label party, fill the randomizer pool for the epoch
    ahead (idle_fill.py); the same weights either way. ``stream_chunks``: the row blocks in which
    steps 1's and 4's ciphertexts cross (each decrypted on arrival while the label party
    computes the next); the label party must choose the same, or the first block is refused
    (plan.stream_slices).

    ``dp_epsilon``/``dp_delta``: input perturbation (privacy/input_perturbation.py), this
    party's own choice: its standardised training rows are perturbed once before step 0, its
    test rows before their prediction, exactly as in the one-process run (the same rows, bit
    for bit, when ``init_seed`` is given). Resuming, the checkpoint's budget and seed.

    ``psi_max_ratio``: with PSI, the label party's set may hold at most this many times this
    party's number of ids (alignment.psi_cap, default 2); a larger one is refused, with both
    sizes, before this party's ids leave. A deviating label party can test each id it puts in
    its set, so this is what it can learn of ids it does not hold, at most.

    ``rules`` (preparation.Rules): ``X`` is then the raw file (preparation.RawFeatures, read
    with ids ``ids``), its columns prepared by the rules (checked before any id leaves), fitted
    on this party's own training rows — known only after the alignment and the split — as
    one-process ``train`` fits them on the same rows, so the weights are the same bit for bit.
    The fitted preparation goes into this party's checkpoint; nothing of it crosses: the label
    party learns the resulting width d (alignment.declare_width), as for any file of d numbers.

    If this party stops on an error, it first tells the label party why, where the wire can
    (:func:`reason_for_the_peer`, wire.Connection.stop).
    """
    start_time = time.perf_counter()
    try:
        budget = input_perturbation.check_options(dp_epsilon, dp_delta)
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
            state.check_same_perturbation(budget)
        plan = plan or FixedPointPlan()
        if state is None:  # the σ policy before any id leaves
            check_sigma(plan.sigma, allow_insecure_sigma)
        raw = None
        if rules is None:
            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2 or X.shape[0] != len(ids):
                raise ValueError(f"features of shape {X.shape} for {len(ids)} ids")
            _check_width(X, state)
        else:  # the rules against the file before any id leaves; the fit needs the split
            raw = X
            if list(raw.ids) != [str(value) for value in ids]:
                raise ValueError("ids that are not the raw file's")
            preparation.check_rules(raw, rules)
        id_list = Alignment(ids, align=align, psi_max_ratio=psi_max_ratio)
        channel = SocketChannel(connection, DATA, id_list, sigma=plan.sigma, transcript=transcript,
                                idle_fill=idle_fill, stream_chunks=stream_chunks)
        align_ids(channel)
        restart = None
        if state is not None:
            epoch = agree_epoch(channel, saved)
            if epoch == 0:  # the first epoch's window: a new run from this party's start
                restart, state, resume = state, None, False
                keypair, init_seed = restart.keypair, restart.init_seed
                bottom = None if restart.bottom is None else restart.bottom.width
            else:
                state = saved.states[epoch]
        train_rows, test_rows = data.split_rows(len(id_list.common), id_list.test_fraction,
                                                id_list.seed)
        prepared = None
        if raw is not None:  # fitted on this party's training rows only, as one process does
            prepared = preparation.Preparation.fit(raw, id_list.rows[train_rows], rules)
            X, feature_names = prepared.transform(raw), prepared.feature_names
            _check_width(X, state)
        id_list.n_inputs = (X.shape[1] if bottom is None else int(bottom)) if state is None \
            else (state.bottom.width if state.bottom is not None else X.shape[1])
        declare_width(channel)
        features = X[id_list.rows]
        if state is None:
            scaler = data.Standardizer().fit(features[train_rows])
            perturbation = (restart.input_perturbation(purpose="train") if restart is not None
                            else input_perturbation.for_data_party(budget, purpose="train",
                                                                   init_seed=init_seed))
            rows = input_perturbation.perturb_rows(
                perturbation, scaler.transform(features[train_rows]), plan)
            data_class, _ = party_classes(insecure_flaws)
            party = data_class(rows, plan=plan,
                               keypair=keypair, init_seed=init_seed, bottom=bottom,
                               engine=FastEngine(executor=executor),
                               allow_insecure_sigma=allow_insecure_sigma)
        else:
            # The standardisation fitted before, not refitted: the rows must encode exactly
            # as they did, which restore() checks against the checkpoint's sha256.
            scaler = state.standardizer()
            perturbation = state.input_perturbation(purpose="train")
            party = state.restore(input_perturbation.perturb_rows(
                perturbation, scaler.transform(features[train_rows]), plan),
                engine=FastEngine(executor=executor))
        channel.seat(party)
        public = protocol.setup(channel, start="resume" if resume else "new")
        save = None if path is None else run_directory.saver(
            checkpoint_dir, data_party=party, feature_names=feature_names,
            feature_mean=scaler.mean, feature_std=scaler.std, input_perturbation=perturbation,
            preparation=prepared)
        clock = _EpochClock(save)
        protocol.train(channel, public, after_epoch=clock,
                       after_batch=_watch(progress, public, len(train_rows)))
        if len(test_rows):
            party.set_rows_to_predict(input_perturbation.perturb_rows(
                perturbation, scaler.transform(features[test_rows]), plan))
            protocol.predict(channel, public)
        channel.finish()
    except BaseException as error:
        connection.stop(reason_for_the_peer(error))
        raise
    finally:
        connection.close()
    return Session(DATA, party, channel, public, len(id_list.keys), id_list.n_other_ids,
                   len(id_list.common), len(train_rows), len(test_rows),
                   time.perf_counter() - start_time, epoch_seconds=clock.seconds,
                   preparation=prepared)


def _check_width(X, state) -> None:
    """Resuming, the features must have the checkpoint's columns."""
    if state is not None and X.shape[1] != state.n_features:
        raise data.DataError(f"features with {X.shape[1]} columns; the checkpoint's model "
                         f"takes {state.n_features} ({', '.join(state.feature_names)})")


def run_label_party(connection, ids, y, n_classes: int, config, *, test_fraction: float = 0.2,
                    executor=None, progress=None, checkpoint_dir=None, resume: bool = False,
                    class_names=None, insecure_flaws=SECURE, transcript=None,
                    align: str = PSI, idle_fill: bool = True,
                    stream_chunks: int = STREAM_CHUNKS, allow_bottom: bool = False,
                    psi_max_ratio: float = PSI_MAX_RATIO) -> Session:
    """The label party's whole session over an authenticated connection.

    ``config`` is an ``acml.Config`` (jobs/settings.py: hidden widths, activation, lr, momentum,
    batch size, epochs, seed, fixed-point plan, packing); its key size and bottom model are the data party's
    business. Aligns the ids (``align``: "psi", private set intersection, the default, or
    "public-ids", the id lists in the clear; the data party must choose the same), sends the
    split (public), builds the network over the data party's declared input width, then
    protocol.setup, the epochs and prediction on the test rows.

    ``checkpoint_dir``: after every epoch this party saves its own file there, and only its
    own. ``resume=True`` loads it, checks that this run's settings are the checkpoint's but for
    ``config.epochs``, and goes on from the epoch it was saved after. ``idle_fill`` and
    ``stream_chunks``: as for :func:`run_data_party` (``stream_chunks`` must be the same).
    ``psi_max_ratio``: as for :func:`run_data_party`, this party's own cap.
    ``allow_bottom``: consent to a data party with a bottom model (LabelParty.allow_bottom,
    leak L4); resumed, the checkpoint's recorded consent counts too.
    """
    start_time = time.perf_counter()
    try:
        path, saved = _own_checkpoint(checkpoint_dir, LABEL, resume, config.allow_insecure)
        state = None
        if resume and saved.states:
            state = saved.states[saved.epochs[-1]]  # its settings; the epoch is agreed later
        y = np.asarray(y)
        if y.shape != (len(ids),):
            raise ValueError(f"labels of shape {y.shape} for {len(ids)} ids")
        data.check_split(test_fraction, config.seed)  # before any id leaves
        if state is None:
            check_sigma(config.plan.sigma, config.allow_insecure_sigma)
        if state is not None:  # before any id leaves; the input width is re-checked below
            state.check_resumable(config.label_settings(state.layer_sizes), config.epochs)
        id_list = Alignment(ids, align=align, test_fraction=test_fraction, seed=config.seed,
                            psi_max_ratio=psi_max_ratio)
        channel = SocketChannel(connection, LABEL, id_list, sigma=config.plan.sigma,
                                transcript=transcript, idle_fill=idle_fill,
                                stream_chunks=stream_chunks)
        align_ids(channel)
        if resume:
            epoch = agree_epoch(channel, saved)
            if epoch == 0:  # the first epoch's window: both start the run again
                state, resume = None, False
            else:
                state = saved.states[epoch]
        declare_width(channel)
        train_rows, test_rows = data.split_rows(len(id_list.common), test_fraction, config.seed)
        labels = y[id_list.rows]
        if len(np.unique(labels[train_rows])) < 2:
            raise data.DataError("the training rows shared with the data party hold one class")
        if isinstance(config.class_weight, str):  # "balanced": every class needs a row
            missing = np.flatnonzero(np.bincount(labels[train_rows], minlength=n_classes) == 0)
            if len(missing):  # a DataError: the peer learns nothing of the labels or options
                raise data.DataError(f"--class-weight balanced: class {int(missing[0])} has no "
                                     "training row shared with the data party")
        sizes = config.layer_sizes(id_list.n_inputs, n_classes)
        if state is None:
            _, label_class = party_classes(insecure_flaws)
            party = label_class(labels[train_rows], sizes, activation=config.activation,
                                lr=config.lr, momentum=config.momentum,
                                batch_size=config.batch_size, epochs=config.epochs,
                                seed=config.seed, plan=config.plan,
                                engine=FastEngine(executor=executor), packing=config.packing,
                                allow_insecure=config.allow_insecure,
                                allow_insecure_sigma=config.allow_insecure_sigma,
                                block_rows=config.block_rows, allow_bottom=allow_bottom,
                                class_weight=config.class_weight, threshold=config.threshold,
                                positive_class=config.positive_class)
        else:
            state.check_resumable(config.label_settings(sizes), config.epochs)
            party = state.restore(labels[train_rows], epochs=config.epochs,
                                  engine=FastEngine(executor=executor), packing=config.packing,
                                  allow_bottom=allow_bottom)
        channel.seat(party)
        public = protocol.setup(channel, start="resume" if resume else "new")
        save = None if path is None else run_directory.saver(checkpoint_dir, label_party=party,
                                                          class_names=class_names)
        clock = _EpochClock(save)
        protocol.train(channel, public, after_epoch=clock,
                       after_batch=_watch(progress, public, len(train_rows)))
        if len(test_rows):
            protocol.predict(channel, public)
        channel.finish()
    except BaseException as error:
        connection.stop(reason_for_the_peer(error))
        raise
    finally:
        connection.close()
    return Session(LABEL, party, channel, public, len(id_list.keys), id_list.n_other_ids,
                   len(id_list.common), len(train_rows), len(test_rows),
                   time.perf_counter() - start_time, labels[test_rows],
                   None if class_names is None else list(class_names), clock.seconds)


# ----------------------------------------------------------------------------------------------
# Prediction with each party's own checkpoint
# ----------------------------------------------------------------------------------------------
def predict_as_data(connection, ids, X, checkpoint_dir, *, feature_names=None,
                    source: str = "features", executor=None, allow_insecure: bool = False,
                    transcript=None, stream_chunks: int = STREAM_CHUNKS, dp_epsilon=None,
                    dp_delta=None, state=None) -> Session:
    """The data party's side of a prediction: its checkpoint, its new rows (raw, as in the
    features file), their ids (sent to the label party in the clear, declared with
    protocol.IDS_TO_PREDICT_REASON: it writes the predictions keyed by id, so it learns which
    ids were scored, and by leak L5 each one's z). The rows are perturbed as the checkpoint's
    training rows were, or with ``dp_epsilon``/``dp_delta`` instead
    (DataPartyState.perturb_rows_to_predict). ``state``: the checkpoint, if the caller has
    already loaded it from ``checkpoint_dir`` (to prepare the rows before listening)."""
    start_time = time.perf_counter()
    try:
        if state is None:
            state = checkpoint.DataPartyState.load(run_directory.party_path(checkpoint_dir, DATA),
                                                   allow_insecure=allow_insecure)
        rows = state.rows_to_predict(X, feature_names=feature_names, ids=ids, source=source)
        rows = state.perturb_rows_to_predict(rows, dp_epsilon, dp_delta)
        party = state.restore(rows, same_features=False, engine=FastEngine(executor=executor))
        party.set_rows_to_predict(rows)
        channel = SocketChannel(connection, DATA, party, sigma=state.plan.sigma,
                                transcript=transcript, stream_chunks=stream_chunks)
        channel.send("predict", DATA, LABEL, "ids to predict", PUBLIC,
                     make=lambda _: [str(value) for value in ids], take=None,
                     reason=protocol.IDS_TO_PREDICT_REASON)
        public = protocol.setup(channel, start="predict")
        protocol.predict(channel, public)
        channel.finish()
    except BaseException as error:
        connection.stop(reason_for_the_peer(error))
        raise
    finally:
        connection.close()
    return Session(DATA, party, channel, public, len(ids), 0, len(ids), 0, len(ids),
                   time.perf_counter() - start_time, predicting=True)


def predict_as_label(connection, checkpoint_dir, *, executor=None, allow_insecure: bool = False,
                     transcript=None, stream_chunks: int = STREAM_CHUNKS, threshold=None,
                     positive_class=None):
    """The label party's side of a prediction: (its session, the ids, its Prediction).
    ``threshold`` and ``positive_class`` (a class name) replace the checkpoint's decision rule,
    as nn.set_decision does for ``acml.predict``."""
    start_time = time.perf_counter()
    received = {}
    try:
        state = checkpoint.LabelPartyState.load(run_directory.party_path(checkpoint_dir, LABEL),
                                                allow_insecure=allow_insecure)
        party = state.restore(engine=FastEngine(executor=executor))
        nn.set_decision(party.model, state.class_names, threshold, positive_class)
        channel = SocketChannel(connection, LABEL, party, sigma=state.plan.sigma,
                                transcript=transcript, stream_chunks=stream_chunks)
        channel.send("predict", DATA, LABEL, "ids to predict", PUBLIC, make=None,
                     take=lambda _, ids: received.update(ids=_check_ids(ids)),
                     reason=protocol.IDS_TO_PREDICT_REASON)
        public = protocol.setup(channel, start="predict")
        protocol.predict(channel, public)
        if len(received["ids"]) != len(party.predictions):
            raise TransportError(f"the data party named {len(received['ids'])} ids for "
                                 f"{len(party.predictions)} rows")
        channel.finish()
    except BaseException as error:
        connection.stop(reason_for_the_peer(error))
        raise
    finally:
        connection.close()
    n = len(received["ids"])
    session = Session(LABEL, party, channel, public, 0, n, n, 0, n,
                      time.perf_counter() - start_time, None, predicting=True)
    return session, received["ids"], party.prediction(state.class_names)


def _check_ids(ids) -> list[str]:
    check_id_list(ids, "the data party's ids to predict")
    return ids
