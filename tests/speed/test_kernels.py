"""DJN randomness, the fixed-base table, the randomizer pool, and how work is cut for workers.

Every fast path is checked against its simple twin in paillier.py or backend.py.
"""

import math
import random
import secrets
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from conftest import insecure_keypair

from speed import backend
from speed import kernels
import paillier
from fixed import Fixed, max_abs_bits, object_array

KEY_BITS = 256


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


class InlineExecutor:
    """A fake executor: runs each task at once, counts the tasks, and says how many workers it
    has the way the caller chooses (attribute `workers`, `_max_workers`, or neither)."""

    def __init__(self, **attributes):
        self.tasks = 0
        for name, value in attributes.items():
            setattr(self, name, value)

    def submit(self, function, *args):
        self.tasks += 1
        future = Future()
        future.set_result(function(*args))
        return future


def sample_fixed(shape=(4, 3), scale=2):
    rng = np.random.default_rng(1)
    return Fixed.from_ints(rng.integers(-10**6, 10**6, size=shape).astype(object), scale)


# -- DJN: the fixed base -------------------------------------------------------------------------


def test_djn_base_is_minus_x_squared_to_the_n_with_x_hashed_from_n(keypair):
    """h_s = (-x²)^n mod n² for x = hash_to_unit(n): reproducible from the public key alone
    (so the label party need trust nobody's choice), and different for another n."""
    public_key = keypair[0]
    x = backend.hash_to_unit(public_key.n, b"acml-djn-x")
    assert 1 < x < public_key.n and math.gcd(x, public_key.n) == 1
    assert public_key.djn_base == pow(-x * x % public_key.n, public_key.n, public_key.nsquare)
    assert paillier.PublicKey(public_key.n).djn_base == public_key.djn_base
    assert insecure_keypair(384)[0].djn_base != public_key.djn_base


def test_djn_base_is_a_non_trivial_n_th_residue(keypair):
    """h_s^λ ≡ 1 mod n² (every n-th residue y^n has order dividing λ), h_s ≢ 1, and h_s is
    coprime to n: so h_s^α·(1 + m·n) decrypts to m for every α."""
    public_key, private_key = keypair
    lam = math.lcm(private_key.p - 1, private_key.q - 1)
    h = public_key.djn_base
    assert pow(h, lam, public_key.nsquare) == 1
    assert h != 1 and math.gcd(h, public_key.n) == 1
    assert private_key.raw_decrypt(h) == 0


def test_djn_exponents_have_half_the_key_bits():
    """α is uniform of n_bits/2 bits: never longer; the top bit is set about half the time;
    over many draws the longest seen is exactly n_bits/2 bits."""
    public_key = insecure_keypair(KEY_BITS)[0]
    bits = public_key.djn_exponent_bits
    assert bits == KEY_BITS // 2
    lengths = [public_key.random_djn_exponent().bit_length() for _ in range(4000)]
    assert max(lengths) == bits and min(lengths) >= 1
    top_set = sum(length == bits for length in lengths) / len(lengths)
    assert 0.45 < top_set < 0.55  # 0.5 ± 6 standard deviations of 4000 fair coins


# -- DJN: encryption ----------------------------------------------------------------------------


@pytest.mark.parametrize("randomness", ["djn", "textbook"])
def test_both_randomness_kinds_decrypt_identically(arithmetic, keypair, randomness):
    """raw_encrypt, encrypt, rerandomize, and the kernels: the same plaintexts whichever
    randomness, on both arithmetic backends."""
    public_key, private_key = keypair
    plain = sample_fixed()
    for encrypted in (public_key.encrypt(plain, randomness=randomness),
                      kernels.encrypt_array(public_key, plain, randomness=randomness)):
        assert private_key.decrypt(encrypted) == plain
        assert private_key.decrypt(encrypted.rerandomize(randomness=randomness)) == plain
        fresh = kernels.rerandomize(encrypted, randomness=randomness)
        assert private_key.decrypt(fresh) == plain
        assert not np.array_equal(fresh.ciphertexts, encrypted.ciphertexts)
    m = public_key.n - 5
    assert private_key.raw_decrypt(public_key.raw_encrypt(m, randomness=randomness)) == m


def test_randomness_must_be_named_correctly(keypair):
    """Only "djn" and "textbook"; the key owner's CRT path takes no pool."""
    public_key, private_key = keypair
    with pytest.raises(ValueError, match="randomness must be one of"):
        public_key.randomizer("fast")
    pool = kernels.RandomizerPool(public_key).fill(1)
    with pytest.raises(ValueError, match="key owner"):
        kernels.encrypt_array(private_key, sample_fixed(), pool=pool)


