"""Exact fixed-point arrays (no cryptography here).

A real number x is stored as the integer round(x · 2^scale), ONE public `scale` per array.
Arithmetic on Fixed arrays is exact integer arithmetic on numpy object arrays of Python ints;
paillier.EncryptedArray mirrors it under encryption.  This module also holds the small
integer helpers the rest of the code shares: `object_array` (build an object array from a list),
`max_abs_bits` (the bit budget of an integer array), and `to_decimal` / `from_decimal` (the
decimal numeral of an integer of any length, for text people read).
"""

import math
import numbers

import numpy as np

__all__ = ["Fixed", "object_array", "as_object_array", "elementwise", "map_values", "max_abs_bits",
           "check_scale", "to_decimal", "from_decimal", "as_int", "describe_int"]


def object_array(items, shape):
    """A numpy object array of the given shape holding exactly these Python objects.

    (np.array(items, dtype=object) would look inside nested sequences and guess a shape; this
    never does.)
    """
    items = list(items)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def as_object_array(result):
    """numpy returns a bare element where an array was indexed or reduced to a scalar."""
    if isinstance(result, np.ndarray):
        return result
    array = np.empty((), dtype=object)
    array[()] = result
    return array


def elementwise(function, *arrays):
    """Apply a Python function elementwise with numpy broadcasting -> object ndarray."""
    return as_object_array(np.frompyfunc(function, len(arrays), 1)(*arrays))


def map_values(function, values):
    """function over every element of an object array, same shape; an OverflowError it raises
    is re-raised naming the element's index."""
    out = []
    for flat_index, value in enumerate(values.ravel().tolist()):
        try:
            out.append(function(value))
        except OverflowError as error:
            index = tuple(map(int, np.unravel_index(flat_index, values.shape)))
            raise OverflowError(f"at index {index}: {error}") from None
    return object_array(out, values.shape)


