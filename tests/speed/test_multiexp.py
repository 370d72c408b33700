"""The w-NAF multi-exponentiation changes the count of multiplications, never the result: the
same integers mod n² as the fixed-window kernel and as one powmod per term, for every width, both
ways of handling negative exponents, and exponents that are zero, ±1, powers of two, negative or
of very different lengths."""

import os

import numpy as np
import pytest
from conftest import insecure_keypair
from hypothesis import given, settings
from hypothesis import strategies as st

from speed import kernels
from fixed import Fixed

KEY_BITS = 256

EDGE_EXPONENTS = st.sampled_from([0, 1, -1, 2, -2, 3, -3, (1 << 64), -(1 << 64),
                                  (1 << 64) - 1, -(1 << 64) + 1, (1 << 130) + 1])
EXPONENTS = st.one_of(EDGE_EXPONENTS, st.integers(-(1 << 140), 1 << 140),
                      st.integers(-300, 300))


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def _ciphertexts(keypair, rows, terms, seed):
    public_key, private_key = keypair
    rng = np.random.default_rng(seed)
    values = rng.integers(-10 ** 6, 10 ** 6, size=(rows, terms)).astype(object)
    return private_key.encrypt(Fixed.from_ints(values, 0))


def _powmod_products(nsquare, base_rows, exponent_columns):
    """The simplest twin: one pow per term (Python's, inverting for negative exponents)."""
    out = []
    for row in base_rows:
        results = []
        for column in exponent_columns:
            product = 1
            for base, exponent in zip(row, column):
                product = product * pow(int(base), int(exponent), nsquare) % nsquare
            results.append(product)
        out.append(results)
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data(), width=st.integers(2, 8), split_signs=st.booleans())
def test_wnaf_kernel_equals_the_fixed_window_kernel_and_one_pow_per_term(keypair, data, width,
                                                                        split_signs):
    """For random shapes and exponents (zero, ±1, powers of two, negative, up to 140 bits), every
    width and both sign strategies give exactly the integers of today's kernel and of pow."""
    terms = data.draw(st.integers(1, 5), label="terms")
    columns = data.draw(st.lists(st.lists(EXPONENTS, min_size=terms, max_size=terms),
                                 min_size=1, max_size=4), label="columns")
    encrypted = _ciphertexts(keypair, 2, terms, seed=terms)
    nsquare = keypair[0].nsquare
    rows = [[int(c) for c in row] for row in encrypted.ciphertexts.tolist()]
    fast = kernels.kernel_multiexp_wnaf(nsquare, rows, columns, width, split_signs)
    assert fast == kernels.kernel_multiexp(nsquare, rows, columns, 4)
    assert fast == _powmod_products(nsquare, rows, columns)


@settings(max_examples=60, deadline=None)
@given(exponent=EXPONENTS, width=st.integers(2, 8))
def test_signed_digits_are_a_width_w_naf_of_the_exponent(exponent, width):
    """Σ d_i·2^i is the exponent; every digit is zero or odd below 2^(w-1) in size; any w
    consecutive digits hold at most one non-zero one (so about one product per w + 1 bits)."""
    digits = kernels.signed_digits(exponent, width)
    assert sum(digit << bit for bit, digit in enumerate(digits)) == exponent
    assert all(digit == 0 or (digit % 2 and abs(digit) < 1 << (width - 1)) for digit in digits)
    for start in range(len(digits)):
        assert sum(1 for digit in digits[start:start + width] if digit) <= 1
    assert not digits or digits[-1] != 0


@pytest.mark.parametrize("method", kernels.MULTIEXP_METHODS)
def test_encrypted_matmul_gives_the_simple_paths_ciphertexts_by_either_method(keypair, method):
    """[[A]]·W through encrypted_matmul, by w-NAF or by fixed windows, is the very ciphertext
    array of EncryptedArray.__matmul__ (one powmod per term), zero rows and columns included."""
    encrypted = _ciphertexts(keypair, 3, 6, seed=3)
    rng = np.random.default_rng(4)
    weights = rng.integers(-2 ** 40, 2 ** 40, size=(6, 4)).astype(object)
    weights[0, 0], weights[1, :], weights[:, 3] = 0, 0, 0
    weights[2, 1] = -(1 << 120) + 12345
    fixed = Fixed(weights, 7)
    simple = encrypted @ fixed
    fast = kernels.encrypted_matmul(encrypted, fixed, method=method)
    assert fast.scale == simple.scale
    assert [int(v) for v in fast.ciphertexts.ravel()] == [int(v) for v in
                                                         simple.ciphertexts.ravel()]


def test_unknown_multiexp_method_is_refused_in_one_line(keypair):
    """A misspelt method names the choices instead of silently taking one."""
    encrypted = _ciphertexts(keypair, 1, 2, seed=1)
    with pytest.raises(ValueError, match="method must be one of wnaf, fixed"):
        kernels.encrypted_matmul(encrypted, Fixed.from_ints(np.ones((2, 1), dtype=object), 0),
                                 method="naf")