def test_key_owner_djn_equals_public_key_djn_for_the_same_alpha(keypair, monkeypatch):
    """The key owner's DJN path (tables mod p² and q², CRT) gives bit-for-bit the public-key
    DJN ciphertexts for the same α, in this process and on an executor; it decrypts right."""
    public_key, private_key = keypair
    plain = sample_fixed()
    draws = [public_key.random_djn_exponent() for _ in range(plain.values.size)]
    results = []
    for key, executor in ((public_key, None), (private_key, None),
                          (private_key, InlineExecutor(workers=4))):
        replay = iter(draws)
        monkeypatch.setattr(public_key, "random_djn_exponent", lambda: next(replay))
        encrypted = kernels.encrypt_array(key, plain, executor=executor, randomness="djn")
        results.append([int(c) for c in encrypted.ciphertexts.ravel()])
        assert private_key.decrypt(encrypted) == plain
    assert results[0] == results[1] == results[2]


def test_fixed_base_table_equals_powmod_for_random_exponents(arithmetic):
    """FixedBaseTable.power(e) == powmod(base, e, modulus) for random e, the edges 0, 1 and
    2^bits - 1, and every window width; exponents beyond the table are refused."""
    rng = random.Random(4)
    modulus = rng.getrandbits(512) | 1
    base = rng.randrange(2, modulus)
    for window in (1, 3, 7, None):
        table = backend.FixedBaseTable(base, modulus, 200, window)
        for e in [0, 1, 2**200 - 1] + [rng.getrandbits(200) for _ in range(20)]:
            assert table.power(e) == pow(base, e, modulus)
        with pytest.raises(ValueError, match="exponent must lie in"):
            table.power(2**200)


def test_djn_randomizer_is_the_table_power_of_the_base(keypair):
    """PublicKey.djn_randomizer(α) (table look-ups) == plain powmod(h_s, α, n²)."""
    public_key = keypair[0]
    for _ in range(10):
        alpha = public_key.random_djn_exponent()
        assert public_key.djn_randomizer(alpha) == pow(public_key.djn_base, alpha,
                                                       public_key.nsquare)


def test_djn_kernels_are_bit_identical_with_and_without_an_executor(keypair, monkeypatch):
    """For the same drawn α (and r), encrypt_array and randomizers give the same integers in
    this process, on a fake inline executor and on two threads."""
    public_key = keypair[0]
    plain = sample_fixed()
    draws = [public_key.random_djn_exponent() for _ in range(plain.values.size)]
    results = []
    for executor in (None, InlineExecutor(workers=3), ThreadPoolExecutor(2)):
        replay = iter(draws)
        monkeypatch.setattr(public_key, "random_djn_exponent", lambda: next(replay))
        encrypted = kernels.encrypt_array(public_key, plain, executor=executor, randomness="djn")
        results.append([int(c) for c in encrypted.ciphertexts.ravel()])
    assert results[0] == results[1] == results[2]
    n, nsquare = public_key.n, public_key.nsquare
    residues = [v % n for v in plain.values.ravel()]
    assert results[0] == [(1 + m * n) * pow(public_key.djn_base, a, nsquare) % nsquare
                          for m, a in zip(residues, draws)]


# -- the randomizer pool ------------------------------------------------------------------------


@pytest.mark.parametrize("randomness", ["djn", "textbook"])
def test_pool_randomizers_are_n_th_residues_of_the_pools_kind(keypair, randomness):
    """Every pooled ρ decrypts to 0 (an n-th residue: E(0)), encrypts right when used, and is
    of the pool's kind: for DJN, ρ^λ ≡ 1 and ρ lies in the subgroup h_s generates (checked
    as ρ^order(h_s) ≡ 1)."""
    public_key, private_key = keypair
    pool = kernels.RandomizerPool(public_key, randomness=randomness).fill(12)
    assert len(pool) == 12 and pool.offline_seconds > 0
    plain = sample_fixed()
    encrypted = kernels.encrypt_array(public_key, plain, pool=pool)
    assert private_key.decrypt(encrypted) == plain and len(pool) == 0 and pool.shortfall == 0
    more = pool.fill(5).take(5)
    assert all(private_key.raw_decrypt(rho) == 0 for rho in more)
    if randomness == "djn":
        lam = math.lcm(private_key.p - 1, private_key.q - 1)
        assert all(pow(rho, lam, public_key.nsquare) == 1 for rho in more)


