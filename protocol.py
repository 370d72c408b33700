"""The ACML protocol (Zhang & Zhu, arXiv 2007.06849), step by step.

Two parties train one MLP together:

* the **data party** (A) holds the features X, the Paillier key pair, and ``noise_acc`` (ε_acc);
* the **label party** (B) holds the labels y, A's public key, the ``weight_share``
  W_B = W − ε_acc of the first layer, the first layer's bias, and every layer above it.

Invariant, after every step: ``weight_share + noise_acc == W`` exactly, where W is the weight that
plain SGD would hold. Neither party ever holds W.

The file reads top to bottom like the paper: the public fixed-point plan, the masks, the channel
that declares and checks every message, the two parties, then step 0 (setup), steps 1–4 (and 4b),
and prediction. Every value that crosses goes through :class:`Channel.send`, which refuses a
message whose kind is not declared: ``ciphertext``, ``masked``, ``revealed`` (with the reason) or
``public``.

Exactness. Every quantity is a fixed-point integer with ONE public scale (fractional bits):
X at ``x_frac_bits``, δ = ∂L/∂z at ``delta_frac_bits``, the learning rate η at ``lr_frac_bits``,
and W at their sum. The update ΔW = η·Xᵀδ is then an exact integer at W's scale and never needs
rescaling, so every mask cancels exactly and the true W is a deterministic function of the data,
the initial weights and the batch order — never of the random masks.

Threat model: semi-honest, non-colluding parties. Known leaks, by design: the label party learns
z = X·W + b (the first layer's pre-activation) in step 1; with a bottom model (step 4b) the data
party learns δ·Wᵀ, which carries label information.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, asdict

import numpy as np

import nn
import paillier
from paillier import EncryptedArray, Fixed, PublicKey

DATA, LABEL = "data", "label"
PARTIES = (DATA, LABEL)
KINDS = ("ciphertext", "masked", "revealed", "public")


class LeakageError(RuntimeError):
    """A message would cross a party boundary without a declared, checkable kind."""


# ----------------------------------------------------------------------------------------------
# The fixed-point plan: public, agreed by both parties before training.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedPointPlan:
    """Scales and bounds of every quantity, all public.

    ``*_frac_bits`` are the scales: a real value v is carried as round(v · 2**frac_bits).
    ``*_int_bits`` are public magnitude bounds (|X| < 2**x_int_bits, and so on); they size the
    masks, and each party checks the bound of what it owns at run time — an input beyond its bound
    is an error, never a silent wrap-around.

    The weight W is carried at ``w_frac_bits = lr + x + delta`` fractional bits, so that
    η_int · X_intᵀ · δ_int is already at W's scale: the update is exact, with no rescaling.

    Caveat: nobody holds W, so nobody can check |W| < 2**weight_int_bits at run time. The bound
    only sizes the statistical mask ε_acc (a larger W is still computed exactly, it is just hidden
    with less than σ bits of margin); z's bound is checked where z is revealed.
    """

    x_frac_bits: int = 16
    delta_frac_bits: int = 24
    lr_frac_bits: int = 16
    x_int_bits: int = 8
    delta_int_bits: int = 4
    weight_int_bits: int = 8
    sigma: int = 40

    @property
    def w_frac_bits(self) -> int:
        return self.lr_frac_bits + self.x_frac_bits + self.delta_frac_bits

    @property
    def z_frac_bits(self) -> int:
        return self.x_frac_bits + self.w_frac_bits

    @property
    def weight_bits(self) -> int:
        """|W_int| < 2**weight_bits."""
        return self.weight_int_bits + self.w_frac_bits

    def gradient_bits(self, batch_size: int) -> int:
        """|X_intᵀ·δ_int| < 2**gradient_bits for a batch of ``batch_size`` rows."""
        return (self.x_int_bits + self.x_frac_bits + self.delta_int_bits + self.delta_frac_bits
                + max(1, math.ceil(math.log2(max(batch_size, 2)))))

    def noise_acc_bits(self) -> int:
        """Width of ε_acc at the start: σ bits wider than any W it hides."""
        return self.weight_bits + self.sigma

    def gradient_mask_bits(self, batch_size: int) -> int:
        """Width of the data party's step-4 mask ε_A: σ bits wider than Xᵀδ."""
        return self.gradient_bits(batch_size) + self.sigma

    def quantize_lr(self, lr: float) -> int:
        lr_int = int(Fixed.encode(np.array([lr]), self.lr_frac_bits).values[0])
        if lr_int <= 0:
            raise ValueError(f"learning rate {lr} rounds to 0 at {self.lr_frac_bits} fractional bits")
        return lr_int

    def snap_lr(self, lr: float) -> float:
        """The learning rate both parties actually use: η rounded to the plan's grid.

        The first layer's update needs η as an integer; snapping it once, up front, lets every
        layer (and the plaintext twin) use the very same η, so η adds no quantisation error.
        """
        return self.quantize_lr(lr) / 2 ** self.lr_frac_bits

    def check_key(self, key_bits: int, batch_size: int, n_features: int) -> None:
        """Refuse a key too small for the values it must carry without wrapping mod n."""
        z_bits = (self.x_int_bits + self.x_frac_bits + self.weight_bits
                  + math.ceil(math.log2(max(n_features, 2))))
        need = max(z_bits, self.gradient_mask_bits(batch_size) + 1) + 2 + self.sigma
        if key_bits < need:
            raise ValueError(f"a {key_bits}-bit key is too small for this fixed-point plan: "
                             f"values need {need} bits (z: {z_bits}, masked gradient: "
                             f"{self.gradient_mask_bits(batch_size) + 1}) plus headroom")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Masks. Every secret comes from `secrets`, never from numpy's generator.
