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
``public``. Payloads are passed lazily (``lambda: party.method(...)``), so that they are computed
where their sender runs: in this process for the in-process channel, in the sender's own process
over TCP (transport.py), where the step functions run unchanged in both processes.

Exactness. Every quantity is a fixed-point integer with ONE public scale (fractional bits):
X at ``x_frac_bits``, δ = ∂L/∂z at ``delta_frac_bits``, the learning rate η at ``lr_frac_bits``,
and W at their sum. The update ΔW = η·Xᵀδ is then an exact integer at W's scale and never needs
rescaling, so every mask cancels exactly and the true W is a deterministic function of the data,
the initial weights and the batch order — never of the random masks.

Insecure variants, for teaching: :class:`InsecureFlaws` re-creates the six known flaws of
production implementations, each behind its own switch (off by default, loud when on); the
channel's reporting mode lets such a run finish so that ``audit.py`` can catch and attack it.

Threat model: semi-honest, non-colluding parties. Known leaks, by design: the label party learns
z = X·W + b (the first layer's pre-activation) in step 1; with a bottom model (step 4b) the data
party learns δ·Wᵀ, which carries label information.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, asdict, fields

import numpy as np

import kernels
import nn
import paillier
from fixed import Fixed
from paillier import EncryptedArray, PublicKey

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
def uniform_mask(shape, bits: int, generator: random.Random | None = None) -> np.ndarray:
    """Integers uniform in [−2**bits, 2**bits), from ``secrets``: an object array.

    A value v with |v| < 2**(bits − σ) plus such a mask is statistically hidden: the masked
    distributions for any two such v differ by at most 2**−σ in statistical distance.
    ``generator`` defaults to ``secrets``' own (random.SystemRandom, the operating system's CSPRNG).
    """
    draw = secrets.randbits if generator is None else generator.getrandbits
    size = int(np.prod(shape, dtype=np.int64))
    offset = 1 << bits
    flat = [draw(bits + 1) - offset for _ in range(size)]
    out = np.empty(size, dtype=object)
    out[:] = flat
    return out.reshape(shape)


class MaskSource:
    """The one place a party draws its secret masks (ε_acc, ε_A, ε_B, ε_B').

    ``uniform(shape, bits, scale)`` returns integers uniform in [−2**bits, 2**bits) from
    ``generator``, which is ``random.SystemRandom`` — the generator behind ``secrets``. ``scale``
    (the fractional bits of the value the mask hides) does not change a uniform mask; the flawed
    sources below use it.

    Every draw is also measured: ``pending`` keeps (requested bits, bits actually drawn) until the
    party's next message, so that the channel can check the masks inside a masked message against
    the width the message declares. The measurement is a check, not a secret: widths are public.
    """

    def __init__(self):
        self.generator: random.Random = random.SystemRandom()
        self.pending: list[tuple[int, int]] = []

    def uniform(self, shape, bits: int, scale: int) -> np.ndarray:
        mask = self._draw(shape, bits, scale)
        self.pending.append((bits, bits_of(mask)))
        return mask

    def _draw(self, shape, bits: int, scale: int) -> np.ndarray:
        return uniform_mask(shape, bits, self.generator)

    def take_pending(self) -> list[tuple[int, int]]:
        """The draws since the last call, and forget them."""
        drawn, self.pending = self.pending, []
        return drawn


# ----------------------------------------------------------------------------------------------
# INSECURE variants, for teaching only (audit.py). Each re-creates one known flaw of production
# implementations; every one is off by default and warns (InsecureFlawWarning) when switched on.
# ----------------------------------------------------------------------------------------------
class InsecureFlawWarning(UserWarning):
    """A party was built with an insecure flaw switched on: for the audit demo, never for data."""


WEAK_MASK_KINDS = ("uniform1024", "normal")
SEEDED_MASK_SEED_BITS = 16


@dataclass(frozen=True)
class InsecureFlaws:
    """The six known flaws of production ACML implementations, each behind its own switch.

    * ``no_paillier_randomness`` — the data party encrypts as c = 1 + m·n mod n², with no r^n
      (EFLS v1): anyone with n reads m = (c − 1)/n.
    * ``zero_initial_noise`` — ε_acc starts at 0 (FATE 1.x issue #2364, EFLS v2): on the first
      batch the label party's share is the true W.
    * ``weak_masks`` — "uniform1024": masks uniform in [−1024, 1024] (FATE); "normal":
      round(N(0, 1)·2**scale), a standard normal in the hidden value's own units (EFLS v2).
    * ``public_exponents`` — phe-style floating encoding: [[X]] (or [[α]]) travels with each
      value's own exponent in the clear (FATE's phe encoding, EFLS v2).
    * ``seeded_mask_rng`` — masks from ``random.Random`` seeded with a 16-bit seed: the right
      width, but predictable (FATE draws half its masks from np.random).
    * ``plaintext_input_gradient`` — step 4b's δ·Wᵀ reaches the data party's bottom model in
      plaintext with nothing declared (FATE issue #2915).
    """

    no_paillier_randomness: bool = False
    zero_initial_noise: bool = False
    weak_masks: str | None = None
    public_exponents: bool = False
    seeded_mask_rng: bool = False
    plaintext_input_gradient: bool = False

    def __post_init__(self):
        if self.weak_masks not in (None, *WEAK_MASK_KINDS):
            raise ValueError(f"weak_masks must be None or one of {WEAK_MASK_KINDS}, "
                             f"got {self.weak_masks!r}")
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "weak_masks" and not isinstance(value, bool):
                raise TypeError(f"InsecureFlaws.{item.name} must be True or False, got {value!r}")

    def enabled(self) -> tuple[str, ...]:
        """The names of the flaws switched on."""
        return tuple(item.name for item in fields(self) if getattr(self, item.name))

    def mask_source(self) -> MaskSource:
        """A fresh mask source with this configuration's (possibly flawed) masks."""
        if self.weak_masks:
            return WeakMaskSource(self.weak_masks, seeded=self.seeded_mask_rng)
        if self.seeded_mask_rng:
            return SeededMaskSource()
        return MaskSource()


SECURE = InsecureFlaws()


def _warn_insecure(flaws: InsecureFlaws, party: str) -> None:
    enabled = flaws.enabled()
    if enabled:
        warnings.warn(f"INSECURE: the {party} party runs with the flaws {', '.join(enabled)} "
                      "switched on — a teaching demo of known attacks, never for real data",
                      InsecureFlawWarning, stacklevel=3)


class SeededMaskSource(MaskSource):
    """INSECURE (flaw 5): uniform masks of the right width, from ``random.Random(seed)`` with a
    16-bit seed. Mersenne Twister is not a CSPRNG, and 2**16 seeds are searched in a second."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed = secrets.randbits(SEEDED_MASK_SEED_BITS) if seed is None else int(seed)
        self.generator = random.Random(self.seed)


class WeakMaskSource(MaskSource):
    """INSECURE (flaw 3): masks far narrower than what they hide.

    "uniform1024" draws integers uniform in [−1024, 1024], whatever the width asked for;
    "normal" draws round(N(0, 1)·2**scale), a standard normal in the units of the hidden value.
    """

    def __init__(self, kind: str, *, seeded: bool = False):
        super().__init__()
        if kind not in WEAK_MASK_KINDS:
            raise ValueError(f"weak mask kind must be one of {WEAK_MASK_KINDS}, got {kind!r}")
        self.kind = kind
        if seeded:
            self.generator = random.Random(secrets.randbits(SEEDED_MASK_SEED_BITS))

    def _draw(self, shape, bits: int, scale: int) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64))
        if self.kind == "uniform1024":
            flat = [self.generator.randint(-1024, 1024) for _ in range(size)]
        else:
            flat = [int(round(self.generator.gauss(0.0, 1.0) * 2.0 ** scale))
                    for _ in range(size)]
        out = np.empty(size, dtype=object)
        out[:] = flat
        return out.reshape(shape)


def encrypt_without_randomness(public_key: PublicKey, fixed: Fixed) -> EncryptedArray:
    """INSECURE (flaw 1): c = (1 + m·n) mod n², Paillier with r = 1. Deterministic, and anyone
    who knows n reads m = (c − 1)/n."""
    n, nsquare = public_key.n, public_key.nsquare
    residues = public_key._encode_array(fixed.values)
    ciphertexts = np.empty(residues.size, dtype=object)
    ciphertexts[:] = [(1 + m * n) % nsquare for m in residues.ravel().tolist()]
    paillier.OP_COUNTS["encrypt"] += residues.size
    return EncryptedArray(public_key, ciphertexts.reshape(fixed.shape), fixed.scale)


PHE_LOG2_BASE = 4  # phe's EncodedNumber.BASE = 16
FLOAT_MANTISSA_BITS = 53


def phe_exponent(value: float) -> int:
    """The exponent a phe-style floating encoding picks for a float when no precision is given:
    floor((e − 53) / log2(16)), where e is the float's binary exponent (math.frexp). It pins |v|
    to [2**(4·exp + 52), 2**(4·exp + 56)): the value's order of magnitude, in the clear."""
    return math.floor((math.frexp(float(value))[1] - FLOAT_MANTISSA_BITS) / PHE_LOG2_BASE)


class ExponentTaggedArray(EncryptedArray):
    """INSECURE (flaw 4): ciphertexts that travel with one public exponent per value.

    The ciphertexts still hold the plan's fixed-point integers, so training stays exact and
    comparable; ``exponents`` are those a phe-style floating encoding sends beside each
    ciphertext, and they carry exactly the information such an encoding leaks.
    """

    __slots__ = ("exponents",)

    def __init__(self, public_key, ciphertexts, scale, exponents):
        super().__init__(public_key, ciphertexts, scale)
        self.exponents = np.asarray(exponents, dtype=np.int64).reshape(self.shape)

    def __getitem__(self, index):
        return ExponentTaggedArray(self.public_key, self.ciphertexts[index], self.scale,
                                   self.exponents[index])


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


@dataclass
class Finding:
    """One leakage-check violation, recorded when the channel runs in reporting mode.

    ``flaws`` names the InsecureFlaws switch(es) the evidence points at (empty for a violation
    that matches none of them); ``message`` is the check's one-line explanation.
    """

    flaws: tuple
    step: str
    name: str
    sender: str
    receiver: str
    message: str
    count: int = 1


MODES = ("raise", "report")
MASK_WIDTH_SLACK = 16  # a uniform b-bit mask array of s values has max < 2**(b−16) w.p. 2**(−16s)


class Channel:
    """An in-process channel between the two parties.

    ``send`` validates the declared kind of every message (the run-time leakage check), records
    it, and returns the payload to the receiver. A socket channel with the same ``send`` can
    replace it without protocol.py changing.

    ``mode="raise"`` (the default) refuses a violating message with LeakageError. ``mode="report"``
    records each violation in ``findings`` and delivers the message anyway: that lets an insecure
    variant run to completion so that the audit can attack it.

    Beyond the declarations, the channel checks what it can measure: that ciphertexts carry
    Paillier randomness (c ≢ 1 mod n) and no per-value exponents; that nothing reaches the key
    owner in plaintext, or decryptable, without a declaration; that each masked message contains a
    fresh mask as wide as declared (measured by the sender's mask source); and, at setup, that each
    party's mask source draws from ``secrets``.
    """

    def __init__(self, sigma: int = 40, *, mode: str = "raise"):
        if mode not in MODES:
            raise ValueError(f"channel mode must be one of {MODES}, got {mode!r}")
        self.sigma = sigma
        self.mode = mode
        self.messages: list[Message] = []
        self.findings: list[Finding] = []
        self.data_public_key: PublicKey | None = None
        self.mask_sources: dict[str, MaskSource] = {}
        self.step_seconds: dict[str, float] = {}
        self.step_ops: dict[str, dict[str, int]] = {}

    # -- checks ---------------------------------------------------------------------------------
    def _violation(self, m: Message, where: str, text: str, flaws=()) -> None:
        """Raise (mode "raise") or record (mode "report") one violation."""
        if self.mode == "raise":
            raise LeakageError(f"{where}: {text}")
        flaws = tuple(flaws)
        for finding in self.findings:
            if (finding.flaws, finding.step, finding.name) == (flaws, m.step, m.name):
                finding.count += 1
                return
        self.findings.append(Finding(flaws, m.step, m.name, m.sender, m.receiver,
                                     f"{where}: {text}"))

    def register_mask_sources(self, sources: dict) -> None:
        """Setup: remember each party's mask source, and check it draws from ``secrets``."""
        for party, source in sources.items():
            self.mask_sources[party] = source
            if not isinstance(source.generator, random.SystemRandom):
                m = Message(step="0", sender=party, receiver=_other(party),
                            name=f"{party} party's mask source",
                            kind="public", payload=None)
                self._violation(m, f"step 0 {party} party's mask source",
                                f"masks come from {type(source.generator).__module__}."
                                f"{type(source.generator).__name__}, a non-cryptographic, "
                                "seedable generator, not from secrets: whoever guesses its seed "
                                "or state predicts every mask (flaw: seeded_mask_rng)",
                                ("seeded_mask_rng",))

    def _check(self, m: Message) -> None:
        where = f"step {m.step} message {m.name!r} ({m.sender} → {m.receiver})"
        drawn = self.mask_sources[m.sender].take_pending() if m.sender in self.mask_sources else None
        if m.sender not in PARTIES or m.receiver not in PARTIES or m.sender == m.receiver:
            return self._violation(m, where, f"sender and receiver must be the two parties {PARTIES}")
        if m.kind not in KINDS:
            return self._violation(m, where, f"undeclared kind {m.kind!r}; declare one of {KINDS}")
        if m.kind == "ciphertext":
            self._check_ciphertext(m, where)
        elif m.kind == "masked":
            if not _is_int_array(m.payload):
                return self._violation(m, where, "a masked payload must be an integer array")
            self._check_mask_width(m, where)
        elif m.kind == "revealed":
            if not (isinstance(m.reason, str) and m.reason.strip()):
                return self._violation(m, where,
                                       "a revealed value needs the reason it is revealed")
        elif m.kind == "public":
            if not _is_public_value(m.payload):
                return self._violation(m, where, f"refusing an undeclared plaintext "
                                       f"{type(m.payload).__name__} sent as 'public'; arrays must "
                                       "be ciphertext, masked or revealed with a reason")
        if m.receiver == DATA and m.kind in ("masked", "revealed") and isinstance(
                m.payload, np.ndarray):
            self._violation(m, where, f"a plaintext {m.payload.dtype} array reaches the data party; "
                            "nothing derived from the labels may reach it in the clear "
                            "(flaw: plaintext_input_gradient)", ("plaintext_input_gradient",))
        if drawn is not None and self._declares_mask(m):
            self._check_drawn_masks(m, where, drawn)

    def _declares_mask(self, m: Message) -> bool:
        return m.kind == "masked" or (m.kind == "ciphertext" and m.receiver == DATA
                                      and not m.reason and m.mask_bits is not None)

    def _check_drawn_masks(self, m: Message, where: str, drawn) -> None:
        """The masks the sender drew for this message must be there, and as wide as declared."""
        if not drawn or max(width for _, width in drawn) == 0:
            return self._violation(m, where, "declared masked, but the sender drew no mask (or an "
                                   "all-zero one): the value goes out unmasked, as when ε_acc "
                                   "starts at zero (flaw: zero_initial_noise)",
                                   ("zero_initial_noise",))
        widest = max(width for _, width in drawn)
        if widest + MASK_WIDTH_SLACK < m.mask_bits:
            self._violation(m, where, f"weak mask: the mask drawn for it spans {widest} bits, "
                            f"{m.mask_bits} declared over {m.value_bits}-bit values "
                            "(flaw: weak_masks)", ("weak_masks",))

    def _check_ciphertext(self, m: Message, where: str) -> None:
        if not isinstance(m.payload, EncryptedArray):
            return self._violation(m, where, f"declared ciphertext but the payload is "
                                   f"{type(m.payload).__name__}, not an EncryptedArray")
        if self.data_public_key is None or m.payload.public_key != self.data_public_key:
            return self._violation(m, where,
                                   "ciphertext is not under the data party's public key")
        check_ciphertext_values(m.payload, where)
        n = self.data_public_key.n
        if any(int(c) % n == 1 for c in m.payload.ciphertexts.ravel().tolist()):
            self._violation(m, where, "a ciphertext c ≡ 1 (mod n) carries no Paillier randomness "
                            "r^n: anyone who knows n reads m = (c − 1)/n "
                            "(flaw: no_paillier_randomness)", ("no_paillier_randomness",))
        if getattr(m.payload, "exponents", None) is not None:
            self._violation(m, where, "ciphertexts travel with per-value public exponents: every "
                            "value's order of magnitude is in the clear "
                            "(flaw: public_exponents)", ("public_exponents",))
        if m.receiver == DATA:  # the key owner decrypts: declare what it learns
            if m.reason:
                return
            if m.mask_bits is None or m.value_bits is None:
                return self._violation(
                    m, where, "a ciphertext to the key owner must declare what its plaintext "
                    "reveals: mask_bits/value_bits, or a reason — undeclared, the data party "
                    "decrypts it to plaintext (flaw: plaintext_input_gradient)",
                    ("plaintext_input_gradient",))
            self._check_mask_width(m, where)

    def _check_mask_width(self, m: Message, where: str) -> None:
        if m.mask_bits is None or m.value_bits is None:
            return self._violation(m, where,
                                   "a masked value must declare mask_bits and value_bits")
        if m.mask_bits < m.value_bits + self.sigma:
            self._violation(
                m, where,
                f"weak mask — {m.mask_bits}-bit mask over {m.value_bits}-bit values "
                f"leaves {m.mask_bits - m.value_bits} bits of margin, σ = {self.sigma} required",
                ("weak_masks",))

    # -- delivery -------------------------------------------------------------------------------
    def send(self, step, sender, receiver, name, kind, payload, *, reason=None,
             mask_bits=None, value_bits=None):
        """Check, record and deliver one message; returns the payload as the receiver gets it.

        ``payload``, ``mask_bits`` and ``value_bits`` may be given lazily, as functions of no
        arguments: they are computed where the sender runs. Here both parties run, so always;
        over TCP (``transport.SocketChannel``) only in the sender's process, so these step
        functions run unchanged in both processes.
        """
        payload, mask_bits, value_bits = (_evaluate(value) for value in
                                          (payload, mask_bits, value_bits))
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


def _evaluate(value):
    """A lazy value (a function of no arguments) computed now; anything else as it is."""
    return value() if callable(value) else value

def _other(party: str) -> str:
    return LABEL if party == DATA else DATA


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
        record = {"scale": payload.scale,
                  "ciphertexts": [str(int(c)) for c in payload.ciphertexts.ravel()]}
        if getattr(payload, "exponents", None) is not None:  # the INSECURE flaw-4 variant
            record["exponents"] = [int(e) for e in payload.exponents.ravel()]
        return record
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
BOTTOM_SEED_STREAM = 0xB07  # the bottom layer's init stream: apart from every MLP layer's index


class BottomModel:
    """The data party's own layer below the interactive one: α = act(X·W + b), d → k.

    α, not X, is then the interactive layer's input, so [[α]] is encrypted afresh every batch.
    The bottom model never leaves the data party; step 4b gives it ∂L/∂α = δ·Wᵀ, and it takes a
    plain SGD step. Its initial weights are drawn (public, reproducible) from
    ``np.random.default_rng([seed, BOTTOM_SEED_STREAM])``, apart from the MLP's layers.
    """

    def __init__(self, n_features: int, width: int, activation: str = "relu", seed: int = 0):
        if activation not in nn.ACTIVATIONS:
            raise ValueError(f"unknown bottom activation {activation!r}; expected one of "
                             f"{sorted(nn.ACTIVATIONS)}")
        rng = np.random.default_rng([int(seed), BOTTOM_SEED_STREAM])
        self.layer = nn.Dense(n_features, width, rng=rng,
                              init=nn.INIT_FOR_ACTIVATION[activation])
        self.activation_name = activation
        self.activation = nn.ACTIVATIONS[activation]()

    @property
    def n_features(self) -> int:
        return self.layer.n_in

    @property
    def width(self) -> int:
        return self.layer.n_out

    def forward(self, X) -> np.ndarray:
        return self.activation.forward(self.layer.forward(X))

    def backward_step(self, input_gradient, lr: float) -> None:
        """∂L/∂α → ∂L/∂W, ∂L/∂b through the activation, then W −= η·∂L/∂W, b −= η·∂L/∂b."""
        self.layer.backward(self.activation.backward(input_gradient))
        self.layer.W -= lr * self.layer.dW
        self.layer.b -= lr * self.layer.db


def make_bottom(spec, n_features: int, seed: int) -> BottomModel | None:
    """None, a width k (ReLU), a pair (k, activation), an nn.Dense (or a pair (nn.Dense,
    activation)) to use as it is, or a BottomModel — over ``n_features`` inputs."""
    if spec is None:
        return None
    layer, activation = (spec, "identity") if isinstance(spec, nn.Dense) else (
        spec if isinstance(spec, tuple) and isinstance(spec[0], nn.Dense) else (None, None))
    if layer is not None:
        if layer.W is None:
            raise ValueError("the bottom model's nn.Dense layer has no weight")
        spec = BottomModel(layer.n_in, layer.n_out, activation)
        spec.layer = layer
    if isinstance(spec, BottomModel):
        if spec.n_features != n_features:
            raise ValueError(f"the bottom model takes {spec.n_features} features, the data "
                             f"party has {n_features}")
        return spec
    width, activation = (spec, "relu") if isinstance(spec, (int, np.integer)) else spec
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"the bottom model's width must be a positive integer, got {width!r}")
    return BottomModel(n_features, int(width), activation, seed)


