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
authenticates connections in parallel, so idle or hostile connections never delay the real
label party: each of them holds up only itself, and for its own handshake limit at most.

The token must be random. Anyone who records a handshake (or plays the data party to the
label party once) holds nonces and a proof computed from the token: with them, candidate tokens
can be tested offline, as fast as HMAC runs. A random token of 32 bytes or more makes that
hopeless; a password does not. Make one with::

    python -c "import secrets; print(secrets.token_hex(32))"

What a message frame's body holds, and how it is checked before it is decoded, is frames.py
(:func:`encode_payload`, :func:`decode_payload`, :func:`check_layout`).
Nothing is ever unpickled. Without TLS the frames are authenticated but not encrypted: masked
values and public messages can be read by anyone on the path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
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
MAX_PENDING_HANDSHAKES = 32  # connections authenticated at once; more are closed on arrival
RETRY_SECONDS = 0.2  # connect_peer's pause between attempts
TICK_SECONDS = 0.05  # accept_peer's polling interval

# How the limits are named in messages: the command-line flags that set them.
TIMEOUT_NAME = "--timeout"
HANDSHAKE_TIMEOUT_NAME = "--handshake-timeout"

MIN_TOKEN_BYTES = 32
MIN_HEX_TOKEN_DIGITS = 64  # a hex token carries 4 bits per character: 64 digits = 32 bytes
MIN_TOKEN_SYMBOLS = 8  # distinct characters: refuses "aaaa…" and "0000…" outright


class TransportError(ConnectionError):
    """The wire failed: a timeout, a disconnect, a malformed, forged or unexpected frame (the
    frame bodies' checks in frames.py raise it too)."""


def one_line(text) -> str:
    """``text`` (anything str() takes) with every run of whitespace one space: a peer's words
    quoted in an error stay on the error's one line."""
    return " ".join(str(text).split())


def refuse_constant(name):
    """json.loads' parse_constant for untrusted JSON: NaN and ±Infinity are no JSON."""
    raise ValueError(f"{name} is not JSON")



class AuthenticationError(TransportError):
    """The peer did not prove the shared token (or its TLS certificate), or refused ours."""


# ----------------------------------------------------------------------------------------------
# The shared token and addresses
# ----------------------------------------------------------------------------------------------
def check_token(token: bytes, source: str = "the token") -> bytes:
    """The token, if it looks random enough; ValueError naming ``source`` otherwise.

    A token is text (UTF-8): at least 32 bytes long, and if it is written in hex digits only,
    at least 64 of them, because hex text carries half a byte of entropy per character.
    """
    make = 'make one with: python -c "import secrets; print(secrets.token_hex(32))"'
    if not isinstance(token, (bytes, bytearray)):
        raise ValueError(f"{source} must be bytes, got {type(token).__name__}")
    token = bytes(token)
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text; {make}") from None
    if len(token) < MIN_TOKEN_BYTES:
        raise ValueError(f"{source} holds {len(token)} bytes, fewer than {MIN_TOKEN_BYTES}; {make}")
    if all(c in "0123456789abcdefABCDEF" for c in text) and len(text) < MIN_HEX_TOKEN_DIGITS:
        raise ValueError(f"{source} holds {len(text)} hex digits ({len(text) // 2} bytes of "
                         f"entropy), fewer than {MIN_HEX_TOKEN_DIGITS}; {make}")
    if len(set(text)) < MIN_TOKEN_SYMBOLS:
        raise ValueError(f"{source} uses only {len(set(text))} distinct characters: it is not "
                         f"random; {make}")
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

    @property
    def authenticated(self) -> bool:
        return self._receive_key is not None

    def _start_session(self, prk: bytes, role: str) -> None:
        other = LABEL if role == DATA else DATA
        self._send_key, self._send_direction = _frame_key(prk, role), _direction(role)
        self._receive_key, self._receive_direction = _frame_key(prk, other), _direction(other)

    # -- sending ---------------------------------------------------------------------------------
    def send_frame(self, header: dict, body=b"", *, what: str = "a frame") -> None:
        """Write one frame: prefix, header and body, with their tags once authenticated."""
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
        deadline = time.monotonic() + self.timeout
        try:
            for part in parts:
                if len(part):
                    self.sock.settimeout(self._remaining(deadline))
                    self.sock.sendall(part)
        except socket.timeout:
            self._failed = f"sending {what} timed out"
            raise TransportError(f"sending {what} to {self.peer} took longer than "
                                 f"{self._limit_text()}") from None
        except OSError as error:
            self._failed = f"sending {what} failed"
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
        if expect is not None:
            expect(header)
        body = self._read(body_length, deadline, what, True)
        if tags is not None:
            tags.add(body)
            self._check_tag(tags, "frame", deadline, what)
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

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


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


def accept_peer(listener: socket.socket, token: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                handshake_timeout: float = HANDSHAKE_SECONDS,
                max_frame_bytes: int = MAX_FRAME_BYTES, log=None, tls=None) -> Connection:
    """Wait up to ``timeout`` s for a label party that proves the token; return its connection.

    Every incoming connection is authenticated in its own thread, within ``handshake_timeout``
    s; the first one that proves the token wins, and the others are closed. A connection that
    fails is refused, logged (``log(line)``, from this thread) and closed, and the wait goes
    on: strangers knocking, or idling, neither end the session nor delay the real peer. At most
    MAX_PENDING_HANDSHAKES connections are authenticated at once; more are closed on arrival.
    """
    token = check_token(token)
    context = _as_context(tls, server=True)
    results = queue.Queue()
    pending, lock, finished = set(), threading.Lock(), threading.Event()

    def authenticate(sock, where):
        connection = Connection(sock, timeout=timeout, max_frame_bytes=max_frame_bytes,
                                peer=f"the peer at {where}")
        with lock:
            if finished.is_set():
                connection.close()
                return
            pending.add(connection)
        try:
            outcome = (_handshake(connection, _prove_as_data, token, handshake_timeout, context,
                                  server_side=True), where, None)
        except Exception as error:  # noqa: BLE001 — one refused stranger must not end the wait
            with lock:  # queued before the stranger sees the close, so the log keeps the order
                pending.discard(connection)
                if not finished.is_set():
                    results.put((None, where, error))
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
                if log is not None:
                    log(f"refused a connection from {where}: {one_line(error)}")
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
                if log is not None:
                    log(f"accepting a connection failed ({type(error).__name__})")
                time.sleep(TICK_SECONDS)
                continue
            where = f"{address[0]}:{address[1]}"
            with lock:
                crowded = len(pending) >= MAX_PENDING_HANDSHAKES
            if crowded:
                sock.close()
                if log is not None:
                    log(f"refused a connection from {where}: {MAX_PENDING_HANDSHAKES} handshakes "
                        "already under way")
                continue
            threading.Thread(target=authenticate, args=(sock, where), daemon=True,
                             name=f"acml-handshake-{where}").start()
    finally:
        close_pending()
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
