"""Checks for notebook 06 (the protocol's own leaks): each says right or not yet, never the answer."""

import numpy as np

from . import answered, verdict

MITIGATION_AUC_BOUND = 0.72      # exercise 4: the label attack may separate the labels no better
MITIGATION_UTILITY_BOUND = 0.45  # exercise 4: the bottom layer's updates keep this cosine, at least
MITIGATION_RUNS = 16  # applications of a mitigation the check averages over


def check_1(answer, run):
    """answer = the fewest epochs E at which own_leaks.attack_gram(run, E) reports the Gram
    system determined, on the student's 32-row ``run`` (8 epochs)."""
    if not answered(answer):
        return False
    if run is None:
        return verdict(False, "pass your 32-row run as the second argument")
    from attacks import own_leaks

    if run.data_party.features.values.shape[0] != 32:
        return verdict(False, "the run should have 32 rows")
    fewest = next((epochs for epochs in range(2, run.scenario.epochs + 1)
                   if own_leaks.attack_gram(run, epochs)["determined"]), None)
    if not isinstance(answer, (int, np.integer)):
        return verdict(False, "give a whole number of epochs")
    return verdict(answer == fewest, "too few: the attack is not determined yet" if fewest and answer < fewest
                   else "not the fewest")


def check_2(answer, G, X_true):
    """answer = the fewest k such that completing X from Ĝ (``G``) and the first k true rows
    scores R² > 0.99 over the other rows (``X_true`` is the narrator's truth)."""
    if not answered(answer):
        return False
    from attacks import leaks

    d = X_true.shape[1]
    fewest = None
    for k in range(1, d + 3):
        known = np.arange(k)
        estimate = leaks.complete_from_known_rows(G, known, X_true[known])
        if leaks.r_squared(estimate[k:], X_true[k:]) > 0.99:
            fewest = k
            break
    if not isinstance(answer, (int, np.integer)):
        return verdict(False, "give a whole number of rows")
    return verdict(answer == fewest, "too few rows: R² is not above 0.99 yet" if fewest and answer < fewest
                   else "not the fewest")


def check_3(answer):
    """answer = (X̂, X̂ shrunk): the column-space attack's recovery of the 400 noisy breast-cancer
    rows at ε = 1 (32 known true rows), and that recovery shrunk by the Gaussian posterior factor
    1 / (1 + σ²/v), v = C²/d. Right when the shrinking is the stated one and the shrunk rows are
    still no better than guessing each feature's mean (R² < 0.05 against the true X)."""
    if not answered(answer):
        return False
    from attacks import leaks
    from privacy.input_perturbation import InputPerturbation

    X_true = leaks.load_rows("breast_cancer", 400)[0]
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return verdict(False, "give two arrays: (recovered, shrunk)")
    recovered, shrunk = (np.asarray(part, dtype=float) for part in answer)
    if recovered.shape != X_true.shape or shrunk.shape != X_true.shape:
        return verdict(False, f"wrong shape: both should be {X_true.shape}")
    if not np.any(recovered):
        return verdict(False, "the recovery is all zeros: run the attack on the noisy run")
    mechanism = InputPerturbation(1.0, leaks.CURVE_DELTA, clip=np.sqrt(X_true.shape[1]))
    factor = 1.0 / (1.0 + mechanism.sigma ** 2 / (mechanism.clip ** 2 / X_true.shape[1]))
    if not np.allclose(shrunk, factor * recovered, rtol=1e-6, atol=1e-12):
        return verdict(False, "the shrunk rows are not the recovery times the posterior factor")
    return verdict(leaks.r_squared(shrunk[32:], X_true[32:]) < 0.05,
                   "your recovery scores suspiciously well against the true X: was it the noisy run?")


def _label_leak_and_utility(mitigate):
    """Train the L4 scenario in plaintext (256 breast-cancer rows, bottom model 30 → 8, h = 4,
    2 epochs) and score a mitigation of δ·Wᵀ: the label attack's separation AUC on the mitigated
    view, and the mean cosine between the bottom layer's batch weight gradients Xᵀ·g computed
    with and without it."""
    from attacks import leaks

    X, y, _, _ = leaks.load_rows("breast_cancer", 256)
    recording = leaks.train_and_record(X, y, [8, 4, 1], epochs=2, batch_size=32, lr=0.1,
                                       bottom_width=8)
    view = recording.data_view
    mitigated = [np.asarray(mitigate(np.array(g, dtype=float)), dtype=float) for g in view.input_gradients]
    if any(m.shape != np.shape(g) or not np.all(np.isfinite(m))
           for m, g in zip(mitigated, view.input_gradients)):
        raise ValueError("mitigate must return a finite array of the shape it was given")
    auc = leaks.separation_auc(y, leaks.label_attack(leaks.DataPartyView(len(y), view.rows, mitigated)))
    cosines = []
    for rows, true, changed in zip(view.rows, view.input_gradients, mitigated):
        a, b = (X[rows].T @ true).ravel(), (X[rows].T @ changed).ravel()
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300)))
    return auc, float(np.mean(cosines))


def check_4(mitigate):
    """mitigate(g) -> g', applied by the label party to every δ·Wᵀ it sends (rows × 8). What code
    can test: the label attack's separation AUC on the mitigated view is at most 0.72, and the
    bottom layer still learns (mean cosine of its batch weight gradients with and without the
    mitigation at least 0.45), each the mean over MITIGATION_RUNS applications. The rest (the privacy argument, the price, the threat model) is
    for the rubric."""
    if not answered(mitigate):
        return False
    try:
        # A mitigation that adds noise scores differently on every application: the mean of
        # MITIGATION_RUNS applications is what the bounds judge (one application failed a sound
        # design one time in ten; the mean of 16 moves four times less).
        scores = np.array([_label_leak_and_utility(mitigate) for _ in range(MITIGATION_RUNS)])
    except ValueError as error:
        return verdict(False, str(error))
    auc, utility = scores.mean(axis=0)
    print(f"your mitigation: separation AUC {auc:.3f}, utility (cosine) {utility:.3f} (means of "
          f"{MITIGATION_RUNS} applications); the rest of the rubric is for your write-up")
    if auc > MITIGATION_AUC_BOUND:
        return verdict(False, f"the labels still separate (AUC above {MITIGATION_AUC_BOUND})")
    return verdict(utility >= MITIGATION_UTILITY_BOUND,
                   f"the bottom layer no longer learns (cosine below {MITIGATION_UTILITY_BOUND})")
