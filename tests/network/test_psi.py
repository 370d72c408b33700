"""Private id alignment (psi.py): the right rows, in the same order, and nothing else revealed.

Small id sets keep the suite fast (a 2048-bit exponentiation costs about a millisecond); the
cost for 30,000 ids per side is measured by hand, not here (about 45 s per side).
"""

import hashlib
import random
import time

import mpmath
import numpy as np
import pytest
import sympy

from conftest import scaled

from network import psi
def run(label_ids, data_ids):
    """The four messages between the two sides, kept for inspection."""
    label, data = psi.LabelSide(label_ids), psi.DataSide(data_ids)
    m1 = label.first_message()
    m2, m3 = data.answer(m1)
    m4 = label.answer(m2, m3)
    data.finish(m4)
    return label, data, {"to data": [m1, m4], "to label": [m2, m3]}


def check_aligned(label_ids, data_ids, label, data):
    expected = set(map(str, label_ids)) & set(map(str, data_ids))
    label_keys = [str(label_ids[row]) for row in label.rows]
    data_keys = [str(data_ids[row]) for row in data.rows]
    assert label_keys == data_keys  # row i at A and row i at B are the same id
    assert set(label_keys) == expected and len(label_keys) == len(expected)
    assert label.fingerprint == data.fingerprint
    assert (label.their_count, data.their_count) == (len(data_ids), len(label_ids))


def test_the_group_is_the_rfc_3526_2048_bit_safe_prime_and_its_residues():
    with mpmath.workdps(700):  # 2^1918·π has 578 digits before the point
        floor_pi = int(mpmath.floor(mpmath.mpf(2) ** 1918 * mpmath.pi))
    formula = 2**2048 - 2**1984 - 1 + 2**64 * (floor_pi + 124476)
    assert psi.P == formula and psi.P.bit_length() == 2048
    assert sympy.isprime(psi.P) and sympy.isprime(psi.Q)
    element = psi.hash_to_group("id-1")
    assert pow(element, psi.Q, psi.P) == 1  # in the subgroup of order Q


