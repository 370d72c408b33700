"""The protocol's OWN leaks, attacked on the real protocol: no flaw switched on.

audit.py re-creates six flaws of other implementations; this module audits this protocol as it
is. Each attack reads one curious party's own view of a real run (its diary, its messages, its
own object), or is that party deviating from the script, and each mitigation is measured with
its price (`python acml.py audit` prints both tables):

* L1 (label party, semi-honest): the column space of z across two epochs gives X from d + 2
  known rows (X·Xᵀ without any). No noise on W can stop it; the mitigation measured is input
  perturbation with (ε, δ)-DP (privacy/input_perturbation.py), as a privacy/utility curve.
* L2 (label party, malicious): multiplying by W_B + 2^k·E reads X exactly. No cheap check.
* L3 (data party, malicious): masks uniform only on an interval leak W_B to crafted
  plaintexts. Mitigation: masks uniform mod n (the default).
* L4 (data party, semi-honest, with a bottom model): labels from δ·Wᵀ.
* L5 (label party, semi-honest): prediction gives it z_new = X_new·W + b of every row it
  scores, so X_new = (z_new − b)·W⁺ wherever it learns W's row space: from d + 2 predicted rows
  it already knows (least squares), from its training view alone (L1's X, then W from z and its
  own δ), or from W itself after an export.

The plain-array attacks themselves are in leaks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from attacks import leaks
import protocol
from attacks.audit import (DEFAULT_KEY_BITS, GRADIENTS, Auditor, Run, Scenario, json_details,
                           simulate)
from channel import DATA, LABEL
from fixed import Fixed
from paillier import EncryptedArray
from parties import DataParty, LabelParty
from plan import weight_share_bits

# ==============================================================================================

SEMI_HONEST, MALICIOUS = "semi-honest", "malicious"

GRAM = Scenario("breast_cancer", rows=48, hidden=(8,), batch_size=16, epochs=8, features=8,
                test_rows=200)
EXACT = Scenario("breast_cancer", rows=48, hidden=(8,), batch_size=16, epochs=4)
PREDICT = Scenario("breast_cancer", rows=48, hidden=(4,), batch_size=16, epochs=1, features=4)
GRAM_EPOCHS = (2, 3, 4, 5, 6, 8)
GRAM_KNOWN_ROWS = 10  # rows of X the label party already knows (public records, its customers)
L1_SUCCEEDS_ABOVE = 0.99  # R² of X over the rows B did not know
L1_FAILS_BELOW = 0.5  # R² (against the TRUE X) below which the mitigation holds
L2_SHIFT_SLACK_BITS = 2
L3_TAIL = 16  # large multipliers after the geometric part of the chain
L3_CHAIN = 192  # multipliers in the crafted prediction message (rows of [[X_new]])
PREDICTED = replace(GRAM, epochs=2, test_rows=120)  # L5: 2 epochs (L1's), then 120 rows scored
L5_SUCCEEDS_ABOVE = 0.99  # R² of X_new over the predicted rows B did not know


def label_view(run: Run, epochs: int | None = None) -> leaks.LabelPartyView:
    """The label party's own record as leaks.LabelPartyView: per batch, the rows (public), z,
    its bias and its δ (quantised, as it holds it), and the public snapped η."""
    per_epoch = -(-run.scenario.rows // run.scenario.batch_size)
    entries = run.diary[LABEL][:None if epochs is None else epochs * per_epoch]
    lr = run.label_party.plan.snap_lr(run.scenario.lr)
    return leaks.LabelPartyView.from_arrays(
        run.scenario.rows, [e["rows"] for e in entries], [e["z"] for e in entries],
        [e["bias"] for e in entries], [e["delta"] for e in entries], lr)


def attack_gram(run: Run, epochs: int, known_rows: int = GRAM_KNOWN_ROWS) -> dict:
    """The old L1 estimator, kept for comparison: X·Xᵀ by least squares on z across epochs (it
    needs n·h·(E − 1) ≥ n(n+1)/2), then X from ``known_rows`` rows (orthogonal Procrustes).
    Scored against the features the data party encoded (truth), which the attack never reads."""
    result = leaks.gram_attack(label_view(run, epochs), allow_underdetermined=True)
    X = run.data_party.features.decode()  # ground truth: X as the protocol computes with it
    truth = X @ X.T
    row = {"epochs": epochs, "n_equations": result.n_equations, "n_unknowns": result.n_unknowns,
           "determined": result.determined, "reason": result.reason}
    if not result.determined:
        return {**row, "relative_error": None, "relative_error_projected": None, "r2_of_X": None}
    known = np.random.default_rng([run.scenario.seed, 0x0C0]).permutation(len(X))[:known_rows]
    rest = np.setdiff1d(np.arange(len(X)), known)
    estimate = leaks.complete_from_known_rows(result.G, known, X[known])
    projected = leaks.project_gram(result.G, X.shape[1])
    return {**row, "relative_error": leaks.relative_error(result.G, truth),
            "relative_error_projected": leaks.relative_error(projected, truth),
            "known_rows": known_rows, "r2_of_X": leaks.r_squared(estimate[rest], X[rest])}


def attack_column_space(run: Run, epochs: int, known_rows: int | None = None) -> dict:
    """L1 from the label party's view of the real run: the column-space attack after ``epochs``
    epochs, X from ``known_rows`` rows it already knows (default d + 2), and X·Xᵀ without any.
    Scored against X_q, the features the data party encoded (z − b = X_q·W exactly)."""
    X = run.data_party.features.decode()  # ground truth, never read by the attack
    n, d = X.shape
    known_rows = d + 2 if known_rows is None else int(known_rows)
    known = np.random.default_rng([run.scenario.seed, 0x0C0]).permutation(n)[:known_rows]
    rest = np.setdiff1d(np.arange(n), known)
    result = leaks.column_space_attack(label_view(run, epochs), d, known_rows=known,
                                       X_known=X[known])
    return {"epochs": epochs, "known_rows": known_rows, "determined": result.determined,
            "reason": result.reason, "null_dimension": result.null_dimension,
            "r2_of_X": leaks.r_squared(result.X[rest], X[rest]),
            "gram_relative_error_without_known_rows": (
                leaks.relative_error(result.G, X @ X.T) if result.G is not None else None)}


def attack_prediction(run: Run, known_rows: int | None = None) -> dict:
    """L5 from the label party's view of a real run that trained and then predicted: its own z
    of the predicted rows (z_new = preactivation − b, both its own) gives X_new three ways.

    (a) ``known_rows`` predicted rows it already knows (default d + 2): M = argmin ‖(z_K − b)·M −
        X_K‖ by least squares, then X̂_new = (z_new − b)·M; with h ≥ d, M = W⁺ exactly.
    (b) its training view alone: L1's column-space attack (d + 2 known TRAINING rows, as L1)
        gives X̂ of the training rows; the last batch's z_t − b_t = X_t·W_t gives Ŵ_t, and its own
        δ_t and the public η the update: Ŵ = Ŵ_t − η·X̂_tᵀ·δ_t, the W the prediction used; then
        X̂_new = (z_new − b)·Ŵ⁺.
    (c) after ``export`` (W in model.npz): X̂_new = (z_new − b)·W⁺.
    Scored against the rows the data party predicted (truth), which no attack reads."""
    X_new = run.truth["X_test"]  # ground truth, never read by the attacks
    label = run.label_party
    z_new = label.preactivation - label.model.layers[0].b  # its own: z + b and b
    m, d = X_new.shape
    known_rows = d + 2 if known_rows is None else int(known_rows)
    known = np.random.default_rng([run.scenario.seed, 0x0C5]).permutation(m)[:known_rows]
    rest = np.setdiff1d(np.arange(m), known)
    M, *_ = np.linalg.lstsq(z_new[known], X_new[known], rcond=None)
    from_known = leaks.r_squared((z_new @ M)[rest], X_new[rest])
    X = run.data_party.features.decode()  # the training rows: truth for L1's known rows only
    known_train = np.random.default_rng([run.scenario.seed, 0x0C0]).permutation(len(X))[:d + 2]
    training = leaks.column_space_attack(label_view(run), d, known_rows=known_train,
                                         X_known=X[known_train])
    X_train = training.X
    last = run.diary[LABEL][-1]
    rows = np.asarray(last["rows"])
    W_t, *_ = np.linalg.lstsq(X_train[rows], last["z"] - last["bias"], rcond=None)
    W_hat = W_t - label.plan.snap_lr(run.scenario.lr) * X_train[rows].T @ last["delta"]
    from_training = (leaks.r_squared(z_new @ np.linalg.pinv(W_hat), X_new)
                     if training.determined else None)
    from_export = leaks.r_squared(z_new @ np.linalg.pinv(run.truth["W_final"]), X_new)
    return {"predicted_rows": int(m), "known_predicted_rows": known_rows,
            "r2_from_known_predicted_rows": from_known,
            "r2_from_training_view": from_training, "r2_from_exported_W": from_export,
            "training_view_r2_of_X": leaks.r_squared(X_train, X) if training.determined else None}


class SelectingLabelParty(LabelParty):
    """INSECURE deviation (leak L2), a label party that does not follow the script.

    In step 1 it multiplies [[X]] by W_B + 2**k·E instead of W_B, E a 0/1 matrix selecting one
    feature per hidden unit (a different feature each batch, in turn). What it unmasks is then
    z' = z + 2**k·X_E, and as |z| < 2**(k − 1) it splits the two exactly: X_E = round(z'/2**k),
    z = z' − 2**k·X_E. It trains on z, so every weight stays that of an honest run, and nothing
    it sends differs in shape, kind or width: the channel sees nothing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: dict[tuple[int, int], int] = {}  # (row, feature) -> X_int read exactly
        self._batch_rows = None
        self._selected: list[int] = []
        self._batches_seen = 0

    def select_rows(self, rows) -> None:
        super().select_rows(rows)
        self._batch_rows = np.asarray(rows)

    def _shift(self) -> int:
        plan, d = self.plan, self.layer_sizes[0]
        return (plan.x_int_bits + plan.x_frac_bits + plan.weight_bits
                + max(1, math.ceil(math.log2(d))) + L2_SHIFT_SLACK_BITS)

    def masked_product(self, n_rows: int) -> EncryptedArray:
        d, h = self.layer_sizes[0], self.layer_sizes[1]
        self._selected = [(self._batches_seen * h + k) % d for k in range(h)]
        self._batches_seen += 1
        E = np.zeros((d, h), dtype=object)
        for k, feature in enumerate(self._selected):
            E[feature, k] = 1 << self._shift()
        deviant = Fixed(self.weight_share.values + E, self.weight_share.scale)
        inputs = self.batch_inputs
        self.forward_mask = self.draw_mask((inputs.shape[0], deviant.shape[1]),
                                           inputs.scale + deviant.scale)
        return self.engine.masked_matmul(inputs, deviant, self.forward_mask)

    def unmask_preactivation(self, noisy: np.ndarray, n_rows: int) -> None:
        z_int = self.unmask(noisy, self.forward_mask)
        self.forward_mask = None
        shift = 1 << self._shift()
        read = np.vectorize(lambda v: (int(v) + shift // 2) // shift, otypes=[object])(z_int)
        z_int = z_int - read * shift
        for position, row in enumerate(self._batch_rows):
            for k, feature in enumerate(self._selected):
                self.read[(int(row), feature)] = int(read[position, k])
        z = Fixed.from_ints(z_int, self.plan.z_frac_bits).decode()
        self.preactivation = z + self.model.layers[0].b


class MultiplierDataParty(DataParty):
    """INSECURE deviation (leak L3), a data party that does not follow the script.

    Asked to predict, it encrypts crafted plaintexts under its own key instead of its rows —
    row (j, i) holds the multiplier t_i in column j and 0 elsewhere, t_{i+1} ≈ t_i·(n − ℓ)/ℓ for
    ε_B's width ℓ, then a few large ones — which the
    label party cannot range-check. It decrypts U = t_i·W_B[j, :] + ε_B and intersects, per
    weight, the sets {w : t_i·w ∈ U − range(ε_B) mod n}: with ε_B on an interval of n/6 to n/3
    each ciphertext keeps about a third of the candidates, and the chain pins W_B[j, k] exactly;
    with ε_B uniform in Z_n every residue is possible and nothing is learned. It answers with
    U − t·Ŵ_B, so the label party sees z = 0 (and b) when Ŵ_B is right.
    """

    def __init__(self, *args, multipliers: int = 0, target_features=(0,), **kwargs):
        super().__init__(*args, **kwargs)
        self.chain_length = int(multipliers)
        self.target_features = tuple(target_features)
        self.recovered: dict = {}  # (feature, unit) -> W_B entry, or None if not pinned down
        self.ciphertexts_needed: dict = {}  # (feature, unit) -> multipliers until exact
        self._crafted = None

    def _chain(self):
        bound = 1 << (weight_share_bits(self.plan, self.training.batch_size, self.training.lr) + 1)
        n = self.public_key.n
        # t_{i+1} = ⌊t_i·(n − ℓ)/ℓ⌋, ℓ = width(ε_B): a candidate interval's image then spans at
        # most n − ℓ, so the arc U − ε_B cuts it into one piece, about ℓ/(n − ℓ) of it
        width = 2 << self.public.mask_bits
        chain, t = [], max(1, n // (2 * bound))
        while len(chain) < self.chain_length and t <= self.public_key.max_int:
            chain.append(t)
            t = max(t + 1, t * (n - width) // width)
        # then a tail of large distinct multipliers: each keeps about 1/r of the few
        # candidates left, wherever they are
        for i in range(1, L3_TAIL + 1):
            if len(chain) < self.chain_length:
                chain.append(self.public_key.max_int - 7 * i)
        return chain, bound

    def prediction_count(self) -> int:
        if not self.chain_length:
            return super().prediction_count()
        return len(self.target_features) * len(self._chain()[0])

    def encrypt_rows_to_predict(self) -> EncryptedArray:
        if not self.chain_length:
            return super().encrypt_rows_to_predict()
        chain, _ = self._chain()
        rows = np.zeros((self.prediction_count(), self.n_features), dtype=object)
        for a, feature in enumerate(self.target_features):
            for i, t in enumerate(chain):
                rows[a * len(chain) + i, feature] = t
        self._crafted = rows
        return self.encrypt(Fixed(rows, self.plan.x_frac_bits))

    def add_own_part(self) -> np.ndarray:
        if self._crafted is None:
            return super().add_own_part()
        U, self.decrypted_product = self.decrypted_product, None
        chain, bound = self._chain()
        n, half = self.public_key.n, 1 << self.public.mask_bits  # ε_B ∈ [−half, half)
        h = U.shape[1]
        correction = np.zeros(U.shape, dtype=object)
        for a, feature in enumerate(self.target_features):
            for k in range(h):
                residues = [int(U[a * len(chain) + i, k]) for i in range(len(chain))]
                value, needed = _intersect_chain(residues, chain, n, -bound, bound - 1,
                                                 -half, 2 * half)
                self.recovered[(feature, k)] = value
                self.ciphertexts_needed[(feature, k)] = needed
                guess = 0 if value is None else value
                for i, t in enumerate(chain):
                    correction[a * len(chain) + i, k] = t * guess
        self._crafted = None
        return mod_n_array(U - correction, n)


def mod_n_array(values, n):
    return np.asarray(values, dtype=object) % n


def _intersect_chain(residues, chain, n, low, high, mask_low, mask_width, max_pieces=64):
    """The integers w in [low, high] with (residue_i − t_i·w − mask_low) mod n < mask_width for
    every i (i.e. residue_i = t_i·w + ε_i, ε_i ∈ [mask_low, mask_low + mask_width)), as the
    chain narrows them. Returns (w, multipliers used until it was unique) or (None, None)."""
    pieces = [(low, high)]
    for used, (residue, t) in enumerate(zip(residues, chain), start=1):
        start = residue - mask_low - mask_width + 1  # t·w ≡ residue − ε: t·w − start ∈ [0, width)
        kept = []
        for a, b in pieces:
            # t·w − start ∈ [j·n, j·n + mask_width) for some integer j
            first, last = (t * a - start) // n, (t * b - start) // n
            if last - first > max_pieces:
                kept.append((a, b))
                continue
            for j in range(first, last + 1):
                lo = max(a, -((-(j * n + start)) // t))
                hi = min(b, (j * n + start + mask_width - 1) // t)
                if lo <= hi:
                    kept.append((lo, hi))
        pieces = kept[:4 * max_pieces] if len(kept) > 4 * max_pieces else kept
        if not pieces:
            return None, None
        if len(pieces) == 1 and pieces[0][0] == pieces[0][1]:
            return pieces[0][0], used
    return None, None


@dataclass
class OwnLeak:
    """One row of the second table: a leak of the real protocol, no flaw switched on."""

    leak: str
    title: str
    party: str  # who attacks: the label or the data party
    model: str  # semi-honest (follows the script) or malicious (deviates)
    condition: str
    metric: str
    value: float
    threshold: str
    succeeds: bool
    mitigation: str
    mitigated_value: float | None
    mitigated_fails: bool | None
    price: str
    curve: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {key: (json_details(value) if isinstance(value, dict) else value)
                for key, value in self.__dict__.items()}


class OwnLeakAuditor:
    """The five leaks of this protocol itself, each on a real run, each with its mitigation."""

    def __init__(self, keypair=None, key_bits: int = DEFAULT_KEY_BITS, *, quick: bool = False):
        self.auditor = Auditor(keypair, key_bits)
        self.keypair = self.auditor.keypair
        self.quick = quick

    def _run(self, scenario: Scenario, **kwargs) -> Run:
        return simulate(scenario, keypair=self.keypair, **kwargs)

    def gram(self) -> OwnLeak:
        scenario = replace(GRAM, epochs=3, test_rows=0) if self.quick else GRAM
        run = self._run(scenario)
        curve = [attack_column_space(run, e) for e in range(1, scenario.epochs + 1)]
        at_two = curve[1]
        determined_at = next((row["epochs"] for row in curve if row["determined"]), None)
        findings = len(run.findings())
        d, h = run.data_party.n_features, scenario.hidden[0]
        if self.quick:
            dp_curve = {"breast_cancer": leaks.input_perturbation_curve(
                "breast_cancer", (1.0, float("inf")))}
        else:
            dp_curve = {name: leaks.input_perturbation_curve(name)
                        for name in ("german_credit", "breast_cancer")}
        finite = [row for rows in dp_curve.values() for row in rows if row["epsilon"] <= 1.0]
        mitigated = max(row["attack_r2"] for row in finite)
        comparison = None if self.quick else attack_gram(run, scenario.epochs)
        return OwnLeak(
            "L1", "X from the column space of z (2 epochs)", LABEL, SEMI_HONEST,
            f"{scenario.rows} rows, d = {d}, h = {h} ≥ d, batches of {scenario.batch_size} > d; "
            f"{d + 2} rows of X known (d + 2); any noise on W's updates changes nothing",
            "R² of X over the rows B did not know, after 2 epochs", at_two["r2_of_X"],
            f"succeeds when > {L1_SUCCEEDS_ABOVE}; the mitigation holds when the R² against the "
            f"TRUE X stays < {L1_FAILS_BELOW} at every ε ≤ 1",
            bool(at_two["r2_of_X"] > L1_SUCCEEDS_ABOVE),
            f"input perturbation, ({', '.join(f'{e:g}' for e in leaks.CURVE_EPSILONS)}; "
            f"δ = {leaks.CURVE_DELTA:g})-DP per row: rows clipped to ||x|| ≤ √d, Gaussian noise "
            "added once before step 0 (privacy/input_perturbation.py; the value shown is the "
            "largest attack R² at ε ≤ 1)",
            mitigated, bool(mitigated < L1_FAILS_BELOW),
            "test accuracy / AUC in the curve (noise on every feature of every row)",
            [{"dataset": name, **point} for name, points in dp_curve.items() for point in points],
            {"epochs_curve": curve, "channel_findings": findings,
             "determined_from_epoch": determined_at,
             "gram_relative_error_without_known_rows": at_two[
                 "gram_relative_error_without_known_rows"],
             "old_gram_attack_at_last_epoch": comparison})

    def select(self) -> OwnLeak:
        scenario = replace(EXACT, epochs=2) if self.quick else EXACT
        # h = 8 features of d = 30 read per batch
        honest = self.auditor.real(scenario) if not self.quick else self._run(scenario)
        run = self._run(scenario, label_party_class=SelectingLabelParty)
        X = run.data_party.features.values
        exact = sum(1 for (row, feature), value in run.label_party.read.items()
                    if value == int(X[row, feature]))
        share = exact / X.size
        identical = bool(np.array_equal(run.truth["W_final"], honest.truth["W_final"]) and all(
            np.array_equal(a.W, b.W) for a, b in zip(run.label_party.model.layers[1:],
                                                     honest.label_party.model.layers[1:])))
        findings = len(run.findings())
        d, h = X.shape[1], scenario.hidden[0]
        return OwnLeak(
            "L2", "X read exactly through W_B + 2**k·E in step 1", LABEL, MALICIOUS,
            f"{scenario.rows} rows, d = {d}, h = {h} features read per batch, "
            f"{scenario.epochs} epochs (share grows by h/d of the rows per batch)",
            "share of X's entries read exactly", share,
            "succeeds when > 0.5 with the weights identical to an honest run and 0 findings",
            bool(share > 0.5 and identical and findings == 0),
            "none cheap: the data party cannot see W_B. Closing it takes the label party "
            "proving in zero knowledge that [[U]] used the committed W_B (and every update), "
            "or a trusted third party; the threat model assumes a semi-honest label party",
            None, None, "—",
            details={"weights_identical_to_honest_run": identical, "channel_findings": findings,
                     "entries_read": len(run.label_party.read)})

    def multipliers(self) -> OwnLeak:
        scenario = PREDICT
        rows = {}
        for mask_range in ("interval", "mod_n"):
            run = self._run(replace(scenario, mask_range=mask_range),
                            data_party_class=MultiplierDataParty,
                            data={"multipliers": L3_CHAIN, "target_features": (0,)})
            run.data_party.set_rows_to_predict(np.zeros((1, run.data_party.n_features)))
            try:  # the crafted prediction: one message of L3_CHAIN rows
                protocol.predict(run.channel, run.data_party.public)
                run.truth["refused"] = None
            except (OverflowError, ValueError) as error:  # B decodes t·(W_B − Ŵ_B): overflow
                run.truth["refused"] = f"{type(error).__name__}: {str(error)[:80]}"
            rows[mask_range] = run
        return self._multiplier_row(rows)

    def _multiplier_row(self, runs) -> OwnLeak:
        outcome = {}
        for mask_range, run in runs.items():
            party, share = run.data_party, run.label_party.weight_share.values
            entries = list(party.recovered.items())
            exact = [key for key, value in entries if value == int(share[key])]
            needed = [party.ciphertexts_needed[key] for key in exact]
            share_bits = weight_share_bits(party.plan, run.scenario.batch_size, run.scenario.lr) + 1
            outcome[mask_range] = {
                "exact_share_of_row": len(exact) / len(entries),
                "ciphertexts_per_weight": float(np.mean(needed)) if needed else None,
                "bits_per_ciphertext": share_bits / float(np.mean(needed)) if needed else 0.0,
                "label_party_refused": run.truth.get("refused"),
                "channel_findings": len(run.findings())}
        before, after = outcome["interval"], outcome["mod_n"]
        return OwnLeak(
            "L3", "W_B (then W = W_B + ε_acc) through the label party's mask", DATA, MALICIOUS,
            f"one crafted prediction message of {runs['interval'].data_party.prediction_count()} "
            "rows (a chain of growing multipliers on one feature); ε_B on "
            "[−2**b, 2**b), an interval of n/6 to n/3; the label party has no range check",
            "share of a row of W_B read exactly", before["exact_share_of_row"],
            "succeeds when 1.0 (every entry of the row); the mitigation holds when 0.0",
            bool(before["exact_share_of_row"] == 1.0),
            "mask_range 'mod_n' (the default now): ε_B, ε_B' uniform in Z_n",
            after["exact_share_of_row"], bool(after["exact_share_of_row"] == 0.0),
            "none: the masks cancel exactly mod n, one encryption of 0 per value as before",
            details={"interval_masks": before, "mod_n_masks": after})

    def labels(self) -> OwnLeak:
        run = self.auditor.real(GRADIENTS)
        y = run.truth["y"]
        view = leaks.DataPartyView(len(y), [e["rows"] for e in run.diary[DATA]],
                                   [e["input_gradient"] for e in run.diary[DATA]])
        per_epoch = -(-GRADIENTS.rows // GRADIENTS.batch_size)
        curve = []
        for epochs in range(1, GRADIENTS.epochs + 1):
            part = leaks.DataPartyView(len(y), view.rows[:epochs * per_epoch],
                                       view.input_gradients[:epochs * per_epoch])
            curve.append({"epochs": epochs,
                          "direction_auc": leaks.separation_auc(y, leaks.label_attack(part)),
                          "norm_auc": leaks.separation_auc(y, leaks.label_attack(part,
                                                                               method="norm"))})
        value = curve[-1]["direction_auc"]
        return OwnLeak(
            "L4", "the labels from step 4b's δ·Wᵀ", DATA, SEMI_HONEST,
            "a bottom model (step 4b runs only then); breast cancer, 256 rows, bottom 30 → 8, "
            "h = 4, batches of 32",
            "separation AUC max(AUC, 1 − AUC) of the labels", value,
            "succeeds when > 0.9", bool(value > 0.9),
            "no bottom model (then no δ·Wᵀ is sent); no noise on δ·Wᵀ is implemented",
            None, None, "no bottom model: the data party's own layer is lost", curve,
            {"rows_scored": int(len(y))})

    def prediction(self) -> OwnLeak:
        run = self._run(PREDICTED)
        outcome = attack_prediction(run)
        value = outcome["r2_from_known_predicted_rows"]
        d, h = run.data_party.n_features, PREDICTED.hidden[0]
        return OwnLeak(
            "L5", "X_new from the z of predicted rows", LABEL, SEMI_HONEST,
            f"{outcome['predicted_rows']} rows predicted after {PREDICTED.epochs} epochs on "
            f"{PREDICTED.rows} rows (d = {d}, h = {h} ≥ d); {d + 2} predicted rows known (d + 2)",
            "R² of X_new over the predicted rows B did not know", value,
            f"succeeds when > {L5_SUCCEEDS_ABOVE}; also measured: from the training view alone "
            f"(L1's X, then W from the last batch's z and δ) R² "
            f"{_number(outcome['r2_from_training_view'])}, from the exported W R² "
            f"{_number(outcome['r2_from_exported_W'])}",
            bool(value > L5_SUCCEEDS_ABOVE),
            "none in the protocol: the label party computes the scores, so it sees z_new, as "
            "in step 1. Input perturbation (privacy/input_perturbation.py) perturbs the rows to "
            "predict too, so what z_new gives is then the noisy rows (not measured here)",
            None, None, "—",
            details={**outcome, "channel_findings": len(run.findings())})

    def all(self) -> list[OwnLeak]:
        return [self.gram(), self.select(), self.multipliers(), self.labels(), self.prediction()]


def run_own_leaks(keypair=None, key_bits: int = DEFAULT_KEY_BITS, *, quick=False) -> list[OwnLeak]:
    return OwnLeakAuditor(keypair, key_bits, quick=quick).all()


def _number(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def format_own_leaks(rows: list[OwnLeak]) -> str:
    lines = ["The protocol's own leaks — no flaw switched on; each attack from the party's own "
             "view of a real run, or that party deviating from the script.", ""]
    header = (f"{'#':<4}{'attacker':<9}{'model':<13}{'attack (metric)':<36}{'unmitigated':<14}"
              f"{'mitigated':<12}")
    lines += [header, "-" * len(header)]
    for row in rows:
        mark = "✓" if row.succeeds else "✗"
        held = "" if row.mitigated_fails is None else (" ✓" if row.mitigated_fails else " ✗")
        lines.append(f"{row.leak:<4}{row.party:<9}{row.model:<13}{row.title[:34]:<36}"
                     f"{_number(row.value) + ' ' + mark:<14}{_number(row.mitigated_value) + held:<12}")
    lines.append("")
    for row in rows:
        lines.append(f"{row.leak}. {row.title} ({row.model} {row.party} party)")
        lines.append(f"   condition:  {row.condition}")
        lines.append(f"   measured:   {row.metric} = {_number(row.value)}; {row.threshold}")
        for point in row.details.get("epochs_curve", []) + row.curve:
            lines.append("      " + ", ".join(f"{k} {_number(v) if isinstance(v, float) or v is None else v}"
                                              for k, v in point.items() if k != "reason"))
        lines.append(f"   mitigation: {row.mitigation}; price: {row.price}")
        extra = {k: v for k, v in row.details.items() if k != "epochs_curve"}
        if extra:
            lines.append(f"   details:    {extra}")
    return "\n".join(lines)
