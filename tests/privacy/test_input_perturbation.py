"""Tests for privacy/input_perturbation.py: the calibrated σ is the analytic Gaussian mechanism's,
clipping bounds every row, the noise never comes from numpy, ε = ∞ is off, bad budgets are
refused in one line, and the measured curve is what the README says."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from attacks import leaks
from privacy.input_perturbation import InputPerturbation, clip_rows

README = Path(__file__).resolve().parents[2] / "README.md"


def analytic_delta(sigma: float, epsilon: float) -> float:
    """δ(ε) of the Gaussian mechanism with sensitivity 1 and noise σ (Balle & Wang 2018, Thm 8),
    written out here independently of dp_accounting."""
    return (norm.cdf(1 / (2 * sigma) - epsilon * sigma)
            - math.exp(epsilon) * norm.cdf(-1 / (2 * sigma) - epsilon * sigma))


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 8.0])
def test_sigma_is_the_tightest_analytic_gaussian_noise_for_the_budget(epsilon):
    """Protects the calibration: σ₁ meets δ exactly (to 1e-9 relative) by the independent
    formula, 1% less noise breaks δ, σ = 2C·σ₁ (replace-one sensitivity), and dp_accounting's
    PLD accountant gives back ε for one release."""
    mechanism = InputPerturbation(epsilon, 1e-5, clip=3.0)
    assert analytic_delta(mechanism.unit_sigma, epsilon) == pytest.approx(1e-5, rel=1e-6)
    assert analytic_delta(0.99 * mechanism.unit_sigma, epsilon) > 1e-5
    assert mechanism.sigma == pytest.approx(2 * 3.0 * mechanism.unit_sigma)
    assert mechanism.compose(1) == pytest.approx(epsilon, rel=1e-3)
    assert mechanism.compose(2) > epsilon  # perturbing a record twice pays twice


def test_the_classic_bound_is_looser_than_the_calibrated_sigma():
    """Protects against a σ that is too small: for ε < 1 the classic bound
    √(2 ln(1.25/δ))/ε (Dwork & Roth, Thm A.1) is sufficient, so the tight σ must be below it."""
    for epsilon in (0.5, 0.9):
        classic = math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon
        assert InputPerturbation(epsilon, 1e-5).unit_sigma <= classic


def test_clipping_bounds_every_row_and_keeps_short_rows():
    """Protects the sensitivity bound 2C: no clipped row is longer than C; rows inside unchanged."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)) * rng.uniform(0.01, 5, (200, 1))
    clipped = clip_rows(X, 2.0)
    assert np.all(np.linalg.norm(clipped, axis=1) <= 2.0 * (1 + 1e-12))
    short = np.linalg.norm(X, axis=1) <= 2.0
    assert np.array_equal(clipped[short], X[short])


def test_noise_comes_from_the_system_csprng_not_numpy(monkeypatch):
    """Protects the secrets rule: with numpy's random generators booby-trapped, perturb still
    works, and the noise has the calibrated spread."""
    def trap(*args, **kwargs):
        raise AssertionError("numpy randomness used for DP noise")
    monkeypatch.setattr(np.random, "default_rng", trap)
    monkeypatch.setattr(np.random, "normal", trap)
    monkeypatch.setattr(np.random, "standard_normal", trap)
    mechanism = InputPerturbation(1.0, 1e-5, clip=1.0)
    X = np.zeros((300, 10))
    noise = mechanism.perturb(X)
    assert abs(noise.std() / mechanism.sigma - 1) < 0.05
    assert not np.array_equal(noise, mechanism.perturb(X))  # a fresh draw each time


def test_epsilon_infinity_switches_the_mechanism_off():
    """Protects the 'off' switch: ε = ∞ returns X unchanged (no clipping, no noise)."""
    X = np.arange(12.0).reshape(3, 4) * 10
    mechanism = InputPerturbation(math.inf, 1e-5)
    assert np.array_equal(mechanism.perturb(X), X) and "off" in mechanism.describe()


@pytest.mark.parametrize("epsilon, delta, clip, match", [
    (0, 1e-5, None, "epsilon must be > 0"), (-1, 1e-5, None, "epsilon must be > 0"),
    (float("nan"), 1e-5, None, "epsilon"), (1, 0, None, "delta must be in"),
    (1, 1, None, "delta must be in"), (1, "x", None, "delta"), (1, 1e-5, 0, "clip"),
    (1, 1e-5, float("inf"), "clip")])
