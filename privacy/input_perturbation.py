"""Input perturbation: (ε, δ)-differential privacy for each row of X, paid once, before step 0.

The label party B learns z = X_B·W + b for every batch, and from those z across two epochs it
recovers X itself (attacks/leaks.py, :func:`leaks.column_space_attack`). No noise on W's path
can stop that: z − b = X_B·W_t holds exactly whatever moved W_t. What does stop it is that the X
the protocol ever computes with is already private. The data party, before step 0,

1. standardises X with statistics it treats as **public** (see "Assumptions");
2. clips every row to L2 norm ≤ C:  x ← x · min(1, C / ||x||₂);
3. adds independent Gaussian noise N(0, σ²) to every entry, from a secret 256-bit seed drawn
   with ``secrets`` and expanded by SHAKE-256 (a cryptographic stream), never from numpy's
   generator;

and then runs the protocol on the noisy X̃ (and perturbs every row it asks to predict the same
way). Everything the label party sees afterwards — z in every epoch, predictions, whatever a
deviating label party computes from [[X̃]] (leak L2 reads X̃, not X) — is a function of X̃, so
the guarantee survives it all (post-processing).

The guarantee. Neighbouring datasets differ in the feature vector of ONE record (replace-one: the
data party's row x_i changed to any other x_i'). After clipping, ||clip(x) − clip(x')||₂ ≤ 2C,
and row i's output depends on row i only, so the release is the Gaussian mechanism with L2
sensitivity Δ = 2C, and σ = Δ · σ₁(ε, δ), where σ₁ is the smallest noise for sensitivity 1 that
satisfies (ε, δ)-DP exactly (the analytic Gaussian mechanism, Balle & Wang 2018), computed by
Google's ``dp_accounting.get_sigma_gaussian``. A different row's noise is independent, so every
record gets (ε, δ) at once (parallel composition, not n-fold composition).

Assumptions and what is NOT protected:
* The adversary is the label party (with any side knowledge, including other rows, the labels
  and σ). Record ids, the row count, which ids are in the intersection (membership) and the
  labels are not protected by this mechanism; nor is the data party from itself.
* The standardisation statistics (mean, std per column) are treated as public: the guarantee
  holds for fixed statistics. If they are computed from the same data, they are an extra release
  this ε does not cover (each moves by at most range/n when one row changes, but nothing bounds
  the range). Compute them from public or earlier-released data, or spend budget on them.
* The clip bound C must not be chosen from the data: the default C = √d is the RMS row norm of
  standardised data, fixed by the public width d alone.
* A record perturbed twice (trained on, then predicted; or two training runs) pays twice: the
  data party must perturb each record once and reuse X̃ (``compose`` measures the cost of k
  releases with dp_accounting's PLD accountant otherwise).
* The noise is continuous Gaussian in float64; the protocol then quantises X̃ to fixed point
  (post-processing, no loss). Floating-point side channels of the sampler are not addressed.
* ε = ∞ switches the mechanism off: ``perturb`` returns X unchanged (no clipping either).

Wiring (jobs/simulation.py, network/transport.py, ``Config.dp_epsilon``/``dp_delta``,
``--dp-epsilon``/``--dp-delta``): off unless ε is given; δ defaults to ``DEFAULT_DELTA``. The data
party perturbs its standardised training rows once, before step 0 (call 0 of the training
seed's stream), the run's test rows with call 1, and rows predicted later from a checkpoint with
a fresh seed of their own. The seeds are 256 bits from ``secrets``. Only the training seed, and
only when the data party's ``init_seed`` is given (reproducing a run, never a deployment), is
derived from it, SHA-256(domain ‖ "train" ‖ init_seed) (:func:`derived_seed`), so that one
process and two processes train on the very same noisy rows. A prediction's seed is always
fresh: a seed derived once and reused by every later prediction would give two rows predicted
at the same position the same noise, and their difference x_i − x_j would cross unprotected. The training seed is kept in the data party's own
checkpoint (beside its private key), so that a resumed run perturbs the same rows the same way.
"""

from __future__ import annotations

import hashlib
import math
import secrets

import numpy as np

import dp_accounting

