"""Keys that are not keys are refused; the key-size policy lives in one place; ciphertexts are
checked by one function; big integers travel as hex with no length limit.

Small keys (256 bits) through allow_insecure=True keep this file fast.
"""

import json
import sys

import numpy as np
import pytest
import sympy
from conftest import insecure_keypair

import paillier
from fixed import Fixed, object_array
from paillier import EncryptedArray, PrivateKey, PublicKey


@pytest.fixture(scope="module")
def small_keypair():
    return insecure_keypair(256)


def prime_of(bits, start_offset=0):
    """The first prime above 2^(bits-1) + 2^(bits-2) + offset: exactly `bits` bits."""
    return int(sympy.nextprime((1 << (bits - 1)) + (1 << (bits - 2)) + start_offset))


# -- the key-size policy: one function --------------------------------------------------------


@pytest.mark.parametrize("bits,allow,needle", [
    (64, True, "below the hard floor of 128 bits"),
    (512, False, "a 512-bit key is under 1024 bits and not secure"),
])
def test_check_key_size_is_one_line_naming_the_size_and_the_flag(bits, allow, needle):
    """One policy, one message: the size, the bound, and --insecure-small-key when it helps."""
    with pytest.raises(ValueError, match=needle) as caught:
        paillier.check_key_size(bits, allow_insecure=allow)
    assert "\n" not in str(caught.value)
    if not allow:
        assert "--insecure-small-key" in str(caught.value)
    paillier.check_key_size(2048, allow_insecure=False)
    paillier.check_key_size(256, allow_insecure=True)


def test_generate_keypair_and_private_key_apply_the_same_policy(small_keypair):
    """generate_keypair and PrivateKey (and so checkpoint loading) refuse a small key without
    allow_insecure, with check_key_size's message."""
    public_key, private_key = small_keypair
    with pytest.raises(ValueError, match="256-bit key is under 1024 bits.*--insecure-small-key"):
        PrivateKey(public_key, private_key.p, private_key.q)
    with pytest.raises(ValueError, match="n_length=512: a 512-bit key is under 1024 bits"):
        paillier.generate_keypair(512)
    assert PrivateKey(public_key, private_key.p, private_key.q, allow_insecure=True).p \
        == private_key.p


def test_public_key_check_policy_lets_a_label_party_refuse_a_small_key(small_keypair):
    """A public key received over the wire is refused under the policy, accepted with the flag."""
    public_key = small_keypair[0]
    with pytest.raises(ValueError, match="--insecure-small-key"):
        public_key.check_policy(allow_insecure=False)
    assert public_key.check_policy(allow_insecure=True) is public_key


# -- PublicKey: what can be no modulus ----------------------------------------------------------


@pytest.mark.parametrize("n,needle", [
    (15, "below the hard floor"),  # accepted on the wire before
    (2 ** 300, "odd"),
    (prime_of(200) ** 2, "perfect square"),
])
def test_public_key_refuses_even_tiny_and_square_moduli(n, needle):
    """n even, shorter than MIN_KEY_BITS, or a perfect square (p = q): one-line ValueError."""
    with pytest.raises(ValueError, match=needle) as caught:
        PublicKey(n)
    assert "\n" not in str(caught.value)


# -- PrivateKey: what can be no key -------------------------------------------------------------


def test_private_key_refuses_n_equal_to_three_times_a_prime():
    """The reported key: a 1024-bit n = 3·q.  p and q must have equal sizes."""
    q = int(sympy.nextprime(1 << 1021))
    with pytest.raises(ValueError, match="equal sizes, got 2 and 1022 bits"):
        PrivateKey(PublicKey(3 * q), 3, q, allow_insecure=True)


def test_private_key_refuses_primes_too_close_for_fermat():
    """|p - q| < 2^(bits/2 - 100) falls to Fermat factoring: refused."""
    p = prime_of(128)
    q = int(sympy.nextprime(p))
    with pytest.raises(ValueError, match=r"\|p - q\| must be at least 2\^28"):
        PrivateKey(PublicKey(p * q), p, q, allow_insecure=True)


def test_private_key_refuses_gcd_of_n_and_phi_other_than_one():
    """q | p - 1 (p = 2q + 1, one bit longer: sizes still allowed) breaks Paillier: refused."""
    q = prime_of(128)
    while not sympy.isprime(2 * q + 1):
        q = int(sympy.nextprime(q))
    p = 2 * q + 1
    with pytest.raises(ValueError, match=r"gcd\(n, φ\(n\)\)"):
        PrivateKey(PublicKey(p * q), p, q, allow_insecure=True)


