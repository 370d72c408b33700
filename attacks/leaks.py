"""What each party can learn from what the protocol reveals by design — measured.

The protocol hides X from the label party B and the labels from the data party A cryptographically,
but two values are revealed on purpose, and each is enough for an attack:

1. **z = X·W + b reaches B every mini-batch.** B knows its bias b, so it holds
   Z_s = z − b = X_{R_s}·W_s for the rows R_s of every batch s (the batch order is public).
   * The column-space attack (:func:`column_space_attack`, the strongest here): when h ≥ d and
     W_s has rank d, the columns of Z_s span exactly col(X_{R_s}), WHATEVER W_s is — so noise on
     W's path, momentum or any other update rule changes nothing. Every batch gives m − d
     vectors u with uᵀ·X_{R_s} = 0; a row sits in a different batch each epoch, so from the
     second epoch on the constraints chain every row to every other and leave exactly the
     d-dimensional col(X): X = Y·C for a basis Y B computes and an unknown invertible d×d C.
     d known rows fix C (least squares), then all of X follows; without known rows the
     first layer's SGD rule W_{s+1} − W_s = −η·X_{B_s}ᵀ·δ_s fixes C·Cᵀ and so X·Xᵀ exactly.
   * The Gram attack (:func:`gram_attack`, kept for comparison and for h < d, where the
     column space of Z_s is only an h-dimensional slice of col(X_{R_s})): for a row seen at
     steps t1 < t2, (z_i(t2) − b(t2)) − (z_i(t1) − b(t1)) = −Σ_{s∈[t1,t2)} η_s Σ_{j∈B_s}
     (x_i·x_j) δ_j(s): h linear equations in G = X·Xᵀ whose coefficients B knows; it needs
     n·h·(E − 1) ≥ n(n+1)/2 and relies on the exact SGD rule.
2. **With a bottom model, A receives δ·Wᵀ (step 4b).** Its rows point one way for one class and
   the opposite way for the other: :func:`label_attack` scores them, :func:`auc` measures it.

No noise on W's trajectory mitigates 1 (the column space ignores W). What does is making the X
the protocol sees private in the first place: privacy/input_perturbation.py (clip + Gaussian
noise once, (ε, δ)-DP per row); :func:`input_perturbation_curve` measures what it buys (the
column-space attack's R² against the TRUE X) and costs (test accuracy, AUC).

Every attack takes plain numpy arrays — one party's own view (:class:`LabelPartyView`,
:class:`DataPartyView`) — never protocol objects, so it can be pointed at a real transcript as
well as at the plaintext trajectories :func:`train_and_record` produces here. Ground truth is
used only by the scoring helpers (:func:`relative_error`, :func:`r_squared`, :func:`auc`).
The plaintext trajectory gives B the same view as the protocol up to fixed-point quantisation:
the protocol's z − b is exactly X_q·W_q (X quantised to the plan's fraction bits, W an exact
integer at its scale), so an attack on the protocol recovers X_q, within 2^−(x_frac_bits+1) of X.

Randomness in this module is seeded numpy randomness, for reproducible experiments (training
order, initial weights); the DP noise itself comes from privacy/input_perturbation.py's CSPRNG.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import math

import numpy as np

from jobs import data
import nn

try:  # scikit-learn's dependency; oversubscribed BLAS threads make small SVDs ~10x slower here
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None


def _one_blas_thread():
    return _threadpool_limits(1) if _threadpool_limits is not None else contextlib.nullcontext()

# ----------------------------------------------------------------------------------------------
# Views: what one party holds, as plain arrays.
# ----------------------------------------------------------------------------------------------


@dataclass
class LabelStep:
    """The label party's record of one mini-batch step s.

    rows   (m,)   indices of the batch's examples (public: the seeded batch order)
    z      (m, h) the revealed pre-activation X_B·W(s) + b(s)
    bias   (h,)   B's own bias b(s) as used in that forward pass
    delta  (m, h) B's own δ = ∂L/∂z of that step
    lr     η_s, public
    """

    rows: np.ndarray
    z: np.ndarray
    bias: np.ndarray
    delta: np.ndarray
    lr: float

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(-1)
        self.z = np.asarray(self.z, dtype=np.float64)
        self.delta = np.asarray(self.delta, dtype=np.float64)
        m = self.rows.shape[0]
        if self.z.ndim != 2 or self.z.shape[0] != m or self.delta.shape != self.z.shape:
            raise ValueError(f"a step needs z and delta of shape (m, h) with m = {m} rows, got "
                             f"z {self.z.shape}, delta {self.delta.shape}")
        self.bias = np.broadcast_to(np.asarray(self.bias, dtype=np.float64),
                                    (self.z.shape[1],)).copy()
        self.lr = float(self.lr)
        if len(np.unique(self.rows)) != m:
            raise ValueError("a batch lists the same row twice")

    @property
    def linear_part(self) -> np.ndarray:
        """z − b = X_B·W(s), which B can compute since b is its own."""
        return self.z - self.bias


@dataclass
class LabelPartyView:
    """Everything the label party needs for the Gram attack: n and its steps, in order."""

    n_rows: int
    steps: list[LabelStep] = field(default_factory=list)

    @property
    def hidden(self) -> int:
        return self.steps[0].z.shape[1] if self.steps else 0

    @classmethod
    def from_arrays(cls, n_rows, rows, z, bias, delta, lr) -> "LabelPartyView":
        """Build the view from parallel per-step sequences (``lr`` may be one public number)."""
        count = len(rows)
        lrs = [lr] * count if np.ndim(lr) == 0 else list(lr)
        if not (len(z) == len(bias) == len(delta) == len(lrs) == count):
            raise ValueError("rows, z, bias, delta and lr must list the same number of steps")
        return cls(int(n_rows), [LabelStep(*items) for items in zip(rows, z, bias, delta, lrs)])


@dataclass
class DataPartyView:
    """The data party's record of step 4b: per step, the batch rows and ∂L/∂α = δ·Wᵀ (m, k)."""

    n_rows: int
    rows: list[np.ndarray] = field(default_factory=list)
    input_gradients: list[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Scoring (ground truth only here).
# ----------------------------------------------------------------------------------------------


def relative_error(estimate, truth) -> float:
    """||estimate − truth||_F / ||truth||_F."""
    truth = np.asarray(truth, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(estimate, dtype=np.float64) - truth)
                 / max(np.linalg.norm(truth), 1e-300))


def r_squared(estimate, truth) -> float:
    """1 − Σ(estimate − truth)² / Σ(truth − column mean)²: the share of X's variance recovered."""
    truth = np.asarray(truth, dtype=np.float64)
    total = np.sum((truth - truth.mean(axis=0)) ** 2)
    return float(1.0 - np.sum((np.asarray(estimate, dtype=np.float64) - truth) ** 2) / total)


# ----------------------------------------------------------------------------------------------
# Leak 1: the Gram matrix X·Xᵀ from z across epochs (the label party).
# ----------------------------------------------------------------------------------------------


class Underdetermined(ValueError):
    """The view holds too few independent equations to pin down X·Xᵀ; ``result`` says how many."""

    def __init__(self, message: str, result: "GramAttackResult"):
        super().__init__(message)
        self.result = result


