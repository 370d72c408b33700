"""Checks for notebook 05 (cost): each says right or not yet, never the answer."""

import math

from . import answered, verdict


def _close(value, target, relative=0.02):
    try:
        return math.isclose(float(value), float(target), rel_tol=relative)
    except (TypeError, ValueError):
        return False


def check_1(answer, crt_table):
    """answer = (speed-up at a = 2, speed-up at a = log2 3, the a that explains the measured
    decryption speed-up at 2048 bits). The model: two exponentiations, each with half the exponent
    and numbers of half the length, so the speed-up is 2**a; the measured one is read from
    ``crt_table`` (the notebook's own measurement of this run)."""
    if not answered(answer):
        return False
    if not isinstance(answer, (tuple, list)) or len(answer) != 3:
        return verdict(False, "give three numbers: (speed-up at a = 2, at a = log2 3, implied a)")
    row = crt_table[2048]
    textbook = next(seconds for name, seconds in row.items() if name.startswith("decrypt, textbook"))
    measured = textbook / row["decrypt, CRT"]
    at_two, at_karatsuba, implied = answer
    if not (_close(at_two, 2 ** 2) and _close(at_karatsuba, 2 ** math.log2(3))):
        return verdict(False, "the model's speed-ups: count the exponent bits and the cost per multiplication")
    return verdict(_close(implied, math.log2(measured)),
                   "your a does not reproduce this run's measured speed-up under the model")


def check_2(answer, by_key, delta_bound_bits):
    """answer = {512: m*, 2048: m*}, the batch size at which step 4's m·d·h products (δ-wide
    exponents) cost as much as its d·h masks (B's public-key encryption + A's CRT decryption),
    from the per-operation times ``by_key`` of this run."""
    if not answered(answer):
        return False
    if not isinstance(answer, dict) or set(answer) != {512, 2048}:
        return verdict(False, "give a dict {512: m*, 2048: m*}")
    for bits in (512, 2048):
        costs = by_key[bits]
        masks = costs["encrypt, public key (B's masks)"] + costs["decrypt (CRT)"]
        product = costs[f"product, {delta_bound_bits}-bit exponent (δ)"]
        if not _close(answer[bits], masks / product, 0.05):
            return verdict(False, f"m* at {bits} bits is off: set d·h·(mask cost) = m·d·h·(product cost)")
    return verdict(True)


def check_3(answer, public_key_2048):
    """answer = (products of one epoch's steps 1 and 4 unpacked, the same packed), for the 800
    German-credit training rows in batches of 64, d = 30, h = 8, with the packing layout the
    library derives for this 2048-bit public key."""
    if not answered(answer):
        return False
    import nn
    from plan import FixedPointPlan, packing_layout

    d, h, n, m = 30, 8, 800, 64
    layout = packing_layout(FixedPointPlan(), public_key_2048, m, d, 0.1)
    rows_per_ct, features_per_ct = layout.forward.slots, layout.backward.slots
    batches = [len(batch) for batch in nn.minibatches(n, m, seed=0, epoch=0)]
    unpacked = 2 * n * d * h
    packed = (sum(-(-size // rows_per_ct) for size in batches) * d * h
              + n * -(-d // features_per_ct) * h)
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return verdict(False, "give two counts: (unpacked, packed)")
    if answer[0] != unpacked:
        return verdict(False, "the unpacked count is off: each of steps 1 and 4 costs n·d·h products")
    return verdict(answer[1] == packed,
                   "the packed count is off: step 1 packs rows per batch (mind the partial group), "
                   "step 4 packs features")
