"""INSECURE variants, for teaching only: the six known flaws of production ACML implementations.

Each re-creates one flaw of a system that implements the paper, as a party that deviates from
the real one (parties.py) in one overridden method — :func:`party_classes` builds the pair for
a set of :class:`InsecureFlaws` — and declares its flaws in step 0, loud
(InsecureFlawWarning) when built. The channel's checks catch each one, and audit.py attacks
each from the curious party's own view. Never use them on real data.
"""

from __future__ import annotations

import math
import random
import secrets
import warnings
from dataclasses import dataclass, fields

import numpy as np

import paillier
import plan
from channel import MaskSource
from fixed import Fixed, object_array
from paillier import EncryptedArray, PublicKey
from parties import DataParty, LabelParty


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
if tuple(item.name for item in fields(InsecureFlaws)) != plan.FLAW_NAMES:
    raise ImportError("InsecureFlaws and plan.FLAW_NAMES must name the same flaws, in order")


def warn_insecure(flaws: InsecureFlaws, party: str) -> None:
    enabled = flaws.enabled()
    if enabled:
        warnings.warn(f"INSECURE: the {party} party runs with the flaws {', '.join(enabled)} "
                      "switched on — a teaching demo of known attacks, never for real data",
                      InsecureFlawWarning, stacklevel=3)


class SeededMaskSource(MaskSource):
    """INSECURE (flaw 5): uniform masks of the right width, from ``random.Random(seed)`` with a
    16-bit seed. Mersenne Twister is not a CSPRNG, and 2**16 seeds are searched in a second."""

    def __init__(self, seed: int | None = None):
        self.seed = secrets.randbits(SEEDED_MASK_SEED_BITS) if seed is None else int(seed)
        super().__init__(random.Random(self.seed))

    def residues(self, shape, n: int, bits: int, scale: int = 0) -> np.ndarray:
        """Its masks mod n are its uniform draws too (predictable ones), as FATE's were."""
        return self.uniform(shape, bits, scale)


class WeakMaskSource(MaskSource):
    """INSECURE (flaw 3): masks far narrower than what they hide.

    "uniform1024" draws integers uniform in [−1024, 1024], whatever the width asked for;
    "normal" draws round(N(0, 1)·2**scale), a standard normal in the units of the hidden value.
    """

    def __init__(self, kind: str, *, seeded: bool = False):
        if kind not in WEAK_MASK_KINDS:
            raise ValueError(f"weak mask kind must be one of {WEAK_MASK_KINDS}, got {kind!r}")
        super().__init__(random.Random(secrets.randbits(SEEDED_MASK_SEED_BITS)) if seeded
                         else None)
        self.kind = kind

    def _draw(self, shape, bits: int, scale: int) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64))
        if self.kind == "uniform1024":
            flat = [self.generator.randint(-1024, 1024) for _ in range(size)]
        else:
            flat = [int(round(self.generator.gauss(0.0, 1.0) * 2.0 ** scale))
                    for _ in range(size)]
        return object_array(flat, shape)

    def residues(self, shape, n: int, bits: int, scale: int = 0) -> np.ndarray:
        """Its masks mod n are just as narrow."""
        return self.uniform(shape, bits, scale)


def encrypt_without_randomness(public_key: PublicKey, fixed: Fixed) -> EncryptedArray:
    """INSECURE (flaw 1): c = (1 + m·n) mod n², Paillier with r = 1. Deterministic, and anyone
    who knows n reads m = (c − 1)/n."""
    n, nsquare = public_key.n, public_key.nsquare
    residues = public_key.encode_residues(fixed.values)
    ciphertexts = object_array([(1 + m * n) % nsquare for m in residues.ravel().tolist()],
                               fixed.shape)
    paillier.OP_COUNTS["encrypt"] += residues.size
    return EncryptedArray(public_key, ciphertexts, fixed.scale)


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


# ----------------------------------------------------------------------------------------------
# The flawed parties: each a real party with one method overridden
# ----------------------------------------------------------------------------------------------
class _Insecure:
    """What every flawed party shares: ``insecure`` (its InsecureFlaws), declared in step 0 as
    ``flaws``, and a loud warning when it is built."""

    insecure: InsecureFlaws = SECURE

    def __init__(self, *args, **kwargs):
        warn_insecure(self.insecure, "data" if isinstance(self, DataParty) else "label")
        super().__init__(*args, **kwargs)


class UnrandomizedDataParty(_Insecure, DataParty):
    """INSECURE (flaw 1): encrypts as c = 1 + m·n mod n², no r^n (encrypt_without_randomness)."""

    insecure = InsecureFlaws(no_paillier_randomness=True)
    flaws = insecure.enabled()

    def encrypt(self, fixed: Fixed, *, progress=None) -> EncryptedArray:
        return encrypt_without_randomness(self.public_key, fixed)