@dataclass
class GramEquations:
    """The linear system, grouped by row: ``coefficients[i] @ G[i, :] == targets[i]``.

    Row i's block stacks, for each pair of its consecutive appearances t1 < t2 and each hidden
    unit k, the equation Σ_j G_ij · c_j[k] = (z_i(t2) − b(t2))[k] − (z_i(t1) − b(t1))[k] with
    c_j = −Σ_{s∈[t1,t2), j∈B_s} η_s δ_j(s). (Pairs further apart are sums of these.)
    """

    n_rows: int
    coefficients: list[np.ndarray]  # row i: (e_i, n)
    targets: list[np.ndarray]       # row i: (e_i,)

    @property
    def n_equations(self) -> int:
        return int(sum(len(t) for t in self.targets))

    @property
    def n_unknowns(self) -> int:
        return self.n_rows * (self.n_rows + 1) // 2


def gram_equations(view: LabelPartyView) -> GramEquations:
    """The equations the label party's view gives on G = X·Xᵀ (see :class:`GramEquations`)."""
    n = int(view.n_rows)
    h = view.hidden
    # cumulative[t] = Σ_{s<t} η_s δ(s) scattered onto the rows of B_s (n, h): a prefix sum, so
    # the coefficient of any interval is one subtraction.
    cumulative = np.zeros((len(view.steps) + 1, n, h))
    appearances: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    for t, step in enumerate(view.steps):
        if step.rows.size and (step.rows.min() < 0 or step.rows.max() >= n):
            raise ValueError(f"step {t} names a row outside 0..{n - 1}")
        if step.z.shape[1] != h:
            raise ValueError(f"step {t} has {step.z.shape[1]} hidden units, step 0 has {h}")
        cumulative[t + 1] = cumulative[t]
        cumulative[t + 1, step.rows] += step.lr * step.delta
        for position, row in enumerate(step.rows):
            appearances[row].append((t, step.linear_part[position]))
    coefficients, targets = [], []
    for row in range(n):
        blocks, rhs = [], []
        for (t1, u1), (t2, u2) in zip(appearances[row], appearances[row][1:]):
            blocks.append(-(cumulative[t2] - cumulative[t1]).T)  # (h, n)
            rhs.append(u2 - u1)
        coefficients.append(np.vstack(blocks) if blocks else np.zeros((0, n)))
        targets.append(np.concatenate(rhs) if rhs else np.zeros(0))
    return GramEquations(n, coefficients, targets)


@dataclass
class GramAttackResult:
    """The label party's estimate of G = X·Xᵀ and how well the view determines it.

    ``determined`` is False when the equations cannot pin G down (fewer equations than the
    n(n+1)/2 unknowns, an entry no equation touches, or numerically rank-deficient); G is then
    whatever the solver could fit (the SVD's minimum-norm solution; zeros if the Cholesky
    factorisation failed), NOT an estimate to trust. ``condition`` is the equilibrated design's
    condition number (SVD) or the estimate max/min of the Cholesky pivots (Cholesky). ``residual`` is the relative
    residual ||A·g − r|| / ||r|| of the fit: ≈ 0 on an exact, noise-free view.
    """

    G: np.ndarray
    determined: bool
    reason: str
    n_equations: int
    n_unknowns: int
    method: str
    rank: int | None = None
    condition: float | None = None
    residual: float = float("nan")
    seconds: float = 0.0


def _upper_index(n: int) -> np.ndarray:
    """(n, n) map from an entry (i, j) of G to its unknown: the index of (min, max) in triu order."""
    index = np.empty((n, n), dtype=np.int64)
    upper = np.triu_indices(n)
    index[upper] = np.arange(len(upper[0]))
    index.T[upper] = np.arange(len(upper[0]))
    return index


def _dense_design(equations: GramEquations) -> tuple[np.ndarray, np.ndarray]:
    n = equations.n_rows
    unknown = _upper_index(n)
    design = np.zeros((equations.n_equations, equations.n_unknowns))
    start = 0
    for row, block in enumerate(equations.coefficients):
        design[start:start + block.shape[0], unknown[row]] = block
        start += block.shape[0]
    return design, np.concatenate(equations.targets)


def _solve_dense(equations: GramEquations, rcond: float):
    """Column-equilibrated SVD least squares: exact rank and condition number."""
    design, target = _dense_design(equations)
    norms = np.linalg.norm(design, axis=0)
    scale = np.where(norms > 0, norms, 1.0)
    with _one_blas_thread():
        solution, _, rank, singular = np.linalg.lstsq(design / scale, target, rcond=rcond)
    solution = solution / scale
    condition = float(singular[0] / singular[-1]) if singular.size and singular[-1] > 0 else np.inf
    return solution, int(rank), condition, None


def _normal_equations(equations: GramEquations):
    """H = Σ_r P_rᵀ·(C_rᵀC_r)·P_r and Dᵀr, assembled from the row blocks in O(n³) time: P_r maps
    the unknowns to row r of G, so row r's block adds C_rᵀC_r at the unknowns (r, ·)."""
    n = equations.n_rows
    unknown = _upper_index(n)
    H = np.zeros((equations.n_unknowns, equations.n_unknowns))
    rhs = np.zeros(equations.n_unknowns)
    with _one_blas_thread():
        for row, (block, target) in enumerate(zip(equations.coefficients, equations.targets)):
            if block.shape[0]:
                H[np.ix_(unknown[row], unknown[row])] += block.T @ block
                rhs[unknown[row]] += block.T @ target
    return H, rhs


def _normal_residual(equations: GramEquations, solution: np.ndarray) -> np.ndarray:
    """Dᵀ(r − D·u), computed from the blocks (never from H), for iterative refinement."""
    n = equations.n_rows
    unknown = _upper_index(n)
    G = solution[unknown]
    out = np.zeros_like(solution)
    for row, (block, target) in enumerate(zip(equations.coefficients, equations.targets)):
        if block.shape[0]:
            out[unknown[row]] += block.T @ (target - block @ G[row])
    return out


