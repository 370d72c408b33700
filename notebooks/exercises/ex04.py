"""Checks for notebook 04 (leakage and attacks). Each recomputes what it compares against from
the library, and prints only ✓ or ✗ (with a hint that does not contain the answer)."""

import functools
import math

import numpy as np

from . import answered, verdict

# Exercise 4: the bounds a mitigation of L4 must meet (stated in the task).
L4_ATTACK_AUC_BELOW = 0.8
L4_UTILITY_ABOVE = 0.25
L4_RUNS = 5  # the mitigation is applied this many times, with fresh noise; the scores are averaged


def check_1(answer):
    """X completed for all 48 rows (48 × d) from the label party's view (Gram attack, then the
    first d + 2 rows known): R² over the other rows must exceed 0.99."""
    if not answered(answer):
        return False
    from attacks import leaks
    X_rows, _, _, _ = leaks.load_rows("breast_cancer", 48, seed=0)
    estimate = np.asarray(answer, dtype=float)
    if estimate.shape != X_rows.shape:
        return verdict(False, "wrong shape: one row per training row, one column per feature")
    known = X_rows.shape[1] + 2
    r2 = leaks.r_squared(estimate[known:], X_rows[known:])
    return verdict(r2 > 0.99, "the rows the label party did not know are not recovered (R² ≤ 0.99)")


def check_2(answer):
    """(estimated advantage with one copy, estimated advantage with 64 copies, the exact
    advantage of the best test with 64 copies) for v = ±50 under 11-bit masks."""
    if not answered(answer):
        return False
    try:
        single, many, exact_many = (float(v) for v in answer)
    except (TypeError, ValueError):
        return verdict(False, "give a tuple of three numbers")
    distance = 100 / 2 ** 12
    right_many = 1 - (1 - distance) ** 64
    if not math.isclose(exact_many, right_many, rel_tol=1e-9):
        return verdict(False, "the exact 64-copy advantage: when does the best test win?")
    if abs(single - distance) > 0.01:
        return verdict(False, "the one-copy estimate is far from the statistical distance: "
                              "enough trials? the best test?")
    if abs(many - right_many) > 0.04:
        return verdict(False, "the 64-copy estimate is far from the exact value")
    return verdict(True)


def check_3(answer):
    """(smallest E that counting allows, smallest E the solver finds determined) for n = 48,
    h = 8."""
    if not answered(answer):
        return False
    try:
        counting, solver = (int(v) for v in answer)
    except (TypeError, ValueError):
        return verdict(False, "give a tuple (E by counting, E by the solver)")
    from attacks import leaks
    n_rows, width = 48, 8
    right_counting = 1 + -(-(n_rows * (n_rows + 1) // 2) // (n_rows * width))
    if counting != right_counting:
        return verdict(False, "counting: n·h·(E − 1) ≥ n(n + 1)/2, solved for the smallest E")
    if solver < counting:
        return verdict(False, "the solver cannot do better than counting")
    if not leaks.run_gram_condition(n=n_rows, hidden=width, epochs=solver)["determined"]:
        return verdict(False, "at that E the solver still reports the system undetermined")
    if solver > counting and leaks.run_gram_condition(n=n_rows, hidden=width,
                                                      epochs=solver - 1)["determined"]:
        return verdict(False, "the solver already succeeds with fewer epochs")
    return verdict(True)


@functools.lru_cache(maxsize=1)
def l4_recording():
    """The plaintext run of L4's setting (breast cancer, 256 rows, bottom model 30 → 8 ReLU,
    interactive layer 4 wide, 2 epochs of batches of 32): features, labels and the data party's
    view of step 4b, δ·Wᵀ per step."""
    from attacks import leaks
    X, y, _, _ = leaks.load_rows("breast_cancer", 256, seed=0)
    recording = leaks.train_and_record(X, y, [8, 4, 1], epochs=2, batch_size=32, lr=0.1, seed=0,
                                       init_seed=1, bottom_width=8)
    return X, y, recording.data_view


def l4_scores(mitigate, runs=1):
    """(label attack's separation AUC, utility) of a mitigation applied to every δ·Wᵀ the data
    party receives, averaged over ``runs`` independent applications. The AUC is the larger of
    the two attacks of leaks.label_attack (direction and norm); the utility is the mean over steps of the cosine between the bottom layer's weight
    gradient before its activation, X_batchᵀ·(δ·Wᵀ), with and without the mitigation."""
    scores = [_l4_scores_once(mitigate) for _ in range(int(runs))]
    return float(np.mean([auc for auc, _ in scores])), float(np.mean([u for _, u in scores]))


def _l4_scores_once(mitigate):
    from attacks import leaks
    X, y, view = l4_recording()
    sent = [np.asarray(mitigate(np.array(g, copy=True)), dtype=float) for g in view.input_gradients]
    if any(s.shape != g.shape for s, g in zip(sent, view.input_gradients)):
        raise ValueError("the mitigated gradient must keep the shape (m, k) of δ·Wᵀ")
    mitigated = leaks.DataPartyView(view.n_rows, view.rows, sent)
    auc = max(leaks.separation_auc(y, leaks.label_attack(mitigated, method=method))
              for method in ("direction", "norm"))
    cosines = []
    for rows, true, noisy in zip(view.rows, view.input_gradients, sent):
        a, b = X[rows].T @ true, X[rows].T @ noisy
        cosines.append(float(np.sum(a * b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300)))
    return auc, float(np.mean(cosines))


def check_4(mitigate):
    """A mitigation of L4: mitigate(input_gradient) -> what the data party receives instead of
    δ·Wᵀ (m × k). Code can test two things; the rubric covers the rest: the label attack's
    separation AUC must fall below L4_ATTACK_AUC_BELOW, and the utility (see l4_scores) must stay
    above L4_UTILITY_ABOVE."""
    if not answered(mitigate):
        return False
    if not callable(mitigate):
        return verdict(False, "give a function mitigate(input_gradient)")
    try:
        auc, utility = l4_scores(mitigate, runs=L4_RUNS)
    except Exception as error:
        return verdict(False, f"mitigate failed: {type(error).__name__}: {error}")
    print(f"  label attack's separation AUC on your mitigated view: {auc:.3f} "
          f"(mean of {L4_RUNS} runs of your mitigation) "
          f"(must be below {L4_ATTACK_AUC_BELOW}); utility {utility:.3f} "
          f"(must stay above {L4_UTILITY_ABOVE})")
    ok = auc < L4_ATTACK_AUC_BELOW and utility > L4_UTILITY_ABOVE
    hint = ("the attack still separates the labels" if auc >= L4_ATTACK_AUC_BELOW
            else "the gradient is too damaged to train the bottom model")
    result = verdict(ok, hint)
    print("  (the code tests these two numbers; the rubric's other criteria are for you or your "
          "teacher to judge)")
    return result