# ----------------------------------------------------------------------------------------------
def uniform_mask(shape, bits: int) -> np.ndarray:
    """Integers uniform in [−2**bits, 2**bits), from ``secrets``: an object array.

    A value v with |v| < 2**(bits − σ) plus such a mask is statistically hidden: the masked
    distributions for any two such v differ by at most 2**−σ in statistical distance.
    """
    size = int(np.prod(shape, dtype=np.int64))
    offset = 1 << bits
    flat = [secrets.randbits(bits + 1) - offset for _ in range(size)]
    out = np.empty(size, dtype=object)
    out[:] = flat
    return out.reshape(shape)


def wide_mask_bits(public_key: PublicKey) -> int:
    """The widest signed mask that still encodes under the key: 2**bits < n/3."""
    return public_key.max_int.bit_length() - 2


def mod_n(values: np.ndarray, n: int) -> np.ndarray:
    """Reduce an object array of ints into [0, n)."""
    return np.asarray(values, dtype=object) % n


def decode_signed(values: np.ndarray, public_key: PublicKey) -> np.ndarray:
    """Residues mod n back to signed ints; OverflowError if any lies in the middle third."""
    flat = [int(public_key.decode_residue(int(v))) for v in np.asarray(values, dtype=object).ravel()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(np.shape(values))


def bits_of(values) -> int:
    """Bit length of the largest |value| in an integer (object) array."""
    arr = np.asarray(values, dtype=object).ravel()
    return max((abs(int(v)).bit_length() for v in arr), default=0)


# ----------------------------------------------------------------------------------------------
# The channel: carries, checks and records every message.
# ----------------------------------------------------------------------------------------------
@dataclass
class Message:
    """One message between the parties, with its declared kind.

    * ``ciphertext`` — a Paillier ciphertext array under the data party's key. When it goes TO
      the data party (who can decrypt), it must also declare what the data party learns from it:
      ``mask_bits``/``value_bits`` if the plaintext is masked, or a ``reason`` if it is revealed.
    * ``masked`` — integers hiding a secret of at most ``value_bits`` bits under a uniform mask of
      ``mask_bits`` bits that the receiver does not know. The channel requires
      mask_bits ≥ value_bits + σ.
    * ``revealed`` — a value the protocol reveals to the receiver by design; ``reason`` says why.
    * ``public`` — the public key, shapes, hyper-parameters: never an array.
    """

    step: str
    sender: str
    receiver: str
    name: str
    kind: str
    payload: object
    reason: str | None = None
    mask_bits: int | None = None
    value_bits: int | None = None
    shape: tuple = ()
    nbytes: int = 0


def _is_int_array(payload) -> bool:
    if not isinstance(payload, np.ndarray):
        return False
    if payload.dtype.kind in "iu":
        return True
    return payload.dtype == object and all(
        isinstance(v, int) or type(v).__name__ == "mpz" for v in payload.ravel())


def _is_public_value(payload) -> bool:
    """Scalars, strings, tuples/lists/dicts of them, and the public key — never an array."""
    if isinstance(payload, PublicKey):
        return True
    if payload is None or isinstance(payload, (bool, int, float, str)):
        return True
    if isinstance(payload, (tuple, list)):
        return all(_is_public_value(v) for v in payload)
    if isinstance(payload, dict):
        return all(isinstance(k, str) and _is_public_value(v) for k, v in payload.items())
    return False


class Channel:
    """An in-process channel between the two parties.

    ``send`` validates the declared kind of every message (the run-time leakage check), records
    it, and returns the payload to the receiver. A socket channel with the same ``send`` can
    replace it without protocol.py changing.
    """

    def __init__(self, sigma: int = 40):
        self.sigma = sigma
        self.messages: list[Message] = []
        self.data_public_key: PublicKey | None = None
        self.step_seconds: dict[str, float] = {}
        self.step_ops: dict[str, dict[str, int]] = {}

    # -- checks ---------------------------------------------------------------------------------
    def _check(self, m: Message) -> None:
        where = f"step {m.step} message {m.name!r} ({m.sender} → {m.receiver})"
        if m.sender not in PARTIES or m.receiver not in PARTIES or m.sender == m.receiver:
            raise LeakageError(f"{where}: sender and receiver must be the two parties {PARTIES}")
        if m.kind not in KINDS:
            raise LeakageError(f"{where}: undeclared kind {m.kind!r}; declare one of {KINDS}")
        if m.kind == "ciphertext":
            self._check_ciphertext(m, where)
        elif m.kind == "masked":
            if not _is_int_array(m.payload):
                raise LeakageError(f"{where}: a masked payload must be an integer array")
            self._check_mask_width(m, where)
        elif m.kind == "revealed":
            if not (isinstance(m.reason, str) and m.reason.strip()):
                raise LeakageError(f"{where}: a revealed value needs the reason it is revealed")
        elif m.kind == "public":
            if not _is_public_value(m.payload):
                raise LeakageError(f"{where}: refusing an undeclared plaintext "
                                   f"{type(m.payload).__name__} sent as 'public'; arrays must be "
                                   "ciphertext, masked or revealed with a reason")

    def _check_ciphertext(self, m: Message, where: str) -> None:
        if not isinstance(m.payload, EncryptedArray):
            raise LeakageError(f"{where}: declared ciphertext but the payload is "
                               f"{type(m.payload).__name__}, not an EncryptedArray")
        if self.data_public_key is None or m.payload.public_key != self.data_public_key:
            raise LeakageError(f"{where}: ciphertext is not under the data party's public key")
        if m.receiver == DATA:  # the key owner decrypts: declare what it learns
            if m.reason:
                return
            if m.mask_bits is None or m.value_bits is None:
                raise LeakageError(f"{where}: a ciphertext to the key owner must declare what its "
                                   "plaintext reveals: mask_bits/value_bits, or a reason")
            self._check_mask_width(m, where)

    def _check_mask_width(self, m: Message, where: str) -> None:
        if m.mask_bits is None or m.value_bits is None:
            raise LeakageError(f"{where}: a masked value must declare mask_bits and value_bits")
        if m.mask_bits < m.value_bits + self.sigma:
            raise LeakageError(
                f"{where}: weak mask — {m.mask_bits}-bit mask over {m.value_bits}-bit values "
                f"leaves {m.mask_bits - m.value_bits} bits of margin, σ = {self.sigma} required")

    # -- delivery -------------------------------------------------------------------------------
    def send(self, step, sender, receiver, name, kind, payload, *, reason=None,
             mask_bits=None, value_bits=None):
        """Check, record and deliver one message; returns the payload as the receiver gets it."""
        message = Message(step=str(step), sender=sender, receiver=receiver, name=name, kind=kind,
                          payload=payload, reason=reason, mask_bits=mask_bits,
                          value_bits=value_bits)
        self._check(message)
        message.shape = _shape_of(payload)
        message.nbytes = _nbytes_of(payload, self.data_public_key)
        self.messages.append(message)
        return payload

    def view(self, party: str) -> list[Message]:
        """Everything ``party`` received, in order."""
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}; expected one of {PARTIES}")
        return [m for m in self.messages if m.receiver == party]

    @contextmanager
    def timed(self, step: str):
        """Accumulate wall time and Paillier operation counts per protocol step."""
        before = dict(paillier.OP_COUNTS)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + time.perf_counter() - start
            ops = self.step_ops.setdefault(step, {})
            for op, count in paillier.OP_COUNTS.items():
                delta = count - before.get(op, 0)
                if delta:
                    ops[op] = ops.get(op, 0) + delta

    # -- reporting ------------------------------------------------------------------------------
    def totals(self) -> dict:
        """Messages and bytes sent by each party."""
        out = {p: {"messages": 0, "bytes": 0} for p in PARTIES}
        for m in self.messages:
            out[m.sender]["messages"] += 1
            out[m.sender]["bytes"] += m.nbytes
        return out

    def report(self) -> list[dict]:
        """Per step and message name: who sent what to whom, its kind, count and bytes."""
        rows: dict[tuple, dict] = {}
        for m in self.messages:
            key = (m.step, m.sender, m.receiver, m.name, m.kind)
            row = rows.setdefault(key, {"step": m.step, "sender": m.sender, "receiver": m.receiver,
                                        "name": m.name, "kind": m.kind, "count": 0, "bytes": 0,
                                        "learned": _learned(m)})
            row["count"] += 1
            row["bytes"] += m.nbytes
        return list(rows.values())

    def transcript_lines(self):
        """Every message as one JSON object: integers as decimal strings, no pickle."""
        for m in self.messages:
            record = {"step": m.step, "sender": m.sender, "receiver": m.receiver, "name": m.name,
                      "kind": m.kind, "shape": list(m.shape), "payload": _jsonable(m.payload)}
            if m.reason:
                record["reason"] = m.reason
            if m.mask_bits is not None:
                record["mask_bits"] = m.mask_bits
                record["value_bits"] = m.value_bits
            yield json.dumps(record)