def _solve_cholesky(equations: GramEquations, rcond: float, refinements: int = 3):
    """Equilibrated normal equations by Cholesky, then iterative refinement against the
    original equations (the corrected semi-normal equations): O(n⁶/6) flops and O(n⁴) memory
    instead of the SVD's O(n·h·E·n⁴). Rank-deficiency shows as a failed factorisation or a
    large condition: LAPACK's estimate of cond₁(H) (dpocon, from the factor), whose square root
    estimates the design's own condition, as the SVD path reports it. Caveat: H = DᵀD squares
    the condition, so in double precision it cannot tell a design's condition above about 10⁸
    from a singular one; gram_attack holds this path to CHOLESKY_CONDITION_LIMIT. (The ratio of
    the factor's pivots is no such estimate: an exactly singular H once factored with a ratio
    of 4.5·10⁵.)"""
    H, rhs = _normal_equations(equations)
    diagonal = np.diag(H).copy()
    scale = np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    H /= scale[:, None]
    H /= scale[None, :]
    try:
        import scipy.linalg as linalg
    except ImportError:  # pragma: no cover - numpy only: eigendecomposition instead
        linalg = None
    with _one_blas_thread():
        if linalg is None:  # pragma: no cover
            values, vectors = np.linalg.eigh(H)
            keep = values > rcond ** 2 * values[-1]
            condition = float(np.sqrt(values[-1] / values[0])) if values[0] > 0 else np.inf

            def solve(b):
                return vectors[:, keep] @ ((vectors[:, keep].T @ b) / values[keep])
            rank = int(keep.sum())
        else:
            from scipy.linalg import lapack
            norm = float(np.abs(H).sum(axis=0).max())  # H's 1-norm, before the factorisation
            try:                                        # overwrites H
                factor = linalg.cho_factor(H, lower=True, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:  # singular normal equations
                return np.zeros_like(rhs), None, np.inf, None
            reciprocal, _ = lapack.dpocon(factor[0], norm, uplo="L")
            condition = float(np.sqrt(1.0 / reciprocal)) if reciprocal > 0 else np.inf

            def solve(b):
                return linalg.cho_solve(factor, b, check_finite=False)
            rank = None  # unknown: only the condition estimate decides
        solution = solve(rhs / scale) / scale
        for _ in range(refinements):
            solution = solution + solve(_normal_residual(equations, solution) / scale) / scale
    return solution, rank, condition, None


def _fit_residual(equations: GramEquations, G: np.ndarray) -> float:
    misfit = sum(float(np.sum((block @ G[row] - rhs) ** 2)) for row, (block, rhs)
                 in enumerate(zip(equations.coefficients, equations.targets)))
    total = sum(float(np.sum(rhs ** 2)) for rhs in equations.targets)
    return float(np.sqrt(misfit / total)) if total > 0 else float("nan")


SVD_LIMIT = 1_000_000  # design-matrix entries above which "auto" switches from SVD to Cholesky
# The Cholesky path's largest trusted condition of the design: its normal equations hold the
# square, 10¹², still three orders below double precision's 1/ε ≈ 4.5·10¹⁵. Determined views
# measured 7.6·10² to 1.7·10³ (SVD) and 1.4·10³ to 3.5·10³ by this estimate; the view one rank
# short, 9.4·10⁸.
CHOLESKY_CONDITION_LIMIT = 1e6


def gram_attack(view: LabelPartyView, *, method: str = "auto", allow_underdetermined: bool = False,
                rcond: float = 1e-10) -> GramAttackResult:
    """The label party's least-squares estimate of G = X·Xᵀ from its own view.

    Unknowns: the n(n+1)/2 upper-triangle entries of G (symmetry halves them); equations: h per
    pair of consecutive appearances of a row, n·h·(E − 1) for E epochs of a per-epoch shuffle.
    The count is necessary, not sufficient: with one sigmoid output, δ_j = e_j·(w_top ⊙ act'(z_j)),
    so the h equations of an interval are independent only through the ReLU patterns (and the
    drift of w_top). Measured: h = 2 with n = 64 stays rank-deficient even at E = 40 (4992
    equations for 2080 unknowns); the numerical rank check reports it.
    ``method``: ``"svd"`` (SVD least squares on the column-equilibrated design: exact rank and
    condition number, O(M·N²) for M equations and N unknowns), ``"cholesky"`` (normal equations
    assembled from the row blocks, Cholesky and iterative refinement: O(N³/3), for n up to a
    few hundred; scipy if installed, else numpy's eigh), or ``"auto"`` (SVD while the design
    has at most SVD_LIMIT entries). ``rcond`` is the relative singular-value cut-off below which
    the (equilibrated) design counts as rank-deficient (the Cholesky path: a condition above
    1/rcond or CHOLESKY_CONDITION_LIMIT, whichever is lower). When the view does not determine G this raises :class:`Underdetermined` (its
    ``result`` holds the counts and the minimum-norm fit) unless ``allow_underdetermined``,
    which returns that result with ``determined=False`` instead.
    """
    started = time.perf_counter()
    equations = gram_equations(view)
    n, n_eq, n_unknowns = equations.n_rows, equations.n_equations, equations.n_unknowns
    if method == "auto":
        method = "svd" if n_eq * n_unknowns <= SVD_LIMIT else "cholesky"
    if method not in ("svd", "cholesky"):
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'svd' or 'cholesky'")
    reasons = []
    if n_eq < n_unknowns:
        reasons.append(f"{n_eq} equations for {n_unknowns} unknowns (n(n+1)/2 with n = {n})")
    touched = np.zeros((n, n), dtype=bool)
    for row, block in enumerate(equations.coefficients):
        touched[row] |= np.any(block != 0, axis=0)
    untouched = int(np.sum(~np.triu(touched | touched.T)[np.triu_indices(n)]))
    if untouched:
        reasons.append(f"{untouched} entries of X·Xᵀ appear in no equation")
    rank = condition = None
    if n_eq == 0:
        solution = np.zeros(n_unknowns)
    else:
        solve = _solve_dense if method == "svd" else _solve_cholesky
        solution, rank, condition, _ = solve(equations, rcond)
        if rank is not None and rank < n_unknowns:
            reasons.append(f"numerically rank-deficient (rank {rank} < {n_unknowns}, "
                           f"cut-off rcond = {rcond:g})")
        elif rank is None and not condition < min(1.0 / rcond, CHOLESKY_CONDITION_LIMIT):
            reasons.append("numerically rank-deficient (singular normal equations: Cholesky "
                           "failed)" if condition == np.inf else
                           f"numerically rank-deficient (condition estimate {condition:.3g} > "
                           f"{min(1.0 / rcond, CHOLESKY_CONDITION_LIMIT):.3g}, the most the "
                           "normal equations tell apart from singular)")
    G = np.zeros((n, n))
    upper = np.triu_indices(n)
    G[upper] = solution
    G.T[upper] = solution
    result = GramAttackResult(G, not reasons, "; ".join(reasons) or "determined", n_eq, n_unknowns,
                              method, rank, condition, _fit_residual(equations, G) if n_eq else
                              float("nan"), time.perf_counter() - started)
    if reasons and not allow_underdetermined:
        raise Underdetermined(f"the view does not determine X·Xᵀ: {result.reason}", result)
    return result


def project_gram(G_estimate, rank: int) -> np.ndarray:
    """The nearest (Frobenius) positive semidefinite matrix of rank ≤ ``rank`` to Ĝ: a denoiser
    the label party can apply since it knows d (its share W_B has d rows) and X·Xᵀ ⪰ 0."""
    G = np.asarray(G_estimate, dtype=np.float64)
    values, vectors = np.linalg.eigh((G + G.T) / 2)
    top = np.argsort(values)[::-1][:int(rank)]
    kept = np.clip(values[top], 0.0, None)
    return (vectors[:, top] * kept) @ vectors[:, top].T


def complete_from_known_rows(G_estimate, known_rows, X_known, *, n_features: int | None = None):
    """X (n, d) from G ≈ X·Xᵀ and a few rows of X the label party already knows.

    G = X·Xᵀ fixes X only up to an orthogonal Q (X and X·Q give the same G — and the same
    transcript, with W replaced by Qᵀ·W, so no attack on the transcript alone can do better).
    1. Y = V_d·Λ_d^{1/2} from the top d eigenpairs of G (d = ``n_features``; the label party
       knows d, the row count of its share W_B; default: X_known's width), so Y·Yᵀ ≈ G.
    2. Q = argmin_{orthogonal} ||Y_K·Q − X_K|| (orthogonal Procrustes: Q = U·Vᵀ from the SVD
       U·S·Vᵀ of Y_Kᵀ·X_K) over the known rows K, and X ≈ Y·Q.
    Q is unique once the known rows span R^d: with fewer than d known rows, the directions
    they do not span are a guess. Returns the estimate of every row (the known ones included).
    """
    G = np.asarray(G_estimate, dtype=np.float64)
    known_rows = np.asarray(known_rows, dtype=np.int64).reshape(-1)
    X_known = np.asarray(X_known, dtype=np.float64)
    if X_known.ndim != 2 or X_known.shape[0] != known_rows.shape[0]:
        raise ValueError(f"X_known must have one row per known row index, got {X_known.shape} "
                         f"for {known_rows.shape[0]} indices")
    d = X_known.shape[1] if n_features is None else int(n_features)
    eigenvalues, eigenvectors = np.linalg.eigh((G + G.T) / 2)
    top = np.argsort(eigenvalues)[::-1][:d]
    Y = eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0.0, None))
    if Y.shape[1] < d:  # n < d: pad, X has rank at most n anyway
        Y = np.hstack([Y, np.zeros((Y.shape[0], d - Y.shape[1]))])
    U, _, Vt = np.linalg.svd(Y[known_rows].T @ X_known)
    return Y @ (U @ Vt)


