"""Tests for leaks.py: the two by-design leaks are real (the attacks work from one party's own
view), and the attack says so when its view cannot determine the answer."""

import numpy as np
import pytest

from attacks import leaks
import nn

N_ROWS, HIDDEN, EPOCHS = 48, 8, 8  # n·h·(E−1) = 2688 ≥ n(n+1)/2 = 1176 equations


@pytest.fixture(scope="module")
def rows():
    X, y, _, _ = leaks.load_rows("breast_cancer", N_ROWS, seed=0)
    return X, y


def record(X, y, epochs=EPOCHS, **kwargs):
    return leaks.train_and_record(X, y, [X.shape[1], HIDDEN, 1], epochs=epochs, batch_size=16,
                                  lr=0.1, seed=0, init_seed=1, **kwargs)


@pytest.fixture(scope="module")
def unmitigated(rows):
    X, y = rows
    return record(X, y)


# ---- leak 1: the Gram matrix ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["svd", "cholesky"])
def test_gram_attack_recovers_XXt_from_the_label_partys_view_of_an_unmitigated_run(
        rows, unmitigated, method):
    """Protects the claim that z across epochs reveals X·Xᵀ to B (leak 1), with both solvers."""
    X, _ = rows
    result = leaks.gram_attack(unmitigated.label_view, method=method)
    assert result.determined and result.n_equations == N_ROWS * HIDDEN * (EPOCHS - 1)
    assert result.n_unknowns == N_ROWS * (N_ROWS + 1) // 2
    assert leaks.relative_error(result.G, X @ X.T) < 1e-6
    assert result.residual < 1e-8


def test_gram_attack_reads_only_the_label_partys_arrays(rows, unmitigated):
    """Protects the interface: the attack works from plain arrays (rows, z, b, δ, η), e.g. a
    transcript, and gives the same answer as from the recorded view."""
    X, _ = rows
    steps = unmitigated.label_view.steps
    view = leaks.LabelPartyView.from_arrays(
        N_ROWS, [s.rows.tolist() for s in steps], [s.z for s in steps], [s.bias for s in steps],
        [s.delta for s in steps], 0.1)
    assert leaks.relative_error(leaks.gram_attack(view, method="cholesky").G, X @ X.T) < 1e-6


def test_too_few_epochs_is_reported_as_underdetermined_not_silently_wrong(rows):
    """Protects against a silently wrong estimate: with n·h·(E−1) < n(n+1)/2 (E = 4 here) the
    attack raises Underdetermined with the counts, or flags the result when asked to return it."""
    X, y = rows
    view = record(X, y, epochs=4).label_view
    with pytest.raises(leaks.Underdetermined, match="1152 equations for 1176 unknowns") as raised:
        leaks.gram_attack(view)
    assert not raised.value.result.determined
    result = leaks.gram_attack(view, allow_underdetermined=True)
    assert not result.determined and result.n_equations < result.n_unknowns


@pytest.mark.parametrize("method", ["svd", "cholesky"])
def test_enough_equations_but_dependent_ones_are_reported_as_rank_deficient(rows, method):
    """Protects the numerical rank check: duplicating every hidden unit doubles the equations
    (2304 ≥ 1176) but adds no information; counting alone would call it determined."""
    X, y = rows
    view = record(X, y, epochs=4).label_view
    doubled = leaks.LabelPartyView(view.n_rows, [
        leaks.LabelStep(s.rows, np.hstack([s.z, s.z]), np.concatenate([s.bias, s.bias]),
                        np.hstack([s.delta, s.delta]), s.lr) for s in view.steps])
    result = leaks.gram_attack(doubled, method=method, allow_underdetermined=True)
    assert result.n_equations >= result.n_unknowns
    assert not result.determined and "rank-deficient" in result.reason


def test_gram_attack_curve_reports_underdetermined_then_success_as_epochs_grow():
    """Protects the curve the notebook/audit reads: success as a function of epochs. Counting
    (n·h·(E−1) ≥ n(n+1)/2, E ≥ 5 for n = 48, h = 8) is necessary, not sufficient: with this
    seed E = 5 is one rank short, and the curve says so instead of reporting an error."""
    curve = leaks.gram_attack_curve([{"epochs": e} for e in (4, 5, 6, 8)], n=N_ROWS,
                                    hidden=HIDDEN)
    assert [row["determined"] for row in curve] == [False, False, True, True]
    assert "1152 equations for 1176 unknowns" in curve[0]["reason"]
    assert "rank-deficient" in curve[1]["reason"] and curve[1]["n_equations"] > 1176
    assert all(np.isnan(row["relative_error"]) and np.isnan(row["r2"]) for row in curve[:2])
    assert all(row["relative_error"] < 1e-6 and row["r2"] > 0.99 for row in curve[2:])


# ---- completion: X from G and a few known rows ----------------------------------------------------