def _learned(m: Message) -> str:
    if m.kind == "public":
        return "public information"
    if m.kind == "revealed":
        return f"revealed by design: {m.reason}"
    if m.kind == "masked":
        return f"nothing: {m.value_bits}-bit values under a {m.mask_bits}-bit mask"
    if m.receiver == DATA:
        if m.reason:
            return f"decrypts, revealed by design: {m.reason}"
        return f"decrypts to {m.value_bits}-bit values under a {m.mask_bits}-bit mask: nothing"
    return "nothing: ciphertext under the data party's key"


def _shape_of(payload) -> tuple:
    if isinstance(payload, (EncryptedArray, np.ndarray)):
        return tuple(payload.shape)
    return ()


def _nbytes_of(payload, public_key) -> int:
    if isinstance(payload, EncryptedArray):
        width = (payload.public_key.nsquare.bit_length() + 7) // 8
        return width * int(np.prod(payload.shape, dtype=np.int64))
    if isinstance(payload, np.ndarray):
        if payload.dtype == object:
            width = ((public_key.n.bit_length() + 7) // 8) if public_key else max(
                (bits_of(payload) + 8) // 8, 1)
            return width * payload.size
        return payload.nbytes
    return len(json.dumps(_jsonable(payload)))


def _jsonable(payload):
    if isinstance(payload, PublicKey):
        return {"n": str(payload.n)}
    if isinstance(payload, EncryptedArray):
        return {"scale": payload.scale,
                "ciphertexts": [str(int(c)) for c in payload.ciphertexts.ravel()]}
    if isinstance(payload, np.ndarray):
        if payload.dtype == object or payload.dtype.kind in "iu":
            return [str(int(v)) for v in payload.ravel()]
        return [float(v) for v in payload.ravel()]
    if isinstance(payload, dict):
        return {k: _jsonable(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [_jsonable(v) for v in payload]
    return payload


# ----------------------------------------------------------------------------------------------
# The two parties. Each holds only its own state; the protocol functions below move values
# between them, always through the channel.
# ----------------------------------------------------------------------------------------------
class DataParty:
    """Party A: owns the features X, the Paillier key pair and noise_acc (ε_acc).

    ``init_seed`` seeds the first layer's initial weights W0, which only this party draws (and at
    once splits into ε_acc and the label party's share). In a deployment it is the data party's
    own secret; the simulation passes the seed of the plaintext twin so that both start equal.
    """

    packing: PackingLayout | None = None  # set by setup(): the public slot layout, or None
    executor = None  # set by setup(): where the modular exponentiations run (None: here)

    def __init__(self, X, *, plan: FixedPointPlan | None = None, key_bits: int = 2048,
                 allow_insecure: bool = False, keypair=None, init_seed: int | None = None):
        self.plan = plan or FixedPointPlan()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"features must be a non-empty 2-D array, got shape {X.shape}")
        self.features = encode_features(X, self.plan)
        if keypair is None:
            keypair = paillier.generate_keypair(key_bits, allow_insecure=allow_insecure)
        self.public_key, self._private_key = keypair
        self.init_seed = secrets.randbits(63) if init_seed is None else init_seed
        self.noise_acc: Fixed | None = None
        self.training: dict | None = None
        self._prediction_features: Fixed | None = None

    @property
    def n_samples(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    # step 0
    def receive_training_plan(self, training: dict) -> None:
        self.training = dict(training)
        self.lr_int = self.plan.quantize_lr(training["lr"])
        self.plan.check_key(self.public_key.n.bit_length(), training["batch_size"],
                            self.n_features)

    def split_initial_weight(self) -> np.ndarray:
        """Draw W0, keep a random ε_acc (never zero), and return the share W0 − ε_acc."""
        sizes = (self.n_features, self.training["n_hidden"])
        first = nn.init_layer(sizes, 0, self.training["activation"], self.init_seed)
        weight0 = Fixed.encode(first.W, self.plan.w_frac_bits)
        if bits_of(weight0.values) >= self.plan.weight_bits:
            raise OverflowError(f"initial weights exceed the plan's bound 2**{self.plan.weight_int_bits}")
        noise = uniform_mask(weight0.shape, self.plan.noise_acc_bits())
        self.noise_acc = Fixed.from_ints(noise, self.plan.w_frac_bits)
        return (weight0 - self.noise_acc).values

    def encrypt_features(self) -> EncryptedArray:
        """[[X]], fresh randomness per ciphertext, encrypted with CRT by the key owner.

        Packed: each row's d features go k per plaintext (the backward slots), n × ⌈d/k⌉
        ciphertexts that step 4 uses for every batch of every epoch.
        """
        features = self.features
        if self.packing is not None:
            features = Fixed(self.packing.backward.pack(features.values, axis=1), features.scale)
        return paillier.encrypt_array(self._private_key, features, executor=self.executor)

    def encrypt_batch(self, rows) -> EncryptedArray:
        """Packed step 1: [[X_batch]], the batch's rows k per plaintext (the forward slots),
        ⌈m/k⌉ × d fresh ciphertexts. The batch order is public, so this reveals nothing new."""
        return self._encrypt_rows(self.features[rows])

    def _encrypt_rows(self, features: Fixed) -> EncryptedArray:
        packed = Fixed(self.packing.forward.pack(features.values, axis=0), features.scale)
        return paillier.encrypt_array(self._private_key, packed, executor=self.executor)

    # step 1
    def add_noise_product(self, masked_product: EncryptedArray, rows=None) -> np.ndarray:
        """Decrypt U = X·W_B + ε_B and add the own part: V = U + X·ε_acc (mod n).

        ``rows`` picks the training rows of the batch; None means the rows being predicted.
        Packed, X·ε_acc goes into the same slots as X·W_B (slot s of group g: row g·k + s).
        """
        features = self._prediction_features if rows is None else self.features[rows]
        product = paillier.decrypt_residues(self._private_key, masked_product,
                                            executor=self.executor)
        own_part = (features @ self.noise_acc).values
        if self.packing is not None:
            # X·ε_acc alone spills over the slots; only the sum z = X·W has to fit them.
            own_part = self.packing.forward.pack(own_part, axis=0, intermediate=True)
        return mod_n(product + own_part, self.public_key.n)

    # step 4
    def mask_gradient(self, masked_gradient: EncryptedArray, batch_size: int) -> np.ndarray:
        """Decrypt G' = Xᵀδ + ε_B', add a fresh mask ε_A, and fold η·ε_A into ε_acc.

        Packed, ε_A is drawn per slot (one per weight, each σ bits wider than the gradient it
        hides) and packed into the same slots as Xᵀδ: the backward slots have room for both.
        """
        gradient = paillier.decrypt_residues(self._private_key, masked_gradient,
                                             executor=self.executor)
        mask = uniform_mask(self.noise_acc.shape, self.plan.gradient_mask_bits(batch_size))
        self.noise_acc = self.noise_acc + Fixed.from_ints(self.lr_int * mask,
                                                          self.plan.w_frac_bits)
        if self.packing is not None:
            mask = self.packing.backward.pack(mask, axis=0)
        return mod_n(gradient + mask, self.public_key.n)

    # prediction
    def encrypt_new_features(self, X_new) -> EncryptedArray:
        """[[X_new]] for prediction: checked, encoded and freshly encrypted (packed along the
        rows, as in step 1, when packing is on)."""
        self._prediction_features = encode_features(np.asarray(X_new, dtype=np.float64),
                                                    self.plan)
        if self.packing is not None:
            return self._encrypt_rows(self._prediction_features)
        return paillier.encrypt_array(self._private_key, self._prediction_features,
                                      executor=self.executor)


def encode_features(X: np.ndarray, plan: FixedPointPlan) -> Fixed:
    """X at the plan's scale, after checking every value is finite and within the bound."""
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"feature column {col}, row {row}: value {X[row, col]} is not finite")
    limit = 2.0 ** plan.x_int_bits
    over = np.abs(X) >= limit
    if over.any():
        row, col = map(int, np.argwhere(over)[0])
        raise OverflowError(f"feature column {col}, row {row}: |{X[row, col]:g}| exceeds the "
                            f"fixed-point bound {limit:g} (x_int_bits={plan.x_int_bits}); "
                            "standardise the features or raise the bound")
    return Fixed.encode(X, plan.x_frac_bits)


class LabelParty:
    """Party B: owns the labels y, the weight share W_B = W − ε_acc, and the layers above.

    ``model`` is an :class:`nn.MLP` built without the first layer's weight: the label party keeps
    the first layer's bias and every layer above, and runs them with the plaintext code.
    """

    packing: PackingLayout | None = None  # set by setup(): the public slot layout, or None
    executor = None  # set by setup(): where the modular exponentiations run (None: here)
    # A proven bound on |W_int| (see masked_product): 2**weight_bits at setup, grown by every
    # update. Only the label party can keep it (it alone knows δ); state to keep with W_B.
    weight_bound: int | None = None

    def __init__(self, y, layer_sizes, *, activation="relu", lr=0.1, momentum=0.0,
                 batch_size=64, epochs=1, seed=0, plan: FixedPointPlan | None = None):
        self.plan = plan or FixedPointPlan()
        self.labels = np.asarray(y)
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        self.model = nn.MLP(self.layer_sizes, activation=activation, seed=seed,
                            first_layer_weight=False)
        self.optimizer = nn.SGD(self.plan.snap_lr(lr), momentum=momentum)
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed
        self.lr_int = self.plan.quantize_lr(lr)
        self.public_key: PublicKey | None = None
        self.encrypted_features: EncryptedArray | None = None
        self.weight_share: Fixed | None = None
        self._forward_mask = None
        self._backward_mask = None

    def training_plan(self) -> dict:
        """Hyper-parameters the data party needs: all public."""
        return {"n_hidden": self.layer_sizes[1], "activation": self.model.activation,
                "lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs,
                "seed": self.seed, "fixed_point": self.plan.to_dict()}

    def receive_weight_share(self, share: np.ndarray) -> None:
        self.weight_share = Fixed.from_ints(share, self.plan.w_frac_bits)

    # step 1
    def masked_product(self, encrypted_features: EncryptedArray,
                       n_rows: int | None = None) -> EncryptedArray:
        """[[U]] = [[X]]·W_B + [[ε_B]]; the fresh encryption of ε_B re-randomises the result.

        Packed, ``encrypted_features`` holds ``n_rows`` rows k per ciphertext and so does U.
        Before computing, B proves that every slot of z = X·W will fit:
        |z| ≤ d · 2**(x bits) · weight_bound < 2**(slot_bits − 1), or raises OverflowError.
        """
        if self.packing is not None:
            if n_rows is None:
                raise ValueError("packed step 1 needs n_rows, the number of packed rows")
            self._forward_rows = n_rows
            self.packing.check_preactivation_fits(self.layer_sizes[0], self.weight_bound)
        product = paillier.encrypted_matmul(encrypted_features, self.weight_share,
                                            executor=self.executor)
        self._forward_mask = uniform_mask(product.shape, wide_mask_bits(self.public_key))
        return product + paillier.encrypt_array(
            self.public_key, Fixed.from_ints(self._forward_mask, product.scale),
            executor=self.executor)

    def masked_product_bits(self, encrypted_features: EncryptedArray) -> int:
        """Public bound on |X·W_B|: what ε_B has to hide from the data party (packed: on the
        whole plaintext, all slots together, since ε_B is one mask over all of them)."""
        d = encrypted_features.shape[-1]
        value_bits = (self.plan.x_int_bits + self.plan.x_frac_bits
                      + bits_of(self.weight_share.values) + math.ceil(math.log2(max(d, 2))))
        if self.packing is not None:
            return self.packing.forward.packed_bits(value_bits)
        return value_bits

    def unmask_preactivation(self, noisy_product: np.ndarray) -> np.ndarray:
        """z = V − ε_B + b = X·W + b, as floats (packed: unpacked slot by slot)."""
        z_int = decode_signed(mod_n(noisy_product - self._forward_mask, self.public_key.n),
                              self.public_key)
        self._forward_mask = None
        if self.packing is not None:
            z_int = self.packing.forward.unpack(z_int, self._forward_rows, axis=0)
        z = Fixed.from_ints(z_int, self.plan.z_frac_bits).decode()
        return z + self.model.layers[0].b

    # step 2
    def forward_rest(self, z: np.ndarray, rows) -> float:
        logits = self.model.forward_top(z)
        loss, self._dlogits = self.model.loss_and_grad(logits, self.labels[rows])
        return float(loss)

    # step 3
    def backward_rest(self) -> Fixed:
        """δ = ∂L/∂z; update the bias and the layers above; return δ at its fixed-point scale."""
        delta = self.model.backward_top(self._dlogits)
        self._dlogits = None
        self.model.layers[0].backward_bias(delta)
        self.optimizer.step(self.model.top_named_params())
        limit = 2.0 ** self.plan.delta_int_bits
        if not np.all(np.isfinite(delta)) or np.abs(delta).max() >= limit:
            raise OverflowError(f"step 3: |δ| = {np.abs(delta).max():g} exceeds the fixed-point "
                                f"bound {limit:g} (delta_int_bits={self.plan.delta_int_bits}); "
                                "lower the learning rate or raise the bound")
        return Fixed.encode(delta, self.plan.delta_frac_bits)

    # step 4
    def masked_gradient(self, encrypted_features: EncryptedArray, delta: Fixed) -> EncryptedArray:
        """[[G']] = [[X]]ᵀ·δ + [[ε_B']] (packed: k features per ciphertext, k gradients per
        plaintext, one wide ε_B' over each whole plaintext)."""
        gradient = paillier.encrypted_matmul(encrypted_features.T, delta, executor=self.executor)
        self._backward_rows = delta.shape[0]
        # |ΔW| ≤ η·Σ_r |X_rt|·|δ_rj| ≤ η · 2**(x bits) · max_j Σ_r |δ_rj|: the bound's growth.
        column_sums = [sum(abs(int(v)) for v in column) for column in delta.values.T.tolist()]
        self._weight_bound_growth = (self.lr_int << (self.plan.x_int_bits + self.plan.x_frac_bits)
                                     ) * max(column_sums, default=0)
        self._backward_mask = uniform_mask(gradient.shape, wide_mask_bits(self.public_key))
        return gradient + paillier.encrypt_array(
            self.public_key, Fixed.from_ints(self._backward_mask, gradient.scale),
            executor=self.executor)

    def update_weight_share(self, masked_gradient: np.ndarray) -> None:
        """G̃ = T − ε_B' = Xᵀδ + ε_A; W_B ← W_B − η·G̃ (exact, at W's scale)."""
        gradient = decode_signed(mod_n(masked_gradient - self._backward_mask, self.public_key.n),
                                 self.public_key)
        self._backward_mask = None
        if self.packing is not None:
            # Every slot holds Xᵀδ + ε_A, below 2**gradient_bits + 2**gradient_mask_bits.
            bound = self.plan.gradient_mask_bits(self._backward_rows) + 1
            gradient = self.packing.backward.unpack(gradient, self.layer_sizes[0], axis=0,
                                                    value_bits=bound)
        self.weight_share = self.weight_share - Fixed.from_ints(self.lr_int * gradient,
                                                                self.plan.w_frac_bits)
        if self.weight_bound is not None:
            self.weight_bound += self._weight_bound_growth

    # prediction
    def scores(self, z: np.ndarray) -> np.ndarray:
        return self.model.scores_from_logits(self.model.forward_top(z))


# ----------------------------------------------------------------------------------------------
# The packing layout: public, agreed in step 0 (how slots work: paillier.Slots).
# ----------------------------------------------------------------------------------------------
PACKING_HEADROOM_BITS = 8  # z's slots have room for |W| up to 2**8 times the plan's bound
SHARE_GROWTH_BITS = 20  # ε_acc gains one η·ε_A per batch: room for 2**20 batches


@dataclass(frozen=True)
class PackingLayout:
    """How many fixed-point values share one Paillier plaintext in step 1 and in step 4.

    ``forward`` — step 1, along the batch. A packs k rows of the batch per plaintext:
    ``[[X_batch]]`` is ⌈m/k⌉ × d ciphertexts, and B's [[X_batch]]·W_B + [[ε_B]] is ⌈m/k⌉ × h,
    each holding z for k rows::

        [[X_batch]][g, t]  =  [[ X[g·k+k−1, t] | … | X[g·k+1, t] | X[g·k, t] ]]
        [[U]][g, j]        =  [[ z[g·k+k−1, j] | … | z[g·k, j] ]  +  ε_B ]]   (z = X·W)

    A slot only has to hold the FINAL value z = X·W_B + X·ε_acc: ε_B is one mask over the whole
    plaintext mod n and cancels exactly, and the arithmetic is exact mod n, so the intermediate
    X·W_B may spill over its slot freely. |z_int| ≤ d · 2**(x_int+x_frac) · |W_int|, and the
    label party proves |W_int| ≤ weight_bound (2**weight_bits at setup, plus η·2**(x bits)·Σ|δ|
    per update) and checks, before every step 1, that the product stays below
    2**(slot_bits − 1) — OverflowError otherwise, never a wrap. Hence
    ``slot_bits = x_int_bits + x_frac_bits + ⌈log2 d⌉ + weight_bits + PACKING_HEADROOM_BITS + 1``.

    ``backward`` — step 4, along the features. Each row's d features go k per plaintext:
    [[X]] is n × ⌈d/k⌉ (cached for all epochs), and [[X]]ᵀ·δ + [[ε_B']] is ⌈d/k⌉ × h, k
    gradients each. A adds its mask ε_A slot by slot, so a slot holds Xᵀδ + ε_A, with
    |Xᵀδ| ≤ 2**gradient_bits and |ε_A| ≤ 2**gradient_mask_bits: together below
    2**(gradient_mask_bits + 1), hence ``slot_bits = gradient_mask_bits + 2``.

    ``slots`` (k) is, in each direction, the largest count such that (a) the packed final value
    decodes: |P| < 2**(k·slot_bits) ≤ n/3; and (b) B's wide mask still hides what A decrypts,
    the whole packed plaintext (X·W_B in step 1, for shares up to a budget of bits; Xᵀδ in
    step 4) with σ bits to spare — the channel re-checks (b) on every message.
    """

    forward: paillier.Slots
    backward: paillier.Slots
    feature_bits: int  # |X_int| ≤ 2**feature_bits

    def check_preactivation_fits(self, n_features: int, weight_bound: int | None) -> None:
        """OverflowError unless d · 2**feature_bits · weight_bound < 2**(forward slot − 1)."""
        if weight_bound is None:
            raise ValueError("the label party has no proven bound on |W|: run setup() first "
                             "(or restore weight_bound together with the weight share)")
        bound = (n_features << self.feature_bits) * weight_bound
        if bound >= 1 << (self.forward.slot_bits - 1):
            raise OverflowError(
                f"step 1: the proven bound on |z| = |X·W| has {bound.bit_length()} bits and no "
                f"longer fits the {self.forward.slot_bits}-bit packed slots; train with "
                "packing=False, or with a larger weight_int_bits in the fixed-point plan")

    def to_dict(self) -> dict:
        return {"forward": self.forward.to_dict(), "backward": self.backward.to_dict(),
                "feature_bits": self.feature_bits}


def packing_layout(plan: FixedPointPlan, public_key: PublicKey, batch_size: int,
                   n_features: int, lr: float) -> PackingLayout:
    """The slot layout both parties derive from public values (see PackingLayout)."""
    feature_bits = plan.x_int_bits + plan.x_frac_bits
    log_d = (max(n_features, 1) - 1).bit_length()
    plaintext_bits = public_key.max_int.bit_length() - 1  # 2**plaintext_bits ≤ max_int
    spare = wide_mask_bits(public_key) - plan.sigma - 1  # room for a packed value under ε_B

    # |W_B| = |W − ε_acc|: ε_acc starts below 2**noise_acc_bits and gains η·ε_A per batch.
    share_bits = max(plan.noise_acc_bits(), plan.weight_bits + PACKING_HEADROOM_BITS,
                     plan.quantize_lr(lr).bit_length() + plan.gradient_mask_bits(batch_size)
                     + SHARE_GROWTH_BITS) + 1
    forward_bits = feature_bits + log_d + plan.weight_bits + PACKING_HEADROOM_BITS + 1
    forward_slots = min(plaintext_bits // forward_bits,
                        (spare - (feature_bits + log_d + share_bits)) // forward_bits + 1)

    backward_bits = plan.gradient_mask_bits(batch_size) + 2
    backward_slots = min(plaintext_bits // backward_bits,
                         (spare - plan.gradient_bits(batch_size)) // backward_bits + 1)
    if min(forward_slots, backward_slots) < 1:
        raise ValueError(f"a {public_key.n.bit_length()}-bit key is too small to pack this "
                         f"fixed-point plan ({forward_bits}-bit slots in step 1, {backward_bits}-bit "
                         "in step 4); use a larger key or packing=False")
    return PackingLayout(paillier.Slots(forward_bits, forward_slots),
                         paillier.Slots(backward_bits, backward_slots), feature_bits)


# ----------------------------------------------------------------------------------------------
# Step 0 — setup: the public key, the public training plan, the weight split, [[X]] once.
# ----------------------------------------------------------------------------------------------
def setup(data_party: DataParty, label_party: LabelParty, channel: Channel, *,
          packing: bool = True, executor=None) -> None:
    """Step 0. Exchange what both parties need before the first batch.

    * A → B ``public key`` (public): n.
    * A → B ``shapes`` (public): the number of aligned rows and of features.
    * B → A ``training plan`` (public): first-layer width, activation, η, batch size, seed,
      fixed-point plan.
    * A → B ``W0 − ε_acc`` (masked): A draws W0, keeps ε_acc uniform and σ bits wider than W0 (so
      never zero), and sends the difference. B learns nothing about W0.
    * B → A ``packing layout`` (public), when ``packing``: the slots of steps 1 and 4, which
      A re-derives and checks (see PackingLayout).
    * A → B ``[[X]]`` (ciphertext): every training row once, a fresh r for each value; X does not
      change, so the encryption is cached for every epoch. Packed: k features per ciphertext.

    ``executor`` (a concurrent.futures.Executor, or None for this process) runs both parties'
    modular exponentiations; results are identical either way.
    """
    with channel.timed("0"):
        channel.data_public_key = data_party.public_key
        label_party.public_key = channel.send(0, DATA, LABEL, "public key", "public",
                                              data_party.public_key)
        shapes = channel.send(0, DATA, LABEL, "shapes", "public",
                              {"n_samples": data_party.n_samples,
                               "n_features": data_party.n_features})
        if shapes["n_samples"] != len(label_party.labels):
            raise ValueError(f"the data party has {shapes['n_samples']} aligned rows, the label "
                             f"party {len(label_party.labels)}")
        if shapes["n_features"] != label_party.layer_sizes[0]:
            raise ValueError(f"the data party has {shapes['n_features']} features, the network's "
                             f"input width is {label_party.layer_sizes[0]}")
        data_party.receive_training_plan(channel.send(0, LABEL, DATA, "training plan", "public",
                                                      label_party.training_plan()))
        plan = data_party.plan
        share = channel.send(0, DATA, LABEL, "W0 − ε_acc", "masked",
                             data_party.split_initial_weight(),
                             mask_bits=plan.noise_acc_bits(), value_bits=plan.weight_bits)
        label_party.receive_weight_share(share)
        label_party.weight_bound = 1 << label_party.plan.weight_bits  # A refused any W0 beyond
        data_party.executor = label_party.executor = executor
        data_party.packing = label_party.packing = None
        if packing:
            layout = packing_layout(label_party.plan, label_party.public_key,
                                    label_party.batch_size, label_party.layer_sizes[0],
                                    label_party.lr)
            proposed = channel.send(0, LABEL, DATA, "packing layout", "public", layout.to_dict())
            expected = packing_layout(plan, data_party.public_key,
                                      data_party.training["batch_size"], data_party.n_features,
                                      data_party.training["lr"])
            if proposed != expected.to_dict():
                raise ValueError(f"the label party proposed the packing layout {proposed}, the "
                                 f"data party derives {expected.to_dict()}")
            data_party.packing = label_party.packing = layout
        label_party.encrypted_features = channel.send(0, DATA, LABEL, "[[X]]", "ciphertext",
                                                      data_party.encrypt_features())


# ----------------------------------------------------------------------------------------------
# Step 1 — forward through the first (interactive) layer. Encrypted.
# ----------------------------------------------------------------------------------------------
def step1_forward_interactive(data_party: DataParty, label_party: LabelParty,
                              channel: Channel, rows: np.ndarray) -> np.ndarray:
    """Step 1: z = X·W + b reaches the label party; neither party sees the other's share.

    1. B computes [[U]] = [[X]]·W_B + [[ε_B]] with a fresh ε_B, as wide as the key allows.
    2. B → A ``[[X·W_B + ε_B]]`` (ciphertext). A decrypts U and learns nothing: ε_B hides X·W_B.
    3. A → B ``V = U + X·ε_acc`` (revealed). B subtracts its own ε_B and adds b:
       z = X·W_B + X·ε_acc + b = X·W + b — revealed to B by design.
    """
    with channel.timed("1"):
        if label_party.packing is None:
            encrypted_rows = label_party.encrypted_features[rows]
        else:  # packed along the batch: A encrypts the batch's rows, k per ciphertext
            encrypted_rows = channel.send(1, DATA, LABEL, "[[X_batch]]", "ciphertext",
                                          data_party.encrypt_batch(rows))
        masked = channel.send(1, LABEL, DATA, "[[X·W_B + ε_B]]", "ciphertext",
                              label_party.masked_product(encrypted_rows, len(rows)),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=label_party.masked_product_bits(encrypted_rows))
        noisy = channel.send(1, DATA, LABEL, "X·W + ε_B", "revealed",
                             data_party.add_noise_product(masked, rows),
                             reason="the first layer's pre-activation z = X·W + b, once the "
                                    "label party removes its own mask ε_B")
        return label_party.unmask_preactivation(noisy)


# ----------------------------------------------------------------------------------------------
# Step 2 — forward through the rest, at the label party. Plaintext; nothing crosses.
# ----------------------------------------------------------------------------------------------
def step2_forward_rest(label_party: LabelParty, channel: Channel, z: np.ndarray,
                       rows: np.ndarray) -> float:
    """Step 2: a = act(z), the layers above, and the loss against y — all at B, in plaintext."""
    with channel.timed("2"):
        return label_party.forward_rest(z, rows)


# ----------------------------------------------------------------------------------------------
# Step 3 — backward through the rest, at the label party. Plaintext; nothing crosses.
# ----------------------------------------------------------------------------------------------
def step3_backward_rest(label_party: LabelParty, channel: Channel) -> Fixed:
    """Step 3: δ = ∂L/∂z; B updates the layers above and the first layer's bias."""
    with channel.timed("3"):
        return label_party.backward_rest()


# ----------------------------------------------------------------------------------------------
# Step 4 — backward through the first layer. Encrypted, then masked.
# ----------------------------------------------------------------------------------------------
def step4_backward_interactive(data_party: DataParty, label_party: LabelParty,
                               channel: Channel, rows: np.ndarray, delta: Fixed) -> None:
    """Step 4: W_B ← W_B − η·(Xᵀδ + ε_A) and ε_acc ← ε_acc + η·ε_A, so W_B + ε_acc = W − η·Xᵀδ.

    1. B → A ``[[Xᵀδ + ε_B']]`` (ciphertext): A decrypts G' and learns nothing (ε_B' hides Xᵀδ).
    2. A draws ε_A, σ bits wider than Xᵀδ, and sends A → B ``T = G' + ε_A`` (masked);
       A folds η·ε_A into ε_acc.
    3. B removes ε_B': G̃ = Xᵀδ + ε_A, which hides Xᵀδ. B updates W_B ← W_B − η·G̃.
    """
    with channel.timed("4"):
        plan, m = label_party.plan, len(rows)
        encrypted_rows = label_party.encrypted_features[rows]
        gradient_bits = plan.gradient_bits(m)
        if label_party.packing is not None:  # ε_B' hides all k packed gradients at once
            gradient_bits = label_party.packing.backward.packed_bits(gradient_bits)
        masked = channel.send(4, LABEL, DATA, "[[Xᵀδ + ε_B']]", "ciphertext",
                              label_party.masked_gradient(encrypted_rows, delta),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=gradient_bits)
        # Packed or not, every value B can read out of T hides one gradient under its own ε_A.
        doubly_masked = channel.send(4, DATA, LABEL, "Xᵀδ + ε_B' + ε_A", "masked",
                                     data_party.mask_gradient(masked, m),
                                     mask_bits=plan.gradient_mask_bits(m),
                                     value_bits=plan.gradient_bits(m))
        label_party.update_weight_share(doubly_masked)


# ----------------------------------------------------------------------------------------------
# One mini-batch, one epoch, and prediction.
# ----------------------------------------------------------------------------------------------
def train_batch(data_party, label_party, channel, rows) -> float:
    """Steps 1–4 on one mini-batch; returns the batch loss (known to the label party)."""
    z = step1_forward_interactive(data_party, label_party, channel, rows)
    loss = step2_forward_rest(label_party, channel, z, rows)
    delta = step3_backward_rest(label_party, channel)
    step4_backward_interactive(data_party, label_party, channel, rows, delta)
    return loss


def train_epoch(data_party, label_party, channel, epoch: int, progress=None) -> list[float]:
    """Every mini-batch of one epoch, in the order both parties derive from the public seed."""
    batches = nn.minibatches(data_party.n_samples, label_party.batch_size,
                             seed=label_party.seed, epoch=epoch)
    losses = []
    for rows in batches:
        losses.append(train_batch(data_party, label_party, channel, rows))
        if progress is not None:
            progress(losses[-1])
    return losses


def predict_scores(data_party: DataParty, label_party: LabelParty, channel: Channel,
                   X_new) -> np.ndarray:
    """Prediction: step 1 on new rows (freshly encrypted), then step 2's forward at B.

    A → B ``[[X_new]]`` (ciphertext), B → A ``[[X_new·W_B + ε_B]]`` (ciphertext, masked),
    A → B ``X_new·W + ε_B`` (revealed: z). The scores end at the label party.
    """
    with channel.timed("predict"):
        encrypted = channel.send("predict", DATA, LABEL, "[[X_new]]", "ciphertext",
                                 data_party.encrypt_new_features(X_new))
        masked = channel.send("predict", LABEL, DATA, "[[X_new·W_B + ε_B]]", "ciphertext",
                              label_party.masked_product(encrypted, len(X_new)),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=label_party.masked_product_bits(encrypted))
        noisy = channel.send("predict", DATA, LABEL, "X_new·W + ε_B", "revealed",
                             data_party.add_noise_product(masked),
                             reason="the pre-activation z of the rows to predict")
        return label_party.scores(label_party.unmask_preactivation(noisy))