def test_bad_budget_is_one_line_naming_the_value(epsilon, delta, clip, match):
    """Protects the bad-input rule: one ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=match):
        InputPerturbation(epsilon, delta, clip=clip)


def test_non_finite_feature_is_refused_with_row_and_column():
    """Protects against noise silently added to NaN/inf."""
    X = np.zeros((3, 2))
    X[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 2, column 1"):
        InputPerturbation(1.0, 1e-5).perturb(X)


def test_column_space_attack_fails_under_epsilon_at_most_1():
    """Protects the mitigation's claim: at ε ≤ 1 the column-space attack (2 epochs, d + 2 TRUE
    known rows) recovers less than R² 0.5 of the TRUE X, while at ε = ∞ it recovers all."""
    curve = leaks.input_perturbation_curve("breast_cancer", (0.5, 1.0, math.inf))
    assert all(row["attack_r2"] < 0.5 for row in curve[:2])
    assert curve[2]["attack_r2"] > 0.99


def test_readme_privacy_table_is_what_the_code_measures():
    """Protects the README's privacy/utility table: the noise seed of the curve is fixed (the
    data party's secret in a real run), so every line of the table, every ε and every column,
    is exactly what input_perturbation_curve computes now."""
    text = README.read_text(encoding="utf-8")
    curves = {name: leaks.input_perturbation_curve(name)
              for name in ("german_credit", "breast_cancer")}
    lines = leaks.curve_table(curves)
    assert "\n".join(lines) in text, "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The wiring's helpers: the options, the seeds, the clamp into the plan's range
# ----------------------------------------------------------------------------------------------
def test_options_default_delta_and_off_states():
    """Property: ε None (or ∞) is off, δ defaults to DEFAULT_DELTA, and δ without ε is refused
    in one line naming both options as the caller spells them."""
    from privacy.input_perturbation import DEFAULT_DELTA, check_options
    assert check_options(None, None) is None
    assert check_options(math.inf, None) is None
    assert check_options(2, None) == (2.0, DEFAULT_DELTA)
    assert check_options(2, 1e-7) == (2.0, 1e-7)
    with pytest.raises(ValueError, match="^--b 0.1 needs --a") as error:
        check_options(None, 0.1, names=("--a", "--b"))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="^--a: must be > 0"):
        check_options(-1, None, names=("--a", "--b"))
    with pytest.raises(ValueError, match="^--b: must be in"):
        check_options(1, 0, names=("--a", "--b"))


def test_seeds_derived_from_the_init_seed_are_reproducible_and_kept_apart():
    """Property: the training noise seed derived from an init seed is the same every time (one
    process and two processes perturb alike) and differs per init seed; a prediction's seed is
    never derived, so two predictions never share noise; without an init seed every seed is
    fresh from secrets."""
    from privacy.input_perturbation import derived_seed, for_data_party
    assert derived_seed(5, "train") == derived_seed(5, "train")
    with pytest.raises(ValueError, match="only the training seed"):
        derived_seed(5, "predict")  # a prediction's noise is never derived: fresh each time
    predict = {for_data_party((1.0, 1e-5), purpose="predict", init_seed=5).seed for _ in range(3)}
    assert len(predict) == 3
    assert derived_seed(5, "train") != derived_seed(6, "train")
    assert for_data_party(None, purpose="train", init_seed=5) is None
    a = for_data_party((1.0, 1e-5), purpose="train", init_seed=5)
    assert a.seed == derived_seed(5, "train")
    fresh = {for_data_party((1.0, 1e-5), purpose="train").seed for _ in range(3)}
    assert len(fresh) == 3
    with pytest.raises(ValueError, match="purpose"):
        for_data_party((1.0, 1e-5), purpose="other")


def test_noisy_rows_are_clamped_strictly_inside_the_fixed_point_range():
    """Property: a large σ (ε = 0.05) sends entries beyond the plan's |x| < 2**x_int_bits; the
    rows the protocol gets are clamped inside it (post-processing), so encoding never fails."""
    from plan import FixedPointPlan, check_features
    from privacy.input_perturbation import perturb_rows
    plan = FixedPointPlan()
    X = np.random.default_rng(0).standard_normal((50, 30))
    mechanism = InputPerturbation(0.05, 1e-5, seed=1)
    raw = InputPerturbation(0.05, 1e-5, seed=1).perturb(X)
    assert np.max(np.abs(raw)) >= 2 ** plan.x_int_bits
    clamped = perturb_rows(mechanism, X, plan)
    check_features(clamped, plan)
    inside = np.abs(raw) < 2 ** plan.x_int_bits
    assert np.array_equal(clamped[inside], raw[inside])


def test_the_samplers_tails_are_priced_and_too_large_an_epsilon_is_refused():
    """Property: no draw exceeds TAIL_BOUND·σ (what the 128-bit radius allows), what that adds
    to δ is computed (negligible up to ε = 32, under δ/10 at 64), and an ε whose tails would add
    more than δ/10 is refused in one line — the 53-bit sampler this replaced broke δ from ε ≈ 30."""
    from privacy.input_perturbation import TAIL_BOUND, gaussian_noise
    draws = gaussian_noise(400_000, 1.0, seed=3)
    assert np.abs(draws).max() < TAIL_BOUND
    assert abs(draws.std() - 1.0) < 0.01 and abs(draws.mean()) < 0.01
    assert InputPerturbation(32, 1e-5).tail_delta(30) < 1e-15
    assert InputPerturbation(64, 1e-5).tail_delta(30) < 1e-6
    X = np.random.default_rng(0).standard_normal((4, 30))
    with pytest.raises(ValueError, match="too large for this sampler") as error:
        InputPerturbation(200, 1e-5, seed=1).perturb(X)
    assert "\n" not in str(error.value)