def test_known_rows_complete_X_from_the_attacked_gram_matrix(rows, unmitigated):
    """Protects the step from G to X: with d + 2 rows B already knows, Procrustes fixes the
    rotation and the other rows come out with R² > 0.99."""
    X, _ = rows
    G = leaks.gram_attack(unmitigated.label_view).G
    known = np.arange(X.shape[1] + 2)
    estimate = leaks.complete_from_known_rows(G, known, X[known])
    assert leaks.r_squared(estimate[len(known):], X[len(known):]) > 0.99


def test_completion_is_exact_up_to_rotation_and_needs_d_known_rows():
    """Protects the documented limit: G fixes X only up to rotation, so fewer than d known rows
    leave directions unknown (poor R²) while d rows recover X exactly."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 6))
    rotated = X @ np.linalg.qr(rng.standard_normal((6, 6)))[0]
    G = rotated @ rotated.T  # the same G
    full = leaks.complete_from_known_rows(G, np.arange(6), X[:6])
    assert leaks.r_squared(full, X) > 1 - 1e-10
    few = leaks.complete_from_known_rows(G, np.arange(2), X[:2])
    assert leaks.r_squared(few[6:], X[6:]) < 0.9


# ---- leak 2: labels from δ·Wᵀ --------------------------------------------------------------------


def test_label_attack_on_step_4b_input_gradients_reaches_auc_above_0_9():
    """Protects the claim that step 4b's δ·Wᵀ gives A the labels (leak 2): a bottom layer + MLP
    trained in plaintext; the direction score separates the classes with AUC > 0.9, and four
    known labels orient it."""
    row = leaks.label_attack_measurement(n=256, bottom_width=8, hidden=4, epochs=2, batch_size=32)
    assert row["direction_auc"] > 0.9
    assert row["oriented_auc_4_known"] > 0.9


def test_label_attack_reads_only_rows_and_input_gradients():
    """Protects the interface: scores from plain (rows, δ·Wᵀ) arrays, NaN for unseen rows."""
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(5)
    labels = np.array([0, 1, 0, 1, 1, 0])
    signs = np.where(labels[:4] == 1, -1.0, 1.0)
    gradients = signs[:, None] * direction * rng.uniform(0.5, 2.0, (4, 1))
    view = leaks.DataPartyView(6, [np.arange(4)], [gradients])
    scores = leaks.label_attack(view, known_labels={0: 0, 1: 1})
    assert np.isnan(scores[4:]).all()
    assert nn.roc_auc(labels[:4], scores[:4]) == 1.0


# ---- the column-space attack (leak 1, strongest form) -------------------------------------------


def _view(X, y, hidden, epochs, batch_size):
    return leaks.train_and_record(X, y, [X.shape[1], hidden, 1], epochs=epochs,
                                  batch_size=batch_size, lr=0.1, seed=0, init_seed=1).label_view


def test_column_space_attack_recovers_X_from_two_epochs_and_d_plus_2_known_rows():
    """Protects the L1 claim in its strongest form: on a default-style run (German credit, 800
    rows, d = 30, h = 32, batches of 64) two epochs of z and d + 2 known rows give the other
    rows of X with R² > 0.99, and X·Xᵀ with no known row at all; one epoch does not."""
    X, y, _, _ = leaks.load_rows("german_credit", 800)
    d = X.shape[1]
    view = _view(X, y, 32, 2, 64)
    known = np.arange(d + 2)
    one = leaks.column_space_attack(leaks.first_steps(view, 13), d, known_rows=known,
                                    X_known=X[known])
    assert not one.determined and one.G is None
    two = leaks.column_space_attack(view, d, known_rows=known, X_known=X[known])
    assert two.determined and two.null_dimension == d
    assert leaks.r_squared(two.X[d + 2:], X[d + 2:]) > 0.99
    assert leaks.relative_error(two.G, X @ X.T) < 1e-6


def test_column_space_attack_ignores_any_noise_on_the_weights():
    """Protects the reason update noise was withdrawn: z − b = X_B·W_t for ANY W_t, so replacing
    every W_t by an unrelated random matrix leaves the recovered X exact (R² > 0.999)."""
    X, y, _, _ = leaks.load_rows("breast_cancer", 48, features=8)
    view = _view(X, y, 8, 2, 16)
    rng = np.random.default_rng(3)
    scrambled = leaks.LabelPartyView(view.n_rows, [
        leaks.LabelStep(s.rows, X[s.rows] @ rng.standard_normal((8, 8)) + s.bias, s.bias,
                        s.delta, s.lr) for s in view.steps])
    known = np.arange(10)
    result = leaks.column_space_attack(scrambled, 8, known_rows=known, X_known=X[known])
    assert result.determined and leaks.r_squared(result.X[10:], X[10:]) > 0.999
    assert result.gram_residual > 0.1  # the SGD rule no longer holds: the Gram step says so


def test_column_space_attack_refuses_h_below_d():
    """Protects against a silently wrong answer: with h < d, z spans only part of col(X_B)."""
    X, y, _, _ = leaks.load_rows("breast_cancer", 48, features=16)
    with pytest.raises(ValueError, match="h ≥ d"):
        leaks.column_space_attack(_view(X, y, 8, 2, 16), 16)


def test_gram_attack_covers_h_below_d_with_enough_epochs():
    """Protects the h < d case: the Gram equations (which use the SGD rule) determine X·Xᵀ
    once n·h·(E − 1) ≥ n(n+1)/2, and d + 2 known rows then give X (d = 16, h = 8)."""
    X, y, _, _ = leaks.load_rows("breast_cancer", 48, features=16)
    result = leaks.gram_attack(_view(X, y, 8, 8, 16))
    assert leaks.relative_error(result.G, X @ X.T) < 1e-6
    known = np.arange(18)
    estimate = leaks.complete_from_known_rows(result.G, known, X[known])
    assert leaks.r_squared(estimate[18:], X[18:]) > 0.99


# ---- the recorder ---------------------------------------------------------------------------------


def test_recorder_trains_exactly_like_nn_train_plaintext_without_noise(rows):
    """Protects the trajectories' realism: recording the views changes nothing in training."""
    X, y = rows
    reference = nn.MLP([X.shape[1], HIDDEN, 1], seed=1)
    nn.train_plaintext(reference, X, y, epochs=3, batch_size=16, lr=0.1, seed=0)
    recorded = record(X, y, epochs=3).mlp
    for (name, a), (_, b) in zip(reference.named_params(), recorded.named_params()):
        assert np.array_equal(a, b), name




