"""The wire: length-prefixed frames over one TCP connection, after a token handshake.

Frame: ``b"ACML" | header length (u32) | body length (u64) | JSON header | body``, big-endian.
The header names the message (step, sender, receiver, name, kind, declared widths or reason)
and the body's layout (dtype, shape); the body is raw bytes: fixed-width big-endian integers,
float64, a serialised :class:`paillier.EncryptedArray`, or JSON for public values. Nothing is
ever unpickled.

Caveats. Ids are exchanged as public values (as in the paper's vertical setting; private set
intersection would be the production answer). The token authenticates the start of the
connection only; the frames are neither encrypted nor authenticated, and masked values are not
ciphertexts: deploy over TLS or an SSH tunnel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import socket
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from paillier import EncryptedArray, PublicKey
from channel import DATA, LABEL, is_int_array

VERSION = "acml-tcp-1"
MAGIC = b"ACML"
PREFIX = struct.Struct(">4sIQ")  # magic, header length, body length
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024  # default cap on a frame's body; larger frames are refused
HANDSHAKE_HEADER_BYTES = 1024  # before the token is proven, only tiny, body-less frames pass
HANDSHAKE_SECONDS = 10.0
MIN_TOKEN_BYTES = 16
DEFAULT_TIMEOUT = 300.0
MAX_INT_WIDTH = 1 << 16  # bytes per integer on the wire: far above any key size in use


class TransportError(ConnectionError):
    """The wire failed: a timeout, a disconnect, a malformed or unexpected frame. One line."""


class AuthenticationError(TransportError):
    """The peer did not prove the shared token, or refused ours."""


# ----------------------------------------------------------------------------------------------
# The shared token and addresses
# ----------------------------------------------------------------------------------------------
def read_token(token_file=None, environ=None) -> bytes:
    """The shared secret: the file's content without surrounding whitespace, else $ACML_TOKEN."""
    environ = os.environ if environ is None else environ
    if token_file:
        try:
            with open(token_file, "rb") as handle:
                token = handle.read().strip()
        except OSError as error:
            raise ValueError(f"--token-file {token_file}: cannot read it ({error.strerror})") from None
        source = f"token file {token_file}"
    elif environ.get("ACML_TOKEN"):
        token, source = environ["ACML_TOKEN"].strip().encode(), "ACML_TOKEN"
    else:
        raise ValueError("no shared token: pass --token-file PATH or set ACML_TOKEN")
    if len(token) < MIN_TOKEN_BYTES:
        raise ValueError(f"the {source} holds {len(token)} bytes, fewer than {MIN_TOKEN_BYTES}; "
                         "make one with: python -c \"import secrets; print(secrets.token_hex(32))\"")
    return token


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6 host]:PORT') -> (host, port)."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} takes HOST:PORT with a port in 0..65535, got {text!r}")
    return host, int(port)


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
class Connection:
    """One TCP connection that carries frames, each under a deadline and within size caps.

    ``timeout`` bounds the wait for each whole frame: the peer's computing and the transfer.
    A frame whose declared header or body exceeds its cap is refused before it is read.
    """

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT,
                 max_frame_bytes: int = MAX_FRAME_BYTES, peer: str = "the peer"):
        self.sock = sock
        self.timeout = float(timeout)
        self.max_header_bytes = MAX_HEADER_BYTES
        self.max_frame_bytes = int(max_frame_bytes)
        self.peer = peer
        self.bytes_sent = self.bytes_received = self.frames_sent = self.frames_received = 0

    def send_frame(self, header: dict, body: bytes = b"", *, what: str = "a frame") -> None:
        encoded = json.dumps(header, allow_nan=False).encode("utf-8")
        if len(encoded) > self.max_header_bytes or len(body) > self.max_frame_bytes:
            raise TransportError(f"refusing to send {what}: {len(encoded)} header and {len(body)} "
                                 f"body bytes exceed the caps of {self.max_header_bytes} and "
                                 f"{self.max_frame_bytes} (raise --max-frame-mb)")
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(PREFIX.pack(MAGIC, len(encoded), len(body)) + encoded)
            if body:
                self.sock.sendall(body)
        except socket.timeout:
            raise TransportError(f"sending {what} to {self.peer} took longer than "
                                 f"{self.timeout:g} s (--timeout)") from None
        except OSError as error:
            raise TransportError(f"{self.peer} closed the connection while this side sent {what} "
                                 f"({type(error).__name__})") from None
        self.bytes_sent += PREFIX.size + len(encoded) + len(body)
        self.frames_sent += 1

    def receive_frame(self, what: str = "a frame") -> tuple[dict, bytes]:
        """(header, body) of the next frame; TransportError if it is late, malformed or too big."""
        deadline = time.monotonic() + self.timeout
        magic, header_length, body_length = PREFIX.unpack(self._read(PREFIX.size, deadline, what))
        if magic != MAGIC:
            raise TransportError(f"{self.peer} sent something that is not an ACML frame "
                                 f"(it starts {magic!r}) while this side waited for {what}")
        if header_length > self.max_header_bytes or body_length > self.max_frame_bytes:
            raise TransportError(f"refusing a frame from {self.peer} while waiting for {what}: "
                                 f"{header_length} header and {body_length} body bytes exceed the "
                                 f"caps of {self.max_header_bytes} and {self.max_frame_bytes}")
        raw = self._read(header_length, deadline, what, started=True)
        try:
            header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise TransportError(f"{self.peer} sent a frame whose header is not JSON while this "
                                 f"side waited for {what}") from None
        if not isinstance(header, dict):
            raise TransportError(f"{self.peer} sent a frame whose header is not a JSON object "
                                 f"while this side waited for {what}")
        body = self._read(body_length, deadline, what, started=True)
        self.bytes_received += PREFIX.size + header_length + body_length
        self.frames_received += 1
        return header, body

    def _read(self, count: int, deadline: float, what: str, started: bool = False) -> bytes:
        buffer = bytearray(count)
        view, got = memoryview(buffer), 0
        while got < count:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise socket.timeout
                self.sock.settimeout(remaining)
                received = self.sock.recv_into(view[got:], min(count - got, 1 << 20))
            except socket.timeout:
                raise TransportError(f"{self.peer} did not deliver {what} within "
                                     f"{self.timeout:g} s (--timeout)") from None
            except OSError as error:
                raise TransportError(f"{self.peer} broke the connection while this side waited "
                                     f"for {what} ({type(error).__name__})") from None
            if received == 0:
                middle = " in the middle of a frame" if started or got else ""
                raise TransportError(f"{self.peer} closed the connection{middle} while this side "
                                     f"waited for {what} (its own output says why)")
            got += received
        return bytes(buffer)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


