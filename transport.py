"""Two parties in two processes, over one TCP connection: the wire under protocol.py.

The wire is not the protocol. protocol.py says what crosses, in which step, and checks every
declaration; this module only carries the messages between two processes, and the step
functions run unchanged in both of them:

* :class:`SocketChannel` is a :class:`protocol.Channel` with the same ``send``. In the sender's
  process it computes the (lazy) payload, runs the in-process checks, and writes one frame. In
  the receiver's process it reads the next frame, refuses it unless it is the message the
  protocol expects next, decodes it, and runs the very same checks.
* :class:`Absent` stands in for the party that runs in the other process: its methods do
  nothing and return None, because the real call happens over there.
* :class:`Connection` carries length-prefixed frames with size caps and deadlines, after an
  HMAC challenge–response on a shared token (:func:`accept_peer`, :func:`connect_peer`).
* :func:`run_data_party` and :func:`run_label_party` are one training session per process:
  align the ids, split, then ``protocol.setup``, ``train_epoch`` and ``predict_scores``. With a
  checkpoint directory each saves its own party's file after every epoch, and resumes from it
  through ``protocol.resume_setup``.

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

import checkpoint
import data
import protocol
from paillier import EncryptedArray, PublicKey
from protocol import DATA, LABEL

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
        if protocol._is_int_array(payload):
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


# ----------------------------------------------------------------------------------------------
# The channel over the wire, and the absent party
# ----------------------------------------------------------------------------------------------
def _evaluate(value):
    return value() if callable(value) else value


class SocketChannel(protocol.Channel):
    """A :class:`protocol.Channel` between two processes: the same ``send``, over a Connection.

    In the sender's process, ``send`` computes the lazy payload and declarations, runs the
    in-process checks (a leaky message never leaves) and writes one frame. In the receiver's
    process it reads the next frame and refuses it unless it is the message the protocol expects
    next: the same step, sender, receiver, name, kind and reason, and the same declared widths
    wherever the receiver can compute them itself (a width given lazily is the sender's to
    declare: the receiver takes it from the header). Then it decodes the payload and runs the
    very same checks. Either way it records the message and returns the payload.
    """

    def __init__(self, connection: Connection, party: str, *, sigma: int = 40):
        if party not in protocol.PARTIES:
            raise ValueError(f"unknown party {party!r}; expected one of {protocol.PARTIES}")
        super().__init__(sigma=sigma)
        self.connection, self.party = connection, party

    def send(self, step, sender, receiver, name, kind, payload, *, reason=None,
             mask_bits=None, value_bits=None):
        where = f"step {step} message {name!r} ({sender} → {receiver})"
        if sender == self.party:
            message = protocol.Message(str(step), sender, receiver, name, kind, _evaluate(payload),
                                       reason=reason, mask_bits=_evaluate(mask_bits),
                                       value_bits=_evaluate(value_bits))
            self._check(message)
            header, body = encode_payload(message.payload)
            header.update(type="message", step=message.step, sender=sender, receiver=receiver,
                          name=name, kind=kind, reason=reason, mask_bits=message.mask_bits,
                          value_bits=message.value_bits)
            self.connection.send_frame(header, body, what=where)
        elif receiver == self.party:
            header, body = self.connection.receive_frame(where)
            message = self._expected(header, where, step, sender, receiver, name, kind, reason,
                                     mask_bits, value_bits)
            message.payload = decode_payload(header, body, self.data_public_key, where)
            self._check(message)
        else:
            raise protocol.LeakageError(f"{where}: this channel runs in the {self.party} party's "
                                        "process, which neither sends nor receives it")
        message.shape = protocol._shape_of(message.payload)
        message.nbytes = protocol._nbytes_of(message.payload, self.data_public_key)
        self.messages.append(message)
        return message.payload

    def _expected(self, header, where, step, sender, receiver, name, kind, reason,
                  mask_bits, value_bits) -> protocol.Message:
        if header.get("type") != "message":
            raise TransportError(f"{self.connection.peer} sent a {header.get('type')!r} frame "
                                 f"where the protocol expects {where}")
        expected = {"step": str(step), "sender": sender, "receiver": receiver, "name": name,
                    "kind": kind, "reason": reason}
        got = {key: header.get(key) for key in expected}
        if got != expected:
            raise TransportError(f"{self.connection.peer} sent step {got['step']} message "
                                 f"{got['name']!r} ({got['kind']}, {got['sender']} → "
                                 f"{got['receiver']}) where the protocol expects {where} ({kind})")
        declared = {}
        for key, mine in (("mask_bits", mask_bits), ("value_bits", value_bits)):
            theirs = header.get(key)
            if theirs is not None and (isinstance(theirs, bool) or not isinstance(theirs, int)):
                raise TransportError(f"{where}: declared {key} {theirs!r} is not an integer")
            if not callable(mine) and theirs != mine:
                raise protocol.LeakageError(f"{where}: the sender declares {key}={theirs}, the "
                                            f"protocol expects {mine}")
            declared[key] = theirs
        return protocol.Message(str(step), sender, receiver, name, kind, None, reason=reason,
                                **declared)

    def finish(self) -> None:
        """Each side says it is done, so neither ends cleanly while the other is still working."""
        self.connection.send_frame({"type": "done"}, what="the end of the session")
        header, body = self.connection.receive_frame("the end of the session")
        if header.get("type") != "done" or body:
            raise TransportError(f"{self.connection.peer} sent a {header.get('type')!r} frame "
                                 "where the session ends")


class Absent:
    """The other party, in a process where it does not run.

    protocol.py's step functions call methods of both parties. Here every method of the absent
    party does nothing and returns None: the real call runs in the peer's process, and its result
    arrives through the SocketChannel, which evaluates only the payloads this process sends.
    Attributes are public information only: given at construction, or assigned by the protocol
    from a message this process sent or received (the public key; at the data party, [[X]]).
    Any other attribute is an AttributeError naming it, never a silent None.
    """

    def __init__(self, party_class, **public):
        self.__dict__["_party_class"] = party_class
        self.__dict__.update(public)

    def __getattr__(self, name):
        party_class = self.__dict__["_party_class"]
        if not name.startswith("_") and callable(getattr(party_class, name, None)):
            return _runs_in_the_other_process
        raise AttributeError(f"the {party_class.__name__} runs in the other process: its "
                             f"{name!r} is not known here")

    def __repr__(self):
        return f"Absent({self.__dict__['_party_class'].__name__})"


def _runs_in_the_other_process(*args, **kwargs):
    return None


# ----------------------------------------------------------------------------------------------
# Sessions: one per process
# ----------------------------------------------------------------------------------------------
def check_split(test_fraction, seed) -> None:
    """The public split parameters: a fraction in [0, 1) and a non-negative integer seed."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of n aligned rows: a seeded permutation, NOT stratified.

    Both parties compute it alone from public (n, test_fraction, seed). A stratified split would
    need the labels, which the data party must not see.
    """
    check_split(test_fraction, seed)
    n_test = int(round(test_fraction * n))
    if n - n_test < 1:
        raise data.DataError(f"{n} aligned rows are too few to split with test fraction "
                             f"{test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _id_strings(ids) -> list[str]:
    keys = [str(value) for value in ids]
    if len(set(keys)) != len(keys):
        raise data.DataError("duplicate ids; each row needs its own id")
    return keys


def _align_as_data(channel: SocketChannel, keys: list[str], n_features: int):
    """Step 'align' at the data party: the label party's ids in, the common ids out."""
    offer = channel.send("align", LABEL, DATA, "ids and split", "public", None)  # label computes
    their_ids = offer.get("ids") if isinstance(offer, dict) else None
    if not isinstance(their_ids, list) or not all(isinstance(key, str) for key in their_ids):
        raise TransportError("the label party's ids are not a list of strings")
    common = sorted(set(keys) & set(their_ids))
    channel.send("align", DATA, LABEL, "common ids", "public",
                 lambda: {"ids": common, "n_features": n_features})
    if not common:
        raise data.DataError("no id is shared by the features file and the label party's ids")
    _, rows = data.align(common, keys, allow_unmatched=True)
    return rows, offer.get("test_fraction"), offer.get("seed"), len(their_ids)