class DataParty:
    """Party A: owns the features X, the Paillier key pair and noise_acc (ε_acc).

    ``init_seed`` seeds the first layer's initial weights W0, which only this party draws (and at
    once splits into ε_acc and the label party's share). In a deployment it is the data party's
    own secret; the simulation passes the seed of the plaintext twin so that both start equal.

    ``bottom`` (optional: a width k, a pair (k, activation), or a :class:`BottomModel`) puts a
    bottom model under the interactive layer (step 4b). ``insecure_flaws`` switches on known
    flaws for the audit (:class:`InsecureFlaws`; warns). ``mask_source`` overrides where the masks
    come from (default: ``secrets``, or the flawed source the flaws ask for).
    """

    packing: PackingLayout | None = None  # set by setup(): the public slot layout, or None
    executor = None  # set by setup(): where the modular exponentiations run (None: here)
    epochs_completed: int | None = None  # set when restored from a checkpoint (resuming)

    def __init__(self, X, *, plan: FixedPointPlan | None = None, key_bits: int = 2048,
                 allow_insecure: bool = False, keypair=None, init_seed: int | None = None,
                 bottom=None, insecure_flaws: InsecureFlaws = SECURE,
                 mask_source: MaskSource | None = None):
        self.plan = plan or FixedPointPlan()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"features must be a non-empty 2-D array, got shape {X.shape}")
        self.features = encode_features(X, self.plan)
        if keypair is None:
            keypair = paillier.generate_keypair(key_bits, allow_insecure=allow_insecure)
        self.public_key, self._private_key = keypair
        self.init_seed = secrets.randbits(63) if init_seed is None else init_seed
        self.bottom = make_bottom(bottom, X.shape[1], self.init_seed)
        self._raw_features = X if self.bottom is not None else None
        self._batch_inputs: Fixed | None = None
        self.flaws = insecure_flaws
        _warn_insecure(insecure_flaws, "data")
        self.mask_source = mask_source or insecure_flaws.mask_source()
        self.noise_acc: Fixed | None = None
        self.training: dict | None = None
        self._prediction_features: Fixed | None = None

    @property
    def n_samples(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def n_inputs(self) -> int:
        """Width of the interactive layer's input: k with a bottom model, else d."""
        return self.n_features if self.bottom is None else self.bottom.width

    def _encrypt(self, fixed: Fixed, real_values=None) -> EncryptedArray:
        """Encrypt with the CRT fast path (on the executor, if any), fresh r per value — unless
        an insecure flaw says not."""
        if self.flaws.no_paillier_randomness:
            encrypted = encrypt_without_randomness(self.public_key, fixed)
        else:
            encrypted = kernels.encrypt_array(self._private_key, fixed, executor=self.executor)
        if self.flaws.public_exponents and real_values is not None:
            exponents = [phe_exponent(v) for v in np.asarray(real_values).ravel().tolist()]
            encrypted = ExponentTaggedArray(self.public_key, encrypted.ciphertexts,
                                            encrypted.scale, np.reshape(exponents, fixed.shape))
        return encrypted

    # step 0
    def receive_training_plan(self, training: dict) -> None:
        if training.get("fixed_point") != self.plan.to_dict():
            raise ValueError(f"the label party's fixed-point plan {training.get('fixed_point')} "
                             f"differs from the data party's {self.plan.to_dict()}")
        self.training = dict(training)
        self.lr_int = self.plan.quantize_lr(training["lr"])
        self.plan.check_key(self.public_key.n.bit_length(), training["batch_size"],
                            self.n_inputs)

    def resume_training_plan(self, training: dict, epochs_completed) -> None:
        """Resuming (step 0): the label party's checkpoint must be from this party's epoch, and
        its plan this party's checkpoint's in everything but the number of epochs."""
        if self.epochs_completed is None or self.training is None:
            raise ValueError("resume: this data party was not restored from a checkpoint")
        if epochs_completed != self.epochs_completed:
            raise ValueError(f"resume: the label party's checkpoint is after epoch "
                             f"{epochs_completed!r}, the data party's after epoch "
                             f"{self.epochs_completed}; resume both from the same epoch")
        if not isinstance(training, dict):
            raise ValueError(f"resume: the training plan is no dictionary: {training!r}")
        for key in sorted(set(training) | set(self.training)):
            if key != "epochs" and training.get(key) != self.training.get(key):
                raise ValueError(f"resume: the training plan's {key} is {training.get(key)!r}, "
                                 f"the data party's checkpoint has {self.training.get(key)!r}")
        self.receive_training_plan(training)

    def accept_packing_layout(self, proposed: dict | None) -> "PackingLayout | None":
        """Derive the slot layout from the same public facts; refuse any other proposal."""
        expected = useful_packing(self.plan, self.public_key, self.training["batch_size"],
                                  self.n_inputs, self.training["lr"])
        derived = None if expected is None else expected.to_dict()
        if proposed != derived:
            raise ValueError(f"the label party proposed the packing layout {proposed}, the data "
                             f"party derives {derived}")
        return expected

    def split_initial_weight(self) -> np.ndarray:
        """Draw W0, keep a random ε_acc (never zero), and return the share W0 − ε_acc."""
        sizes = (self.n_inputs, self.training["n_hidden"])
        first = nn.init_layer(sizes, 0, self.training["activation"], self.init_seed)
        weight0 = Fixed.encode(first.W, self.plan.w_frac_bits)
        if bits_of(weight0.values) >= self.plan.weight_bits:
            raise OverflowError(f"initial weights exceed the plan's bound 2**{self.plan.weight_int_bits}")
        if self.flaws.zero_initial_noise:  # INSECURE (flaw 2): the label party's share is W0
            noise = np.zeros(weight0.shape, dtype=np.int64)
        else:
            noise = self.mask_source.uniform(weight0.shape, self.plan.noise_acc_bits(),
                                             self.plan.w_frac_bits)
        self.noise_acc = Fixed.from_ints(noise, self.plan.w_frac_bits)
        return (weight0 - self.noise_acc).values

    def encrypt_features(self) -> EncryptedArray:
        """[[X]], fresh randomness per ciphertext, encrypted with CRT by the key owner.

        Packed: each row's d features go k per plaintext (the backward slots), n × ⌈d/k⌉
        ciphertexts that step 4 uses for every batch of every epoch.
        """
        if self.packing is None:
            return self._encrypt(self.features, self.features.decode())
        return self._encrypt(Fixed(self.packing.backward.pack(self.features.values, axis=1),
                                   self.features.scale))

    def encrypt_batch(self, rows) -> EncryptedArray:
        """Packed step 1: [[X_batch]], the batch's rows k per plaintext (the forward slots),
        ⌈m/k⌉ × d fresh ciphertexts. The batch order is public, so this reveals nothing new."""
        return self._encrypt_rows(self.features[rows])

    def _encrypt_rows(self, features: Fixed) -> EncryptedArray:
        return self._encrypt(Fixed(self.packing.forward.pack(features.values, axis=0),
                                   features.scale))

    def encrypt_batch_inputs(self, rows) -> EncryptedArray:
        """With a bottom model: α = bottom(X[rows]), checked, encoded and freshly encrypted."""
        alpha = self.bottom.forward(self._raw_features[rows])
        self._batch_inputs = encode_features(alpha, self.plan, what="bottom output")
        return self._encrypt(self._batch_inputs, alpha)

    def _inputs(self, rows) -> Fixed:
        return self.features[rows] if self.bottom is None else self._batch_inputs

    # step 1
    def add_noise_product(self, masked_product: EncryptedArray, rows=None) -> np.ndarray:
        """Decrypt U = X·W_B + ε_B and add the own part: V = U + X·ε_acc (mod n).

        ``rows`` picks the training rows of the batch; None means the rows being predicted.
        Packed, X·ε_acc goes into the same slots as X·W_B (slot s of group g: row g·k + s).
        """
        features = self._prediction_features if rows is None else self._inputs(rows)
        product = kernels.decrypt_residues(self._private_key, masked_product,
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
        gradient = kernels.decrypt_residues(self._private_key, masked_gradient,
                                            executor=self.executor)
        mask = self.mask_source.uniform(self.noise_acc.shape,
                                        self.plan.gradient_mask_bits(batch_size),
                                        self.plan.x_frac_bits + self.plan.delta_frac_bits)
        self.noise_acc = self.noise_acc + Fixed.from_ints(self.lr_int * mask,
                                                          self.plan.w_frac_bits)
        if self.packing is not None:
            mask = self.packing.backward.pack(mask, axis=0)
        return mod_n(gradient + mask, self.public_key.n)

    # step 4b
    def encrypt_noise_acc(self) -> EncryptedArray:
        """[[ε_acc]], fresh r per value: the label party needs it for δ·(W_B + ε_acc)ᵀ."""
        return self._encrypt(self.noise_acc)

    def update_bottom(self, encrypted_input_gradient: EncryptedArray) -> Fixed:
        """Decrypt ∂L/∂α = δ·Wᵀ (exact, at scale δ + W) and take a plain SGD step on the bottom."""
        gradient = self._private_key.decrypt(encrypted_input_gradient)
        self.bottom.backward_step(gradient.decode(), self.plan.snap_lr(self.training["lr"]))
        return gradient

    # prediction
    def encrypt_new_features(self, X_new) -> EncryptedArray:
        """[[X_new]] (or [[bottom(X_new)]]) for prediction: checked, encoded and freshly
        encrypted (packed along the rows, as in step 1, when packing is on)."""
        X_new = np.asarray(X_new, dtype=np.float64)
        self._prediction_features = encode_features(X_new, self.plan)
        values = X_new
        if self.bottom is not None:
            values = self.bottom.forward(X_new)
            self._prediction_features = encode_features(values, self.plan, what="bottom output")
        if self.packing is not None:
            return self._encrypt_rows(self._prediction_features)
        return self._encrypt(self._prediction_features, values)


def encode_features(X: np.ndarray, plan: FixedPointPlan, what: str = "feature") -> Fixed:
    """X at the plan's scale, after checking every value is finite and within the bound."""
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{what} column {col}, row {row}: value {X[row, col]} is not finite")
    limit = 2.0 ** plan.x_int_bits
    over = np.abs(X) >= limit
    if over.any():
        row, col = map(int, np.argwhere(over)[0])
        raise OverflowError(f"{what} column {col}, row {row}: |{X[row, col]:g}| exceeds the "
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
    epochs_completed: int | None = None  # set when restored from a checkpoint (resuming)

    def __init__(self, y, layer_sizes, *, activation="relu", lr=0.1, momentum=0.0,
                 batch_size=64, epochs=1, seed=0, plan: FixedPointPlan | None = None,
                 insecure_flaws: InsecureFlaws = SECURE, mask_source: MaskSource | None = None):
        self.plan = plan or FixedPointPlan()
        self.flaws = insecure_flaws
        _warn_insecure(insecure_flaws, "label")
        self.mask_source = mask_source or insecure_flaws.mask_source()
        self._batch_inputs: EncryptedArray | None = None
        self.labels = np.asarray(y)
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        check_labels(self.labels, self.layer_sizes[-1])
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

    def packing_layout(self) -> "PackingLayout | None":
        """The slot layout this party proposes, from public facts only (see useful_packing)."""
        return useful_packing(self.plan, self.public_key, self.batch_size, self.layer_sizes[0],
                              self.lr)

    def check_shapes(self, shapes: dict) -> None:
        """The data party's row and feature counts must fit the labels and the network."""
        if shapes["n_samples"] != len(self.labels):
            raise ValueError(f"the data party has {shapes['n_samples']} aligned rows, the label "
                             f"party {len(self.labels)}")
        if shapes["n_features"] != self.layer_sizes[0]:
            raise ValueError(f"the data party has {shapes['n_features']} features, the network's "
                             f"input width is {self.layer_sizes[0]}")

    def check_resumed_key(self, public_key: PublicKey) -> None:
        """Resuming (step 0): the data party's key must be the one this party's share lives
        under."""
        if self.public_key is None:
            raise ValueError("resume: this label party was not restored from a checkpoint")
        _check_same_key(public_key, self.public_key)

    def receive_weight_share(self, share: np.ndarray) -> None:
        self.weight_share = Fixed.from_ints(share, self.plan.w_frac_bits)

    def receive_batch_inputs(self, encrypted_inputs: EncryptedArray) -> EncryptedArray:
        """With a bottom model: this batch's [[α]], kept for step 4."""
        self._batch_inputs = encrypted_inputs
        return encrypted_inputs

    def batch_inputs(self, rows) -> EncryptedArray:
        """The interactive layer's encrypted input for this batch: [[α]], or the cached [[X]]."""
        if self._batch_inputs is not None:
            return self._batch_inputs
        return self.encrypted_features[rows]

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
        product = kernels.encrypted_matmul(encrypted_features, self.weight_share,
                                           executor=self.executor)
        masked, self._forward_mask = self._add_wide_mask(product)
        return masked

    def masked_product_bits(self, encrypted_features: EncryptedArray) -> int:
        """Public bound on |X·W_B|: what ε_B has to hide from the data party (packed: on the
        whole plaintext, all slots together, since ε_B is one mask over all of them).

        From the public plan, not from W_B itself: a width measured on the share would travel
        in the declaration and tell the data party W_B's bit length, batch after batch. The
        label party checks here, privately, that its share is within that public bound.
        """
        share_bits = weight_share_bits(self.plan, self.batch_size, self.lr)
        if bits_of(self.weight_share.values) > share_bits:
            raise OverflowError(f"the weight share outgrew its public bound of {share_bits} bits "
                                f"(after more than 2**{SHARE_GROWTH_BITS} batches, or |W| far "
                                "beyond the plan's bound)")
        d = encrypted_features.shape[-1]
        value_bits = (self.plan.x_int_bits + self.plan.x_frac_bits + share_bits
                      + math.ceil(math.log2(max(d, 2))))
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
        gradient = kernels.encrypted_matmul(encrypted_features.T, delta, executor=self.executor)
        self._backward_rows = delta.shape[0]
        # |ΔW| ≤ η·Σ_r |X_rt|·|δ_rj| ≤ η · 2**(x bits) · max_j Σ_r |δ_rj|: the bound's growth.
        column_sums = [sum(abs(int(v)) for v in column) for column in delta.values.T.tolist()]
        self._weight_bound_growth = (self.lr_int << (self.plan.x_int_bits + self.plan.x_frac_bits)
                                     ) * max(column_sums, default=0)
        masked, self._backward_mask = self._add_wide_mask(gradient)
        return masked

    def _add_wide_mask(self, encrypted: EncryptedArray):
        """([[v + ε]], ε) for a fresh ε as wide as the key allows (hiding v from the key owner).

        The fresh encryption of ε also re-randomises the sum: its ciphertexts are unlinkable to
        the ones B computed them from.
        """
        mask = self.mask_source.uniform(encrypted.shape, wide_mask_bits(self.public_key),
                                        encrypted.scale)
        masked = encrypted + kernels.encrypt_array(
            self.public_key, Fixed.from_ints(mask, encrypted.scale), executor=self.executor)
        return masked, mask

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

    # step 4b
    def input_gradient(self, encrypted_noise_acc: EncryptedArray, delta: Fixed) -> EncryptedArray:
        """[[δ·Wᵀ]] = δ·W_Bᵀ + δ·[[ε_acc]]ᵀ, re-randomised, at scale δ + W (exact).

        Re-randomising matters: the product's randomness is a function of δ and of the r's of the
        data party's own [[ε_acc]], so without fresh r^n the data party could test guesses of δ.
        """
        encrypted_part = delta @ encrypted_noise_acc.T
        return (encrypted_part + delta @ self.weight_share.T).rerandomize()

    # prediction
    def scores(self, z: np.ndarray) -> np.ndarray:
        return self.model.scores_from_logits(self.model.forward_top(z))


# ----------------------------------------------------------------------------------------------
# The packing layout: public, agreed in step 0 (how slots work: kernels.Slots).
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

    forward: kernels.Slots
    backward: kernels.Slots
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


def useful_packing(plan: FixedPointPlan, public_key: PublicKey, batch_size: int,
                   n_features: int, lr: float) -> PackingLayout | None:
    """The packing layout, where it helps: None unless both steps get at least two slots.

    With one slot a step gains nothing, and step 1 would re-encrypt every batch for nothing;
    small (insecure, test-sized) keys then simply run one value per ciphertext.
    """
    try:
        layout = packing_layout(plan, public_key, batch_size, n_features, lr)
    except ValueError:  # the key is too small to pack this plan at all
        return None
    return layout if min(layout.forward.slots, layout.backward.slots) >= 2 else None


def _layout_dict(layout: PackingLayout | None) -> dict | None:
    return None if layout is None else layout.to_dict()


def weight_share_bits(plan: FixedPointPlan, batch_size: int, lr: float) -> int:
    """Public bound on |W_B| = |W − ε_acc|, in bits: ε_acc starts below 2**noise_acc_bits and
    gains one η·ε_A per batch (room for 2**SHARE_GROWTH_BITS batches); W stays within the
    plan's bound times 2**PACKING_HEADROOM_BITS. The label party checks its share against it."""
    return max(plan.noise_acc_bits(), plan.weight_bits + PACKING_HEADROOM_BITS,
               plan.quantize_lr(lr).bit_length() + plan.gradient_mask_bits(batch_size)
               + SHARE_GROWTH_BITS) + 1


def packing_layout(plan: FixedPointPlan, public_key: PublicKey, batch_size: int,
                   n_features: int, lr: float) -> PackingLayout:
    """The slot layout both parties derive from public values (see PackingLayout)."""
    feature_bits = plan.x_int_bits + plan.x_frac_bits
    log_d = (max(n_features, 1) - 1).bit_length()
    plaintext_bits = public_key.max_int.bit_length() - 1  # 2**plaintext_bits ≤ max_int
    spare = wide_mask_bits(public_key) - plan.sigma - 1  # room for a packed value under ε_B

    share_bits = weight_share_bits(plan, batch_size, lr)
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
    return PackingLayout(kernels.Slots(forward_bits, forward_slots),
                         kernels.Slots(backward_bits, backward_slots), feature_bits)


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
      With a bottom model, nothing: its output α changes every batch, and step 1 sends [[α]]
      afresh.

    The channel also learns each party's mask source, to check that it draws from ``secrets``.

    ``executor`` (a concurrent.futures.Executor, or None for this process) runs both parties'
    modular exponentiations; results are identical either way.
    """
    with channel.timed("0"):
        register_mask_sources(channel, data_party, label_party)
        label_party.public_key = channel.send(0, DATA, LABEL, "public key", "public",
                                              lambda: data_party.public_key)
        channel.data_public_key = label_party.public_key
        shapes = channel.send(0, DATA, LABEL, "shapes", "public",
                              lambda: {"n_samples": data_party.n_samples,
                                       "n_features": data_party.n_inputs})
        label_party.check_shapes(shapes)
        data_party.receive_training_plan(channel.send(0, LABEL, DATA, "training plan", "public",
                                                      lambda: label_party.training_plan()))
        plan = data_party.plan
        share = channel.send(0, DATA, LABEL, "W0 − ε_acc", "masked",
                             lambda: data_party.split_initial_weight(),
                             mask_bits=plan.noise_acc_bits(), value_bits=plan.weight_bits)
        label_party.receive_weight_share(share)
        label_party.weight_bound = 1 << label_party.plan.weight_bits  # A refused any W0 beyond
        _pack_and_send_features(data_party, label_party, channel, packing, executor)


def _pack_and_send_features(data_party, label_party, channel, packing, executor) -> None:
    """The end of step 0, at setup and at resume: agree on packing, then A → B [[X]] (none
    with a bottom model: step 1 sends [[α]] every batch)."""
    agree_on_packing(data_party, label_party, channel,
                     packing=packing and _packable(data_party, label_party), executor=executor)
    if data_party.bottom is None:
        label_party.encrypted_features = channel.send(0, DATA, LABEL, "[[X]]", "ciphertext",
                                                      lambda: data_party.encrypt_features())


def _packable(data_party, label_party) -> bool:
    """Packing needs a fixed [[X]] (no bottom model) and the real protocol: the insecure flaw
    variants run one value per ciphertext, as in the implementations whose flaws they are."""
    flawed = any(getattr(party, "flaws", SECURE).enabled() for party in (data_party, label_party))
    return data_party.bottom is None and not flawed


def register_mask_sources(channel: Channel, data_party, label_party) -> None:
    """Tell the channel where each party present in this process draws its masks."""
    channel.register_mask_sources({party: source for party, source in (
        (DATA, getattr(data_party, "mask_source", None)),
        (LABEL, getattr(label_party, "mask_source", None))) if source is not None})


def agree_on_packing(data_party: DataParty, label_party: LabelParty, channel: Channel, *,
                     packing: bool, executor=None) -> None:
    """Step 0, last part: where the exponentiations run, and the packing layout.

    B → A ``packing layout`` (public), when ``packing``: B proposes the slots of steps 1 and 4
    (or none, where packing would not help: see useful_packing); A derives them from the same
    public facts and refuses any other (see PackingLayout). Packing is off with a bottom model ([[α]] changes every batch and goes one value per ciphertext) and
    for the insecure flaw variants.
    """
    data_party.executor = label_party.executor = executor
    layout = None
    if packing:
        proposed = channel.send(0, LABEL, DATA, "packing layout", "public",
                                lambda: _layout_dict(label_party.packing_layout()))
        # Each process takes the layout from the party it runs (the other is a stand-in).
        layout = data_party.accept_packing_layout(proposed) or label_party.packing_layout()
    data_party.packing = label_party.packing = layout


# ----------------------------------------------------------------------------------------------
# Step 1 — forward through the first (interactive) layer. Encrypted.
# ----------------------------------------------------------------------------------------------
def step1_forward_interactive(data_party: DataParty, label_party: LabelParty,
                              channel: Channel, rows: np.ndarray) -> np.ndarray:
    """Step 1: z = X·W + b reaches the label party; neither party sees the other's share.

    0. With a bottom model only: A → B ``[[α]]`` (ciphertext), α = bottom(X) for this batch,
       encrypted afresh (new r) every batch; it takes the place of [[X]] below and in step 4.
    1. B computes [[U]] = [[X]]·W_B + [[ε_B]] with a fresh ε_B, as wide as the key allows.
    2. B → A ``[[X·W_B + ε_B]]`` (ciphertext). A decrypts U and learns nothing: ε_B hides X·W_B.
    3. A → B ``V = U + X·ε_acc`` (revealed). B subtracts its own ε_B and adds b:
       z = X·W_B + X·ε_acc + b = X·W + b — revealed to B by design.
    """
    with channel.timed("1"):
        if data_party.bottom is not None:
            label_party.receive_batch_inputs(channel.send(1, DATA, LABEL, "[[α]]", "ciphertext",
                                                          lambda: data_party.encrypt_batch_inputs(rows)))
        if label_party.packing is None:
            encrypted_rows = label_party.batch_inputs(rows)
        else:  # packed along the batch: A encrypts the batch's rows, k per ciphertext
            encrypted_rows = channel.send(1, DATA, LABEL, "[[X_batch]]", "ciphertext",
                                          lambda: data_party.encrypt_batch(rows))
        masked = channel.send(1, LABEL, DATA, "[[X·W_B + ε_B]]", "ciphertext",
                              lambda: label_party.masked_product(encrypted_rows, len(rows)),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=lambda: label_party.masked_product_bits(encrypted_rows))
        noisy = channel.send(1, DATA, LABEL, "X·W + ε_B", "revealed",
                             lambda: data_party.add_noise_product(masked, rows),
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
        encrypted_rows = label_party.batch_inputs(rows)
        gradient_bits = plan.gradient_bits(m)
        if label_party.packing is not None:  # ε_B' hides all k packed gradients at once
            gradient_bits = label_party.packing.backward.packed_bits(gradient_bits)
        masked = channel.send(4, LABEL, DATA, "[[Xᵀδ + ε_B']]", "ciphertext",
                              lambda: label_party.masked_gradient(encrypted_rows, delta),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=gradient_bits)
        # Packed or not, every value B can read out of T hides one gradient under its own ε_A.
        doubly_masked = channel.send(4, DATA, LABEL, "Xᵀδ + ε_B' + ε_A", "masked",
                                     lambda: data_party.mask_gradient(masked, m),
                                     mask_bits=plan.gradient_mask_bits(m),
                                     value_bits=plan.gradient_bits(m))
        label_party.update_weight_share(doubly_masked)


# ----------------------------------------------------------------------------------------------
# Step 4b — only with a bottom model: the input gradient ∂L/∂α = δ·Wᵀ to the data party.
# ----------------------------------------------------------------------------------------------
INPUT_GRADIENT_REASON = ("∂L/∂α = δ·Wᵀ, the bottom model's input gradient: a known leak of LABEL "
                         "information to the data party (its rows' norms and directions separate "
                         "the classes); measured by `python acml.py audit`")


def step4b_input_gradient(data_party: DataParty, label_party: LabelParty, channel: Channel,
                          delta: Fixed) -> Fixed:
    """Step 4b: the data party gets ∂L/∂α = δ·Wᵀ and updates its bottom model by plain SGD.

    1. A → B ``[[ε_acc]]`` (ciphertext, fresh r).
    2. B computes [[δ·(W_B + ε_acc)ᵀ]] = δ·W_Bᵀ + δ·[[ε_acc]]ᵀ = [[δ·Wᵀ]], re-randomises it, and
       sends B → A ``[[δ·Wᵀ]]`` (ciphertext, declared revealed: the label leak, by design).
    3. A decrypts δ_int·W_intᵀ exactly (scale δ + W), decodes it, and steps its bottom model.

    Run it after step 3 and BEFORE step 4's update (``train_batch`` does): W_B and ε_acc must be
    the shares of the forward pass, so that W is the weight that computed z.

    ``plaintext_input_gradient`` (INSECURE, flaw 6) sends the same ciphertext with nothing declared,
    as FATE 1.x does (issue #2915): the data party decrypts a label-bearing plaintext that the
    protocol never admits to.
    """
    with channel.timed("4b"):
        encrypted_noise = channel.send("4b", DATA, LABEL, "[[ε_acc]]", "ciphertext",
                                       lambda: data_party.encrypt_noise_acc())
        # Flaw 6 (INSECURE) sends the very same ciphertext, but declares nothing about it.
        reason = None if label_party.flaws.plaintext_input_gradient else INPUT_GRADIENT_REASON
        received = channel.send("4b", LABEL, DATA, "[[δ·Wᵀ]]", "ciphertext",
                                lambda: label_party.input_gradient(encrypted_noise, delta),
                                reason=reason)
        return data_party.update_bottom(received)


# ----------------------------------------------------------------------------------------------
# One mini-batch, one epoch, and prediction.
# ----------------------------------------------------------------------------------------------
def train_batch(data_party, label_party, channel, rows) -> float:
    """Steps 1–4 (and 4b, with a bottom model) on one mini-batch; returns the batch loss (known
    to the label party). 4b runs before 4: it needs the shares of W that computed z."""
    z = step1_forward_interactive(data_party, label_party, channel, rows)
    loss = step2_forward_rest(label_party, channel, z, rows)
    delta = step3_backward_rest(label_party, channel)
    if data_party.bottom is not None:
        step4b_input_gradient(data_party, label_party, channel, delta)
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

    A → B ``rows to predict`` (public): their number, which the packed layout needs;
    A → B ``[[X_new]]`` (ciphertext), B → A ``[[X_new·W_B + ε_B]]`` (ciphertext, masked),
    A → B ``X_new·W + ε_B`` (revealed: z). The scores end at the label party.
    """
    with channel.timed("predict"):
        n_rows = channel.send("predict", DATA, LABEL, "rows to predict", "public",
                              lambda: len(X_new))
        encrypted = channel.send("predict", DATA, LABEL, "[[X_new]]", "ciphertext",
                                 lambda: data_party.encrypt_new_features(X_new))
        masked = channel.send("predict", LABEL, DATA, "[[X_new·W_B + ε_B]]", "ciphertext",
                              lambda: label_party.masked_product(encrypted, n_rows),
                              mask_bits=wide_mask_bits(label_party.public_key),
                              value_bits=lambda: label_party.masked_product_bits(encrypted))
        noisy = channel.send("predict", DATA, LABEL, "X_new·W + ε_B", "revealed",
                             lambda: data_party.add_noise_product(masked),
                             reason="the pre-activation z of the rows to predict")
        return label_party.scores(label_party.unmask_preactivation(noisy))


# ----------------------------------------------------------------------------------------------
# Input checks used above: the labels, and every ciphertext that crosses the channel.
# ----------------------------------------------------------------------------------------------
def check_labels(labels: np.ndarray, n_outputs: int) -> None:
    """y must be 1-D class ids 0..k−1 (k = 2 for a single output unit), finite, integer-valued,
    with at least two classes present. An empty y is allowed: a label party that only predicts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    if labels.size == 0:
        return
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"label row {row}: value {labels[row]} is not an integer class id")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    n_classes = 2 if n_outputs == 1 else n_outputs
    outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if outside.size:
        row = int(outside[0])
        raise ValueError(f"label row {row}: class {labels[row]} is outside 0..{n_classes - 1} "
                         f"(the network has {n_outputs} output unit(s))")
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError(f"the labels hold a single class ({classes[0]}); training needs at "
                         "least two")


def check_ciphertext_values(encrypted: EncryptedArray, where: str) -> None:
    """Every ciphertext must lie in [1, n²) and be coprime to n.

    Anything else is no Paillier ciphertext: the key owner's CRT decryption would turn it into a
    meaningless residue without complaint. One gcd per ciphertext costs a few percent of what
    making it did.
    """
    n, nsquare = encrypted.public_key.n, encrypted.public_key.nsquare
    for flat_index, c in enumerate(encrypted.ciphertexts.ravel().tolist()):
        if not 0 < c < nsquare or math.gcd(c, n) != 1:
            index = tuple(map(int, np.unravel_index(flat_index, encrypted.shape)))
            problem = "lies outside [1, n²)" if not 0 < c < nsquare else "is not coprime to n"
            raise ValueError(f"{where}: ciphertext at index {index} {problem}, so it is no "
                             "Paillier ciphertext")


def _check_same_key(received: PublicKey, own: PublicKey) -> None:
    if received != own:
        raise ValueError(f"the data party's public key (fingerprint {received.fingerprint[:12]}) "
                         "is not the key the label party's weight share was made under "
                         f"({own.fingerprint[:12]})")


def resume_setup(data_party: DataParty, label_party: LabelParty, channel: Channel, *,
                 packing: bool = True, executor=None) -> None:
    """Step 0 again, for parties restored from their checkpoints: no new weight split.

    * A → B ``public key`` (public): B checks it is the key its weight share lives under.
    * A → B ``shapes`` (public), B → A ``training plan`` (public).
    * B → A ``epochs completed`` (public): the epoch B's checkpoint was saved after. A checks it
      is its own checkpoint's, and that only the number of epochs changed in the plan: else
      W_B + ε_acc would be no W at all.
    * B → A ``packing layout`` (public), when ``packing``, as in :func:`setup`.
    * A → B ``[[X]]`` (ciphertext): re-created from A's features, fresh randomness, same key.
      With a bottom model, nothing: step 1 sends [[α]] afresh every batch, as after setup.

    Each check runs in the party that owns what it compares (``DataParty.resume_training_plan``,
    ``LabelParty.check_resumed_key``), so that the same function runs over TCP, where the other
    party is a stand-in. Keep the messages in step with :func:`setup`.
    """
    with channel.timed("0"):
        register_mask_sources(channel, data_party, label_party)
        public_key = channel.send(0, DATA, LABEL, "public key", "public",
                                  lambda: data_party.public_key)
        label_party.check_resumed_key(public_key)
        # The very key B already holds; over TCP, A's stand-in for B learns it here, as in setup.
        label_party.public_key = channel.data_public_key = public_key
        shapes = channel.send(0, DATA, LABEL, "shapes", "public",
                              lambda: {"n_samples": data_party.n_samples,
                                       "n_features": data_party.n_inputs})
        label_party.check_shapes(shapes)
        plan = channel.send(0, LABEL, DATA, "training plan", "public",
                            lambda: label_party.training_plan())
        epochs_completed = channel.send(0, LABEL, DATA, "epochs completed", "public",
                                        lambda: label_party.epochs_completed)
        data_party.resume_training_plan(plan, epochs_completed)
        _pack_and_send_features(data_party, label_party, channel, packing, executor)


def connect_for_prediction(data_party: DataParty, label_party: LabelParty,
                           channel: Channel) -> None:
    """Step 0 before predicting with restored parties: A → B ``public key`` (public), and B
    checks it is the key its weight share lives under. Then :func:`predict_scores`."""
    with channel.timed("0"):
        channel.data_public_key = data_party.public_key
        _check_same_key(channel.send(0, DATA, LABEL, "public key", "public",
                                     data_party.public_key), label_party.public_key)