# ----------------------------------------------------------------------------------------------
# Authentication: HMAC challenge–response in both directions, before any data moves
# ----------------------------------------------------------------------------------------------
def _proof(token: bytes, role: str, their_nonce: bytes, my_nonce: bytes) -> str:
    """HMAC-SHA256 over the version, the prover's role and both nonces (the challenger's first).

    The role is inside the MAC, so a proof cannot be reflected back at its sender; fresh nonces
    from ``secrets`` on both sides, so a recorded proof cannot be replayed.
    """
    message = b"|".join([VERSION.encode(), role.encode(), their_nonce, my_nonce])
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def _same_proof(proof, expected: str) -> bool:
    """Constant-time comparison; a proof that is no string (or not ASCII) simply fails."""
    return isinstance(proof, str) and hmac.compare_digest(proof.encode("utf-8"),
                                                          expected.encode("utf-8"))


def _nonce_of(frame: dict) -> bytes:
    try:
        nonce = bytes.fromhex(frame.get("nonce", ""))
    except (TypeError, ValueError):
        nonce = b""
    if len(nonce) != 32:
        raise AuthenticationError("the peer's hello carries no valid 32-byte nonce")
    return nonce


def _check_hello(frame: dict, role: str) -> None:
    if frame.get("type") != "hello" or frame.get("role") != role:
        raise AuthenticationError(f"the peer is not an ACML {role} party (no {role} hello)")
    if frame.get("version") != VERSION:
        raise AuthenticationError(f"the peer speaks {frame.get('version')!r}, this side {VERSION!r}")


def _prove_as_data(connection: Connection, token: bytes) -> None:
    """The listening side: challenge, check the label party's proof, then prove itself."""
    nonce = secrets.token_bytes(32)
    connection.send_frame({"type": "hello", "version": VERSION, "role": DATA, "nonce": nonce.hex()},
                          what="the hello")
    hello, _ = connection.receive_frame("the label party's proof of the token")
    _check_hello(hello, LABEL)
    their_nonce = _nonce_of(hello)
    if not _same_proof(hello.get("proof"), _proof(token, LABEL, nonce, their_nonce)):
        connection.send_frame({"type": "refused", "reason": "wrong token"}, what="the refusal")
        raise AuthenticationError("the peer did not prove the shared token (wrong token)")
    connection.send_frame({"type": "welcome", "proof": _proof(token, DATA, their_nonce, nonce)},
                          what="the proof of the token")


def _prove_as_label(connection: Connection, token: bytes) -> None:
    """The connecting side: answer the challenge, then check the data party's own proof."""
    hello, _ = connection.receive_frame("the data party's hello")
    _check_hello(hello, DATA)
    their_nonce, nonce = _nonce_of(hello), secrets.token_bytes(32)
    connection.send_frame({"type": "hello", "version": VERSION, "role": LABEL, "nonce": nonce.hex(),
                           "proof": _proof(token, LABEL, their_nonce, nonce)}, what="the proof")
    answer, _ = connection.receive_frame("the data party's answer to the proof")
    if answer.get("type") == "refused":
        raise AuthenticationError("the data party refused this connection: wrong token")
    if answer.get("type") != "welcome" or not _same_proof(answer.get("proof"),
                                                          _proof(token, DATA, nonce, their_nonce)):
        raise AuthenticationError("the data party did not prove the shared token; refusing it")


