"""Paillier encryption with exact fixed-point arrays, written to be read.

The cryptosystem (Paillier, EUROCRYPT 1999), with the usual choice g = n + 1:

    keys        n = p·q for random (safe) primes p != q of equal size, λ = lcm(p-1, q-1)
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

Randomness: any n-th residue ρ mod n² can stand where r^n stands.  randomness="textbook" uses
ρ = r^n, r uniform in Z*_n (Paillier's scheme, resting on the decisional composite residuosity
assumption, DCRA).  randomness="djn" (Damgård-Jurik-Nielsen, s = 1; the default) uses
ρ = h_s^α with one fixed h_s = (-x²)^n mod n² per key, x hashed from n (so the label party,
holding only the public key, needs to trust nobody's choice), and α uniform of n_bits/2 bits.
This ADDS an assumption: that h_s^α with a short α is indistinguishable from a uniform n-th
residue (the short-exponent / subgroup-indistinguishability assumption DJN state; HEU, Intel
IPCL and ABY rely on it too).  It buys a half-length exponent of a fixed base, which
backend.FixedBaseTable turns into ~n_bits/14 multiplications: >10x cheaper than r^n.
Decryption is unchanged.

The key owner's own encryption ([[X]], which the label party holds) keeps uniform r, the
textbook distribution, with NO new assumption, at fixed-base speed when p and q are safe primes
(generate_keypair's default).  Mod p², r^n depends only on s_p = r^q mod p, uniform in Z*_p; a
primitive root u_p is known (p - 1 = 2p', factored), so s_p = u_p^a, a uniform in [0, p - 1),
and s_p^p = g_p^a mod p², one fixed g_p = u_p^p (backend.SafePrimeSubgroup; likewise q): the
same ciphertexts at a FixedBaseTable's cost; a safe-prime key takes seconds to make.  Other
keys (old checkpoints, phe's, a user's p, q) keep per-element CRT; kernels.encrypt_array(
private_key, ..., randomness="djn") still opts in to DJN, with its assumption.

Ciphertexts are plain integers, compatible with python-paillier (`phe`) given the same p and q;
the last section writes keys and ciphertext arrays as text and bytes (hex, no pickle).
Arithmetic runs on gmpy2 or pure Python ints (module backend; `use_backend("python")`).
Caveats: this is an educational reference, not audited cryptography; Python big-int arithmetic
is not constant time, so it leaks timing to anyone who can measure it.
"""

import collections
import hashlib
import json
import math
import numbers
import secrets
import warnings
from types import SimpleNamespace

import numpy as np

from speed.backend import (
    SafePrimeSubgroup, current_backend, fixed_base_table, hash_to_unit,
    invert, is_probable_prime, is_safe_prime, mpz, powmod, prime_pair_problem, random_prime,
    random_safe_prime, units_problem, use_backend,
)
from fixed import (Fixed, as_int, as_object_array, check_scale, describe_int, elementwise,
                   map_values, object_array)


def __getattr__(name):
    """paillier.BACKEND: the name of the arithmetic backend in use, read live (use_backend)."""
    if name == "BACKEND":
        return current_backend().name
    raise AttributeError(f"module 'paillier' has no attribute {name!r}")


__all__ = [
    "BACKEND", "use_backend", "current_backend", "mpz", "powmod", "invert", "is_probable_prime",
    "InsecureKeyWarning", "generate_keypair", "PublicKey", "PrivateKey", "L", "decrypt_textbook",
    "EncryptedArray", "OP_COUNTS", "reset_op_counts", "signed_to_residue", "residue_to_signed",
    "mod_n", "decode_signed", "int_to_text", "int_from_text",
]

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

MIN_KEY_BITS = 128  # below this even a test key is meaningless: no flag goes lower
INSECURE_KEY_BITS = 1024  # below this keys are refused unless allow_insecure=True
RECOMMENDED_KEY_BITS = 2048  # below this generate_keypair warns
INSECURE_FLAG = "--insecure-small-key"  # the command-line spelling of allow_insecure=True


class InsecureKeyWarning(UserWarning):
    """A Paillier modulus shorter than 2048 bits was generated: fine for tests, not for data."""


def check_key_size(bits, *, allow_insecure):
    """The key-size policy, in one place: ValueError unless a `bits`-bit modulus is allowed.

    Under MIN_KEY_BITS always refused; under INSECURE_KEY_BITS refused unless allow_insecure
    (tests and demos only: the command line spells it --insecure-small-key).
    """
    if bits < MIN_KEY_BITS:
        raise ValueError(f"a {bits}-bit key is below the hard floor of {MIN_KEY_BITS} bits")
    if bits < INSECURE_KEY_BITS and not allow_insecure:
        raise ValueError(f"a {bits}-bit key is under {INSECURE_KEY_BITS} bits and not secure; "
                         f"allow insecure keys (allow_insecure=True, {INSECURE_FLAG}) only for "
                         "tests and demos")


def L(u, n):
    """Paillier's L function, L(u) = (u - 1) / n, defined on {u < n²: u ≡ 1 mod n}."""
    return (u - 1) // n


