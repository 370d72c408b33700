"""Checkpoints: each party saves its own state, to its own file, without pickle.

A module of its own because persistence is not the protocol: protocol.py reads like the paper,
and this file only says how each party's state survives between runs. Each party's file holds
that party's state and nothing of the other's; loading validates everything (format, role,
shapes, key fingerprint, digest) and refuses what does not fit, in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from jobs import data
from jobs.preparation import Preparation
import nn
import paillier
from fixed import Fixed
from paillier import PublicKey
from fixed import from_decimal, to_decimal
from channel import DATA, LABEL
from parties import BottomModel, DataParty, LabelParty, Restored
from plan import FixedPointPlan, check_features
from privacy import input_perturbation

# ----------------------------------------------------------------------------------------------
# Checkpoints: each party saves its own state, to its own file, without pickle.
#
# File format (one .npz per party, read back with np.load(..., allow_pickle=False)):
#   meta          0-d string: JSON — format, version, role ("data" or "label"), the public key's
#                 fingerprint, the epochs completed, and the party's public settings
#   big integers  string arrays of decimal digits, one string per integer, in the array's shape:
#                 the key (public_key.n, private_key.p, private_key.q), noise_acc, weight_share
#   floats        float64 arrays: layer parameters, optimiser velocities, standardisation, and
#                 the data party's bottom model (bottom.W, bottom.b) when it has one
#   sha256        0-d string: hex digest of every other entry (name, dtype, shape, bytes, in name
#                 order). It detects corruption, not tampering: whoever can edit the file can
#                 recompute the digest.
# ----------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "acml-party-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILES = {DATA: "data_party.npz", LABEL: "label_party.npz"}
_DECIMAL = re.compile(r"-?[0-9]+")


def write_atomically(path, write, mode: str = "wb", *, private: bool = True,
                     **open_options) -> None:
    """Create ``path`` complete or not at all: ``write(handle)`` fills a temporary file in the
    same directory (``<name>.<8 random characters>.tmp``), which is flushed to disk and then
    os.replace-d over ``path`` (atomic).

    A crash or an error mid-way leaves the previous ``path`` untouched (a kill can leave the
    temporary file: checkpoint directories clean theirs on the next run, clean_temporaries).
    ``private`` (the default): mode 0600, owner only — checkpoints, transcripts, predictions and
    reports hold private keys, shares, scores or a party's metrics. ``private=False`` (the
    benchmark's timings, the audit's table): the usual mode, 0666 less the umask.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                                                 suffix=".tmp", dir=directory)
    except OSError as error:
        raise WriteFailed(error, path) from None
    _open_temporaries.add(temporary)
    try:
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(descriptor, mode, **open_options) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, WriteFailed):
            raise WriteFailed(error, path) from None
        raise
    finally:
        _open_temporaries.discard(temporary)


class WriteFailed(OSError):
    """An OSError of write_atomically, said with the file it was writing:
    ``writing PATH: no space left on device`` (the bare errno text names no file)."""

    def __init__(self, cause: OSError, path):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, reason[:1].lower() + reason[1:], os.fspath(path))

    def __str__(self) -> str:
        return f"writing {self.filename}: {self.strerror}"


# The temporary files of the writes under way: a second signal during the cleanup of a first
# (tools/cli.py) leaves no time to unwind, so it removes them from here before exiting.
_open_temporaries: set = set()


def remove_open_temporaries() -> None:
    """Delete the temporary file of every write_atomically under way (their targets stay as
    they were). For an exit that cannot unwind; errors are ignored, the exit goes on."""
    for temporary in list(_open_temporaries):
        try:
            os.unlink(temporary)
        except OSError:
            pass
        _open_temporaries.discard(temporary)


def _decimal_strings(values) -> np.ndarray:
    array = np.asarray(values, dtype=object)
    return np.array([to_decimal(v) for v in array.ravel().tolist()], dtype=str).reshape(array.shape)


def _integers(arrays: dict, name: str, shape: tuple, path) -> np.ndarray:
    strings = arrays[name]
    if strings.dtype.kind != "U" or strings.shape != tuple(shape):
        raise ValueError(f"{path}: entry {name!r} should be decimal strings of shape "
                         f"{tuple(shape)}, found {strings.dtype} of shape {strings.shape}")
    values = []
    for text in strings.ravel().tolist():
        if not _DECIMAL.fullmatch(text):
            raise ValueError(f"{path}: entry {name!r} holds {text[:20]!r}, not a decimal integer")
        values.append(from_decimal(text))
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _floats(arrays: dict, name: str, shape: tuple, path) -> np.ndarray:
    array = arrays[name]
    if array.dtype != np.float64 or array.shape != tuple(shape):
        raise ValueError(f"{path}: entry {name!r} should be float64 of shape {tuple(shape)}, "
                         f"found {array.dtype} of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: entry {name!r} holds a value that is not finite")
    return np.array(array, dtype=np.float64)


