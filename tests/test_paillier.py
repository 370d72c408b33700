"""Tests for paillier.py: correctness of the cryptosystem, its homomorphisms, the CRT fast paths,
the exact fixed-point layer, overflow/NaN guards, key-size policy, serialisation, interoperability
with python-paillier, and that the gmpy2 and pure-Python backends agree bit for bit.

Keys are small (256/512 bits, via allow_insecure) and made once per module, so the file is fast.
Test inputs come from seeded generators: they are public test data, not secrets.
"""

import importlib.util
import math
import os
import random
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import phe
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paillier
from fixed import Fixed
from paillier import (
    EncryptedArray, InsecureKeyWarning, PrivateKey, PublicKey, decrypt_textbook,
    generate_keypair, use_backend,
)

REPO = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def insecure_keypair(bits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(bits, allow_insecure=True)


@pytest.fixture(scope="module", params=[256, 512], ids=lambda bits: f"{bits}bit")
def keypair(request):
    return insecure_keypair(request.param)


@pytest.fixture(scope="module")
def small_keypair():
    return insecure_keypair(256)


@pytest.fixture(scope="module")
def other_keypair():
    return insecure_keypair(256)


def random_fixed(rng, shape, scale, magnitude=8.0):
    """A Fixed array of random signed reals with some exact zeros."""
    x = rng.uniform(-magnitude, magnitude, size=shape)
    x[rng.random(size=shape) < 0.2] = 0.0
    return Fixed.encode(x, scale)


def as_ints(array):
    return [int(value) for value in np.asarray(array, dtype=object).ravel().tolist()]


# ---------------------------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------------------------


def run_python(code, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k != "ACML_PURE_PYTHON"}
    env.update(env_overrides, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_env_var_acml_pure_python_forces_python_backend_without_importing_gmpy2():
    code = "import sys, paillier; print(paillier.BACKEND, 'gmpy2' in sys.modules)"
    assert run_python(code, ACML_PURE_PYTHON="1") == ["python", "False"]


def test_default_backend_is_gmpy2_exactly_when_it_is_importable():
    expected = "gmpy2" if importlib.util.find_spec("gmpy2") else "python"
    assert run_python("import paillier; print(paillier.BACKEND)") == [expected]


def test_use_backend_switches_as_context_manager_and_as_plain_call():
    start = paillier.BACKEND
    with use_backend("python") as name:
        assert name == paillier.BACKEND == "python"
        assert type(paillier.mpz(5)) is int
    assert paillier.BACKEND == start
    try:
        use_backend("python")
        assert paillier.BACKEND == "python"
    finally:
        use_backend(start)
    assert paillier.BACKEND == start
    with pytest.raises(ValueError, match="unknown backend"):
        use_backend("fortran")
    assert paillier.BACKEND == start


def test_backend_helpers_dispatch_and_compute_the_same_numbers(backend):
    assert paillier.BACKEND == backend
    if backend == "gmpy2":
        assert type(paillier.mpz(5)).__name__ == "mpz"
    assert paillier.powmod(3, 200, 1009) == pow(3, 200, 1009)
    assert paillier.invert(3, 7) == 5
    with pytest.raises(ValueError, match="no inverse"):
        paillier.invert(2, 4)
    mersenne = 2**127 - 1
    assert paillier.is_probable_prime(mersenne)
    assert not paillier.is_probable_prime(mersenne * (2**61 - 1))
    assert not paillier.is_probable_prime(561)  # Carmichael number: fools the Fermat test


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 256, 384])
def test_generated_modulus_has_exact_bits_from_distinct_equal_size_primes(backend, bits):
    with pytest.warns(InsecureKeyWarning):
        public_key, private_key = generate_keypair(bits, allow_insecure=True)
    p, q, n = private_key.p, private_key.q, public_key.n
    assert n.bit_length() == bits and p * q == n
    assert p != q and p.bit_length() == q.bit_length() == bits // 2
    assert sympy.isprime(p) and sympy.isprime(q)
    assert math.gcd(n, (p - 1) * (q - 1)) == 1
    assert public_key.g == n + 1 and public_key.nsquare == n * n
    assert public_key.max_int == (n - 1) // 3


