"""The arithmetic underneath paillier.py: one backend of number-theory primitives (primes, safe
primes, subgroups, fixed-base tables), gmpy2 when installed.

Two backends compute the same functions: gmpy2 (GMP; used when importable and the environment
variable ACML_PURE_PYTHON is not "1") and Python's own int.  `use_backend("python")` switches
at run time; current_backend() returns the namespace in use (name, mpz, powmod, powmod_list,
invert, gcd, is_prime, releases_gil: whether powmod_list lets other threads run meanwhile).
Numbers made under one backend stay valid under the other: gmpy2's mpz and int interoperate.
Neither is constant time.
"""

import functools
import hashlib
import math
import numbers
import os
import secrets
import threading
from types import SimpleNamespace

from fixed import as_int, describe_int

__all__ = [
    "use_backend", "current_backend", "mpz", "powmod", "invert", "is_probable_prime",
    "random_prime", "random_safe_prime", "is_safe_prime", "primitive_root",
    "SafePrimeSubgroup", "FixedBaseTable",
    "fixed_base_table", "units_problem", "min_prime_distance", "prime_pair_problem",
    "hash_to_unit", "as_int",
    "describe_int", "GenerationCancelled", "stop_event",
]

def _python_backend():
    def is_prime(candidate):
        import sympy  # imported lazily: only key generation and key loading need it

        return sympy.isprime(int(candidate))  # Baillie-PSW: no known pseudoprime

    return SimpleNamespace(
        name="python", mpz=int, powmod=pow, invert=lambda a, m: pow(a, -1, m),
        powmod_list=lambda bases, exponent, modulus: [pow(b, exponent, modulus) for b in bases],
        gcd=math.gcd, is_prime=is_prime, not_invertible=ValueError, releases_gil=False,
    )


def _gmpy2_backend():
    import gmpy2

    # powmod_base_list computes a whole list with the GIL released (gmpy2 >= 2.1), so threads
    # of one process run it on several cores at once; a lone powmod holds the GIL.
    base_list = getattr(gmpy2, "powmod_base_list", None)
    return SimpleNamespace(
        name="gmpy2", mpz=gmpy2.mpz, powmod=gmpy2.powmod, invert=gmpy2.invert,
        powmod_list=base_list or (lambda bases, exponent, modulus: [
            gmpy2.powmod(b, exponent, modulus) for b in bases]),
        releases_gil=base_list is not None,
        # GMP runs Baillie-PSW plus (reps - 24) Miller-Rabin rounds with random bases.
        gcd=gmpy2.gcd, is_prime=lambda candidate: gmpy2.is_prime(candidate, 64),
        not_invertible=ZeroDivisionError,
    )


_BACKENDS = {"python": _python_backend()}


def _load_backend(name):
    if name not in ("python", "gmpy2"):
        raise ValueError(f"unknown backend {name!r}: choose 'gmpy2' or 'python'")
    if name not in _BACKENDS:
        try:
            _BACKENDS[name] = _gmpy2_backend()
        except ImportError as error:
            raise ValueError("backend 'gmpy2' is unavailable: gmpy2 is not installed") from error
    return _BACKENDS[name]


def _default_backend_name():
    if os.environ.get("ACML_PURE_PYTHON") == "1":
        return "python"
    try:
        _load_backend("gmpy2")
        return "gmpy2"
    except ValueError:
        return "python"


_backend = _load_backend(_default_backend_name())
BACKEND = _backend.name  # read it as backend.BACKEND or paillier.BACKEND: use_backend rebinds it


def _set_backend(name):
    global _backend, BACKEND
    _backend = _load_backend(name)
    BACKEND = _backend.name


class use_backend:
    """Switch the arithmetic backend to "gmpy2" or "python".

    `use_backend("python")` switches for good; `with use_backend("python"): ...` switches back to
    the previous backend on exit.  The choice is global to the process (not thread-local).
    Numbers made under one backend stay valid under the other: gmpy2's mpz and int interoperate.
    """

    def __init__(self, name):
        self.previous = BACKEND
        _set_backend(name)
        self.name = BACKEND

    def __enter__(self):
        return self.name

    def __exit__(self, *exc_info):
        _set_backend(self.previous)
        return False


