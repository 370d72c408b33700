"""How integers and integer arrays travel as text and bytes (no cryptography here).

    int_to_text / int_from_text     one integer as "0x<hex>" (no length limit; decimal read too)
    signed_to_residue / residue_to_signed
                                    a signed integer as a residue mod n and back, with the
                                    overflow band between (paillier.PublicKey's encoding)
    array_to_bytes / array_from_bytes
                                    4-byte header length, JSON header, then fixed-width
                                    big-endian integers in C order
    array_to_json / array_from_json the header's fields plus the integers as int_to_text strings

Why hex: Python refuses int <-> decimal str conversions of more than 4,300 digits (about 14,000
bits: a ciphertext under a 7,200-bit key), and they take quadratic time; hex is linear and has
no limit.  The readers only check the framing and the header against what the caller expects
(format, key fingerprint, width); paillier.EncryptedArray checks the integers themselves.
"""

import json
import math

__all__ = ["int_to_text", "int_from_text", "to_decimal", "from_decimal", "array_to_bytes",
           "array_from_bytes", "array_to_json", "array_from_json", "signed_to_residue",
           "residue_to_signed"]

_HEX_DIGITS = frozenset("0123456789abcdef")


# Decimal text of any length, for what people read (checkpoints' integers, transcripts): Python
# refuses str(n) and int(text) beyond 4,300 digits, so convert in pieces split by powers of ten.
# The text is the ordinary decimal numeral, so files written before stay readable.
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


def _check_header(header, form, fingerprint):
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


def array_to_bytes(header, integers, width):
    """Header length (4 bytes), the JSON header plus "width", then each integer in `width`
    big-endian bytes."""
    text = json.dumps({**header, "width": width}, sort_keys=True).encode()
    body = b"".join(int(value).to_bytes(width, "big") for value in integers)
    return len(text).to_bytes(4, "big") + text + body


def array_from_bytes(data, form, fingerprint, width):
    """Parse array_to_bytes output: (shape, scale, list of ints); ValueError for a truncated
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
    shape, scale = _check_header(header, form, fingerprint)
    if header.get("width") != width:
        raise ValueError(
            f"header says {header.get('width')!r} bytes per ciphertext, the key needs {width}")
    body, count = data[4 + header_length:], math.prod(shape)
    if len(body) != count * width:
        raise ValueError(
            f"encrypted payload has {len(body)} ciphertext bytes, expected {count} × {width}")
    return shape, scale, [int.from_bytes(body[i * width:(i + 1) * width], "big")
                          for i in range(count)]


def array_to_json(header, integers):
    """JSON text: the header's fields plus "ciphertexts", a list of int_to_text strings."""
    return json.dumps({**header, "ciphertexts": [int_to_text(value) for value in integers]})


def array_from_json(text, form, fingerprint):
    """Parse array_to_json output: (shape, scale, list of ints), with the same header checks."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"encrypted JSON does not parse: {error}") from None
    shape, scale = _check_header(data, form, fingerprint)
    strings = data.get("ciphertexts")
    if not isinstance(strings, list) or len(strings) != math.prod(shape):
        raise ValueError(
            f"encrypted JSON must list {math.prod(shape)} ciphertexts for shape {shape}")
    return shape, scale, [int_from_text(string, "ciphertext") for string in strings]


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