@pytest.mark.parametrize("split_signs", [False, True])
def test_wnaf_multiplication_count_is_what_the_kernel_multiplies(keypair, split_signs,
                                                                 monkeypatch):
    """wnaf_multiplications (the bench's floor) counts exactly the products the kernel performs:
    every `*` of two mpz values inside it, with an instrumented backend."""
    from speed import backend as backend_module
    counted = {"products": 0}
    real = backend_module.current_backend()

    class Counting(int):
        def __mul__(self, other):
            counted["products"] += 1
            return Counting(int(self) * int(other))
        __rmul__ = __mul__

        def __mod__(self, other):
            return Counting(int(self) % int(other))

    namespace = type(real)(**vars(real))
    namespace.mpz = Counting
    namespace.invert = lambda value, modulus: Counting(pow(int(value), -1, int(modulus)))
    monkeypatch.setattr(kernels, "current_backend", lambda: namespace)
    encrypted = _ciphertexts(keypair, 2, 5, seed=2)
    rows = [[int(c) for c in row] for row in encrypted.ciphertexts.tolist()]
    columns = [[5, -7, 0, 1 << 40, -(1 << 33) + 9], [0, 0, 0, 0, 0], [-1, -3, 11, 0, 2]]
    kernels.kernel_multiexp_wnaf(keypair[0].nsquare, rows, columns, 4, split_signs)
    assert counted["products"] == kernels.wnaf_multiplications(2, columns, 4, split_signs)


def test_best_plan_prefers_split_signs_for_short_exponents_over_many_terms():
    """The cost model picks the sign strategy by shape: 18-bit exponents of both signs over 64
    terms (step 4's δ) split the signs; 100-bit ones over 30 terms invert the bases."""
    rng = np.random.default_rng(0)
    short = [[int(v) for v in rng.integers(-2 ** 17, 2 ** 17, size=64)] for _ in range(8)]
    long = [[int(v) * (1 << 60) + 1 for v in rng.integers(-2 ** 40, 2 ** 40, size=30)]
            for _ in range(8)]
    assert kernels.best_wnaf_plan(short)[1] is True
    assert kernels.best_wnaf_plan(long)[1] is False
    for columns in (short, long):
        width, split = kernels.best_wnaf_plan(columns)
        assert (kernels.wnaf_multiplications(1, columns, width, split)
                < kernels.wnaf_multiplications(1, columns, 2, False))


# -- decryption on threads of the key owner's process -------------------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3, None])
def test_threaded_decryption_gives_the_residues_of_the_simple_path(backend, keypair, threads):
    """Decrypting on threads of this process (powmod_list, which releases the GIL on gmpy2) gives
    exactly PrivateKey.decrypt_residues, whatever the thread count, with more threads than
    ciphertexts and with 0, ±1 and the largest encodable value."""
    public_key, private_key = keypair
    values = np.array([[0, 1, -1], [(public_key.n - 1) // 3, 12345, -(1 << 60)]], dtype=object)
    encrypted = private_key.encrypt(Fixed.from_ints(values, 0))
    for array in (encrypted, encrypted[:1, :1], encrypted[1]):
        threaded = kernels.decrypt_residues(private_key, array, threads=threads)
        simple = private_key.decrypt_residues(array)
        assert threaded.shape == simple.shape
        assert [int(v) for v in threaded.ravel()] == [int(v) for v in simple.ravel()]


def test_decryption_threads_follow_whether_the_backend_releases_the_gil(backend):
    """One thread per core only where powmod_list releases the GIL (gmpy2); one otherwise, where
    threads would take turns and only add overhead."""
    from speed import backend as backend_module
    expected = backend_module.current_backend().releases_gil
    assert (kernels.default_threads() > 1) == (expected and (os.cpu_count() or 1) > 1)


def test_a_forked_child_decrypts_on_threads_of_its_own(keypair):
    """A process forked after its parent decrypted on threads gets its own thread pool (the
    parent's threads do not exist in it): it decrypts, and the same residues, instead of
    waiting forever on a pool without threads."""
    import multiprocessing
    public_key, private_key = keypair
    encrypted = private_key.encrypt(Fixed.from_ints(np.arange(6, dtype=object), 0))
    kernels.decrypt_residues(private_key, encrypted, threads=2)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_decrypt_in_child, args=(private_key, encrypted, results))
    child.start()
    residues = results.get(timeout=120)
    child.join(30)
    assert residues == [int(v) for v in private_key.decrypt_residues(encrypted).ravel()]


def _decrypt_in_child(private_key, encrypted, results):
    results.put([int(v) for v in kernels.decrypt_residues(private_key, encrypted,
                                                          threads=2).ravel()])


def test_a_width_under_two_is_refused_not_looped_on():
    """A 1-NAF does not exist (its digit ±1 never shrinks the exponent): the digits refuse it in
    one line, and encrypted_matmul's window=1 runs the w-NAF kernel at width 2 instead."""
    with pytest.raises(ValueError, match="width of at least 2, got 1"):
        kernels.signed_digits(5, 1)