def _handshake(connection: Connection, prove, token: bytes, timeout: float) -> None:
    """Run ``prove`` under tight caps, then open the connection up to its configured limits."""
    limits = (connection.timeout, connection.max_header_bytes, connection.max_frame_bytes)
    connection.timeout = min(timeout, HANDSHAKE_SECONDS)
    connection.max_header_bytes, connection.max_frame_bytes = HANDSHAKE_HEADER_BYTES, 0
    prove(connection, token)
    connection.timeout, connection.max_header_bytes, connection.max_frame_bytes = limits


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one (see ``address_of``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=4)


def address_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def accept_peer(listener: socket.socket, token: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                max_frame_bytes: int = MAX_FRAME_BYTES, log=None) -> Connection:
    """Wait up to ``timeout`` s for a label party that proves the token; return its connection.

    A connection that fails the handshake is refused, logged and closed, and the wait goes on:
    a stranger knocking does not end the session.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"no label party proved the token within {timeout:g} s "
                                 "(--timeout)")
        listener.settimeout(remaining)
        try:
            sock, address = listener.accept()
        except socket.timeout:
            continue
        where = f"{address[0]}:{address[1]}"
        connection = Connection(sock, timeout=timeout, max_frame_bytes=max_frame_bytes,
                                peer=f"the peer at {where}")
        try:
            _handshake(connection, _prove_as_data, token, timeout)
        except TransportError as error:
            connection.close()
            if log is not None:
                log(f"refused a connection from {where}: {error}")
            continue
        connection.peer = "the label party"
        return connection


def connect_peer(host: str, port: int, token: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> Connection:
    """Connect to the data party (retrying while it is not listening yet) and authenticate."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(remaining, 0.01))
            break
        except ConnectionRefusedError:
            if remaining <= 0.2:
                raise TransportError(f"could not connect to {host}:{port} within {timeout:g} s: "
                                     "connection refused (is the data party listening?)") from None
            time.sleep(0.2)
        except OSError as error:
            raise TransportError(f"could not connect to {host}:{port}: "
                                 f"{error.strerror or type(error).__name__}") from None
    connection = Connection(sock, timeout=timeout, max_frame_bytes=max_frame_bytes,
                            peer="the data party")
    try:
        _handshake(connection, _prove_as_label, token, timeout)
    except TransportError:
        connection.close()
        raise
    return connection


# ----------------------------------------------------------------------------------------------
# Payloads: what the body of a message frame holds
# ----------------------------------------------------------------------------------------------
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
        if is_int_array(payload):
            integers = [int(v) for v in payload.ravel()]
            # (bits + 8) // 8 bytes hold the magnitude and the sign bit in two's complement
            width = (max((abs(v).bit_length() for v in integers), default=0) + 8) // 8
            body = b"".join(v.to_bytes(width, "big", signed=True) for v in integers)
            return {"dtype": "int", "width": width, "shape": list(payload.shape)}, body
        raise TypeError(f"cannot carry a {payload.dtype} array over the wire")
    try:
        return {"dtype": "json", "shape": []}, json.dumps(payload, allow_nan=False).encode()
    except (TypeError, ValueError):
        raise TypeError(f"cannot carry a {type(payload).__name__} over the wire") from None


def decode_payload(header: dict, body: bytes, public_key: PublicKey | None, where: str):
    """The payload a frame carries, validated against its declared layout (TransportError)."""
    dtype, shape = header.get("dtype"), header.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise TransportError(f"{where}: the frame's shape {shape!r} is not a list of sizes")
    count = math.prod(shape)
    if dtype == "json":
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise TransportError(f"{where}: the body is not JSON") from None
    if dtype == "paillier-public-key":
        try:
            return PublicKey.from_json(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise TransportError(f"{where}: not a public key ({error})") from None
    if dtype == "paillier-ciphertext":
        if public_key is None:
            raise TransportError(f"{where}: a ciphertext before the data party's public key")
        try:
            array = EncryptedArray.from_bytes(body, public_key)
        except ValueError as error:
            raise TransportError(f"{where}: {error}") from None
        if list(array.shape) != shape:
            raise TransportError(f"{where}: the frame says shape {shape}, the ciphertexts "
                                 f"{list(array.shape)}")
        return array
    if dtype == "float64":
        if len(body) != 8 * count:
            raise TransportError(f"{where}: {len(body)} bytes for {count} float64 values")
        return np.frombuffer(body, dtype=">f8").astype(np.float64).reshape(shape)
    if dtype == "int":
        width = header.get("width")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_INT_WIDTH:
            raise TransportError(f"{where}: integer width {width!r} is not in 1..{MAX_INT_WIDTH}")
        if len(body) != width * count:
            raise TransportError(f"{where}: {len(body)} bytes for {count} integers of {width} "
                                 "bytes each")
        values = np.empty(count, dtype=object)
        values[:] = [int.from_bytes(body[i * width:(i + 1) * width], "big", signed=True)
                     for i in range(count)]
        return values.reshape(shape)
    raise TransportError(f"{where}: unknown payload dtype {dtype!r}")
