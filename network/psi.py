"""Private id alignment: Diffie–Hellman private set intersection for the two parties.

Before training, the data party A and the label party B must agree on which rows are the same
person, without showing each other the ids only one of them holds. Each party hashes its ids
into a group G of prime order q and raises them to its own secret exponent (α at A, β at B).
Exponentiation commutes, so an id both hold ends up as the same doubly blinded value
H(id)^(αβ) on both sides, while a blinded value of an id the other does not hold looks, to
the other, like a random group element (the decisional Diffie–Hellman assumption, with H a
random oracle). Four messages, each a list of group elements (Python ints)::

    1. B → A   [H(b)^β for b in B], shuffled                          LabelSide.first_message()
    2. A → B   message 1 raised to α, in the order received           DataSide.answer(m1) -> m2,
    3. A → B   [H(a)^α for a in A], shuffled                                               m3
    4. B → A   message 3 raised to β, in the order received           LabelSide.answer(m2, m3)
       A       intersects                                             DataSide.finish(m4)

B knows which of its rows each value of message 2 belongs to (it made the shuffle), A the same
for message 4. Each side then holds H(x)^(αβ) for all ids of both sides, keeps the values both
have, and lists its own rows in the order of those values: row i at A and row i at B are the
same id (``rows``). Both sides also compute ``fingerprint``, a SHA-256 of that sorted list,
which they can compare to confirm they agree.

What each party learns: the intersection and the size of the other's id set; nothing about an
id only the other holds (neither the id nor its hash crosses; only blinded values do). The
shuffles hide the order in which a party keeps its rows. The model is semi-honest, like the
rest of ACML: a party that follows the steps learns nothing more. A dishonest one can lie about
the intersection, or put guessed ids in its own set to test them: any PSI allows that, within
the set size the other side sees. Every received message is checked (length, each value a
distinct element of G), so malformed or small-subgroup values are refused.

The group: quadratic residues modulo the RFC 3526 2048-bit MODP safe prime p = 2q + 1, a
subgroup of prime order q (about 112-bit security). An id is hashed with SHAKE-256 to an
integer h mod p (16 extra bytes make the bias negligible), and h² mod p lies in G.

Secret exponents are drawn by ``secrets`` from [1, 2^256): NIST SP 800-56A Rev. 3
(§5.6.1.1.4) allows private keys of 2s bits in the safe-prime groups, s = 112 here, and a
256-bit exponent makes each exponentiation about 7 times faster than a full 2047-bit one.
``exponent_bits`` up to 2046 gives the latter.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

try:
    import gmpy2
except ImportError:  # pure Python: the same results, slower
    gmpy2 = None

# RFC 3526 §3, the 2048-bit MODP group:
# p = 2^2048 − 2^1984 − 1 + 2^64·(⌊2^1918·π⌋ + 124476)
P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
Q = (P - 1) // 2  # prime: the order of the group G of quadratic residues mod P
ELEMENT_BYTES = (P.bit_length() + 7) // 8
DOMAIN = b"ACML PSI v1 hash-to-group"
EXPONENT_BITS = 256
MIN_EXPONENT_BITS, MAX_EXPONENT_BITS = 224, Q.bit_length() - 1


class PSIError(ValueError):
    """Bad ids or a malformed message in the id alignment. One line."""


# ----------------------------------------------------------------------------------------------
# The group
# ----------------------------------------------------------------------------------------------
def jacobi(a: int, n: int) -> int:
    """The Jacobi symbol (a/n) for odd n > 0: for a prime n, 1 exactly on the quadratic
    residues (the elements of G when n = P), −1 on the non-residues, 0 on multiples of n."""
    if gmpy2 is not None:
        return int(gmpy2.jacobi(a, n))
    a, result = a % n, 1
    while a:
        while a % 2 == 0:
            a //= 2
            if n % 8 in (3, 5):
                result = -result
        a, n = n, a
        if a % 4 == 3 and n % 4 == 3:
            result = -result
        a %= n
    return result if n == 1 else 0


def hash_to_group(key: str) -> int:
    """H(id): SHAKE-256 of the id (UTF-8, length-prefixed, domain-separated), mod P, squared."""
    encoded = key.encode("utf-8")
    digest = hashlib.shake_256(DOMAIN + len(encoded).to_bytes(8, "big") + encoded)
    h = int.from_bytes(digest.digest(ELEMENT_BYTES + 16), "big") % P
    element = h * h % P
    if element in (0, 1):  # h ≡ 0 or ±1 mod P: probability about 2^-2046
        raise PSIError(f"id {key!r} hashes to a trivial group element")
    return element


def secret_exponent(bits: int = EXPONENT_BITS) -> int:
    """A secret exponent from ``secrets``, uniform in [1, 2^bits), below the group order."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (
            MIN_EXPONENT_BITS <= bits <= MAX_EXPONENT_BITS):
        raise PSIError(f"exponent_bits must be an integer in {MIN_EXPONENT_BITS}.."
                       f"{MAX_EXPONENT_BITS}, got {bits!r}")
    return secrets.randbelow((1 << bits) - 1) + 1