def _content_digest(entries: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(entries):
        if name == "sha256":
            continue
        array = np.ascontiguousarray(entries[name])
        header = json.dumps([name, array.dtype.str, list(array.shape)]).encode()
        digest.update(len(header).to_bytes(8, "big") + header)
        digest.update(array.tobytes())
    return digest.hexdigest()


def integers_digest(values) -> str:
    """sha256 of an integer array (its shape and every value): names a party's own data in its
    checkpoint, so that resuming on other features or labels is refused."""
    array = np.asarray(values, dtype=object)
    text = json.dumps(list(array.shape)) + ":" + ",".join(to_decimal(v) for v in array.ravel())
    return hashlib.sha256(text.encode()).hexdigest()


def party_name(role) -> str:
    return {DATA: "the data party's", LABEL: "the label party's"}.get(role, f"a {role!r}")


def _write_checkpoint(path, role: str, meta: dict, arrays: dict) -> None:
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "role": role, **meta}
    entries = {"meta": np.array(json.dumps(header, sort_keys=True)), **arrays}
    entries["sha256"] = np.array(_content_digest(entries))
    write_atomically(path, lambda handle: np.savez_compressed(handle, **entries))


# Caps checked on the .npy headers inside the zip BEFORE any array is read (a few MiB of
# compressed zeros can declare gigabytes). Far above any checkpoint this code writes at the
# training plan's own caps, far below what would exhaust a machine.
MAX_ENTRIES = 64
MAX_ENTRY_BYTES = 1 << 30  # 1 GiB decompressed, per entry
MAX_CHECKPOINT_BYTES = 2 << 30  # 2 GiB decompressed, all entries together
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_.]{1,100}\.npy")


def check_archive(path) -> None:
    """Refuse, in one line, a .npz whose entries are not what a checkpoint holds: more than
    MAX_ENTRIES entries, a name that is not ``<name>.npy``, a dtype that is not numbers or
    unicode strings (the loaders then demand float64 or decimal strings, entry by entry), or a declared size over MAX_ENTRY_BYTES (MAX_CHECKPOINT_BYTES in all).
    Only the zip directory and each entry's .npy header are read: nothing is decompressed
    beyond the headers."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ENTRIES:
                raise ValueError(f"{len(members)} entries, more than the {MAX_ENTRIES} allowed")
            total = 0
            for member in members:
                if not _ENTRY_NAME.fullmatch(member.filename):
                    raise ValueError(f"an entry named {member.filename[:60]!r}")
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                    else:
                        raise ValueError(f"entry {member.filename!r} has .npy version {version}")
                name = member.filename[:-len(".npy")]
                if dtype.hasobject or dtype.kind not in "biufcU":  # each entry's own load
                    raise ValueError(f"entry {name!r} is {dtype}, not numbers or strings")
                size = dtype.itemsize
                for extent in shape:
                    size *= int(extent)  # Python ints: no overflow on a forged shape
                if size > MAX_ENTRY_BYTES:
                    raise ValueError(f"entry {name!r} declares shape {tuple(shape)} of {dtype}: "
                                     f"{size / 2 ** 30:.1f} GiB, over the "
                                     f"{MAX_ENTRY_BYTES / 2 ** 30:.0f} GiB cap")
                total += size
            if total > MAX_CHECKPOINT_BYTES:
                raise ValueError(f"its entries declare {total / 2 ** 30:.1f} GiB, over the "
                                 f"{MAX_CHECKPOINT_BYTES / 2 ** 30:.0f} GiB cap")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: corrupted or not a checkpoint ({detail})") from None


def _read_checkpoint(path, role: str) -> tuple[dict, dict]:
    """(meta, arrays) of a checkpoint file, after checking its entries' headers (check_archive),
    then format, version, integrity and role."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint file")
    check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: corrupted or not a checkpoint ({detail})") from None
    if "meta" not in arrays or "sha256" not in arrays:
        raise ValueError(f"{path}: not an ACML checkpoint (no meta or sha256 entry)")
    try:
        meta = json.loads(str(arrays["meta"][()]))
    except (json.JSONDecodeError, IndexError) as error:
        raise ValueError(f"{path}: corrupted checkpoint: its meta entry is not JSON ({error})") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an ACML checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta.get('version')!r}; this code "
                         f"reads version {CHECKPOINT_VERSION}")
    if str(arrays["sha256"][()]) != _content_digest(arrays):
        raise ValueError(f"{path}: corrupted checkpoint: its content does not match the sha256 "
                         "stored in it")
    if meta.get("role") != role:
        raise ValueError(f"{path} is {party_name(meta.get('role'))} checkpoint, expected "
                         f"{party_name(role)}")
    del arrays["meta"], arrays["sha256"]
    return meta, arrays


def _check_entries(arrays: dict, expected: set, path) -> None:
    missing, unexpected = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint entries do not match its role: missing "
                         f"{missing or 'none'}, unexpected {unexpected or 'none'}")


