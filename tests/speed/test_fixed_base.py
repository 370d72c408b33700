"""The key owner's fixed-base encryption for safe-prime keys: exactly the textbook distribution,
bit-identical to the per-element CRT path for the same randomness, the same on workers, and
keys without safe primes left on the old path.

Small keys (through the explicit insecure flag) keep it fast."""

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from conftest import insecure_keypair

from speed import backend
from speed import kernels
import paillier
from fixed import Fixed

KEY_BITS = 512


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


@pytest.fixture(scope="module")
def random_prime_keypair():
    return paillier.generate_keypair(KEY_BITS, allow_insecure=True, safe_primes=False)


def plain_values():
    return Fixed.from_ints(np.arange(-7, 8, dtype=object).reshape(3, 5) * 1000003, 3)


def replayed(draws):
    items = iter(draws)
    return lambda *_: next(items)


def test_random_safe_prime_has_its_size_top_bits_and_a_prime_half(arithmetic):
    """random_safe_prime(bits): exactly `bits` bits, the top two set, p and (p - 1)/2 prime."""
    for bits in (64, 129, 256):
        p = backend.random_safe_prime(bits)
        assert p.bit_length() == bits and p >> (bits - 2) == 0b11
        assert backend.is_probable_prime(p) and backend.is_probable_prime((p - 1) // 2)
        assert backend.is_safe_prime(p)
    with pytest.raises(ValueError, match="at least 16 bits"):
        backend.random_safe_prime(8)


def test_the_sieve_keeps_every_safe_prime_and_drops_every_small_factor():
    """The sieve's prime lists are the primes (against sympy), and its stages drop a candidate
    exactly when p or (p - 1)/2 has an odd factor under 20,000: every safe prime of 16 bits or
    more (p' >= 24,576, above every sieving prime) is kept, so the draw stays uniform."""
    import sympy
    assert backend._odd_primes(3, 2000) == list(sympy.primerange(3, 2000))
    assert backend._odd_primes(2000, 20_000) == list(sympy.primerange(2000, 20_000))
    sieve = backend._SMALL_PRIMES_PRODUCT * backend._SAFE_SIEVE_DEEPER

    def kept(p):
        return math.gcd(p, sieve) == 1 and math.gcd(p >> 1, sieve) == 1

    safe = [p for p in range(49_152, 400_000, 4) if backend.is_probable_prime(p + 3)
            and backend.is_probable_prime((p + 3) // 2)]
    assert len(safe) > 100 and all(kept(p + 3) for p in safe)
    assert not kept(2 * 19_997 * 3 + 1) and not kept(19_997 * 3)  # a factor near the top


def test_the_wheel_keeps_every_residue_a_safe_prime_can_have():
    """The wheel drops only residues where 4 ∤ p - 3, or p or (p - 1)/2 has a factor 3..13: no
    safe prime above 23 (= 2·11 + 1, the last with a wheel prime as its half; every draw is
    >= 2^15) is ever excluded, so the draw stays uniform over safe primes."""
    wheel = set(backend._safe_prime_wheel())
    safe = [p for p in range(24, 200000) if backend.is_probable_prime(p)
            and backend.is_probable_prime((p - 1) // 2)]
    assert len(safe) > 100
    assert all(p % backend._WHEEL in wheel for p in safe)
    assert len(wheel) == 1485


def test_generated_keys_have_safe_primes_and_n_of_exactly_n_length_bits():
    """Default keys: p = 2p' + 1 and q = 2q' + 1 with p', q' prime, n of exactly n_length bits,
    and the pair passes prime_pair_problem; safe_primes=False still gives plain random primes."""
    for bits in (256, 512):
        public_key, private_key = paillier.generate_keypair(bits, allow_insecure=True)
        assert public_key.n.bit_length() == bits
        for prime in (private_key.p, private_key.q):
            assert backend.is_probable_prime((prime - 1) // 2)
        assert backend.prime_pair_problem(private_key.p, private_key.q) is None
        assert private_key.subgroups is not None
    public_key, private_key = paillier.generate_keypair(512, allow_insecure=True,
                                                        safe_primes=False)
    assert public_key.n.bit_length() == 512 and private_key.subgroups is None


def test_primitive_root_and_generator_have_order_exactly_p_minus_1(keypair, arithmetic):
    """u_p generates Z*_p and g_p = u_p^p mod p² generates the order-(p - 1) subgroup: x^(p-1)
    is 1, x^((p-1)/2) and x² are not (the order of an element divides p - 1 = 2p')."""
    for subgroup in keypair[1].subgroups:
        p, u, g = subgroup.prime, subgroup.primitive_root, subgroup.generator
        half = (p - 1) // 2
        assert pow(u, p - 1, p) == 1 and pow(u, half, p) != 1 and pow(u, 2, p) != 1
        assert pow(g, p - 1, p * p) == 1 and pow(g, half, p * p) != 1 and pow(g, 2, p * p) != 1
        assert g == pow(u, p, p * p)


def test_exponents_of_the_generator_are_exactly_the_pth_powers_each_once():
    """The distribution claim, exhaustively on small safe primes: a -> g^a mod p² for a in
    [0, p - 1) hits each x^p mod p² (x in Z*_p) exactly once, so a uniform a gives the uniform
    s_p of the per-element path; and it equals (u^a mod p)^p mod p²."""
    for p in (23, 47, 59, 83, 107, 179, 227):
        subgroup = backend.SafePrimeSubgroup(p)
        square = p * p
        by_exponent = [pow(subgroup.generator, a, square) for a in range(p - 1)]
        assert sorted(by_exponent) == sorted(pow(x, p, square) for x in range(1, p))
        assert len(set(by_exponent)) == p - 1
        assert by_exponent == [pow(pow(subgroup.primitive_root, a, p), p, square)
                               for a in range(p - 1)]
        table = subgroup.table()
        assert [int(table.power(a)) for a in range(p - 1)] == by_exponent
    with pytest.raises(ValueError, match="safe prime"):
        backend.SafePrimeSubgroup(29)  # prime, but 14 is not


def test_random_subgroup_exponents_lie_in_range(keypair):
    """a_p in [0, p - 1), a_q in [0, q - 1), and not all the same (drawn from secrets)."""
    private_key = keypair[1]
    draws = [private_key.random_subgroup_exponents() for _ in range(50)]
    assert all(0 <= a_p < private_key.p - 1 and 0 <= a_q < private_key.q - 1
               for a_p, a_q in draws)
    assert len(set(draws)) == 50


def textbook_r(private_key, a_p, a_q):
    """The r in Z*_n whose textbook ciphertext the exponents (a_p, a_q) stand for:
    r^q ≡ u_p^a_p (mod p) and r^p ≡ u_q^a_q (mod q), solved with q^-1 mod (p - 1)."""
    p, q = private_key.p, private_key.q
    (subgroup_p, subgroup_q) = private_key.subgroups
    r_p = pow(pow(subgroup_p.primitive_root, a_p, p), pow(q, -1, p - 1), p)
    r_q = pow(pow(subgroup_q.primitive_root, a_q, q), pow(p, -1, q - 1), q)
    return r_q + q * ((r_p - r_q) * pow(q, -1, p) % p)


def test_fixed_base_ciphertext_is_the_old_paths_and_the_textbook_one(keypair, arithmetic,
                                                                      monkeypatch):
    """For the same exponents: PrivateKey.encrypt, raw_encrypt and encrypt_array give bit for
    bit the per-element CRT ciphertext with s_p = u_p^a_p mod p, s_q = u_q^a_q mod q, and the
    public textbook (1 + m·n)·r^n mod n² for the matching r; all decrypt to the plaintexts."""
    public_key, private_key = keypair
    values = plain_values()
    residues = public_key.encode_residues(values.values).ravel().tolist()
    draws = [private_key.random_subgroup_exponents() for _ in residues]
    (subgroup_p, subgroup_q) = private_key.subgroups
    constants = private_key.crt_constants()
    old_path = [int(private_key.crt_encrypt_parts(
        m, pow(subgroup_p.primitive_root, a_p, private_key.p),
        pow(subgroup_q.primitive_root, a_q, private_key.q), constants))
        for m, (a_p, a_q) in zip(residues, draws)]
    textbook = [int(public_key.raw_encrypt(m, textbook_r(private_key, *draw)))
                for m, draw in zip(residues, draws)]
    assert old_path == textbook
    monkeypatch.setattr(private_key, "random_subgroup_exponents", replayed(draws))
    assert [int(c) for c in private_key.encrypt(values).ciphertexts.ravel()] == old_path
    monkeypatch.setattr(private_key, "random_subgroup_exponents", replayed(draws))
    encrypted = kernels.encrypt_array(private_key, values)
    assert [int(c) for c in encrypted.ciphertexts.ravel()] == old_path
    monkeypatch.setattr(private_key, "random_subgroup_exponents", replayed(draws))
    assert [int(private_key.raw_encrypt(m)) for m in residues] == old_path
    assert private_key.decrypt(encrypted) == values


def test_raw_encrypt_with_an_explicit_r_is_still_the_textbook_ciphertext(keypair):
    """PrivateKey.raw_encrypt(m, r) ignores the fixed-base path: (1 + m·n)·r^n mod n² exactly."""
    public_key, private_key = keypair
    for m in (0, 1, 123456789, public_key.n - 1):
        r = int(public_key.random_r())
        assert int(private_key.raw_encrypt(m, r)) == int(public_key.raw_encrypt(m, r))


def test_fresh_fixed_base_ciphertexts_decrypt_and_differ(keypair, arithmetic):
    """Without replayed randomness: every path decrypts to the plaintexts, and two encryptions
    of the same array share no ciphertext."""
    public_key, private_key = keypair
    values = plain_values()
    first, second = private_key.encrypt(values), kernels.encrypt_array(private_key, values)
    for encrypted in (first, second):
        assert private_key.decrypt(encrypted) == values
    assert not set(map(int, first.ciphertexts.ravel())) & set(map(int, second.ciphertexts.ravel()))
    pool = kernels.RandomizerPool(private_key).fill(values.values.size)
    assert private_key.decrypt(kernels.encrypt_array(private_key, values, pool=pool)) == values


def test_workers_give_the_in_process_ciphertexts_and_randomizers(keypair, monkeypatch):
    """On a 2-process executor (each worker builds its own tables from g_p, p², g_q, q²) the
    key owner's encryptions and pool randomizers are bit-identical to this process' for the
    same drawn exponents; the workers receive integers, not the tables."""
    public_key, private_key = keypair
    values = plain_values()
    count = values.values.size
    draws = [private_key.random_subgroup_exponents() for _ in range(2 * count)]
    shipped = kernels._subgroup_generators(private_key)
    assert all(isinstance(value, int) for value in shipped) and len(shipped) == 6
    results = []
    with ProcessPoolExecutor(2) as workers:
        for executor in (None, workers):
            monkeypatch.setattr(private_key, "random_subgroup_exponents", replayed(draws))
            encrypted = kernels.encrypt_array(private_key, values, executor=executor)
            rhos = kernels.randomizers(private_key, count, randomness="textbook",
                                       executor=executor)
            results.append([int(c) for c in encrypted.ciphertexts.ravel()]
                           + [int(rho) for rho in rhos])
    assert results[0] == results[1]
    nsquare = public_key.nsquare
    assert all(pow(rho, public_key.n * (private_key.p - 1) * (private_key.q - 1), nsquare) == 1
               for rho in results[0][count:])  # each an n-th residue: an encryption of 0
    zeros = Fixed.from_ints(np.zeros(count, dtype=object), 0)
    assert private_key.decrypt(paillier.EncryptedArray(public_key, np.array(
        results[0][count:], dtype=object), 0)) == zeros


def test_a_key_without_safe_primes_keeps_the_per_element_crt_path(random_prime_keypair,
                                                                   monkeypatch):
    """Keys of random primes (old checkpoints, phe's, a user's p and q) are detected: no
    subgroups, and encryption draws CRT parts, giving the old ciphertexts bit for bit."""
    public_key, private_key = random_prime_keypair
    reloaded = paillier.PrivateKey(public_key, private_key.p, private_key.q,
                                   allow_insecure=True)
    assert reloaded.subgroups is None
    values = plain_values()
    residues = public_key.encode_residues(values.values).ravel().tolist()
    parts = [reloaded.random_crt_parts() for _ in residues]
    constants = reloaded.crt_constants()
    expected = [int(reloaded.crt_encrypt_parts(m, *part, constants))
                for m, part in zip(residues, parts)]

    def refuse(*_):
        raise AssertionError("a non-safe key drew subgroup exponents")

    monkeypatch.setattr(reloaded, "random_subgroup_exponents", refuse)
    for encrypt in (reloaded.encrypt, lambda v: kernels.encrypt_array(reloaded, v)):
        monkeypatch.setattr(reloaded, "random_crt_parts", replayed(parts))
        encrypted = encrypt(values)
        assert [int(c) for c in encrypted.ciphertexts.ravel()] == expected
        assert reloaded.decrypt(encrypted) == values


def test_a_checkpointed_safe_prime_key_finds_its_subgroups_again(keypair):
    """A safe-prime key rebuilt from p and q alone (a checkpoint stores nothing else) takes the
    fixed-base path again, with the same generators."""
    public_key, private_key = keypair
    reloaded = paillier.PrivateKey(public_key, private_key.p, private_key.q,
                                   allow_insecure=True)
    assert [s.generator for s in reloaded.subgroups] == [s.generator
                                                         for s in private_key.subgroups]
    assert math.gcd(reloaded.subgroups[0].generator, private_key.p) == 1