class ZeroInitialNoiseDataParty(_Insecure, DataParty):
    """INSECURE (flaw 2): ε_acc starts at 0, so W0 − ε_acc, the label party's share, is W0."""

    insecure = InsecureFlaws(zero_initial_noise=True)
    flaws = insecure.enabled()

    def draw_initial_noise(self, shape) -> np.ndarray:
        return np.zeros(shape, dtype=np.int64)


class PublicExponentsDataParty(_Insecure, DataParty):
    """INSECURE (flaw 4): every ciphertext it sends travels with its value's phe exponent."""

    insecure = InsecureFlaws(public_exponents=True)
    flaws = insecure.enabled()

    def encrypt(self, fixed: Fixed, *, progress=None) -> EncryptedArray:
        encrypted = super().encrypt(fixed, progress=progress)
        exponents = [phe_exponent(v) for v in fixed.decode().ravel().tolist()]
        return ExponentTaggedArray(self.public_key, encrypted.ciphertexts, encrypted.scale,
                                   np.reshape(exponents, fixed.shape))


class FlawedMasksDataParty(_Insecure, DataParty):
    """INSECURE (flaws 3 and 5): its masks come from ``insecure.mask_source()`` — weak
    (WeakMaskSource) or seeded (SeededMaskSource) — unless given one."""

    insecure = InsecureFlaws(seeded_mask_rng=True)
    flaws = insecure.enabled()

    def __init__(self, *args, mask_source=None, **kwargs):
        super().__init__(*args, mask_source=mask_source or self.insecure.mask_source(), **kwargs)


class FlawedMasksLabelParty(_Insecure, LabelParty):
    """INSECURE (flaws 3 and 5): as :class:`FlawedMasksDataParty`, for ε_B and ε_B'."""

    insecure = InsecureFlaws(seeded_mask_rng=True)
    flaws = insecure.enabled()

    def __init__(self, *args, mask_source=None, **kwargs):
        super().__init__(*args, mask_source=mask_source or self.insecure.mask_source(), **kwargs)


class DeclaredFlawsDataParty(_Insecure, DataParty):
    """Declares its flaws and deviates in nothing: ``plaintext_input_gradient`` is the script's
    (protocol.py sends step 4b's δ·Wᵀ without its reason when either party declares it)."""

    insecure = InsecureFlaws(plaintext_input_gradient=True)
    flaws = insecure.enabled()


class DeclaredFlawsLabelParty(_Insecure, LabelParty):
    """The label party's declaration of the same flaws (its training plan names them)."""

    insecure = InsecureFlaws(plaintext_input_gradient=True)
    flaws = insecure.enabled()


class IntervalMaskLabelParty(LabelParty):
    """INSECURE against a deviating data party (leak L3; own_leaks.py): ε_B and ε_B' uniform on
    [−2**b, 2**b) (b = public.mask_bits), an interval of n/6 to n/3 of Z_n only, instead of
    uniform mod n. A data party that encrypts crafted plaintexts reads W_B through it."""

    def draw_mask(self, shape, scale: int) -> np.ndarray:
        return self.mask_source.uniform(shape, self.public.mask_bits, scale)


DATA_PARTY_FLAWS = {  # the flaw, the data party that has it (overriding one method)
    "public_exponents": PublicExponentsDataParty,
    "no_paillier_randomness": UnrandomizedDataParty,
    "zero_initial_noise": ZeroInitialNoiseDataParty,
    "weak_masks": FlawedMasksDataParty,
    "seeded_mask_rng": FlawedMasksDataParty,
}
LABEL_PARTY_FLAWS = {"weak_masks": FlawedMasksLabelParty, "seeded_mask_rng": FlawedMasksLabelParty}


def party_classes(flaws: InsecureFlaws = SECURE, *, data=DataParty, label=LabelParty):
    """(data party class, label party class) with ``flaws``: the real ones (or ``data`` and
    ``label``, say a deviation of own_leaks.py) for none; else subclasses of them built from
    the flawed parties above, each flaw's method overridden, every flaw declared by both (the
    audit's runs switch the same flaws on at both parties)."""
    enabled = flaws.enabled()
    if not enabled:
        return data, label

    def build(table, base, declared):
        # In the table's order (an overriding encrypt that adds to another's comes first).
        mixins = list(dict.fromkeys(cls for name, cls in table.items() if name in enabled))
        mixins = mixins or [declared]
        return type(f"Flawed{base.__name__}", (*mixins, base),
                    {"insecure": flaws, "flaws": enabled,
                     "__doc__": f"{base.__name__} with the INSECURE flaws {', '.join(enabled)}."})
    return (build(DATA_PARTY_FLAWS, data, DeclaredFlawsDataParty),
            build(LABEL_PARTY_FLAWS, label, DeclaredFlawsLabelParty))