def _align_as_label(channel: SocketChannel, keys: list[str], test_fraction, seed):
    """Step 'align' at the label party: send its ids (public), get back the common ones."""
    channel.send("align", LABEL, DATA, "ids and split", "public",
                 lambda: {"ids": keys, "test_fraction": test_fraction, "seed": seed})
    answer = channel.send("align", DATA, LABEL, "common ids", "public", None)  # data computes
    common = answer.get("ids") if isinstance(answer, dict) else None
    n_features = answer.get("n_features") if isinstance(answer, dict) else None
    mine = set(keys)
    if (not isinstance(common, list) or not all(isinstance(key, str) and key in mine
                                                for key in common)
            or any(a >= b for a, b in zip(common, common[1:]))):
        raise TransportError("the data party's common ids are not a sorted subset of this "
                             "party's ids")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise TransportError(f"the data party declares {n_features!r} features")
    if not common:
        raise data.DataError("no id is shared by the labels file and the data party's ids")
    _, rows = data.align(common, keys, allow_unmatched=True)
    return rows, n_features


def _report_progress(progress, total):
    if progress is None:
        return None
    done = [0]

    def step(loss):
        done[0] += 1
        progress(done[0], total, loss)
    return step


@dataclass
class DataPartyRun:
    """What the data party ends with: its party object (with ε_acc) and its channel record."""

    data_party: protocol.DataParty
    channel: SocketChannel
    n_ids: int
    n_label_ids: int
    n_train: int
    n_test: int
    seconds: float
    resumed_after_epoch: int = 0  # the epoch its checkpoint was saved after; 0 for a new run

    def summary(self) -> str:
        training, plan = self.data_party.training, self.data_party.plan
        connection = self.channel.connection
        lines = [f"data party: {self.n_train} training and {self.n_test} test rows, the ids "
                 f"shared by its {self.n_ids} and the label party's {self.n_label_ids}; "
                 f"{self.data_party.n_features} features, "
                 f"{self.data_party.public_key.n.bit_length()}-bit Paillier key",
                 f"training plan from the label party: {training['n_hidden']} units "
                 f"({training['activation']}) in the first layer, η = {training['lr']}, batches "
                 f"of {training['batch_size']}, {training['epochs']} epochs, seed "
                 f"{training['seed']}, σ = {plan.sigma}",
                 f"wall time {self.seconds:.1f} s; {connection.frames_sent} frames "
                 f"({connection.bytes_sent / 1e6:.2f} MB) sent, {connection.frames_received} "
                 f"({connection.bytes_received / 1e6:.2f} MB) received",
                 "", "what the data party received, and what it learns:"]
        if self.resumed_after_epoch:
            lines.insert(2, f"resumed from its checkpoint after epoch {self.resumed_after_epoch}")
        return "\n".join(lines + leakage_lines(row for row in self.channel.report()
                                               if row["receiver"] == DATA))