def as_int(value, what):
    """``value`` as a Python int; TypeError naming ``what`` for anything that is not an integer
    (a float, a bool, a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def describe_int(value):
    """A readable rendering of a possibly huge integer for error messages."""
    return str(value) if abs(value) < 10**30 else f"a {abs(value).bit_length()}-bit number"


def max_abs_bits(values):
    """Bit length of the largest |value| in an integer (object) array; 0 if empty or all zero.

    Accepts anything np.asarray takes (ints, numpy ints, mpz), so callers can budget the bits
    of plaintexts before encrypting them: |v| < 2^max_abs_bits(values) for every v.
    """
    flat = np.asarray(values, dtype=object).ravel().tolist()
    return max((abs(int(value)).bit_length() for value in flat), default=0)


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
    head = len(text) % CHUNK or CHUNK
    value = int(text[:head])
    for start in range(head, len(text), CHUNK):
        value = value * _POWER + int(text[start:start + CHUNK])
    return value


def check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 0:
        raise ValueError(f"scale must be an integer >= 0 (fractional bits), got {scale!r}")
    return int(scale)


def _round_half_even_shift(numerator, denominator, scale):
    """round(numerator · 2^scale / denominator) with ties to even, exactly."""
    quotient, remainder = divmod(numerator << scale, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient & 1):
        quotient += 1
    return quotient


class Fixed:
    """An exact fixed-point array: element value = values[i] / 2**scale.

    `values` is a numpy object array of Python ints, `scale` the number of fractional bits,
    ONE for the whole array.  Arithmetic is exact integer arithmetic: + and - need equal scales;
    * and @ add the scales (a product of two 2^-s quantities is a 2^-(s1+s2) quantity); rescale
    changes the scale with rounding.

    Why one public scale rather than a floating exponent per value: an exponent travels in the
    clear next to each ciphertext, so a per-value exponent leaks every value's magnitude.  A
    single scale per quantity is public information about the protocol, not about the data.
    """

    __slots__ = ("values", "scale")
    __hash__ = None  # equality is by value; the array is mutable

    def __init__(self, values, scale):
        """Wrap an object array of Python ints; use Fixed.encode or Fixed.from_ints to build one."""
        if not (isinstance(values, np.ndarray) and values.dtype == object):
            raise TypeError("Fixed(values, scale) takes an object ndarray; use Fixed.from_ints")
        self.values = values
        self.scale = check_scale(scale)

    @classmethod
    def encode(cls, x, scale):
        """Round real numbers to the nearest multiple of 2^-scale (ties to even), exactly.

        x · 2^scale is exact in binary floating point (only the exponent changes), so rounding
        it is the correctly rounded fixed-point value; huge products fall back to the exact
        rational form of the float.  NaN and ±inf raise ValueError naming the index and value.
        """
        scale = check_scale(scale)
        original = np.asarray(x)
        x = original.astype(np.float64)
        if original.dtype.kind in "iuO":  # integers beyond 2**53 would round silently
            for flat_index, (exact, approximate) in enumerate(
                    zip(original.ravel().tolist(), x.ravel().tolist())):
                if exact != approximate:
                    index = tuple(map(int, np.unravel_index(flat_index, x.shape)))
                    raise ValueError(f"x at index {index} = {exact!r} is not exactly a float64; "
                                     "use Fixed.from_ints for big integers")
        finite = np.isfinite(x)
        if not finite.all():
            index = np.unravel_index(int(np.flatnonzero(~finite)[0]), x.shape)
            where = f"x[{', '.join(str(int(i)) for i in index)}]" if index else "x"
            raise ValueError(f"cannot encode {where} = {x[index]}: not a finite number")
        with np.errstate(over="ignore"):
            scaled = np.rint(np.ldexp(x, scale))  # rint rounds half to even
        values = [
            int(rounded) if math.isfinite(rounded)
            else _round_half_even_shift(*float(original).as_integer_ratio(), scale)
            for rounded, original in zip(scaled.ravel().tolist(), x.ravel().tolist())
        ]
        return cls(object_array(values, x.shape), scale)

    @classmethod
    def from_ints(cls, values, scale):
        """Fixed from integers already scaled by 2**scale (ints, numpy ints or mpz)."""
        array = np.asarray(values, dtype=object)
        items = []
        for flat_index, value in enumerate(array.ravel().tolist()):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                index = tuple(map(int, np.unravel_index(flat_index, array.shape)))
                raise TypeError(f"values[{index}] = {value!r} is not an integer")
            items.append(int(value))
        return cls(object_array(items, array.shape), scale)

    def decode(self):
        """float64 array value / 2**scale, correctly rounded (Python int true division)."""
        denominator = 1 << self.scale
        floats = [value / denominator for value in self.values.ravel().tolist()]
        return np.array(floats, dtype=np.float64).reshape(self.shape)

    def rescale(self, scale):
        """The same numbers at another scale: exact when raising it, round half to even when
        lowering it (e.g. to bring a product's scale s1+s2 back to s)."""
        scale = check_scale(scale)
        if scale >= self.scale:
            shift = scale - self.scale
            return Fixed(elementwise(lambda value: value << shift, self.values), scale)
        denominator = 1 << (self.scale - scale)
        return Fixed(
            elementwise(lambda value: _round_half_even_shift(value, denominator, 0), self.values),
            scale,
        )

    @property
    def shape(self):
        return self.values.shape

    @property
    def ndim(self):
        return self.values.ndim

    @property
    def T(self):
        return Fixed(self.values.T, self.scale)

    def __getitem__(self, index):
        return Fixed(as_object_array(self.values[index]), self.scale)

    def __neg__(self):
        return Fixed(as_object_array(-self.values), self.scale)

    def _same_scale(self, other, operation):
        if self.scale != other.scale:
            raise ValueError(
                f"cannot {operation} fixed-point arrays of scales {self.scale} and {other.scale}; "
                "rescale one first"
            )

    def __add__(self, other):
        if not isinstance(other, Fixed):
            return NotImplemented
        self._same_scale(other, "add")
        return Fixed(as_object_array(self.values + other.values), self.scale)

    def __sub__(self, other):
        if not isinstance(other, Fixed):
            return NotImplemented
        self._same_scale(other, "subtract")
        return Fixed(as_object_array(self.values - other.values), self.scale)

    def __mul__(self, other):
        """Elementwise product with broadcasting; the scale is the sum of the two scales."""
        if not isinstance(other, Fixed):
            return NotImplemented
        return Fixed(as_object_array(self.values * other.values), self.scale + other.scale)

    def __matmul__(self, other):
        """Matrix product (exact integer matmul); the scale is the sum of the two scales."""
        if not isinstance(other, Fixed):
            return NotImplemented
        product = np.matmul(self.values, other.values)
        return Fixed(as_object_array(product), self.scale + other.scale)

    def sum(self, axis=None):
        """Exact sum over an axis (or everything), same scale."""
        return Fixed(as_object_array(self.values.sum(axis=axis)), self.scale)

    def max_abs_bits(self):
        """Bit length of the largest |value| (0 for an empty or all-zero array): max_abs_bits."""
        return max_abs_bits(self.values)

    def equals(self, other):
        """True when other is a Fixed with the same scale, shape and integers."""
        return (
            isinstance(other, Fixed)
            and self.scale == other.scale
            and self.shape == other.shape
            and all(mine == theirs for mine, theirs in
                    zip(self.values.ravel().tolist(), other.values.ravel().tolist()))
        )

    def __eq__(self, other):
        if not isinstance(other, Fixed):
            return NotImplemented
        return self.equals(other)

    def __repr__(self):
        return f"Fixed({self.values.tolist()!r}, scale={self.scale})"