def test_private_key_refuses_composite_factors():
    """p·q = n with p composite: refused as "p is not prime"."""
    composite, q = 3 * prime_of(127), prime_of(129, 1 << 100)
    with pytest.raises(ValueError, match="p is not prime"):
        PrivateKey(PublicKey(composite * q), composite, q, allow_insecure=True)


def test_generated_keys_pass_every_check(small_keypair):
    """What generate_keypair makes, PrivateKey accepts: the two never disagree."""
    public_key, private_key = small_keypair
    assert paillier.prime_pair_problem(private_key.p, private_key.q) is None
    PrivateKey(public_key, private_key.q, private_key.p, allow_insecure=True)


# -- one ciphertext check -----------------------------------------------------------------------


def test_check_ciphertexts_names_the_index_and_the_caller(small_keypair):
    """check_ciphertexts is the one validity check: [1, n²) and coprime to n, naming the index
    of the first bad value and `where`; it takes EncryptedArray or plain integers."""
    public_key, private_key = small_keypair
    good = public_key.encrypt(Fixed.from_ints([[1, 2], [3, 4]], 0))
    paillier.check_ciphertexts(good, public_key, "step 1")
    values = good.ciphertexts.copy()
    for bad, problem in ((0, "outside"), (public_key.nsquare, "outside"),
                         (private_key.p, "not coprime"), (1.5, "not an integer")):
        values[1, 0] = bad
        with pytest.raises(ValueError, match=rf"step 1: ciphertext at index \(1, 0\) .*{problem}"):
            paillier.check_ciphertexts(values, public_key, "step 1")
    with pytest.raises(ValueError, match="not coprime"):
        public_key.check_ciphertext(private_key.q)


# -- big integers as hex ------------------------------------------------------------------------


def fake_huge_key(bits=16_384):
    """An odd, non-square n of `bits` bits: PublicKey accepts it (only PrivateKey checks
    factors), which is all serialisation needs.  No 16k-bit key is generated."""
    return PublicKey((1 << (bits - 1)) + 12345)


def test_a_16k_bit_public_key_round_trips_through_json():
    """int_to_text is hex: a 16,384-bit n (4,933 decimal digits, over Python's 4,300-digit
    int<->str limit) goes to JSON and back."""
    public_key = fake_huge_key()
    if sys.get_int_max_str_digits():
        with pytest.raises(ValueError):
            str(public_key.n)  # the limit the decimal format ran into
    text = public_key.to_json()
    assert json.loads(text)["n"].startswith("0x")
    assert PublicKey.from_json(text) == public_key


def test_a_16k_bit_encrypted_array_round_trips_through_json_and_bytes():
    """EncryptedArray.to_json writes hex ciphertexts (32k bits each); both formats read back."""
    public_key = fake_huge_key()
    rng = np.random.default_rng(0)
    ciphertexts = [1 + int(k) * public_key.n for k in rng.integers(1, 2**62, size=3)]
    encrypted = EncryptedArray(public_key, object_array(ciphertexts, (3,)), 4)
    for loaded in (EncryptedArray.from_json(encrypted.to_json(), public_key),
                   EncryptedArray.from_bytes(encrypted.to_bytes(), public_key)):
        assert [int(c) for c in loaded.ciphertexts] == ciphertexts and loaded.scale == 4


def test_the_older_decimal_format_still_loads(small_keypair):
    """Decimal strings (what to_json wrote before) still read, for keys and ciphertexts."""
    public_key, private_key = small_keypair
    assert PublicKey.from_json(json.dumps({"n": str(public_key.n)})) == public_key
    encrypted = public_key.encrypt(Fixed.from_ints([7, -8], 3))
    data = json.loads(encrypted.to_json())
    data["ciphertexts"] = [str(int(text, 16)) for text in data["ciphertexts"]]
    assert private_key.decrypt(EncryptedArray.from_json(json.dumps(data), public_key)) \
        == Fixed.from_ints([7, -8], 3)


@pytest.mark.parametrize("bad", ["0x", "0X1f", "0x1g", "-0x5", "1e5", "", 5, None])
def test_int_from_text_refuses_anything_but_hex_or_decimal_digits(bad):
    """Only "0x" + lowercase hex digits, or plain decimal digits."""
    with pytest.raises(ValueError):
        paillier.int_from_text(bad)