@dataclass
class LabelPartyRun:
    """What the label party ends with: its party object, the losses, the test predictions."""

    label_party: protocol.LabelParty
    channel: SocketChannel
    losses: list
    n_batches: int
    n_common: int
    test_labels: np.ndarray
    test_predictions: np.ndarray | None
    seconds: float
    resumed_after_epoch: int = 0  # the epoch its checkpoint was saved after; 0 for a new run

    def metrics(self) -> dict:
        party, totals, connection = self.label_party, self.channel.totals(), self.channel.connection
        out = {
            "role": LABEL,
            "n_common": self.n_common,
            "n_train": int(len(party.labels)),
            "n_test": int(len(self.test_labels)),
            "layer_sizes": list(party.layer_sizes),
            "key_bits": party.public_key.n.bit_length(),
            "epochs": party.epochs,
            "batch_size": party.batch_size,
            "lr": party.lr,
            "seconds": self.seconds,
            "final_loss": float(np.mean(self.losses[-self.n_batches:])),
            "batch_losses": [float(loss) for loss in self.losses],
            "label_model_sha256": label_model_fingerprint(party.model),
            "messages": sum(t["messages"] for t in totals.values()),
            "bytes": sum(t["bytes"] for t in totals.values()),
            "per_party": totals,
            "wire": {"frames_sent": connection.frames_sent, "bytes_sent": connection.bytes_sent,
                     "frames_received": connection.frames_received,
                     "bytes_received": connection.bytes_received},
            "leakage": self.channel.report(),
            "step_seconds": dict(self.channel.step_seconds),
            "step_ops": {k: dict(v) for k, v in self.channel.step_ops.items()},
        }
        if self.resumed_after_epoch:
            out["resumed_after_epoch"] = self.resumed_after_epoch
        if self.test_predictions is not None:
            out["test_accuracy"] = float(np.mean(self.test_predictions == self.test_labels))
        return out


