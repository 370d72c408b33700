"""The checked channel: every message between the parties, declared, checked and recorded.

A message is one declarative call (:meth:`Channel.send`) that names its step, sender, receiver,
name and kind, and separately what the sender computes (``make``, run only where the sender
lives) and what the receiver does with it (``take``, run only where the receiver lives). Its
declared shape and mask and value widths are plain values, computed from public facts by both
sides, so both sides check them. The kinds:

* ``ciphertext`` — a Paillier ciphertext array under the data party's key. When it goes TO the
  data party (who can decrypt), it must also declare what the data party learns from it:
  ``mask_bits``/``value_bits`` if the plaintext is masked, or a ``reason`` if it is revealed.
* ``masked`` — integers hiding a secret of at most ``value_bits`` bits under a uniform mask of
  ``mask_bits`` bits that the receiver does not know: mask_bits ≥ value_bits + σ is required.
* ``revealed`` — a value the protocol reveals to the receiver by design; ``reason`` says why.
* ``public`` — the public key, shapes, hyper-parameters: never an array. Only public payloads
  are returned by ``send``, because only they exist in both processes.

A ciphertext message declared ``stream=True`` may cross in row blocks (plan.stream_slices, from
its public shape and the channel's ``stream_chunks``): the sender's ``make`` may return
:class:`RowBlocks`, computed block by block as the channel sends them, and in two processes the
receiver's ``take`` gets the blocks one by one as they arrive, each checked like a whole
message, so the receiver works on the first while the sender computes the next. It is still ONE
message: one declaration, one line in the report and the transcript, its size summed.

:class:`Channel` runs both parties in one process. ``transport.SocketChannel`` runs one and
carries the frames to the other; the script (protocol.py) is the same for both.

The channel also measures what it can: ciphertexts must carry Paillier randomness (c ≢ 1 mod n)
and no per-value exponents; nothing reaches the key owner in plaintext or decryptable without a
declaration; every masked message must contain a fresh mask as wide as declared (measured by the
sender's :class:`MaskSource`); and each party's masks must come from ``secrets``.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

import paillier
from fixed import max_abs_bits, object_array, to_decimal
from paillier import EncryptedArray, PublicKey
from plan import check_stream_chunks, stream_slices

DATA, LABEL = "data", "label"
PARTIES = (DATA, LABEL)
CIPHERTEXT, MASKED, REVEALED, PUBLIC = "ciphertext", "masked", "revealed", "public"
KINDS = (CIPHERTEXT, MASKED, REVEALED, PUBLIC)
MODES = ("raise", "report")
MASK_WIDTH_SLACK = 16  # a uniform b-bit mask array of s values has max < 2**(b−16) w.p. 2**(−16s)


class LeakageError(RuntimeError):
    """A message would cross a party boundary without a declared, checkable kind."""


def other(party: str) -> str:
    return LABEL if party == DATA else DATA


# ----------------------------------------------------------------------------------------------
# Masks. Every secret comes from `secrets`, never from numpy's generator.
# ----------------------------------------------------------------------------------------------
def uniform_mask(shape, bits: int, generator: random.Random | None = None) -> np.ndarray:
    """Integers uniform in [−2**bits, 2**bits), from ``secrets``: an object array.

    A value v with |v| < 2**(bits − σ) plus such a mask is statistically hidden: the masked
    distributions for any two such v differ by at most 2**−σ in statistical distance, per value
    (over many values the distances add up). ``generator`` defaults to ``secrets``' own
    (random.SystemRandom, the operating system's CSPRNG).
    """
    draw = secrets.randbits if generator is None else generator.getrandbits
    size = int(np.prod(shape, dtype=np.int64))
    offset = 1 << bits
    return object_array([draw(bits + 1) - offset for _ in range(size)], shape)


class MaskSource:
    """The one place a party draws its secret masks (ε_acc, ε_A, ε_B, ε_B').

    ``uniform(shape, bits, scale)`` returns integers uniform in [−2**bits, 2**bits) from
    ``generator``, which is ``random.SystemRandom`` — the generator behind ``secrets``. ``scale``
    (the fractional bits of the value the mask hides) does not change a uniform mask; the flawed
    sources of flaws.py use it.

    Every draw is also measured: ``pending`` keeps (requested bits, bits actually drawn) until
    the party's next message, so that the channel can check the masks inside a masked message
    against the width the message declares. The measurement is a check, not a secret.
    """

    def __init__(self, generator: random.Random | None = None):
        self.generator: random.Random = generator or random.SystemRandom()
        self.pending: list[tuple[int, int]] = []

    def uniform(self, shape, bits: int, scale: int) -> np.ndarray:
        mask = self._draw(shape, bits, scale)
        self.pending.append((bits, max_abs_bits(mask)))
        return mask

    def _draw(self, shape, bits: int, scale: int) -> np.ndarray:
        return uniform_mask(shape, bits, self.generator)

    def residues(self, shape, n: int, bits: int, scale: int = 0) -> np.ndarray:
        """Integers uniform in [0, n), from ``generator``: a mask that hides any value mod n
        perfectly. ``bits`` is the width the message declares (recorded for the check);
        ``scale`` as for :meth:`uniform` (a flawed source of flaws.py keeps its flaw here too)."""
        size = int(np.prod(shape, dtype=np.int64))
        mask = object_array([self.generator.randrange(n) for _ in range(size)], shape)
        self.pending.append((bits, max_abs_bits(mask)))
        return mask

    def take_pending(self) -> list[tuple[int, int]]:
        """The draws since the last call, and forget them."""
        drawn, self.pending = self.pending, []
        return drawn


class RowBlocks:
    """A 2-d ciphertext array that its sender computes block of rows by block of rows, when the
    channel asks: ``compute(rows)`` returns the EncryptedArray of the rows ``rows`` (a slice),
    with their masks (drawn in full before the first block). Only for arrays whose rows are
    independent of one another (each output element its own multi-exponentiation and mask)."""

    def __init__(self, shape, compute):
        self.shape = tuple(int(size) for size in shape)
        self.compute = compute

    @classmethod
    def of(cls, payload):
        """``payload`` if it is RowBlocks; a whole array (a party that computes it at once) is
        cut into its own row slices."""
        if isinstance(payload, cls):
            return payload
        if not isinstance(payload, EncryptedArray) or payload.ndim != 2:
            raise LeakageError(f"a streamed message needs a 2-d EncryptedArray or RowBlocks, got "
                               f"{type(payload).__name__}")
        return cls(payload.shape, lambda rows: payload[rows])


def join_row_blocks(blocks, where: str) -> EncryptedArray:
    """The row blocks of one streamed message, as the one array they are."""
    if len({(block.public_key, block.scale) for block in blocks}) != 1:
        raise LeakageError(f"{where}: the row blocks differ in their key or scale")
    return blocks[0].with_ciphertexts(np.concatenate([block.ciphertexts for block in blocks], axis=0))


# ----------------------------------------------------------------------------------------------
# Messages and findings
# ----------------------------------------------------------------------------------------------
@dataclass
class Message:
    """One message between the parties: its declaration, and (if kept) its payload."""

    step: str
    sender: str
    receiver: str
    name: str
    kind: str
    reason: str | None = None
    mask_bits: int | None = None
    value_bits: int | None = None
    shape: tuple | None = None
    payload: object = None
    nbytes: int = 0

    @property
    def where(self) -> str:
        return f"step {self.step} message {self.name!r} ({self.sender} → {self.receiver})"

    def declaration(self) -> dict:
        """Everything but the payload: what both sides must agree on (a frame's header)."""
        return {"step": self.step, "sender": self.sender, "receiver": self.receiver,
                "name": self.name, "kind": self.kind, "reason": self.reason,
                "mask_bits": self.mask_bits, "value_bits": self.value_bits,
                "shape": None if self.shape is None else list(self.shape)}

    def learned(self) -> str:
        """What the receiver learns from ONE such message. Cumulative leaks over many messages
        (z across epochs, say) are the audit's subject: see leaks.py."""
        if self.kind == PUBLIC:
            return f"public: {self.reason}" if self.reason else "public information"
        if self.kind == REVEALED:
            return f"revealed by design: {self.reason}"
        margin = (self.mask_bits or 0) - (self.value_bits or 0)
        hidden = (f"{self.value_bits}-bit values under a {self.mask_bits}-bit mask "
                  f"({margin} bits of statistical margin per value)")
        if self.kind == MASKED:
            return hidden
        if self.receiver == DATA:
            if self.reason:
                return f"decrypts, revealed by design: {self.reason}"
            # The label party's masks are residues uniform mod n by default (mask_range="mod_n"):
            # the declared widths are the bound it checks, the hiding is perfect.
            return (f"decrypts a residue the label party masked uniformly mod n (perfect hiding; "
                    f"declared: {self.value_bits}-bit values, {self.mask_bits}-bit mask)")
        return "ciphertext under the data party's key"


@dataclass
class Finding:
    """One leakage-check violation, recorded when the channel runs in reporting mode.

    ``flaws`` names the InsecureFlaws switch(es) the evidence points at (empty for a violation
    that matches none of them); ``message`` is the check's one-line explanation.
    """

    flaws: tuple
    step: str
    name: str
    sender: str
    receiver: str
    message: str
    count: int = 1


def is_int_array(payload) -> bool:
    if not isinstance(payload, np.ndarray):
        return False
    if payload.dtype.kind in "iu":
        return True
    return payload.dtype == object and all(
        isinstance(v, int) or type(v).__name__ == "mpz" for v in payload.ravel())


def is_public_value(payload) -> bool:
    """Scalars, strings, tuples/lists/dicts of them, and the public key — never an array."""
    if isinstance(payload, PublicKey):
        return True
    if payload is None or isinstance(payload, (bool, int, float, str)):
        return True
    if isinstance(payload, (tuple, list)):
        return all(is_public_value(v) for v in payload)
    if isinstance(payload, dict):
        return all(isinstance(k, str) and is_public_value(v) for k, v in payload.items())
    return False


def shape_of(payload) -> tuple | None:
    if isinstance(payload, (EncryptedArray, np.ndarray)):
        return tuple(payload.shape)
    return None


def nbytes_of(payload, public_key) -> int:
    """The payload's size as the wire carries it (ciphertexts at n²'s width, masked integers at
    n's); public values as their JSON."""
    if isinstance(payload, EncryptedArray):
        width = (payload.public_key.nsquare.bit_length() + 7) // 8
        return width * int(np.prod(payload.shape, dtype=np.int64))
    if isinstance(payload, np.ndarray):
        if payload.dtype == object:
            width = ((public_key.n.bit_length() + 7) // 8) if public_key else max(
                (max_abs_bits(payload) + 8) // 8, 1)
            return width * payload.size
        return payload.nbytes
    return len(json.dumps(jsonable(payload)))


def jsonable(payload):
    """A payload as JSON values: big integers as decimal strings (of any length, fixed.to_decimal).
    No pickle, ever."""
    if isinstance(payload, PublicKey):
        return {"n": to_decimal(payload.n)}
    if isinstance(payload, EncryptedArray):
        record = {"scale": payload.scale,
                  "ciphertexts": [to_decimal(c) for c in payload.ciphertexts.ravel()]}
        if getattr(payload, "exponents", None) is not None:  # the INSECURE flaw-4 variant
            record["exponents"] = [int(e) for e in payload.exponents.ravel()]
        return record
    if isinstance(payload, np.ndarray):
        if payload.dtype == object or payload.dtype.kind in "iu":
            return [to_decimal(v) for v in payload.ravel()]
        return [float(v) for v in payload.ravel()]
    if isinstance(payload, dict):
        return {k: jsonable(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [jsonable(v) for v in payload]
    return payload


# ----------------------------------------------------------------------------------------------
# The channel
# ----------------------------------------------------------------------------------------------
class Channel:
    """Both parties in this process: every message checked, recorded and delivered.

    ``mode="raise"`` (the default) refuses a violating message with LeakageError. ``mode="report"``
    records each violation in ``findings`` and delivers the message anyway, so that an insecure
    variant can run to completion and the audit can attack it.

    ``keep_payloads`` keeps every payload in ``messages`` (the audit reads them); otherwise only
    declarations, counts and sizes are kept, so memory does not grow with the run. ``transcript``
    (a text file open for writing) receives every message as one JSON line as it crosses.
    ``stream_chunks``: the row blocks of a streamed message (1: computed whole). In one process
    the blocks are joined before ``take``, so it changes no result, only the order of the work.
    """

    def __init__(self, *, data_party=None, label_party=None, sigma: int = 40,
                 mode: str = "raise", keep_payloads: bool = False, transcript=None,
                 stream_chunks: int = 1):
        if mode not in MODES:
            raise ValueError(f"channel mode must be one of {MODES}, got {mode!r}")
        self.stream_chunks = check_stream_chunks(stream_chunks)
        self.local = {party: obj for party, obj in ((DATA, data_party), (LABEL, label_party))
                      if obj is not None}
        if not self.local:
            raise ValueError("a channel needs at least one party in this process")
        self.sigma = sigma
        self.mode = mode
        self.keep_payloads = keep_payloads
        self.transcript = transcript
        self.public_key: PublicKey | None = None  # the data party's, from its step-0 message
        self.messages: list[Message] = []
        self.findings: list[Finding] = []
        self.step_seconds: dict[str, float] = {}
        self.step_ops: dict[str, dict[str, int]] = {}
        for party, obj in self.local.items():
            self._check_mask_source(party, obj.mask_source)

    # -- the two calls the script makes -----------------------------------------------------
    def send(self, step, sender: str, receiver: str, name: str, kind: str, *, make, take,
             shape=None, mask_bits: int | None = None, value_bits: int | None = None,
             reason: str | None = None, stream: bool = False):
        """One message: ``make(sender party)`` where the sender lives, the checks, then
        ``take(receiver party, payload)`` where the receiver lives. Returns the payload if it
        is public (both processes hold it), else None. ``stream``: a 2-d ciphertext array that
        may cross in row blocks (:meth:`_send_streamed`)."""
        message = Message(str(step), sender, receiver, name, kind, reason, mask_bits, value_bits,
                          None if shape is None else tuple(int(s) for s in shape))
        self._check_declaration(message)
        if stream:
            return self._send_streamed(message, make, take)
        payload = None
        if sender in self.local:
            payload = make(self.local[sender])
            source = self.local[sender].mask_source
            drawn = None if source is None else source.take_pending()
            self._check_payload(message, payload, drawn)
            self._transmit(message, payload)
        if receiver in self.local:
            if sender not in self.local:
                payload = self._receive(message)
                self._check_payload(message, payload, None)
            take(self.local[receiver], payload)
        self._record(message, payload)
        return payload if kind == PUBLIC else None

    def _send_streamed(self, m: Message, make, take) -> None:
        """A ciphertext message in the row blocks of plan.stream_slices. The sender computes,
        checks (shape, ciphertexts, the masks drawn for that block) and sends each block before
        it computes the next; the receiver checks each block as it arrives and ``take`` gets an
        iterator of them (in one process: the joined array). One record, sizes summed."""
        if m.kind != CIPHERTEXT or m.shape is None or len(m.shape) != 2:
            raise LeakageError(f"{m.where}: only a 2-d ciphertext array with a declared shape "
                               "can be streamed")
        slices, blocks = stream_slices(m.shape[0], self.stream_chunks), []
        if m.sender in self.local:
            made = make(self.local[m.sender])
            source = self.local[m.sender].mask_source
            pending = None if source is None else source.take_pending()
            whole = not isinstance(made, RowBlocks)
            if whole:  # computed at once (a party of own_leaks.py, say): its masks checked whole
                self._check_payload(m, made, pending)
            rows = RowBlocks.of(made)
            for index, block in enumerate(slices):
                part = rows.compute(block)  # whole: a slice of the array just checked
                if not whole:  # each block checked with the masks drawn for the message so far
                    if source is not None:  # (``make`` draws them in full, before any block)
                        pending = (pending or []) + source.take_pending()
                    self._check_payload(self._block_message(m, block), part, pending)
                self._transmit_block(m, index, slices, part)
                blocks.append(part)
        if m.receiver in self.local:
            arriving = blocks if m.sender in self.local else self._arriving(m, slices, blocks)
            take(self.local[m.receiver],
                 join_row_blocks(blocks, m.where) if m.sender in self.local else arriving)
            if len(blocks) != len(slices):
                raise LeakageError(f"{m.where}: the receiver took {len(blocks)} of the "
                                   f"{len(slices)} row blocks")
        self._record(m, join_row_blocks(blocks, m.where))

    @staticmethod
    def _block_message(m: Message, block: slice) -> Message:
        """The declaration one row block is checked against: the message's, with its rows."""
        return replace(m, shape=(block.stop - block.start, *m.shape[1:]))

    def _arriving(self, m: Message, slices, blocks):
        """The row blocks as they arrive, each checked before ``take`` sees it."""
        for index, block in enumerate(slices):
            part = self._receive_block(m, index, slices)
            self._check_payload(self._block_message(m, block), part, None)
            blocks.append(part)
            yield part

    def at(self, party: str, work) -> None:
        """Work at one party alone, nothing crosses: ``work(party)`` where it lives."""
        if party in self.local:
            work(self.local[party])

    @contextmanager
    def timed(self, step: str):
        """Accumulate wall time and Paillier operation counts per protocol step."""
        before = dict(paillier.OP_COUNTS)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + time.perf_counter() - start
            ops = self.step_ops.setdefault(step, {})
            for op, count in paillier.OP_COUNTS.items():
                delta = count - before.get(op, 0)
                if delta:
                    ops[op] = ops.get(op, 0) + delta

    # -- the wire: nothing to do in one process ---------------------------------------------
    def _transmit(self, message: Message, payload) -> None:
        pass

    def _receive(self, message: Message):
        raise LeakageError(f"{message.where}: neither party runs here")  # both are local

    def _transmit_block(self, message: Message, index: int, slices, block) -> None:
        pass

    def _receive_block(self, message: Message, index: int, slices):
        raise LeakageError(f"{message.where}: neither party runs here")

    # -- checks ------------------------------------------------------------------------------
    def _violation(self, m: Message, text: str, flaws=()) -> None:
        """Raise (mode "raise") or record (mode "report") one violation."""
        if self.mode == "raise":
            raise LeakageError(f"{m.where}: {text}")
        flaws = tuple(flaws)
        for finding in self.findings:
            if (finding.flaws, finding.step, finding.name) == (flaws, m.step, m.name):
                finding.count += 1
                return
        self.findings.append(Finding(flaws, m.step, m.name, m.sender, m.receiver,
                                     f"{m.where}: {text}"))

    def _check_mask_source(self, party: str, source: MaskSource | None) -> None:
        """Each party's masks must come from ``secrets``: checked once, as the channel opens."""
        if source is not None and not isinstance(source.generator, random.SystemRandom):
            m = Message("0", party, other(party), f"{party} party's mask source", PUBLIC)
            self._violation(m, f"masks come from {type(source.generator).__module__}."
                            f"{type(source.generator).__name__}, a non-cryptographic, seedable "
                            "generator, not from secrets: whoever guesses its seed or state "
                            "predicts every mask (flaw: seeded_mask_rng)", ("seeded_mask_rng",))

    def _check_declaration(self, m: Message) -> None:
        """What both sides check before any payload: parties, kind, widths, reason."""
        if m.sender not in PARTIES or m.receiver not in PARTIES or m.sender == m.receiver:
            raise LeakageError(f"{m.where}: sender and receiver must be the two parties {PARTIES}")
        if m.kind not in KINDS:
            raise LeakageError(f"{m.where}: undeclared kind {m.kind!r}; declare one of {KINDS}")
        for key in ("mask_bits", "value_bits"):
            value = getattr(m, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise LeakageError(f"{m.where}: declared {key} {value!r} is not an integer")
        if m.kind == REVEALED and not (isinstance(m.reason, str) and m.reason.strip()):
            self._violation(m, "a revealed value needs the reason it is revealed")
        declares_mask = m.kind == MASKED or (m.kind == CIPHERTEXT and m.receiver == DATA
                                             and not m.reason)
        if not declares_mask:
            return
        if m.mask_bits is None or m.value_bits is None:
            flaws = ("plaintext_input_gradient",) if m.kind == CIPHERTEXT else ()
            text = ("a ciphertext to the key owner must declare what its plaintext reveals: "
                    "mask_bits/value_bits, or a reason — undeclared, the data party decrypts it "
                    "to plaintext (flaw: plaintext_input_gradient)" if m.kind == CIPHERTEXT
                    else "a masked value must declare mask_bits and value_bits")
            return self._violation(m, text, flaws)
        if m.mask_bits <= m.value_bits:  # whatever σ says: such a "mask" hides nothing
            raise LeakageError(f"{m.where}: a {m.mask_bits}-bit mask over {m.value_bits}-bit "
                               "values is no wider than what it hides")
        if m.mask_bits < m.value_bits + self.sigma:
            self._violation(m, f"weak mask — {m.mask_bits}-bit mask over {m.value_bits}-bit "
                            f"values leaves {m.mask_bits - m.value_bits} bits of margin, "
                            f"σ = {self.sigma} required", ("weak_masks",))

    def _check_payload(self, m: Message, payload, drawn) -> None:
        """What the payload must be, given its declaration; ``drawn`` (sender side only): the
        masks the sender drew for it."""
        if m.kind == PUBLIC:
            if not is_public_value(payload):
                return self._violation(m, f"refusing an undeclared plaintext "
                                       f"{type(payload).__name__} sent as 'public'; arrays must "
                                       "be ciphertext, masked or revealed with a reason")
            if isinstance(payload, PublicKey) and m.sender == DATA and self.public_key is None:
                self.public_key = payload  # the key every later ciphertext must be under
            return
        if m.shape is not None and shape_of(payload) != m.shape:
            raise LeakageError(f"{m.where}: a payload of shape {shape_of(payload)} where the "
                               f"protocol expects {m.shape}")
        if m.kind == CIPHERTEXT:
            self._check_ciphertext(m, payload)
        elif m.kind == MASKED and not is_int_array(payload):
            return self._violation(m, "a masked payload must be an integer array")
        if m.receiver == DATA and m.kind in (MASKED, REVEALED) and isinstance(payload, np.ndarray):
            self._violation(m, f"a plaintext {payload.dtype} array reaches the data party; "
                            "nothing derived from the labels may reach it in the clear "
                            "(flaw: plaintext_input_gradient)", ("plaintext_input_gradient",))
        declares_mask = m.kind == MASKED or (m.kind == CIPHERTEXT and m.receiver == DATA
                                             and not m.reason and m.mask_bits is not None)
        if drawn is not None and declares_mask:
            self._check_drawn_masks(m, drawn)

    def _check_drawn_masks(self, m: Message, drawn) -> None:
        """The masks the sender drew for this message must be there, and as wide as declared."""
        if not drawn or max(width for _, width in drawn) == 0:
            return self._violation(m, "declared masked, but the sender drew no mask (or an "
                                   "all-zero one): the value goes out unmasked, as when ε_acc "
                                   "starts at zero (flaw: zero_initial_noise)",
                                   ("zero_initial_noise",))
        widest = max(width for _, width in drawn)
        if widest + MASK_WIDTH_SLACK < m.mask_bits:
            self._violation(m, f"weak mask: the mask drawn for it spans {widest} bits, "
                            f"{m.mask_bits} declared over {m.value_bits}-bit values "
                            "(flaw: weak_masks)", ("weak_masks",))

    def _check_ciphertext(self, m: Message, payload) -> None:
        if not isinstance(payload, EncryptedArray):
            raise LeakageError(f"{m.where}: declared ciphertext but the payload is "
                               f"{type(payload).__name__}, not an EncryptedArray")
        if self.public_key is None or payload.public_key != self.public_key:
            raise LeakageError(f"{m.where}: ciphertext is not under the data party's public key")
        paillier.check_ciphertexts(payload, payload.public_key, m.where)
        n = self.public_key.n
        if any(int(c) % n == 1 for c in payload.ciphertexts.ravel().tolist()):
            self._violation(m, "a ciphertext c ≡ 1 (mod n) carries no Paillier randomness r^n: "
                            "anyone who knows n reads m = (c − 1)/n "
                            "(flaw: no_paillier_randomness)", ("no_paillier_randomness",))
        if getattr(payload, "exponents", None) is not None:
            self._violation(m, "ciphertexts travel with per-value public exponents: every "
                            "value's order of magnitude is in the clear "
                            "(flaw: public_exponents)", ("public_exponents",))

    # -- record and report ------------------------------------------------------------------
    def _record(self, m: Message, payload) -> None:
        m.nbytes = nbytes_of(payload, self.public_key)
        if self.keep_payloads:
            m.payload = payload
        self.messages.append(m)
        if self.transcript is not None:
            record = {key: value for key, value in m.declaration().items() if value is not None}
            record["payload"] = jsonable(payload)
            self.transcript.write(json.dumps(record) + "\n")

    def view(self, party: str) -> list[Message]:
        """Everything ``party`` received, in order."""
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}; expected one of {PARTIES}")
        return [m for m in self.messages if m.receiver == party]

    def totals(self) -> dict:
        """Messages and bytes sent by each party."""
        out = {p: {"messages": 0, "bytes": 0} for p in PARTIES}
        for m in self.messages:
            out[m.sender]["messages"] += 1
            out[m.sender]["bytes"] += m.nbytes
        return out

    def metrics(self) -> dict:
        """Messages, bytes, the leakage table and the time and operations per step."""
        totals = self.totals()
        return {"messages": sum(t["messages"] for t in totals.values()),
                "bytes": sum(t["bytes"] for t in totals.values()), "per_party": totals,
                "leakage": self.report(), "step_seconds": dict(self.step_seconds),
                "step_ops": {k: dict(v) for k, v in self.step_ops.items()}}

    def report(self) -> list[dict]:
        """Per step and message name: who sent what to whom, its kind, count, bytes and what
        one such message tells its receiver."""
        rows: dict[tuple, dict] = {}
        for m in self.messages:
            key = (m.step, m.sender, m.receiver, m.name, m.kind)
            row = rows.setdefault(key, {"step": m.step, "sender": m.sender, "receiver": m.receiver,
                                        "name": m.name, "kind": m.kind, "count": 0, "bytes": 0,
                                        "learned": m.learned()})
            row["count"] += 1
            row["bytes"] += m.nbytes
        return list(rows.values())


# What the parties learn over a whole run, with the numbers `python acml.py audit` measured on
# the real protocol (256-bit demo keys; tests/attacks/test_own_leaks.py keeps each attack succeeding
# unmitigated and failing mitigated). One message's line above says what ONE message reveals.
CUMULATIVE_LEAKS = [
    "what the parties learn over the whole run (measured by `python acml.py audit`):",
    "  L1 label party (semi-honest): the z of two epochs give X from d + 2 known rows (R² = "
    "1.000, 48 rows, d = h = 8) and X·Xᵀ without any (the column space of z; h ≥ d); with h < d "
    "(the default run) most of X (R² 0.74 after 3 epochs, README); no noise on the weights "
    "stops it; input perturbation (--dp-epsilon, off by default) makes X differentially private",
    "  L4 data party (semi-honest), with a bottom model: δ·Wᵀ gives the labels, AUC 0.97–0.98",
    "  L2 a deviating label party reads X exactly (73% of X in 4 epochs, weights identical to an "
    "honest run, 0 findings): nothing here detects it",
    "  L3 a deviating data party read W_B through interval masks (one crafted prediction, ~1–2 "
    "bits per ciphertext); the masks are now uniform mod n: 0 of W_B read",
    "  L5 label party (semi-honest): prediction gives it z_new = X_new·W + b of every row it "
    "scores, so X_new from d + 2 known predicted rows (R² = 1.000), from its training view alone "
    "(L1's X, then W; R² = 1.000), or from W after `export`; in two processes it also learns "
    "which ids were scored",
]


def leakage_lines(rows, *, cumulative: bool = True) -> list[str]:
    """The report's table: one line per message type; then (``cumulative``) the whole run's
    leaks with their audit numbers. Each column is as wide as its widest cell plus two spaces
    (at least its heading's), so a long message name ("label ids, blinded twice") never runs
    into the next column."""
    columns = [("step", lambda row: str(row["step"])),
               ("from → to", lambda row: f"{row['sender']} → {row['receiver']}"),
               ("message", lambda row: str(row["name"])),
               ("kind", lambda row: str(row["kind"]))]
    widths = [max([len(title)] + [len(cell(row)) for row in rows]) + 2 for title, cell in columns]
    count_width = max([5] + [len(str(row["count"])) for row in rows])

    def line(cells, count, learned):
        return ("  " + "".join(f"{cell:<{width}}" for cell, width in zip(cells, widths))
                + f"{count:>{count_width}}  {learned}")

    lines = [line([title for title, _ in columns], "count", "learns")]
    for row in rows:
        lines.append(line([cell(row) for _, cell in columns], row["count"], row["learned"]))
    return lines + ([""] + CUMULATIVE_LEAKS if cumulative else [])