# ----------------------------------------------------------------------------------------------
# Leak 1, strongest form: the column space of z (the label party), immune to any noise on W.
# ----------------------------------------------------------------------------------------------


@dataclass
class ColumnSpaceResult:
    """What the column-space attack got from the label party's view.

    ``basis`` Y (n, d) is an orthonormal basis of the space the view leaves for X's columns;
    when ``determined`` that space is exactly col(X), so X = Y·C for an unknown invertible C.
    ``X`` is the recovered X (only with known rows), ``G`` the recovered X·Xᵀ = Y·(C·Cᵀ)·Yᵀ
    (from the first layer's SGD rule; None if the fit is not determined). ``spectrum`` holds
    the d + 2 smallest eigenvalues of the constraint operator L: d of them ≈ 0 and a gap after
    them is what "determined" means (``null_dimension`` counts those below ``cutoff``).
    ``gram_residual`` is ||M·A − ΔV|| / ||ΔV|| of the SGD-rule fit (≈ 0 when the first layer
    moved by plain SGD; large if W's path was perturbed, and then G is not trustworthy).
    """

    basis: np.ndarray
    X: np.ndarray | None
    G: np.ndarray | None
    null_dimension: int
    spectrum: np.ndarray
    determined: bool
    reason: str
    steps: int
    cutoff: float
    gram_residual: float = float("nan")
    seconds: float = 0.0


def column_space_operator(view: "LabelPartyView", n_features: int) -> np.ndarray:
    """L = Σ_s S_sᵀ·(I − U_s·U_sᵀ)·S_s (n, n): U_s the top-d left singular vectors of
    Z_s = z_s − b_s, S_s the selection of the batch's rows. Every column x of X has
    L·x = 0, since (I − U_s·U_sᵀ)·X_{R_s} = 0 when col(Z_s) = col(X_{R_s}) (h ≥ d, rank W_s = d).
    A batch with m ≤ d rows constrains nothing (its Z_s may span all of R^m)."""
    n, d = int(view.n_rows), int(n_features)
    if view.hidden < d:
        raise ValueError(f"the column-space attack needs h ≥ d (h = {view.hidden}, d = {d}): "
                         "with h < d, z spans only part of col(X_B); use gram_attack")
    L = np.zeros((n, n))
    for step in view.steps:
        m = step.rows.shape[0]
        if m <= d:
            continue
        U = np.linalg.svd(step.linear_part, full_matrices=False)[0][:, :d]
        L[np.ix_(step.rows, step.rows)] += np.eye(m) - U @ U.T
    return L


def _gram_from_sgd_rule(view: "LabelPartyView", Y: np.ndarray) -> tuple[np.ndarray, float]:
    """M = C·Cᵀ from V_s = Y_{R_s}⁺·Z_s = C·W_s and V_{s+1} − V_s = −η_s·M·Y_{B_s}ᵀ·δ_s, then
    X·Xᵀ = Y·M·Yᵀ. Only pairs of consecutive steps whose batches have rank d count: a batch whose
    rows span less (rare one-hot categories) does not pin V_s down."""
    d = Y.shape[1]
    V = []
    for step in view.steps:
        block = Y[step.rows]
        singular = np.linalg.svd(block, compute_uv=False)
        full = block.shape[0] >= d and singular[-1] > 1e-8 * singular[0]
        V.append(np.linalg.lstsq(block, step.linear_part, rcond=None)[0] if full else None)
    pairs = [t for t in range(len(view.steps) - 1) if V[t] is not None and V[t + 1] is not None]
    if not pairs:
        return None, float("nan")
    A = np.hstack([-view.steps[t].lr * Y[view.steps[t].rows].T @ view.steps[t].delta
                   for t in pairs])
    D = np.hstack([V[t + 1] - V[t] for t in pairs])
    M = np.linalg.lstsq(A.T, D.T, rcond=None)[0].T
    residual = float(np.linalg.norm(M @ A - D) / max(np.linalg.norm(D), 1e-300))
    M = (M + M.T) / 2
    return Y @ M @ Y.T, residual


def known_rows_of(known_rows, X_known, d: int):
    """The attacker's side knowledge as arrays: the indices of the rows it knows, and those rows
    (ValueError unless X_known holds one row of d features per index)."""
    known = np.asarray(known_rows, dtype=np.int64).reshape(-1)
    X_known = np.asarray(X_known, dtype=np.float64)
    if X_known.shape != (known.shape[0], d):
        raise ValueError(f"X_known must be ({known.shape[0]}, {d}), got {X_known.shape}")
    return known, X_known