def label_model_fingerprint(model) -> str:
    """sha256 of the label party's parameters (the first layer's bias and every layer above),
    float64 big-endian in layer order: two runs trained the same model iff these agree."""
    digest = hashlib.sha256()
    for layer in model.layers:
        for parameter in (layer.W, layer.b):
            if parameter is not None:
                digest.update(np.ascontiguousarray(parameter, dtype=">f8").tobytes())
    return digest.hexdigest()


def leakage_lines(rows) -> list[str]:
    lines = [f"  {'step':<8}{'from → to':<16}{'message':<22}{'kind':<12}{'count':>6}  learns"]
    for row in rows:
        lines.append(f"  {row['step']:<8}{row['sender'] + ' → ' + row['receiver']:<16}"
                     f"{row['name']:<22}{row['kind']:<12}{row['count']:>6}  {row['learned']}")
    return lines


def format_label_report(metrics: dict) -> str:
    lines = [f"label party, {metrics.get('dataset', 'labels')}: {metrics['n_train']} training and "
             f"{metrics['n_test']} test rows of the {metrics['n_common']} ids shared with the data "
             f"party; layers {metrics['layer_sizes']}, the data party's "
             f"{metrics['key_bits']}-bit Paillier key, {metrics['epochs']} epochs of batches of "
             f"{metrics['batch_size']}"]
    if metrics.get("resumed_after_epoch"):
        lines.append(f"resumed            from the checkpoints after epoch "
                     f"{metrics['resumed_after_epoch']}")
    if "test_accuracy" in metrics:
        lines.append(f"test accuracy      {metrics['test_accuracy']:.4f} on {metrics['n_test']} rows")
    lines.append(f"final loss         {metrics['final_loss']:.6f} (mean over the last epoch)")
    lines.append(f"wall time          {metrics['seconds']:.1f} s, both parties and the wire")
    lines.append("time per step      " + "   ".join(
        f"{step}: {seconds:.1f} s" for step, seconds in metrics["step_seconds"].items()))
    for party, total in metrics["per_party"].items():
        lines.append(f"{party} party sent   {total['messages']} messages, "
                     f"{total['bytes'] / 1e6:.2f} MB")
    wire = metrics["wire"]
    lines.append(f"on the wire        {(wire['bytes_sent'] + wire['bytes_received']) / 1e6:.2f} MB "
                 f"in {wire['frames_sent'] + wire['frames_received']} frames")
    lines += ["", "what crossed, and what the receiver learns:"]
    return "\n".join(lines + leakage_lines(metrics["leakage"]))


def _checkpoint_path(checkpoint_dir, role: str, resume: bool):
    """This party's own file in ``checkpoint_dir``: it must exist to resume, and not otherwise
    (a new run never overwrites a run that could still be resumed). None without a directory."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume needs the checkpoint directory to resume from")
        return None
    path = os.path.join(os.fspath(checkpoint_dir), checkpoint.CHECKPOINT_FILES[role])
    if resume and not os.path.exists(path):
        raise ValueError(f"nothing to resume: {path} does not exist")
    if not resume and os.path.exists(path):
        raise ValueError(f"{path} already exists: resume it, or train into another directory")
    try:
        os.makedirs(checkpoint_dir, exist_ok=True)  # now, not after the first epoch's work
    except OSError as error:
        raise ValueError(f"checkpoint directory {checkpoint_dir}: cannot create it "
                         f"({error.strerror})") from None
    return path


@contextmanager
def _closed_on_error(connection):
    """Close the connection if the block fails: that ends the peer's session at once too."""
    try:
        yield
    except BaseException:
        connection.close()
        raise