def test_pool_never_hands_out_a_randomizer_twice(keypair):
    """take() removes what it returns; a shortfall is computed fresh (and counted); no value
    appears twice across fills, takes and a rerandomization."""
    public_key = keypair[0]
    pool = kernels.RandomizerPool(public_key, executor=InlineExecutor(workers=2)).fill(10)
    seen = pool.take(4) + pool.take(3)
    assert len(pool) == 3
    seen += pool.take(8)  # 3 pooled + 5 on the spot
    assert pool.shortfall == 5 and len(pool) == 0
    pool.fill(6)
    encrypted = kernels.encrypt_array(public_key, sample_fixed((2, 3)), pool=pool)
    assert len(pool) == 0
    seen += [int(v) for v in pool.fill(3).take(3)]
    assert len(set(map(int, seen))) == len(seen) == 18
    assert encrypted.shape == (2, 3)


def test_pool_refuses_another_keys_or_kinds_use(keypair):
    """A pool serves its own key and kind only."""
    public_key = keypair[0]
    pool = kernels.RandomizerPool(public_key, randomness="textbook").fill(2)
    with pytest.raises(ValueError, match="different public key"):
        kernels.encrypt_array(insecure_keypair(384)[0], sample_fixed((2,)), pool=pool)
    with pytest.raises(ValueError, match="holds textbook randomizers"):
        kernels.rerandomize(public_key.encrypt(sample_fixed((2,))), randomness="djn", pool=pool)


# -- how many tasks --------------------------------------------------------------------------------


def test_worker_count_prefers_explicit_then_executor_attributes():
    """workers= wins; then the executor's `workers`; then the stdlib's `_max_workers`; then the
    CPU count. Nonsense sizes are refused."""
    assert kernels.worker_count(InlineExecutor(workers=64, _max_workers=2), 5) == 5
    assert kernels.worker_count(InlineExecutor(workers=64, _max_workers=2)) == 64
    assert kernels.worker_count(InlineExecutor(_max_workers=3)) == 3
    assert kernels.worker_count(None) == 1
    with ThreadPoolExecutor(7) as pool:
        assert kernels.worker_count(pool) == 7
    with pytest.raises(ValueError, match="workers must be >= 1"):
        kernels.worker_count(None, 0)


def test_a_large_cluster_gets_enough_tasks(keypair):
    """The reported bug: an executor without `_max_workers` (dask's) got 2-4 tasks per call.
    Sized at 50 workers, decryption and randomizers are cut into up to 4·50 tasks, the matmul
    into up to 2·50 blocks, and the results do not change."""
    public_key, private_key = keypair
    plain = sample_fixed((40, 3))
    encrypted = private_key.encrypt(plain)
    big = InlineExecutor(workers=50)
    assert kernels.decrypt_residues(private_key, encrypted, executor=big).tolist() \
        == private_key.decrypt_residues(encrypted).tolist()
    assert big.tasks == 120  # 120 ciphertexts, 200 wanted: one task each
    anonymous = InlineExecutor()  # neither attribute: sized by workers=
    kernels.randomizers(public_key, 100, executor=anonymous, workers=25)
    assert anonymous.tasks == 100
    weights = Fixed.from_ints(np.arange(12, dtype=object).reshape(3, 4) - 5, 0)
    blocked = InlineExecutor(workers=50)
    fast = kernels.encrypted_matmul(encrypted, weights, executor=blocked)
    assert blocked.tasks == 40 * 3  # 100 blocks wanted: 40 row slices × 3 column slices
    assert [int(c) for c in fast.ciphertexts.ravel()] \
        == [int(c) for c in (encrypted @ weights).ciphertexts.ravel()]


def test_dask_executor_sizes_by_the_clusters_threads():
    """dask_executor(client) wraps client.get_executor() and counts sum(nthreads) over
    scheduler_info()["workers"]; SizedExecutor passes submit through."""
    class FakeClient:
        def scheduler_info(self):
            return {"workers": {"tcp://a": {"nthreads": 8}, "tcp://b": {"nthreads": 4},
                                "tcp://c": {}}}

        def get_executor(self):
            return InlineExecutor()

    executor = kernels.dask_executor(FakeClient())
    assert kernels.worker_count(executor) == 13
    assert executor.submit(pow, 3, 4).result() == 81 and executor.executor.tasks == 1


# -- fixed's shared helpers -------------------------------------------------------------------------


def test_max_abs_bits_and_object_array_are_the_shared_helpers():
    """fixed.max_abs_bits takes any integer array (and Fixed.max_abs_bits calls it);
    object_array keeps nested objects as elements instead of guessing a shape."""
    values = object_array([3, -2**70, 0, secrets.randbelow(5)], (2, 2))
    assert max_abs_bits(values) == 71 == Fixed(values, 0).max_abs_bits()
    assert max_abs_bits(np.array([], dtype=object)) == 0 == max_abs_bits([[0, 0]])
    pairs = object_array([(1, 2), (3, 4)], (2,))
    assert pairs.shape == (2,) and pairs[1] == (3, 4)
