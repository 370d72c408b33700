"""The public plan of a run: fixed-point scales and bounds, the packing layout, and the facts
both parties hold after step 0.

Nothing here is secret. Both parties derive every width and every layout from these values
alone, so that a declared width can be checked by the receiver as well as by the sender, and so
that a width never depends on a secret (a width measured on W_B would tell the key owner
W_B's bit length, batch after batch).

Exactness. Every quantity is a fixed-point integer with ONE public scale (fractional bits):
X at ``x_frac_bits``, δ = ∂L/∂z at ``delta_frac_bits``, the learning rate η at ``lr_frac_bits``,
and W at their sum. The update ΔW = η·Xᵀδ is then an exact integer at W's scale and never needs
rescaling, so every mask cancels exactly and the true W is a deterministic function of the data,
the initial weights and the batch order — never of the random masks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

import nn
from fixed import Fixed, as_int, describe_int, object_array
from paillier import PublicKey


MAX_PLAN_BITS = 256  # every field of a fixed-point plan is an integer in 1..256
MIN_SECURE_SIGMA = 40  # statistical hiding below 2**-40 per message: the secure minimum


def check_sigma(sigma: int, allow_insecure: bool = False, flag: str = "sigma") -> None:
    """The σ policy where a party is built: σ ≥ MIN_SECURE_SIGMA unless ``allow_insecure``
    (tests and demos; the CLI's ``--insecure-sigma``), and σ ≥ 1 always (FixedPointPlan).

    A mask only σ bits wider than the value it hides leaves a statistical distance of about
    2**-σ: σ = 8 lets a receiver tell values apart, σ ≤ 0 hides nothing.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, np.integer)) or sigma < 1:
        raise ValueError(f"{flag} must be an integer of at least 1 bit, got {sigma!r}")
    if sigma < MIN_SECURE_SIGMA and not allow_insecure:
        raise ValueError(f"{flag} {sigma} is under the secure minimum of {MIN_SECURE_SIGMA} bits; "
                         "pass allow_insecure_sigma=True (CLI: --insecure-sigma) for tests and demos")


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

    def __post_init__(self):
        """Every field an integer in 1..MAX_PLAN_BITS: σ ≥ 1 always (σ's secure minimum,
        MIN_SECURE_SIGMA, is the parties' policy: :func:`check_sigma`)."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or not 1 <= value <= MAX_PLAN_BITS:
                raise ValueError(f"the fixed-point plan's {item.name} must be an integer in "
                                 f"1..{MAX_PLAN_BITS}, got {value!r}")
            object.__setattr__(self, item.name, int(value))

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

    @classmethod
    def from_dict(cls, payload) -> "FixedPointPlan":
        """A plan from its dictionary, every field an integer in a sane range (ValueError)."""
        if not isinstance(payload, dict) or set(payload) != {f.name for f in fields(cls)}:
            raise ValueError(f"a fixed-point plan needs exactly the fields "
                             f"{[f.name for f in fields(cls)]}, got {payload!r}")
        return cls(**payload)  # __post_init__ checks every field


# ----------------------------------------------------------------------------------------------


def check_features(X, plan: FixedPointPlan, *, what: str = "features", names=None, ids=None,
                   raw=None, mean=None, std=None) -> None:
    """Every (standardised) value must be finite and |x| < 2**x_int_bits, before any encryption.

    The error names the row (its id, given ``ids``), the column (by name, given ``names``) and the
    bound; given the raw values and the standardisation (prediction), the range the raw column
    accepts. Checking up front means a bad test row fails in a second, not after an hour of
    encrypted training.
    """
    X = np.asarray(X, dtype=np.float64)
    limit = 2.0 ** plan.x_int_bits
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(X) | (np.abs(X) >= limit)
    if not bad.any():
        return
    row, col = map(int, np.argwhere(bad)[0])
    where = (f"{what}, {'row' if ids is None else 'id'} {row if ids is None else str(ids[row])!r}"
             f", column {col if names is None else names[col]!r}")
    if not np.isfinite(X[row, col]):
        raise ValueError(f"{where}: value {X[row, col]} is not finite")
    if raw is not None and mean is not None and std is not None:
        low, high = mean[col] - limit * std[col], mean[col] + limit * std[col]
        raise OverflowError(f"{where}: value {raw[row, col]:g} is beyond the fixed-point range; "
                            f"this column takes values strictly between {low:g} and {high:g} "
                            f"(±{limit:g} standard deviations, x_int_bits={plan.x_int_bits})")
    raise OverflowError(f"{where}: value {X[row, col]:g} exceeds the fixed-point bound "
                        f"{limit:g} (x_int_bits={plan.x_int_bits}); standardise the features "
                        "or raise the bound")


def encode_features(X, plan: FixedPointPlan, what: str = "features") -> Fixed:
    """X at the plan's scale, after :func:`check_features`."""
    check_features(X, plan, what=what)
    return Fixed.encode(np.asarray(X, dtype=np.float64), plan.x_frac_bits)


