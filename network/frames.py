"""Payloads: what the body of a message frame holds, and the checks before it is decoded.

wire.py carries authenticated frames; a message frame's header holds a layout (dtype, shape,
and for integers their width) and its body the raw bytes:

* ``int``: an integer array, each value fixed-width big-endian two's complement;
* ``int-list``: a list of Python ints (the id alignment's group elements), the same bytes;
* ``float64``: big-endian IEEE doubles;
* ``paillier-ciphertext``: a serialised :class:`paillier.EncryptedArray`;
* ``paillier-public-key`` and ``json``: JSON text, for the public key and public values.

Nothing is ever unpickled. :func:`check_layout` judges a layout before the body is read (the
receiver passes it, with the shape the protocol expects, as ``Connection.receive_frame``'s
``expect``); :func:`decode_payload` runs it again, checks the body's length against it, and
only then builds values. Every failure is one line of wire.py's :class:`TransportError`.
"""

from __future__ import annotations

import json
import math

import numpy as np

from network.wire import TransportError, one_line, refuse_constant
from paillier import EncryptedArray, PublicKey

MAX_DIMENSIONS = 32  # of an array on the wire (numpy's own limit is 64)
MAX_ELEMENTS = 1 << 26  # of any array on the wire
MAX_INT_ELEMENTS = 1 << 21  # Python ints built from one frame (each costs ~40 bytes + width)
MAX_INT_WIDTH = 1 << 16  # bytes per integer on the wire: far above any key size in use
MAX_PUBLIC_KEY_BYTES = 64 * 1024


def _is_int_array(payload) -> bool:
    if payload.dtype.kind in "iu":
        return True
    return payload.dtype == object and all(
        isinstance(v, int) and not isinstance(v, bool) or type(v).__name__ == "mpz"
        for v in payload.ravel())


