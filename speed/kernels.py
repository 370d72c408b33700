"""The fast paths: packing, multi-exponentiation, workers and precomputed randomness.

Every function here computes exactly what a simple, readable function in paillier.py computes,
only faster; each docstring names that twin, and tests/speed/test_fast_paths.py and
tests/speed/test_kernels.py check they agree (bit-identical ciphertexts for the same randomness, the
same decryptions otherwise).

    Slots              several signed values per plaintext (packing; pure integer algebra)
    encrypted_matmul   = EncryptedArray.__matmul__, by Straus multi-exponentiation (w-NAF digits
                       by default, fixed windows on request)
    encrypt_array      = PublicKey.encrypt / PrivateKey.encrypt, optionally on an executor
    decrypt_residues   = PrivateKey.decrypt_residues, on threads of this process (gmpy2 releases
                       the GIL in powmod_list) or on an executor
    decrypt_rows       the same, of a streamed message's row blocks as they arrive
    rerandomize        = EncryptedArray.rerandomize, optionally on an executor or from a pool
    randomizers        = PublicKey.randomizer, many at once, optionally on an executor
    RandomizerPool     randomizers computed ahead of need (offline), taken once each (online);
                       a public key's (DJN) or the key owner's (textbook r^n by CRT);
                       EpochPool keeps one a party's next epoch ahead (epoch_pool, split_offline)
    worker_count       how many pieces to cut work into (SizedExecutor, dask_executor)
    keypair_in_background  paillier.generate_keypair on a thread, while the caller works

DJN randomizers come from backend.FixedBaseTable (twin: powmod), one table per key and
process; the key owner's textbook randomness, for safe primes, from two half-size tables of
g_p mod p² and g_q mod q² (backend.SafePrimeSubgroup), or DJN's h_s mod p² and q² if asked.
"""

import collections
import os
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

import paillier
from speed import backend as backend_module
from speed.backend import current_backend, fixed_base_table, mpz
from fixed import as_int
from fixed import Fixed, object_array
from paillier import OP_COUNTS, EncryptedArray, PrivateKey, PublicKey

__all__ = [
    "encrypted_matmul", "encrypt_array", "decrypt_residues", "rerandomize",
    "randomizers", "RandomizerPool", "EpochPool", "epoch_pool", "prepare_pool",
    "data_party_need", "label_party_need", "split_offline", "worker_count", "SizedExecutor",
    "dask_executor", "decrypt_rows", "keypair_in_background", "default_threads", "run_tasks",
]

# -- where the heavy arithmetic runs ------------------------------------------------------------
#
# The kernels below take and return plain Python ints (and lists of them), never library
# objects, so any concurrent.futures.Executor can run them in other processes or on other
# machines: a ProcessPoolExecutor, or a dask.distributed client's get_executor().  All
# randomness is drawn by the caller, in this process, so a kernel is a deterministic function
# of its arguments and results are identical however the work is spread.  Caveat: the key
# owner's kernels receive p and q (and g_p, g_q, from which each worker builds its own tables);
# give them only executors on machines the key owner trusts.


def worker_count(executor, workers=None):
    """How many tasks `executor` runs at once, to cut work into enough pieces.

    In order: an explicit `workers`; 1 without an executor; the executor's own `workers`
    attribute (SizedExecutor, dask_executor); the standard library pools' `_max_workers`;
    else os.cpu_count().  (A dask.distributed executor has neither attribute: wrap it with
    dask_executor(client), or pass workers=, or every call gets a handful of tasks.)
    """
    if workers is not None:
        workers = as_int(workers, "workers")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    if executor is None:
        return 1
    for attribute in ("workers", "_max_workers"):
        count = getattr(executor, attribute, None)
        if isinstance(count, int) and count >= 1:
            return count
    return os.cpu_count() or 1


