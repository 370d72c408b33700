"""Checks for notebook 08 (against the systems it replaces): right or not yet, never the answer."""

import math

import numpy as np

from . import answered, verdict


def check_1(answer, model_ratio, d):
    """answer = {64: L, 16: L}: the fewest hidden layers of that width for which the notebook's
    model (``model_ratio``, at 512 bits) puts the fully encrypted baseline at ≥ 100× ACML."""
    if not answered(answer):
        return False
    if not isinstance(answer, dict) or set(answer) != {64, 16}:
        return verdict(False, "give a dict {64: L, 16: L}")
    for width, layers in answer.items():
        if not isinstance(layers, int) or layers < 1:
            return verdict(False, f"width {width}: give a whole number of layers, at least 1")
        if model_ratio((d, *([width] * layers), 1), 512) < 100:
            return verdict(False, f"width {width}: too few layers for 100×")
        if layers > 1 and model_ratio((d, *([width] * (layers - 1)), 1), 512) >= 100:
            return verdict(False, f"width {width}: not the fewest")
    return verdict(True)


def check_2(answer):
    """answer = {"ACML": round trips, "fully encrypted": round trips} for one epoch of the 800
    German-credit training rows in batches of 64, network 30 → 64 → 64 → 1: ACML makes 2 per
    batch; the baseline 2 per layer and 1 more per layer above the first (section 3's table)."""
    if not answered(answer):
        return False
    import nn

    batches = len(list(nn.minibatches(800, 64, seed=0, epoch=0)))
    layers = 3
    expected = {"ACML": 2 * batches, "fully encrypted": batches * (2 * layers + (layers - 1))}
    if not isinstance(answer, dict) or set(answer) != set(expected):
        return verdict(False, 'give a dict {"ACML": ..., "fully encrypted": ...}')
    if answer["ACML"] != expected["ACML"]:
        return verdict(False, "ACML's count is off: how many batches, and how many exchanges per batch?")
    return verdict(answer["fully encrypted"] == expected["fully encrypted"],
                   "the baseline's count is off: count per layer, and per layer above the first")


def check_3(answer, counted, per_sample, price, n_rows):
    """answer = {"ACML, unpacked": q, "fully encrypted baseline": q}: each measured epoch (the
    median of the repeats, per sample × rows) divided by its operations priced at ``price``."""
    if not answered(answer):
        return False
    names = ("ACML, unpacked", "fully encrypted baseline")
    if not isinstance(answer, dict) or set(answer) != set(names):
        return verdict(False, f"give a dict with the keys {names}")
    for name in names:
        priced = sum(counted[name][op] * price[op] for op in price)
        quotient = float(np.median(per_sample[name])) * n_rows / priced
        if not math.isclose(float(answer[name]), quotient, rel_tol=0.01):
            return verdict(False, f"{name}: not measured ÷ priced (median repeat, whole epoch)")
    return verdict(True)
