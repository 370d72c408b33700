"""Checks for notebook 03 (the four steps). Each recomputes what it compares against from the
notebook's parties and channel, and prints only ✓ or ✗ (with a hint that does not contain the
answer)."""

import numpy as np

from . import answered, verdict


def check_1(answer, data_party, label_party):
    """The exact fixed-point W after the second batch, W_before − η_int·X_intᵀδ_int, computed
    from the δ the label party kept after step 3 (a Fixed at W's scale). Compared, bit for bit,
    with what the two shares now add up to (which only the narrator can form)."""
    if not answered(answer):
        return False
    if len(label_party.losses) < 2:
        return verdict(False, "run steps 1 to 4 on the second batch first")
    joint = label_party.weight_share + data_party.noise_acc           # NARRATOR
    if getattr(answer, "scale", None) != joint.scale:
        return verdict(False, "give a Fixed at W's scale")
    if np.shape(answer.values) != np.shape(joint.values):
        return verdict(False, "wrong shape")
    if not answer == joint:
        return verdict(False, "not bit for bit: is it the integer step, with the δ of batch 2?")
    return verdict(True)


def check_2(answer):
    """(sign hit rate with the interval mask, sign hit rate with the mask uniform mod n) of the
    deviating data party that encrypts X = 2^k·I. The interval mask should give the signs away
    (well above a coin), the uniform one should not (a coin, within sampling error)."""
    if not answered(answer):
        return False
    try:
        interval, uniform = float(answer[0]), float(answer[1])
    except (TypeError, ValueError, IndexError):
        return verdict(False, "give a tuple (hit rate with the interval mask, with the uniform)")
    if not (0 <= interval <= 1 and 0 <= uniform <= 1):
        return verdict(False, "a hit rate is a fraction between 0 and 1")
    if interval <= 0.75:
        return verdict(False, "with the interval mask the signs should come out far better than "
                              "a coin: is 2^k·|W_B| as wide as the mask?")
    if abs(uniform - 0.5) >= 0.1:
        return verdict(False, "with a mask uniform mod n the guess should be a coin")
    return verdict(True)


def check_3(answer, channel, data_party):
    """Predicted bytes {message name: bytes} of step 0's [[X]], step 1's [[X·W_B + ε_B]] and step
    1's X·W + ε_B, compared with the first message of each name on the channel."""
    if not answered(answer):
        return False
    names = ("[[X]]", "[[X·W_B + ε_B]]", "X·W + ε_B")
    if not isinstance(answer, dict) or set(answer) != set(names):
        return verdict(False, f"give a dict with the keys {names}")
    first = {message.name: message for message in reversed(channel.messages)}
    wrong = [name for name in names if int(answer[name]) != first[name].nbytes]
    if wrong:
        return verdict(False, f"not yet for {wrong}: a ciphertext lives mod n², a masked or "
                              "revealed integer mod n")
    return verdict(True)