def run_data_party(connection: Connection, ids, X, *, keypair=None, plan=None, init_seed=None,
                   progress=None, checkpoint_dir=None, resume: bool = False,
                   feature_names=None, allow_insecure: bool = False) -> DataPartyRun:
    """The data party's whole session over an authenticated connection.

    Align on the common ids, split (seeded, public), standardise its own features on the
    training rows, then ``protocol.setup``, every epoch of the label party's training plan and,
    if there is a test split, prediction. ``init_seed`` seeds W0; it must stay secret from the
    label party (None draws it from ``secrets``): anyone who knows W0 reads X off the first z.
    ``progress(done, total, None)`` is called after each batch. The connection is closed on
    return or error, which ends the peer's session too.

    ``checkpoint_dir``: after every epoch this party saves its own file there
    (``data_party.npz``: checkpoint.DataPartyState), and only its own. ``resume=True`` loads
    it instead of ``keypair`` and ``init_seed``: the key pair, ε_acc and the standardisation
    fitted before. The ids, the split and the public seed give the very same training rows
    (the checkpoint's sha256 of the features must match), ``protocol.resume_setup`` checks that
    the label party resumes from the same epoch, and training goes on to the plan's epochs.
    """
    with _closed_on_error(connection):
        path = _checkpoint_path(checkpoint_dir, DATA, resume)
        state = None
        if resume:
            if keypair is not None or init_seed is not None:
                raise ValueError("resume takes the key pair and ε_acc from the data party's "
                                 "checkpoint; pass no keypair and no init_seed")
            state = checkpoint.DataPartyState.load(path, allow_insecure=allow_insecure)
            if plan is not None and plan != state.plan:
                raise ValueError(f"the checkpoint's fixed-point plan {state.plan.to_dict()} "
                                 f"differs from this run's {plan.to_dict()}")
            plan = state.plan
    plan = plan or protocol.FixedPointPlan()
    channel = SocketChannel(connection, DATA, sigma=plan.sigma)
    start = time.perf_counter()
    try:
        X = np.asarray(X, dtype=np.float64)
        keys = _id_strings(ids)
        if X.ndim != 2 or X.shape[0] != len(keys):
            raise ValueError(f"features of shape {X.shape} for {len(keys)} ids")
        if state is not None and X.shape[1] != state.n_features:
            raise ValueError(f"features with {X.shape[1]} columns; the checkpoint's model takes "
                             f"{state.n_features} ({', '.join(state.feature_names)})")
        rows, test_fraction, seed, n_label_ids = _align_as_data(channel, keys, X.shape[1])
        train_rows, test_rows = split_rows(len(rows), test_fraction, seed)
        features = X[rows]
        # Peer stand-in: over TCP the label party runs no insecure flaw variant.
        peer = Absent(protocol.LabelParty, plan=plan, flaws=protocol.SECURE)
        if state is None:
            scaler = data.Standardizer().fit(features[train_rows])
            data_party = protocol.DataParty(scaler.transform(features[train_rows]), plan=plan,
                                            keypair=keypair, init_seed=init_seed)
            protocol.setup(data_party, peer, channel)
            first_epoch = 0
        else:
            # The standardisation fitted before, not refitted: the rows must encode exactly
            # as they did, which restore() checks against the checkpoint's sha256.
            scaler = data.Standardizer()
            scaler.mean, scaler.std = state.feature_mean, state.feature_std
            data_party = state.restore(scaler.transform(features[train_rows]))
            protocol.resume_setup(data_party, peer, channel)
            first_epoch = state.epochs_completed
        training = data_party.training
        peer.batch_size, peer.seed = training["batch_size"], training["seed"]
        total = (training["epochs"] - first_epoch) * -(-len(train_rows) // training["batch_size"])
        step = _report_progress(progress, total)
        for epoch in range(first_epoch, training["epochs"]):
            protocol.train_epoch(data_party, peer, channel, epoch, step)
            if path is not None:
                checkpoint.DataPartyState.of(data_party, epochs_completed=epoch + 1,
                                             feature_names=feature_names,
                                             feature_mean=scaler.mean,
                                             feature_std=scaler.std).save(path)
        if len(test_rows):
            protocol.predict_scores(data_party, peer, channel,
                                    scaler.transform(features[test_rows]))
        channel.finish()
    finally:
        connection.close()
    return DataPartyRun(data_party, channel, len(keys), n_label_ids, len(train_rows),
                        len(test_rows), time.perf_counter() - start, first_epoch)


def _check_label_resumable(state, config, sizes) -> None:
    """The label party's own settings must be its checkpoint's, but for the epoch count."""
    asked = {"layer_sizes": list(sizes), "activation": config.activation, "lr": config.lr,
             "momentum": config.momentum, "batch_size": config.batch_size, "seed": config.seed}
    for key, value in asked.items():
        if state.training[key] != value:
            raise ValueError(f"the checkpoint was trained with {key} = {state.training[key]!r}, "
                             f"this run asks for {value!r}; resume with the same settings")
    if state.plan != config.plan:
        raise ValueError(f"the checkpoint's fixed-point plan {state.plan.to_dict()} differs "
                         f"from this run's {config.plan.to_dict()}")
    if state.epochs_completed >= config.epochs:
        raise ValueError(f"nothing to resume: the label party's checkpoint holds "
                         f"{state.epochs_completed} completed epoch(s) and this run asks for "
                         f"{config.epochs}")


def run_label_party(connection: Connection, ids, y, n_classes: int, config, *,
                    test_fraction: float = 0.2, progress=None, checkpoint_dir=None,
                    resume: bool = False, class_names=None) -> LabelPartyRun:
    """The label party's whole session over an authenticated connection.

    ``config`` is an ``acml.Config`` (hidden widths, activation, lr, momentum, batch size,
    epochs, seed, fixed-point plan); its key size is the data party's business and unused here.
    Sends its ids and the split (public), builds the network on the common, training rows,
    then ``protocol.setup``, the epochs, and prediction on the test rows.

    ``checkpoint_dir``: after every epoch this party saves its own file there
    (``label_party.npz``: checkpoint.LabelPartyState), and only its own. ``resume=True`` loads
    it (a key under 1024 bits needs ``config.allow_insecure``), checks that this run's settings
    are the checkpoint's but for ``config.epochs``, and goes on from the epoch it was saved
    after; ``losses`` then covers the resumed epochs only.
    """
    with _closed_on_error(connection):
        path = _checkpoint_path(checkpoint_dir, LABEL, resume)
        state = None
        if resume:
            state = checkpoint.LabelPartyState.load(path, allow_insecure=config.allow_insecure)
    channel = SocketChannel(connection, LABEL, sigma=config.plan.sigma)
    start = time.perf_counter()
    try:
        keys = _id_strings(ids)
        y = np.asarray(y)
        if y.shape != (len(keys),):
            raise ValueError(f"labels of shape {y.shape} for {len(keys)} ids")
        check_split(test_fraction, config.seed)  # before any id leaves
        if state is not None:  # before any id leaves; the feature count is re-checked below
            _check_label_resumable(state, config,
                                   config.layer_sizes(state.layer_sizes[0], n_classes))
        rows, n_features = _align_as_label(channel, keys, test_fraction, config.seed)
        train_rows, test_rows = split_rows(len(rows), test_fraction, config.seed)
        labels = y[rows]
        if len(np.unique(labels[train_rows])) < 2:
            raise data.DataError("the training rows shared with the data party hold one class")
        sizes = config.layer_sizes(n_features, n_classes)
        # Public facts about the data party; over TCP it has no bottom model (no step 4b).
        peer = Absent(protocol.DataParty, plan=config.plan, n_samples=len(train_rows),
                      n_features=n_features, n_inputs=n_features, bottom=None)
        if state is None:
            label_party = protocol.LabelParty(labels[train_rows], sizes,
                                              activation=config.activation, lr=config.lr,
                                              momentum=config.momentum,
                                              batch_size=config.batch_size, epochs=config.epochs,
                                              seed=config.seed, plan=config.plan)
            protocol.setup(peer, label_party, channel)
            first_epoch = 0
        else:
            _check_label_resumable(state, config, sizes)
            label_party = state.restore(labels[train_rows], epochs=config.epochs)
            protocol.resume_setup(peer, label_party, channel)
            first_epoch = state.epochs_completed
        n_batches = -(-len(train_rows) // config.batch_size)
        step = _report_progress(progress, (config.epochs - first_epoch) * n_batches)
        losses = []
        for epoch in range(first_epoch, config.epochs):
            losses.extend(protocol.train_epoch(peer, label_party, channel, epoch, step))
            if path is not None:
                checkpoint.LabelPartyState.of(label_party, epochs_completed=epoch + 1,
                                              class_names=class_names).save(path)
        predictions = None
        if len(test_rows):
            scores = protocol.predict_scores(peer, label_party, channel, None)
            predictions = label_party.model.classes_from_scores(scores)
        channel.finish()
    finally:
        connection.close()
    return LabelPartyRun(label_party, channel, losses, n_batches, len(rows), labels[test_rows],
                         predictions, time.perf_counter() - start, first_epoch)