# ---- the low-rank Gram attack (leak 1 when h < d) -------------------------------------------------


def test_low_rank_gram_attack_recovers_X_with_h_below_d_in_fewer_epochs_than_the_linear_one():
    """Protects the h < d claim: with d = 30 > h = 16 (German credit, 96 rows, batches of 32,
    tanh, lr 0.3), four epochs of z and d + 2 known rows give the other rows of X with
    R² > 0.99 by the rank-d fit of W's path, where the linear Gram attack's count
    n·h·(E − 1) ≥ n(n+1)/2 needs five epochs and refuses four."""
    X, y, _, _ = leaks.load_rows("german_credit", 96)
    d = X.shape[1]
    view = leaks.train_and_record(X, y, [d, 16, 1], epochs=4, batch_size=32, lr=0.3, seed=1,
                                  init_seed=2, activation="tanh").label_view
    assert not leaks.gram_attack(view, allow_underdetermined=True).determined
    known = np.arange(d + 2)
    result = leaks.low_rank_gram_attack(view, d, known_rows=known, X_known=X[known],
                                        restarts=1, max_iterations=15000)
    assert result.n_equations >= result.n_unknowns
    assert leaks.r_squared(result.X[d + 2:], X[d + 2:]) > 0.99
    assert leaks.relative_error(result.G, X @ X.T) < 0.05


def test_low_rank_gram_attack_reports_not_determined_when_equations_are_too_few():
    """Protects against a silently wrong answer: one epoch of 48 rows with h = 4 gives
    48·4 = 192 equations for 48·16 + 16·4 − 120 = 712 unknowns, and the result says so."""
    X, y, _, _ = leaks.load_rows("breast_cancer", 48, features=16)
    view = leaks.train_and_record(X, y, [16, 4, 1], epochs=1, batch_size=16, lr=0.1, seed=0,
                                  init_seed=1).label_view
    result = leaks.low_rank_gram_attack(view, 16, restarts=1, max_iterations=200)
    assert not result.determined
    assert (result.n_equations, result.n_unknowns) == (192, 712)
    assert "192 equations for 712 unknowns" in result.reason


@pytest.mark.parametrize("method", ["svd", "cholesky"])
def test_a_view_one_rank_short_is_rank_deficient_by_either_method(method):
    """Protects the verdict on a view whose equations outnumber the unknowns but leave one
    direction free (n = 48, h = 8, E = 5: rank 1175 of 1176). The SVD counts the rank; the
    Cholesky path once factored such normal equations and, judging by the factor's pivots,
    called the view determined while its estimate of X·Xᵀ was 61% wrong. LAPACK's condition
    estimate sees it."""
    c = {**leaks.GRAM_DEFAULTS, "n": N_ROWS, "hidden": HIDDEN, "epochs": 5}
    X, y, _, _ = leaks.load_rows(c["dataset"], c["n"], seed=c["seed"], features=c["features"])
    recording = leaks.train_and_record(X, y, [X.shape[1], HIDDEN, 1], epochs=5,
                                       batch_size=c["batch_size"], lr=c["lr"], seed=c["seed"],
                                       init_seed=c["seed"] + 1)
    result = leaks.gram_attack(recording.label_view, method=method, allow_underdetermined=True)
    assert result.n_equations > result.n_unknowns
    assert not result.determined and "rank-deficient" in result.reason