def current_backend():
    """The backend in use (a namespace: name, mpz, powmod, invert, gcd, is_prime)."""
    return _backend


def mpz(value):
    """`value` as the current backend's integer type (gmpy2.mpz or int)."""
    return _backend.mpz(value)


def powmod(base, exponent, modulus):
    """base^exponent mod modulus on the current backend (a negative exponent inverts first)."""
    return _backend.powmod(base, exponent, modulus)


def invert(value, modulus):
    """value^-1 mod modulus; ValueError when gcd(value, modulus) != 1."""
    try:
        return _backend.invert(value, modulus)
    except _backend.not_invertible:
        raise ValueError(f"{value} has no inverse modulo {modulus}") from None


def is_probable_prime(candidate):
    """Strong probabilistic primality test (Baillie-PSW, plus Miller-Rabin rounds on gmpy2)."""
    return bool(_backend.is_prime(candidate))


def _odd_primes(start, stop):
    """The primes p with start <= p < stop, p odd: a sieve of Eratosthenes."""
    sieve = bytearray([1]) * stop
    sieve[:2] = b"\0\0"
    for number in range(2, math.isqrt(stop - 1) + 1):
        if sieve[number]:
            sieve[number * number::number] = bytes(len(range(number * number, stop, number)))
    return [number for number in range(max(start, 3), stop) if sieve[number]]


_SMALL_PRIMES_PRODUCT = math.prod(_odd_primes(3, 2000))


class GenerationCancelled(Exception):
    """A prime search stopped because its caller no longer wants the key (stop_event set)."""


_SEARCH = threading.local()  # .stop: a threading.Event that ends this thread's prime searches


class stop_event:
    """``with stop_event(event):`` the prime searches of this thread raise GenerationCancelled
    once ``event`` is set (checked once per candidate), so that a key made in the background
    for a run that failed meanwhile stops instead of taking a core for seconds."""

    def __init__(self, event):
        self.event = event

    def __enter__(self):
        self.previous, _SEARCH.stop = getattr(_SEARCH, "stop", None), self.event
        return self.event

    def __exit__(self, *exc_info):
        _SEARCH.stop = self.previous
        return False


def _check_stop():
    stop = getattr(_SEARCH, "stop", None)
    if stop is not None and stop.is_set():
        raise GenerationCancelled("the key generation was cancelled")


def random_prime(bits):
    """A uniform random prime with exactly `bits` bits, the top two set, from `secrets`."""
    top_two_bits = 0b11 << (bits - 2)
    while True:
        _check_stop()
        candidate = secrets.randbits(bits) | top_two_bits | 1
        # One gcd rejects most composites before the expensive test.
        if math.gcd(candidate, _SMALL_PRIMES_PRODUCT) == 1 and is_probable_prime(candidate):
            return candidate


_WHEEL_PRIMES = (3, 5, 7, 11, 13)
_WHEEL = 4 * math.prod(_WHEEL_PRIMES)  # 60,060


# A safe-prime candidate p = 2·p' + 1 is sieved by the odd primes under 2,000 (p, then p'), and
# the survivors by those from 2,000 to 20,000 (p·p' in one gcd): the deeper sieve throws out
# more candidates before their Fermat test (9 in 100 reach it, against 15 in 100 after the first
# stage alone), and the stages keep the dear gcd off the many candidates the cheap one throws out.
_SAFE_SIEVE_DEEPER = math.prod(_odd_primes(2000, 20_000))


@functools.lru_cache(maxsize=1)
def _safe_prime_wheel():
    """The residues c mod _WHEEL that a safe prime c = 2·c' + 1 > 23 can have: c ≡ 3 (mod 4),
    so that c' is odd, and for each wheel prime ℓ neither ℓ | c (c ≢ 0) nor ℓ | c' (c ≢ 1)."""
    return [c for c in range(3, _WHEEL, 4) if all(c % ell > 1 for ell in _WHEEL_PRIMES)]


def _fermat_base_2(candidate):
    """2^(c-1) ≡ 1 (mod c), through powmod_list: on gmpy2 the GIL is released while it runs, so
    a key generated on a thread (kernels.keypair_in_background) leaves the other threads their
    core for nearly all of its time (this test is nearly all of a safe-prime search)."""
    return _backend.powmod_list([2], candidate - 1, candidate)[0] == 1


