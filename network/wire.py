"""The wire: authenticated frames between the two parties over one TCP connection.

protocol.py says what crosses and checks every declaration; this module only carries bytes
between two processes, and refuses anything that did not come, intact and in order, from the
peer that proved the shared token.

Connection set-up (:func:`accept_peer` at the data party, :func:`connect_peer` at the label
party):

1. optional mutual TLS 1.3 (:class:`TLSConfig`): each side checks the other's certificate
   against the CA;
2. a challenge–response on the shared token, in three small, body-less frames::

       data  → label   hello    {version, role "data",  nonce_D}
       label → data    hello    {version, role "label", nonce_L, proof_L}
       data  → label   welcome  {proof_D}            (or "refused")

   with ``PRK = HKDF-Extract(salt = nonce_D ‖ nonce_L, key = token)`` and each proof
   ``HKDF-Expand(PRK, version ‖ role ‖ " proof")``. The role is inside the proof, so a proof
   cannot be reflected back at its sender; both nonces are fresh (``secrets``), so a recorded
   proof is worthless in another session;
3. two session keys from the same PRK, one per direction:
   ``HKDF-Expand(PRK, version ‖ " data->label key")`` and ``"... label->data key"``.

Frames, every one of them, handshake included (all integers big-endian)::

    prefix      b"ACML" | sequence number u64 | header length u32 | body length u64   (24 bytes)
    [prefix tag]                                                                      (32 bytes)
    header      JSON object, UTF-8
    [header tag]                                                                      (32 bytes)
    body        raw bytes
    [frame tag]                                                                       (32 bytes)

The tags (after the handshake only) are HMAC-SHA256 under the sender's direction key, each over
the direction label, everything of the frame before it, and the tag's own name: the prefix tag
makes the lengths trustworthy before anything else is read, the header tag lets the receiver
judge the header (``expect``) before it reads the body, and the frame tag covers the whole
frame. Each direction numbers its frames 0, 1, 2, ... (the handshake's frames included); the
receiver knows which number is due, so a replayed, reordered or dropped frame is refused at its
prefix, and an altered one at its first tag: at once, with one line naming the frame, and
nothing of it is used. A connection that refused a frame refuses everything after it.

Limits: ``timeout`` bounds the wait for each frame of the session (the peer's computing and the
transfer); ``handshake_timeout`` bounds the whole set-up of one connection. The data party
authenticates connections in parallel, up to MAX_PENDING_HANDSHAKES at once; a newcomer is
always admitted, the oldest pending handshake among the addresses holding two or more making
room for it (:class:`_PendingHandshakes` says why), so idle connections cannot keep the real
label party out.

A party that stops on a refusal the protocol can report (a σ or a training plan it refuses, a
resume it cannot make, a peer's PSI set over its cap, a malformed message) first sends one
authenticated frame ``{"type": "stopped", "reason": <its one line>}``, a frame kind of its own
like ``message`` and ``done``, and the other side stops with "the label party stopped: <that
line>" instead of "closed the connection" (:meth:`Connection.send_stop`).

The token must be random. Anyone who records a handshake (or plays the data party to the
label party once) holds nonces and a proof computed from the token: with them, candidate tokens
can be tested offline, as fast as HMAC runs. 256 random bits make that hopeless; a password
does not. :func:`check_token` refuses anything that measures under 256 bits, and
``python acml.py token`` makes one (:func:`make_token`). A password-authenticated key exchange
(PAKE) would leave nothing to guess offline; no well-kept Python PAKE library is among this
project's dependencies (``cryptography`` has none), so the token stays a random key.

What a message frame's body holds, and how it is checked before it is decoded, is frames.py
(:func:`encode_payload`, :func:`decode_payload`, :func:`check_layout`).
Nothing is ever unpickled. Without TLS the frames are authenticated but not encrypted: masked
values and public messages can be read by anyone on the path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import queue
import re
import secrets
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass

from jobs.data import not_a_regular_file


VERSION = "acml-tcp-2"
MAGIC = b"ACML"
PREFIX = struct.Struct(">4sQIQ")  # magic, sequence number, header length, body length
TAG_BYTES = hashlib.sha256().digest_size
NONCE_BYTES = 32
DATA, LABEL = "data", "label"  # the two roles; the same strings as protocol.DATA and LABEL

MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024  # default cap on a frame's body; larger frames are refused
HANDSHAKE_HEADER_BYTES = 1024  # before the token is proven, only tiny, body-less frames pass
HANDSHAKE_SECONDS = 10.0  # default handshake_timeout
DEFAULT_TIMEOUT = 300.0
MAX_PENDING_HANDSHAKES = 64  # connections authenticated at once; then the oldest makes room
LOG_EACH, LOG_EVERY_SECONDS = 10, 5.0  # accept_peer's refusals: each line, then counts
RETRY_SECONDS = 0.2  # connect_peer's pause between attempts
STOPPED = "stopped"  # the frame type by which a party says why it stops (Connection.send_stop)
MAX_STOP_REASON_CHARS = 500
STOP_SECONDS = 2.0  # the most a stopping party spends telling the other why
TICK_SECONDS = 0.05  # accept_peer's polling interval

# How the limits are named in messages: the command-line flags that set them.
TIMEOUT_NAME = "--timeout"
HANDSHAKE_TIMEOUT_NAME = "--handshake-timeout"



class TransportError(ConnectionError):
    """The wire failed: a timeout, a disconnect, a malformed, forged or unexpected frame (the
    frame bodies' checks in frames.py raise it too)."""


def one_line(text) -> str:
    """``text`` (anything str() takes) with every run of whitespace one space: a peer's words
    quoted in an error stay on the error's one line."""
    return " ".join(str(text).split())


def printable(text, limit: int = 500) -> str:
    """A peer's words made safe to print: every character that is not printable (terminal
    escapes, bidirectional overrides, control characters) as a ?, at most ``limit`` characters.
    An authenticated peer is still a peer: its reason must not rewrite this party's terminal."""
    text = one_line(text)
    shown = "".join(character if character.isprintable() else "?" for character in text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def refuse_constant(name):
    """json.loads' parse_constant for untrusted JSON: NaN and ±Infinity are no JSON."""
    raise ValueError(f"{name} is not JSON")



class AuthenticationError(TransportError):
    """The peer did not prove the shared token (or its TLS certificate), or refused ours."""


class PeerStopped(TransportError):
    """The peer stopped and said why, in an authenticated ``stopped`` frame:
    "the label party stopped: <its one line>"."""


# ----------------------------------------------------------------------------------------------
# The shared token and addresses
# ----------------------------------------------------------------------------------------------
TOKEN_PREFIX = "acml-"  # what `python acml.py token` puts before its 64 hex digits
TOKEN_BYTES = 32  # the random bytes of a made token: 256 bits
MIN_FORM_BITS = 192  # the hex digits of a token of the made form: 3/4 of their 256 bits
HEX_TOKEN = re.compile(r"(?:acml-)?([0-9a-fA-F]{64})")
MAKE_TOKEN = "make one with: python acml.py token --out token.txt"
# The alphabet a character is assumed drawn from, by class: the estimate charges each
# unpredictable character log2 of the sum of the classes the token uses.
CHARACTER_CLASSES = ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10))
PUNCTUATION_CLASS = 33  # space and the 32 ASCII punctuation marks
OTHER_CLASS = 128  # anything else (non-ASCII): generous, it is rare in tokens
SHORTEST_PATTERN = 3  # a repeat or a run shorter than this is charged as single characters