def _public_key_from(arrays: dict, meta: dict, path, allow_insecure: bool) -> PublicKey:
    n = int(_integers(arrays, "public_key.n", (), path)[()])
    try:
        public_key = PublicKey(n)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if public_key.fingerprint != meta.get("public_key_fingerprint"):
        raise ValueError(f"{path}: corrupted checkpoint: its key does not match the fingerprint "
                         "in its meta")
    try:
        return public_key.check_policy(allow_insecure=allow_insecure)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _plan_from(meta: dict, path) -> FixedPointPlan:
    try:
        return FixedPointPlan(**meta["fixed_point"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: corrupted checkpoint: bad fixed-point plan ({error})") from None


def _meta_int(meta: dict, key: str, path) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path}: corrupted checkpoint: {key!r} should be an int >= 0, "
                         f"got {value!r}")
    return value


DATA_TRAINING_KEYS = ("n_hidden", "activation", "lr", "batch_size", "epochs", "seed",
                      "fixed_point", "epochs_completed", "insecure_flaws")
LABEL_TRAINING_KEYS = ("layer_sizes", "activation", "lr", "momentum", "batch_size", "epochs",
                       "seed")  # and "block_rows", newer: a checkpoint without it batched rows (0)


def _meta_dict(meta: dict, key: str, required: tuple, path) -> dict:
    value = meta.get(key)
    missing = [name for name in required if not isinstance(value, dict) or name not in value]
    if missing:
        raise ValueError(f"{path}: corrupted checkpoint: {key!r} lacks {missing}")
    return value


def _bottom_meta(meta: dict, n_features: int, path) -> dict | None:
    """The bottom model's public description in the data party's meta: None, or its width and
    activation (its weights are the arrays ``bottom.W``, ``bottom.b``)."""
    bottom = meta.get("bottom_model")
    if bottom is None:
        return None
    if not isinstance(bottom, dict) or bottom.get("activation") not in nn.ACTIVATIONS:
        raise ValueError(f"{path}: corrupted checkpoint: bad bottom model description {bottom!r}")
    width = _meta_int(bottom, "width", path)
    if width < 1 or _meta_int(bottom, "n_features", path) != n_features:
        raise ValueError(f"{path}: corrupted checkpoint: a bottom model of width {width} over "
                         f"{bottom['n_features']} features, for {n_features} feature names")
    return bottom


