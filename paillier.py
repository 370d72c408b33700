"""Paillier encryption with exact fixed-point arrays, written to be read.

The cryptosystem (Paillier, EUROCRYPT 1999), with the usual choice g = n + 1:

    keys        n = p·q for random primes p != q of equal size, λ = lcm(p-1, q-1)
    encrypt     c = g^m · r^n  mod n²  =  (1 + m·n) · r^n  mod n²     (r uniform in Z*_n)
    decrypt     m = L(c^λ mod n², n) · μ  mod n,   L(u, n) = (u - 1) / n,
                μ = L(g^λ mod n², n)^-1 mod n

    E(a) · E(b)      = E(a + b)         (raw_add)
    E(a) · (1 + b·n) = E(a + b)         (raw_add_plain)
    E(a)^k           = E(k · a)         (raw_mul_const; k < 0 via one inverse of E(a))
    E(a) · r^n       = E(a), fresh look (raw_rerandomize)

The binomial theorem gives (1 + n)^m = 1 + m·n mod n², which is why encryption needs only one
modular exponentiation (r^n).  All plaintexts live in Z_n; signed integers are stored as residues
(see PublicKey.encode_residue), real numbers as exact fixed point with ONE public scale per
quantity (class Fixed).  The key owner decrypts, and may encrypt, with the Chinese remainder
theorem, working mod p² and q² instead of n²; the textbook formulas above are kept beside it
(decrypt_textbook) so tests can check one against the other.

Ciphertexts are plain integers, compatible with python-paillier (`phe`) given the same p and q.

Arithmetic runs on one of two backends: gmpy2 (fast; used when importable and the environment
variable ACML_PURE_PYTHON is not "1") or pure Python ints.  `use_backend("python")` switches at
run time.  Caveats: this is an educational reference, not audited cryptography; Python big-int
arithmetic is not constant time, so it leaks timing to anyone who can measure it.
"""

import collections
import hashlib
import json
import math
import numbers
import os
import secrets
import warnings
from types import SimpleNamespace

import numpy as np

from fixed import Fixed, as_object_array, check_scale, elementwise, object_array

__all__ = [
    "BACKEND", "use_backend", "current_backend", "mpz", "powmod", "invert", "is_probable_prime",
    "InsecureKeyWarning", "generate_keypair", "PublicKey", "PrivateKey", "L", "decrypt_textbook",
    "EncryptedArray", "OP_COUNTS", "reset_op_counts",
]

# ---------------------------------------------------------------------------------------------
# Backend: the same four number-theory primitives, from gmpy2 or from Python's int.
# ---------------------------------------------------------------------------------------------


def _python_backend():
    def is_prime(candidate):
        import sympy  # imported lazily: only key generation and key loading need it

        return sympy.isprime(int(candidate))  # Baillie-PSW: no known pseudoprime

    return SimpleNamespace(
        name="python", mpz=int, powmod=pow, invert=lambda a, m: pow(a, -1, m),
        gcd=math.gcd, is_prime=is_prime, not_invertible=ValueError,
    )