def make_token() -> str:
    """A fresh token: ``acml-`` and 64 hex digits, 256 bits from ``secrets``."""
    return TOKEN_PREFIX + secrets.token_hex(TOKEN_BYTES)


def _alphabet_size(text: str) -> int:
    """The size of the union of the character classes ``text`` draws from."""
    size = sum(count for belongs, count in CHARACTER_CLASSES
               if any(c.isascii() and belongs(c) for c in text))
    if any(c.isascii() and not c.isalnum() for c in text):
        size += PUNCTUATION_CLASS
    if any(not c.isascii() for c in text):
        size += OTHER_CLASS
    return max(size, 2)


def _longest_repeat(text: str, start: int) -> int:
    """The longest prefix of text[start:] that also starts at an earlier position (it may run
    into text[start:], as "abcabcabc" repeats "abc" twice)."""
    best = 0
    for earlier in range(start):
        length = 0
        while start + length < len(text) and text[earlier + length] == text[start + length]:
            length += 1
        best = max(best, length)
    return best


def _run_length(text: str, start: int) -> int:
    """How many characters from ``start`` step by one constant -1, 0 or +1 in code point
    ("aaaa", "1234", "zyx")."""
    if start + 1 >= len(text):
        return 1
    step = ord(text[start + 1]) - ord(text[start])
    if step not in (-1, 0, 1):
        return 1
    length = 2
    while start + length < len(text) and \
            ord(text[start + length]) - ord(text[start + length - 1]) == step:
        length += 1
    return length


def measured_entropy_bits(text: str, alphabet_size: int | None = None) -> float:
    """A conservative estimate of the guessing entropy of ``text``, in bits.

    The text is read left to right as the shortest description a guesser could use: a repeat
    of earlier text (``password-password``) costs log2(where it starts × how long), a run of
    one constant step (``aaaa``, ``1234``) log2(alphabet × 3 steps × how long), and any other
    character log2(alphabet), the alphabet being the union of the classes the text draws from
    (lower case 26, upper case 26, digits 10, space and punctuation 33). Each character is
    assumed drawn uniformly: the estimate can only be too high, never too low, for text a
    person chose. It cannot see dictionary words, names or dates, so a long phrase of words
    still measures high: that is why the token should come from ``acml.py token``, whose form
    is accepted as it is.
    """
    size = alphabet_size or _alphabet_size(text)
    bits, position = 0.0, 0
    while position < len(text):
        repeat, run = _longest_repeat(text, position), _run_length(text, position)
        if max(repeat, run) >= SHORTEST_PATTERN:
            if repeat >= run:
                bits += math.log2(position * repeat)
                position += repeat
            else:
                bits += math.log2(size * 3 * run)
                position += run
        else:
            bits += math.log2(size)
            position += 1
    return bits


