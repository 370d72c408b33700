"""What each party can learn from what the protocol reveals by design — measured, and one mitigation.

The protocol hides X from the label party B and the labels from the data party A cryptographically,
but two values are revealed on purpose, and each is enough for an attack:

1. **z = X·W + b reaches B every mini-batch.** B knows the bias b, its own δ = ∂L/∂z, the public
   learning rate η and the public batch order. The first layer moves by plain SGD,
   W ← W − η·X_Bᵀ·δ, so for a row i seen at steps t1 < t2

       (z_i(t2) − b(t2)) − (z_i(t1) − b(t1)) = x_i·(W(t2) − W(t1))
                                             = −Σ_{s∈[t1,t2)} η_s Σ_{j∈B_s} (x_i·x_j) δ_j(s),

   h linear equations in the Gram entries G = X·Xᵀ whose coefficients B knows.
   :func:`gram_attack` solves them; :func:`complete_from_known_rows` turns G into X (up to a
   rotation, which a few rows B already knows pin down).
2. **With a bottom model, A receives δ·Wᵀ (step 4b).** Its rows point one way for one class and
   the opposite way for the other: :func:`label_attack` scores them, :func:`auc` measures it.
3. **Mitigation of 1:** the data party adds fresh noise N to the first layer's update,
   W ← W − η·X_Bᵀ·δ + N, by adding N to its own share ε_acc (the label party's share W_B is
   untouched, so W = W_B + ε_acc moves by N). z then carries x_i·ΣN terms that B can neither
   predict nor cancel. :func:`mitigated_first_layer_update` is the update as a pure function;
   :func:`privacy_utility_curve` measures what it buys (attack error) and costs (accuracy, AUC).

Every attack takes plain numpy arrays — one party's own view (:class:`LabelPartyView`,
:class:`DataPartyView`) — never protocol objects, so it can be pointed at a real transcript as
well as at the plaintext trajectories :func:`train_and_record` produces here. Ground truth is
used only by the scoring helpers (:func:`relative_error`, :func:`r_squared`, :func:`auc`).

Randomness in this module is seeded numpy randomness, for reproducible experiments. A deployed
data party must draw the mitigation noise from a CSPRNG (``secrets``): B knowing the noise seed
would let it subtract the noise again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

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
    condition estimate max(diag L)²/min(diag L)² beyond 1/rcond²."""
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
            try:
                factor = linalg.cho_factor(H, lower=True, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:  # singular normal equations
                return np.zeros_like(rhs), None, np.inf, None
            pivots = np.abs(np.diag(factor[0]))
            condition = float(pivots.max() / pivots.min()) if pivots.min() > 0 else np.inf

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
    the (equilibrated) design counts as rank-deficient. When the view does not determine G this raises :class:`Underdetermined` (its
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
        elif rank is None and not condition < 1.0 / rcond:
            reasons.append("numerically rank-deficient (singular normal equations: Cholesky "
                           "failed)" if condition == np.inf else
                           f"numerically rank-deficient (condition estimate {condition:.3g} "
                           f"> 1/rcond = {1 / rcond:.3g})")
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
# Mitigation of leak 1: noise on W's trajectory, added by the data party through ε_acc.
# ----------------------------------------------------------------------------------------------


def mitigated_first_layer_update(W, X_batch, delta, lr, noise):
    """W − η·X_Bᵀ·δ + N: the first layer's plain SGD step plus the data party's noise N.

    Plaintext reference. In the protocol the data party adds N to its own share ε_acc
    (:func:`fold_noise_into_noise_acc`) after the step-4 update; W_B is unchanged, so
    W = W_B + ε_acc moves by exactly N and B never sees N.
    """
    W = np.asarray(W, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != W.shape:
        raise ValueError(f"noise shape {noise.shape} != W shape {W.shape}")
    return W - lr * (np.asarray(X_batch, dtype=np.float64).T @ np.asarray(delta, dtype=np.float64)) + noise


def mitigated_first_layer_update_int(W_int, X_int, delta_int, lr_int, noise_int):
    """The same step in the protocol's exact fixed point: every term an integer at W's scale
    (η_int·X_intᵀ·δ_int already is, by the plan's choice w_frac = lr + x + δ frac bits).
    Object arrays (Python ints) in, object arrays out: no rounding, no overflow."""
    W_int, X_int = np.asarray(W_int, dtype=object), np.asarray(X_int, dtype=object)
    delta_int, noise_int = np.asarray(delta_int, dtype=object), np.asarray(noise_int, dtype=object)
    if noise_int.shape != W_int.shape:
        raise ValueError(f"noise shape {noise_int.shape} != W shape {W_int.shape}")
    return W_int - int(lr_int) * X_int.T.dot(delta_int) + noise_int


def fold_noise_into_noise_acc(noise_acc_int, noise_int):
    """ε_acc ← ε_acc + N (integers at W's scale): how the data party applies the noise."""
    return np.asarray(noise_acc_int, dtype=object) + np.asarray(noise_int, dtype=object)


def update_noise(shape, noise_scale: float, lr: float, rng: np.random.Generator,
                 frac_bits: int | None = None) -> np.ndarray:
    """N = η·σ·ξ with ξ ~ N(0, 1) per entry (DP-SGD's noise on the summed gradient, σ in the
    gradient's units, without clipping: no formal ε guarantee is claimed).

    With ``frac_bits`` the noise is an integer at that fixed-point scale — round(N·2**frac_bits),
    returned as a Python-int object array — so the protocol's update stays exact; without, float.
    """
    noise = float(lr) * float(noise_scale) * rng.standard_normal(shape)
    if frac_bits is None:
        return noise
    out = np.empty(noise.size, dtype=object)
    out[:] = [int(round(value * 2.0 ** frac_bits)) for value in noise.ravel()]
    return out.reshape(noise.shape)


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
                     noise_scale: float = 0.0, noise_seed: int = 0,
                     bottom_width: int | None = None, bottom_activation: str = "relu") -> Recording:
    """Train an nn.MLP on (X, y) exactly as nn.train_plaintext does, recording both views.

    ``layer_sizes`` starts at the interactive layer's input width (X's d, or ``bottom_width``).
    ``noise_scale`` σ > 0 applies the mitigation: each first-layer step adds
    N = update_noise(W.shape, σ, η, rng) with rng = default_rng([noise_seed, 0x4015E]).
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
    noise_rng = np.random.default_rng([int(noise_seed), 0x4015E])
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
            if noise_scale > 0:
                noise = update_noise(first.W.shape, noise_scale, lr, noise_rng)
                first.W = mitigated_first_layer_update(first.W, inputs, delta, lr, noise)
            else:
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
                     known_rows=None, features=None, noise_scale=0.0, seed=0)


def run_gram_condition(**condition) -> dict:
    """Train, record B's view, attack it; one row {condition…, determined, relative_error, r2,…}.

    Keys (defaults in GRAM_DEFAULTS): dataset, n, hidden (h), epochs (E), batch_size, lr,
    features (d; None = all), known_rows (default d + 2), noise_scale (σ of the mitigation),
    seed. relative_error is ||Ĝ − X·Xᵀ||_F / ||X·Xᵀ||_F; r2 is R² of the completed X over the
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
                                 init_seed=c["seed"] + 1, noise_scale=c["noise_scale"],
                                 noise_seed=c["seed"] + 2)
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


def privacy_utility_curve(noise_scales, *, dataset: str = "breast_cancer", n: int = 64,
                          n_test: int = 200, hidden: int = 8, epochs: int = 12,
                          batch_size: int = 16, lr: float = 0.1, known_rows: int | None = None,
                          seed: int = 0, noise_seeds=(0,)) -> list[dict]:
    """For each σ: train with the mitigation (noise N = η·σ·ξ on every first-layer step, seeded),
    attack B's view (Gram relative error, completion R²), and measure the trained model on
    held-out rows (accuracy, AUC). ``noise_seeds``: several seeds are averaged.

    ``relative_error_projected`` scores :func:`project_gram` (rank d, PSD) of the estimate; the
    attack "fails" (``attack_fails``) only when both errors exceed ATTACK_FAILS_ABOVE.
    ``noise_to_gradient`` is E||N||_F / mean ||η·X_Bᵀδ||_F over the unmitigated run's steps:
    the noise's size against the updates it hides.
    """
    X, y, X_test, y_test = load_rows(dataset, n, seed=seed, n_test=n_test)
    d = X.shape[1]
    known_rows = d + 2 if known_rows is None else int(known_rows)
    truth = X @ X.T
    base = train_and_record(X, y, [d, hidden, 1], epochs=epochs, batch_size=batch_size, lr=lr,
                            seed=seed, init_seed=seed + 1)
    step_norm = float(np.mean([np.linalg.norm(lr * X[s.rows].T @ s.delta)
                               for s in base.label_view.steps]))
    rows = []
    for scale in noise_scales:
        samples = []
        for noise_seed in noise_seeds:
            recording = base if scale == 0 else train_and_record(
                X, y, [d, hidden, 1], epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                init_seed=seed + 1, noise_scale=scale, noise_seed=noise_seed)
            result = gram_attack(recording.label_view, allow_underdetermined=True)
            accuracy, test_auc = _test_metrics(recording, X_test, y_test)
            samples.append((relative_error(result.G, truth),
                            relative_error(project_gram(result.G, d), truth),
                            _completion_r2(result.G, X, known_rows, seed), accuracy, test_auc,
                            result.determined))
        values = np.array([sample[:5] for sample in samples])
        rows.append({"noise_scale": float(scale),
                     "noise_to_gradient": float(lr * scale * np.sqrt(d * hidden) / step_norm),
                     "relative_error": float(values[:, 0].mean()),
                     "relative_error_projected": float(values[:, 1].mean()),
                     "r2": float(values[:, 2].mean()),
                     "test_accuracy": float(values[:, 3].mean()),
                     "test_auc": float(values[:, 4].mean()),
                     "determined": all(sample[5] for sample in samples),
                     "attack_fails": bool(min(values[:, 0].mean(), values[:, 1].mean())
                                          > ATTACK_FAILS_ABOVE)})
    return rows


ATTACK_FAILS_ABOVE = 0.5  # relative error of X·Xᵀ above which the Gram attack counts as failed
