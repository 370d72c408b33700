"""The six known flaws of production ACML implementations: re-created, caught, and attacked.

    python acml.py audit                   # the table: flaw, caught by, attack on flawed vs real
    python acml.py audit --json audit.json

For each flaw of :class:`flaws.InsecureFlaws` the audit

1. runs the protocol with that one flaw switched on and the channel in reporting mode
   (``Channel(mode="report")``), so that the flawed run completes;
2. collects what the leakage checks say: the channel's run-time findings, then
   :func:`audit_transcript` over the recorded messages — a run is *caught* when a finding names
   the flaw;
3. attacks the run as the curious party would, from that party's view only (:class:`PartyView`:
   the messages it received, its own state, and its own diary of that state, batch by batch);
4. runs the very same attack on the real protocol (same data, same configuration, no flaw), where
   it must do no better than a guess that never saw the view.

Scoring uses the simulation's ground truth (``Run.truth``), which no attack reads.

This is a teaching demo: it uses small Paillier keys (256 bits by default) and small datasets so
that it runs in seconds. The attacks do not depend on the key size.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np

from jobs import data
import nn
import paillier
import protocol
from attacks.leaks import separation_auc
from channel import DATA, LABEL, MASK_WIDTH_SLACK, Channel, Finding, Message, uniform_mask
from attacks.flaws import (FLOAT_MANTISSA_BITS, PHE_LOG2_BASE, SECURE, SEEDED_MASK_SEED_BITS,
                           InsecureFlaws, InsecureFlawWarning, IntervalMaskLabelParty,
                           party_classes)
from fixed import Fixed
from paillier import EncryptedArray
from parties import DataParty, LabelParty

DEFAULT_KEY_BITS = 256


def key_note(key_bits: int) -> str:
    secure = "" if key_bits >= paillier.RECOMMENDED_KEY_BITS else " (NOT secure)"
    return (f"a teaching demo: {key_bits}-bit Paillier keys{secure} and small datasets keep it "
            "fast; the attacks do not depend on the key size")
FLAW_NAMES = tuple(item.name for item in fields(InsecureFlaws))


# ----------------------------------------------------------------------------------------------
# The transcript audit: checks any party (or an auditor) can run over the recorded messages.
# ----------------------------------------------------------------------------------------------
def _centred(value: int, n: int) -> int:
    """A residue mod n read as a signed integer in (−n/2, n/2]; other integers unchanged."""
    value = int(value)
    return value - n if n // 2 < value < n else value


def _centred_bits(values, n: int) -> int:
    return max((abs(_centred(v, n)).bit_length() for v in np.asarray(values, dtype=object).ravel()),
               default=0)


def audit_transcript(messages: list[Message], public_key: paillier.PublicKey, *,
                     sigma: int = 40, private_key: paillier.PrivateKey | None = None
                     ) -> list[Finding]:
    """Check a recorded transcript for the six flaws' fingerprints; returns the findings.

    Needs only the messages and n. With the data party's ``private_key`` it also checks what the
    key owner sees once it decrypts — the data party auditing its own view.

    * a ciphertext c ≡ 1 (mod n) has no Paillier randomness (flaw 1);
    * a ciphertext with per-value exponents leaks magnitudes (flaw 4);
    * a masked payload (or a decrypted one, with the key) far narrower than its declared mask
      width, or a declared width below value + σ, is weakly masked (flaw 3) — and the first
      share W0 − ε_acc so narrow means ε_acc starts at zero or weak (flaw 2 or 3);
    * a plaintext array, or an undeclared ciphertext, reaching the data party (flaw 6).
    The seeded generator of flaw 5 leaves no fingerprint in a transcript; the channel catches it
    at setup, and :func:`attack_seeded_masks` exploits it.
    """
    n = public_key.n
    findings: list[Finding] = []

    def flag(m: Message, text: str, flaws: tuple) -> None:
        for finding in findings:
            if (finding.flaws, finding.step, finding.name) == (flaws, m.step, m.name):
                finding.count += 1
                return
        findings.append(Finding(flaws, m.step, m.name, m.sender, m.receiver,
                                f"transcript, step {m.step} message {m.name!r}: {text}"))

    for m in messages:
        payload = m.payload
        if isinstance(payload, EncryptedArray):
            if any(int(c) % n == 1 for c in payload.ciphertexts.ravel().tolist()):
                flag(m, "ciphertexts c ≡ 1 (mod n): no Paillier randomness, m = (c − 1)/n "
                        "(flaw: no_paillier_randomness)", ("no_paillier_randomness",))
            if getattr(payload, "exponents", None) is not None:
                flag(m, "per-value public exponents beside the ciphertexts: each value's "
                        "magnitude in the clear (flaw: public_exponents)", ("public_exponents",))
        if m.receiver == DATA and m.kind != "public":
            if isinstance(payload, np.ndarray):
                flag(m, "a plaintext array reaches the data party (flaw: "
                        "plaintext_input_gradient)", ("plaintext_input_gradient",))
            elif m.kind == "ciphertext" and not m.reason and m.mask_bits is None:
                flag(m, "the data party decrypts this and nothing says what it learns: an "
                        "undeclared plaintext (flaw: plaintext_input_gradient)",
                     ("plaintext_input_gradient",))
        if m.mask_bits is None or m.reason:
            continue
        if m.value_bits is not None and m.mask_bits < m.value_bits + sigma:
            flag(m, f"declared mask of {m.mask_bits} bits over {m.value_bits}-bit values: less "
                    f"than σ = {sigma} bits of margin (flaw: weak_masks)", ("weak_masks",))
        seen = None
        if m.kind == "masked" and isinstance(payload, np.ndarray):
            seen = _centred_bits(payload, n)
        elif m.kind == "ciphertext" and m.receiver == DATA and private_key is not None:
            seen = _centred_bits(private_key.decrypt_residues(payload), n)
        if seen is not None and seen + MASK_WIDTH_SLACK < m.mask_bits:
            suspects = ("zero_initial_noise", "weak_masks") if m.step == "0" else ("weak_masks",)
            cause = ("ε_acc starts at zero or is drawn weak (flaw: zero_initial_noise or "
                     "weak_masks)" if m.step == "0" else "a weak mask (flaw: weak_masks)")
            flag(m, f"what the receiver sees spans {seen} bits under a declared "
                    f"{m.mask_bits}-bit mask: {cause}", suspects)
    return findings


# ----------------------------------------------------------------------------------------------
# A run: the protocol, batch by batch, with each party keeping a diary of its own state.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """The data and configuration of one audited run (all public)."""

    dataset: str
    rows: int
    hidden: tuple
    batch_size: int
    epochs: int = 1
    max_batches: int | None = None
    lr: float = 0.1
    bottom: object = None
    seed: int = 0
    features: int | None = None  # keep the first d columns only (None: all)
    mask_range: str = "mod_n"  # the label party's ε_B, ε_B': "mod_n" or (INSECURE) "interval"
    # (flaws.IntervalMaskLabelParty)
    test_rows: int = 0  # held-out rows the run predicts at the end (accuracy, AUC)


@dataclass
class PartyView:
    """All one curious party has: what it received, its own object, and its own diary."""

    party: str
    messages: list[Message]
    own: object  # the DataParty or the LabelParty: its keys, shares, features or labels
    diary: list[dict]

    def received(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.name == name]


@dataclass
class Run:
    scenario: Scenario
    flaws: InsecureFlaws
    data_party: DataParty
    label_party: LabelParty
    channel: Channel
    diary: dict
    truth: dict  # ground truth for scoring: never read by an attack
    scaler: data.Standardizer

    def view(self, party: str) -> PartyView:
        own = self.data_party if party == DATA else self.label_party
        return PartyView(party, self.channel.view(party), own, self.diary[party])

    def findings(self) -> list[Finding]:
        """The channel's run-time findings, then the transcript audit's (with A's key)."""
        return self.channel.findings + audit_transcript(
            self.channel.messages, self.data_party.public_key, sigma=self.channel.sigma,
            private_key=self.data_party.private_key)

    def to_pixels(self, standardized_rows) -> np.ndarray:
        """Undo the standardisation: recovered rows back in the dataset's own units."""
        return np.asarray(standardized_rows) * self.scaler.std + self.scaler.mean


def load_rows(scenario: Scenario, *, test: bool = False):
    """A seeded subset of a built-in dataset, standardised: (X, y, scaler); with ``test``
    the scenario's held-out rows instead (disjoint, standardised with the same scaler)."""
    dataset = data.load_builtin(scenario.dataset)
    order = np.random.default_rng(scenario.seed).permutation(len(dataset.y))
    keep = np.sort(order[:scenario.rows])
    columns = slice(None) if scenario.features is None else slice(0, scenario.features)
    scaler = data.Standardizer().fit(dataset.X[keep][:, columns])
    if test:
        keep = np.sort(order[scenario.rows:scenario.rows + scenario.test_rows])
    return scaler.transform(dataset.X[keep][:, columns]), dataset.y[keep], scaler


def simulate(scenario: Scenario, flaws: InsecureFlaws = SECURE, *, keypair,
             data_party_class=None, label_party_class=None, **deviation) -> Run:
    """Run the protocol on ``scenario`` with ``flaws`` (the parties of flaws.party_classes, on
    ``data_party_class`` and ``label_party_class`` if given) and the channel in reporting mode.

    ``protocol.train_epoch`` runs it, with each party noting its own state before every batch
    (what a curious party would keep): the data party ε_acc, the label party its share W_B, its
    bias and, after the batch's step 1, z. The simulation also records the true W (``truth``).
    """
    X, y, scaler = load_rows(scenario)
    n_classes = int(y.max()) + 1
    inputs = X.shape[1] if scenario.bottom is None else (
        scenario.bottom if isinstance(scenario.bottom, int) else scenario.bottom[0])
    sizes = (inputs, *scenario.hidden, 1 if n_classes == 2 else n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureFlawWarning)
        if scenario.mask_range not in ("mod_n", "interval"):
            raise ValueError(f"mask_range must be 'mod_n' or 'interval', got "
                             f"{scenario.mask_range!r}")
        interval = scenario.mask_range == "interval"
        data_class, label_class = party_classes(
            flaws, data=data_party_class or DataParty,
            label=label_party_class or (IntervalMaskLabelParty if interval else LabelParty))
        data_party = data_class(X, keypair=keypair, init_seed=scenario.seed,
                                bottom=scenario.bottom, **deviation.get("data", {}))
        # Unpacked: one value per ciphertext, as in the implementations whose flaws these are,
        # so that each attack reads its values directly (packing changes the layout, not the
        # leaks).
        label_party = label_class(
            y, sizes, lr=scenario.lr, batch_size=scenario.batch_size, epochs=scenario.epochs,
            seed=scenario.seed, packing=False, allow_insecure=True,
            allow_bottom=scenario.bottom is not None, **deviation.get("label", {}))
    channel = Channel(data_party=data_party, label_party=label_party, mode="report",
                      keep_payloads=True)
    public = protocol.setup(channel)
    diary = {DATA: [], LABEL: []}
    truth = {"X": X, "y": y, "W": []}

    class Done(Exception):
        pass

    def before_batch(rows):
        if scenario.max_batches is not None and len(diary[DATA]) == scenario.max_batches:
            raise Done
        diary[DATA].append({"rows": rows, "noise_acc": data_party.noise_acc.values.copy()})
        diary[LABEL].append({"rows": rows, "weight_share": label_party.weight_share.values.copy(),
                             "bias": label_party.model.layers[0].b.copy()})
        truth["W"].append((label_party.weight_share + data_party.noise_acc).decode())

    def after_batch(rows):
        diary[LABEL][-1]["z"] = label_party.preactivation
        diary[LABEL][-1]["delta"] = label_party.own_delta()  # δ as B holds it (quantised)
        if data_party.input_gradients_received:  # step 4b: δ·Wᵀ as A decrypted it
            diary[DATA][-1]["input_gradient"] = data_party.input_gradients_received[-1]

    try:
        for epoch in range(scenario.epochs):
            protocol.train_epoch(channel, public, epoch, before_batch=before_batch,
                                 after_batch=after_batch)
    except Done:
        pass
    truth["W_final"] = (label_party.weight_share + data_party.noise_acc).decode()
    if scenario.test_rows:
        X_test, y_test, _ = load_rows(scenario, test=True)
        data_party.set_rows_to_predict(X_test)
        truth["X_test"] = X_test
        protocol.predict(channel, public)
        scores = label_party.predictions
        truth["test_accuracy"] = float(np.mean(label_party.classes() == y_test))
        truth["test_auc"] = nn.roc_auc(y_test, scores) if scores.ndim == 1 else float("nan")
    return Run(scenario, flaws, data_party, label_party, channel, diary, truth, scaler)


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------
def r_squared(estimate, truth) -> float:
    """1 − Σ(estimate − truth)² / Σ(truth − mean)²: 1 is exact, 0 is guessing the mean."""
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    total = np.sum((truth - truth.mean()) ** 2)
    return float(1.0 - np.sum((estimate - truth) ** 2) / total)


def _ranks(values) -> np.ndarray:
    """Ranks 0..n−1, ties given their average rank."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse = np.unique(values, return_inverse=True)
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def rank_correlation(a, b) -> float:
    """Spearman's ρ (Pearson on average ranks); 0 when either side is constant."""
    a, b = _ranks(a), _ranks(b)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class AttackOutcome:
    """What one attack got: its metric, and the estimate beside the truth (for pictures)."""

    metric: str
    value: float
    details: dict = field(default_factory=dict)
    estimate: np.ndarray | None = None
    truth: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------
# The attacks. Each reads ONE party's view (PartyView) and returns an estimate; the scorer beside
# it compares that estimate with the simulation's truth.
# ----------------------------------------------------------------------------------------------
def attack_read_without_key(view: PartyView) -> np.ndarray:
    """Flaw 1, by the label party (anyone who knows n): X = (c − 1)/n, read off [[X]].

    Without r^n, c = 1 + m·n mod n², so (c − 1)/n is the fixed-point X itself. With real
    randomness the quotient is noise far beyond the public bound |X| < 2**x_int_bits; the attacker
    then knows nothing better than the mean, 0 for standardised data.
    """
    encrypted = view.received("[[X]]")[0].payload
    n, plan = encrypted.public_key.n, view.own.plan
    values = np.array([[_centred((int(c) - 1) // n, n) / 2.0 ** encrypted.scale for c in row]
                       for row in encrypted.ciphertexts.tolist()])
    return np.where(np.abs(values) < 2.0 ** plan.x_int_bits, values, 0.0)


def attack_invert_first_layer(view: PartyView) -> tuple[np.ndarray, np.ndarray]:
    """Flaw 2, by the label party: X = (z − b)·W_B⁺ on the first batch.

    With ε_acc = 0 the label party's first share W_B is the true W, and z = X·W + b; when the
    layer is at least as wide as the input (h ≥ d) W has a left inverse, and the batch's rows of X
    come out exactly. With a real ε_acc, W_B = W − ε_acc is noise σ bits wider than W, and the
    same algebra returns ≈ 0. Returns (the batch's row indices, the rows recovered).
    """
    first = view.diary[0]
    share = Fixed.from_ints(first["weight_share"], view.own.plan.w_frac_bits).decode()
    return first["rows"], (first["z"] - first["bias"]) @ np.linalg.pinv(share)


def _data_party_products(view: PartyView, unmask) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X_t, V_t) per batch, with V_t = unmask(step-1 residues) + X_t·ε_acc,t read as reals."""
    own, pairs = view.own, []
    n = own.public_key.n
    for message, entry in zip(view.received("[[X·W_B + ε_B]]"), view.diary):
        features = own.features[entry["rows"]]
        residues = unmask(message)
        own_part = (features @ Fixed.from_ints(entry["noise_acc"],
                                                        own.plan.w_frac_bits)).values
        product = [[_centred((int(r) + int(o)) % n, n) / 2.0 ** message.payload.scale
                    for r, o in zip(row_r, row_o)]
                   for row_r, row_o in zip(residues.tolist(), own_part.tolist())]
        pairs.append((features.decode(), np.array(product)))
    return pairs


def _fit_weight(pairs, plan) -> np.ndarray:
    """Least squares W from V_t ≈ X_t·W, pooled over batches; 0 if beyond the public bound."""
    features = np.vstack([x for x, _ in pairs])
    products = np.vstack([v for _, v in pairs])
    weight = np.linalg.lstsq(features, products, rcond=None)[0]
    if not np.all(np.isfinite(weight)) or np.abs(weight).max() >= 2.0 ** plan.weight_int_bits:
        return np.zeros_like(weight)
    return weight


def attack_weak_masks(view: PartyView) -> np.ndarray:
    """Flaw 3, by the data party: regress the true first-layer W from its weakly masked view.

    In step 1 the data party decrypts U = X·W_B + ε_B and sends V = U + X·ε_acc = X·W + ε_B. With
    ε_B from U[−1024, 1024] (or N(0, 1) in z's units), V is X·W plus small noise, and least
    squares over the batches' rows returns W — which no party may hold. With the real ε_B,
    uniform mod n, V is a uniform residue: the fit falls outside the public bound on W, and the
    attacker is left with 0.
    """
    own = view.own
    return _fit_weight(_data_party_products(
        view, lambda m: own.private_key.decrypt_residues(m.payload)), own.plan)


def find_mask_seed(view: PartyView, seed_bits: int = SEEDED_MASK_SEED_BITS):
    """Flaw 5's first move, by the data party: search the label party's mask seed.

    The first masked ciphertext from B decrypts to v + ε with |v| < 2**value_bits (declared) and
    ε = getrandbits(mask_bits + 1) − 2**mask_bits, the first draw of B's generator. A seed is
    right when it makes the first value small; the second value confirms it. None if no seed is.
    """
    own = view.own
    n = own.public_key.n
    first = next(m for m in view.messages if m.kind == "ciphertext" and m.mask_bits is not None)
    residues = own.private_key.decrypt_residues(first.payload[:1, :2]).ravel().tolist()
    offset, limit = 1 << first.mask_bits, 1 << first.value_bits
    for seed in range(1 << seed_bits):
        generator = random.Random(seed)
        if all(abs(_centred((int(r) - (generator.getrandbits(first.mask_bits + 1) - offset)) % n,
                            n)) < limit for r in residues):
            return seed
    return None


def attack_seeded_masks(view: PartyView) -> tuple[list[np.ndarray], int | None]:
    """Flaw 5, by the data party: find B's seed, replay every mask B drew, unmask, solve W.

    The label party draws one fresh mask per value of every masked ciphertext it sends, in order;
    with the seed, the data party regenerates them all and reads X·W_B and Xᵀδ exactly. Here it
    turns each batch's step-1 product into that batch's W_t, exactly. Without a seeded generator
    no seed fits, and the attacker is left with 0. Returns (W_t per batch, the seed or None).
    """
    own = view.own
    seed = find_mask_seed(view)
    if seed is None:
        return [np.zeros((own.n_inputs, own.training.n_hidden))] * len(view.diary), None
    generator, n = random.Random(seed), own.public_key.n
    unmasked = {}
    for message in view.messages:
        if message.kind == "ciphertext" and message.mask_bits is not None:
            masks = uniform_mask(message.payload.shape, message.mask_bits, generator)
            residues = own.private_key.decrypt_residues(message.payload)
            unmasked[id(message)] = np.asarray((residues - masks) % n, dtype=object)
    pairs = _data_party_products(view, lambda m: unmasked[id(m)])
    return [_fit_weight([pair], own.plan) for pair in pairs], seed


LOG2_MAGNITUDE_OFFSET = FLOAT_MANTISSA_BITS + 1  # |v| ∈ [2**(4e+52), 2**(4e+56))


def attack_exponent_magnitudes(view: PartyView) -> np.ndarray:
    """Flaw 4, by the label party: log2|x| of every value of X, from [[X]]'s public exponents.

    A phe-style exponent e pins |x| to [2**(4e + 52), 2**(4e + 56)); the estimate is the middle,
    4e + 54. Without exponents, all the label party has per value is the ciphertext itself, so it
    tries log2(c) — a number that has nothing to do with x.
    """
    encrypted = view.received("[[X]]")[0].payload
    exponents = getattr(encrypted, "exponents", None)
    if exponents is not None:
        return PHE_LOG2_BASE * exponents.astype(float) + LOG2_MAGNITUDE_OFFSET
    return np.array([[math.log2(int(c)) for c in row] for row in encrypted.ciphertexts.tolist()])


def attack_labels_from_gradients(view: PartyView) -> tuple[np.ndarray, dict]:
    """Flaw 6, by the data party: split the rows by label from the input gradients ∂L/∂α = δ·Wᵀ.

    Row i's gradient is (p_i − y_i)/m · u_i, where u_i = (w_top ⊙ act'(z_i))·Wᵀ points roughly the
    same way for every row, and the sign of (p − y) — that is, the label — flips it. Project every
    row, normalised, on the dominant direction (the top right singular vector): the two signs are
    the two classes. A second score is the row norm |p − y|·|u_i|. Which group is which class is
    not in the view (it takes one known label); the scorer therefore reports the separation,
    max(AUC, 1 − AUC), for every run alike.
    Without any input gradient (the real protocol without a bottom model), the only per-row values
    the data party holds are the step-1 plaintexts it decrypts, U = X·W_B + ε_B: it tries those.
    Returns (per-row scores over every batch, {"rows", "norm_scores"}).
    """
    own, n = view.own, view.own.public_key.n
    messages = view.received("[[δ·Wᵀ]]") or view.received("[[X·W_B + ε_B]]")
    blocks, rows = [], []
    for message, entry in zip(messages, view.diary):
        residues = own.private_key.decrypt_residues(message.payload)
        blocks.append(np.array([[float(_centred(r, n)) for r in row] for row in residues.tolist()]))
        rows.append(entry["rows"])
    gradients, rows = np.vstack(blocks), np.concatenate(rows)
    norms = np.linalg.norm(gradients, axis=1)
    unit = gradients / np.where(norms > 0, norms, 1.0)[:, None]
    direction = np.linalg.svd(unit, full_matrices=False)[2][0]
    return unit @ direction, {"rows": rows, "norm_scores": norms}


# ----------------------------------------------------------------------------------------------
# The audit: one scenario per flaw, its checks, its attack on the flawed and on the real run.
# ----------------------------------------------------------------------------------------------
DIGITS = Scenario("digits", rows=32, hidden=(64,), batch_size=16, max_batches=1)
MASKS = Scenario("universal_bank", rows=512, hidden=(4,), batch_size=128, epochs=1)
GRADIENTS = Scenario("breast_cancer", rows=256, hidden=(4,), batch_size=32, epochs=2,
                     bottom=(8, "relu"))

SCENARIO_NOTES = {
    "digits": "digits (8×8 images): 32 rows, interactive layer 64 wide (h ≥ d = 64, so W "
              "is invertible), one batch of 16",
    "universal_bank": "UniversalBank: 512 rows, 11 features, h = 4, 4 batches of 128",
    "breast_cancer": "breast cancer: 256 rows, bottom model 30 → 8 (ReLU), h = 4, 2 epochs of "
                     "batches of 32",
}


@dataclass
class FlawAudit:
    """One row of the audit table."""

    flaw: str
    title: str
    scenario: str
    caught: bool
    check_message: str
    threshold: str
    flawed: AttackOutcome
    real: AttackOutcome
    succeeds_on_flawed: bool
    fails_on_real: bool
    declared_leak: AttackOutcome | None = None
    findings: list = field(default_factory=list)
    flawed_run: Run | None = None  # for pictures: flawed_run.to_pixels(flawed.estimate)

    def to_json(self) -> dict:
        out = {"flaw": self.flaw, "title": self.title, "scenario": self.scenario,
               "caught": self.caught, "check": self.check_message,
               "metric": self.flawed.metric, "threshold": self.threshold,
               "attack_on_flawed": self.flawed.value, "attack_on_real": self.real.value,
               "attack_succeeds_on_flawed": self.succeeds_on_flawed,
               "attack_fails_on_real": self.fails_on_real,
               "details_flawed": json_details(self.flawed.details),
               "details_real": json_details(self.real.details)}
        if self.declared_leak is not None:
            out["attack_on_real_with_bottom_model"] = self.declared_leak.value
            out["note"] = ("with a bottom model the real protocol reveals δ·Wᵀ to the data party "
                           "too: a declared leak (step 4b), not a flaw it hides")
        return out


def json_details(details: dict) -> dict:
    """An attack's details as JSON can hold them: numpy scalars as Python numbers, arrays
    (the estimates themselves) left out."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in details.items()
            if not isinstance(v, np.ndarray)}


def _score_weight(run: Run, weights, details: dict) -> AttackOutcome:
    """Score a recovered first-layer W (one for the run, or one per batch) by what it computes:
    X·W on every batch's rows — z − b, the pre-activation only the label party may learn —
    against the true X·W_t of each batch. The R² of W itself is a detail."""
    X, true_weights = run.truth["X"], run.truth["W"]
    if not isinstance(weights, list):
        weights = [weights] * len(true_weights)
    rows = [entry["rows"] for entry in run.diary[DATA]]
    truth = np.vstack([X[r] @ w for r, w in zip(rows, true_weights)])
    estimate = np.vstack([X[r] @ w for r, w in zip(rows, weights)])
    details = {**details, "r2_of_W": r_squared(np.array(weights), np.array(true_weights))}
    return AttackOutcome("R² of X·W (z − b) on the training rows, from the W the data party "
                         "recovered", r_squared(estimate, truth), details, np.array(weights),
                         np.array(true_weights))


def _caught(run: Run, flaw: str) -> tuple[bool, str, list]:
    findings = run.findings()
    naming = [f for f in findings if flaw in f.flaws]
    return bool(naming), (naming[0].message if naming else "no check fired"), findings


class Auditor:
    """Runs the six audits with one key pair, sharing the real runs between flaws."""

    def __init__(self, keypair=None, key_bits: int = DEFAULT_KEY_BITS):
        if keypair is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
                keypair = paillier.generate_keypair(key_bits, allow_insecure=True)
        self.keypair = keypair
        self._real: dict[Scenario, Run] = {}

    def real(self, scenario: Scenario) -> Run:
        if scenario not in self._real:
            self._real[scenario] = simulate(scenario, keypair=self.keypair)
        return self._real[scenario]

    def flawed(self, scenario: Scenario, **switch) -> Run:
        return simulate(scenario, InsecureFlaws(**switch), keypair=self.keypair)

    # one method per flaw ------------------------------------------------------------------
    def no_paillier_randomness(self) -> FlawAudit:
        def attack(run):
            estimate, truth = attack_read_without_key(run.view(LABEL)), run.truth["X"]
            return AttackOutcome("R² of X read from [[X]] by the label party",
                                 r_squared(estimate, truth),
                                 {"max_abs_error": float(np.abs(estimate - truth).max())},
                                 estimate, truth)
        flawed, real = self.flawed(DIGITS, no_paillier_randomness=True), self.real(DIGITS)
        return self._audit("no_paillier_randomness", "no Paillier randomness (EFLS v1)",
                           flawed, attack(flawed), attack(real),
                           "R² > 0.999 on the flawed run; R² < 0.05 (the mean's 0) on the real",
                           lambda v: v > 0.999, lambda v: v < 0.05)

    def zero_initial_noise(self) -> FlawAudit:
        def attack(run):
            rows, estimate = attack_invert_first_layer(run.view(LABEL))
            truth = run.truth["X"][rows]
            return AttackOutcome("R² of the first batch's rows of X, from z and W_B",
                                 r_squared(estimate, truth),
                                 {"max_abs_error": float(np.abs(estimate - truth).max()),
                                  "rows": rows}, estimate, truth)
        flawed, real = self.flawed(DIGITS, zero_initial_noise=True), self.real(DIGITS)
        return self._audit("zero_initial_noise", "ε_acc starts at zero (FATE #2364, EFLS v2)",
                           flawed, attack(flawed), attack(real),
                           "R² > 0.999 on the flawed run; R² < 0.05 on the real",
                           lambda v: v > 0.999, lambda v: v < 0.05)

    def weak_masks(self, kind: str = "uniform1024", other: str | None = "normal") -> FlawAudit:
        """The ``kind`` variant makes the row; the ``other`` one is run too, as a detail."""
        def attack(run, mask):
            return _score_weight(run, attack_weak_masks(run.view(DATA)), {"mask": mask})
        flawed, real = self.flawed(MASKS, weak_masks=kind), self.real(MASKS)
        outcome = self._audit("weak_masks", f"weak masks: {kind} (FATE U[−1024, 1024]; EFLS v2 "
                              "N(0, 1))", flawed, attack(flawed, kind), attack(real, None),
                              "R² > 0.9 on the flawed run; R² < 0.05 on the real",
                              lambda v: v > 0.9, lambda v: v < 0.05)
        if other is not None:
            variant = attack(self.flawed(MASKS, weak_masks=other), other)
            outcome.flawed.details[f"r2_with_{other}_masks"] = variant.value
        return outcome

    def public_exponents(self) -> FlawAudit:
        def attack(run):
            estimate = attack_exponent_magnitudes(run.view(LABEL))
            values = run.truth["X"]
            nonzero = values != 0
            truth = np.log2(np.abs(values[nonzero]))
            inside = np.abs(estimate[nonzero] - truth) <= PHE_LOG2_BASE / 2
            return AttackOutcome("rank correlation (Spearman) of estimated and true log2|x| over "
                                 "X's nonzero values", rank_correlation(estimate[nonzero], truth),
                                 {"values": int(nonzero.sum()),
                                  "share_within_the_stated_factor_of_16": float(inside.mean())},
                                 estimate[nonzero], truth)
        flawed, real = self.flawed(DIGITS, public_exponents=True), self.real(DIGITS)
        return self._audit("public_exponents", "per-value public exponents (phe-style; FATE, "
                           "EFLS v2)", flawed, attack(flawed), attack(real),
                           "ρ > 0.75 on the flawed run (base-16 buckets tie many values); "
                           "|ρ| < 0.2 on the real", lambda v: v > 0.75, lambda v: abs(v) < 0.2)

    def seeded_mask_rng(self) -> FlawAudit:
        def attack(run):
            estimate, seed = attack_seeded_masks(run.view(DATA))
            return _score_weight(run, estimate, {"seed_found": seed})
        flawed, real = self.flawed(MASKS, seeded_mask_rng=True), self.real(MASKS)
        outcome = self._audit("seeded_mask_rng", "masks from a seeded non-cryptographic RNG "
                              "(FATE's np.random)", flawed, attack(flawed), attack(real),
                              "R² > 0.999 and the seed found on the flawed run; R² < 0.05 and "
                              "no seed on the real", lambda v: v > 0.999, lambda v: v < 0.05)
        outcome.flawed.details["true_seed"] = flawed.label_party.mask_source.seed
        outcome.succeeds_on_flawed &= (outcome.flawed.details["seed_found"]
                                       == outcome.flawed.details["true_seed"])
        outcome.fails_on_real &= outcome.real.details["seed_found"] is None
        return outcome

    def plaintext_input_gradient(self) -> FlawAudit:
        def attack(run):
            scores, extra = attack_labels_from_gradients(run.view(DATA))
            labels = run.truth["y"][extra["rows"]]
            return AttackOutcome("separation AUC, max(AUC, 1 − AUC), of the labels from the "
                                 "data party's per-row view", separation_auc(labels, scores),
                                 {"norm_auc": separation_auc(labels, extra["norm_scores"]),
                                  "rows_scored": int(len(labels))}, scores, labels)
        without_bottom = replace(GRADIENTS, bottom=None)
        flawed = self.flawed(GRADIENTS, plaintext_input_gradient=True)
        outcome = self._audit("plaintext_input_gradient", "plaintext input gradient δ·Wᵀ to the "
                              "data party (FATE #2915)", flawed, attack(flawed),
                              attack(self.real(without_bottom)),
                              "AUC > 0.9 on the flawed run; AUC < 0.65 (chance: 0.5 plus the "
                              "max's bias) on the real protocol, which has no bottom model and "
                              "so no input gradient", lambda v: v > 0.9, lambda v: v < 0.65)
        outcome.declared_leak = attack(self.real(GRADIENTS))
        return outcome

    def _audit(self, flaw, title, flawed_run, flawed, real, threshold, succeeds, fails):
        caught, message, findings = _caught(flawed_run, flaw)
        return FlawAudit(flaw, title, SCENARIO_NOTES[flawed_run.scenario.dataset], caught,
                         message, threshold, flawed, real, bool(succeeds(flawed.value)),
                         bool(fails(real.value)), findings=findings, flawed_run=flawed_run)

    def all(self) -> list[FlawAudit]:
        return [getattr(self, name)() for name in FLAW_NAMES]


def run_audit(keypair=None, key_bits: int = DEFAULT_KEY_BITS) -> list[FlawAudit]:
    """All six audits, in the order of InsecureFlaws."""
    return Auditor(keypair, key_bits).all()


def format_table(audits: list[FlawAudit], key_bits: int) -> str:
    lines = [f"ACML audit of the six known flaws — {key_note(key_bits)}.", ""]
    header = f"{'#':<3}{'flaw':<27}{'caught':<8}{'attack on flawed':<20}{'attack on real':<20}"
    lines += [header, "-" * len(header)]
    for number, row in enumerate(audits, start=1):
        def mark(value, ok):
            return f"{value:.4f} {'✓' if ok else '✗'}"
        lines.append(f"{number:<3}{row.flaw:<27}{'yes' if row.caught else 'NO':<8}"
                     f"{mark(row.flawed.value, row.succeeds_on_flawed):<20}"
                     f"{mark(row.real.value, row.fails_on_real):<20}")
    lines.append("")
    for number, row in enumerate(audits, start=1):
        lines.append(f"{number}. {row.title}")
        lines.append(f"   data:    {row.scenario}")
        lines.append(f"   check:   {row.check_message}")
        lines.append(f"   attack:  {row.flawed.metric}; success means {row.threshold}")
        extra = {k: v for k, v in json_details(row.flawed.details).items() if k != "rows"}
        if extra:
            lines.append(f"   details: flawed {extra}; real {json_details(row.real.details)}")
        if row.declared_leak is not None:
            lines.append(f"   declared leak: the real protocol WITH a bottom model gives the data "
                         f"party δ·Wᵀ too (step 4b): AUC {row.declared_leak.value:.4f} "
                         f"(norm AUC {row.declared_leak.details['norm_auc']:.4f}) — documented, "
                         "not hidden")
    return "\n".join(lines)