def test_keys_under_1024_bits_need_allow_insecure():
    with pytest.raises(ValueError, match="allow_insecure"):
        generate_keypair(512)


def test_keys_under_2048_bits_warn_and_2048_bits_do_not():
    with pytest.warns(InsecureKeyWarning, match="not secure"):
        generate_keypair(1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        public_key, _ = generate_keypair(2048)
    assert public_key.n.bit_length() == 2048


@pytest.mark.parametrize("bad_length, error", [(64, ValueError), (127, ValueError),
                                               (258 + 1, ValueError), (256.0, TypeError)])
def test_hard_floor_and_odd_sizes_fail_even_with_allow_insecure(bad_length, error):
    with pytest.raises(error, match="n_length"):
        generate_keypair(bad_length, allow_insecure=True)


def test_private_key_rejects_factors_that_do_not_match_n(small_keypair):
    """p·q must be n, and p, q distinct primes."""
    public_key, private_key = small_keypair
    with pytest.raises(ValueError, match="does not equal"):
        PrivateKey(public_key, private_key.p, private_key.p, allow_insecure=True)
    with pytest.raises(ValueError, match="does not equal"):
        PrivateKey(public_key, private_key.p, private_key.q + 2, allow_insecure=True)
    composite_p, prime_q = 3 * sympy.nextprime(2**127), sympy.nextprime(2**128 + 2**100)
    with pytest.raises(ValueError, match="p is not prime"):
        PrivateKey(PublicKey(composite_p * prime_q), composite_p, prime_q, allow_insecure=True)


def test_public_key_json_round_trip_equality_and_hash(small_keypair, other_keypair):
    public_key = small_keypair[0]
    loaded = PublicKey.from_json(public_key.to_json())
    assert loaded == public_key and hash(loaded) == hash(public_key)
    assert loaded != other_keypair[0]
    for bad in ["not json", '{"n": 35}', '{"n": "-35"}', '{"m": "35"}', "[]"]:
        with pytest.raises(ValueError):
            PublicKey.from_json(bad)
    with pytest.raises(ValueError, match="odd"):
        PublicKey(36)


def test_private_key_repr_does_not_reveal_the_primes(small_keypair):
    _, private_key = small_keypair
    text = repr(private_key) + str(private_key)
    assert str(private_key.p) not in text and str(private_key.q) not in text


# ---------------------------------------------------------------------------------------------
# Raw integer layer
# ---------------------------------------------------------------------------------------------


def test_raw_encrypt_is_g_to_the_m_times_r_to_the_n(small_keypair):
    """The definition c = g^m · r^n mod n², computed with Python's pow, is what both keys return
    for a given r, and both decryptions invert it."""
    public_key, private_key = small_keypair
    n, nsquare = public_key.n, public_key.nsquare
    rng = random.Random(3)
    for m in (0, 1, 2, n - 1, rng.randrange(n)):
        for r in (1, 2, n - 1, rng.randrange(1, n)):
            expected = pow(n + 1, m, nsquare) * pow(r, n, nsquare) % nsquare
            assert public_key.raw_encrypt(m, r) == expected
            assert private_key.raw_encrypt(m, r) == expected
            assert private_key.raw_decrypt(expected) == m == decrypt_textbook(private_key, expected)


def test_decrypt_inverts_encrypt_for_zero_edges_and_random_residues(backend, keypair):
    public_key, private_key = keypair
    n = public_key.n
    rng = random.Random(1)
    for m in [0, 1, 2, n // 2, n - 2, n - 1] + [rng.randrange(n) for _ in range(10)]:
        assert private_key.raw_decrypt(public_key.raw_encrypt(m)) == m
        assert private_key.raw_decrypt(private_key.raw_encrypt(m)) == m


@FAST
@given(data=st.data())
def test_signed_values_round_trip_anywhere_within_max_int(backend, small_keypair, data):
    public_key, private_key = small_keypair
    bound = public_key.max_int
    value = data.draw(st.one_of(
        st.integers(-bound, bound),
        st.sampled_from([0, 1, -1, bound, -bound, bound - 1, -bound + 1]),
        st.integers(-1000, 1000),
    ))
    c = public_key.raw_encrypt(public_key.encode_residue(value))
    assert public_key.decode_residue(private_key.raw_decrypt(c)) == value


def test_encode_residue_refuses_values_beyond_max_int_naming_the_bound(small_keypair):
    public_key = small_keypair[0]
    for value in (public_key.max_int + 1, -public_key.max_int - 1, public_key.n):
        with pytest.raises(OverflowError, match=r"max_int = \(n - 1\) // 3"):
            public_key.encode_residue(value)


def test_decode_residue_treats_the_middle_band_as_overflow(small_keypair):
    public_key = small_keypair[0]
    n, bound = public_key.n, public_key.max_int
    assert public_key.decode_residue(bound) == bound
    assert public_key.decode_residue(n - bound) == -bound
    assert public_key.decode_residue(n - 1) == -1
    for x in (bound + 1, n // 2, n - bound - 1):
        with pytest.raises(OverflowError, match="overflow band"):
            public_key.decode_residue(x)
    for x in (-1, n):
        with pytest.raises(ValueError, match=r"\[0, n\)"):
            public_key.decode_residue(x)


def test_homomorphic_add_add_plain_mul_const_and_rerandomize(backend, keypair):
    public_key, private_key = keypair
    n = public_key.n
    rng = random.Random(2)
    decrypt = private_key.raw_decrypt
    for _ in range(5):
        a, b = rng.randrange(n), rng.randrange(n)
        ca, cb = public_key.raw_encrypt(a), public_key.raw_encrypt(b)
        assert decrypt(public_key.raw_add(ca, cb)) == (a + b) % n
        assert decrypt(public_key.raw_add_plain(ca, b)) == (a + b) % n
        for k in (0, 1, 7, -1, -12345, rng.randrange(n), -rng.randrange(1, 2**70)):
            assert decrypt(public_key.raw_mul_const(ca, k)) == k * a % n
        fresh = public_key.raw_rerandomize(ca)
        assert fresh != ca and decrypt(fresh) == a


def test_negative_constants_cost_one_inverse_never_an_n_sized_exponent(small_keypair, monkeypatch):
    public_key, private_key = small_keypair
    backend = paillier.current_backend()
    exponents, real_powmod = [], backend.powmod

    def recording_powmod(base, exponent, modulus):
        exponents.append(int(exponent))
        return real_powmod(base, exponent, modulus)

    monkeypatch.setattr(backend, "powmod", recording_powmod)
    c = public_key.raw_encrypt(public_key.encode_residue(5))
    exponents.clear()
    product = public_key.raw_mul_const(c, -3)
    assert exponents == [3]
    assert public_key.decode_residue(private_key.raw_decrypt(product)) == -15

    weights = Fixed.from_ints([[-2, 3], [-1, -4]], 0)
    matrix = private_key.encrypt(Fixed.from_ints([[1, 2]], 0))  # (its first use finds u_p)
    exponents.clear()
    assert private_key.decrypt(matrix @ weights).equals(Fixed.from_ints([[-4, -5]], 0))
    assert max(exponents) <= 4


def test_two_encryptions_of_the_same_value_differ(backend, keypair):
    public_key, private_key = keypair
    assert public_key.raw_encrypt(42) != public_key.raw_encrypt(42)
    assert private_key.raw_encrypt(42) != private_key.raw_encrypt(42)
    twice = Fixed.from_ints([7, 7], 0)
    first, second = public_key.encrypt(twice), public_key.encrypt(twice)
    assert len(set(as_ints(first.ciphertexts) + as_ints(second.ciphertexts))) == 4


def test_crt_encryption_is_exactly_the_textbook_ciphertext_for_the_same_r(backend, keypair):
    public_key, private_key = keypair
    rng = random.Random(3)
    for _ in range(10):
        m, r = rng.randrange(public_key.n), public_key.random_r()
        c = private_key.raw_encrypt(m, r)
        assert c == public_key.raw_encrypt(m, r)
        assert private_key.raw_decrypt(c) == m


def test_textbook_decryption_agrees_with_crt_decryption(backend, keypair):
    public_key, private_key = keypair
    rng = random.Random(4)
    for _ in range(8):
        c = public_key.raw_mul_const(public_key.raw_encrypt(rng.randrange(public_key.n)),
                                     rng.randrange(-1000, 1000))
        assert decrypt_textbook(private_key, c) == private_key.raw_decrypt(c)


def test_check_ciphertext_rejects_out_of_range_and_non_coprime_values(small_keypair):
    public_key, private_key = small_keypair
    public_key.check_ciphertext(public_key.raw_encrypt(3))
    public_key.check_ciphertext(1)
    for bad in (0, -5, public_key.nsquare, public_key.nsquare + 1):
        with pytest.raises(ValueError, match=r"outside \[1, n²\)"):
            public_key.check_ciphertext(bad)
    for bad in (private_key.p, private_key.q * 12345):
        with pytest.raises(ValueError, match="not coprime"):
            public_key.check_ciphertext(bad)
        with pytest.raises(ValueError, match="not coprime"):
            private_key.raw_decrypt(bad)


def test_raw_encrypt_rejects_non_residues_and_randomness_outside_z_star_n(small_keypair):
    public_key, private_key = small_keypair
    for encrypt in (public_key.raw_encrypt, private_key.raw_encrypt):
        with pytest.raises(ValueError, match="residue"):
            encrypt(public_key.n)
        with pytest.raises(ValueError, match="residue"):
            encrypt(-1)
        with pytest.raises(ValueError, match="Z\\*_n"):
            encrypt(1, r=private_key.p)
        with pytest.raises(TypeError, match="integer"):
            encrypt(1.5)


def test_ciphertexts_interoperate_with_python_paillier(keypair):
    public_key, private_key = keypair
    theirs_public = phe.PaillierPublicKey(public_key.n)
    theirs_private = phe.PaillierPrivateKey(theirs_public, private_key.p, private_key.q)
    rng = random.Random(5)
    for m in [0, 1, public_key.n - 1] + [rng.randrange(public_key.n) for _ in range(5)]:
        r = int(public_key.random_r())
        ours = public_key.raw_encrypt(m, r)
        assert int(ours) == theirs_public.raw_encrypt(m, r_value=r)
        assert theirs_private.raw_decrypt(int(private_key.raw_encrypt(m))) == m
        assert private_key.raw_decrypt(theirs_public.raw_encrypt(m)) == m
    negative = theirs_public.encrypt(-42)  # phe stores an int at exponent 0 as v mod n
    assert negative.exponent == 0
    assert public_key.decode_residue(private_key.raw_decrypt(negative.ciphertext())) == -42


# ---------------------------------------------------------------------------------------------
# Exact fixed point
# ---------------------------------------------------------------------------------------------


def test_fixed_encode_rounds_to_nearest_ties_to_even_exactly():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(size=50) * 10.0 ** rng.integers(-8, 8, size=50),
        [0.5, 1.5, 2.5, -0.5, -2.5, 0.1, -0.0, 1e300, -1e-300, 5e-324],
    ])
    for scale in (0, 1, 8, 30, 60, 1100):  # 1100 pushes 1e300 past float range: exact fallback
        encoded = Fixed.encode(x, scale)
        assert encoded.values.dtype == object and all(type(v) is int for v in encoded.values)
        assert as_ints(encoded.values) == [round(Fraction(v) * 2**scale) for v in x]
    assert as_ints(Fixed.encode([0.5, 1.5, 2.5, -2.5], 0).values) == [0, 2, 2, -2]


def test_fixed_encode_rejects_nan_and_inf_naming_index_and_value():
    with pytest.raises(ValueError, match=r"x\[1, 0\] = nan"):
        Fixed.encode([[1.0, 2.0], [np.nan, 3.0]], 4)
    with pytest.raises(ValueError, match=r"x\[2\] = -inf"):
        Fixed.encode([1.0, 2.0, -np.inf], 4)
    with pytest.raises(ValueError, match="scale"):
        Fixed.encode([1.0], -1)


def test_fixed_encode_refuses_integers_that_float64_would_round():
    assert as_ints(Fixed.encode(np.array([3, -2**53]), 2).values) == [12, -2**55]
    for big in (np.array([1, 2**60 + 1]), [1, 2**60 + 1], np.array([1, 2**60 + 1], dtype=object)):
        with pytest.raises(ValueError, match=r"index \(1,\) = 1152921504606846977.*from_ints"):
            Fixed.encode(big, 0)


def test_fixed_decode_is_correctly_rounded():
    small = [2**60 + 1, 1, -3, 2**53 + 1, -(2**80) - 12345, 0]
    huge = small + [2**1090 + 1, -(2**1060) - 1]  # neither they nor 2**1100 fit in a float
    for scale, values in ((0, small), (3, small), (70, small), (1100, huge)):
        decoded = Fixed.from_ints(values, scale).decode()
        assert decoded.dtype == np.float64
        assert decoded.tolist() == [float(Fraction(v, 2**scale)) for v in values]


def test_fixed_product_scale_is_the_sum_of_the_scales():
    rng = np.random.default_rng(1)
    a, b = random_fixed(rng, (3, 4), 5), random_fixed(rng, (4, 2), 9)
    product = a @ b
    assert product.scale == 14
    expected = [[sum(a.values[i, t] * b.values[t, j] for t in range(4)) for j in range(2)]
                for i in range(3)]
    assert as_ints(product.values) == as_ints(expected)
    assert np.allclose(product.decode(), a.decode() @ b.decode())
    elementwise = a * random_fixed(rng, (1, 4), 7)  # broadcasts a row
    assert elementwise.scale == 12 and elementwise.shape == (3, 4)


def test_fixed_add_and_sub_need_equal_scales_and_name_both():
    a, b = Fixed.from_ints([1, 2], 3), Fixed.from_ints([1, 2], 5)
    with pytest.raises(ValueError, match="scales 3 and 5"):
        a + b
    with pytest.raises(ValueError, match="scales 3 and 5"):
        a - b


def test_fixed_array_operations_are_exact():
    x = Fixed.from_ints([[1, -2, 3], [-4, 5, -6]], 2)
    assert x.shape == (2, 3) and x.ndim == 2
    assert (-x).equals(Fixed.from_ints([[-1, 2, -3], [4, -5, 6]], 2))
    assert (x - x).equals(Fixed.from_ints(np.zeros((2, 3), dtype=int), 2))
    assert (x + x).equals(Fixed.from_ints([[2, -4, 6], [-8, 10, -12]], 2))
    assert x.T.equals(Fixed.from_ints([[1, -4], [-2, 5], [3, -6]], 2))
    assert x.sum().equals(Fixed.from_ints(-3, 2)) and x.sum().shape == ()
    assert x.sum(axis=0).equals(Fixed.from_ints([-3, 3, -3], 2))
    assert x.sum(axis=1).equals(Fixed.from_ints([2, -5], 2))
    assert x[np.array([1, 1, 0])].equals(Fixed.from_ints([[-4, 5, -6], [-4, 5, -6], [1, -2, 3]], 2))
    assert x[1, 2].equals(Fixed.from_ints(-6, 2))
    assert x.max_abs_bits() == 3 and Fixed.from_ints([0], 0).max_abs_bits() == 0
    assert x == Fixed.from_ints([[1, -2, 3], [-4, 5, -6]], 2)
    assert not x.equals(Fixed.from_ints([[1, -2, 3], [-4, 5, -6]], 3))  # same ints, other scale
    with pytest.raises(TypeError, match="not an integer"):
        Fixed.from_ints([1, 2.5], 0)


def test_fixed_rescale_is_exact_upwards_and_rounds_half_even_downwards():
    x = Fixed.from_ints([1, 2, 3, -1, -3, 5], 1)  # 0.5 1 1.5 -0.5 -1.5 2.5
    assert x.rescale(4).equals(Fixed.from_ints([8, 16, 24, -8, -24, 40], 4))
    assert x.rescale(0).equals(Fixed.from_ints([0, 1, 2, 0, -2, 2], 0))


# ---------------------------------------------------------------------------------------------
# Encrypted arrays
# ---------------------------------------------------------------------------------------------


def test_encrypted_arrays_round_trip_including_negatives_and_max_int(backend, keypair):
    public_key, private_key = keypair
    rng = np.random.default_rng(2)
    bound = public_key.max_int
    extremes = Fixed.from_ints([[bound, -bound, 0], [1, -1, bound - 1]], 0)
    for plain in (random_fixed(rng, (3, 4), 16), extremes, Fixed.encode(-2.75, 3)):
        for encrypt in (public_key.encrypt, private_key.encrypt):
            encrypted = encrypt(plain)
            assert encrypted.shape == plain.shape and encrypted.scale == plain.scale
            assert private_key.decrypt(encrypted).equals(plain)
    residues = private_key.decrypt_residues(public_key.encrypt(extremes))
    assert as_ints(residues) == [v % public_key.n for v in as_ints(extremes.values)]


def test_encrypted_arithmetic_equals_exact_fixed_arithmetic(backend, keypair):
    public_key, private_key = keypair
    rng = np.random.default_rng(3)
    X, X2 = random_fixed(rng, (5, 3), 8), random_fixed(rng, (5, 3), 8)
    W, delta = random_fixed(rng, (3, 4), 6), random_fixed(rng, (5, 2), 7)
    row, full = random_fixed(rng, (3,), 4), random_fixed(rng, (5, 3), 4)
    enc, enc2 = private_key.encrypt(X), public_key.encrypt(X2)
    indices = np.array([4, 0, 0, 2])
    cases = {
        "X @ W": (enc @ W, X @ W),
        "X.T @ delta": (enc.T @ delta, X.T @ delta),
        "delta.T @ X": (delta.T @ enc, delta.T @ X),
        "X * full": (enc * full, X * full),
        "X * row (broadcast)": (enc * row, X * row),
        "row * X": (row * enc, row * X),
        "X + X2": (enc + enc2, X + X2),
        "X + plain X2": (enc + X2, X + X2),
        "plain X2 + X": (X2 + enc, X2 + X),
        "X - plain X2": (enc - X2, X - X2),
        "plain X2 - X": (X2 - enc, X2 - X),
        "X - X2": (enc - enc2, X - X2),
        "-X": (-enc, -X),
        "sum": (enc.sum(), X.sum()),
        "sum axis 0": (enc.sum(axis=0), X.sum(axis=0)),
        "sum axis 1": (enc.sum(axis=1), X.sum(axis=1)),
        "fancy rows": (enc[indices], X[indices]),
        "transpose": (enc.transpose(), X.T),
        "element": (enc[1, 2], X[1, 2]),
    }
    for name, (encrypted, exact) in cases.items():
        decrypted = private_key.decrypt(encrypted)
        assert decrypted.scale == exact.scale, name
        assert decrypted.equals(exact), name


@FAST
@given(data=st.data())
def test_encrypted_matmul_equals_exact_matmul_for_arbitrary_signed_integers(
        backend, small_keypair, data):
    public_key, private_key = small_keypair
    m, k, h = (data.draw(st.integers(1, 3)) for _ in range(3))
    entries = st.integers(-(2**40), 2**40)
    A = Fixed.from_ints(data.draw(st.lists(st.lists(entries, min_size=k, max_size=k),
                                           min_size=m, max_size=m)), 3)
    B = Fixed.from_ints(data.draw(st.lists(st.lists(entries, min_size=h, max_size=h),
                                           min_size=k, max_size=k)), 2)
    assert private_key.decrypt(public_key.encrypt(A) @ B).equals(A @ B)


def test_rerandomize_keeps_plaintexts_and_changes_every_ciphertext(backend, keypair):
    public_key, private_key = keypair
    plain = Fixed.from_ints([[3, -4], [0, 5]], 2)
    encrypted = public_key.encrypt(plain)
    fresh = encrypted.rerandomize()
    assert private_key.decrypt(fresh).equals(plain)
    assert all(a != b for a, b in zip(as_ints(encrypted.ciphertexts), as_ints(fresh.ciphertexts)))


def test_mixing_keys_or_scales_raises_value_error(small_keypair, other_keypair):
    public_key, private_key = small_keypair
    other_public, _ = other_keypair
    mine = public_key.encrypt(Fixed.from_ints([1, 2], 3))
    theirs = other_public.encrypt(Fixed.from_ints([1, 2], 3))
    with pytest.raises(ValueError, match="different public keys"):
        mine + theirs
    with pytest.raises(ValueError, match="different public key"):
        private_key.decrypt(theirs)
    with pytest.raises(ValueError, match="scale 3 .* scale 4"):
        mine + Fixed.from_ints([1, 2], 4)
    with pytest.raises(ValueError, match="scale 3 .* scale 5"):
        mine + public_key.encrypt(Fixed.from_ints([1, 2], 5))
    with pytest.raises(ValueError, match=r"\(m, k\) @ \(k, h\)"):
        public_key.encrypt(Fixed.from_ints([[1, 2]], 0)) @ Fixed.from_ints([[1, 2]], 0)


def test_overflow_raises_naming_the_index_and_the_bound(backend, small_keypair):
    public_key, private_key = small_keypair
    bound = public_key.max_int
    with pytest.raises(OverflowError, match=r"index \(1,\).*max_int"):
        public_key.encrypt(Fixed.from_ints([0, bound + 1], 0))
    doubled = public_key.encrypt(Fixed.from_ints([1, bound], 0)) * Fixed.from_ints([2, 2], 0)
    with pytest.raises(OverflowError, match=r"index \(1,\).*max_int"):
        private_key.decrypt(doubled)
    assert as_ints(private_key.decrypt_residues(doubled)) == [2, 2 * bound]


def test_op_counts_count_elementwise_operations(small_keypair):
    public_key, private_key = small_keypair
    paillier.reset_op_counts()
    encrypted = public_key.encrypt(Fixed.from_ints([[1, 2, 3], [4, 5, 6]], 0))
    product = encrypted @ Fixed.from_ints(np.ones((3, 4), dtype=int), 0)
    total = product.sum()
    private_key.decrypt(total.rerandomize())
    assert paillier.OP_COUNTS == {"encrypt": 6, "mul_const": 24, "add": 16 + 7,
                                  "rerandomize": 1, "decrypt": 1}
    paillier.reset_op_counts()
    assert not paillier.OP_COUNTS


def test_gmpy2_backend_keeps_mpz_values_end_to_end(small_keypair):
    pytest.importorskip("gmpy2")
    public_key, _ = small_keypair
    with use_backend("gmpy2"):
        encrypted = public_key.encrypt(Fixed.from_ints([[1, -2]], 0))
        results = [encrypted, encrypted @ Fixed.from_ints([[3], [-4]], 0), encrypted.sum(),
                   encrypted * Fixed.from_ints([5, -6], 0), encrypted.rerandomize()]
        for result in results:
            assert {type(c).__name__ for c in result.ciphertexts.ravel()} == {"mpz"}


def test_both_backends_give_identical_ciphertexts_and_plaintexts(keypair):
    pytest.importorskip("gmpy2")
    public_key, private_key = keypair
    rng = np.random.default_rng(4)
    X, W = random_fixed(rng, (4, 3), 8), random_fixed(rng, (3, 2), 6)
    delta = random_fixed(rng, (4, 2), 5)
    residues = [public_key.encode_residue(v) for v in as_ints(X.values)]
    randomness = [int(public_key.random_r()) for _ in residues]
    outcomes = {}
    for name in ("python", "gmpy2"):
        with use_backend(name):
            crt = [private_key.raw_encrypt(m, r) for m, r in zip(residues, randomness)]
            textbook = [public_key.raw_encrypt(m, r) for m, r in zip(residues, randomness)]
            ciphertexts = np.array(textbook, dtype=object).reshape(X.shape)
            enc = EncryptedArray(public_key, ciphertexts, X.scale)
            derived = [enc @ W, enc.T @ delta, enc * X, enc + X, enc - enc, enc.sum(axis=0), -enc]
            outcomes[name] = (
                as_ints(crt), as_ints(textbook),
                [as_ints(result.ciphertexts) for result in derived],
                [as_ints(private_key.decrypt(result).values) for result in derived],
                [decrypt_textbook(private_key, c) for c in textbook],
            )
    assert outcomes["python"] == outcomes["gmpy2"]
    assert outcomes["python"][0] == outcomes["python"][1]


# ---------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3), (4,), (), (0, 2)])
def test_bytes_and_json_round_trip(backend, small_keypair, shape):
    public_key, private_key = small_keypair
    plain = random_fixed(np.random.default_rng(5), shape, 10)
    encrypted = public_key.encrypt(plain)
    for loaded in (EncryptedArray.from_bytes(encrypted.to_bytes(), public_key),
                   EncryptedArray.from_json(encrypted.to_json(), public_key)):
        assert loaded.shape == shape and loaded.scale == 10
        assert as_ints(loaded.ciphertexts) == as_ints(encrypted.ciphertexts)
        assert private_key.decrypt(loaded).equals(plain)


def test_from_bytes_rejects_truncated_or_corrupt_payloads(small_keypair):
    public_key = small_keypair[0]
    data = public_key.encrypt(Fixed.from_ints([1, 2, 3], 0)).to_bytes()
    header_length = int.from_bytes(data[:4], "big")
    corrupt = {
        "empty": b"",
        "truncated body": data[:-1],
        "extra byte": data + b"\x00",
        "truncated header": data[:4 + header_length // 2],
        "garbage header": data[:4] + b"\xff" * header_length + data[4 + header_length:],
        "not bytes": "text",
    }
    for name, payload in corrupt.items():
        with pytest.raises((ValueError, TypeError)):
            EncryptedArray.from_bytes(payload, public_key)
    header = data[4:4 + header_length].replace(b'"shape": [3]', b'"shape": [4]')
    with pytest.raises(ValueError, match="expected 4"):
        EncryptedArray.from_bytes(data[:4] + header + data[4 + header_length:], public_key)


def test_from_bytes_rejects_a_payload_made_under_another_key(small_keypair, other_keypair):
    data = other_keypair[0].encrypt(Fixed.from_ints([1, 2], 0)).to_bytes()
    with pytest.raises(ValueError, match="different public key"):
        EncryptedArray.from_bytes(data, small_keypair[0])
    with pytest.raises(ValueError, match="different public key"):
        EncryptedArray.from_json(other_keypair[0].encrypt(Fixed.from_ints([1], 0)).to_json(),
                                 small_keypair[0])


def test_from_bytes_rejects_out_of_range_and_non_coprime_ciphertexts(small_keypair):
    public_key, private_key = small_keypair
    data = public_key.encrypt(Fixed.from_ints([[1, 2], [3, 4]], 0)).to_bytes()
    width = (public_key.nsquare.bit_length() + 7) // 8
    head, body = data[:len(data) - 4 * width], data[len(data) - 4 * width:]

    def with_last(value_bytes):
        return head + body[:3 * width] + value_bytes

    bad_values = {
        r"index \(1, 1\).*outside": (0).to_bytes(width, "big"),
        r"index \(1, 1\).*outside ": b"\xff" * width,  # >= n² (width fits any c < n²)
        r"index \(1, 1\).*not coprime": private_key.p.to_bytes(width, "big"),
    }
    for pattern, value_bytes in bad_values.items():
        with pytest.raises(ValueError, match=pattern):
            EncryptedArray.from_bytes(with_last(value_bytes), public_key)
    text = public_key.encrypt(Fixed.from_ints([1], 0)).to_json()
    for bad in ('"0"', '"-5"', '"1e5"', str(public_key.nsquare)):
        prefix = text[:text.index('"ciphertexts"')]
        with pytest.raises(ValueError):
            EncryptedArray.from_json(prefix + f'"ciphertexts": [{bad}]}}', public_key)


def test_everything_works_when_gmpy2_is_not_installed():
    code = """
import sys, warnings
sys.modules["gmpy2"] = None  # makes `import gmpy2` raise ImportError
import fixed, paillier
warnings.simplefilter("ignore")
public_key, private_key = paillier.generate_keypair(256, allow_insecure=True)
plain = fixed.Fixed.from_ints([[3, -4]], 2)
product = private_key.decrypt(public_key.encrypt(plain) @ fixed.Fixed.from_ints([[5], [6]], 1))
try:
    paillier.use_backend("gmpy2")
except ValueError as error:
    print("refused:", "not installed" in str(error))
print(paillier.BACKEND, product.values.tolist(), product.scale)
"""
    assert run_python(code) == ["refused:", "True", "python", "[[-9]]", "3"]