def blind(elements, exponent: int) -> list[int]:
    """Each element raised to the exponent, mod P, in the same order."""
    if gmpy2 is not None:
        exponent, modulus = gmpy2.mpz(exponent), gmpy2.mpz(P)
        return [int(gmpy2.powmod(x, exponent, modulus)) for x in elements]
    return [pow(x, exponent, P) for x in elements]


def check_message(values, what: str, *, count: int | None = None) -> list[int]:
    """The message as a list of ints, refused unless each is a distinct element of G (and
    there are ``count`` of them, if given). Accepts a list or a 1-d numpy array."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise PSIError(f"{what}: expected a flat list, got an array of shape {values.shape}")
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise PSIError(f"{what}: expected a list of integers, got {type(values).__name__}")
    if count is not None and len(values) != count:
        raise PSIError(f"{what}: {len(values)} values where {count} are due")
    checked = []
    for position, value in enumerate(values):
        if type(value).__name__ == "mpz":
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PSIError(f"{what}: value {position} is a {type(value).__name__}, not an integer")
        if not 1 < value < P or jacobi(value, P) != 1:
            raise PSIError(f"{what}: value {position} is not an element of the group")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise PSIError(f"{what}: the same value appears twice")
    return checked


def _id_keys(ids, who: str) -> list[str]:
    """Each id as text (str(id)), refused if one appears twice."""
    keys, seen = [str(value) for value in ids], set()
    for key in keys:
        if key in seen:
            raise PSIError(f"{who}'s ids hold {key!r} more than once; each row needs its own id")
        seen.add(key)
    return keys


class _Side:
    """What both sides do: blind their own ids, shuffled, and keep the shuffle."""

    def __init__(self, ids, who: str, exponent_bits: int):
        self.keys = _id_keys(ids, who)
        self._exponent = secret_exponent(exponent_bits)
        # position in the message -> own row; SystemRandom draws from the OS, like secrets
        self._order = list(range(len(self.keys)))
        secrets.SystemRandom().shuffle(self._order)
        self._blinded = blind((hash_to_group(self.keys[row]) for row in self._order),
                              self._exponent)
        self.rows = None  # own rows in the intersection, in the joint order, once known
        self.fingerprint = None
        self.their_count = None

    def _intersect(self, mine_doubled: list[int], theirs_doubled) -> np.ndarray:
        """Own rows whose doubly blinded value the other side also has, sorted by that value."""
        row_of = {value: self._order[position] for position, value in enumerate(mine_doubled)}
        common = sorted(set(row_of).intersection(theirs_doubled))
        self.fingerprint = hashlib.sha256(
            b"".join(value.to_bytes(ELEMENT_BYTES, "big") for value in common)).hexdigest()
        self.rows = np.array([row_of[value] for value in common], dtype=np.int64)
        return self.rows


class LabelSide(_Side):
    """The label party's half: it speaks first and learns the intersection from message 2."""

    def __init__(self, ids, *, exponent_bits: int = EXPONENT_BITS):
        super().__init__(ids, "the label party", exponent_bits)

    def first_message(self) -> list[int]:
        """Message 1: its ids, hashed, blinded by β, shuffled."""
        return list(self._blinded)

    def answer(self, reblinded, their_blinded) -> list[int]:
        """Messages 2 and 3 in; message 4 (message 3 raised to β) out; ``rows`` set."""
        mine_doubled = check_message(reblinded, "message 2 (the label ids, blinded twice)",
                                     count=len(self._blinded))
        theirs = check_message(their_blinded, "message 3 (the data party's ids, blinded)")
        self.their_count = len(theirs)
        theirs_doubled = blind(theirs, self._exponent)
        self._intersect(mine_doubled, theirs_doubled)
        return theirs_doubled


class DataSide(_Side):
    """The data party's half: it answers message 1 and learns the intersection from message 4."""

    def __init__(self, ids, *, exponent_bits: int = EXPONENT_BITS):
        super().__init__(ids, "the data party", exponent_bits)
        self._theirs_doubled = None

    def answer(self, first) -> tuple[list[int], list[int]]:
        """Message 1 in; messages 2 (message 1 raised to α, same order) and 3 (its own ids,
        hashed, blinded by α, shuffled) out."""
        theirs = check_message(first, "message 1 (the label party's ids, blinded)")
        self.their_count = len(theirs)
        self._theirs_doubled = blind(theirs, self._exponent)
        return list(self._theirs_doubled), list(self._blinded)

    def finish(self, doubled) -> np.ndarray:
        """Message 4 in; its own rows in the intersection, in the joint order (``rows``)."""
        if self._theirs_doubled is None:
            raise PSIError("message 4 arrived before message 1 was answered")
        mine_doubled = check_message(doubled, "message 4 (the data ids, blinded twice)",
                                     count=len(self._blinded))
        return self._intersect(mine_doubled, self._theirs_doubled)


def intersect_in_one_process(label_ids, data_ids, *,
                             exponent_bits: int = EXPONENT_BITS):
    """Both sides of the intersection in one process (to check and to teach it; two processes
    run it over the wire, network/alignment.py): (label rows, data rows), row i of each the
    same id."""
    label, data = LabelSide(label_ids, exponent_bits=exponent_bits), DataSide(
        data_ids, exponent_bits=exponent_bits)
    reblinded, blinded = data.answer(label.first_message())
    data.finish(label.answer(reblinded, blinded))
    return label.rows, data.rows