def test_the_jacobi_symbol_agrees_with_eulers_criterion(monkeypatch):
    monkeypatch.setattr(psi, "gmpy2", None)  # the pure-Python fallback
    rng = random.Random(3)
    for value in [2, 3, psi.P - 1, psi.hash_to_group("x")] + [rng.randrange(2, psi.P)
                                                              for _ in range(20)]:
        euler = pow(value, psi.Q, psi.P)
        assert psi.jacobi(value, psi.P) == (1 if euler == 1 else -1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sets_align_to_their_intersection_in_the_same_order(seed):
    rng = random.Random(seed)
    universe = [f"customer-{i}" for i in rng.sample(range(10**6), 120)]
    label_ids = rng.sample(universe, 70)
    data_ids = rng.sample(universe, 80)
    label, data, _ = run(label_ids, data_ids)
    check_aligned(label_ids, data_ids, label, data)


def test_disjoint_sets_give_an_empty_alignment():
    label, data, _ = run(["a", "b", "c"], ["d", "e"])
    assert label.rows.tolist() == [] and data.rows.tolist() == []
    assert label.rows.dtype == np.int64
    label, data, _ = run([], ["d"])
    assert label.rows.tolist() == [] and data.rows.tolist() == []


def test_the_same_set_in_two_orders_aligns_completely():
    ids = [f"id{i}" for i in range(40)]
    shuffled = random.Random(5).sample(ids, len(ids))
    label, data, _ = run(ids, shuffled)
    check_aligned(ids, shuffled, label, data)
    assert len(label.rows) == 40
    rows_label, rows_data = psi.intersect_in_one_process(ids, shuffled)
    assert [ids[r] for r in rows_label] == [shuffled[r] for r in rows_data]


def test_ids_are_compared_as_text():
    label, data, _ = run([1, 2, 3], ["2", "3", "4"])
    assert sorted(str([1, 2, 3][r]) for r in label.rows) == ["2", "3"]


@pytest.mark.parametrize("side", [psi.LabelSide, psi.DataSide])
def test_a_duplicate_id_is_refused_naming_it(side):
    with pytest.raises(psi.PSIError, match="'b' more than once") as caught:
        side(["a", "b", "c", "b"])
    assert "\n" not in str(caught.value)


def test_no_id_held_by_one_party_alone_nor_its_hash_reaches_the_other():
    label_ids = [f"label-only-{i}" for i in range(15)] + [f"shared-{i}" for i in range(10)]
    data_ids = [f"data-only-{i}" for i in range(12)] + [f"shared-{i}" for i in range(10)]
    label, data, messages = run(label_ids, data_ids)
    check_aligned(label_ids, data_ids, label, data)
    for receiver, own_only in (("to data", label_ids[:15]), ("to label", data_ids[:12])):
        values = [value for message in messages[receiver] for value in message]
        raw = b"".join(value.to_bytes(psi.ELEMENT_BYTES, "big") for value in values)
        for key in own_only:
            h = psi.hash_to_group(key)
            encoded = key.encode()
            digest = hashlib.shake_256(psi.DOMAIN + len(encoded).to_bytes(8, "big") + encoded)
            assert h not in values and h.to_bytes(psi.ELEMENT_BYTES, "big") not in raw
            assert digest.digest(32) not in raw and encoded not in raw
    # the receiver sees only the other's blinded values: unrelated to plain hashes
    assert not {psi.hash_to_group(key) for key in label_ids + data_ids} & set(
        value for message in messages["to data"] + messages["to label"] for value in message)


def test_each_run_blinds_with_fresh_secret_exponents():
    first, second = psi.LabelSide(["a", "b"]), psi.LabelSide(["a", "b"])
    assert set(first.first_message()).isdisjoint(second.first_message())
    assert 1 <= first._exponent < 2**psi.EXPONENT_BITS


@pytest.mark.parametrize("tamper, words", [
    (lambda m: m[:-1], "values where 3 are due"),
    (lambda m: m[:-1] + [psi.P - 1], "not an element of the group"),  # order 2: a non-residue
    (lambda m: m[:-1] + [1], "not an element of the group"),
    (lambda m: m[:-1] + [psi.P], "not an element of the group"),
    (lambda m: m[:-1] + [m[0]], "appears twice"),
    (lambda m: m[:-1] + [2.5], "is a float"),
    (lambda m: np.array(m, dtype=object).reshape(1, 3), "flat list"),
])
def test_a_malformed_message_is_refused_with_one_line(tamper, words):
    label, data = psi.LabelSide(["a", "b", "c"]), psi.DataSide(["b", "c", "d"])
    m2, m3 = data.answer(np.array(label.first_message(), dtype=object))  # as the wire delivers
    with pytest.raises(psi.PSIError, match=words):
        label.answer(tamper(m2), m3)
    m4 = label.answer(m2, m3)
    with pytest.raises(psi.PSIError, match=words):
        data.finish(tamper(m4))


def test_message_four_before_message_one_is_refused():
    with pytest.raises(psi.PSIError, match="before message 1"):
        psi.DataSide(["a"]).finish([])


def test_exponent_bits_out_of_range_are_refused():
    with pytest.raises(psi.PSIError, match="exponent_bits"):
        psi.LabelSide(["a"], exponent_bits=64)


def test_cost_per_side_stays_near_two_exponentiations_per_id():
    """A small run, timed: each side does |own| + |other| exponentiations."""
    ids = [f"id{i}" for i in range(200)]
    started = time.perf_counter()
    label, data, _ = run(ids[:150], ids[50:])
    seconds = time.perf_counter() - started
    assert len(label.rows) == 100
    assert seconds < scaled(30)  # about 0.5 s with gmpy2; a generous bound for slow CI


def test_the_pure_python_fallback_gives_the_same_alignment(monkeypatch):
    monkeypatch.setattr(psi, "gmpy2", None)
    label_ids, data_ids = ["a", "b", "c", "d"], ["d", "c", "x"]
    label, data, _ = run(label_ids, data_ids)
    check_aligned(label_ids, data_ids, label, data)