def wide_mask_bits(public_key: PublicKey) -> int:
    """The widest signed mask that still encodes under the key: 2**bits < n/3."""
    return public_key.max_int.bit_length() - 2


PACKING_HEADROOM_BITS = 8  # z's slots have room for |W| up to 2**8 times the plan's bound
SHARE_GROWTH_BITS = 20  # ε_acc gains one η·ε_A per batch: room for 2**20 batches


class Slots:
    """Several signed integers in ONE Paillier plaintext, in slots of `slot_bits` bits each.

    A group of up to `slots` values v_0, v_1, ..., v_(k-1) is packed into one integer

        P = v_0 + v_1·2^B + v_2·2^(2B) + ... + v_(k-1)·2^((k-1)B),      B = slot_bits

    which is then encoded mod n like any signed value.  Pictured, most significant slot left:

        bit:  (k-1)B            ...      2B               B                0
              | slot k-1: v_(k-1) | ... | slot 1: v_1     | slot 0: v_0      |
                                          ^ a negative v_0 borrows 1 from here

    Why it works: packing is linear, so everything Paillier computes on a packed plaintext
    acts on every slot at once.  E(P)^w = E(Σ_s (w·v_s)·2^(sB)); the product of E(P_t)^(w_t)
    over t holds Σ_t w_t·v_(s,t) in slot s; adding E(Q) adds the slots of Q.  One modular
    exponentiation thus does the work of k.  All of it is exact integer arithmetic mod n, so
    what a slot holds is decided only by the FINAL integer: intermediate values may overflow
    their slots freely as long as the final one does not (masks added to the whole plaintext
    mod n cancel exactly and never touch the slots).

    Signed values need no offset: unpacking reads balanced digits from the least significant
    slot up, digit = the remainder of the running value mod 2^B taken in [-2^(B-1), 2^(B-1)),
    and subtracts it (a borrow from the slot above when the digit is negative).  If every
    |v_s| < 2^(B-1), the balanced base-2^B expansion of P is unique, so the digits ARE the v_s.

    The caveat is the bound: a value with |v_s| >= 2^(B-1) corrupts its neighbour, silently,
    as far as the digits can tell.  So callers must prove the bound of every final slot value
    beforehand and size B from it (`unpack` also refuses digits above a declared bound, and any
    bits left above the last slot, with OverflowError).  The whole P obeys |P| < 2^packed_bits.
    """

    __slots__ = ("slot_bits", "slots")

    def __init__(self, slot_bits, slots):
        self.slot_bits = as_int(slot_bits, "slot_bits")
        self.slots = as_int(slots, "slots")
        if self.slot_bits < 2 or self.slots < 1:
            raise ValueError(f"need slot_bits >= 2 and slots >= 1, got {slot_bits}, {slots}")

    def packed_bits(self, value_bits, slots=None):
        """|P| < 2^packed_bits when every |v_s| < 2^value_bits (value_bits <= slot_bits)."""
        used = self.slots if slots is None else slots
        # Σ_s |v_s|·2^(sB) < 2^value_bits · 2^((k-1)B) · (1 + 2^-B + 2^-2B + ...) < 2^(...+1).
        return (used - 1) * self.slot_bits + value_bits + 1

    def groups(self, count):
        """How many packed integers `count` values need."""
        return -(-count // self.slots)

    def pack(self, values, axis=0, intermediate=False):
        """Pack an integer array along `axis`, `slots` consecutive entries per integer.

        The result has groups(count) entries along that axis (the last group may be short).
        OverflowError if some |value| >= 2^(slot_bits-1), which would not unpack -- unless
        `intermediate`: a term that is only ever read back as part of a sum (the map is linear,
        so only the final slots must fit; the caller proves that bound instead).
        """
        values = np.moveaxis(np.asarray(values, dtype=object), axis, 0)
        count, limit = values.shape[0], 1 << (self.slot_bits - 1)
        flat = values.reshape(count, -1).tolist()
        packed = []
        for group in range(self.groups(count)):
            rows = flat[group * self.slots:(group + 1) * self.slots]
            totals = [0] * len(rows[0]) if rows else []
            for slot, row in enumerate(rows):
                shift = slot * self.slot_bits
                for column, value in enumerate(row):
                    value = int(value)
                    if not (intermediate or -limit < value < limit):
                        raise OverflowError(
                            f"value {describe_int(value)} at position {group * self.slots + slot} "
                            f"does not fit a signed {self.slot_bits}-bit slot")
                    totals[column] += value << shift
            packed.append(totals)
        out = object_array([v for row in packed for v in row],
                           (len(packed),) + values.shape[1:])
        return np.moveaxis(out, 0, axis)

    def unpack(self, packed, count, axis=0, value_bits=None):
        """Inverse of pack: `count` signed values along `axis` from the packed integers.

        OverflowError if a digit reaches 2^value_bits (the caller's proven bound; default
        slot_bits - 1), or if bits remain above a group's last used slot.
        """
        packed = np.moveaxis(np.asarray(packed, dtype=object), axis, 0)
        if packed.shape[0] != self.groups(count):
            raise ValueError(f"{count} values need {self.groups(count)} packed integers, "
                             f"got {packed.shape[0]}")
        bits = self.slot_bits - 1 if value_bits is None else value_bits
        if bits > self.slot_bits - 1:
            raise ValueError(f"{bits}-bit values cannot be read from {self.slot_bits}-bit slots")
        width, half, limit = 1 << self.slot_bits, 1 << (self.slot_bits - 1), 1 << bits
        flat = packed.reshape(packed.shape[0], -1).tolist()
        out = []
        for group, row in enumerate(flat):
            used = min(self.slots, count - group * self.slots)
            digits = [[] for _ in range(used)]
            for column, total in enumerate(row):
                total = int(total)
                for slot in range(used):
                    digit = (total + half) % width - half
                    if not -limit < digit < limit:
                        raise OverflowError(
                            f"slot {slot} of packed integer {group}, column {column}: "
                            f"the digit {describe_int(digit)} reaches the proven bound 2^{bits}")
                    digits[slot].append(digit)
                    total = (total - digit) >> self.slot_bits
                if total:
                    raise OverflowError(f"packed integer {group}, column {column} has bits "
                                        f"above its {used} slots of {self.slot_bits} bits")
            out.extend(digits)
        result = object_array([v for row in out for v in row], (count,) + packed.shape[1:])
        return np.moveaxis(result, 0, axis)

    def to_dict(self):
        return {"slot_bits": self.slot_bits, "slots": self.slots}

    def __eq__(self, other):
        return (isinstance(other, Slots) and self.slot_bits == other.slot_bits
                and self.slots == other.slots)

    def __repr__(self):
        return f"Slots(slot_bits={self.slot_bits}, slots={self.slots})"


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

    forward: Slots
    backward: Slots
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
                "packing=False (CLI: --no-packing), or with a larger weight_int_bits in the "
                "fixed-point plan (API only)")

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
                         "in step 4); use a larger key or packing=False (CLI: --no-packing)")
    return PackingLayout(Slots(forward_bits, forward_slots),
                         Slots(backward_bits, backward_slots), feature_bits)