def generate_keypair(n_length=2048, *, allow_insecure=False, safe_primes=True):
    """Generate (PublicKey, PrivateKey) with a modulus n of exactly `n_length` bits.

    p and q are random primes of n_length/2 bits each with their top two bits set, so
    p·q >= (1.5·2^(n_length/2 - 1))² > 2^(n_length - 1): n has exactly n_length bits.  A pair
    is redrawn until PrivateKey would accept it (prime_pair_problem: distinct, gcd(n, φ(n)) = 1,
    |p - q| >= 2^(n_length/2 - 100)).

    safe_primes=True (default): uniform safe primes (backend.random_safe_prime; seconds at 2048
    bits, bench.py measures it) for fixed-base encryption (module docstring).  False: any primes.

    Policy (check_key_size): n_length < 1024 raises ValueError unless allow_insecure=True (for
    tests); n_length < 128 always raises; so does an odd n_length; < 2048 emits
    InsecureKeyWarning.
    """
    if isinstance(n_length, bool) or not isinstance(n_length, numbers.Integral):
        raise TypeError(f"n_length must be an int, got {type(n_length).__name__}")
    n_length = int(n_length)
    try:
        check_key_size(n_length, allow_insecure=allow_insecure)
    except ValueError as error:
        raise ValueError(f"n_length={n_length}: {error}") from None
    if n_length % 2:
        raise ValueError(f"n_length={n_length} must be even (p and q have equal size)")
    if n_length < RECOMMENDED_KEY_BITS:
        warnings.warn(
            f"a {n_length}-bit Paillier modulus is not secure; use >= {RECOMMENDED_KEY_BITS} bits",
            InsecureKeyWarning, stacklevel=2,
        )
    half = n_length // 2
    while True:
        draw = random_safe_prime if safe_primes else random_prime
        p, q = draw(half), draw(half)
        if prime_pair_problem(p, q) is None:
            break
    assert (p * q).bit_length() == n_length
    public_key = PublicKey(p * q)
    return public_key, PrivateKey(public_key, p, q, allow_insecure=allow_insecure)


RANDOMNESS_KINDS = ("djn", "textbook")
DEFAULT_RANDOMNESS = "djn"  # see the module docstring for the assumption it adds


def randomness_kind(randomness):
    """The randomness kind asked for ("djn", "textbook"; None: DEFAULT_RANDOMNESS)."""
    kind = DEFAULT_RANDOMNESS if randomness is None else randomness
    if kind not in RANDOMNESS_KINDS:
        raise ValueError(f"randomness must be one of {RANDOMNESS_KINDS}, got {randomness!r}")
    return kind


# ---------------------------------------------------------------------------------------------
# Signed integers as residues mod n
#
# Plaintexts live in Z_n.  A signed v with |v| <= max_int = (n - 1) // 3 is stored as v mod n:
# positives fill [0, max_int], negatives [n - max_int, n), and the middle band between, about
# n/3 wide, holds no valid encoding, so a result that overflowed into it is caught on decoding.
# ---------------------------------------------------------------------------------------------


def _size(value):
    return str(value) if abs(value) < 10**30 else f"a {abs(value).bit_length()}-bit number"


def signed_to_residue(v, n, max_int):
    """Signed integer v -> residue v mod n; OverflowError if |v| > max_int (paillier uses
    max_int = (n - 1) // 3, so that the middle band of Z_n holds no valid encoding)."""
    if abs(v) > max_int:
        raise OverflowError(
            f"|value| = {_size(abs(v))} exceeds max_int = (n - 1) // 3 "
            f"({max_int.bit_length()} bits), the largest encodable magnitude"
        )
    return v % n


def residue_to_signed(x, n, max_int):
    """Residue x in [0, n) -> signed integer: x <= max_int gives x; x >= n - max_int gives
    x - n; the middle band max_int < x < n - max_int can only come from overflow and raises
    OverflowError (ValueError for x outside [0, n))."""
    if not 0 <= x < n:
        raise ValueError(f"residue must lie in [0, n), got {_size(x)}")
    if x <= max_int:
        return x
    if x >= n - max_int:
        return x - n
    raise OverflowError(
        "decrypted residue lies in the overflow band (max_int, n - max_int): the plaintext "
        f"exceeded max_int = (n - 1) // 3 ({max_int.bit_length()} bits) in magnitude"
    )


def mod_n(values, n: int) -> np.ndarray:
    """Reduce an object array of ints into [0, n)."""
    return np.asarray(values, dtype=object) % n


def decode_signed(values, public_key) -> np.ndarray:
    """Residues mod n back to signed ints (``public_key.decode_residue`` on each); OverflowError
    if any lies in the middle third."""
    return np.vectorize(lambda v: int(public_key.decode_residue(int(v))), otypes=[object])(
        np.asarray(values, dtype=object))