class SizedExecutor:
    """An executor that says how many workers stand behind it: `workers`, read by worker_count.

    Wraps any concurrent.futures-style executor (submit, map, shutdown), passing calls through.
    """

    def __init__(self, executor, workers):
        self.executor, self.workers = executor, worker_count(None, workers)

    def submit(self, function, *args, **kwargs):
        return self.executor.submit(function, *args, **kwargs)

    def map(self, function, *iterables, **kwargs):
        return self.executor.map(function, *iterables, **kwargs)

    def shutdown(self, *args, **kwargs):
        return self.executor.shutdown(*args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        return False

    def __repr__(self):
        return f"SizedExecutor({self.executor!r}, workers={self.workers})"


def dask_executor(client):
    """client.get_executor() for a dask.distributed Client, sized by its worker threads:
    sum(nthreads) over client.scheduler_info()["workers"] (at least one per worker)."""
    workers = client.scheduler_info()["workers"].values()
    threads = sum(max(int(info.get("nthreads", 1)), 1) for info in workers)
    return SizedExecutor(client.get_executor(), max(threads, 1))


def _slices(count, pieces):
    """range(count) cut into at most `pieces` contiguous, near-equal, non-empty slices."""
    pieces = max(1, min(count, pieces))
    bounds = [count * piece // pieces for piece in range(pieces + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def run_tasks(executor, kernel, tasks):
    """[kernel(*task) for task in tasks], in order: here if executor is None, else on it. The
    one place where the kernels meet an executor (the bench counts the traffic here)."""
    if executor is None:
        return [kernel(*task) for task in tasks]
    futures = [executor.submit(kernel, *task) for task in tasks]
    return [future.result() for future in futures]


def _ints(items):
    return [int(item) for item in items]


def best_fixed_window(exponent_bits, columns):
    """Window width w minimising the multiplications of a fixed-window multi-exponentiation:
    per term, ceil(bits/w)·(1 - 2^-w) table look-ups, plus a table of 2^w - 2 products per
    base shared by `columns` outputs."""
    def cost(w):
        return -(-exponent_bits // w) * (1 - 2.0 ** -w) + ((1 << w) - 2) / max(columns, 1)
    return min(range(1, 9), key=cost)


def kernel_multiexp(modulus, base_rows, exponent_columns, window):
    """out[i][j] = Π_t base_rows[i][t] ^ exponent_columns[j][t] mod modulus, as ints.

    Straus' interleaved fixed-window method: for each output, ONE chain of squarings is shared
    by all its terms; each base gets a table of its powers 0 .. 2^w - 1, built once and shared
    by every output of its row.  Negative exponents go into a second accumulator, inverted once
    at the end (the same group element as the simple path: results are bit-identical).
    """
    backend = current_backend()
    mpz = backend.mpz
    modulus, one = mpz(modulus), mpz(1)
    mask, size = (1 << window) - 1, 1 << window
    longest = max((abs(int(e)).bit_length() for column in exponent_columns for e in column),
                  default=0)
    windows = -(-longest // window)
    # Per output column: for each window position (most significant first) the (term, digit)
    # pairs to multiply in, separately for the positive and the negative exponents.
    schedules = []
    for column in exponent_columns:
        positive = [[] for _ in range(windows)]
        negative = [[] for _ in range(windows)]
        for term, exponent in enumerate(column):
            exponent = int(exponent)
            target = negative if exponent < 0 else positive
            exponent, position = abs(exponent), windows - 1
            while exponent:
                digit = exponent & mask
                if digit:
                    target[position].append((term, digit))
                exponent >>= window
                position -= 1
        schedules.append((positive, negative))
    used_terms = {term for positive, negative in schedules for schedule in (positive, negative)
                  for pairs in schedule for term, _ in pairs}

    out = []
    for row in base_rows:
        tables = {}
        for term in used_terms:
            base = mpz(row[term])
            table = [one, base]
            for _ in range(2, size):
                table.append(table[-1] * base % modulus)
            tables[term] = table
        results = []
        for positive, negative in schedules:
            accumulators = []
            for schedule in (positive, negative):
                accumulator, started = one, False
                for pairs in schedule:
                    if started:
                        for _ in range(window):
                            accumulator = accumulator * accumulator % modulus
                    for term, digit in pairs:
                        accumulator = accumulator * tables[term][digit] % modulus
                        started = True
                accumulators.append(accumulator)
            result, negatives = accumulators
            if negatives != one:
                result = result * backend.invert(negatives, modulus) % modulus
            results.append(int(result))
        out.append(results)
    return out


def signed_digits(exponent, width):
    """The width-w NAF of an integer, least significant digit first: exponent = Σ_i d_i·2^i with
    every d_i zero or odd, |d_i| < 2^(w-1), and any w consecutive digits holding at most one
    non-zero.  A negative exponent gets the digits of its absolute value, negated.  So a term
    needs only the odd powers b^±1, b^±3, ..., b^±(2^(w-1) - 1), and about one multiplication
    per w + 1 bits."""
    digits = []
    for bit, digit in nonzero_signed_digits(exponent, width):
        digits.extend([0] * (bit - len(digits)))
        digits.append(digit)
    return digits


def nonzero_signed_digits(exponent, width):
    """The non-zero digits of signed_digits(exponent, width) as (bit, digit) pairs, lowest
    first; runs of zero bits are skipped in one step each (the lowest set bit), not bit by
    bit."""
    if width < 2:  # a 1-NAF does not exist: its only odd digit ±1 would never end the loop
        raise ValueError(f"a w-NAF needs a width of at least 2, got {width}")
    full, half = 1 << width, 1 << (width - 1)
    sign, exponent, bit, out = (-1 if exponent < 0 else 1), abs(int(exponent)), 0, []
    while exponent:
        if not exponent & 1:
            zeros = (exponent & -exponent).bit_length() - 1
            exponent >>= zeros
            bit += zeros
            continue
        digit = exponent & (full - 1)
        if digit >= half:
            digit -= full
        out.append((bit, sign * digit))
        exponent = (exponent - digit) >> 1
        bit += 1
    return out


def wnaf_schedule(exponent_columns, width):
    """What kernel_multiexp_wnaf does with these exponents, without doing it: per output column
    the (term, signed digit) pairs of each bit position, most significant first (leading empty
    positions dropped), and the terms with a positive and with a negative digit somewhere.
    Returns (schedules, positive_terms, negative_terms)."""
    schedules, positive, negative = [], set(), set()
    for column in exponent_columns:
        digit_lists = [nonzero_signed_digits(exponent, width) for exponent in column]
        length = max((digits[-1][0] + 1 for digits in digit_lists if digits), default=0)
        positions = [[] for _ in range(length)]
        for term, digits in enumerate(digit_lists):
            for bit, digit in digits:
                positions[length - 1 - bit].append((term, digit))
                (positive if digit > 0 else negative).add(term)
        while positions and not positions[0]:
            positions.pop(0)
        schedules.append(positions)
    return schedules, positive, negative


def _table_multiplications(width):
    """Multiplications for one table of odd powers b^3, ..., b^(2^(w-1) - 1) from b: b² and
    one product per entry (none at w = 2, where the table is b alone)."""
    return 0 if width == 2 else 1 << (width - 2)


def _batch_inversion_multiplications(count):
    """Products of _batch_inverses for `count` values: count forward, 2·(count - 1) back."""
    return 3 * count - 2 if count else 0


def _chain_length(positions, sign):
    """Positions from the first holding a digit of `sign` (+1, -1, or 0 for either) to the end."""
    for index, pairs in enumerate(positions):
        if any(sign == 0 or (digit > 0) == (sign > 0) for _, digit in pairs):
            return len(positions) - index
    return 0


def wnaf_multiplications(row_count, exponent_columns, width, split_signs):
    """The modular multiplications (squarings included) kernel_multiexp_wnaf spends on
    `row_count` rows with these exponents, counted without doing them; inversions themselves
    are not counted (one per row).  Per row: each table of odd powers (_table_multiplications);
    per output one product per non-zero digit and one squaring per position of its chain after
    the first.  Inverted bases (split_signs False): a second table for each term with a negative
    digit, and Montgomery's batch inversion of those k terms (3k - 2 products).  Split signs: a
    second chain for the negative digits, the batch inversion of the k outputs' negative chains
    (3k - 2) and one product each to apply it."""
    schedules, positive, negative = wnaf_schedule(exponent_columns, width)
    digits = sum(len(pairs) for positions in schedules for pairs in positions)
    if split_signs:
        per_row = len(positive | negative) * _table_multiplications(width) + digits
        for positions in schedules:
            for sign in (1, -1):
                per_row += max(_chain_length(positions, sign) - 1, 0)
        per_row += _batch_inversion_multiplications(
            sum(bool(_chain_length(positions, -1)) for positions in schedules))
        per_row += sum(bool(_chain_length(positions, -1)) for positions in schedules)
    else:
        per_row = (len(positive) + len(negative)) * _table_multiplications(width) + digits
        per_row += _batch_inversion_multiplications(len(negative))
        per_row += sum(max(_chain_length(positions, 0) - 1, 0) for positions in schedules)
    return row_count * per_row


def best_wnaf_plan(exponent_columns):
    """(width, split_signs) for kernel_multiexp_wnaf with the fewest expected multiplications
    per row, widths 2..8: a w-NAF has about one non-zero digit per w + 1 bits, so Σ bits/(w + 1)
    products per output and its longest exponent's squarings (twice, with split signs, when it
    has both signs), against the tables (each term's, and each negative term's inverse unless
    the signs are split), which all outputs of a row share.  An estimate: the kernel's result
    never depends on the plan."""
    lengths = [[abs(int(e)).bit_length() for e in column] for column in exponent_columns]
    total_bits = sum(sum(column) for column in lengths)
    positive = {t for column in exponent_columns for t, e in enumerate(column) if int(e) > 0}
    negative = {t for column in exponent_columns for t, e in enumerate(column) if int(e) < 0}
    one_chain = sum(max(column, default=0) for column in lengths)
    two_chains = sum(max((b for b, e in zip(bits, column) if int(e) > 0), default=0)
                     + max((b for b, e in zip(bits, column) if int(e) < 0), default=0)
                     for bits, column in zip(lengths, exponent_columns))
    columns_with_negatives = sum(any(int(e) < 0 for e in column) for column in exponent_columns)

    def cost(plan):
        width, split = plan
        table = _table_multiplications(width)
        if split:
            fixed = (len(positive | negative) * table + two_chains
                     + 4 * columns_with_negatives)
        else:
            fixed = (len(positive) + len(negative)) * table + 3 * len(negative) + one_chain
        return total_bits / (width + 1) + fixed
    return min(((width, split) for width in range(2, 9) for split in (False, True)), key=cost)


def _batch_inverses(values, modulus, backend):
    """[v^-1 mod modulus for v in values] with one inversion (Montgomery's trick): prefix
    products forward, the inverse of the whole product, then each inverse walking back."""
    prefix, running = [], backend.mpz(1)
    for value in values:
        running = running * value % modulus
        prefix.append(running)
    if not values:
        return []
    inverse = backend.invert(running, modulus)
    out = [None] * len(values)
    for index in range(len(values) - 1, 0, -1):
        out[index] = inverse * prefix[index - 1] % modulus
        inverse = inverse * values[index] % modulus
    out[0] = inverse
    return out


def _odd_powers(table, base, sign, half, modulus):
    """table[sign·d] = base^d mod modulus for the odd d < half."""
    table[sign] = power = base
    if half > 2:
        square = base * base % modulus
        for digit in range(3, half, 2):
            power = power * square % modulus
            table[sign * digit] = power


def kernel_multiexp_wnaf(modulus, base_rows, exponent_columns, width, split_signs=False):
    """out[i][j] = Π_t base_rows[i][t] ^ exponent_columns[j][t] mod modulus, as ints: the very
    integers of kernel_multiexp (and of one powmod per term), with fewer multiplications.

    Straus' interleaved method on width-w NAF digits (signed_digits): each output has ONE chain
    of squarings shared by all its terms; each base a table of its odd powers b, b^3, ...,
    b^(2^(w-1) - 1), built once per row and shared by every output of the row.  A negative
    digit -d needs b^-d.  split_signs False: from a second table of b^-1's odd powers (the
    row's inverses cost one inversion, _batch_inverses), one chain for both signs -- best for
    long exponents.  split_signs True: b^d goes into a second accumulator N and the output is
    P·N^-1 (one inversion per row for all its outputs' N) -- best for short exponents over many
    terms, where a second chain of squarings is cheaper than the inverse tables.  Caveat: the
    bases must be units mod modulus (ciphertexts are).  table[d] = b^d and table[-d] = b^-d:
    a list of 2^w entries, read from its end for negative digits.
    """
    backend = current_backend()
    mpz = backend.mpz
    modulus, one = mpz(modulus), mpz(1)
    schedules, positive, negative = wnaf_schedule(exponent_columns, width)
    full, half = 1 << width, 1 << (width - 1)
    used = sorted(positive | negative)
    inverted = [] if split_signs else sorted(negative)
    out = []
    for row in base_rows:
        bases = {term: mpz(row[term]) for term in used}
        tables = {term: [None] * full for term in used}
        for term in (used if split_signs else positive):
            _odd_powers(tables[term], bases[term], 1, half, modulus)
        for term, inverse in zip(inverted, _batch_inverses([bases[t] for t in inverted],
                                                          modulus, backend)):
            _odd_powers(tables[term], inverse, -1, half, modulus)
        if not split_signs:
            results = []
            for positions in schedules:
                accumulator = one
                for index, pairs in enumerate(positions):
                    if index:
                        accumulator = accumulator * accumulator % modulus
                    for term, digit in pairs:
                        accumulator = accumulator * tables[term][digit] % modulus
                results.append(int(accumulator))
            out.append(results)
            continue
        pairs_of_chains = []
        for positions in schedules:
            chains, started = [one, one], [False, False]
            for pairs in positions:
                for which in (0, 1):
                    if started[which]:
                        chains[which] = chains[which] * chains[which] % modulus
                for term, digit in pairs:
                    which = digit < 0
                    chains[which] = chains[which] * tables[term][abs(digit)] % modulus
                    started[which] = True
            pairs_of_chains.append((chains[0], chains[1], started[1]))
        with_negatives = [index for index, (_, _, negatives) in enumerate(pairs_of_chains)
                          if negatives]
        inverses = dict(zip(with_negatives, _batch_inverses(
            [pairs_of_chains[index][1] for index in with_negatives], modulus, backend)))
        out.append([int(positive_chain * inverses[index] % modulus) if index in inverses
                    else int(positive_chain)
                    for index, (positive_chain, _, _) in enumerate(pairs_of_chains)])
    return out


MULTIEXP_METHODS = ("wnaf", "fixed")  # the default first


def encrypted_matmul(encrypted, weights, *, executor=None, window=None, workers=None,
                     method="wnaf"):
    """[[A]] @ W by multi-exponentiation: the same ciphertexts as `encrypted @ weights`, faster.

    out[i, j] = Π_t E(A[i, t])^W[t, j] mod n².  The simple path (EncryptedArray.__matmul__)
    pays one full modular exponentiation per term; here the terms of an output share their
    squarings, and each ciphertext's table serves all h outputs of its row.  `method`: "wnaf"
    (kernel_multiexp_wnaf: signed digits, odd powers, one squaring chain for both signs; the
    default, fewer multiplications) or "fixed" (kernel_multiexp: fixed windows, a second chain
    for negative exponents).  `window`: that kernel's width (None: its cost model picks; w-NAF
    widths start at 2, so 1 is taken as 2 there; the result is the same at any width).  With
    an executor, blocks of outputs run as separate tasks (integers in, integers out).  Every
    choice gives the same integers.
    """
    if method not in MULTIEXP_METHODS:
        raise ValueError(f"method must be one of {', '.join(MULTIEXP_METHODS)}, got {method!r}")
    if not isinstance(encrypted, EncryptedArray) or not isinstance(weights, Fixed):
        raise TypeError("encrypted_matmul takes an EncryptedArray and a Fixed")
    if encrypted.ndim != 2 or weights.ndim != 2 or encrypted.shape[1] != weights.shape[0]:
        raise ValueError(f"encrypted matmul needs (m, k) @ (k, h), got {encrypted.shape} @ "
                         f"{weights.shape}")
    rows, inner, cols = encrypted.shape[0], encrypted.shape[1], weights.shape[1]
    nsquare = encrypted.public_key.nsquare
    columns = [_ints(column) for column in weights.values.T.tolist()]
    base_rows = encrypted.ciphertexts.tolist()
    if executor is None:
        blocks = [(slice(0, rows), slice(0, cols))]
    else:
        # Enough blocks to keep every worker busy; split the columns only when there are
        # fewer rows than blocks (each split rebuilds that row's tables).
        wanted = 2 * worker_count(executor, workers)
        row_slices = _slices(rows, wanted)
        col_slices = _slices(cols, -(-wanted // max(len(row_slices), 1)))
        blocks = [(r, c) for r in row_slices for c in col_slices]
        base_rows = [_ints(row) for row in base_rows]
    if method == "wnaf":
        kernel = kernel_multiexp_wnaf
        tasks = []
        for r, c in blocks:
            width, split_signs = best_wnaf_plan(columns[c])
            tasks.append((nsquare, base_rows[r], columns[c], max(window or width, 2),
                          split_signs))
    else:
        kernel = kernel_multiexp
        longest = max((abs(e).bit_length() for column in columns for e in column), default=0)
        tasks = [(nsquare, base_rows[r], columns[c],
                  window or best_fixed_window(longest, c.stop - c.start)) for r, c in blocks]
    out = np.empty((rows, cols), dtype=object)
    if rows and cols:
        for (r, c), block in zip(blocks, run_tasks(executor, kernel, tasks)):
            out[r, c] = object_array([mpz(v) for line in block for v in line],
                                     (r.stop - r.start, c.stop - c.start))
    OP_COUNTS["mul_const"] += rows * cols * inner
    OP_COUNTS["add"] += rows * cols * max(inner - 1, 0)
    return EncryptedArray(encrypted.public_key, out, encrypted.scale + weights.scale)


def _crt_namespace(constants):
    names = ("n", "p", "q", "psquare", "qsquare", "hp", "hq", "q_inverse_mod_p",
             "qsquare_inverse_mod_psquare")
    backend = current_backend()
    k = SimpleNamespace(**{name: backend.mpz(value) for name, value in zip(names, constants)})
    k.powmod = backend.powmod
    return k


def _crt_constants(private_key):
    k = private_key.crt_constants()
    return _ints([k.n, k.p, k.q, k.psquare, k.qsquare, k.hp, k.hq, k.q_inverse_mod_p,
                  k.qsquare_inverse_mod_psquare])


def kernel_crt_encrypt(constants, residues, parts_p, parts_q):
    """The key owner's CRT encryption from the randomness' CRT parts, as ints."""
    k = _crt_namespace(constants)
    return [int(PrivateKey.crt_encrypt_parts(mpz(m), mpz(s_p), mpz(s_q), k))
            for m, s_p, s_q in zip(residues, parts_p, parts_q)]


def kernel_crt_djn_encrypt(constants, djn_base, exponent_bits, residues, alphas):
    """The key owner's DJN encryption (1 + m·n)·h_s^α mod n², computed mod p² and mod q² from
    two half-size fixed-base tables (h_s mod p², h_s mod q²; built once per process) and
    recombined by CRT.  Bit-identical to the public-key DJN ciphertext for the same α."""
    k = _crt_namespace(constants)
    table_p = fixed_base_table(djn_base % k.psquare, k.psquare, exponent_bits)
    table_q = fixed_base_table(djn_base % k.qsquare, k.qsquare, exponent_bits)
    return [int(PrivateKey.crt_encrypt_powers(mpz(m), table_p.power(alpha),
                                               table_q.power(alpha), k))
            for m, alpha in zip(residues, alphas)]


class BackgroundKeypair:
    """paillier.generate_keypair running on a daemon thread (keypair_in_background): result()
    waits for (PublicKey, PrivateKey) and raises what generate_keypair raised; cancel() stops
    the prime search at its next candidate (a run that failed before it needed the key)."""

    def __init__(self, n_length, *, allow_insecure=False, safe_primes=True):
        self._future, self._stop = Future(), threading.Event()
        self._future.set_running_or_notify_cancel()
        arguments = dict(allow_insecure=allow_insecure, safe_primes=safe_primes)
        threading.Thread(target=self._generate, args=(n_length, arguments),
                         name="acml-keygen", daemon=True).start()

    def _generate(self, n_length, arguments):
        try:
            with warnings.catch_warnings(), backend_module.stop_event(self._stop):
                warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
                keypair = paillier.generate_keypair(n_length, **arguments)
        except BaseException as error:  # handed to whoever calls result()
            self._future.set_exception(error)
        else:
            self._future.set_result(keypair)

    def result(self, timeout=None):
        return self._future.result(timeout)

    def cancel(self):
        self._stop.set()


def keypair_in_background(n_length, *, allow_insecure=False, safe_primes=True):
    """A BackgroundKeypair: paillier.generate_keypair(n_length, ...) computed on a daemon thread
    of this process while the caller does other work (reading and checking the data, waiting
    for the peer); .result() waits for it.  The primes come from `secrets` as always, and the
    key never leaves the process.  With gmpy2 the safe-prime search runs almost entirely
    without the GIL (its Fermat test goes through powmod_list), so on a second core it costs
    the caller nothing; on one core, or with the pure-Python backend, it takes turns with the
    caller and is no slower in total.  A daemon thread: a process that exits on an error does
    not wait for the key, and a caller that stays calls .cancel().  Its InsecureKeyWarning
    (small keys, which need allow_insecure) is not repeated: the callers ask for small keys
    only behind their explicit insecure flag."""
    return BackgroundKeypair(n_length, allow_insecure=allow_insecure, safe_primes=safe_primes)


def _subgroup_generators(private_key):
    """What a worker needs to build the key owner's two fixed-base tables itself, as ints:
    (g_p, p², exponent bits, g_q, q², exponent bits).  Never the tables (megabytes each)."""
    return tuple(int(value) for subgroup in private_key.subgroups
                 for value in (subgroup.generator, subgroup.square, subgroup.exponent_bits))


def kernel_crt_fixed_base_encrypt(constants, generators, residues, exponents_p, exponents_q):
    """The key owner's encryption for safe primes: (1 + m·n)·g_p^a_p mod p² and mod q² from the
    process' FixedBaseTables of g_p and g_q (built on its first call, kept per modulus by
    backend.fixed_base_table), recombined by CRT.  Twin: PrivateKey.encrypt; the textbook
    ciphertext of r with r^q ≡ u_p^a_p (mod p), r^p ≡ u_q^a_q (mod q)."""
    k = _crt_namespace(constants)
    g_p, psquare, bits_p, g_q, qsquare, bits_q = generators
    table_p = fixed_base_table(g_p, psquare, bits_p)
    table_q = fixed_base_table(g_q, qsquare, bits_q)
    return [int(PrivateKey.crt_encrypt_powers(mpz(m), table_p.power(a_p), table_q.power(a_q),
                                               k))
            for m, a_p, a_q in zip(residues, exponents_p, exponents_q)]


def kernel_crt_decrypt(constants, ciphertexts):
    """The key owner's CRT decryption to residues in [0, n), as ints (twin: PrivateKey.
    crt_decrypt, element by element): m_p = L(c^(p-1) mod p², p)·h_p mod p, m_q likewise,
    recombined by Garner's formula.  The two exponentiations of the whole list run as one
    backend.powmod_list each, which on gmpy2 releases the GIL: threads of this process decrypt
    on several cores at once (decrypt_residues), and the private key never leaves it."""
    k = _crt_namespace(constants)
    powmod_list = current_backend().powmod_list
    bases = [mpz(c) for c in ciphertexts]
    powers_p = powmod_list(bases, k.p - 1, k.psquare)
    powers_q = powmod_list(bases, k.q - 1, k.qsquare)
    return [int(paillier.PrivateKey.crt_combine(power_p, power_q, k))
            for power_p, power_q in zip(powers_p, powers_q)]


_THREAD_POOLS = {}  # (pid, threads) -> ThreadPoolExecutor, made on first use: a forked child
# inherits the parent's pool object but not its threads, so it makes its own
_THREAD_POOLS_LOCK = threading.Lock()


def default_threads():
    """Threads for the key owner's decryption in this process: one per core when the backend
    releases the GIL during powmod_list (gmpy2), else 1 (threads would only take turns)."""
    return (os.cpu_count() or 1) if current_backend().releases_gil else 1


def _thread_pool(threads):
    key = (os.getpid(), threads)
    with _THREAD_POOLS_LOCK:
        pool = _THREAD_POOLS.get(key)
        if pool is None:
            pool = _THREAD_POOLS[key] = ThreadPoolExecutor(
                threads, thread_name_prefix="acml-decrypt")
        return pool


def _spread_flat(executor, workers, kernel, shared, columns):
    """Run kernel(*shared, *column_slices) over slices of equally long lists; concatenate."""
    count = len(columns[0]) if columns else 0
    pieces = 1 if executor is None else 4 * worker_count(executor, workers)
    if executor is not None:
        columns = [_ints(column) for column in columns]
    tasks = [(*shared, *[column[part] for column in columns]) for part in _slices(count, pieces)]
    return [value for chunk in run_tasks(executor, kernel, tasks) for value in chunk]


def kernel_randomizers(n, djn_base, exponent_bits, drawn):
    """Randomizers as ints, from secrets drawn by the caller: r^n mod n² for each r (djn_base
    None: textbook), else h_s^α mod n² for each α, from the process' FixedBaseTable for h_s
    (built once per process).  Twin: PublicKey.randomizer."""
    backend = current_backend()
    if djn_base is None:
        n, nsquare = backend.mpz(n), backend.mpz(n * n)
        return [int(backend.powmod(backend.mpz(r), n, nsquare)) for r in drawn]
    table = fixed_base_table(djn_base, n * n, exponent_bits)
    return [int(table.power(alpha)) for alpha in drawn]


def kernel_crt_randomizers(constants, parts_p, parts_q):
    """The key owner's textbook randomizers r^n mod n² from the CRT parts of r, as ints:
    kernel_crt_encrypt of m = 0 (so (1 + m·n)·ρ mod n² is that kernel's ciphertext of m)."""
    k = _crt_namespace(constants)
    return [int(PrivateKey.crt_encrypt_parts(0, mpz(s_p), mpz(s_q), k))
            for s_p, s_q in zip(parts_p, parts_q)]


def randomizers(key, count, *, randomness=None, executor=None, workers=None):
    """`count` fresh randomizers, as public_key.randomizer(randomness) draws them.

    The secrets (r or α) are drawn here from `secrets`; the exponentiations (DJN: look-ups in
    a FixedBaseTable, one per process) run here or on `executor`.  The same values either way
    for the same secrets.  A PrivateKey with textbook randomness computes r^n mod p² and mod q²
    as PrivateKey.encrypt does, the exact textbook distribution: for safe primes g_p^a_p and
    g_q^a_q from fixed-base tables (encrypt_array's kernel with m = 0), else from uniform CRT
    parts (about 3x cheaper than r^n mod n²); its kernels then receive p and q (and g_p, g_q).
    """
    kind = paillier.randomness_kind(randomness)
    if isinstance(key, PrivateKey) and kind == "textbook" and key.subgroups:
        exponents = [key.random_subgroup_exponents() for _ in range(count)]
        return [mpz(rho) for rho in _spread_flat(
            executor, workers, kernel_crt_fixed_base_encrypt,
            (_crt_constants(key), _subgroup_generators(key)),
            [[0] * count, [a_p for a_p, _ in exponents], [a_q for _, a_q in exponents]])]
    if isinstance(key, PrivateKey) and kind == "textbook":
        parts = [key.random_crt_parts() for _ in range(count)]
        return [mpz(rho) for rho in _spread_flat(
            executor, workers, kernel_crt_randomizers, (_crt_constants(key),),
            [[s_p for s_p, _ in parts], [s_q for _, s_q in parts]])]
    public_key = key.public_key if isinstance(key, PrivateKey) else key
    if kind == "djn":
        drawn = [public_key.random_djn_exponent() for _ in range(count)]
        shared = (public_key.n, public_key.djn_base, public_key.djn_exponent_bits)
    else:
        drawn = [public_key.random_r() for _ in range(count)]
        shared = (public_key.n, None, None)
    return [mpz(rho) for rho in
            _spread_flat(executor, workers, kernel_randomizers, shared, [drawn])]


class RandomizerPool:
    """Randomizers computed ahead of need (offline), each handed out exactly once (online).

    fill(count) computes `count` fresh randomizers -- before the data exists, on `executor` if
    given -- and adds the time to offline_seconds.  take(count) removes and returns that many,
    oldest first; a shortfall is computed on the spot (counted in `shortfall`, timed in
    online_seconds).  With a pool, encrypting m is (1 + m·n)·ρ mod n² and rerandomizing c is
    c·ρ mod n²: one multiplication online.  A randomizer must never serve twice (two
    ciphertexts sharing ρ reveal the difference of their plaintexts' encodings to anyone
    who divides them), so take() forgets what it hands out.  Thread-safe.

    `key` a PublicKey (anyone's pool; DJN by default), or the key owner's PrivateKey: then
    randomness None means "textbook", computed by CRT (the distribution of PrivateKey.encrypt,
    no DJN assumption), and encrypt_array(private_key, ..., pool=pool) draws from it.
    """

    def __init__(self, key, *, randomness=None, executor=None, workers=None):
        if isinstance(key, PrivateKey):
            self.key, self.public_key = key, key.public_key
            randomness = "textbook" if randomness is None else randomness
        elif isinstance(key, PublicKey):
            self.key = self.public_key = key
        else:
            raise TypeError(f"key must be a PublicKey or PrivateKey, got {type(key).__name__}")
        self.randomness = paillier.randomness_kind(randomness)
        self.executor, self.workers = executor, workers
        self.filled = 0
        self.offline_seconds = self.online_seconds = 0.0
        self.shortfall = 0
        self._ready, self._lock = collections.deque(), threading.Lock()

    def _make(self, count):
        return randomizers(self.key, count, randomness=self.randomness,
                           executor=self.executor, workers=self.workers)

    def fill(self, count):
        """Precompute `count` more randomizers (offline work); returns the pool."""
        start = time.perf_counter()
        made = self._make(as_int(count, "count"))
        with self._lock:
            self._ready.extend(made)
            self.filled += len(made)
            self.offline_seconds += time.perf_counter() - start
        return self

    def take(self, count):
        """A list of `count` randomizers, each removed from the pool for good."""
        count = as_int(count, "count")
        with self._lock:
            taken = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
        missing = count - len(taken)
        if missing:
            start = time.perf_counter()
            taken += self._make(missing)
            with self._lock:
                self.shortfall += missing
                self.online_seconds += time.perf_counter() - start
        return taken

    def top_up(self, count):
        """Fill until at least `count` randomizers are ready (offline); returns the pool."""
        missing = as_int(count, "count") - len(self)
        return self.fill(missing) if missing > 0 else self

    def __len__(self):
        return len(self._ready)

    def __repr__(self):
        return (f"RandomizerPool({self.randomness}, {len(self)} ready, "
                f"offline {self.offline_seconds:.3f} s)")


class EpochPool(RandomizerPool):
    """A party's RandomizerPool kept one epoch ahead.  need(epoch) is how many randomizers the
    batches of that epoch take, counted from the public plan (data_party_need,
    label_party_need); prepare(epoch) tops the pool up to it (offline work, timed in
    offline_seconds).  setup_seconds: the part of it done during step 0; step0_count and
    step0_seconds: randomizers for step 0's own encryptions ([[X]]), filled first, taken
    first, and counted as step 0's work, not offline."""

    def __init__(self, key, need, *, executor=None, workers=None):
        super().__init__(key, executor=executor, workers=workers)
        self.need, self.setup_seconds = need, 0.0
        self.step0_count, self.step0_seconds = 0, 0.0

    def prepare(self, epoch):
        return self.top_up(self.need(epoch))


def epoch_pool(enabled, key, public, executor=None):
    """At the end of step 0 (plan.Public known): None unless `enabled`, else an EpochPool for
    `key` -- the data party's PrivateKey (data_party_need; first, step 0's own encryptions,
    public.step0_ciphertexts: [[X]] without a bottom model, [[X_blocks]] with row blocks) or
    the label party's PublicKey (label_party_need) -- filled for the session's first epoch
    (that time in setup_seconds)."""
    if not enabled:
        return None
    need = (data_party_need if isinstance(key, PrivateKey) else label_party_need)(public)
    pool = EpochPool(key, need, executor=executor)
    if isinstance(key, PrivateKey) and public.step0_ciphertexts():
        pool.step0_count = public.step0_ciphertexts()
        pool.fill(pool.step0_count)
        pool.step0_seconds = pool.offline_seconds
    pool.fill(need(public.training.epochs_completed))  # on top of step 0's, not topping up
    pool.setup_seconds = pool.offline_seconds - pool.step0_seconds
    return pool


def prepare_pool(pool, epoch):
    """Between epochs: top `pool` (an EpochPool or None) up for `epoch`."""
    if pool is not None:
        pool.prepare(epoch)


def data_party_need(public):
    """The data party's encryptions per epoch, from plan.Public: packed, each batch's
    [[X_batch]]; with a bottom model, each batch's [[α]] and [[ε_acc]]; unpacked without one,
    or packed with row blocks, none (step 0's [[X]] or [[X_blocks]] serves every epoch)."""
    def need(epoch):
        if epoch >= public.training.epochs or not public.encrypts_each_batch():
            return 0
        extra = int(np.prod(public.weight_shape())) if public.bottom else 0
        return sum(int(np.prod(public.rows_shape(len(rows)))) + extra
                   for rows in public.batches(epoch))
    return need


def label_party_need(public):
    """The label party's randomizers per epoch: per batch the encrypted masks ε_B (product
    shape) and ε_B' (gradient shape), and with a bottom model step 4b's re-randomisation of
    [[δ·Wᵀ]] (m × inputs)."""
    def need(epoch):
        if epoch >= public.training.epochs:
            return 0
        per_batch = int(np.prod(public.gradient_shape()))
        return sum(int(np.prod(public.product_shape(len(rows)))) + per_batch
                   + (len(rows) * public.n_inputs if public.bottom else 0)
                   for rows in public.batches(epoch))
    return need


def encryptions_of_zero(public_key, count, *, executor=None, pool=None):
    """`count` fresh encryptions of 0, as ints mod n²: (1 + 0·n)·ρ = ρ, a randomizer each, from
    `pool` or computed now.  Twin: encrypt_array(public_key, zeros)."""
    OP_COUNTS["encrypt"] += count
    return _randomizers_for(public_key, count, None, executor, None, pool)


def split_offline(step_seconds, *parties):
    """A channel's seconds per step with the parties' pool filling for the epochs moved to a
    step "pool": step 0 less the epochs' fill done during setup; "pool" every epoch's fill
    (setup's and between epochs', which no step timed).  Step 0's own randomness ([[X]]) stays
    in step 0.  Steps 1-4 are online time already."""
    steps = dict(step_seconds)
    pools = [party.randomizer_pool for party in parties
             if getattr(party, "randomizer_pool", None) is not None]
    if pools:
        steps["0"] = max(steps.get("0", 0.0) - sum(pool.setup_seconds for pool in pools), 0.0)
        steps["pool"] = sum(pool.offline_seconds - pool.step0_seconds for pool in pools)
    return steps


def _randomizers_for(public_key, count, randomness, executor, workers, pool):
    if pool is None:
        return randomizers(public_key, count, randomness=randomness, executor=executor,
                           workers=workers)
    if pool.public_key != public_key:
        raise ValueError("the randomizer pool belongs to a different public key")
    if randomness is not None and paillier.randomness_kind(randomness) != pool.randomness:
        raise ValueError(f"the pool holds {pool.randomness} randomizers, not {randomness}")
    return pool.take(count)


def encrypt_array(key, fixed, *, executor=None, workers=None, randomness=None, pool=None):
    """Encrypt a Fixed array with fresh randomness for every element, optionally on workers.

    PrivateKey: the key owner's CRT path.  By default (randomness None or "textbook") uniform
    r, no extra assumption, twin PrivateKey.encrypt: for safe primes as subgroup exponents
    through fixed-base tables mod p² and q² (each worker builds its own once), else as CRT
    parts.  randomness="djn" uses h_s^α mod p² and mod q² from two half-size tables (about
    10x cheaper than r^n at 2048 bits; the same ciphertext as PublicKey DJN for the same α,
    its twin), and adds DJN's assumption.
    With a `pool` (RandomizerPool(key): a PrivateKey takes only its own): (1 + m·n)·ρ mod n², ρ
    taken from the pool (a private key's pool holds CRT-computed textbook r^n by default).
    PublicKey: (1 + m·n)·ρ mod n² with ρ from randomizers(randomness) or from `pool`; twin
    PublicKey.encrypt.  The secrets are drawn here; the exponentiations run in this process or
    on `executor`.  Same distribution as the twin.
    """
    if not isinstance(fixed, Fixed):
        raise TypeError(f"encrypt_array expects a Fixed array, got {type(fixed).__name__}")
    if not isinstance(key, (PrivateKey, PublicKey)):
        raise TypeError(f"key must be a PublicKey or PrivateKey, got {type(key).__name__}")
    if isinstance(key, PrivateKey) and pool is not None and pool.key is not key:
        raise ValueError("the key owner's encryption takes only a pool built from its own "
                         "private key (RandomizerPool(private_key))")
    public_key = key.public_key if isinstance(key, PrivateKey) else key
    residues = public_key.encode_residues(fixed.values).ravel().tolist()
    if isinstance(key, PrivateKey) and pool is None:
        textbook = randomness is None or paillier.randomness_kind(randomness) == "textbook"
        if textbook and key.subgroups:  # safe primes: fixed-base, the same distribution
            exponents = [key.random_subgroup_exponents() for _ in residues]
            columns = [residues, [a_p for a_p, _ in exponents], [a_q for _, a_q in exponents]]
            kernel = kernel_crt_fixed_base_encrypt
            shared = (_crt_constants(key), _subgroup_generators(key))
        elif textbook:
            parts = [key.random_crt_parts() for _ in residues]
            columns = [residues, [s_p for s_p, _ in parts], [s_q for _, s_q in parts]]
            kernel, shared = kernel_crt_encrypt, (_crt_constants(key),)
        else:
            columns = [residues, [public_key.random_djn_exponent() for _ in residues]]
            kernel = kernel_crt_djn_encrypt
            shared = (_crt_constants(key), public_key.djn_base, public_key.djn_exponent_bits)
        flat = [mpz(c) for c in _spread_flat(executor, workers, kernel, shared, columns)]
    else:
        # A public key's randomizers, or a pool's (the key owner's precomputed CRT r^n, or
        # DJN): one multiplication each.
        rhos = _randomizers_for(public_key, len(residues), randomness, executor, workers, pool)
        _, n, nsquare = public_key.moduli()
        flat = [(1 + m * n) * rho % nsquare for m, rho in zip(residues, rhos)]
    OP_COUNTS["encrypt"] += len(flat)
    return EncryptedArray(public_key, object_array(flat, fixed.shape), fixed.scale)


def rerandomize(encrypted, *, executor=None, workers=None, randomness=None, pool=None):
    """encrypted.rerandomize(randomness) (the twin), with randomizers from randomizers() or
    `pool`: each ciphertext times a fresh ρ mod n²."""
    if not isinstance(encrypted, EncryptedArray):
        raise TypeError(f"expected an EncryptedArray, got {type(encrypted).__name__}")
    public_key = encrypted.public_key
    flat = encrypted.ciphertexts.ravel().tolist()
    rhos = _randomizers_for(public_key, len(flat), randomness, executor, workers, pool)
    nsquare = public_key.moduli()[2]
    OP_COUNTS["rerandomize"] += len(flat)
    return encrypted.with_ciphertexts(
        object_array([c * rho % nsquare for c, rho in zip(flat, rhos)], encrypted.shape))


def decrypt_residues(private_key, encrypted, *, executor=None, workers=None, threads=None):
    """private_key.decrypt_residues(encrypted) (the twin), optionally spread over an executor.

    Without an executor, on `threads` threads of this process (None: default_threads(), one per
    core with gmpy2), each decrypting a contiguous slice: the private key stays in the process
    and nothing is pickled.  A local ProcessPoolExecutor is replaced by as many threads when the
    backend releases the GIL (threads None); other executors (a cluster) get the work.  The
    same integers however the work is cut."""
    if not isinstance(private_key, PrivateKey):
        raise TypeError(f"expected a PrivateKey, got {type(private_key).__name__}")
    private_key.check_owner(encrypted)
    ciphertexts = encrypted.ciphertexts.ravel().tolist()
    # Worker processes on this machine: threads do the same work without pickling the key's
    # constants and the ciphertexts to them, when the backend releases the GIL.
    if (isinstance(executor, ProcessPoolExecutor) and threads is None
            and current_backend().releases_gil):
        executor, threads = None, worker_count(executor, workers)
    threads = default_threads() if threads is None else worker_count(None, threads)
    if executor is None and threads > 1 and len(ciphertexts) > 1:
        constants = _crt_constants(private_key)
        futures = [_thread_pool(threads).submit(kernel_crt_decrypt, constants, ciphertexts[part])
                   for part in _slices(len(ciphertexts), threads)]
        flat = [value for future in futures for value in future.result()]
    else:
        flat = _spread_flat(executor, workers, kernel_crt_decrypt,
                            (_crt_constants(private_key),), [ciphertexts])
    OP_COUNTS["decrypt"] += len(flat)
    return object_array([int(m) for m in flat], encrypted.shape)


def decrypt_rows(private_key, encrypted, *, executor=None):
    """decrypt_residues of an EncryptedArray, or of a streamed message's row blocks (any
    iterable of EncryptedArrays, in row order): each block is decrypted as soon as it arrives,
    while its sender computes the next. The same integers either way, joined along the rows."""
    if isinstance(encrypted, EncryptedArray):
        return decrypt_residues(private_key, encrypted, executor=executor)
    blocks = [decrypt_residues(private_key, block, executor=executor) for block in encrypted]
    return np.concatenate(blocks, axis=0)