def random_safe_prime(bits):
    """A uniform random safe prime p = 2·p' + 1 (p' prime) of exactly `bits` bits, the top two
    set, from `secrets`.

    Candidates are uniform among the numbers with the top two bits set whose residue mod
    60,060 a safe prime can have (a wheel: 1,485 of the 60,060, so a tenth of the candidates
    random_prime would look at); gcds with the odd primes under 2,000 (p, then p'), then of p·p'
    with those from 2,000 to 20,000, throw out those where p or p' has another small factor
    (about 91 in 100 candidates); a base-2 Fermat test on p, one modular
    exponentiation, throws out nearly all the rest (_fermat_base_2, without the GIL on gmpy2);
    the survivors pass the full is_probable_prime on p' and on p.  Every safe prime of that
    size passes the wheel and the sieve, so rejection sampling of uniform candidates is
    uniform over them (an incremental search from one random start, as OpenSSL makes them,
    sieves more cheaply but favours the primes after long gaps).  Safe primes are rare
    (density about 1/ln(p)² against 1/ln(p)), so this is much slower than random_prime:
    thousands of candidates per prime at 1024 bits (bench.py measures the key generation
    beside OpenSSL's).
    """
    if bits < 16:
        raise ValueError(f"a safe prime needs at least 16 bits here, got {bits}")
    low, high, wheel = 0b11 << (bits - 2), 1 << bits, _safe_prime_wheel()
    small, deeper, gcd = (_backend.mpz(_SMALL_PRIMES_PRODUCT), _backend.mpz(_SAFE_SIEVE_DEEPER),
                          _backend.gcd)
    first_turn, turns = low // _WHEEL, high // _WHEEL - low // _WHEEL + 1
    while True:
        _check_stop()
        candidate = (first_turn + secrets.randbelow(turns)) * _WHEEL + secrets.choice(wheel)
        if not low <= candidate < high:  # the first and last turns overhang the range
            continue
        candidate = _backend.mpz(candidate)
        half = candidate >> 1
        if (gcd(candidate, small) == 1 and gcd(half, small) == 1
                and gcd(candidate * half, deeper) == 1 and _fermat_base_2(candidate)
                and is_probable_prime(half) and is_probable_prime(candidate)):
            return int(candidate)