def _gmpy2_backend():
    import gmpy2

    return SimpleNamespace(
        name="gmpy2", mpz=gmpy2.mpz, powmod=gmpy2.powmod, invert=gmpy2.invert,
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
BACKEND = _backend.name  # read it as paillier.BACKEND: use_backend rebinds the module attribute


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


# ---------------------------------------------------------------------------------------------
# Operation counter, for cost accounting in the protocol and benchmarks.
# ---------------------------------------------------------------------------------------------

OP_COUNTS = collections.Counter()
"""Per-element counts of array operations: "encrypt", "decrypt", "mul_const" (exponentiations of
a ciphertext by a plaintext), "add" (ciphertext products) and "rerandomize"."""


def reset_op_counts():
    """Zero OP_COUNTS in place (modules that imported the Counter keep seeing the live one)."""
    OP_COUNTS.clear()


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------

MIN_KEY_BITS = 128  # below this even a test key is meaningless: the flag cannot go lower
INSECURE_KEY_BITS = 1024  # below this generate_keypair refuses unless allow_insecure=True
RECOMMENDED_KEY_BITS = 2048  # below this generate_keypair warns


class InsecureKeyWarning(UserWarning):
    """A Paillier modulus shorter than 2048 bits was generated: fine for tests, not for data."""


def L(u, n):
    """Paillier's L function, L(u) = (u - 1) / n, defined on {u < n²: u ≡ 1 mod n}."""
    return (u - 1) // n


_SMALL_PRIMES_PRODUCT = math.prod(
    candidate for candidate in range(3, 2000, 2)
    if all(candidate % divisor for divisor in range(3, math.isqrt(candidate) + 1, 2))
)


def _random_prime(bits):
    """A uniform random prime with exactly `bits` bits, the top two set, from `secrets`."""
    top_two_bits = 0b11 << (bits - 2)
    while True:
        candidate = secrets.randbits(bits) | top_two_bits | 1
        # One gcd rejects most composites before the expensive test.
        if math.gcd(candidate, _SMALL_PRIMES_PRODUCT) == 1 and is_probable_prime(candidate):
            return candidate


def generate_keypair(n_length=2048, *, allow_insecure=False):
    """Generate (PublicKey, PrivateKey) with a modulus n of exactly `n_length` bits.

    p and q are random primes of n_length/2 bits each with their top two bits set, so
    p·q >= (1.5·2^(n_length/2 - 1))² > 2^(n_length - 1): n has exactly n_length bits.  We also
    require p != q, gcd(n, (p-1)(q-1)) = 1 (Paillier's condition, automatic for equal sizes) and
    |p - q| > 2^(n_length/2 - 100) (the FIPS 186 distance, so Fermat factoring cannot work).

    Policy: n_length < 2048 emits InsecureKeyWarning; n_length < 1024 raises ValueError unless
    allow_insecure=True (for tests); n_length < 128 or odd always raises.
    """
    if isinstance(n_length, bool) or not isinstance(n_length, numbers.Integral):
        raise TypeError(f"n_length must be an int, got {type(n_length).__name__}")
    n_length = int(n_length)
    if n_length < MIN_KEY_BITS:
        raise ValueError(f"n_length={n_length} is below the hard floor of {MIN_KEY_BITS} bits")
    if n_length % 2:
        raise ValueError(f"n_length={n_length} must be even (p and q have equal size)")
    if n_length < INSECURE_KEY_BITS and not allow_insecure:
        raise ValueError(
            f"n_length={n_length} is insecure (< {INSECURE_KEY_BITS} bits); "
            "pass allow_insecure=True only for tests"
        )
    if n_length < RECOMMENDED_KEY_BITS:
        warnings.warn(
            f"a {n_length}-bit Paillier modulus is not secure; use >= {RECOMMENDED_KEY_BITS} bits",
            InsecureKeyWarning, stacklevel=2,
        )
    half = n_length // 2
    min_distance = 1 << max(half - 100, 0)
    while True:
        p, q = _random_prime(half), _random_prime(half)
        n = p * q
        if abs(p - q) > min_distance and math.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    assert n.bit_length() == n_length
    public_key = PublicKey(n)
    return public_key, PrivateKey(public_key, p, q)


def _as_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _describe(value):
    """A readable rendering of a possibly huge integer for error messages."""
    return str(value) if abs(value) < 10**30 else f"a {abs(value).bit_length()}-bit number"


class PublicKey:
    """Paillier public key (n, g = n + 1).

    Attributes: n, nsquare = n², g = n + 1, max_int = (n - 1) // 3.

    max_int is the overflow bound of the signed encoding: an integer v with |v| <= max_int is
    stored as the residue v mod n, so positives fill [0, max_int], negatives [n - max_int, n),
    and the middle band (max_int, n - max_int), about n/3 wide, never holds a valid encoding.
    A result that lands there after homomorphic arithmetic is reported as OverflowError; a
    result that overflows by more than that band wraps silently, so keep |results| <= max_int
    (Fixed.max_abs_bits helps budget the bits).
    """

    def __init__(self, n):
        n = _as_int(n, "n")
        if n < 3 or n % 2 == 0:
            raise ValueError(f"n must be an odd integer >= 3 (a product of two odd primes), "
                             f"got {n}")
        self.n = n
        self.nsquare = n * n
        self.g = n + 1
        self.max_int = (n - 1) // 3
        self._typed = {}

    # -- helpers --------------------------------------------------------------------------------

    def _moduli(self):
        """(backend, n, n²) with n and n² already in the backend's integer type (cached)."""
        backend = _backend
        typed = self._typed.get(backend.name)
        if typed is None:
            typed = self._typed[backend.name] = (backend.mpz(self.n), backend.mpz(self.nsquare))
        return (backend, *typed)

    @property
    def fingerprint(self):
        """sha256 of n (big-endian bytes) in hex: names the key in serialised payloads."""
        return hashlib.sha256(self.n.to_bytes((self.n.bit_length() + 7) // 8, "big")).hexdigest()

    def _check_plaintext_residue(self, m, what="plaintext"):
        m = _as_int(m, what)
        if not 0 <= m < self.n:
            raise ValueError(f"{what} must be a residue in [0, n), got {_describe(m)}")
        return m

    def _check_r(self, r):
        r = _as_int(r, "r")
        if not 0 < r < self.n or math.gcd(r, self.n) != 1:
            raise ValueError("r must lie in Z*_n: 0 < r < n and gcd(r, n) = 1")
        return r

    # -- the algebra ----------------------------------------------------------------------------

    def random_r(self):
        """A uniform element of Z*_n from `secrets` (the encryption randomness)."""
        while True:
            r = secrets.randbelow(self.n)
            if r > 0 and math.gcd(r, self.n) == 1:
                return _backend.mpz(r)

    def raw_encrypt(self, m, r=None):
        """c = (1 + m·n) · r^n mod n² for a residue m in [0, n); fresh r from secrets if None."""
        m = self._check_plaintext_residue(m)
        r = self.random_r() if r is None else self._check_r(r)
        backend, n, nsquare = self._moduli()
        return (1 + m * n) * backend.powmod(r, n, nsquare) % nsquare

    def raw_add(self, c1, c2):
        """E(a) · E(b) mod n² = E(a + b mod n)."""
        nsquare = self._moduli()[2]
        return c1 * c2 % nsquare

    def raw_add_plain(self, c, m):
        """E(a) · (1 + m·n) mod n² = E(a + m mod n) for a residue m in [0, n)."""
        m = self._check_plaintext_residue(m)
        _, n, nsquare = self._moduli()
        return c * (1 + m * n) % nsquare

    def raw_mul_const(self, c, k):
        """E(a)^k mod n² = E(k·a mod n) for any integer k.

        k < 0 uses (E(a)^-1)^|k|: one modular inverse, never the n-sized exponent k mod n.
        """
        k = _as_int(k, "k")
        backend, _, nsquare = self._moduli()
        if k < 0:
            return backend.powmod(backend.invert(c, nsquare), -k, nsquare)
        return backend.powmod(c, k, nsquare)

    def raw_rerandomize(self, c, r=None):
        """E(a) · r^n mod n²: the same plaintext under fresh randomness (unlinkable to c)."""
        r = self.random_r() if r is None else self._check_r(r)
        backend, n, nsquare = self._moduli()
        return c * backend.powmod(r, n, nsquare) % nsquare

    def check_ciphertext(self, c):
        """Raise ValueError unless c is an integer in [1, n²) with gcd(c, n) = 1."""
        c = _as_int(c, "ciphertext")
        if not 1 <= c < self.nsquare:
            raise ValueError(f"ciphertext {_describe(c)} lies outside [1, n²)")
        if math.gcd(c, self.n) != 1:
            raise ValueError("ciphertext is not coprime to n, so it is no Paillier ciphertext")

    # -- signed integers as residues --------------------------------------------------------------

    def encode_residue(self, v):
        """Signed integer v -> residue v mod n; OverflowError if |v| > max_int = (n - 1) // 3."""
        v = _as_int(v, "value")
        if abs(v) > self.max_int:
            raise OverflowError(
                f"|value| = {_describe(abs(v))} exceeds max_int = (n - 1) // 3 "
                f"({self.max_int.bit_length()} bits), the largest encodable magnitude"
            )
        return v % self.n

    def decode_residue(self, x):
        """Residue x in [0, n) -> signed integer.

        x <= max_int gives x; x >= n - max_int gives x - n; anything in between (the middle
        band max_int < x < n - max_int) can only come from overflow and raises OverflowError.
        """
        x = _as_int(x, "residue")
        if not 0 <= x < self.n:
            raise ValueError(f"residue must lie in [0, n), got {_describe(x)}")
        if x <= self.max_int:
            return x
        if x >= self.n - self.max_int:
            return x - self.n
        raise OverflowError(
            "decrypted residue lies in the overflow band (max_int, n - max_int): the plaintext "
            f"exceeded max_int = (n - 1) // 3 ({self.max_int.bit_length()} bits) in magnitude"
        )

    def _encode_array(self, values):
        """encode_residue over an object array, naming the index of an overflowing element."""
        residues = []
        for flat_index, value in enumerate(values.ravel().tolist()):
            try:
                residues.append(self.encode_residue(value))
            except OverflowError as error:
                index = np.unravel_index(flat_index, values.shape)
                raise OverflowError(f"at index {tuple(map(int, index))}: {error}") from None
        return np.array(residues, dtype=object).reshape(values.shape)

    # -- arrays -----------------------------------------------------------------------------------

    def encrypt(self, fixed):
        """Encrypt a Fixed array element by element (textbook: one r^n mod n² each, fresh r)."""
        if not isinstance(fixed, Fixed):
            raise TypeError(f"encrypt expects a Fixed array, got {type(fixed).__name__}")
        residues = self._encode_array(fixed.values)
        backend, n, nsquare = self._moduli()
        powmod_, random_r = backend.powmod, self.random_r
        ciphertexts = [
            (1 + m * n) * powmod_(random_r(), n, nsquare) % nsquare
            for m in residues.ravel().tolist()
        ]
        OP_COUNTS["encrypt"] += len(ciphertexts)
        return EncryptedArray(self, object_array(ciphertexts, fixed.shape), fixed.scale)

    # -- identity and serialisation ---------------------------------------------------------------

    def to_json(self):
        """JSON text {"n": "<decimal>"}."""
        return json.dumps({"n": str(self.n)})

    @classmethod
    def from_json(cls, text):
        """Inverse of to_json; ValueError on anything but {"n": "<decimal digits>"}."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"public key JSON does not parse: {error}") from None
        if not isinstance(data, dict) or not _is_decimal(data.get("n")):
            raise ValueError('public key JSON must be {"n": "<decimal digits>"}')
        return cls(int(data["n"]))

    def __eq__(self, other):
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self):
        return hash(("PublicKey", self.n))

    def __repr__(self):
        return f"PublicKey(<{self.n.bit_length()}-bit n, fingerprint {self.fingerprint[:12]}>)"


def _is_decimal(text):
    return isinstance(text, str) and text.isascii() and text.isdigit()


class PrivateKey:
    """Paillier private key: the factors p, q of the public n.

    Decryption and key-owner encryption use the Chinese remainder theorem: work mod p² and q²
    (half-size numbers: decryption is roughly 3.5x cheaper; encryption 2.5x for a given r,
    3.5x when the randomness is drawn directly as its CRT parts) and recombine.
    Paillier's decryption per prime:

        m_p = L(c^(p-1) mod p², p) · h_p mod p,   h_p = L(g^(p-1) mod p², p)^-1 mod p

    (likewise for q), then m = CRT(m_p, m_q) mod n.  decrypt_textbook is the λ/μ formula.
    """

    def __init__(self, public_key, p, q):
        if not isinstance(public_key, PublicKey):
            raise TypeError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
        p, q = _as_int(p, "p"), _as_int(q, "q")
        if p == q:
            raise ValueError("p and q must be distinct primes")
        if p * q != public_key.n:
            raise ValueError("p * q does not equal the public key's n")
        for name, prime in (("p", p), ("q", q)):
            if not is_probable_prime(prime):
                raise ValueError(f"{name} is not prime")
        self.public_key, self.p, self.q = public_key, p, q
        self._typed = {}

    def _constants(self):
        """Per-backend CRT constants (cached): p², q², h_p, h_q, q^-1 mod p, (q²)^-1 mod p²..."""
        backend = _backend
        constants = self._typed.get(backend.name)
        if constants is None:
            p, q, n = self.p, self.q, self.public_key.n
            psquare, qsquare = p * p, q * q
            g = self.public_key.g
            exact = {
                "n": n, "p": p, "q": q, "psquare": psquare, "qsquare": qsquare,
                "hp": pow(L(pow(g, p - 1, psquare), p), -1, p),
                "hq": pow(L(pow(g, q - 1, qsquare), q), -1, q),
                "q_inverse_mod_p": pow(q, -1, p),
                "qsquare_inverse_mod_psquare": pow(qsquare, -1, psquare),
                "q_mod_p_minus_1": q % (p - 1),
                "p_mod_q_minus_1": p % (q - 1),
            }
            constants = SimpleNamespace(**{k: backend.mpz(v) for k, v in exact.items()})
            constants.powmod = backend.powmod
            self._typed[backend.name] = constants
        return constants

    @staticmethod
    def _crt_decrypt(c, k):
        m_p = L(k.powmod(c, k.p - 1, k.psquare), k.p) * k.hp % k.p
        m_q = L(k.powmod(c, k.q - 1, k.qsquare), k.q) * k.hq % k.q
        # Garner's recombination: the unique m in [0, n) with m ≡ m_p (mod p), m ≡ m_q (mod q).
        return m_q + k.q * ((m_p - m_q) * k.q_inverse_mod_p % k.p)

    @staticmethod
    def _crt_encrypt(m, r, k):
        # r^n mod p² = (r^q mod p)^p mod p², exactly: x -> x^p mod p² depends only on x mod p
        # and is multiplicative, so (r^p)^q = (r^q)^p; and r^q mod p = r^(q mod (p-1)) mod p by
        # Fermat.  Two half-length exponents, one of them mod p, instead of n mod p².
        s_p = k.powmod(r, k.q_mod_p_minus_1, k.p)
        s_q = k.powmod(r, k.p_mod_q_minus_1, k.q)
        return PrivateKey._crt_encrypt_parts(m, s_p, s_q, k)

    @staticmethod
    def _crt_encrypt_parts(m, s_p, s_q, k):
        """(1 + m·n)·r^n mod n² from the CRT parts of r: s_p = r^q mod p, s_q = r^p mod q.

        r -> (r^q mod p, r^p mod q) is a bijection from Z*_n onto Z*_p × Z*_q (gcd(q, p-1) =
        gcd(p, q-1) = 1, which gcd(n, φ(n)) = 1 guarantees), so drawing s_p and s_q uniformly
        is drawing r uniformly: the key owner may skip the r^q step altogether.
        """
        g_to_m = 1 + m * k.n
        c_p = g_to_m * k.powmod(s_p, k.p, k.psquare) % k.psquare
        c_q = g_to_m * k.powmod(s_q, k.q, k.qsquare) % k.qsquare
        return c_q + k.qsquare * ((c_p - c_q) * k.qsquare_inverse_mod_psquare % k.psquare)

    def random_crt_parts(self):
        """Fresh encryption randomness as its CRT parts (s_p, s_q), uniform in Z*_p × Z*_q."""
        return 1 + secrets.randbelow(self.p - 1), 1 + secrets.randbelow(self.q - 1)

    def raw_decrypt(self, c):
        """The residue m in [0, n) encrypted in c (CRT path); ValueError for a non-ciphertext."""
        self.public_key.check_ciphertext(c)
        return int(self._crt_decrypt(c, self._constants()))

    def raw_encrypt(self, m, r=None):
        """(1 + m·n) · r^n mod n² computed mod p² and mod q², then recombined by CRT.

        Bit-for-bit the public textbook ciphertext for the same r, about 2.5x cheaper; without
        r, the randomness is drawn directly as its CRT parts (about 3.5x cheaper).
        """
        public_key = self.public_key
        m = public_key._check_plaintext_residue(m)
        if r is None:
            return self._crt_encrypt_parts(m, *self.random_crt_parts(), self._constants())
        return self._crt_encrypt(m, public_key._check_r(r), self._constants())

    def encrypt(self, fixed):
        """Encrypt a Fixed array with the key owner's CRT fast path (fresh randomness each)."""
        if not isinstance(fixed, Fixed):
            raise TypeError(f"encrypt expects a Fixed array, got {type(fixed).__name__}")
        public_key = self.public_key
        residues = public_key._encode_array(fixed.values)
        constants, random_parts = self._constants(), self.random_crt_parts
        ciphertexts = [
            self._crt_encrypt_parts(m, *random_parts(), constants)
            for m in residues.ravel().tolist()
        ]
        OP_COUNTS["encrypt"] += len(ciphertexts)
        return EncryptedArray(public_key, object_array(ciphertexts, fixed.shape), fixed.scale)

    def _check_owner(self, encrypted):
        if not isinstance(encrypted, EncryptedArray):
            raise TypeError(f"expected an EncryptedArray, got {type(encrypted).__name__}")
        if encrypted.public_key != self.public_key:
            raise ValueError("cannot decrypt: the array was encrypted under a different public key")

    def decrypt_residues(self, encrypted):
        """Object array of the plaintext residues in [0, n), without signed decoding.

        For values masked uniformly mod n, where the signed reading would be meaningless.
        """
        self._check_owner(encrypted)
        constants = self._constants()
        residues = [
            int(self._crt_decrypt(c, constants)) for c in encrypted.ciphertexts.ravel().tolist()
        ]
        OP_COUNTS["decrypt"] += len(residues)
        return object_array(residues, encrypted.shape)

    def decrypt(self, encrypted):
        """Decrypt to a Fixed array at the array's scale.

        OverflowError (naming the index and the bound max_int) if a residue lies in the overflow
        band, i.e. the homomorphic arithmetic exceeded |value| <= max_int.
        """
        residues = self.decrypt_residues(encrypted)
        decode = self.public_key.decode_residue
        values = []
        for flat_index, residue in enumerate(residues.ravel().tolist()):
            try:
                values.append(decode(residue))
            except OverflowError as error:
                index = tuple(map(int, np.unravel_index(flat_index, residues.shape)))
                raise OverflowError(f"at index {index}: {error}") from None
        return Fixed(object_array(values, residues.shape), encrypted.scale)

    def __repr__(self):
        return f"PrivateKey(<for {self.public_key!r}>)"  # never print p or q


def decrypt_textbook(private_key, c):
    """Textbook decryption m = L(c^λ mod n², n) · μ mod n, with λ = lcm(p-1, q-1) and
    μ = L(g^λ mod n², n)^-1 mod n.  Slower than the CRT path; kept to cross-check it."""
    public_key = private_key.public_key
    public_key.check_ciphertext(c)
    n, nsquare = public_key.n, public_key.nsquare
    lam = math.lcm(private_key.p - 1, private_key.q - 1)
    mu = invert(L(powmod(public_key.g, lam, nsquare), n), n)
    return int(L(powmod(c, lam, nsquare), n) * mu % n)


_FORMAT = "acml-paillier-array-v1"


class EncryptedArray:
    """An array of Paillier ciphertexts of fixed-point values, all at one public `scale`.

    Supported homomorphic operations (exact, mirrored by the same operations on Fixed):
    enc + enc, enc ± Fixed, Fixed - enc, -enc, enc * Fixed (elementwise, broadcasting, scales
    add), enc @ Fixed and Fixed @ enc (2-D, scales add), sum(axis), indexing, transpose.

    Caveat: results are deterministic functions of their inputs.  Call rerandomize() before a
    ciphertext leaves your hands if its randomness could tell the key owner how it was computed.
    """

    __slots__ = ("public_key", "ciphertexts", "scale")

    def __init__(self, public_key, ciphertexts, scale):
        """Wrap ciphertexts as they are (trusted: use from_bytes/from_json for untrusted input)."""
        if not isinstance(public_key, PublicKey):
            raise TypeError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
        self.public_key = public_key
        self.ciphertexts = as_object_array(np.asarray(ciphertexts, dtype=object))
        self.scale = check_scale(scale)

    def _new(self, ciphertexts, scale=None):
        return EncryptedArray(self.public_key, ciphertexts, self.scale if scale is None else scale)

    @property
    def shape(self):
        return self.ciphertexts.shape

    @property
    def ndim(self):
        return self.ciphertexts.ndim

    @property
    def T(self):
        return self.transpose()

    def transpose(self, *axes):
        return self._new(self.ciphertexts.transpose(*axes))

    def __getitem__(self, index):
        return self._new(as_object_array(self.ciphertexts[index]))

    def _check_same_key(self, other):
        if other.public_key != self.public_key:
            raise ValueError(
                "cannot combine ciphertexts under different public keys "
                f"({self.public_key.fingerprint[:12]} vs {other.public_key.fingerprint[:12]})"
            )

    def _check_same_scale(self, other, operation):
        if other.scale != self.scale:
            raise ValueError(
                f"cannot {operation} scale {self.scale} (encrypted) and scale {other.scale}; "
                "rescale the plaintext first"
            )

    # -- additions ---------------------------------------------------------------------------------

    def __add__(self, other):
        """E(a) + E(b) -> E(a·b mod n²); E(a) + b -> E(a) · (1 + b·n) mod n².  Same scale."""
        _, n, nsquare = self.public_key._moduli()
        if isinstance(other, EncryptedArray):
            self._check_same_key(other)
            self._check_same_scale(other, "add")
            result = elementwise(lambda c1, c2: c1 * c2 % nsquare,
                                  self.ciphertexts, other.ciphertexts)
        elif isinstance(other, Fixed):
            self._check_same_scale(other, "add")
            residues = self.public_key._encode_array(other.values)
            result = elementwise(lambda c, m: c * (1 + m * n) % nsquare,
                                  self.ciphertexts, residues)
        else:
            return NotImplemented
        OP_COUNTS["add"] += result.size
        return self._new(result)

    __radd__ = __add__

    def __neg__(self):
        """E(-a) = E(a)^-1 mod n² (one inverse per element)."""
        backend, _, nsquare = self.public_key._moduli()
        inverse = backend.invert
        result = elementwise(lambda c: inverse(c, nsquare), self.ciphertexts)
        OP_COUNTS["mul_const"] += result.size
        return self._new(result)

    def __sub__(self, other):
        if isinstance(other, Fixed):
            return self + (-other)
        if isinstance(other, EncryptedArray):
            return self + (-other)
        return NotImplemented

    def __rsub__(self, other):
        if isinstance(other, Fixed):
            return (-self) + other
        return NotImplemented

    # -- products by plaintexts ----------------------------------------------------------------

    def __mul__(self, other):
        """Elementwise E(a)^k = E(k·a) with broadcasting; k < 0 via one inverse.  Scales add."""
        if not isinstance(other, Fixed):
            return NotImplemented
        backend, _, nsquare = self.public_key._moduli()
        powmod_, inverse = backend.powmod, backend.invert
        exponents = elementwise(backend.mpz, other.values)

        def times(c, k):
            return powmod_(inverse(c, nsquare), -k, nsquare) if k < 0 else powmod_(c, k, nsquare)

        result = elementwise(times, self.ciphertexts, exponents)
        OP_COUNTS["mul_const"] += result.size
        return self._new(result, self.scale + other.scale)

    __rmul__ = __mul__

    def __matmul__(self, other):
        """[[A]] @ W for 2-D A (m×k) and W (k×h): out[i, j] = Π_t E(A[i, t])^W[t, j] mod n².

        Serves both protocol forms, [[X]] @ W and [[X]].T @ delta.  Negative weights: their
        powers go into a separate product that is inverted once per output element.
        """
        if not isinstance(other, Fixed):
            return NotImplemented
        if self.ndim != 2 or other.ndim != 2 or self.shape[1] != other.shape[0]:
            raise ValueError(
                f"encrypted matmul needs (m, k) @ (k, h), got {self.shape} @ {other.shape}")
        backend, _, nsquare = self.public_key._moduli()
        powmod_, inverse, one = backend.powmod, backend.invert, backend.mpz(1)
        # Sign and magnitude of every weight, converted to the backend type once.
        columns = [
            [(weight < 0, backend.mpz(abs(weight))) for weight in column]
            for column in other.values.T.tolist()
        ]
        rows, inner, cols = self.shape[0], self.shape[1], other.shape[1]
        out = np.empty((rows, cols), dtype=object)
        for i, row in enumerate(self.ciphertexts.tolist()):
            for j, column in enumerate(columns):
                positive, negative = one, one
                for c, (is_negative, magnitude) in zip(row, column):
                    if not magnitude:
                        continue
                    if is_negative:
                        negative = negative * powmod_(c, magnitude, nsquare) % nsquare
                    else:
                        positive = positive * powmod_(c, magnitude, nsquare) % nsquare
                if negative != one:
                    positive = positive * inverse(negative, nsquare) % nsquare
                out[i, j] = positive
        OP_COUNTS["mul_const"] += rows * cols * inner
        OP_COUNTS["add"] += rows * cols * max(inner - 1, 0)
        return self._new(out, self.scale + other.scale)

    def __rmatmul__(self, other):
        """W @ [[A]] = ([[A]].T @ W.T).T."""
        if not isinstance(other, Fixed):
            return NotImplemented
        if other.ndim != 2 or self.ndim != 2:
            raise ValueError(
                f"encrypted matmul needs 2-D operands, got {other.shape} @ {self.shape}")
        return (self.T @ other.T).T

    def sum(self, axis=None):
        """Homomorphic sum over an axis (or everything): the product of the ciphertexts."""
        backend, _, nsquare = self.public_key._moduli()
        multiply = np.frompyfunc(lambda c1, c2: c1 * c2 % nsquare, 2, 1)
        ciphertexts = self.ciphertexts.reshape(-1) if axis is None else self.ciphertexts
        result = as_object_array(multiply.reduce(ciphertexts, axis=0 if axis is None else axis,
                                                  initial=backend.mpz(1)))
        OP_COUNTS["add"] += self.ciphertexts.size - result.size
        return self._new(result)

    def rerandomize(self):
        """Multiply every ciphertext by a fresh r^n: same plaintexts, unlinkable ciphertexts."""
        backend, n, nsquare = self.public_key._moduli()
        powmod_, random_r = backend.powmod, self.public_key.random_r
        result = elementwise(lambda c: c * powmod_(random_r(), n, nsquare) % nsquare,
                              self.ciphertexts)
        OP_COUNTS["rerandomize"] += result.size
        return self._new(result)

    # -- serialisation (no pickle) -------------------------------------------------------------

    def _header(self):
        return {
            "format": _FORMAT, "shape": list(self.shape), "scale": self.scale,
            "key": self.public_key.fingerprint,
        }

    def to_bytes(self):
        """4-byte header length, JSON header (format, shape, scale, width, key fingerprint),
        then every ciphertext as a fixed-width big-endian integer in C order."""
        width = _ciphertext_width(self.public_key)
        header = json.dumps({**self._header(), "width": width}, sort_keys=True).encode()
        body = b"".join(int(c).to_bytes(width, "big") for c in self.ciphertexts.ravel().tolist())
        return len(header).to_bytes(4, "big") + header + body

    @classmethod
    def from_bytes(cls, data, public_key):
        """Parse to_bytes output, validating the header, the length, the key fingerprint and
        that every ciphertext lies in [1, n²) and is coprime to n (ValueError otherwise)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes expects bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 4:
            raise ValueError("encrypted payload is truncated: no header length")
        header_length = int.from_bytes(data[:4], "big")
        if 4 + header_length > len(data):
            raise ValueError("encrypted payload is truncated inside its header")
        try:
            header = json.loads(data[4:4 + header_length].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"encrypted payload header is corrupt: {error}") from None
        shape, scale = _check_header(header, public_key)
        width = _ciphertext_width(public_key)
        if header.get("width") != width:
            raise ValueError(
                f"header says {header.get('width')!r} bytes per ciphertext, the key needs {width}")
        body = data[4 + header_length:]
        count = math.prod(shape)
        if len(body) != count * width:
            raise ValueError(
                f"encrypted payload has {len(body)} ciphertext bytes, expected {count} × {width}"
            )
        integers = [int.from_bytes(body[i * width:(i + 1) * width], "big") for i in range(count)]
        return cls(public_key, _checked_ciphertexts(integers, shape, public_key), scale)

    def to_json(self):
        """JSON text: the header fields plus the ciphertexts as decimal strings (C order)."""
        decimals = [str(int(c)) for c in self.ciphertexts.ravel().tolist()]
        return json.dumps({**self._header(), "ciphertexts": decimals})

    @classmethod
    def from_json(cls, text, public_key):
        """Inverse of to_json, with the same validation as from_bytes."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"encrypted JSON does not parse: {error}") from None
        shape, scale = _check_header(data, public_key)
        strings = data.get("ciphertexts")
        if not isinstance(strings, list) or len(strings) != math.prod(shape):
            raise ValueError(
                f"encrypted JSON must list {math.prod(shape)} ciphertexts for shape {shape}")
        if not all(_is_decimal(text) for text in strings):
            raise ValueError("encrypted JSON ciphertexts must be decimal digit strings")
        integers = [int(text) for text in strings]
        return cls(public_key, _checked_ciphertexts(integers, shape, public_key), scale)

    def __repr__(self):
        return (f"EncryptedArray(shape={self.shape}, scale={self.scale}, "
                f"key={self.public_key.fingerprint[:12]})")


def _ciphertext_width(public_key):
    return (public_key.nsquare.bit_length() + 7) // 8


def _check_header(header, public_key):
    """Validate a serialised array's header against `public_key`; return (shape, scale)."""
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError(f"not an encrypted array payload (expected format {_FORMAT!r})")
    if header.get("key") != public_key.fingerprint:
        raise ValueError(
            "payload was encrypted under a different public key "
            f"(fingerprint {str(header.get('key'))[:12]}, this key {public_key.fingerprint[:12]})"
        )
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
        raise ValueError(f"payload shape must be a list of non-negative ints, got {shape!r}")
    scale = header.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        raise ValueError(f"payload scale must be an int >= 0, got {scale!r}")
    return tuple(shape), scale


def _checked_ciphertexts(integers, shape, public_key):
    """Check every ciphertext (naming the index of a bad one) and convert to the backend type."""
    for flat_index, c in enumerate(integers):
        try:
            public_key.check_ciphertext(c)
        except ValueError as error:
            index = tuple(map(int, np.unravel_index(flat_index, shape)))
            raise ValueError(f"ciphertext at index {index}: {error}") from None
    return object_array([_backend.mpz(c) for c in integers], shape)