SEED_BITS = 256
NOISE_DOMAIN = b"acml input perturbation v1"
SEED_DOMAIN = b"acml input perturbation seed from init_seed v1"
# δ when only ε is given. Per-record DP with δ lets each record's guarantee fail with
# probability about δ, so n·δ should stay well under 1: 10⁻⁵ is ≪ 1/n up to some 10⁴ rows
# (the built-in datasets have at most 5000), and σ grows only like √(ln 1/δ) as δ shrinks.
# Larger tables should pass δ ≈ 1/n² themselves. A fixed default, not one computed from n,
# keeps σ the same in the one-process and the two-process run and at prediction.
DEFAULT_DELTA = 1e-5
PURPOSES = ("train", "predict")  # only "train" may be derived from an init seed


def _check_budget(epsilon, delta) -> tuple[float, float]:
    try:
        epsilon = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a number > 0 (or inf), got {epsilon!r}") from None
    try:
        delta = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}") from None
    if math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be > 0 (or inf to switch the noise off), got {epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return epsilon, delta


def check_options(epsilon, delta, *, names=("dp_epsilon", "dp_delta")) -> tuple | None:
    """(ε, δ) of the data party's input perturbation, or None when it is off (ε None or ∞).

    ``delta`` None with ε given: ``DEFAULT_DELTA``. ``delta`` without ``epsilon`` is refused
    (it would silently do nothing). Every error is one line naming the option (``names``: the
    flag or parameter as the caller spells it)."""
    epsilon_name, delta_name = names
    if epsilon is None:
        if delta is not None:
            raise ValueError(f"{delta_name} {delta!r} needs {epsilon_name}: δ alone switches "
                             "nothing on")
        return None
    try:
        epsilon, delta = _check_budget(epsilon, DEFAULT_DELTA if delta is None else delta)
    except ValueError as error:
        name = epsilon_name if str(error).startswith("epsilon") else delta_name
        raise ValueError(f"{name}: {str(error).split(' ', 1)[1]}") from None
    return None if math.isinf(epsilon) else (epsilon, delta)


def derived_seed(init_seed: int, purpose: str) -> int:
    """A noise seed from the data party's init seed: SHA-256(domain ‖ purpose ‖ init_seed).

    Only for reproducing a run (tests, ``--init-seed``): whoever knows init_seed knows the noise.
    Only the training rows' seed is ever derived (``purpose`` "train"): a prediction's noise is
    fresh every time (the module docstring says why), so "predict" is refused here.
    """
    if purpose != "train":
        raise ValueError(f"only the training seed is derived from an init seed, not {purpose!r}")
    if isinstance(init_seed, bool) or not isinstance(init_seed, int) or init_seed < 0:
        raise ValueError(f"init_seed must be a non-negative integer, got {init_seed!r}")
    length = max(1, (init_seed.bit_length() + 7) // 8)
    digest = hashlib.sha256(SEED_DOMAIN + b"\0" + purpose.encode() + b"\0"
                            + init_seed.to_bytes(length, "big")).digest()
    return int.from_bytes(digest, "big")


def for_data_party(budget: tuple | None, *, purpose: str, init_seed: int | None = None,
                   seed: int | None = None, clip: float | None = None):
    """The data party's InputPerturbation for ``budget`` (from :func:`check_options`; None: off,
    returns None). The seed: ``seed`` if given (a resumed run's, from its checkpoint), else, for
    the training rows, derived from ``init_seed`` if given, else 256 fresh bits from ``secrets``
    (always, for rows to predict)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if budget is None:
        return None
    if seed is None:
        seed = (derived_seed(init_seed, purpose) if purpose == "train" and init_seed is not None
                else secrets.randbits(SEED_BITS))
    return InputPerturbation(*budget, clip, seed=seed)


def perturb_rows(perturbation, X, plan) -> np.ndarray:
    """The rows as the protocol will see them: ``perturbation.perturb(X)`` clamped strictly
    inside the fixed-point plan's range |x| < 2**x_int_bits (post-processing), or X itself when
    ``perturbation`` is None (off)."""
    if perturbation is None:
        return np.asarray(X, dtype=np.float64)
    bound = 2.0 ** plan.x_int_bits - 2.0 ** -plan.x_frac_bits
    return perturbation.perturb(X, bound=bound)


def clip_rows(X, clip: float) -> np.ndarray:
    """Every row scaled to L2 norm ≤ ``clip`` (rows already inside are unchanged)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    scale = np.minimum(1.0, clip / np.where(norms > 0, norms, 1.0))
    return X * scale


# Box–Muller's largest radius: √(−2 ln u) at the smallest uniform u = 2**−129 (128-bit words).
TAIL_BOUND = math.sqrt(2 * 129 * math.log(2))  # ≈ 13.37: no draw is ever beyond 13.37·σ


def gaussian_noise(count: int, sigma: float, seed: int) -> np.ndarray:
    """``count`` independent N(0, σ²) draws from the secret ``seed`` (Box–Muller).

    SHAKE-256(domain ‖ seed) is read as 64-bit words, three per pair of draws: two give the
    radius's uniform u₁ = (hi + (lo + ½)·2⁻⁶⁴)·2⁻⁶⁴ ∈ [2⁻¹²⁹, 1), one gives the angle's u₂
    (its top 53 bits); the pair is √(−2 ln u₁)·(cos 2πu₂, sin 2πu₂). The stream is as
    unpredictable as the seed, which only the data party holds; numpy does the arithmetic, never
    the drawing. A given seed gives the same noise on every machine (IEEE float64), which is
    what lets one process and two processes train on the very same noisy rows.

    Caveat, measured in :meth:`InputPerturbation.tail_delta`: a sampler cannot reach every
    real number. No draw exceeds TAIL_BOUND·σ, so a neighbour shifted by up to 2C can produce
    outputs this row never can; 128-bit radii push that bound to 13.37σ (53-bit ones stop at
    8.65σ, which breaks δ = 10⁻⁵ from ε ≈ 30 on).
    """
    count = int(count)
    if not 0 <= seed < 1 << SEED_BITS:
        raise ValueError(f"the noise seed must be an integer in [0, 2**{SEED_BITS}), got {seed!r}")
    pairs = (count + 1) // 2
    stream = hashlib.shake_256(NOISE_DOMAIN + seed.to_bytes(SEED_BITS // 8, "big"))
    words = np.frombuffer(stream.digest(24 * pairs), dtype=">u8").reshape(3, pairs)
    high, low = words[0].astype(np.float64), words[1].astype(np.float64)
    radius_uniform = (high + (low + 0.5) * 2.0 ** -64) * 2.0 ** -64
    angle_uniform = ((words[2] >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    radius = np.sqrt(-2.0 * np.log(radius_uniform))
    angle = 2.0 * np.pi * angle_uniform
    return sigma * np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def gaussian_tail(x: float) -> float:
    """P(N(0, 1) > x)."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


class InputPerturbation:
    """x̃ = clip_C(x) + N(0, σ² I) per row: (ε, δ)-DP for each row under replace-one.

    ``epsilon`` > 0 (``math.inf``: off), ``delta`` in (0, 1), ``clip`` C > 0 in standardised
    units (default √d of the X first perturbed: data-independent). ``sigma`` is fixed once C is
    known; ``perturb(X)`` takes float64 (n, d) standardised rows and returns new noisy rows.

    ``seed``: the secret behind the noise, 256 bits from ``secrets`` unless given (tests, and a
    data party that must reproduce its own run, give it). Each call of ``perturb`` reads its own
    stream, SHAKE-256(seed ‖ call number): the training rows and the rows to predict never share
    noise.
    """

    def __init__(self, epsilon: float, delta: float, clip: float | None = None, *,
                 seed: int | None = None):
        self.epsilon, self.delta = _check_budget(epsilon, delta)
        if clip is not None:
            clip = float(clip)
            if not (math.isfinite(clip) and clip > 0):
                raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
        self.clip = clip
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < 1 << SEED_BITS):
            raise ValueError(f"seed must be an integer in [0, 2**{SEED_BITS}), got {seed!r}")
        self._seed = secrets.randbits(SEED_BITS) if seed is None else seed
        self.width: int | None = None  # d, once a first X is perturbed
        self.calls = 0  # perturb calls so far: call k reads the stream of (seed, k)
        self.enabled = math.isfinite(self.epsilon)
        # σ for sensitivity 1, from dp_accounting's analytic Gaussian mechanism
        self.unit_sigma = (dp_accounting.get_sigma_gaussian(self.epsilon, self.delta)
                           if self.enabled else 0.0)

    @property
    def sensitivity(self) -> float | None:
        """L2 sensitivity under replace-one: 2C (None until C is known)."""
        return None if self.clip is None else 2.0 * self.clip

    @property
    def sigma(self) -> float | None:
        """The per-entry noise standard deviation σ = 2C·σ₁(ε, δ)."""
        return None if self.clip is None else self.sensitivity * self.unit_sigma

    @property
    def seed(self) -> int:
        """The secret seed: the data party's alone; only its own checkpoint keeps it."""
        return self._seed

    def settings(self) -> dict:
        """The public facts of the mechanism: ε, δ, C and σ (C and σ None before the first
        perturb). None of them depends on the data."""
        return {"epsilon": self.epsilon, "delta": self.delta, "clip": self.clip,
                "sigma": self.sigma}

    def perturb(self, X, *, bound: float | None = None) -> np.ndarray:
        """Clip every row to norm ≤ C and add N(0, σ²) to every entry (a new array).

        ``bound``: clamp every noisy value into [−bound, bound] (the fixed-point plan's range,
        which large σ can leave: |x̃| ≤ C + 5σ). A clamp is post-processing, so the guarantee
        is untouched."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"perturb expects a 2-D array of rows, got shape {X.shape}")
        bad = np.argwhere(~np.isfinite(X))
        if bad.size:
            row, column = bad[0]
            raise ValueError(f"perturb: value {X[row, column]!r} in row {row}, column {column} "
                             "is not finite")
        if self.clip is None:
            self.clip = math.sqrt(X.shape[1])  # public: d only
        self.width = X.shape[1]  # d, for the sampler's tail_delta in describe()
        if not self.enabled:
            return X.copy()
        if self.tail_delta(X.shape[1]) > self.delta / 10:
            raise ValueError(f"epsilon {self.epsilon:g} is too large for this sampler: its noise "
                             f"(σ₁ = {self.unit_sigma:.3g}) is so small that the tails it cannot "
                             f"draw add {self.tail_delta(X.shape[1]):.2g} to δ = {self.delta:g}")
        clipped = clip_rows(X, self.clip)
        call_seed = int.from_bytes(hashlib.sha256(
            self._seed.to_bytes(SEED_BITS // 8, "big") + self.calls.to_bytes(8, "big")).digest(),
            "big")
        self.calls += 1
        noisy = clipped + gaussian_noise(X.size, self.sigma, call_seed).reshape(X.shape)
        return noisy if bound is None else np.clip(noisy, -bound, bound)

    def tail_delta(self, d: int) -> float:
        """What the sampler's finite tails add to δ, for rows of d features.

        Every draw lies within TAIL_BOUND·σ of the clipped row, in each coordinate. A neighbour
        moved by Δ (‖Δ‖₂ ≤ 2C) can put coordinate j where this row cannot only when its noise
        exceeds TAIL_BOUND − |Δ_j|/σ ≥ TAIL_BOUND − 2C/σ = TAIL_BOUND − 1/σ₁. Over d coordinates
        that event has probability at most d·P(N > TAIL_BOUND − 1/σ₁); outside it the two output
        densities are the Gaussian mechanism's. So the mechanism is (ε, δ + tail_delta)-DP.
        """
        if not self.enabled:
            return 0.0
        return d * gaussian_tail(TAIL_BOUND - 1.0 / self.unit_sigma)

    def compose(self, releases: int) -> float:
        """ε after ``releases`` perturbations of the same record at this δ (PLD accountant).
        The mechanism is meant to be applied once per record; this prices doing it again."""
        if not self.enabled:
            return math.inf
        accountant = dp_accounting.pld.PLDAccountant(
            dp_accounting.NeighboringRelation.REPLACE_ONE)
        # GaussianDpEvent's noise multiplier is σ over the sensitivity of ADD/REMOVE; under
        # REPLACE_ONE the accountant doubles the sensitivity, so pass σ / C = 2·σ₁.
        event = dp_accounting.GaussianDpEvent(2.0 * self.unit_sigma)
        accountant.compose(event, int(releases))
        return float(accountant.get_epsilon(self.delta))

    def describe(self) -> str:
        if not self.enabled:
            return "input perturbation off (ε = ∞): X is used as it is"
        clip = "√d" if self.clip is None else f"{self.clip:.4g}"
        sigma = "2C·σ₁" if self.sigma is None else f"{self.sigma:.4g}"
        tail = "" if self.width is None else (
            f" + {self.tail_delta(self.width):.1g} (the sampler's tails)")
        return (f"input perturbation: ({self.epsilon:g}, {self.delta:g}{tail})-DP per row under "
                f"replace-one; rows clipped to L2 norm ≤ C = {clip}, then N(0, σ²) per entry with "
                f"σ = 2C·{self.unit_sigma:.4g} = {sigma} (analytic Gaussian mechanism, "
                "dp_accounting), noise from a secret seed (secrets, SHAKE-256); standardisation statistics "
                "treated as public; ids, membership and labels not protected")