def is_safe_prime(p):
    """Whether the odd prime p > 7 is safe, p = 2·p' + 1 with p' prime (p itself is not
    tested: callers have checked it; 5 and 7, safe but tiny, give False).  One primality test
    of (p - 1)/2, skipped when p ≢ 3 (mod 4), i.e. when (p - 1)/2 is even, as it is for about
    half of all primes."""
    p = as_int(p, "p")
    return p > 7 and p % 4 == 3 and is_probable_prime((p - 1) // 2)


def primitive_root(p):
    """The least primitive root u mod the safe prime p = 2·p' + 1: a generator of Z*_p.

    Z*_p has order p - 1 = 2·p', so an element's order is 1, 2, p' or 2·p': u generates iff
    u² ≢ 1 and u^p' ≢ 1 (mod p).  For 1 < u < p - 1 the first holds, and u^p' is Legendre's
    symbol (u/p), so the primitive roots are exactly the quadratic non-residues other than
    p - 1: half of Z*_p, the search ends after about two tries.  Only for safe p (it does not
    factor p - 1 otherwise): ValueError if p is not one.
    """
    p = as_int(p, "p")
    if not is_safe_prime(p):
        raise ValueError("primitive_root needs a safe prime p = 2·p' + 1 with p' prime")
    half = (p - 1) // 2
    for u in range(2, p - 1):
        if powmod(u, 2, p) != 1 and powmod(u, half, p) != 1:
            return u
    raise AssertionError("a safe prime has primitive roots")  # unreachable


class SafePrimeSubgroup:
    """H_p = {x^p mod p² : x in Z*_p}, the subgroup of order p - 1 of Z*_(p²), for a safe prime
    p, given by a fixed generator so that x^p mod p² for a uniform x costs table look-ups.

    x -> x^p mod p² depends only on x mod p ((x + t·p)^p ≡ x^p mod p², binomial theorem) and is
    one-to-one from Z*_p onto H_p.  With u = primitive_root(p), a uniform in [0, p - 1) makes
    x = u^a mod p uniform in Z*_p, and x^p = g^a mod p² for g = u^p mod p² (the generator of
    H_p).  So drawing a and computing g^a has exactly the distribution of drawing x and
    computing x^p: nothing is assumed.  Attributes: prime, square, primitive_root, generator,
    exponent_bits (a < p - 1 < 2^exponent_bits).
    """

    def __init__(self, p):
        self.prime, self.square = as_int(p, "p"), as_int(p, "p") ** 2
        self.primitive_root = primitive_root(self.prime)  # ValueError unless p is safe
        self.generator = int(powmod(self.primitive_root, self.prime, self.square))
        self.exponent_bits = self.prime.bit_length()

    def random_exponent(self):
        """a uniform in [0, p - 1), from `secrets`."""
        return secrets.randbelow(self.prime - 1)

    def table(self):
        """The FixedBaseTable of the generator mod p² (fixed_base_table: built once per backend
        and process; about 9 MB at p of 1024 bits)."""
        return fixed_base_table(self.generator, self.square, self.exponent_bits)

    def __repr__(self):
        return f"SafePrimeSubgroup(<{self.prime.bit_length()}-bit p>)"  # p is a secret


def min_prime_distance(n_bits):
    """|p - q| must reach 2^(n_bits/2 - 100) (FIPS 186's distance): Fermat's method, which
    factors n quickly when p and q are close, then needs about 2^200 steps or more."""
    return 1 << max(n_bits // 2 - 100, 0)


def prime_pair_problem(p, q):
    """Why (p, q) cannot make an RSA/Paillier modulus, as one phrase; None for a good pair.

    p != q; equal sizes, |bits(p) - bits(q)| <= 1 (one bit of slack lets odd-length moduli
    made elsewhere load; n = 3·q is refused); both prime; gcd(n, φ(n)) = 1;
    |p - q| >= min_prime_distance(bits of n).
    """
    n = p * q
    if p == q:
        return "p and q must be distinct primes"
    if abs(p.bit_length() - q.bit_length()) > 1:
        return (f"p and q must have equal sizes, got {p.bit_length()} and {q.bit_length()} "
                "bits")
    for name, prime in (("p", p), ("q", q)):
        if not is_probable_prime(prime):
            return f"{name} is not prime"
    if math.gcd(n, (p - 1) * (q - 1)) != 1:
        return "gcd(n, φ(n)) = gcd(p·q, (p-1)(q-1)) must be 1"
    if abs(p - q) < min_prime_distance(n.bit_length()):
        return (f"|p - q| must be at least 2^{n.bit_length() // 2 - 100} (p and q this close "
                "fall to Fermat factoring)")
    return None


def hash_to_unit(n, label):
    """An element x of Z*_n derived from n alone (and a label), so nobody gets to choose it.

    SHA-256 in counter mode over (label, n, counter) gives n_bits + 128 bits, read as an integer
    mod n (so x is within 2^-128 of uniform); the negligible x = 0, 1 or gcd(x, n) != 1 moves
    on to the next counter value.
    """
    n_bytes = n.to_bytes((n.bit_length() + 7) // 8, "big")
    wanted, counter = (n.bit_length() + 128 + 7) // 8, 0
    while True:
        stream = b""
        while len(stream) < wanted:
            stream += hashlib.sha256(label + n_bytes + counter.to_bytes(8, "big")).digest()
            counter += 1
        x = int.from_bytes(stream[:wanted], "big") % n
        if x > 1 and math.gcd(x, n) == 1:
            return x


def units_problem(values, n):
    """Where the integer array `values` first holds no unit mod n² coprime to n, as a phrase
    (" at index (i, j) lies outside [1, n²)"...); None when every entry is an integer in
    [1, n²) with gcd(entry, n) = 1.  paillier.check_ciphertexts words the error."""
    nsquare = n * n
    for flat_index, c in enumerate(values.ravel().tolist()):
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            problem = f"is a {type(c).__name__}, not an integer"
        elif not 0 < c < nsquare:
            problem = "lies outside [1, n²)"
        elif math.gcd(c, n) != 1:
            problem = "is not coprime to n"
        else:
            continue
        index = tuple(int(i) for i in _unravel(flat_index, values.shape))
        return f"{' at index ' + str(index) if values.shape else ''} {problem}"
    return None


def _unravel(flat_index, shape):
    index = []
    for size in reversed(shape):
        flat_index, position = divmod(flat_index, size)
        index.append(position)
    return reversed(index)


# ---------------------------------------------------------------------------------------------
# Fixed-base exponentiation
# ---------------------------------------------------------------------------------------------

TABLE_BUDGET_BYTES = 12 << 20  # FixedBaseTable picks the widest window whose table fits


class FixedBaseTable:
    """base^e mod modulus for ONE fixed base and any 0 <= e < 2^exponent_bits: by look-ups.

    Write e in base 2^w, e = Σ_i d_i·2^(w·i) with digits 0 <= d_i < 2^w.  Then

        base^e = Π_i (base^(2^(w·i)))^(d_i) = Π_i T[i][d_i],   T[i][d] = base^(d·2^(w·i)),

    so with the whole table T stored (ceil(bits/w) rows of 2^w powers), base^e costs one
    multiplication per non-zero digit and not a single squaring.  A 1,024-bit e with w = 7: at
    most 147 multiplications, where powmod's square-and-multiply spends about 1,200.  The table
    costs that many multiplications once per row entry, and memory: rows·2^w numbers of the
    modulus' size.  Equals powmod(base, e, modulus) exactly (tests check it).
    """

    def __init__(self, base, modulus, exponent_bits, window=None):
        self.modulus, self.exponent_bits = int(modulus), int(exponent_bits)
        if window is None:  # widest window (<= 8) whose table fits TABLE_BUDGET_BYTES
            entry_bytes = (self.modulus.bit_length() + 7) // 8 + 32
            window = max([w for w in range(1, 9) if -(-self.exponent_bits // w) * (1 << w)
                          * entry_bytes <= TABLE_BUDGET_BYTES] or [1])
        self.window = window
        backend = current_backend()
        self._mpz, modulus, power = backend.mpz, backend.mpz(modulus), backend.mpz(base)
        power %= modulus
        self._rows = []
        for _ in range(-(-self.exponent_bits // window)):
            row = [backend.mpz(1), power]  # row[d] = power^d, power = base^(2^(w·i))
            for _ in range(2, 1 << window):
                row.append(row[-1] * power % modulus)
            self._rows.append(row)
            power = row[-1] * power % modulus  # base^(2^(w·(i+1)))
        self._typed_modulus = modulus

    def power(self, exponent):
        """base^exponent mod modulus, for 0 <= exponent < 2^exponent_bits."""
        exponent = as_int(exponent, "exponent")
        if not 0 <= exponent < 1 << self.exponent_bits:
            raise ValueError(f"exponent must lie in [0, 2^{self.exponent_bits}), "
                             f"got {describe_int(exponent)}")
        modulus, mask = self._typed_modulus, (1 << self.window) - 1
        result = self._mpz(1)
        for row in self._rows:
            if not exponent:
                break
            digit = exponent & mask
            if digit:
                result = result * row[digit] % modulus
            exponent >>= self.window
        return result


_TABLES = {}  # (backend, base, modulus, exponent_bits) -> FixedBaseTable, most recent last
_KEPT_TABLES = 4  # each is megabytes at 2048 bits; the label party's h_s and the key owner's
# g_p and g_q tables may live in one process (or one worker) together, with room for one more
_TABLES_LOCK = threading.Lock()  # the parties may run in two threads of one process


def fixed_base_table(base, modulus, exponent_bits):
    """The FixedBaseTable for (base, modulus, exponent_bits) on the current backend, built on
    first use and kept (the few most recently used) for the life of the process."""
    key = (current_backend().name, int(base), int(modulus), int(exponent_bits))
    with _TABLES_LOCK:
        table = _TABLES.pop(key, None)
    if table is None:  # built outside the lock: two threads may both build, harmlessly
        table = FixedBaseTable(base, modulus, exponent_bits)
    with _TABLES_LOCK:
        _TABLES[key] = table
        while len(_TABLES) > _KEPT_TABLES:
            del _TABLES[next(iter(_TABLES))]
    return table