@dataclass
class DataPartyState:
    """What the data party's checkpoint holds — its own state and nothing of the label party's.

    The key pair, ε_acc (``noise_acc``, integers at W's scale), the fixed-point plan and the
    training plan it received, the standardisation it fitted on its features (applied to new
    rows before prediction), its feature names, a sha256 of its encoded training features
    (to refuse resuming on other rows), and its bottom model α = act(X·W + b) if it has one —
    then ε_acc is shaped (k, n_hidden), like the interactive layer's input α. No labels, no
    weight share, no layer above the first.
    """

    keypair: tuple
    plan: FixedPointPlan
    training: dict
    noise_acc: Fixed
    epochs_completed: int
    feature_names: list
    feature_mean: np.ndarray
    feature_std: np.ndarray
    features_sha256: str
    bottom: BottomModel | None = None
    # The seed A drew W0 (and its bottom model) from: A's own secret, kept so that a resumed
    # simulation can still rebuild its plaintext twin from the same start.
    init_seed: int | None = None
    # A's input perturbation: its public facts {"epsilon", "delta", "clip"} (None: off; a
    # checkpoint from before it existed loads as off), and the secret seed of its training
    # rows' noise, kept (beside the private key) so that a resumed run perturbs the same rows
    # the same way and the features' sha256 still matches.
    perturbation: dict | None = None
    perturbation_seed: int | None = None
    # How A turned its raw columns into these features (jobs/preparation.py: categories, fill
    # values, dropped columns) as plain data, applied again to the rows it predicts. None: the
    # features file's columns were its numbers as they are.
    preparation: dict | None = None

    @property
    def public_key(self) -> PublicKey:
        return self.keypair[0]

    @property
    def n_features(self) -> int:
        """Columns of the data party's features (the bottom model's input, if it has one)."""
        return len(self.feature_names)

    @classmethod
    def of(cls, party: DataParty, *, epochs_completed: int, feature_names=None,
           feature_mean=None, feature_std=None, input_perturbation=None,
           preparation=None) -> "DataPartyState":
        """Snapshot a data party after ``epochs_completed`` epochs. Without a standardisation,
        new rows are taken as they come (mean 0, std 1). ``input_perturbation``: the
        InputPerturbation its training rows went through (None: none)."""
        if party.noise_acc is None or party.training is None or party.public is None:
            raise ValueError("the data party has no training state yet: run setup first")
        d = party.n_features
        names = [f"x{j}" for j in range(d)] if feature_names is None else list(feature_names)
        mean = np.zeros(d) if feature_mean is None else np.asarray(feature_mean, np.float64)
        std = np.ones(d) if feature_std is None else np.asarray(feature_std, np.float64)
        if len(names) != d or mean.shape != (d,) or std.shape != (d,):
            raise ValueError(f"feature names, mean and std must each have {d} entries")
        bottom = party.bottom
        if bottom is not None:
            bottom = bottom.copy()
        return cls((party.public_key, party.private_key), party.plan, party.training.to_dict(),
                   Fixed.from_ints(party.noise_acc.values, party.noise_acc.scale),
                   int(epochs_completed), [str(name) for name in names], mean.copy(), std.copy(),
                   integers_digest(party.features.values), bottom, party.init_seed,
                   *_perturbation_of(input_perturbation),
                   None if preparation is None else preparation.to_dict())

    def save(self, path) -> None:
        public_key, private_key = self.keypair
        meta = {"public_key_fingerprint": public_key.fingerprint,
                "epochs_completed": self.epochs_completed, "fixed_point": self.plan.to_dict(),
                "training": self.training, "noise_acc_scale": self.noise_acc.scale,
                "feature_names": self.feature_names, "features_sha256": self.features_sha256,
                "bottom_model": None,
                "init_seed": None if self.init_seed is None else to_decimal(self.init_seed),
                "input_perturbation": self.perturbation,
                "input_perturbation_seed": None if self.perturbation_seed is None
                else to_decimal(self.perturbation_seed), "preparation": self.preparation}
        arrays = {"public_key.n": _decimal_strings(public_key.n),
                  "private_key.p": _decimal_strings(private_key.p),
                  "private_key.q": _decimal_strings(private_key.q),
                  "noise_acc": _decimal_strings(self.noise_acc.values),
                  "standardizer.mean": self.feature_mean, "standardizer.std": self.feature_std}
        if self.bottom is not None:
            meta["bottom_model"] = {"activation": self.bottom.activation_name,
                                    "width": self.bottom.width,
                                    "n_features": self.bottom.n_features}
            arrays["bottom.W"] = np.asarray(self.bottom.layer.W, dtype=np.float64)
            arrays["bottom.b"] = np.asarray(self.bottom.layer.b, dtype=np.float64)
        _write_checkpoint(path, DATA, meta, arrays)

    @classmethod
    def load(cls, path, *, allow_insecure: bool = False) -> "DataPartyState":
        """Read and validate a data party's file: one-line ValueError for anything wrong."""
        meta, arrays = _read_checkpoint(path, DATA)
        names = meta.get("feature_names")
        if not isinstance(names, list) or not names:
            raise ValueError(f"{path}: corrupted checkpoint: no feature names")
        d = len(names)
        bottom_meta = _bottom_meta(meta, d, path)
        _check_entries(arrays, {"public_key.n", "private_key.p", "private_key.q", "noise_acc",
                                "standardizer.mean", "standardizer.std",
                                *(() if bottom_meta is None else ("bottom.W", "bottom.b"))}, path)
        public_key = _public_key_from(arrays, meta, path, allow_insecure)
        p = int(_integers(arrays, "private_key.p", (), path)[()])
        q = int(_integers(arrays, "private_key.q", (), path)[()])
        try:
            private_key = paillier.PrivateKey(public_key, p, q, allow_insecure=allow_insecure)
        except ValueError as error:
            raise ValueError(f"{path}: corrupted checkpoint: bad private key ({error})") from None
        plan = _plan_from(meta, path)
        training = {"block_rows": 0, **_meta_dict(meta, "training", DATA_TRAINING_KEYS, path)}
        n_hidden = _meta_int(training, "n_hidden", path)
        bottom = None
        if bottom_meta is not None:
            width = bottom_meta["width"]
            bottom = BottomModel.from_weights(_floats(arrays, "bottom.W", (d, width), path),
                                              _floats(arrays, "bottom.b", (width,), path),
                                              bottom_meta["activation"])
        n_inputs = d if bottom is None else bottom.width
        noise = _integers(arrays, "noise_acc", (n_inputs, n_hidden), path)
        std = _floats(arrays, "standardizer.std", (d,), path)
        if np.any(std <= 0):
            raise ValueError(f"{path}: corrupted checkpoint: a standard deviation is not positive")
        if _meta_int(meta, "noise_acc_scale", path) != plan.w_frac_bits:
            raise ValueError(f"{path}: noise_acc is at scale {meta['noise_acc_scale']}, the plan "
                             f"puts W at {plan.w_frac_bits} fractional bits")
        return cls((public_key, private_key), plan, training,
                   Fixed.from_ints(noise, plan.w_frac_bits), _meta_int(meta, "epochs_completed",
                                                                       path),
                   [str(name) for name in names], _floats(arrays, "standardizer.mean", (d,), path),
                   std, str(meta.get("features_sha256")), bottom, _optional_big_int(meta, "init_seed", path),
                   *_perturbation_meta(meta, path), _preparation_meta(meta, names, path))

    def prepared(self) -> Preparation | None:
        """The preparation of raw columns fitted at training (None: numbers as they are)."""
        return None if self.preparation is None else Preparation.from_dict(self.preparation)

    def check_same_perturbation(self, budget: tuple | None) -> None:
        """A resumed run must ask for the input perturbation it was trained with:
        ``budget`` (ε, δ) as input_perturbation.check_options gives it, or None (off)."""
        saved = None if self.perturbation is None else (self.perturbation["epsilon"],
                                                        self.perturbation["delta"])
        if saved != budget:
            def describe(value):
                return "off" if value is None else f"ε = {value[0]:g}, δ = {value[1]:g}"
            raise ValueError(f"the checkpoint's data party trained with input perturbation "
                             f"{describe(saved)}, this run asks for {describe(budget)}; resume "
                             "with the same --dp-epsilon and --dp-delta")

    def input_perturbation(self, *, purpose: str, budget: tuple | None = None):
        """The data party's InputPerturbation with the checkpoint's clip bound C, or None (off).

        purpose "train": the checkpoint's own budget and training seed (a resumed run perturbs
        the very same rows). "predict": ``budget`` if given, else the checkpoint's, with a new
        seed — 256 bits from ``secrets``, or derived from init_seed when the checkpoint has one
        (reproduction only: then every prediction from this checkpoint reuses one noise
        stream, and rows predicted in two calls at the same position share their noise)."""
        if purpose == "train":
            if self.perturbation is None:
                return None
            return input_perturbation.for_data_party(
                (self.perturbation["epsilon"], self.perturbation["delta"]), purpose="train",
                seed=self.perturbation_seed, clip=self.perturbation["clip"])
        if budget is None and self.perturbation is not None:
            budget = (self.perturbation["epsilon"], self.perturbation["delta"])
        clip = None if self.perturbation is None else self.perturbation["clip"]
        return input_perturbation.for_data_party(budget, purpose="predict", clip=clip)

    def perturb_rows_to_predict(self, X, dp_epsilon=None, dp_delta=None,
                                names=("--dp-epsilon", "--dp-delta")) -> np.ndarray:
        """Standardised rows to predict, perturbed as the training rows were (the checkpoint's
        ε, δ, C; a new noise seed). ``dp_epsilon``/``dp_delta`` given: that budget instead
        (ε = ∞: unperturbed), also for a run trained without perturbation."""
        if dp_epsilon is None and dp_delta is None:
            budget = None
        else:
            budget = input_perturbation.check_options(dp_epsilon, dp_delta, names=names)
            if budget is None:  # ε = ∞, asked for: these rows as they are
                return np.asarray(X, dtype=np.float64)
        perturbation = self.input_perturbation(purpose="predict", budget=budget)
        return input_perturbation.perturb_rows(perturbation, X, self.plan)

    def standardizer(self) -> data.Standardizer:
        """The standardisation fitted at training, to apply to the same rows or new ones."""
        scaler = data.Standardizer()
        scaler.mean, scaler.std = self.feature_mean.copy(), self.feature_std.copy()
        return scaler

    def standardize(self, X) -> np.ndarray:
        """New rows on the training features' scale: (X − mean) / std, fitted at training."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features of shape {X.shape}: the model takes {self.n_features} "
                             f"columns ({', '.join(self.feature_names)})")
        return (X - self.feature_mean) / self.feature_std

    def rows_to_predict(self, X, *, feature_names=None, ids=None,
                        source: str = "features") -> np.ndarray:
        """Raw new rows → standardised as at training, columns matched by name if given, every
        value checked against the fixed-point range (naming the id, column and raw range)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"{source}: the rows to predict must be a non-empty table, got "
                             f"shape {X.shape}")
        if feature_names is not None:
            names = list(feature_names)
            missing = [name for name in self.feature_names if name not in names]
            unexpected = [name for name in names if name not in self.feature_names]
            if missing or unexpected:
                raise ValueError(f"{source}: its columns are not the training features: missing "
                                 f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}")
            if X.shape[1] != len(names):
                raise ValueError(f"{source}: {X.shape[1]} columns for {len(names)} names")
            X = X[:, [names.index(name) for name in self.feature_names]]
        ids = np.arange(len(X)) if ids is None else np.asarray(ids)
        standardized = self.standardize(X)
        check_features(standardized, self.plan, what=source, names=self.feature_names, ids=ids,
                       raw=X, mean=self.feature_mean, std=self.feature_std)
        return standardized

    def check_resumable(self, asked_bottom: BottomModel | None, key_bits: int) -> None:
        """This run must ask for the checkpoint's bottom model and key size."""
        def describe(bottom):
            return "none" if bottom is None else bottom.describe()
        if describe(asked_bottom) != describe(self.bottom):
            raise ValueError(f"the checkpoint's data party has bottom model "
                             f"{describe(self.bottom)}, this run asks for {describe(asked_bottom)}"
                             "; resume with the same --bottom")
        if self.public_key.n.bit_length() != key_bits:
            raise ValueError(f"the checkpoint's key has {self.public_key.n.bit_length()} bits, "
                             f"this run asks for {key_bits}; resume with the same key size")

    def restore(self, X, *, same_features: bool = True, engine=None) -> DataParty:
        """A DataParty with this state, holding the (standardised) features X.

        ``same_features`` (resuming): X must be the very training features of the checkpoint —
        the party re-encrypts [[X]] from them (or, with a bottom model, computes α from them
        batch by batch). Pass False to hold new rows for prediction. The bottom model, if any, is
        a fresh copy of the saved one. ``engine``: as for DataParty.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features of shape {X.shape}: the checkpoint's model takes "
                             f"{self.n_features} columns")
        bottom = None if self.bottom is None else self.bottom.copy()
        restored = Restored(Fixed.from_ints(self.noise_acc.values, self.noise_acc.scale),
                            dict(self.training), self.epochs_completed)
        party = DataParty(X, plan=self.plan, keypair=self.keypair, bottom=bottom,
                          init_seed=self.init_seed, engine=engine, restored=restored)
        if same_features and integers_digest(party.features.values) != self.features_sha256:
            raise ValueError("these are not the features the data party's checkpoint was trained "
                             "on (their sha256 differs): resume with the same rows and settings")
        return party


@dataclass
class LabelPartyState:
    """What the label party's checkpoint holds — its own state and nothing of the data party's.

    The public key, the weight share W_B = W − ε_acc (integers at W's scale), the first layer's
    bias and every layer above (``parameters``, by nn.MLP's names), the optimiser's velocities,
    the training config, the class names and a sha256 of its labels. No private key, no
    noise_acc, no features: W_B differs from W by ε_acc, a mask σ bits wider than W.
    """

    public_key: PublicKey
    plan: FixedPointPlan
    training: dict
    weight_share: Fixed
    parameters: dict
    velocity: dict
    epochs_completed: int
    class_names: list
    labels_sha256: str
    # The label party's proven bound on |W_int| (it grows with every update): packing checks
    # each slot against it, so a resumed run must start from it, not from the initial bound.
    weight_bound: int | None = None
    # The label party's consent to a bottom model at the data party (LabelParty.allow_bottom:
    # step 4b's δ·Wᵀ, leak L4), saved as "step_4b_consent" so that a resumed run goes on without
    # asking again. Files from before it was recorded read as no consent.
    allow_bottom: bool = False

    @property
    def layer_sizes(self) -> tuple:
        return tuple(self.training["layer_sizes"])

    @classmethod
    def of(cls, party: LabelParty, *, epochs_completed: int,
           class_names=None) -> "LabelPartyState":
        """Snapshot a label party after ``epochs_completed`` epochs."""
        if party.weight_share is None or party.public is None:
            raise ValueError("the label party has no weight share yet: run setup first")
        sizes = party.layer_sizes
        n_classes = 2 if sizes[-1] == 1 else sizes[-1]
        names = [str(k) for k in range(n_classes)] if class_names is None else list(class_names)
        if len(names) != n_classes:
            raise ValueError(f"{len(names)} class names for {n_classes} classes")
        training = {"layer_sizes": list(sizes), "activation": party.model.activation,
                    "lr": party.lr, "momentum": party.optimizer.momentum,
                    "batch_size": party.batch_size, "epochs": party.epochs, "seed": party.seed,
                    "block_rows": party.block_rows,
                    "class_weight": nn.class_weight_setting(party.class_weight),
                    "threshold": party.model.threshold,
                    "positive_class": party.model.positive_class}
        parameters = {name: np.array(value, dtype=np.float64)
                      for name, value, _ in party.model.top_named_params()}
        return cls(party.public_key, party.plan, training,
                   Fixed.from_ints(party.weight_share.values, party.weight_share.scale),
                   parameters, party.optimizer.state_dict(), int(epochs_completed),
                   [str(name) for name in names], integers_digest(party.labels),
                   party.weight_bound, party.allow_bottom)

    def save(self, path) -> None:
        meta = {"public_key_fingerprint": self.public_key.fingerprint,
                "weight_bound": None if self.weight_bound is None else to_decimal(self.weight_bound),
                "epochs_completed": self.epochs_completed, "fixed_point": self.plan.to_dict(),
                "training": self.training, "weight_share_scale": self.weight_share.scale,
                "class_names": self.class_names, "labels_sha256": self.labels_sha256,
                "step_4b_consent": self.allow_bottom}
        arrays = {"public_key.n": _decimal_strings(self.public_key.n),
                  "weight_share": _decimal_strings(self.weight_share.values), **self.parameters}
        arrays.update({f"optimizer.velocity.{name}": np.asarray(value, dtype=np.float64)
                       for name, value in self.velocity.items()})
        _write_checkpoint(path, LABEL, meta, arrays)

    def check_resumable(self, asked: dict, epochs: int) -> None:
        """This run's own settings (``acml.Config.label_settings``) must be the checkpoint's,
        all but the epoch count, which must be larger than the epochs completed."""
        saved = {**self.training, "fixed_point": self.plan.to_dict()}
        for key, value in asked.items():
            if saved.get(key) != value:
                raise ValueError(f"the checkpoint was trained with {key} = {saved.get(key)!r}, "
                                 f"this run asks for {value!r}; resume with the same settings")
        if self.epochs_completed > epochs:
            raise ValueError(f"nothing to resume: the label party's checkpoint holds "
                             f"{self.epochs_completed} completed epochs and this run asks for "
                             f"{epochs}")
        if self.epochs_completed == epochs:  # done, though perhaps killed before its report
            raise ValueError(f"nothing to resume: the label party's checkpoint holds all {epochs} "
                             "epochs; the model is complete — predict with it (`predict "
                             "--checkpoint-dir DIR --features FILE`, or `party ... --predict`), "
                             f"or train on with --resume --epochs {epochs + 1} or more")

    @staticmethod
    def expected_shapes(layer_sizes) -> dict:
        """Shapes of the label party's float parameters, by name."""
        shapes = {"layers.0.b": (layer_sizes[1],)}
        for index in range(1, len(layer_sizes) - 1):
            shapes[f"layers.{index}.W"] = (layer_sizes[index], layer_sizes[index + 1])
            shapes[f"layers.{index}.b"] = (layer_sizes[index + 1],)
        return shapes

    @classmethod
    def load(cls, path, *, allow_insecure: bool = False) -> "LabelPartyState":
        """Read and validate a label party's file: one-line ValueError for anything wrong."""
        meta, arrays = _read_checkpoint(path, LABEL)
        training = {"block_rows": 0, **_meta_dict(meta, "training", LABEL_TRAINING_KEYS, path)}
        sizes = training["layer_sizes"]
        if not (isinstance(sizes, list) and len(sizes) >= 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
            raise ValueError(f"{path}: corrupted checkpoint: bad layer sizes {sizes!r}")
        shapes = cls.expected_shapes(sizes)
        velocity_names = {name[len("optimizer.velocity."):] for name in arrays
                          if name.startswith("optimizer.velocity.")}
        if not velocity_names <= set(shapes):
            raise ValueError(f"{path}: optimiser state for unknown parameters "
                             f"{sorted(velocity_names - set(shapes))}")
        _check_entries(arrays, {"public_key.n", "weight_share", *shapes,
                                *(f"optimizer.velocity.{name}" for name in velocity_names)}, path)
        public_key = _public_key_from(arrays, meta, path, allow_insecure)
        plan = _plan_from(meta, path)
        if _meta_int(meta, "weight_share_scale", path) != plan.w_frac_bits:
            raise ValueError(f"{path}: the weight share is at scale {meta['weight_share_scale']}, "
                             f"the plan puts W at {plan.w_frac_bits} fractional bits")
        share = _integers(arrays, "weight_share", (sizes[0], sizes[1]), path)
        parameters = {name: _floats(arrays, name, shape, path) for name, shape in shapes.items()}
        velocity = {name: _floats(arrays, f"optimizer.velocity.{name}", shapes[name], path)
                    for name in sorted(velocity_names)}
        names = meta.get("class_names")
        consent = meta.get("step_4b_consent", False)  # files from before it: no consent
        if not isinstance(consent, bool):
            raise ValueError(f"{path}: corrupted checkpoint: step_4b_consent must be true or "
                             f"false, got {str(consent)[:40]}")
        n_classes = 2 if sizes[-1] == 1 else sizes[-1]
        if not isinstance(names, list) or len(names) != n_classes:
            raise ValueError(f"{path}: corrupted checkpoint: expected {n_classes} class names")
        return cls(public_key, plan, training, Fixed.from_ints(share, plan.w_frac_bits),
                   parameters, velocity, _meta_int(meta, "epochs_completed", path),
                   [str(name) for name in names], str(meta.get("labels_sha256")),
                   _optional_big_int(meta, "weight_bound", path), consent)

    def restore(self, y=None, *, epochs: int | None = None, engine=None,
                packing: bool = True, allow_bottom: bool = False) -> LabelParty:
        """A LabelParty with this state. ``y`` (resuming) must be the checkpoint's own labels;
        None gives a party that only predicts. ``epochs`` replaces the planned epoch count.
        ``engine``: as for LabelParty. Its consent to a bottom model is the recorded one, or
        ``allow_bottom`` given now (consent once given is not withdrawn by a resume)."""
        t = self.training
        labels = np.zeros(0, dtype=np.int64) if y is None else np.asarray(y)
        restored = Restored(Fixed.from_ints(self.weight_share.values, self.weight_share.scale),
                            dict(t), self.epochs_completed, self.weight_bound,
                            {name: value.copy() for name, value in self.parameters.items()},
                            {name: value.copy() for name, value in self.velocity.items()})
        party = LabelParty(labels, t["layer_sizes"], activation=t["activation"], lr=t["lr"],
                           momentum=t["momentum"], batch_size=t["batch_size"],
                           epochs=t["epochs"] if epochs is None else epochs, seed=t["seed"],
                           plan=self.plan, engine=engine, packing=packing,
                           public_key=self.public_key, restored=restored,
                           block_rows=t["block_rows"],
                           allow_bottom=self.allow_bottom or allow_bottom,
                           class_weight=t.get("class_weight"), threshold=t.get("threshold"),
                           positive_class=t.get("positive_class", 1))
        if y is not None and integers_digest(party.labels) != self.labels_sha256:
            raise ValueError("these are not the labels the label party's checkpoint was trained "
                             "on (their sha256 differs): resume with the same rows and settings")
        return party


def _perturbation_of(perturbation) -> tuple:
    """(public facts, secret seed) of an InputPerturbation for the data party's checkpoint."""
    if perturbation is None:
        return None, None
    return ({"epsilon": perturbation.epsilon, "delta": perturbation.delta,
             "clip": perturbation.clip}, perturbation.seed)


def _perturbation_meta(meta: dict, path) -> tuple:
    """(facts, seed) of the data party's input perturbation, validated; both None when the
    checkpoint has none (off, or saved before input perturbation existed)."""
    facts = meta.get("input_perturbation")
    seed = _optional_big_int(meta, "input_perturbation_seed", path)
    if facts is None:
        if seed is not None:
            raise ValueError(f"{path}: corrupted checkpoint: an input perturbation seed "
                             "without its settings")
        return None, None
    if not isinstance(facts, dict) or set(facts) != {"epsilon", "delta", "clip"}:
        raise ValueError(f"{path}: corrupted checkpoint: input_perturbation should be "
                         f"{{epsilon, delta, clip}}, got {facts!r}")
    numbers = {}
    for key in ("epsilon", "delta", "clip"):
        value = facts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: corrupted checkpoint: input_perturbation {key} "
                             f"{value!r} is not a finite number > 0")
        numbers[key] = float(value)
    if numbers["delta"] >= 1:
        raise ValueError(f"{path}: corrupted checkpoint: input_perturbation delta "
                         f"{numbers['delta']!r} is not in (0, 1)")
    if seed is None or seed >= 1 << input_perturbation.SEED_BITS:
        raise ValueError(f"{path}: corrupted checkpoint: the input perturbation needs its "
                         f"seed, an integer below 2**{input_perturbation.SEED_BITS}")
    return numbers, seed


def _preparation_meta(meta: dict, names: list, path) -> dict | None:
    """The stored preparation, checked to rebuild and to produce the checkpoint's features."""
    saved = meta.get("preparation")
    if saved is None:
        return None
    try:
        produced = Preparation.from_dict(saved).feature_names
    except ValueError as error:
        raise ValueError(f"{path}: corrupted checkpoint: {error}") from None
    if produced != [str(name) for name in names]:
        raise ValueError(f"{path}: corrupted checkpoint: the preparation produces other features "
                         "than the checkpoint's")
    return saved


def _optional_big_int(meta: dict, key: str, path) -> int | None:
    """A meta entry that is absent (None) or a non-negative integer as a decimal string."""
    value = meta.get(key)
    if value is None:
        return None
    if not (isinstance(value, str) and _DECIMAL.fullmatch(value) and not value.startswith("-")):
        raise ValueError(f"{path}: corrupted checkpoint: {key} {value!r} is not a "
                         "non-negative decimal integer")
    return from_decimal(value)


def check_checkpoint_pair(data_state: DataPartyState, label_state: LabelPartyState) -> None:
    """The two files must come from one run and one moment: the same key, the same epoch, the
    same plans, and a noise_acc shaped like the weight share. Else W_B + ε_acc is no W at all."""
    prefix = "the two checkpoints do not belong together"
    if data_state.public_key != label_state.public_key:
        raise ValueError(f"{prefix}: the data party's key has fingerprint "
                         f"{data_state.public_key.fingerprint[:12]}, the label party's "
                         f"{label_state.public_key.fingerprint[:12]}")
    if data_state.epochs_completed != label_state.epochs_completed:
        raise ValueError(f"{prefix}: the data party's is after epoch "
                         f"{data_state.epochs_completed}, the label party's after epoch "
                         f"{label_state.epochs_completed}")
    if data_state.plan != label_state.plan:
        raise ValueError(f"{prefix}: their fixed-point plans differ")
    if data_state.noise_acc.shape != label_state.weight_share.shape:
        raise ValueError(f"{prefix}: noise_acc has shape {data_state.noise_acc.shape}, the "
                         f"weight share {label_state.weight_share.shape}")
    shared = {"n_hidden": label_state.layer_sizes[1], **{
        key: label_state.training[key]
        for key in ("activation", "lr", "batch_size", "epochs", "seed", "block_rows")}}
    for key, value in shared.items():
        if data_state.training.get(key) != value:
            raise ValueError(f"{prefix}: the data party's training plan has {key} = "
                             f"{data_state.training.get(key)!r}, the label party's {value!r}")