# ----------------------------------------------------------------------------------------------
# Streaming: the row blocks in which steps 1's and 4's big ciphertext arrays cross
# ----------------------------------------------------------------------------------------------
# The default in two processes: up to 4 blocks. Measured (README, Two processes over TCP): with
# two free cores steps 1 + 4 took 15–29% less; with one core left by other jobs, no gain. 4 is
# near sqrt(smaller half / overhead per extra block) = sqrt(~120 ms / ~4 ms) ≈ 5.5, and what was
# measured: German credit's messages have at most 4 rows (packed), so 4 is one row per block.
STREAM_CHUNKS = 4
MAX_STREAM_CHUNKS = 1024


def check_stream_chunks(chunks) -> int:
    """A party's own chunk count for streamed messages: an integer in 1..MAX_STREAM_CHUNKS."""
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or not (
            1 <= chunks <= MAX_STREAM_CHUNKS):
        raise ValueError(f"the stream's chunk count must be an integer in "
                         f"1..{MAX_STREAM_CHUNKS}, got {chunks!r}")
    return int(chunks)


def stream_slices(rows: int, chunks: int) -> list[slice]:
    """The row blocks of a streamed message of ``rows`` rows: min(rows, chunks) contiguous
    blocks (at least one), their sizes differing by at most one row.

    Both parties cut the message alone, from its public shape (a function of :class:`Public`)
    and their own chunk count, and the receiver refuses any other cut before reading a block's
    body: the sender's word decides nothing. A block is a slice of the output, and each output
    element is its own multi-exponentiation with its own mask, so any cut gives the same array.
    """
    pieces = max(1, min(int(rows), check_stream_chunks(chunks)))
    bounds = [rows * piece // pieces for piece in range(pieces + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


# ----------------------------------------------------------------------------------------------
# The training plan (B → A in step 0) and the public facts of a session
# ----------------------------------------------------------------------------------------------
MAX_HIDDEN = 4096  # resource caps on what a peer may ask for: far above any model here
MAX_BATCH_SIZE = 1 << 20
MAX_EPOCHS = 100_000
MAX_LR = 16.0
SEED_LIMIT = 1 << 63
MAX_SAMPLES = 10 ** 7  # rows a data party may declare (the "shapes" of step 0) ...
MAX_INPUTS = 10 ** 5  # ... and inputs of the interactive layer
MAX_FLAW_NAMES = 16  # names in a list of insecure switches (flaws.py has 6)
# The INSECURE flaws a party may declare in step 0 (attacks/flaws.py: InsecureFlaws, whose fields
# these are, and the party subclasses that have them). Public: the channel and the audit read them.
FLAW_NAMES = ("no_paillier_randomness", "zero_initial_noise", "weak_masks", "public_exponents",
              "seeded_mask_rng", "plaintext_input_gradient")
MAX_BLOCK_ROWS = 256  # rows per block: far above the ~19 rows a 2048-bit plaintext packs


def _check_int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"the training plan's {name} must be an integer in {low}..{high}, "
                         f"got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TrainingPlan:
    """The hyper-parameters the label party chooses and the data party needs: all public.

    ``epochs_completed`` is 0 for a new run and the epoch both checkpoints were saved after when
    resuming. ``insecure_flaws`` names the label party's INSECURE teaching switches (flaws.py):
    they change what its messages declare, so the data party must know them too.
    ``block_rows`` > 0 batches whole fixed row blocks (nn.block_minibatches) instead of
    shuffled rows, so that step 0 can encrypt each block once (0, the default: row batches;
    a plan without the field, from an older checkpoint or peer, means 0).
    """

    n_hidden: int
    activation: str
    lr: float
    batch_size: int
    epochs: int
    seed: int
    fixed_point: FixedPointPlan
    epochs_completed: int = 0
    insecure_flaws: tuple = ()
    block_rows: int = 0

    def to_dict(self) -> dict:
        out = {item.name: getattr(self, item.name) for item in fields(self)}
        out["fixed_point"] = self.fixed_point.to_dict()
        out["insecure_flaws"] = list(self.insecure_flaws)
        return out

    @classmethod
    def from_dict(cls, payload) -> "TrainingPlan":
        """Validate every field of a received plan (type, range, resource cap): ValueError."""
        if not isinstance(payload, dict):
            raise ValueError(f"the training plan must be a JSON object, got {type(payload).__name__}")
        payload = {"block_rows": 0, **payload}
        expected = {item.name for item in fields(cls)}
        missing, unknown = expected - set(payload), set(payload) - expected
        if missing or unknown:
            raise ValueError(f"the training plan lacks {sorted(missing) or 'nothing'} and has "
                             f"unknown fields {sorted(unknown) or 'none'}")
        lr = payload["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
                math.isfinite(lr) and 0 < lr <= MAX_LR):
            raise ValueError(f"the training plan's lr must be a number in (0, {MAX_LR:g}], "
                             f"got {lr!r}")
        if payload["activation"] not in nn.ACTIVATIONS:
            raise ValueError(f"the training plan's activation {payload['activation']!r} is not "
                             f"one of {sorted(nn.ACTIVATIONS)}")
        flaws = payload["insecure_flaws"]
        if not isinstance(flaws, (list, tuple)) or not all(isinstance(f, str) for f in flaws):
            raise ValueError(f"the training plan's insecure_flaws must be a list of names, "
                             f"got {flaws!r}")
        batch_size = _check_int(payload["batch_size"], "batch_size", 1, MAX_BATCH_SIZE)
        block_rows = _check_int(payload["block_rows"], "block_rows", 0, MAX_BLOCK_ROWS)
        if block_rows and batch_size % block_rows:
            raise ValueError(f"the training plan's batch_size {batch_size} is not a multiple of "
                             f"its block_rows {block_rows}")
        return cls(n_hidden=_check_int(payload["n_hidden"], "n_hidden", 1, MAX_HIDDEN),
                   activation=payload["activation"], lr=float(lr),
                   batch_size=batch_size,
                   epochs=_check_int(payload["epochs"], "epochs", 1, MAX_EPOCHS),
                   seed=_check_int(payload["seed"], "seed", 0, SEED_LIMIT - 1),
                   fixed_point=FixedPointPlan.from_dict(payload["fixed_point"]),
                   epochs_completed=_check_int(payload["epochs_completed"], "epochs_completed",
                                               0, MAX_EPOCHS),
                   insecure_flaws=tuple(flaws), block_rows=block_rows)


@dataclass(frozen=True)
class Public:
    """What both parties know after step 0, the same in both processes: the public key, the
    data party's shapes, the training plan and the packing layout.

    The script (protocol.py) reads nothing else, so it runs unchanged whether both parties live
    in this process or each in its own. Every declared width and shape is a function of these.
    """

    public_key: PublicKey
    n_samples: int
    n_inputs: int  # the interactive layer's input width: d, or k with a bottom model
    bottom: bool  # the data party has a bottom model, so step 4b runs
    data_flaws: tuple
    training: TrainingPlan
    packing: PackingLayout | None = None

    @property
    def plan(self) -> FixedPointPlan:
        return self.training.fixed_point

    @property
    def n_hidden(self) -> int:
        return self.training.n_hidden

    @property
    def mask_bits(self) -> int:
        """Width of the label party's masks ε_B, ε_B': as wide as the key allows."""
        return wide_mask_bits(self.public_key)

    def flawed(self, name: str) -> bool:
        """An INSECURE switch of either party (flaws.py) is on."""
        return name in self.data_flaws or name in self.training.insecure_flaws

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The batch order of ``epoch``, from the public seed: both parties derive it alone."""
        return nn.minibatches(self.n_samples, self.training.batch_size, seed=self.training.seed,
                              epoch=epoch, block_rows=self.training.block_rows)

    # -- row blocks: each encrypted once at setup, when the plan batches blocks and packs ------
    def encrypts_blocks(self) -> bool:
        """Step 0 sends [[X_blocks]] and step 1 selects from it (block_rows > 0, packed)."""
        return self.packing is not None and self.training.block_rows > 0

    def encrypts_each_batch(self) -> bool:
        """Step 1 encrypts the batch's input afresh: [[α]], or packed rows without blocks."""
        return self.bottom or (self.packing is not None and not self.encrypts_blocks())

    def row_blocks(self) -> list[np.ndarray]:
        return nn.row_blocks(self.n_samples, self.training.block_rows, seed=self.training.seed)

    def rows_by_block(self) -> np.ndarray:
        """Every row, block after block: the rows [[X_blocks]] packs, b to a ciphertext."""
        return np.concatenate(self.row_blocks())

    def blocks_shape(self) -> tuple:
        """[[X_blocks]]: one packed ciphertext per block and input, the block's rows its slots."""
        return (len(self.row_blocks()), self.n_inputs)

    def blocks_of(self, rows) -> np.ndarray:
        """The indices of the blocks a batch is made of, in the batch's order (ValueError
        unless the rows are whole blocks, block after block)."""
        blocks, size = self.row_blocks(), self.training.block_rows
        block_of_row = np.empty(self.n_samples, dtype=np.int64)
        for index, block in enumerate(blocks):
            block_of_row[block] = index
        chosen = block_of_row[np.asarray(rows)[::size]]
        if not np.array_equal(np.concatenate([blocks[i] for i in chosen]), rows):
            raise ValueError("the batch's rows are not whole row blocks, block after block")
        return chosen

    def step0_ciphertexts(self) -> int:
        """The data party's encryptions in step 0: [[X]], and [[X_blocks]] with blocks."""
        count = int(np.prod(self.features_shape())) if not self.bottom else 0
        return count + (int(np.prod(self.blocks_shape())) if self.encrypts_blocks() else 0)

    def packable(self) -> bool:
        """Packing needs a fixed [[X]] (no bottom model) and the real protocol: the insecure
        variants run one value per ciphertext, as the systems whose flaws they are."""
        return not self.bottom and not self.data_flaws and not self.training.insecure_flaws

    def derive_packing(self) -> PackingLayout | None:
        """The layout both parties derive from the facts above (None where it would not help).
        With row blocks, step 1 packs one block per ciphertext: its slots are the block's rows
        (ValueError if a block would not fit one ciphertext)."""
        if not self.packable():
            return None
        layout = useful_packing(self.plan, self.public_key, self.training.batch_size,
                                self.n_inputs, self.training.lr)
        block_rows = self.training.block_rows
        if layout is None or not block_rows:
            return layout
        if block_rows > layout.forward.slots:  # a block is ONE packed ciphertext per input
            raise ValueError(f"block_rows {block_rows} exceeds the {layout.forward.slots} rows "
                             "one packed ciphertext of step 1 holds with this key and plan "
                             f"(CLI: --block-rows {layout.forward.slots} or less)")
        return replace(layout, forward=Slots(layout.forward.slot_bits, block_rows))

    # -- the shapes and widths each message declares ------------------------------------------
    def rows_shape(self, m: int) -> tuple:
        """[[X_batch]] (or [[X_new]]): m rows, packed k per ciphertext along the batch."""
        groups = m if self.packing is None else self.packing.forward.groups(m)
        return (groups, self.n_inputs)

    def product_shape(self, m: int) -> tuple:
        groups = m if self.packing is None else self.packing.forward.groups(m)
        return (groups, self.n_hidden)

    def features_shape(self) -> tuple:
        """[[X]] of step 0: every row, packed k features per ciphertext."""
        width = self.n_inputs if self.packing is None else self.packing.backward.groups(
            self.n_inputs)
        return (self.n_samples, width)

    def gradient_shape(self) -> tuple:
        width = self.n_inputs if self.packing is None else self.packing.backward.groups(
            self.n_inputs)
        return (width, self.n_hidden)

    def weight_shape(self) -> tuple:
        return (self.n_inputs, self.n_hidden)

    def product_bits(self) -> int:
        """Public bound on |X·W_B|, what ε_B hides from the key owner (packed: the whole
        plaintext, all slots at once). From the plan, never from W_B itself."""
        share_bits = weight_share_bits(self.plan, self.training.batch_size, self.training.lr)
        value_bits = (self.plan.x_int_bits + self.plan.x_frac_bits + share_bits
                      + math.ceil(math.log2(max(self.n_inputs, 2))))
        if self.packing is not None:
            return self.packing.forward.packed_bits(value_bits)
        return value_bits

    def masked_gradient_bits(self, m: int) -> int:
        """Public bound on |Xᵀδ| under ε_B' (packed: all k gradients of a plaintext)."""
        bits = self.plan.gradient_bits(m)
        if self.packing is not None:
            bits = self.packing.backward.packed_bits(bits)
        return bits
