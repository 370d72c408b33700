"""Checks for notebook 04 (leakage and attacks). Each recomputes what it compares against from
the library, and prints only ✓ or ✗ (with a hint that does not contain the answer)."""

import math

import numpy as np

from . import answered, verdict


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