def check_token(token: bytes, source: str = "the token") -> bytes:
    """The token, if it is of the form ``python acml.py token`` makes; ValueError naming
    ``source`` otherwise, in one line that says how to make one.

    The form: ``acml-`` and 64 hex digits (bare ``secrets.token_hex(32)`` too), 256 bits. Two
    checks catch a person's hand in it: the digits must measure at least MIN_FORM_BITS
    (:func:`measured_entropy_bits`; a random draw measures 251 on average and none of 20,000
    draws measured under 223), which refuses "0000…", "0123…" or 32 digits written twice; and
    the 32 bytes must not all be printable ASCII, which refuses a phrase written in hex (a
    random draw is all printable with probability (95/256)^32, about 2e-14).

    Why nothing else, not even text that measures 256 bits: one recorded handshake lets anyone
    test guesses of the token offline (module docstring), and an estimate of a phrase's entropy
    cannot see words: a review found a 60-character quotation measuring 322 bits. A hash of a
    password still passes (nothing can tell it from random): make the token with the command.
    """
    if not isinstance(token, (bytes, bytearray)):
        raise ValueError(f"{source} must be bytes, got {type(token).__name__}")
    token = bytes(token)
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text; {MAKE_TOKEN}") from None
    form = HEX_TOKEN.fullmatch(text)
    if not form:
        raise ValueError(f"{source} is not a made token (acml- and 64 hex digits, "
                         f"{len(text):,} characters given): a password or phrase can be guessed "
                         f"offline from one recorded handshake; {MAKE_TOKEN}")
    digits = form.group(1).lower()
    bits = measured_entropy_bits(digits, alphabet_size=16)
    if bits < MIN_FORM_BITS:
        raise ValueError(f"{source} is {len(digits)} hex digits that measure {bits:.0f} bits "
                         f"of entropy, fewer than {MIN_FORM_BITS}: not random; {MAKE_TOKEN}")
    if all(32 <= byte < 127 for byte in bytes.fromhex(digits)):
        raise ValueError(f"{source} is text written in hex digits, not random bytes; "
                         f"{MAKE_TOKEN}")
    return token


def read_token(token_file=None, environ=None) -> bytes:
    """The shared secret: the file's text without surrounding whitespace, else $ACML_TOKEN.

    See :func:`check_token` for what is accepted, and the module docstring for why it must be
    random: a recorded handshake lets anyone test guesses of the token offline.
    """
    environ = os.environ if environ is None else environ
    if token_file:
        problem = not_a_regular_file(token_file)  # a FIFO would block the open forever
        if problem:
            raise ValueError(f"--token-file {token_file}: {problem}")
        try:
            with open(token_file, "rb") as handle:
                token = handle.read().strip()
        except OSError as error:
            raise ValueError(f"--token-file {token_file}: cannot read it "
                             f"({error.strerror or type(error).__name__})") from None
        source = f"the token file {token_file}"
    elif environ.get("ACML_TOKEN"):
        token, source = environ["ACML_TOKEN"].strip().encode("utf-8"), "ACML_TOKEN"
    else:
        raise ValueError("no shared token: pass --token-file PATH or set ACML_TOKEN")
    return check_token(token, source)


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6 host]:PORT') -> (host, port)."""
    host, colon, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} takes HOST:PORT with a port in 0..65535, got {text!r}")
    return host, int(port)