def column_space_attack(view: "LabelPartyView", n_features: int, *, known_rows=None,
                        X_known=None, cutoff: float = 1e-9) -> ColumnSpaceResult:
    """The label party's recovery of X (with known rows) or of X·Xᵀ (without), from z alone.

    Method. L = :func:`column_space_operator` (needs h ≥ d). Its null space contains col(X);
    once a row has been in batches of two epochs, the batches overlap and (generically) the null
    space is exactly col(X), d-dimensional: ``determined``. Then:
    * with ``known_rows`` K and their true values ``X_known`` (≥ d rows spanning R^d): the
      unknown rows solve L_UU·X_U = −L_UK·X_K by least squares. When the null space is exactly
      col(X) this is X = Y·C with C fitted on the known rows; it also works before that (e.g.
      within one epoch) wherever every batch component holds d known rows.
    * without known rows: X is identifiable only up to an invertible C, and the transcript is
      unchanged under X → X·Q, W → Qᵀ·W for orthogonal Q, so X·Xᵀ is the most that can be
      recovered. It is recovered exactly from the first layer's SGD rule (see
      :func:`_gram_from_sgd_rule`). (Standardised features give less: trace(X·Xᵀ) = n·d
      and unit column variances fix the scale and d of the d(d+1)/2 entries of C·Cᵀ only.)
    The noise that was added to W's updates would not enter Y or X at all; only the Gram step
    uses the SGD rule, and reports its ``gram_residual``.
    """
    started = time.perf_counter()
    n, d = int(view.n_rows), int(n_features)
    with _one_blas_thread():
        L = column_space_operator(view, d)
        values, vectors = np.linalg.eigh(L)
    null_dimension = int(np.sum(values < cutoff))
    Y = vectors[:, :d]
    reasons = []
    if null_dimension > d:
        reasons.append(f"the view leaves a {null_dimension}-dimensional space for X's columns "
                       f"(d = {d}): too few epochs or batches of ≤ d rows")
    if null_dimension < d:
        reasons.append(f"only {null_dimension} eigenvalues of L below {cutoff:g}: z is not an "
                       "exact X·W here (noise on z itself, or rank W < d)")
    determined = not reasons
    X = None
    if known_rows is not None:
        known, X_known = known_rows_of(known_rows, X_known, d)
        unknown = np.setdiff1d(np.arange(n), known)
        X = np.empty((n, d))
        X[known] = X_known
        with _one_blas_thread():
            X[unknown] = np.linalg.lstsq(L[np.ix_(unknown, unknown)],
                                         -L[np.ix_(unknown, known)] @ X_known, rcond=None)[0]
    G, residual = (None, float("nan"))
    if determined and len(view.steps) > 1:
        with _one_blas_thread():
            G, residual = _gram_from_sgd_rule(view, Y)
    return ColumnSpaceResult(Y, X, G, null_dimension, values[:d + 2].copy(), determined,
                             "; ".join(reasons) or "determined", len(view.steps), cutoff,
                             residual, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# Leak 1 when h < d: a rank-d fit of the first layer's trajectory (the label party).
# ----------------------------------------------------------------------------------------------


@dataclass
class LowRankGramResult:
    """What the rank-d trajectory fit got from the label party's view.

    ``G`` = X̂·X̂ᵀ (n, n), ``X`` the rows completed from the known ones (None without them),
    ``initial_weights`` the fitted W_0 (d, h) in the same rotation as the fitted X̂.
    ``determined`` means all of: at least as many equations as unknowns, every row seen, the
    best restart fits the view exactly (relative ``loss`` < ``tolerance``), and every other
    restart that fits exactly found the same X·Xᵀ within 5% (``restarts_agreeing`` of
    ``restarts_exact``).
    Otherwise G is the best fit found, NOT an estimate to trust; ``reason`` says why.
    ``loss`` is Σ_t ||X̂_{B_t}·Ŵ_t − (z_t − b_t)||² / Σ_t ||z_t − b_t||² of the best restart.
    """

    G: np.ndarray
    X: np.ndarray | None
    initial_weights: np.ndarray
    determined: bool
    reason: str
    n_equations: int
    n_unknowns: int
    loss: float
    iterations: int
    restart_losses: list[float]
    restarts_exact: int
    restarts_agreeing: int
    seconds: float = 0.0


def _trajectory_misfit(view: "LabelPartyView", n_features: int):
    """f(θ) and ∇f for θ = (X (n, d), W_0 (d, h)) flattened: the relative misfit of the first
    layer's trajectory W_t = W_0 − Σ_{s<t} η_s·X_{B_s}ᵀ·δ_s to what B saw, Z_t = z_t − b_t.

    f = Σ_t ||X_{B_t}·W_t − Z_t||² / Σ_t ||Z_t||². The gradient is backpropagation through the
    trajectory: with R_t the residual and S_t = Σ_{t' ≥ t} 2·X_{B_t'}ᵀ·R_t' (the sensitivity of
    f to W_t, a suffix sum), ∂f/∂X_{B_s} = 2·R_s·W_sᵀ − η_s·δ_s·S_{s+1}ᵀ and ∂f/∂W_0 = S_0.
    One evaluation costs O(E·n·h·d), not the O(E·n²·h) of the equations on G."""
    n, d, h = int(view.n_rows), int(n_features), view.hidden
    steps = [(s.rows, s.linear_part, s.lr * s.delta) for s in view.steps]
    scale = sum(float(np.sum(Z * Z)) for _, Z, _ in steps) or 1.0

    def misfit(theta):
        X = theta[:n * d].reshape(n, d)
        W = theta[n * d:].reshape(d, h)
        weights, residuals, value = [], [], 0.0
        for rows, Z, step_delta in steps:
            R = X[rows] @ W - Z
            weights.append(W)
            residuals.append(R)
            value += float(np.sum(R * R))
            W = W - X[rows].T @ step_delta
        grad_X = np.zeros((n, d))
        sensitivity = np.zeros((d, h))  # S_{t+1} while visiting step t backwards
        for (rows, _, step_delta), W, R in zip(steps[::-1], weights[::-1], residuals[::-1]):
            grad_X[rows] += 2.0 * R @ W.T - step_delta @ sensitivity.T
            sensitivity = sensitivity + 2.0 * X[rows].T @ R
        return value / scale, np.concatenate([grad_X.ravel(), sensitivity.ravel()]) / scale

    return misfit


def low_rank_gram_attack(view: "LabelPartyView", n_features: int, *, known_rows=None,
                         X_known=None, restarts: int = 3, max_iterations: int = 20000,
                         tolerance: float = 1e-8, seed: int = 0) -> LowRankGramResult:
    """The label party's X·Xᵀ (and X, with known rows) when h < d: a rank-d fit of W's path.

    Method. The first layer moves by plain SGD, W_{t+1} = W_t − η_t·X_{B_t}ᵀ·δ_t with δ_t B's
    own, so W_t = W_0 − Xᵀ·C_t with C_t = Σ_{s<t} η_s·δ_s scattered on the batch rows, and
    every batch B saw obeys  z_t − b_t = X_{B_t}·(W_0 − Xᵀ·C_t).  The unknowns are X (n, d)
    and W_0 (d, h), up to the rotation (X·Q, Qᵀ·W_0) that no transcript can see; the fit
    minimises the misfit (:func:`_trajectory_misfit`) by L-BFGS from ``restarts`` random
    starts and keeps the best. Counting: E epochs give E·n·h equations for n·d + d·h −
    d(d−1)/2 unknowns, so E ≥ (n·d + d·h − d(d−1)/2)/(n·h) ≈ d/h suffices in count — E = 2
    for German credit with n = 800, h = 16, d = 30. Subtracting a row's consecutive appearances eliminates W_0 and gives the
    equations of :func:`gram_attack`, z_i(t2) − z_i(t1) = −G[i, :]·(C_t2 − C_t1)[:, k], which
    the linear attack solves for all n(n+1)/2 entries of G; fitting G = X·Xᵀ of rank d
    instead needs n·d − d(d−1)/2 unknowns (E ≥ 1 + d/h from the differences alone), and
    keeping W_0 adds the first epoch's n·h equations for d·h more unknowns.
    The count is necessary, not sufficient, and the fit is non-convex: ``determined`` also
    asks for an exact fit and for the exact restarts to agree on X·Xᵀ (see
    :class:`LowRankGramResult`). With ``known_rows`` K and their values ``X_known``, X follows
    by :func:`complete_from_known_rows` (≥ d known rows spanning R^d fix the rotation).
    ``tolerance`` is a measured threshold, not a proof: L-BFGS converges slowly here (the
    drift Xᵀ·C_t that carries G is small next to X·W_0), and on German credit (tanh, lr 0.3)
    fits with relative misfit ≤ 4e-9 came with X·Xᵀ within 2e-2 and X at R² ≥ 0.999, while on
    breast cancer (relu, lr 0.1, d = 16, h = 8) misfits of 3e-8 still left R² ≤ 0.75.
    Caveat: it relies on the exact SGD rule for the first layer (like :func:`gram_attack`);
    noise on W's updates breaks it, unlike :func:`column_space_attack` (which needs h ≥ d).
    Uses scipy's L-BFGS-B (scipy comes with scikit-learn).
    """
    from scipy.optimize import minimize  # attacks only; the core never needs scipy

    started = time.perf_counter()
    n, d, h = int(view.n_rows), int(n_features), view.hidden
    n_equations = int(sum(s.rows.shape[0] for s in view.steps)) * h
    n_unknowns = n * d + d * h - d * (d - 1) // 2
    reasons = []
    if n_equations < n_unknowns:
        reasons.append(f"{n_equations} equations for {n_unknowns} unknowns "
                       f"(n·d + d·h − d(d−1)/2 with n = {n}, d = {d}, h = {h})")
    seen = np.zeros(n, dtype=bool)
    for step in view.steps:
        seen[step.rows] = True
    if not seen.all():
        reasons.append(f"{int(np.sum(~seen))} rows never appear in a batch")
    misfit = _trajectory_misfit(view, d)
    rng = np.random.default_rng([int(seed), 0x10E4])
    # Scale of the start: X standardised-like (unit entries) and W_0 sized so that X·W_0
    # matches the spread B sees in z − b; the fit is scale-free otherwise.
    z_spread = np.sqrt(np.mean([np.mean(s.linear_part ** 2) for s in view.steps]))
    fits = []
    with _one_blas_thread():
        for _ in range(max(1, int(restarts))):
            start = np.concatenate([rng.standard_normal(n * d),
                                    rng.standard_normal(d * h) * z_spread / np.sqrt(d)])
            fits.append(minimize(misfit, start, jac=True, method="L-BFGS-B",
                                 options=dict(maxiter=int(max_iterations), maxfun=2 * int(max_iterations),
                                              ftol=0.0, gtol=1e-14, maxcor=30)))
    best = min(fits, key=lambda fit: fit.fun)
    X_fit = best.x[:n * d].reshape(n, d)
    G = X_fit @ X_fit.T
    exact = [fit for fit in fits if fit.fun < tolerance]
    agreeing = sum(relative_error(fit.x[:n * d].reshape(n, d) @ fit.x[:n * d].reshape(n, d).T, G)
                   < 0.05 for fit in exact)
    if best.fun >= tolerance:
        reasons.append(f"no restart fits the view exactly (best relative misfit {best.fun:.3g} "
                       f"after {best.nit} iterations; tolerance {tolerance:g})")
    elif agreeing < len(exact):
        reasons.append(f"{len(exact)} restarts fit exactly but only {agreeing} agree on X·Xᵀ")
    X = None
    if known_rows is not None:
        known, X_known = known_rows_of(known_rows, X_known, d)
        X = complete_from_known_rows(G, known, X_known, n_features=d)
        X[known] = X_known
    return LowRankGramResult(G, X, best.x[n * d:].reshape(d, h).copy(), not reasons,
                             "; ".join(reasons) or "determined", n_equations, n_unknowns,
                             float(best.fun), int(best.nit), [float(f.fun) for f in fits],
                             len(exact), int(agreeing), time.perf_counter() - started)


def first_steps(view: "LabelPartyView", steps: int) -> "LabelPartyView":
    """The view truncated to its first ``steps`` batches (e.g. epochs × batches per epoch)."""
    return LabelPartyView(view.n_rows, view.steps[:int(steps)])


# ----------------------------------------------------------------------------------------------
# Leak 2: the labels from step 4b's input gradient δ·Wᵀ (the data party).
# ----------------------------------------------------------------------------------------------


def label_attack(view: DataPartyView, *, method: str = "direction", known_labels=None):
    """Per-row label scores (n,) from the input gradients δ·Wᵀ the data party received.

    Row i's gradient is δ_i·Wᵀ with δ_i = (p_i − y_i)/m · (w_top ⊙ act'(z_i)) for a binary
    sigmoid loss: the vector (w_top ⊙ act'(z_i))·Wᵀ points roughly the same way for every row
    and the sign of p_i − y_i — the label — flips it.
    * ``"direction"``: normalise every received row, project it on the top right singular
      vector of all of them, average a row's projections over its appearances;
    * ``"norm"``: the mean row norm |p_i − y_i|·|…| (large for badly fitted rows).
    Which sign is which class is not in the view: with ``known_labels`` ({row: label} for a few
    rows) the scores are oriented so that class 1 scores high; otherwise score with
    max(AUC, 1 − AUC) (:func:`separation_auc`). Rows never seen score NaN.
    """
    if not view.input_gradients:
        raise ValueError("the data party received no input gradient (no bottom model?)")
    gradients = np.vstack([np.asarray(g, dtype=np.float64) for g in view.input_gradients])
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in view.rows])
    if gradients.shape[0] != rows.shape[0]:
        raise ValueError("rows and input_gradients must match step by step")
    norms = np.linalg.norm(gradients, axis=1)
    if method == "direction":
        unit = gradients / np.where(norms > 0, norms, 1.0)[:, None]
        direction = np.linalg.svd(unit, full_matrices=False)[2][0]
        per_appearance = unit @ direction
    elif method == "norm":
        per_appearance = norms
    else:
        raise ValueError(f"unknown method {method!r}; expected 'direction' or 'norm'")
    counts = np.bincount(rows, minlength=view.n_rows).astype(np.float64)
    sums = np.bincount(rows, per_appearance, minlength=view.n_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(counts > 0, sums / counts, np.nan)
    if known_labels and method == "direction":
        known = {int(row): int(label) for row, label in dict(known_labels).items()}
        ones = [scores[row] for row, label in known.items() if label == 1]
        zeros = [scores[row] for row, label in known.items() if label != 1]
        if ones and zeros and np.nanmean(ones) < np.nanmean(zeros):
            scores = -scores
    return scores


def separation_auc(labels, scores) -> float:
    """max(AUC, 1 − AUC): how well the scores split the classes, whichever way round."""
    value = nn.roc_auc(labels, scores)
    return max(value, 1.0 - value)


# ----------------------------------------------------------------------------------------------
# Trajectories: plaintext training that records each party's view.
# ----------------------------------------------------------------------------------------------


@dataclass
class Recording:
    """A plaintext run and what each party saw: B's view (z, b, δ) and, with a bottom model,
    A's view (δ·Wᵀ). ``bottom`` is (nn.Dense, activation) or None."""

    mlp: nn.MLP
    bottom: tuple | None
    label_view: LabelPartyView
    data_view: DataPartyView
    batch_loss: list[float]

    def predict_scores(self, X) -> np.ndarray:
        inputs = np.asarray(X, dtype=np.float64)
        if self.bottom is not None:
            layer, activation = self.bottom
            inputs = activation.forward(layer.forward(inputs))
        return self.mlp.predict_scores(inputs)


def train_and_record(X, y, layer_sizes, *, epochs: int, batch_size: int, lr: float, seed: int = 0,
                     init_seed: int = 0, activation: str = "relu", momentum: float = 0.0,
                     bottom_width: int | None = None, bottom_activation: str = "relu") -> Recording:
    """Train an nn.MLP on (X, y) exactly as nn.train_plaintext does, recording both views.

    ``layer_sizes`` starts at the interactive layer's input width (X's d, or ``bottom_width``).
    With ``bottom_width`` the data party's bottom layer α = act(X·W_bot + b_bot) sits below
    the interactive layer (seeded from ``[init_seed, 0xB07]``), and the data party's view
    records δ·Wᵀ (with the W of the forward pass) per step.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    mlp = nn.MLP(layer_sizes, activation=activation, seed=init_seed)
    bottom = None
    if bottom_width is not None:
        rng = np.random.default_rng([int(init_seed), 0xB07])
        layer = nn.Dense(X.shape[1], int(bottom_width), rng=rng,
                         init=nn.INIT_FOR_ACTIVATION[bottom_activation])
        bottom = (layer, nn.ACTIVATIONS[bottom_activation]())
    if mlp.layer_sizes[0] != (X.shape[1] if bottom is None else bottom[0].n_out):
        raise ValueError(f"layer_sizes[0] = {mlp.layer_sizes[0]} does not match the input width")
    optimizer = nn.SGD(lr, momentum)
    first = mlp.layers[0]
    label_view = LabelPartyView(X.shape[0])
    data_view = DataPartyView(X.shape[0])
    losses = []
    for epoch in range(int(epochs)):
        for rows in nn.minibatches(X.shape[0], batch_size, seed=seed, epoch=epoch):
            inputs = X[rows] if bottom is None else bottom[1].forward(bottom[0].forward(X[rows]))
            bias = first.b.copy()
            z = first.forward(inputs)
            loss, dlogits = mlp.loss_and_grad(mlp.forward_top(z), y[rows])
            delta = mlp.backward_top(dlogits)
            input_gradient = first.backward(delta)           # δ·Wᵀ, W of the forward pass
            label_view.steps.append(LabelStep(rows, z, bias, delta, lr))
            first.W -= lr * first.dW
            optimizer.step(mlp.top_named_params())
            if bottom is not None:
                data_view.rows.append(np.array(rows))
                data_view.input_gradients.append(input_gradient)
                layer, act = bottom
                layer.backward(act.backward(input_gradient))
                layer.W -= lr * layer.dW
                layer.b -= lr * layer.db
            losses.append(loss)
    return Recording(mlp, bottom, label_view, data_view, losses)


# ----------------------------------------------------------------------------------------------
# Measurements for the notebook / audit: rows of plain dicts.
# ----------------------------------------------------------------------------------------------


def load_rows(name: str = "breast_cancer", n: int = 48, *, seed: int = 0, n_test: int = 0,
              features: int | None = None):
    """A seeded subset of a built-in dataset (data.load_builtin), standardised on its training
    rows: (X_train (n, d), y_train, X_test (n_test, d), y_test). ``features`` keeps the first d
    columns only (to vary d)."""
    dataset = data.load_builtin(name)
    if n + n_test > len(dataset.y):
        raise ValueError(f"{name} has {len(dataset.y)} rows, asked for {n} + {n_test}")
    order = np.random.default_rng([int(seed), 0x1EA4]).permutation(len(dataset.y))
    columns = slice(None) if features is None else slice(0, int(features))
    train, test = order[:n], order[n:n + n_test]
    scaler = data.Standardizer().fit(dataset.X[train][:, columns])
    return (scaler.transform(dataset.X[train][:, columns]), dataset.y[train],
            scaler.transform(dataset.X[test][:, columns]), dataset.y[test])


def _completion_r2(G, X, known_rows: int, seed: int) -> float:
    if known_rows <= 0 or known_rows >= X.shape[0]:
        return float("nan")
    known = np.random.default_rng([int(seed), 0x0C0]).permutation(X.shape[0])[:known_rows]
    unknown = np.setdiff1d(np.arange(X.shape[0]), known)
    estimate = complete_from_known_rows(G, known, X[known])
    return r_squared(estimate[unknown], X[unknown])


GRAM_DEFAULTS = dict(dataset="breast_cancer", n=48, hidden=8, epochs=8, batch_size=16, lr=0.1,
                     known_rows=None, features=None, seed=0)


def run_gram_condition(**condition) -> dict:
    """Train, record B's view, attack it; one row {condition…, determined, relative_error, r2,…}.

    Keys (defaults in GRAM_DEFAULTS): dataset, n, hidden (h), epochs (E), batch_size, lr,
    features (d; None = all), known_rows (default d + 2), seed. relative_error is ||Ĝ − X·Xᵀ||_F / ||X·Xᵀ||_F; r2 is R² of the completed X over the
    rows B did not know (NaN when the view is underdetermined: no estimate is claimed).
    """
    unknown_keys = set(condition) - set(GRAM_DEFAULTS)
    if unknown_keys:
        raise ValueError(f"unknown condition keys {sorted(unknown_keys)}")
    c = {**GRAM_DEFAULTS, **condition}
    X, y, _, _ = load_rows(c["dataset"], c["n"], seed=c["seed"], features=c["features"])
    d = X.shape[1]
    known_rows = d + 2 if c["known_rows"] is None else int(c["known_rows"])
    recording = train_and_record(X, y, [d, c["hidden"], 1], epochs=c["epochs"],
                                 batch_size=c["batch_size"], lr=c["lr"], seed=c["seed"],
                                 init_seed=c["seed"] + 1)
    result = gram_attack(recording.label_view, allow_underdetermined=True)
    truth = X @ X.T
    projected = project_gram(result.G, d)
    return {**c, "d": d, "known_rows": known_rows, "n_equations": result.n_equations,
            "n_unknowns": result.n_unknowns, "determined": result.determined,
            "reason": result.reason, "condition": result.condition, "method": result.method,
            "relative_error": relative_error(result.G, truth) if result.determined else float("nan"),
            "relative_error_projected": relative_error(projected, truth) if result.determined
            else float("nan"),
            "r2": _completion_r2(result.G, X, known_rows, c["seed"]) if result.determined
            else float("nan"),
            "residual": result.residual, "seconds": result.seconds}


def gram_attack_curve(conditions, **common) -> list[dict]:
    """:func:`run_gram_condition` over a list of conditions (dicts), with ``common`` keys
    shared by all: e.g. ``gram_attack_curve([{"epochs": e} for e in range(2, 10)], n=48)``."""
    return [run_gram_condition(**{**common, **condition}) for condition in conditions]


def label_attack_measurement(*, dataset: str = "breast_cancer", n: int = 256, bottom_width: int = 8,
                             hidden: int = 4, epochs: int = 2, batch_size: int = 32,
                             lr: float = 0.1, seed: int = 0) -> dict:
    """Train bottom layer + MLP in plaintext, give the data party δ·Wᵀ per step, attack.
    Returns the direction and norm scores' separation AUC (max(AUC, 1 − AUC)), and the
    direction AUC oriented by 4 known labels."""
    X, y, _, _ = load_rows(dataset, n, seed=seed)
    recording = train_and_record(X, y, [bottom_width, hidden, 1], epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed, init_seed=seed + 1,
                                 bottom_width=bottom_width)
    view = recording.data_view
    known = {int(row): int(y[row]) for row in np.concatenate(
        [np.flatnonzero(y == 0)[:2], np.flatnonzero(y == 1)[:2]])}
    return {"dataset": dataset, "n": n, "bottom_width": bottom_width, "hidden": hidden,
            "epochs": epochs, "batch_size": batch_size,
            "direction_auc": separation_auc(y, label_attack(view)),
            "norm_auc": separation_auc(y, label_attack(view, method="norm")),
            "oriented_auc_4_known": nn.roc_auc(y, label_attack(view, known_labels=known))}


def _test_metrics(recording: Recording, X_test, y_test) -> tuple[float, float]:
    scores = recording.predict_scores(X_test)
    accuracy = float(np.mean((scores >= 0.5).astype(np.int64) == y_test))
    return accuracy, nn.roc_auc(y_test, scores)


ATTACK_FAILS_ABOVE = 0.5  # relative error of X·Xᵀ above which the Gram attack counts as failed


# ----------------------------------------------------------------------------------------------
# The mitigation that holds: input perturbation (privacy/input_perturbation.py), measured.
# ----------------------------------------------------------------------------------------------

CURVE_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, float("inf"))  # past 8: where utility returns
CURVE_DELTA = 1e-5  # ≪ 1/n for every set here (n ≤ 1000); one fixed number keeps rows comparable
CURVE_SETTINGS = {
    "german_credit": dict(n=800, n_test=200, hidden=32, batch_size=64, epochs=10, lr=0.1),
    "breast_cancer": dict(n=400, n_test=169, hidden=32, batch_size=64, epochs=10, lr=0.1),
}


def generous_attacks(X, noisy, y, seed: int = 0) -> dict:
    """Two attackers far better placed than the label party, R² against the TRUE X of the
    victims (a random half of the rows):

    * ``linear_map_r2``: it holds the noisy rows exactly, and the TRUE rows of the other half
      (people it knows), and fits the best affine map noisy → true on those, then applies it to
      the victims' noisy rows. Held out: fitted on every row instead, the map would score about
      d/n from overfitting alone.
    * ``labels_only_r2``: it ignores the protocol and predicts each victim's row by the mean
      TRUE row of its class among the people it knows — what the labels it holds tell about X,
      which no protection of X can remove.
    """
    n = len(X)
    order = np.random.default_rng([int(seed), 0x0A7]).permutation(n)
    known, victims = order[: n // 2], order[n // 2:]
    design = np.hstack([noisy, np.ones((n, 1))])
    fitted = design[victims] @ np.linalg.lstsq(design[known], X[known], rcond=None)[0]
    labels = np.asarray(y).reshape(n, -1).argmax(axis=1) if np.ndim(y) > 1 else np.asarray(y)
    means = {label: X[known][labels[known] == label].mean(axis=0)
             for label in np.unique(labels[known])}
    by_class = np.array([means.get(label, X[known].mean(axis=0)) for label in labels[victims]])
    return {"linear_map_r2": r_squared(fitted, X[victims]),
            "labels_only_r2": r_squared(by_class, X[victims])}


def _curve_noise_seed(noise_seed: int, epsilon: float) -> int:
    """A fixed 256-bit noise seed per (noise_seed, ε): reproducible, and no two ε share noise."""
    import hashlib
    text = f"acml curve noise {int(noise_seed)} {float(epsilon)!r}".encode()
    return int.from_bytes(hashlib.sha256(text).digest(), "big")


def input_perturbation_curve(dataset: str = "german_credit", epsilons=CURVE_EPSILONS, *,
                             delta: float = CURVE_DELTA, attack_epochs: int = 2,
                             known_rows: int | None = None, seed: int = 0,
                             noise_seed: int = 0, **settings) -> list[dict]:
    """For each ε: perturb the training rows and the rows to predict once (InputPerturbation,
    C = √d), train the plaintext MLP on them, and attack the label party's view with the
    column-space attack after ``attack_epochs`` epochs from ``known_rows`` (default d + 2) TRUE
    rows of X — the attacker knows a few real records, and the map it fits sends the noisy rows
    it recovers to its best linear guess of the true ones. R² is over the other rows, against
    the TRUE X.

    Plaintext simulation of the view: the protocol computes exactly this training on the
    perturbed X up to fixed-point quantisation (its weights equal the plaintext twin's), so its
    z, its accuracy and this attack's R² are the ones measured here. ``noise_seed`` fixes the
    data party's secret noise seed (one draw per ε, from seed (noise_seed, ε)), so the curve is
    reproducible; another seed moves the finite-ε rows by the noise's spread.
    """
    from privacy.input_perturbation import InputPerturbation

    config = {**CURVE_SETTINGS.get(dataset, CURVE_SETTINGS["breast_cancer"]), **settings}
    X, y, X_test, y_test = load_rows(dataset, config["n"], seed=seed, n_test=config["n_test"])
    n, d = X.shape
    known_rows = d + 2 if known_rows is None else int(known_rows)
    known = np.random.default_rng([int(seed), 0x0C0]).permutation(n)[:known_rows]
    unknown = np.setdiff1d(np.arange(n), known)
    per_epoch = -(-n // config["batch_size"])
    rows = []
    for epsilon in epsilons:
        mechanism = InputPerturbation(epsilon, delta, seed=_curve_noise_seed(noise_seed, epsilon))
        noisy, noisy_test = mechanism.perturb(X), mechanism.perturb(X_test)
        recording = train_and_record(noisy, y, [d, config["hidden"], 1],
                                     epochs=config["epochs"], batch_size=config["batch_size"],
                                     lr=config["lr"], seed=seed, init_seed=seed + 1)
        view = first_steps(recording.label_view, attack_epochs * per_epoch)
        attack = column_space_attack(view, d, known_rows=known, X_known=X[known])
        accuracy, test_auc = _test_metrics(recording, noisy_test, y_test)
        rows.append({"epsilon": float(epsilon), "delta": float(delta),
                     "sigma": float(mechanism.sigma) if mechanism.enabled else 0.0,
                     "clip": float(mechanism.clip),
                     "attack_r2": r_squared(attack.X[unknown], X[unknown]),
                     "attack_r2_of_noisy_X": r_squared(attack.X[unknown], noisy[unknown]),
                     **generous_attacks(X, noisy, y, seed),
                     "test_accuracy": accuracy, "test_auc": test_auc,
                     "majority_accuracy": float(max(np.mean(y_test), 1 - np.mean(y_test)))})
    return rows


def curve_table(curves: dict) -> list[str]:
    """The privacy/utility curve as the README's Markdown table, one line per (dataset, ε):
    ``curves`` maps a dataset name to input_perturbation_curve's rows. An R² is printed as
    "< 0" when the attack does worse than guessing each feature's mean."""
    def r2(value):
        return "< 0" if value < 0 else f"{value:.3f}"
    lines = ["| dataset | ε | σ | column-space attack R² | noisy X + known people, linear R² "
             "| labels alone R² | test accuracy | test AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in curves.items():
        for row in rows:
            epsilon = "∞" if math.isinf(row["epsilon"]) else f"{row['epsilon']:g}"
            lines.append(f"| {name} | {epsilon} | {row['sigma']:.3g} | {r2(row['attack_r2'])} | "
                         f"{r2(row['linear_map_r2'])} | {r2(row['labels_only_r2'])} | "
                         f"{row['test_accuracy']:.3f} | {row['test_auc']:.3f} |")
    return lines