class PublicKey:
    """Paillier public key (n, g = n + 1).

    Attributes: n, nsquare = n², g = n + 1, max_int = (n - 1) // 3, djn_base (h_s).

    max_int is the overflow bound of the signed encoding: an integer v with |v| <= max_int is
    stored as the residue v mod n, so positives fill [0, max_int], negatives [n - max_int, n),
    and the middle band (max_int, n - max_int), about n/3 wide, never holds a valid encoding.
    A result that lands there after homomorphic arithmetic is reported as OverflowError; a
    result that overflows by more than that band wraps silently, so keep |results| <= max_int
    (fixed.max_abs_bits helps budget the bits).

    Construction refuses what can be no Paillier modulus (even, a perfect square, shorter than
    MIN_KEY_BITS); whether a key is long enough to use is the caller's policy: check_policy.
    """

    def __init__(self, n):
        n = as_int(n, "n")
        if n < 3 or n % 2 == 0:
            raise ValueError(f"n must be odd (a product of two odd primes), got "
                             f"{describe_int(n)}")
        if n.bit_length() < MIN_KEY_BITS:
            raise ValueError(f"n has {n.bit_length()} bits, below the hard floor of "
                             f"{MIN_KEY_BITS} bits")
        if math.isqrt(n) ** 2 == n:
            raise ValueError("n is a perfect square (p = q), so it is no Paillier modulus")
        self.n, self.nsquare, self.g, self.max_int = n, n * n, n + 1, (n - 1) // 3
        self._typed, self._djn_base = {}, None  # per-backend constants; h_s, made on first use

    def check_policy(self, *, allow_insecure):
        """ValueError unless this key's size passes check_key_size; returns the key.

        A party handed a public key (the label party, over the wire) calls this before use.
        """
        check_key_size(self.n.bit_length(), allow_insecure=allow_insecure)
        return self

    # -- helpers --------------------------------------------------------------------------------

    def moduli(self):
        """(backend, n, n²) with n and n² already in the current backend's integer type (cached
        per backend): what any code doing arithmetic mod n² on this key's ciphertexts needs
        (EncryptedArray here, speed.kernels' fast paths).  Public information only."""
        backend = current_backend()
        typed = self._typed.get(backend.name)
        if typed is None:
            typed = self._typed[backend.name] = (backend.mpz(self.n), backend.mpz(self.nsquare))
        return (backend, *typed)

    @property
    def fingerprint(self):
        """sha256 of n (big-endian bytes) in hex: names the key in serialised payloads."""
        return hashlib.sha256(self.n.to_bytes((self.n.bit_length() + 7) // 8, "big")).hexdigest()

    def _check_plaintext_residue(self, m, what="plaintext"):
        m = as_int(m, what)
        if not 0 <= m < self.n:
            raise ValueError(f"{what} must be a residue in [0, n), got {describe_int(m)}")
        return m

    def _check_r(self, r):
        r = as_int(r, "r")
        if not 0 < r < self.n or math.gcd(r, self.n) != 1:
            raise ValueError("r must lie in Z*_n: 0 < r < n and gcd(r, n) = 1")
        return r

    # -- randomness -----------------------------------------------------------------------------

    def random_r(self):
        """A uniform element of Z*_n from `secrets` (the textbook encryption randomness)."""
        while True:
            r = secrets.randbelow(self.n)
            if r > 0 and math.gcd(r, self.n) == 1:
                return mpz(r)

    @property
    def djn_base(self):
        """DJN's fixed base h_s = (-x²)^n mod n², x = hash_to_unit(n): an n-th residue."""
        if self._djn_base is None:
            x = hash_to_unit(self.n, b"acml-djn-x")
            self._djn_base = int(powmod((-x * x) % self.n, self.n, self.nsquare))
        return self._djn_base

    @property
    def djn_exponent_bits(self):
        """α's length: half of n's bits (rounded up), as HEU, Intel IPCL and ABY choose."""
        return (self.n.bit_length() + 1) // 2

    def random_djn_exponent(self):
        """α uniform in [1, 2^djn_exponent_bits) from `secrets`."""
        while True:
            alpha = secrets.randbits(self.djn_exponent_bits)
            if alpha:
                return alpha

    def djn_randomizer(self, alpha):
        """h_s^α mod n² = powmod(h_s, α, n²), from a FixedBaseTable built once per key."""
        table = fixed_base_table(self.djn_base, self.nsquare, self.djn_exponent_bits)
        return table.power(alpha)

    def _rho(self, r, randomness):
        """r^n mod n² for a given r, else a fresh randomizer(randomness)."""
        if r is None:
            return self.randomizer(randomness)
        return powmod(self._check_r(r), self.n, self.nsquare)

    def randomizer(self, randomness=None):
        """A fresh randomizer ρ, an n-th residue mod n², so that (1 + m·n)·ρ encrypts m.

        "textbook": ρ = r^n mod n², r uniform in Z*_n.  "djn": ρ = h_s^α mod n², α uniform of
        djn_exponent_bits (a half-length exponent of a fixed base: ~10x cheaper at 2048 bits).
        """
        backend, n, nsquare = self.moduli()
        if randomness_kind(randomness) == "textbook":
            return backend.powmod(self.random_r(), n, nsquare)
        return self.djn_randomizer(self.random_djn_exponent())

    # -- the algebra ----------------------------------------------------------------------------

    def raw_encrypt(self, m, r=None, *, randomness=None):
        """c = (1 + m·n) · ρ mod n² for a residue m in [0, n): ρ = r^n for a given r, else a
        fresh randomizer(randomness)."""
        m = self._check_plaintext_residue(m)
        return (1 + m * self.n) * self._rho(r, randomness) % self.nsquare

    def raw_add(self, c1, c2):
        """E(a) · E(b) mod n² = E(a + b mod n)."""
        nsquare = self.moduli()[2]
        return c1 * c2 % nsquare

    def raw_add_plain(self, c, m):
        """E(a) · (1 + m·n) mod n² = E(a + m mod n) for a residue m in [0, n)."""
        m = self._check_plaintext_residue(m)
        _, n, nsquare = self.moduli()
        return c * (1 + m * n) % nsquare

    def raw_mul_const(self, c, k):
        """E(a)^k mod n² = E(k·a mod n) for any integer k.

        k < 0 uses (E(a)^-1)^|k|: one modular inverse, never the n-sized exponent k mod n.
        """
        k = as_int(k, "k")
        backend, _, nsquare = self.moduli()
        if k < 0:
            return backend.powmod(backend.invert(c, nsquare), -k, nsquare)
        return backend.powmod(c, k, nsquare)

    def raw_rerandomize(self, c, r=None, *, randomness=None):
        """E(a) · ρ mod n²: the same plaintext under fresh randomness (unlinkable to c)."""
        return c * self._rho(r, randomness) % self.nsquare

    def check_ciphertext(self, c):
        """Raise ValueError unless c is an integer in [1, n²) with gcd(c, n) = 1."""
        check_ciphertexts(as_object_array(as_int(c, "ciphertext")), self)

    # -- signed integers as residues (signed_to_residue above) --------------------------------
    def encode_residue(self, v):
        """Signed integer v -> residue v mod n; OverflowError if |v| > max_int = (n - 1) // 3."""
        return signed_to_residue(as_int(v, "value"), self.n, self.max_int)

    def decode_residue(self, x):
        """Residue x in [0, n) -> signed integer: x <= max_int gives x, x >= n - max_int gives
        x - n; the middle band between can only come from overflow: OverflowError."""
        return residue_to_signed(as_int(x, "residue"), self.n, self.max_int)

    def encode_residues(self, values):
        """encode_residue over an object array of signed ints -> their residues mod n, same
        shape; OverflowError names the index of an element with |v| > max_int.  For whoever
        encrypts an array itself (speed.kernels, the attacks' baselines)."""
        return map_values(self.encode_residue, values)

    # -- arrays -----------------------------------------------------------------------------------

    def encrypt(self, fixed, *, randomness=None):
        """Encrypt a Fixed array element by element, a fresh randomizer(randomness) each."""
        if not isinstance(fixed, Fixed):
            raise TypeError(f"encrypt expects a Fixed array, got {type(fixed).__name__}")
        residues = self.encode_residues(fixed.values)
        kind = randomness_kind(randomness)
        _, n, nsquare = self.moduli()
        ciphertexts = [(1 + m * n) * self.randomizer(kind) % nsquare
                       for m in residues.ravel().tolist()]
        OP_COUNTS["encrypt"] += len(ciphertexts)
        return EncryptedArray(self, object_array(ciphertexts, fixed.shape), fixed.scale)

    # -- identity and serialisation ---------------------------------------------------------------

    def to_json(self):
        """JSON text {"n": "0x<hex>"} (int_to_text: no limit on the key size)."""
        return json.dumps({"n": int_to_text(self.n)})

    @classmethod
    def from_json(cls, text):
        """Inverse of to_json (also reads the older decimal n); ValueError on anything else."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"public key JSON does not parse: {error}") from None
        if not isinstance(data, dict) or set(data) != {"n"}:
            raise ValueError('public key JSON must be {"n": "0x<hex digits>"}')
        return cls(int_from_text(data["n"], "public key n"))

    def __eq__(self, other):
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self):
        return hash(("PublicKey", self.n))

    def __repr__(self):
        return f"PublicKey(<{self.n.bit_length()}-bit n, fingerprint {self.fingerprint[:12]}>)"


class PrivateKey:
    """Paillier private key: the factors p, q of the public n.

    Decryption and key-owner encryption use the Chinese remainder theorem: work mod p² and q²
    (half-size numbers: decryption is roughly 3.5x cheaper; encryption 2.5x for a given r,
    3.5x when the randomness is drawn directly as its CRT parts) and recombine.
    Paillier's decryption per prime:

        m_p = L(c^(p-1) mod p², p) · h_p mod p,   h_p = L(g^(p-1) mod p², p)^-1 mod p

    (likewise for q), then m = CRT(m_p, m_q) mod n.  decrypt_textbook is the λ/μ formula.
    """

    def __init__(self, public_key, p, q, *, allow_insecure=False):
        """Check that (p, q) is a real Paillier key for public_key; ValueError (one line) if not.

        p·q = n; p and q distinct, of equal size (within one bit), prime (Baillie-PSW);
        gcd(n, φ(n)) = 1; |p - q| >= min_prime_distance(bits of n); and n's size passes
        check_key_size(allow_insecure).  A checkpoint's key goes through the same door.
        """
        if not isinstance(public_key, PublicKey):
            raise TypeError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
        p, q = as_int(p, "p"), as_int(q, "q")
        if p * q != public_key.n:
            raise ValueError("p * q does not equal the public key's n")
        problem = prime_pair_problem(p, q)
        if problem is not None:
            raise ValueError(problem)
        check_key_size(public_key.n.bit_length(), allow_insecure=allow_insecure)
        self.public_key, self.p, self.q = public_key, p, q
        self._typed, self._subgroups = {}, None  # per-backend constants; (H_p, H_q) or ()

    def crt_constants(self):
        """The constants of CRT decryption and encryption, in the current backend's integer
        type (cached per backend), as a namespace k: k.n, k.p, k.q, k.psquare, k.qsquare,
        k.hp, k.hq, k.q_inverse_mod_p, k.qsquare_inverse_mod_psquare, k.q_mod_p_minus_1,
        k.p_mod_q_minus_1, and k.powmod.

        They CONTAIN p AND q: this is the private key.  Only for the key owner's own code and
        its own worker processes (speed.kernels sends them to its workers); never to another
        party, never into a transcript or a log."""
        backend = current_backend()
        constants = self._typed.get(backend.name)
        if constants is None:
            p, q, n, g = self.p, self.q, self.public_key.n, self.public_key.g
            psquare, qsquare = p * p, q * q
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
    def crt_decrypt(c, k):
        """The residue m in [0, n) in ciphertext c, from k = crt_constants(): m_p and m_q by
        Paillier's per-prime formula, recombined by Garner's CRT.  c is not checked (callers
        check it first: raw_decrypt, decrypt_residues)."""
        return PrivateKey.crt_combine(k.powmod(c, k.p - 1, k.psquare),
                                      k.powmod(c, k.q - 1, k.qsquare), k)

    @staticmethod
    def crt_combine(power_p, power_q, k):
        """The residue m in [0, n) from c^(p−1) mod p² and c^(q−1) mod q² (however they were
        computed: one by one, or a whole list at once): m_p = L(c^(p−1), p)·h_p mod p, m_q
        likewise, recombined by Garner's formula."""
        m_p = L(power_p, k.p) * k.hp % k.p
        m_q = L(power_q, k.q) * k.hq % k.q
        # Garner's recombination: the unique m in [0, n) with m ≡ m_p (mod p), m ≡ m_q (mod q).
        return m_q + k.q * ((m_p - m_q) * k.q_inverse_mod_p % k.p)

    @staticmethod
    def _crt_encrypt(m, r, k):
        # r^n mod p² = (r^q mod p)^p mod p², exactly: x -> x^p mod p² depends only on x mod p
        # and is multiplicative, so (r^p)^q = (r^q)^p; and r^q mod p = r^(q mod (p-1)) mod p by
        # Fermat.  Two half-length exponents, one of them mod p, instead of n mod p².
        s_p = k.powmod(r, k.q_mod_p_minus_1, k.p)
        s_q = k.powmod(r, k.p_mod_q_minus_1, k.q)
        return PrivateKey.crt_encrypt_parts(m, s_p, s_q, k)

    @staticmethod
    def crt_encrypt_parts(m, s_p, s_q, k):
        """(1 + m·n)·r^n mod n² from the CRT parts of r: s_p = r^q mod p, s_q = r^p mod q.

        r -> (r^q mod p, r^p mod q) is a bijection from Z*_n onto Z*_p × Z*_q (gcd(q, p-1) =
        gcd(p, q-1) = 1, which gcd(n, φ(n)) = 1 guarantees), so drawing s_p and s_q uniformly
        is drawing r uniformly: the key owner may skip the r^q step altogether.
        """
        return PrivateKey.crt_encrypt_powers(m, k.powmod(s_p, k.p, k.psquare),
                                              k.powmod(s_q, k.q, k.qsquare), k)

    @staticmethod
    def crt_encrypt_powers(m, rho_p, rho_q, k):
        """(1 + m·n)·ρ mod n² from ρ_p = r^n mod p² and ρ_q = r^n mod q² (Garner's CRT)."""
        c_p, c_q = (1 + m * k.n) * rho_p % k.psquare, (1 + m * k.n) * rho_q % k.qsquare
        return c_q + k.qsquare * ((c_p - c_q) * k.qsquare_inverse_mod_psquare % k.psquare)

    def random_crt_parts(self):
        """Fresh encryption randomness as its CRT parts (s_p, s_q), uniform in Z*_p × Z*_q."""
        return 1 + secrets.randbelow(self.p - 1), 1 + secrets.randbelow(self.q - 1)

    @property
    def subgroups(self):
        """(H_p, H_q), backend.SafePrimeSubgroup (u_p, g_p = u_p^p mod p², table) of p and q if
        both are safe primes, else None; decided on first use ((p-1)/2 prime?) and kept."""
        if self._subgroups is None:
            safe = is_safe_prime(self.p) and is_safe_prime(self.q)
            self._subgroups = (SafePrimeSubgroup(self.p), SafePrimeSubgroup(self.q)) if safe else ()
        return self._subgroups or None

    def random_subgroup_exponents(self):
        """(a_p, a_q) uniform in [0, p-1) × [0, q-1): s_p = u_p^a_p mod p is then uniform in
        Z*_p, as random_crt_parts draws it, and s_p^p mod p² = g_p^a_p (SafePrimeSubgroup)."""
        return tuple(subgroup.random_exponent() for subgroup in self.subgroups)

    def _fresh_encryptor(self):
        """m -> (1 + m·n)·r^n mod n², r fresh and uniform: for safe primes ρ_p = g_p^a_p from
        a fixed-base table (look-ups, no squarings), else from CRT parts.  One distribution."""
        k = self.crt_constants()
        if not self.subgroups:
            return lambda m: self.crt_encrypt_parts(m, *self.random_crt_parts(), k)
        tables = [subgroup.table() for subgroup in self.subgroups]
        return lambda m: self.crt_encrypt_powers(m, *[table.power(a) for table, a in zip(
            tables, self.random_subgroup_exponents())], k)

    def raw_decrypt(self, c):
        """The residue m in [0, n) encrypted in c (CRT path); ValueError for a non-ciphertext."""
        self.public_key.check_ciphertext(c)
        return int(self.crt_decrypt(c, self.crt_constants()))

    def raw_encrypt(self, m, r=None):
        """(1 + m·n) · r^n mod n² computed mod p² and mod q², then recombined by CRT.

        Bit-for-bit the public textbook ciphertext for the same r, about 2.5x cheaper; without
        r, fresh uniform randomness drawn as _fresh_encryptor does (fixed-base for safe primes).
        """
        public_key = self.public_key
        m = public_key._check_plaintext_residue(m)
        if r is None:
            return self._fresh_encryptor()(m)
        return self._crt_encrypt(m, public_key._check_r(r), self.crt_constants())

    def encrypt(self, fixed):
        """Encrypt a Fixed array with the key owner's CRT fast path (fresh uniform r each)."""
        if not isinstance(fixed, Fixed):
            raise TypeError(f"encrypt expects a Fixed array, got {type(fixed).__name__}")
        public_key = self.public_key
        encrypt = self._fresh_encryptor()
        residues = public_key.encode_residues(fixed.values).ravel().tolist()
        ciphertexts = [encrypt(m) for m in residues]
        OP_COUNTS["encrypt"] += len(ciphertexts)
        return EncryptedArray(public_key, object_array(ciphertexts, fixed.shape), fixed.scale)

    def check_owner(self, encrypted):
        """TypeError unless `encrypted` is an EncryptedArray, ValueError unless it is under this
        key's public key: the check before any decryption (here and in speed.kernels)."""
        if not isinstance(encrypted, EncryptedArray):
            raise TypeError(f"expected an EncryptedArray, got {type(encrypted).__name__}")
        if encrypted.public_key != self.public_key:
            raise ValueError("cannot decrypt: the array was encrypted under a different public key")

    def decrypt_residues(self, encrypted):
        """Object array of the plaintext residues in [0, n), without signed decoding.

        For values masked uniformly mod n, where the signed reading would be meaningless.
        """
        self.check_owner(encrypted)
        constants = self.crt_constants()
        residues = [int(self.crt_decrypt(c, constants))
                    for c in encrypted.ciphertexts.ravel().tolist()]
        OP_COUNTS["decrypt"] += len(residues)
        return object_array(residues, encrypted.shape)

    def decrypt(self, encrypted):
        """Decrypt to a Fixed array at the array's scale.

        OverflowError (naming the index and the bound max_int) if a residue lies in the overflow
        band, i.e. the homomorphic arithmetic exceeded |value| <= max_int.
        """
        values = map_values(self.public_key.decode_residue, self.decrypt_residues(encrypted))
        return Fixed(values, encrypted.scale)

    def __repr__(self):
        return f"PrivateKey(<for {self.public_key!r}>)"  # never print p or q


def textbook_decryption_key(private_key):
    """(λ, μ) of textbook decryption: λ = lcm(p-1, q-1), μ = L(g^λ mod n², n)^-1 mod n."""
    public_key = private_key.public_key
    n, nsquare = public_key.n, public_key.nsquare
    lam = math.lcm(private_key.p - 1, private_key.q - 1)
    return lam, invert(L(powmod(public_key.g, lam, nsquare), n), n)


def decrypt_textbook(private_key, c, key=None):
    """Textbook decryption m = L(c^λ mod n², n) · μ mod n (``key``: (λ, μ) if already at hand,
    textbook_decryption_key).  Slower than the CRT path; kept to cross-check it."""
    public_key = private_key.public_key
    public_key.check_ciphertext(c)
    lam, mu = key or textbook_decryption_key(private_key)
    return int(L(powmod(c, lam, public_key.nsquare), public_key.n) * mu % public_key.n)


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
        self.public_key = _key(public_key)
        self.ciphertexts = as_object_array(np.asarray(ciphertexts, dtype=object))
        self.scale = check_scale(scale)

    def with_ciphertexts(self, ciphertexts, scale=None):
        """An EncryptedArray under the same public key holding `ciphertexts` (trusted, as
        __init__), at this array's scale unless `scale` is given: for results computed from
        this array's ciphertexts (here, speed.kernels, channel's row blocks)."""
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
        return self.with_ciphertexts(self.ciphertexts.transpose(*axes))

    def __getitem__(self, index):
        return self.with_ciphertexts(as_object_array(self.ciphertexts[index]))

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
        _, n, nsquare = self.public_key.moduli()
        if isinstance(other, EncryptedArray):
            self._check_same_key(other)
            self._check_same_scale(other, "add")
            result = elementwise(lambda c1, c2: c1 * c2 % nsquare,
                                 self.ciphertexts, other.ciphertexts)
        elif isinstance(other, Fixed):
            self._check_same_scale(other, "add")
            residues = self.public_key.encode_residues(other.values)
            result = elementwise(lambda c, m: c * (1 + m * n) % nsquare,
                                 self.ciphertexts, residues)
        else:
            return NotImplemented
        OP_COUNTS["add"] += result.size
        return self.with_ciphertexts(result)

    __radd__ = __add__

    def __neg__(self):
        """E(-a) = E(a)^-1 mod n² (one inverse per element)."""
        backend, _, nsquare = self.public_key.moduli()
        inverse = backend.invert
        result = elementwise(lambda c: inverse(c, nsquare), self.ciphertexts)
        OP_COUNTS["mul_const"] += result.size
        return self.with_ciphertexts(result)

    def __sub__(self, other):
        if isinstance(other, (Fixed, EncryptedArray)):
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
        result = elementwise(self.public_key.raw_mul_const, self.ciphertexts, other.values)
        OP_COUNTS["mul_const"] += result.size
        return self.with_ciphertexts(result, self.scale + other.scale)

    __rmul__ = __mul__

    def __matmul__(self, other):
        """[[A]] @ W for 2-D A (m×k) and W (k×h): out[i, j] = Π_t E(A[i, t])^W[t, j] mod n².

        Serves both protocol forms, [[X]] @ W and [[X]].T @ delta; a negative weight costs one
        inverse (raw_mul_const).  kernels.encrypted_matmul returns the same ciphertexts, faster.
        """
        if not isinstance(other, Fixed):
            return NotImplemented
        if self.ndim != 2 or other.ndim != 2 or self.shape[1] != other.shape[0]:
            raise ValueError(
                f"encrypted matmul needs (m, k) @ (k, h), got {self.shape} @ {other.shape}")
        backend, _, nsquare = self.public_key.moduli()
        power = self.public_key.raw_mul_const
        rows, inner, cols = self.shape[0], self.shape[1], other.shape[1]
        out = np.empty((rows, cols), dtype=object)
        for i, row in enumerate(self.ciphertexts.tolist()):
            for j, column in enumerate(other.values.T.tolist()):
                product = backend.mpz(1)
                for c, weight in zip(row, column):
                    if weight:
                        product = product * power(c, weight) % nsquare
                out[i, j] = product
        OP_COUNTS["mul_const"] += rows * cols * inner
        OP_COUNTS["add"] += rows * cols * max(inner - 1, 0)
        return self.with_ciphertexts(out, self.scale + other.scale)

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
        backend, _, nsquare = self.public_key.moduli()
        multiply = np.frompyfunc(lambda c1, c2: c1 * c2 % nsquare, 2, 1)
        ciphertexts = self.ciphertexts.reshape(-1) if axis is None else self.ciphertexts
        result = as_object_array(multiply.reduce(ciphertexts, axis=0 if axis is None else axis,
                                                 initial=backend.mpz(1)))
        OP_COUNTS["add"] += self.ciphertexts.size - result.size
        return self.with_ciphertexts(result)

    def rerandomize(self, *, randomness=None):
        """Multiply every ciphertext by a fresh randomizer(randomness): same plaintexts,
        unlinkable ciphertexts.  (kernels.rerandomize: the same, with precomputed tables.)"""
        public_key = self.public_key
        nsquare, kind = public_key.nsquare, randomness_kind(randomness)
        result = elementwise(lambda c: c * public_key.randomizer(kind) % nsquare,
                             self.ciphertexts)
        OP_COUNTS["rerandomize"] += result.size
        return self.with_ciphertexts(result)

    # -- serialisation (no pickle) -------------------------------------------------------------

    def _header(self):
        return {"format": _FORMAT, "shape": list(self.shape), "scale": self.scale,
                "key": self.public_key.fingerprint}

    def to_bytes(self):
        """4-byte header length, JSON header (format, shape, scale, width, key fingerprint),
        then every ciphertext as a fixed-width big-endian integer in C order (wire)."""
        return _array_to_bytes(self._header(), self.ciphertexts.ravel().tolist(),
                               _ciphertext_width(self.public_key))

    @classmethod
    def from_bytes(cls, data, public_key):
        """Parse to_bytes output, validating the header, the length, the key fingerprint and
        (check_ciphertexts) every ciphertext; ValueError otherwise."""
        shape, scale, integers = _array_from_bytes(
            data, _FORMAT, _key(public_key).fingerprint, _ciphertext_width(public_key))
        return cls._checked(public_key, object_array(integers, shape), scale)

    def to_json(self):
        """JSON text: the header fields plus the ciphertexts as "0x" hex strings (C order)."""
        return _array_to_json(self._header(), self.ciphertexts.ravel().tolist())

    @classmethod
    def from_json(cls, text, public_key):
        """Inverse of to_json (also reads decimal strings), validated as from_bytes."""
        shape, scale, integers = _array_from_json(text, _FORMAT, _key(public_key).fingerprint)
        return cls._checked(public_key, object_array(integers, shape), scale)

    @classmethod
    def _checked(cls, public_key, integers, scale):
        """Untrusted integers -> EncryptedArray, after check_ciphertexts."""
        check_ciphertexts(integers, public_key)
        return cls(public_key, elementwise(mpz, integers), scale)

    def __repr__(self):
        return (f"EncryptedArray(shape={self.shape}, scale={self.scale}, "
                f"key={self.public_key.fingerprint[:12]})")


def _ciphertext_width(public_key):
    return (public_key.nsquare.bit_length() + 7) // 8


def _key(public_key):
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
    return public_key


def check_ciphertexts(ciphertexts, public_key, where=None):
    """The one validity check of ciphertexts: each an integer in [1, n²) coprime to n.

    Anything else is no Paillier ciphertext: the key owner's CRT decryption would turn it into a
    meaningless residue without complaint.  `ciphertexts` is an EncryptedArray or anything
    np.asarray reads as integers; ValueError names the first bad index (and `where`, if given).
    One gcd per ciphertext costs a few percent of what making it did.
    """
    if isinstance(ciphertexts, EncryptedArray):
        ciphertexts = ciphertexts.ciphertexts
    problem = units_problem(np.asarray(ciphertexts, dtype=object), public_key.n)
    if problem is not None:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}ciphertext{problem}, so it is no Paillier ciphertext")


# ---------------------------------------------------------------------------------------------
# The arithmetic the two parties need, the textbook way
# ---------------------------------------------------------------------------------------------
class TextbookEngine:
    """The arithmetic of the protocol's steps, exactly as Paillier's paper writes it: nothing else.

    parties.py calls only these methods for its Paillier work, so that each party method reads
    as the math of its step. Here each operation is the textbook formula, value by value:

    * encrypt:   c = (1 + m·n) · rⁿ mod n², a fresh uniform r for every value (the public-key
      formula, even at the key owner: no CRT, no fixed-base tables);
    * decrypt:   m = L(c^λ mod n²) · μ mod n, λ = lcm(p − 1, q − 1), μ = L((1 + n)^λ mod n²)⁻¹;
    * add:       [[a]]·[[b]] = [[a + b]];  multiply by a constant: [[a]]^k = [[k·a]].

    No packing decision, no precomputed randomness, no workers, no streaming: speed/engine.py's
    FastEngine has the same methods and gives the same plaintexts (and the same weights, bit for
    bit: tests/speed/test_engine.py), faster. The masks are drawn by the parties, never here: an
    engine only adds them under encryption.
    """

    def encrypt(self, private_key, fixed, *, progress=None):
        """[[fixed]]: each value (1 + m·n)·rⁿ mod n² with a fresh uniform r. The key owner
        encrypts like anyone else here (``private_key`` only names whose key it is).
        ``progress(done, total)``, if given, hears of the rows once all are done."""
        encrypted = private_key.public_key.encrypt(fixed, randomness="textbook")
        if progress is not None:
            progress(fixed.shape[0], fixed.shape[0])
        return encrypted

    def decrypt(self, private_key, encrypted):
        """The residues in [0, n) of [[v]]: L(c^λ mod n²)·μ mod n for each ciphertext.
        ``encrypted`` may also be the row blocks of a streamed message (any iterable of
        EncryptedArrays in row order): decrypted one by one."""
        if not isinstance(encrypted, EncryptedArray):
            return np.concatenate([self.decrypt(private_key, block) for block in encrypted],
                                  axis=0)
        private_key.check_owner(encrypted)
        key = textbook_decryption_key(private_key)
        residues = [decrypt_textbook(private_key, c, key)
                    for c in encrypted.ciphertexts.ravel().tolist()]
        OP_COUNTS["decrypt"] += len(residues)
        return object_array(residues, encrypted.shape)

    def matmul(self, encrypted, weights):
        """[[A]]·W for plaintext weights W: out[i, j] = Π_t [[A[i, t]]]^W[t, j] mod n²."""
        return encrypted @ weights

    def add_mask(self, encrypted, mask):
        """[[v + ε mod n]] = [[v]] · [[ε mod n]], the mask encrypted with a fresh uniform r: adds
        the integer mask ε and, with the fresh r, re-randomises the result (its randomness no
        longer tells how v was made)."""
        public_key = encrypted.public_key
        fresh = [public_key.raw_encrypt(int(value) % public_key.n, randomness="textbook")
                 for value in np.asarray(mask, dtype=object).ravel().tolist()]
        OP_COUNTS["encrypt"] += len(fresh)
        return encrypted + EncryptedArray(public_key, object_array(fresh, encrypted.shape),
                                          encrypted.scale)

    def masked_matmul(self, encrypted, weights, mask):
        """[[A·W + ε]]: the product, then the mask ε (already drawn, of the product's shape)."""
        return self.add_mask(self.matmul(encrypted, weights), mask)

    def rerandomize(self, encrypted):
        """The same plaintexts under fresh randomness: each ciphertext times rⁿ, r fresh."""
        return encrypted.rerandomize(randomness="textbook")

    def start(self, key, public, *, training):
        """The end of step 0 (the public facts known). Nothing to prepare, the textbook way."""

    def finish_epoch(self, epochs_completed):
        """Between epochs. Nothing to prepare, the textbook way."""


# ---------------------------------------------------------------------------------------------
# Keys and ciphertext arrays as text and bytes
#
# Integers travel as "0x" + hex: Python refuses int <-> decimal str conversions of more than
# 4,300 digits (about 14,000 bits: a ciphertext under a 7,200-bit key), and they take quadratic
# time; hex is linear and has no limit.  An array is a JSON header (format, shape, scale, key
# fingerprint) plus its ciphertexts, either as bytes (4-byte header length, the header with
# "width", then fixed-width big-endian integers in C order) or as JSON (the header's fields plus
# "ciphertexts", a list of hex strings).  The readers check only the framing and the header
# against what the caller expects; EncryptedArray._checked checks the integers themselves.
# ---------------------------------------------------------------------------------------------

_HEX_DIGITS = frozenset("0123456789abcdef")


def int_to_text(value):
    """A non-negative integer as "0x" + lowercase hex digits."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < 0:
        raise ValueError(f"int_to_text takes a non-negative integer, got {type(value).__name__}")
    return hex(int(value))


def int_from_text(text, what="integer"):
    """Inverse of int_to_text; also reads plain decimal digits (the older format)."""
    if isinstance(text, str) and text.isascii():
        if text[:2] == "0x" and len(text) > 2 and _HEX_DIGITS.issuperset(text[2:]):
            return int(text, 16)
        if text.isdigit():
            try:
                return int(text)
            except ValueError:  # more decimal digits than Python converts
                raise ValueError(f"{what} has {len(text)} decimal digits, too many to read; "
                                 "write it in hex (int_to_text)") from None
    raise ValueError(f"{what} must be a string of hex digits after 0x (or decimal digits), "
                     f"got {str(text)[:20]!r}")


def _check_array_header(header, form, fingerprint):
    """Validate a serialised array's header; return (shape, scale)."""
    if not isinstance(header, dict) or header.get("format") != form:
        raise ValueError(f"not an encrypted array payload (expected format {form!r})")
    if header.get("key") != fingerprint:
        raise ValueError(
            "payload was encrypted under a different public key "
            f"(fingerprint {str(header.get('key'))[:12]}, this key {fingerprint[:12]})")
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise ValueError(f"payload shape must be a list of non-negative ints, got {shape!r}")
    scale = header.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        raise ValueError(f"payload scale must be an int >= 0, got {scale!r}")
    return tuple(shape), scale


def _array_to_bytes(header, integers, width):
    """Header length (4 bytes), the JSON header plus "width", then each integer in `width`
    big-endian bytes."""
    text = json.dumps({**header, "width": width}, sort_keys=True).encode()
    body = b"".join(int(value).to_bytes(width, "big") for value in integers)
    return len(text).to_bytes(4, "big") + text + body


def _array_from_bytes(data, form, fingerprint, width):
    """Parse _array_to_bytes output: (shape, scale, list of ints); ValueError for a truncated
    or corrupt payload, a foreign key, a wrong width or a body of the wrong length."""
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
    shape, scale = _check_array_header(header, form, fingerprint)
    if header.get("width") != width:
        raise ValueError(
            f"header says {header.get('width')!r} bytes per ciphertext, the key needs {width}")
    body, count = data[4 + header_length:], math.prod(shape)
    if len(body) != count * width:
        raise ValueError(
            f"encrypted payload has {len(body)} ciphertext bytes, expected {count} × {width}")
    return shape, scale, [int.from_bytes(body[i * width:(i + 1) * width], "big")
                          for i in range(count)]


def _array_to_json(header, integers):
    """JSON text: the header's fields plus "ciphertexts", a list of int_to_text strings."""
    return json.dumps({**header, "ciphertexts": [int_to_text(value) for value in integers]})


def _array_from_json(text, form, fingerprint):
    """Parse _array_to_json output: (shape, scale, list of ints), with the same header checks."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"encrypted JSON does not parse: {error}") from None
    shape, scale = _check_array_header(data, form, fingerprint)
    strings = data.get("ciphertexts")
    if not isinstance(strings, list) or len(strings) != math.prod(shape):
        raise ValueError(
            f"encrypted JSON must list {math.prod(shape)} ciphertexts for shape {shape}")
    return shape, scale, [int_from_text(string, "ciphertext") for string in strings]
