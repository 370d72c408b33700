"""Checks for notebook 01 (Paillier from scratch). Each recomputes what it compares against and
prints only ✓ or ✗ (with a hint that does not contain the answer)."""

import math
import numbers
import secrets

from . import answered, verdict

TINY_P, TINY_Q = 11, 13
BY_HAND_KEYS = ("n", "n_squared", "lambda", "mu", "g", "r", "m", "c", "decrypted")


def _L(u, n):
    return (u - 1) // n


def check_1(answer):
    """Paillier by hand with p = 11, q = 13: a dict with every number of key generation,
    encryption (of the student's m, with the student's r) and decryption."""
    if not answered(answer):
        return False
    if not isinstance(answer, dict) or set(answer) != set(BY_HAND_KEYS):
        return verdict(False, f"give a dict with exactly the keys {BY_HAND_KEYS}")
    if any(not isinstance(answer[key], int) for key in BY_HAND_KEYS):
        return verdict(False, "every value should be a Python int")
    p, q = TINY_P, TINY_Q
    n = p * q
    wrong = []
    if answer["n"] != n:
        wrong.append("n")
    if answer["n_squared"] != n * n:
        wrong.append("n_squared")
    lam = math.lcm(p - 1, q - 1)
    if answer["lambda"] != lam:
        wrong.append("lambda (Carmichael's λ, not Euler's φ)")
    if answer["g"] != n + 1:
        wrong.append("g (the generator every implementation picks)")
    if answer["mu"] != pow(_L(pow(n + 1, lam, n * n), n), -1, n):
        wrong.append("mu")
    r, m, c = answer["r"], answer["m"], answer["c"]
    if not (0 < r < n and math.gcd(r, n) == 1):
        wrong.append("r (it must lie in Z*_n: 0 < r < n, coprime to n)")
    if not 0 <= m < n:
        wrong.append("m (a plaintext lies in [0, n))")
    elif 0 < r < n and c != pow(n + 1, m, n * n) * pow(r, n, n * n) % (n * n):
        wrong.append("c (for your m and your r)")
    if answer["decrypted"] != m:
        wrong.append("decrypted (it should give back your m)")
    if wrong:
        return verdict(False, "check " + "; ".join(wrong))
    return verdict(True)


def check_2(answer, measured_speedup):
    """The CRT speed-up predicted by the two cost models, and which one is closer to the
    measured decryption speed-up: (schoolbook, karatsuba, "schoolbook" or "Karatsuba")."""
    if not answered(answer):
        return False
    try:
        schoolbook, karatsuba, closer = answer
        schoolbook, karatsuba = float(schoolbook), float(karatsuba)
    except (TypeError, ValueError):
        return verdict(False, "give a tuple (schoolbook speed-up, Karatsuba speed-up, name)")
    right_schoolbook = 2.0 ** 2
    right_karatsuba = 2.0 ** math.log2(3)
    if not math.isclose(schoolbook, right_schoolbook, rel_tol=1e-6):
        return verdict(False, "the schoolbook model's speed-up: redo the cost of two half-size "
                              "exponentiations")
    if not math.isclose(karatsuba, right_karatsuba, rel_tol=1e-6):
        return verdict(False, "the Karatsuba model's speed-up: a = log2(3)")
    nearer = ("Karatsuba" if abs(measured_speedup - right_karatsuba)
              < abs(measured_speedup - right_schoolbook) else "schoolbook")
    if str(closer).strip().lower() != nearer.lower():
        return verdict(False, "both models are right; compare them again with the measurement")
    return verdict(True)


def _solve_exact(A, B):
    from fractions import Fraction
    k = len(A)
    rows = [[Fraction(v) for v in A[i]] + [Fraction(v) for v in B[i]] for i in range(k)]
    for col in range(k):
        pivot = next(r for r in range(col, k) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(k):
            if r != col:
                rows[r] = [v - rows[r][col] * p for v, p in zip(rows[r], rows[col])]
    return [[rows[i][k + j] for j in range(len(B[0]))] for i in range(k)]


def check_3(recover_share):
    """A function recover_share(X_int, decrypted) -> W_B (3 × 2 integers) that reads the label
    party's secret share from an unmasked [[X]]·W_B, decrypted by the data party. The check
    draws its own X and W_B, runs it unmasked (it must recover W_B exactly) and with a 200-bit
    mask (it must not)."""
    if not answered(recover_share):
        return False
    if not callable(recover_share):
        return verdict(False, "give a function recover_share(X_int, decrypted)")
    import paillier
    from fixed import Fixed
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        public_key, private_key = paillier.generate_keypair(512, allow_insecure=True)  # NOT secure
    while True:
        X_int = [[secrets.randbelow(19) - 9 for _ in range(3)] for _ in range(4)]
        try:
            _solve_exact(X_int[:3], [[0, 0]] * 3)
            break
        except StopIteration:          # singular: draw again
            continue
    W_secret = [[secrets.randbits(100) - 2 ** 99 for _ in range(2)] for _ in range(3)]
    unmasked = public_key.encrypt(Fixed.from_ints(X_int, 0)) @ Fixed.from_ints(W_secret, 0)
    decrypted = private_key.decrypt(unmasked).values.tolist()
    try:
        recovered = [[int(v) for v in row] for row in recover_share(X_int, decrypted)]
    except Exception as error:         # a student's bug: say so, in one line
        return verdict(False, f"recover_share raised {type(error).__name__}: {error}")
    if recovered != W_secret:
        return verdict(False, "on an unmasked product, the share should come out exactly")
    mask = Fixed.from_ints([[secrets.randbits(200) - 2 ** 199 for _ in range(2)]
                            for _ in range(4)], 0)
    masked = private_key.decrypt(unmasked + public_key.encrypt(mask)).values.tolist()
    try:
        guess = [[int(v) for v in row] for row in recover_share(X_int, masked)]
    except Exception:
        guess = None
    if guess == W_secret:
        return verdict(False, "it also 'recovers' W_B through a 200-bit mask: is it reading the "
                              "secret some other way?")
    return verdict(True)


def check_4(answer):
    """Bits of a sum of d = 30 products x·w, |x| < 2^8 at 16 fractional bits and |w| < 2^8 at
    56: (bits including the sign, scale, how many such values fit side by side in a 2048-bit
    key's plaintext, below max_int)."""
    if not answered(answer):
        return False
    try:
        bits, scale, slots = answer
    except (TypeError, ValueError):
        return verdict(False, "give a tuple (bits with the sign, scale, slots)")
    if not all(isinstance(value, numbers.Integral) and not isinstance(value, bool)
               for value in (bits, scale, slots)):
        return verdict(False, "whole numbers: a bit, a scale and a slot count are integers")
    d_terms, x_bits, w_bits = 30, 8 + 16, 8 + 56
    largest = d_terms * (2 ** x_bits - 1) * (2 ** w_bits - 1)
    right_bits = largest.bit_length() + 1
    # A 2048-bit modulus has its top bit set, so max_int = ⌊(n − 1)/3⌋ has 2047 bits; one bit of
    # it is kept below max_int, the rest is shared by the slots.
    max_int_bits = 2047
    right_slots = (max_int_bits - 1) // right_bits
    if scale != 16 + 56:
        return verdict(False, "the scale: what happens to scales under multiplication?")
    if bits != right_bits:
        return verdict(False, "too few bits" if bits < right_bits else "more bits than needed")
    if slots != right_slots:
        return verdict(False, "the number of slots: recount with your bit width")
    return verdict(True)
