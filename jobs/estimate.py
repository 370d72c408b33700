"""The time estimate, an optional look ahead: measured seconds per Paillier operation of each kind,
times the counts the run's plan implies.

It is computed only when asked (``train(..., estimate=True)``; the CLI asks unless ``--quiet``),
and then as a step of its own before setup: the few ciphertexts it times are its own, drawn from
public test values, and the operation counters are left as they were.
"""

from __future__ import annotations

import random
import time

import numpy as np

from fixed import Fixed
from jobs.progress import PREDICTION_CHUNK_ROWS
from jobs.report import plural
from plan import FixedPointPlan, useful_packing, weight_share_bits
from speed import kernels
from paillier import OP_COUNTS


OPERATIONS = {  # kind: what it is, where it runs
    "encrypt": "encryption by the key owner (CRT): [[X]], [[X_batch]], [[X_new]]",
    "mask": "a fresh public-key encryption of a wide mask (label party)",
    "decrypt": "a decryption (data party)",
    "product_w": "one term of [[X]]·W_B (exponent: a weight share)",
    "product_delta": "one term of [[X]]ᵀ·δ (exponent: a fixed-point δ)",
}


def operation_counts(n_rows: int, n_inputs: int, n_hidden: int, batch_size: int, epochs: int,
                     n_predict: int, packing=None, bottom: bool = False,
                     step0: bool = True) -> dict:
    """The Paillier operations a run implies, by kind (OPERATIONS), from public facts only:
    step 0's [[X]], per batch steps 1, 4b and 4, and the prediction of ``n_predict`` rows."""
    forward = (lambda m: m) if packing is None else packing.forward.groups
    width = n_inputs if packing is None else packing.backward.groups(n_inputs)
    counts = dict.fromkeys(OPERATIONS, 0)
    if step0 and not bottom:
        counts["encrypt"] += n_rows * width
    batches = [batch_size] * (n_rows // batch_size) + ([n_rows % batch_size]
                                                       if n_rows % batch_size else [])
    for m in batches * epochs:
        groups = forward(m)
        if bottom or packing is not None:
            counts["encrypt"] += groups * n_inputs
        counts["product_w"] += groups * n_inputs * n_hidden
        counts["mask"] += groups * n_hidden + width * n_hidden
        counts["decrypt"] += groups * n_hidden + width * n_hidden
        counts["product_delta"] += width * m * n_hidden
        if bottom:  # step 4b: [[ε_acc]], δ·[[ε_acc]]ᵀ, re-randomised, decrypted
            counts["encrypt"] += n_inputs * n_hidden
            counts["product_delta"] += m * n_hidden * n_inputs
            counts["mask"] += m * n_inputs
            counts["decrypt"] += m * n_inputs
    for start in range(0, n_predict, PREDICTION_CHUNK_ROWS):
        groups = forward(min(PREDICTION_CHUNK_ROWS, n_predict - start))
        counts["encrypt"] += groups * n_inputs
        counts["product_w"] += groups * n_inputs * n_hidden
        counts["mask"] += groups * n_hidden
        counts["decrypt"] += groups * n_hidden
    return counts


def measure_costs(private_key, plan: FixedPointPlan, n_hidden: int, share_bits: int,
                  n_inputs: int, batch_size: int, samples: int = 4) -> dict:
    """Seconds per operation of each kind (OPERATIONS), measured now with this key: a few of
    each, after one warm-up; a fraction of a second at 2048 bits. A product term is timed in a
    product as wide as the run's (``n_inputs`` terms in step 1, ``batch_size`` in step 4: the
    terms of one output share their squarings). Operation counters are left as they were."""
    saved = dict(OP_COUNTS)
    draw = random.Random(0)  # public test values: only their sizes matter here
    public_key = private_key.public_key

    def ints(bits, shape):
        values = [draw.getrandbits(bits) * draw.choice((-1, 1)) for _ in range(int(np.prod(shape)))]
        return Fixed.from_ints(np.array(values, dtype=object).reshape(shape), plan.x_frac_bits)

    def timed(work, count):
        work()  # warm-up: tables, constants
        begin = time.perf_counter()
        work()
        return (time.perf_counter() - begin) / count

    values = ints(plan.x_int_bits + plan.x_frac_bits, (1, samples))
    encrypted = kernels.encrypt_array(private_key, values)
    zeros = Fixed.from_ints(np.zeros((1, samples), dtype=np.int64), plan.x_frac_bits)
    weights = ints(share_bits, (n_inputs, n_hidden))
    deltas = ints(plan.delta_int_bits + plan.delta_frac_bits, (batch_size, n_hidden))
    row_step1 = kernels.encrypt_array(private_key, ints(8, (1, n_inputs)))
    row_step4 = kernels.encrypt_array(private_key, ints(8, (1, batch_size)))
    try:
        return {
            "encrypt": timed(lambda: kernels.encrypt_array(private_key, values), samples),
            "mask": timed(lambda: kernels.encrypt_array(public_key, zeros), samples),
            "decrypt": timed(lambda: kernels.decrypt_residues(private_key, encrypted), samples),
            "product_w": timed(lambda: kernels.encrypted_matmul(row_step1, weights),
                               n_inputs * n_hidden),
            "product_delta": timed(lambda: kernels.encrypted_matmul(row_step4, deltas),
                                   batch_size * n_hidden),
        }
    finally:
        OP_COUNTS.clear()
        OP_COUNTS.update(saved)


def estimate_run(private_key, config, n_rows: int, n_inputs: int, n_predict: int, *,
                 epochs_done: int = 0, flaws_enabled: bool = False) -> dict:
    """An ESTIMATE of the run's time, before it starts: measured seconds per Paillier operation
    (:func:`measure_costs`, with this run's key, the data party's ``private_key``) times the counts the plan implies
    (:func:`operation_counts`). It counts only the Paillier operations, on one core: Python's
    own bookkeeping and the plaintext twin come on top; an executor divides the work.
``config`` is the run's simulation.Config; ``flaws_enabled``: insecure flaws switch packing off.

    Returns the counts, the seconds per operation, ``seconds`` and ``line``, the sentence
    ``train`` prints."""
    n_hidden = config.layer_sizes(n_inputs, 2)[1]
    packing = None
    if config.packing and config.bottom is None and not flaws_enabled:
        packing = useful_packing(config.plan, private_key.public_key, config.batch_size,
                                 n_inputs, config.lr)
    counts = operation_counts(n_rows, n_inputs, n_hidden, config.batch_size,
                              config.epochs - epochs_done, n_predict, packing,
                              bottom=config.bottom is not None)
    costs = measure_costs(private_key, config.plan, n_hidden,
                          weight_share_bits(config.plan, config.batch_size, config.lr),
                          n_inputs, min(config.batch_size, n_rows))
    seconds = sum(counts[kind] * costs[kind] for kind in counts)
    total = sum(counts.values())
    each_ms = 1000 * seconds / max(total, 1)
    amount = (plural(round(seconds / 60), "minute") if seconds >= 90
              else plural(max(1, round(seconds)), "second"))
    line = (f"estimated: about {amount} (from {total:,} operations at {each_ms:.3g} ms each, "
            f"measured now; an estimate of the Paillier work on one core)")
    return {"counts": counts, "seconds_per_operation": costs, "seconds": seconds,
            "operations": total, "line": line}