# ----------------------------------------------------------------------------------------------
# Keys: HKDF-SHA256 (RFC 5869) from the token and both nonces
# ----------------------------------------------------------------------------------------------
def hkdf_extract(salt: bytes, key_material: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256: a pseudorandom key from the input key material."""
    return hmac.new(salt, key_material, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256: ``length`` bytes bound to ``info``."""
    if not 0 < length <= 255 * TAG_BYTES:
        raise ValueError(f"HKDF-Expand length must lie in 1..{255 * TAG_BYTES}, got {length}")
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output, counter = output + block, counter + 1
    return output[:length]


def _session_secret(token: bytes, data_nonce: bytes, label_nonce: bytes) -> bytes:
    return hkdf_extract(data_nonce + label_nonce, token)


def _proof(prk: bytes, role: str) -> bytes:
    return hkdf_expand(prk, f"{VERSION} {role} proof".encode())


def _direction(sender: str) -> bytes:
    """The direction label, inside both the key derivation and every tag."""
    receiver = LABEL if sender == DATA else DATA
    return f"{VERSION} {sender}->{receiver}".encode()


def _frame_key(prk: bytes, sender: str) -> bytes:
    return hkdf_expand(prk, _direction(sender) + b" key")


class _Tags:
    """The three tags of one frame: each an HMAC over the direction, the frame so far, its name."""

    def __init__(self, key: bytes, direction: bytes, prefix: bytes):
        self._mac = hmac.new(key, direction, hashlib.sha256)
        self._mac.update(prefix)

    def add(self, data) -> None:
        self._mac.update(data)

    def tag(self, name: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(name)
        return mac.digest()


# ----------------------------------------------------------------------------------------------
# TLS
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TLSConfig:
    """Paths (PEM) to this party's certificate and key, and the CA that signed the peer's.

    Both parties use mutual TLS 1.3: each verifies the other's certificate with ``ca``. The
    label party also checks that the data party's certificate names the host it connects to
    (an IP address or DNS name in its subjectAltName), or ``server_name`` if given.
    """

    cert: str
    key: str
    ca: str
    server_name: str | None = None


def tls_context(config: TLSConfig, *, server: bool) -> ssl.SSLContext:
    """An SSLContext for one side: TLS 1.3 or later, the peer's certificate required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = not server
    for what, load in (("certificate or key", lambda: context.load_cert_chain(config.cert,
                                                                              config.key)),
                       ("CA", lambda: context.load_verify_locations(cafile=config.ca))):
        try:
            load()
        except (OSError, ssl.SSLError) as error:
            files = f"{config.cert}, {config.key}" if what != "CA" else config.ca
            raise ValueError(f"TLS {what} ({files}): cannot load it "
                             f"({one_line(getattr(error, 'strerror', None) or error)})") from None
    return context


def _as_context(tls, *, server: bool) -> ssl.SSLContext | None:
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, TLSConfig):
        return tls_context(tls, server=server)
    raise TypeError(f"tls must be a TLSConfig, an ssl.SSLContext or None, not "
                    f"{type(tls).__name__}")


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
class Connection:
    """One TCP (or TLS) connection that carries numbered, authenticated frames.

    ``timeout`` bounds the wait for each whole frame. A frame whose declared header or body
    exceeds its cap is refused before it is read. Counters: ``bytes_sent``, ``bytes_received``,
    ``frames_sent``, ``frames_received`` (all frames, handshake included, tags included).
    """

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT,
                 max_frame_bytes: int = MAX_FRAME_BYTES, peer: str = "the peer"):
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Without it, Nagle's algorithm holds each small write (a frame is six) until the
            # peer acknowledges the last, and the peer delays its ACK: ~40 ms per frame, 88 ms
            # per ping-pong of two frames measured on localhost (0.3 ms with it).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = float(timeout)
        self.max_header_bytes = MAX_HEADER_BYTES
        self.max_frame_bytes = int(max_frame_bytes)
        self.peer = peer
        self.bytes_sent = self.bytes_received = self.frames_sent = self.frames_received = 0
        self._sent_sequence = self._received_sequence = 0
        self._send_key = self._receive_key = None  # set once the handshake has succeeded
        self._send_direction = self._receive_direction = b""
        self._deadline = None  # the handshake's own deadline, while it runs
        self._limit_name = TIMEOUT_NAME
        self._failed = None  # why this connection refused a frame; it then refuses everything
        self._refused_content = False  # the refusal judged an authentic header, not the stream
        self._send_broken = False  # a frame was cut off mid-send: nothing more can follow it
        self.evicted = False  # closed by accept_peer to make room for a newer handshake

    @property
    def authenticated(self) -> bool:
        return self._receive_key is not None

    def _start_session(self, prk: bytes, role: str) -> None:
        other = LABEL if role == DATA else DATA
        self._send_key, self._send_direction = _frame_key(prk, role), _direction(role)
        self._receive_key, self._receive_direction = _frame_key(prk, other), _direction(other)

    # -- sending ---------------------------------------------------------------------------------
    def send_frame(self, header: dict, body=b"", *, what: str = "a frame",
                   seconds: float | None = None) -> None:
        """Write one frame: prefix, header and body, with their tags once authenticated, within
        ``seconds`` (default: the connection's timeout)."""
        self._refuse_if_failed(what)
        encoded = json.dumps(header, allow_nan=False).encode("utf-8")
        if not isinstance(body, bytes):
            body = memoryview(body).cast("B")
        body_length = len(body)
        if len(encoded) > self.max_header_bytes or body_length > self.max_frame_bytes:
            raise TransportError(f"refusing to send {what}: {len(encoded)} header and "
                                 f"{body_length} body bytes exceed the caps of "
                                 f"{self.max_header_bytes} and {self.max_frame_bytes} "
                                 "(raise --max-frame-mb)")
        prefix = PREFIX.pack(MAGIC, self._sent_sequence, len(encoded), body_length)
        if self._send_key is None:
            parts = [prefix, encoded, body]
        else:
            tags = _Tags(self._send_key, self._send_direction, prefix)
            prefix_tag = tags.tag(b"prefix")
            tags.add(encoded)
            header_tag = tags.tag(b"header")
            tags.add(body)
            parts = [prefix, prefix_tag, encoded, header_tag, body, tags.tag(b"frame")]
        deadline = time.monotonic() + (self.timeout if seconds is None else seconds)
        self._send_broken = True  # until the whole frame is out
        try:
            for part in parts:
                if len(part):
                    self.sock.settimeout(self._remaining(deadline))
                    self.sock.sendall(part)
            self._send_broken = False
        except socket.timeout:
            self._failed = f"sending {what} timed out"
            raise TransportError(f"sending {what} to {self.peer} took longer than "
                                 f"{self._limit_text()}") from None
        except OSError as error:
            self._failed = f"sending {what} failed"
            self._raise_if_stopped()  # the peer may have said why before it closed
            raise self._error_type(error)(f"{self.peer} closed the connection while this side "
                                          f"sent {what} ({self._describe(error)})") from None
        self._sent_sequence += 1
        self.bytes_sent += PREFIX.size + len(encoded) + body_length
        self.bytes_sent += 3 * TAG_BYTES if self._send_key is not None else 0
        self.frames_sent += 1

    # -- receiving -------------------------------------------------------------------------------
    def receive_frame(self, what: str = "a frame", *, expect=None) -> tuple[dict, bytes]:
        """(header, body) of the next frame, refused unless it is the one due and intact.

        ``expect(header)``, if given, runs as soon as the header is read (and, after the
        handshake, authenticated), before the body is read: it raises to refuse the frame, for
        instance because its declared shape or size is not what the protocol expects next.
        The body is returned only after the frame tag verifies.
        """
        self._refuse_if_failed(what)
        try:
            return self._receive(what, expect)
        except BaseException as error:
            self._failed = f"it refused {what}: {one_line(error)}"
            raise

    def _receive(self, what, expect):
        deadline = time.monotonic() + self.timeout
        prefix = self._read(PREFIX.size, deadline, what)
        magic, sequence, header_length, body_length = PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise TransportError(f"{self.peer} sent something that is not an ACML frame "
                                 f"(it starts {magic!r}) while this side waited for {what}")
        due = self._received_sequence
        tags = None
        if self._receive_key is not None:
            tags = _Tags(self._receive_key, self._receive_direction, prefix)
            self._check_tag(tags, "prefix", deadline, what)
        if sequence != due:
            raise TransportError(f"refused {what}: {self.peer}'s frame is number {sequence}, "
                                 f"number {due} is due (a replayed, reordered or dropped frame)")
        if header_length > self.max_header_bytes or body_length > self.max_frame_bytes:
            raise TransportError(f"refusing a frame from {self.peer} while waiting for {what}: "
                                 f"{header_length} header and {body_length} body bytes exceed the "
                                 f"caps of {self.max_header_bytes} and {self.max_frame_bytes}")
        raw = self._read(header_length, deadline, what, True)
        if tags is not None:
            tags.add(raw)
            self._check_tag(tags, "header", deadline, what)
        header = _parse_header(raw, self.peer, what)
        stopped = tags is not None and header.get("type") == STOPPED
        if expect is not None and not stopped:
            try:
                expect(header)
            except BaseException:
                self._refused_content = True
                raise
        body = self._read(body_length, deadline, what, True)
        if tags is not None:
            tags.add(body)
            self._check_tag(tags, "frame", deadline, what)
        if stopped:  # authentic: the peer's own word on why it stops
            reason = one_line(header.get("reason"))[:MAX_STOP_REASON_CHARS] or "no reason given"
            raise PeerStopped(f"{self.peer} stopped: {printable(reason)}")
        self._received_sequence += 1
        self.bytes_received += PREFIX.size + header_length + body_length
        self.bytes_received += 3 * TAG_BYTES if tags is not None else 0
        self.frames_received += 1
        return header, body

    def _check_tag(self, tags: _Tags, part: str, deadline: float, what: str) -> None:
        """Read the tag of ``part`` and compare it with ours, in constant time."""
        received = self._read(TAG_BYTES, deadline, what, True)
        if not hmac.compare_digest(tags.tag(part.encode()), received):
            raise TransportError(f"refused {what}: the {part} tag of {self.peer}'s frame "
                                 f"{self._received_sequence} does not verify (altered, "
                                 "truncated or forged on the way)")

    def _read(self, count: int, deadline: float, what: str, started: bool = False) -> bytes:
        buffer = bytearray(count)
        view, got = memoryview(buffer), 0
        while got < count:
            try:
                self.sock.settimeout(self._remaining(deadline))
                received = self.sock.recv_into(view[got:], min(count - got, 1 << 20))
            except socket.timeout:
                raise TransportError(f"{self.peer} did not deliver {what} within "
                                     f"{self._limit_text()}") from None
            except OSError as error:
                raise self._error_type(error)(f"{self.peer} broke the connection while this "
                                              f"side waited for {what} "
                                              f"({self._describe(error)})") from None
            if received == 0:
                middle = " in the middle of a frame" if started or got else ""
                raise TransportError(f"{self.peer} closed the connection{middle} while this side "
                                     f"waited for {what}")
            got += received
        return bytes(buffer)

    # -- limits and errors -----------------------------------------------------------------------
    def _remaining(self, deadline: float) -> float:
        """Seconds left before ``deadline`` (or the handshake's own, if sooner); else timeout."""
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout
        return remaining

    def _limit_text(self) -> str:
        if self._deadline is not None:
            return f"the handshake limit of {self._handshake_seconds:g} s ({self._limit_name})"
        return f"{self.timeout:g} s ({self._limit_name})"

    def _error_type(self, error):
        """A TLS failure before authentication is the peer refusing us: not worth a retry."""
        if isinstance(error, ssl.SSLError) and not self.authenticated:
            return AuthenticationError
        return TransportError

    @staticmethod
    def _describe(error) -> str:
        if isinstance(error, ssl.SSLError):
            return f"TLS: {one_line(error.reason or error)}"
        return type(error).__name__

    def _refuse_if_failed(self, what):
        if self._failed is not None:
            raise TransportError(f"cannot carry {what}: the connection to {self.peer} already "
                                 f"failed ({self._failed})")

    def send_stop(self, reason: str) -> bool:
        """Tell the peer in one authenticated ``stopped`` frame why this side stops, so that it
        says so instead of "closed the connection". Sent only where the wire still carries it:
        after the handshake, with no frame of ours cut off mid-send, and unless the stream from
        the peer failed (a forged, altered or missing frame: there is no one to tell, or the
        wrong one). Within STOP_SECONDS; a failure to send is ignored. True if it went out."""
        if self._send_key is None or self._send_broken or (self._failed is not None and
                                                           not self._refused_content):
            return False
        try:
            self._failed = None  # the refusal was of a frame's content: this direction is sound
            self.send_frame({"type": STOPPED, "reason": one_line(reason)[:MAX_STOP_REASON_CHARS]},
                            what="the reason this side stops", seconds=STOP_SECONDS)
        except TransportError:
            return False
        finally:
            self._failed = self._failed or "this side stopped"
        return True

    def _raise_if_stopped(self) -> None:
        """After a failed send: if the peer's next frame, already here or arriving within
        STOP_SECONDS, is its ``stopped`` frame, raise PeerStopped with its reason."""
        if self._receive_key is None or self._send_key is None:
            return
        saved, self._deadline = self._deadline, time.monotonic() + STOP_SECONDS
        try:
            self._receive("the reason the peer stopped", lambda header: _not_stopped())
        except PeerStopped:
            raise
        except Exception:  # noqa: BLE001 — nothing, or not its reason: the send's error stands
            pass
        finally:
            self._deadline = saved

    def stop(self, reason: str) -> None:
        """Tell the peer why (:meth:`send_stop`), then close without cutting that short: no
        more sending, and what the peer still sends is read and dropped for up to STOP_SECONDS
        or until it closes (closing on unread data would reset the connection, and the reset
        can destroy the reason before the peer reads it)."""
        if self.send_stop(reason):
            try:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + STOP_SECONDS
                while (left := deadline - time.monotonic()) > 0:
                    self.sock.settimeout(left)
                    if not self.sock.recv(1 << 16):
                        break
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _not_stopped():
    raise TransportError("not a stopped frame")


def _parse_header(raw: bytes, peer: str, what: str) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransportError(f"{peer} sent a frame whose header is not JSON while this side "
                             f"waited for {what}") from None
    if not isinstance(header, dict):
        raise TransportError(f"{peer} sent a frame whose header is not a JSON object while "
                             f"this side waited for {what}")
    return header


# ----------------------------------------------------------------------------------------------
# The handshake: optional TLS, then the challenge–response on the token, then session keys
# ----------------------------------------------------------------------------------------------
def _nonce_of(frame: dict) -> bytes:
    nonce = frame.get("nonce")
    try:
        nonce = bytes.fromhex(nonce) if isinstance(nonce, str) else b""
    except ValueError:
        nonce = b""
    if len(nonce) != NONCE_BYTES:
        raise AuthenticationError(f"the peer's hello carries no valid {NONCE_BYTES}-byte nonce")
    return nonce


def _same_proof(proof, expected: bytes) -> bool:
    """Constant-time comparison; a proof that is no hex string simply fails."""
    try:
        given = bytes.fromhex(proof) if isinstance(proof, str) else b""
    except ValueError:
        given = b""
    return hmac.compare_digest(given, expected)


def _check_hello(frame: dict, role: str) -> None:
    if frame.get("type") != "hello" or frame.get("role") != role:
        raise AuthenticationError(f"the peer is not an ACML {role} party (no {role} hello)")
    if frame.get("version") != VERSION:
        raise AuthenticationError(f"the peer speaks {one_line(frame.get('version'))[:40]!r}, "
                                  f"this side {VERSION!r}")


def _prove_as_data(connection: Connection, token: bytes) -> None:
    """The listening side: challenge, check the label party's proof, then prove itself."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    connection.send_frame({"type": "hello", "version": VERSION, "role": DATA,
                           "nonce": nonce.hex()}, what="the hello")
    hello, _ = connection.receive_frame("the label party's proof of the token")
    _check_hello(hello, LABEL)
    prk = _session_secret(token, nonce, _nonce_of(hello))
    if not _same_proof(hello.get("proof"), _proof(prk, LABEL)):
        connection.send_frame({"type": "refused", "reason": "wrong token"}, what="the refusal")
        raise AuthenticationError("the peer did not prove the shared token (wrong token)")
    connection.send_frame({"type": "welcome", "proof": _proof(prk, DATA).hex()},
                          what="the proof of the token")
    connection._start_session(prk, DATA)


def _prove_as_label(connection: Connection, token: bytes) -> None:
    """The connecting side: answer the challenge, then check the data party's own proof."""
    hello, _ = connection.receive_frame("the data party's hello")
    _check_hello(hello, DATA)
    nonce = secrets.token_bytes(NONCE_BYTES)
    prk = _session_secret(token, _nonce_of(hello), nonce)
    connection.send_frame({"type": "hello", "version": VERSION, "role": LABEL,
                           "nonce": nonce.hex(), "proof": _proof(prk, LABEL).hex()},
                          what="the proof of the token")
    answer, _ = connection.receive_frame("the data party's answer to the proof")
    if answer.get("type") == "refused":
        raise AuthenticationError("the data party refused this connection: wrong token")
    if answer.get("type") != "welcome" or not _same_proof(answer.get("proof"), _proof(prk, DATA)):
        raise AuthenticationError("the data party did not prove the shared token; refusing it")
    connection._start_session(prk, LABEL)


def _handshake(connection: Connection, prove, token: bytes, seconds: float, context, *,
               server_side: bool, server_hostname=None) -> Connection:
    """TLS (if a context is given) and ``prove``, all within ``seconds``, under tight caps;
    then the connection opens up to its configured limits. Returns the (maybe wrapped) one."""
    limits = (connection.max_header_bytes, connection.max_frame_bytes)
    connection.max_header_bytes, connection.max_frame_bytes = HANDSHAKE_HEADER_BYTES, 0
    connection._deadline = time.monotonic() + seconds
    connection._handshake_seconds, connection._limit_name = seconds, HANDSHAKE_TIMEOUT_NAME
    if context is not None:
        try:
            connection.sock.settimeout(seconds)
            connection.sock = context.wrap_socket(connection.sock, server_side=server_side,
                                                  server_hostname=server_hostname)
        except socket.timeout:
            raise TransportError(f"the TLS handshake with {connection.peer} took longer than "
                                 f"{connection._limit_text()}") from None
        except ssl.SSLError as error:
            raise AuthenticationError(f"the TLS handshake with {connection.peer} failed "
                                      f"({one_line(error.reason or error)})") from None
        except OSError as error:
            raise TransportError(f"{connection.peer} broke the connection during the TLS "
                                 f"handshake ({type(error).__name__})") from None
    prove(connection, token)
    connection.max_header_bytes, connection.max_frame_bytes = limits
    connection._deadline, connection._limit_name = None, TIMEOUT_NAME
    return connection


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one (see ``address_of``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


def address_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _PendingHandshakes:
    """The connections accept_peer is authenticating, and which one makes room for a newcomer.

    Why eviction and not a refusal: before a connection proves the token, nothing tells the
    real label party from a stranger. A full table that closes newcomers on arrival (as this
    module once did) lets anyone who holds MAX_PENDING_HANDSHAKES idle connections, reopening
    each as it is closed, keep the real peer out for as long as they like (measured: 32 of
    them, 128 connects in 30 s, kept it out for its whole 30 s timeout). So a newcomer is
    always admitted; when the table is full, one pending handshake is closed to make room: the
    oldest among the addresses that hold two or more (the oldest of all when each holds one).

    * A peer alone at its address is never chosen while any address holds two: strangers must
      hold MAX_PENDING_HANDSHAKES addresses, one connection each, to reach it.
    * A peer that shares its address (loopback, a NAT) is chosen only once every older
      connection of a crowded address is gone: it survives at least MAX_PENDING_HANDSHAKES − A
      arrivals, A the number of addresses the strangers use. (Choosing the oldest of the most
      crowded address, as this class once did, let strangers spread over a few other addresses
      keep the peer's own address the most crowded with a handful of connections, and push the
      peer out after that handful of arrivals: measured, 9 addresses locked out a peer 10 ms
      away for its whole timeout.) The real peer answers the hello within one round trip, so
      it is pushed out only by more than MAX_PENDING_HANDSHAKES − A connections within it.
    * IPv6 addresses count by their /64: one host owns a whole /64.

    What is left is a flood, faster than the real peer's round trip, from many addresses: a
    denial of service that only the network (a firewall, --listen on a private address) can
    stop."""

    def __init__(self):
        self._admitted = {}  # connection -> (host, admission number)
        self._count = 0

    def __len__(self):
        return len(self._admitted)

    def __iter__(self):
        return iter(list(self._admitted))

    def discard(self, connection) -> None:
        self._admitted.pop(connection, None)

    def admit(self, connection, host: str):
        """Take ``connection`` in; return the connection evicted to make room, or None."""
        victim = None
        if len(self._admitted) >= MAX_PENDING_HANDSHAKES:
            per_host = {}
            for other_host, _ in self._admitted.values():
                per_host[other_host] = per_host.get(other_host, 0) + 1
            shared = [other for other, (other_host, _) in self._admitted.items()
                      if per_host[other_host] > 1]
            victim = min(shared or self._admitted, key=lambda other: self._admitted[other][1])
            del self._admitted[victim]
        self._count += 1
        self._admitted[connection] = (address_group(host), self._count)
        return victim


def address_group(host: str) -> str:
    """The unit the pending table counts by: an IPv4 address, or an IPv6 address's /64 (one
    host is given a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class _RefusalLog:
    """accept_peer's log of refused connections: each of the first LOG_EACH refusals on its own
    line, then a count every LOG_EVERY_SECONDS, so strangers knocking cannot flood it."""

    def __init__(self, log):
        self.log, self.lines, self.unsaid, self.evicted = log, 0, 0, 0
        self.last, self.said_at = "", time.monotonic()

    def refused(self, line: str, evicted: bool = False) -> None:
        if self.log is None:
            return
        self.evicted += evicted
        if self.lines < LOG_EACH:
            self.lines += 1
            self.log(line)
            self.said_at = time.monotonic()
            return
        self.unsaid, self.last = self.unsaid + 1, line
        if time.monotonic() - self.said_at >= LOG_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.log is not None and self.unsaid:
            self.log(f"refused {self.unsaid} more connection(s) ({self.evicted} evicted in all "
                     f"to make room for newer ones); the last: {self.last}")
            self.unsaid, self.said_at = 0, time.monotonic()


def accept_peer(listener: socket.socket, token: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                handshake_timeout: float = HANDSHAKE_SECONDS,
                max_frame_bytes: int = MAX_FRAME_BYTES, log=None, tls=None) -> Connection:
    """Wait up to ``timeout`` s for a label party that proves the token; return its connection.

    Every incoming connection is authenticated in its own thread, within ``handshake_timeout``
    s; the first one that proves the token wins, and the others are closed. A connection that
    fails is refused, logged (``log(line)``, from this thread; after LOG_EACH lines, a count
    every LOG_EVERY_SECONDS) and closed, and the wait goes on: strangers knocking, or idling,
    neither end the session nor keep the real peer out. At most MAX_PENDING_HANDSHAKES
    connections are authenticated at once; a newcomer to a full table is admitted and the
    oldest pending handshake among the addresses holding two or more is closed
    (:class:`_PendingHandshakes` says why).
    """
    token = check_token(token)
    context = _as_context(tls, server=True)
    results = queue.Queue()
    pending, lock, finished = _PendingHandshakes(), threading.Lock(), threading.Event()
    refusals = _RefusalLog(log)

    def authenticate(connection, where):
        try:
            outcome = (_handshake(connection, _prove_as_data, token, handshake_timeout, context,
                                  server_side=True), where, None)
        except Exception as error:  # noqa: BLE001 — one refused stranger must not end the wait
            with lock:  # queued before the stranger sees the close, so the log keeps the order
                pending.discard(connection)
                if not finished.is_set():
                    results.put((None, where, error if not connection.evicted else
                                 TransportError(f"evicted: the oldest of "
                                                f"{MAX_PENDING_HANDSHAKES} pending handshakes "
                                                "from its address, to make room for a newer "
                                                "one")))
            connection.close()
            return
        with lock:
            pending.discard(connection)
            if finished.is_set():  # another connection won, or the wait is over
                connection.close()
                return
            results.put(outcome)

    def close_pending():
        with lock:
            finished.set()
            for other in pending:
                other.close()
            while not results.empty():  # proved in the last instant: too late
                late = results.get()[0]
                if late is not None:
                    late.close()

    deadline = time.monotonic() + timeout
    previous_timeout = listener.gettimeout()
    try:
        while True:
            while not results.empty():
                connection, where, error = results.get()
                if connection is not None:
                    connection.peer = "the label party"
                    return connection
                refusals.refused(f"refused a connection from {where}: {one_line(error)}",
                                 evicted=str(error).startswith("evicted"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"no label party proved the token within {timeout:g} s "
                                     f"({TIMEOUT_NAME})")
            listener.settimeout(min(remaining, TICK_SECONDS))
            try:
                sock, address = listener.accept()
            except socket.timeout:
                continue
            except OSError as error:  # e.g. out of file descriptors: wait, then try again
                refusals.refused(f"accepting a connection failed ({type(error).__name__})")
                time.sleep(TICK_SECONDS)
                continue
            where = f"{address[0]}:{address[1]}"
            connection = Connection(sock, timeout=timeout, max_frame_bytes=max_frame_bytes,
                                    peer=f"the peer at {where}")
            with lock:
                victim = pending.admit(connection, address[0])
            if victim is not None:
                victim.evicted = True
                try:  # wakes its thread, which closes it; a close here could race its recv
                    victim.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threading.Thread(target=authenticate, args=(connection, where), daemon=True,
                             name=f"acml-handshake-{where}").start()
    finally:
        close_pending()
        refusals.flush()
        listener.settimeout(previous_timeout)


def connect_peer(host: str, port: int, token: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_SECONDS,
                 max_frame_bytes: int = MAX_FRAME_BYTES, tls=None) -> Connection:
    """Connect to the data party and authenticate, retrying for up to ``timeout`` s.

    A refused connection (the data party is not listening yet), or one reset or closed during
    the handshake, is tried again; a wrong token or a refused certificate is not.
    """
    token = check_token(token)
    context = _as_context(tls, server=False)
    server_name = (tls.server_name if isinstance(tls, TLSConfig) else None) or host
    deadline = time.monotonic() + timeout
    reason = "no attempt finished"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"could not connect to {host}:{port} within {timeout:g} s "
                                 f"({TIMEOUT_NAME}): {reason}")
        try:
            sock = socket.create_connection((host, port), timeout=remaining)
        except ConnectionRefusedError:
            reason = "connection refused (is the data party listening?)"
            time.sleep(min(RETRY_SECONDS, max(remaining, 0)))
            continue
        except socket.timeout:
            reason = "the connection attempt timed out"
            continue
        except OSError as error:
            raise TransportError(f"could not connect to {host}:{port}: "
                                 f"{error.strerror or type(error).__name__}") from None
        connection = Connection(sock, timeout=timeout, max_frame_bytes=max_frame_bytes,
                                peer="the data party")
        try:
            return _handshake(connection, _prove_as_label, token,
                              min(handshake_timeout, remaining), context, server_side=False,
                              server_hostname=server_name if context is not None else None)
        except AuthenticationError:
            connection.close()
            raise
        except TransportError as error:
            connection.close()
            reason = one_line(error)
            time.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
