"""Big integers as decimal text, of any length.

Python refuses ``str(n)`` and ``int(text)`` beyond 4,300 decimal digits (a guard against slow
quadratic conversions, sys.get_int_max_str_digits). A Paillier key of 16,384 bits has a modulus
of 4,933 digits and ciphertexts of 9,865, so checkpoints and transcripts convert here instead:
in pieces of at most ``CHUNK`` digits, split by powers of ten. The text is the ordinary decimal
numeral (what ``str`` would give without the limit), so files written before stay readable.
"""

from __future__ import annotations

CHUNK = 4000  # digits per piece: under Python's default limit of 4,300
_POWER = 10 ** CHUNK


def to_decimal(value: int) -> str:
    """The decimal numeral of ``value`` (sign included), whatever its length."""
    value = int(value)
    if value < 0:
        return "-" + to_decimal(-value)
    if value < _POWER:
        return str(value)
    pieces = []  # least significant first, each exactly CHUNK digits but the last
    while value >= _POWER:
        value, piece = divmod(value, _POWER)
        pieces.append(str(piece).zfill(CHUNK))
    pieces.append(str(value))
    return "".join(reversed(pieces))


def from_decimal(text: str) -> int:
    """The integer a decimal numeral (optionally signed with "-") stands for, whatever its
    length. The caller checks that ``text`` is a numeral."""
    if text.startswith("-"):
        return -from_decimal(text[1:])
    if len(text) <= CHUNK:
        return int(text)
    value = 0
    head = len(text) % CHUNK or CHUNK
    value = int(text[:head])
    for start in range(head, len(text), CHUNK):
        value = value * _POWER + int(text[start:start + CHUNK])
    return value