def encode_payload(payload) -> tuple[dict, bytes]:
    """(layout header, body bytes) for one payload; the channel has already checked its kind."""
    if isinstance(payload, PublicKey):
        return {"dtype": "paillier-public-key", "shape": []}, payload.to_json().encode()
    if isinstance(payload, EncryptedArray):
        return {"dtype": "paillier-ciphertext", "shape": list(payload.shape)}, payload.to_bytes()
    if isinstance(payload, np.ndarray):
        if payload.dtype.kind == "f":
            body = np.ascontiguousarray(payload, dtype=">f8").tobytes()
            return {"dtype": "float64", "shape": list(payload.shape)}, body
        if _is_int_array(payload):
            integers = [int(v) for v in payload.ravel()]
            # (bits + 8) // 8 bytes hold the magnitude and the sign bit in two's complement
            width = (max((abs(v).bit_length() for v in integers), default=0) + 8) // 8
            body = b"".join(v.to_bytes(width, "big", signed=True) for v in integers)
            return {"dtype": "int", "width": width, "shape": list(payload.shape)}, body
        raise TypeError(f"cannot carry a {payload.dtype} array over the wire")
    if isinstance(payload, list) and payload and all(type(v) is int for v in payload):
        # a list of Python ints (the id alignment's group elements): the integers' bytes, so
        # that its length and width are known, and checked, before a value is built
        layout, body = encode_payload(np.array(payload, dtype=object))
        return {**layout, "dtype": "int-list"}, body
    try:
        return {"dtype": "json", "shape": []}, json.dumps(payload, allow_nan=False).encode()
    except (TypeError, ValueError):
        raise TypeError(f"cannot carry a {type(payload).__name__} over the wire") from None


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_shape(shape, expected_shape, where: str) -> tuple[tuple, int]:
    """(shape, element count), refused unless sane and as expected; nothing is allocated."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS or not all(
            _is_size(size) and 0 <= size <= MAX_ELEMENTS for size in shape):
        raise TransportError(f"{where}: the frame's shape {one_line(shape)[:80]} is not a list "
                             f"of at most {MAX_DIMENSIONS} sizes in 0..{MAX_ELEMENTS}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise TransportError(f"{where}: the frame's shape {shape} holds {count} elements, more "
                             f"than the cap of {MAX_ELEMENTS}")
    if expected_shape is not None:
        expected = list(expected_shape)
        if len(expected) != len(shape) or any(
                want is not None and want != got for want, got in zip(expected, shape)):
            shown = ["any" if want is None else want for want in expected]
            raise TransportError(f"{where}: the frame declares shape {shape}, the protocol "
                                 f"expects {shown}")
    return tuple(shape), count


def check_layout(header: dict, where: str, *, expected_shape=None,
                 max_int_elements: int = MAX_INT_ELEMENTS) -> None:
    """Refuse a payload's declared layout (dtype, shape, width) before its body is read.

    Usable as (part of) ``Connection.receive_frame``'s ``expect``; :func:`decode_payload`
    runs it again on the body it is given.
    """
    dtype = header.get("dtype")
    if dtype not in ("json", "paillier-public-key", "paillier-ciphertext", "float64", "int",
                     "int-list"):
        raise TransportError(f"{where}: unknown payload dtype {one_line(dtype)[:40]!r}")
    shape, count = _checked_shape(header.get("shape"), expected_shape, where)
    if dtype in ("json", "paillier-public-key") and shape != ():
        raise TransportError(f"{where}: a {dtype} payload has shape [], not {list(shape)}")
    if dtype == "int-list" and len(shape) != 1:
        raise TransportError(f"{where}: a list of integers has one dimension, not {len(shape)}")
    if dtype in ("int", "int-list"):
        width = header.get("width")
        if not _is_size(width) or not 1 <= width <= MAX_INT_WIDTH:
            raise TransportError(f"{where}: integer width {one_line(width)[:40]} is not in "
                                 f"1..{MAX_INT_WIDTH}")
        if count > max_int_elements:
            raise TransportError(f"{where}: {count} integers in one frame, more than the cap "
                                 f"of {max_int_elements}")


def decode_payload(header: dict, body: bytes, public_key: PublicKey | None, where: str, *,
                   expected_shape=None, max_int_elements: int = MAX_INT_ELEMENTS):
    """The payload a frame carries, validated against its declared layout (TransportError).

    ``expected_shape`` (a list of sizes, None for "any size") is checked, with the element
    count, the integer width and the body length, before a single value is decoded.
    """
    check_layout(header, where, expected_shape=expected_shape, max_int_elements=max_int_elements)
    dtype = header["dtype"]
    shape, count = _checked_shape(header["shape"], None, where)
    try:
        return _decode(dtype, header, shape, count, body, public_key, where)
    except TransportError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as error:
        raise TransportError(f"{where}: the {dtype} payload does not decode "
                             f"({one_line(error)[:200]})") from None


def _decode(dtype, header, shape, count, body, public_key, where):
    if dtype == "json":
        try:
            return json.loads(bytes(body).decode("utf-8"), parse_constant=refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise TransportError(f"{where}: the body is not JSON") from None
    if dtype == "paillier-public-key":
        if len(body) > MAX_PUBLIC_KEY_BYTES:
            raise TransportError(f"{where}: {len(body)} bytes for a public key, more than "
                                 f"{MAX_PUBLIC_KEY_BYTES}")
        return PublicKey.from_json(bytes(body).decode("utf-8"))
    if dtype == "paillier-ciphertext":
        if public_key is None:
            raise TransportError(f"{where}: a ciphertext before the data party's public key")
        width = (public_key.nsquare.bit_length() + 7) // 8
        if len(body) < count * width:
            raise TransportError(f"{where}: {len(body)} bytes cannot hold {count} ciphertexts of "
                                 f"{width} bytes each")
        array = EncryptedArray.from_bytes(body, public_key)
        if tuple(array.shape) != shape:
            raise TransportError(f"{where}: the frame says shape {list(shape)}, the ciphertexts "
                                 f"{list(array.shape)}")
        return array
    if dtype == "float64":
        if len(body) != 8 * count:
            raise TransportError(f"{where}: {len(body)} bytes for {count} float64 values")
        return np.frombuffer(body, dtype=">f8").astype(np.float64).reshape(shape)
    width = header["width"]  # dtype "int" or "int-list"
    if len(body) != width * count:
        raise TransportError(f"{where}: {len(body)} bytes for {count} integers of {width} "
                             "bytes each")
    view = memoryview(body).cast("B")
    integers = [int.from_bytes(view[i * width:(i + 1) * width], "big", signed=True)
                for i in range(count)]
    if dtype == "int-list":
        return integers
    values = np.empty(count, dtype=object)
    values[:] = integers
    return values.reshape(shape)
