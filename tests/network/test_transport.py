"""Two parties over TCP: the socket channel carries the very protocol the in-process channel does.

Loopback only (127.0.0.1, free ports), small keys through the explicit insecure flag, and every
wait bounded (threads joined, subprocesses with timeouts), so nothing can hang the suite.
"""

import io
import json
import os
import pathlib
import re
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from conftest import (TEST_TOKEN, assert_same_weights, insecure_keypair, one_line_error, run_pair,
                      scaled)

import acml
from jobs import data
import paillier
from network import transport
from network import frames
from network import wire
from channel import Channel, LeakageError
from fixed import Fixed
from plan import FixedPointPlan

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY_BITS = 512
# as `acml.py token` makes them; the wrong one as good a token, but not the shared one
TOKEN = TEST_TOKEN
WRONG_TOKEN = b"acml-262009c948e14c3ea09be1d0891dce17c78abd4911eedba1eebacb535d9ce7cb"
TIMEOUT = scaled(20.0)


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def config(**overrides):
    base = dict(hidden=(3,), activation="relu", epochs=2, batch_size=16, lr=0.1,
                key_bits=KEY_BITS, allow_insecure=True, init_seed=0)  # W0's seed: the data party's
    # own; relu and lr 0.1 pinned (the settings these tests were written for), also at the CLI
    base.update(overrides)
    return acml.Config(**base)


def two_party_data(name="breast_cancer", n_rows=90):
    """Each party's own rows: overlapping but different id sets, each in its own order."""
    dataset = data.load_builtin(name)
    rng = np.random.default_rng(7)
    picked = rng.permutation(len(dataset.y))[:n_rows]
    feature_rows = rng.permutation(picked[: n_rows - 5])   # 5 ids only the label party has
    label_rows = rng.permutation(picked[5:])                # 5 ids only the data party has
    return ([f"id{i}" for i in feature_rows], dataset.X[feature_rows],
            [f"id{i}" for i in label_rows], dataset.y[label_rows], dataset.class_names)


def reference_run(keypair, feature_ids, X, label_ids, y, class_names, cfg, test_fraction):
    """The in-process run on the same rows, joined and split the obvious way (by dictionary):
    the sorted common ids, a seeded permutation's first round(f·n) rows held out."""
    features, labels = dict(zip(feature_ids, X)), dict(zip(label_ids, y))
    common = sorted(set(features) & set(labels))
    n_test = int(round(test_fraction * len(common)))
    order = np.random.default_rng(cfg.seed).permutation(len(common))
    test_rows, train_rows = np.sort(order[:n_test]), np.sort(order[n_test:])
    X_common = np.array([features[key] for key in common])
    y_common = np.array([labels[key] for key in common])
    scaler = data.Standardizer().fit(X_common[train_rows])
    names = [f"x{j}" for j in range(X.shape[1])]
    ids = np.array(common, dtype=object)
    train_set = data.Dataset(scaler.transform(X_common[train_rows]), y_common[train_rows],
                             ids[train_rows], names, class_names, "reference")
    test_set = data.Dataset(scaler.transform(X_common[test_rows]), y_common[test_rows],
                            ids[test_rows], names, class_names, "reference")
    return acml.train(train_set, test_set, cfg, keypair=keypair), test_set


# ----------------------------------------------------------------------------------------------
# The protocol over the wire equals the protocol in process
# ----------------------------------------------------------------------------------------------
# the input width last: the data party may know it only after the split (its preparation)
PSI_ALIGNMENT = [("label", "data", "alignment and split", "public"),
                 ("label", "data", "label ids, blinded", "revealed"),
                 ("data", "label", "label ids, blinded twice", "revealed"),
                 ("data", "label", "data ids, blinded", "revealed"),
                 ("label", "data", "data ids, blinded twice", "revealed"),
                 ("data", "label", "intersection fingerprint", "public"),
                 ("label", "data", "intersection fingerprint", "public"),
                 ("data", "label", "input width", "public")]
PUBLIC_IDS_ALIGNMENT = [("label", "data", "alignment and split", "public"),
                        ("label", "data", "ids", "public"), ("data", "label", "ids", "public"),
                        ("data", "label", "input width", "public")]


@pytest.mark.parametrize("name, align", [("breast_cancer", "psi"), ("wine", "psi"),
                                         ("wine", "public-ids")])
def test_two_parties_over_a_socket_equal_the_in_process_run_bit_for_bit(keypair, name, align):
    """Binary and multi-class, ids aligned privately or in the clear: over a real socket,
    W_B + ε_acc equals the in-process joint W integer for integer, the label party's layers,
    losses and test predictions are identical, and both sides recorded the same messages, with
    payloads that survived the wire exactly."""
    feature_ids, X, label_ids, y, class_names = two_party_data(name)
    cfg = config()
    reference, test_set = reference_run(keypair, feature_ids, X, label_ids, y, class_names, cfg,
                                        0.25)
    data_transcript, label_transcript = io.StringIO(), io.StringIO()
    out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), cfg,
                   data_options=dict(transcript=data_transcript, align=align),
                   label_options=dict(transcript=label_transcript, align=align))
    assert "data_error" not in out and "label_error" not in out, out
    data_run, label_run = out["data"], out["label"]
    label_party, data_party = label_run.party, data_run.party

    assert_same_weights(data_party, label_party, reference)
    assert np.array_equal(label_party.classes(), reference.label_party.classes())
    assert np.array_equal(label_run.test_labels, test_set.y)
    assert label_run.metrics()["test_accuracy"] == reference.metrics["test_accuracy"]

    def names(messages):
        return [(m.step, m.sender, m.receiver, m.name, m.kind) for m in messages]

    data_side, label_side = data_run.channel.messages, label_run.channel.messages
    assert names(data_side) == names(label_side)
    alignment = PSI_ALIGNMENT if align == "psi" else PUBLIC_IDS_ALIGNMENT
    assert names(label_side)[:len(alignment)] == [("align", *m) for m in alignment]
    # the protocol itself is unchanged: the in-process run's messages, after the alignment
    assert names(label_side)[len(alignment):] == names(reference.channel.messages)
    assert data_run.n_common == label_run.n_common == 80
    assert (data_run.n_other_ids, label_run.n_other_ids) == (len(label_ids), len(feature_ids))
    for sent, received in zip(data_side, label_side):
        assert sent.nbytes == received.nbytes and sent.shape == received.shape
        assert sent.declaration() == received.declaration()
    # every payload, as each side recorded it (ciphertexts as decimal integers, floats exactly)
    sent_lines = data_transcript.getvalue().splitlines()
    assert len(sent_lines) == len(data_side)
    assert sent_lines == label_transcript.getvalue().splitlines()
    assert label_party.public_key == data_party.public_key


@pytest.mark.parametrize("refuser", ["data", "label"])
def test_a_refused_sigma_is_told_to_the_other_side_which_says_why_it_stopped(keypair, refuser):
    """Each party enforces its own σ, and the side that did not refuse learns why: the data
    party refuses a training plan whose fixed-point plan (σ 40) is not its own (σ 48); the label
    party refuses σ 20 without the insecure switch, though the data party would take it. The
    refusing side sends its one line before closing; the other stops with "the data party
    stopped: <that line>", not "closed the connection"."""
    feature_ids, X, label_ids, y, class_names = two_party_data(n_rows=40)
    if refuser == "data":
        data_options, cfg = dict(plan=FixedPointPlan(sigma=48)), config()
    else:
        data_options = dict(plan=FixedPointPlan(sigma=20), allow_insecure_sigma=True)
        cfg = config(plan=FixedPointPlan(sigma=20))
    out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), cfg,
                   data_options=data_options)
    told = "label" if refuser == "data" else "data"
    refusal, heard = str(out[f"{refuser}_error"]), out[f"{told}_error"]
    if refuser == "data":
        assert "fixed-point plan" in refusal and "'sigma': 40" in refusal
        assert "'sigma': 48" in refusal
    else:
        assert "sigma 20 is under the secure minimum of 40 bits" in refusal
    assert isinstance(heard, wire.PeerStopped)
    assert str(heard) == f"the {refuser} party stopped: {refusal}"
    assert "\n" not in str(heard) and "closed the connection" not in str(heard)


@pytest.mark.parametrize("padder", ["label", "data"])
def test_a_psi_set_padded_with_a_sequential_id_space_is_refused_naming_both_sizes(keypair,
                                                                                  padder):
    """PSI enumeration: a party that pads its set with a whole space of sequential customer
    numbers would learn which of them the other holds. Each party caps the other's set at
    --psi-max-ratio (2) times its own and refuses a larger one in one line with both sizes,
    before the intersection is learnt; the padder is told why."""
    rng = np.random.default_rng(3)
    honest = [f"c{number:05d}" for number in rng.permutation(1000)[:40]]  # 40 of 1,000 numbers
    padded = [f"c{number:05d}" for number in range(1000)]  # the whole space
    feature_ids, label_ids = (honest, padded) if padder == "label" else (padded, honest)
    X = rng.normal(size=(len(feature_ids), 3))
    y = np.arange(len(label_ids)) % 2
    out = run_pair(keypair, feature_ids, X, label_ids, y, 2, config())
    refuser = "data" if padder == "label" else "label"
    refusal = str(out[f"{refuser}_error"])
    assert refusal == (f"the {padder} party's PSI set holds 1,000 ids, more than 2 × this "
                       "party's 40 (--psi-max-ratio 2): a set padded with guessed ids would test "
                       "each of them against this party's ids; if the two sets truly differ "
                       "that much, both parties raise --psi-max-ratio")
    assert str(out[f"{padder}_error"]) == f"the {refuser} party stopped: {refusal}"
    assert "data" not in out and "label" not in out


class Stub:
    """A party for channel-level tests: it draws no masks."""

    mask_source = None


def test_each_side_evaluates_only_the_payloads_it_sends():
    """Laziness is what lets one step function run in both processes: the receiver never calls
    the sender's ``make`` (it would compute with state it does not have) and the sender never
    calls the receiver's ``take``; the in-process channel calls both, and returns public values."""
    left, right = socket.socketpair()
    sender = transport.SocketChannel(wire.Connection(left, timeout=scaled(5)), "data", Stub())
    receiver = transport.SocketChannel(wire.Connection(right, timeout=scaled(5)), "label", Stub())

    def must_not_run(*_):
        raise AssertionError("a side evaluated the other side's thunk")

    values = np.array([-(2 ** 70), -1, 0, 1, 2 ** 90], dtype=object)
    taken = []
    assert sender.send(4, "data", "label", "T", "masked", make=lambda party: values,
                       take=must_not_run, mask_bits=140, value_bits=90) is None
    assert receiver.send(4, "data", "label", "T", "masked", make=must_not_run,
                         take=lambda party, got: taken.append(got), mask_bits=140,
                         value_bits=90) is None  # only public payloads are returned
    assert list(taken[0]) == list(values) and receiver.messages[0].mask_bits == 140
    both = []
    in_process = Channel(data_party=Stub(), label_party=Stub())
    assert in_process.send(0, "label", "data", "plan", "public", make=lambda party: {"lr": 0.1},
                           take=lambda party, plan: both.append(plan)) == {"lr": 0.1}
    assert both == [{"lr": 0.1}]
    left.close(), right.close()


def test_each_process_holds_only_its_own_party_and_runs_only_its_work():
    """What replaced the stand-in for the absent party: a socket channel holds its own party
    alone, ``at`` the other party runs nothing here, and a message between two parties of which
    neither lives here is refused rather than silently skipped."""
    left, right = socket.socketpair()
    here = Stub()
    channel = transport.SocketChannel(wire.Connection(left, timeout=scaled(5)), "data", here)
    assert set(channel.local) == {"data"} and channel.local["data"] is here
    ran = []
    channel.at("label", lambda party: ran.append("label"))
    channel.at("data", lambda party: ran.append(party))
    assert ran == [here]
    with pytest.raises(ValueError, match="at least one party"):
        Channel()
    left.close(), right.close()


@pytest.mark.parametrize("payload", [
    np.array([[-(2 ** 300), -129, -128, -1], [0, 127, 128, 2 ** 511]], dtype=object),
    np.array([[0.1, -0.0], [np.inf, -1e300]]),
    {"ids": ["a", "b"], "n_features": 3, "lr": 0.1, "nested": {"x": [1, 2.5, None, True]}},
])
def test_payloads_round_trip_the_wire_exactly(payload):
    """Signed big integers (at every byte boundary), float64 bits and public JSON come back
    exactly as they were sent."""
    header, body = frames.encode_payload(payload)
    got = frames.decode_payload(header, body, None, "test")
    if isinstance(payload, np.ndarray):
        assert got.shape == payload.shape
        assert [repr(v) for v in got.ravel()] == [repr(v) for v in payload.ravel()]
    else:
        assert got == payload


def test_ciphertexts_and_the_public_key_round_trip_the_wire(keypair):
    """[[values]] and n survive encoding; ciphertexts are checked against the declared key."""
    public_key = keypair[0]
    encrypted = public_key.encrypt(Fixed.from_ints(np.array([[1, -2], [3, 4]], dtype=object), 5))
    header, body = frames.encode_payload(encrypted)
    got = frames.decode_payload(header, body, public_key, "test")
    assert got.scale == 5 and np.array_equal(keypair[1].decrypt(got).values, [[1, -2], [3, 4]])
    header, body = frames.encode_payload(public_key)
    assert frames.decode_payload(header, body, None, "test") == public_key


# ----------------------------------------------------------------------------------------------
# Malformed and unexpected frames
# ----------------------------------------------------------------------------------------------
# (frame-level and payload-level refusals: tests/network/test_wire.py)


def test_ciphertexts_under_another_key_or_out_of_range_are_refused(keypair):
    """The receiver checks every ciphertext against the data party's key before using it."""
    public_key = keypair[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other, _ = paillier.generate_keypair(KEY_BITS, allow_insecure=True)
    foreign = other.encrypt(Fixed.from_ints(np.array([1], dtype=object), 0))
    header, body = frames.encode_payload(foreign)
    with pytest.raises(wire.TransportError, match="different public key"):
        frames.decode_payload(header, body, public_key, "test")
    genuine = public_key.encrypt(Fixed.from_ints(np.array([1], dtype=object), 0))
    header, body = frames.encode_payload(genuine)
    width = (public_key.nsquare.bit_length() + 7) // 8
    zero = body[:len(body) - width] + b"\0" * width  # ciphertext 0 is no ciphertext
    with pytest.raises(wire.TransportError, match="outside"):
        frames.decode_payload(header, zero, public_key, "test")
    with pytest.raises(wire.TransportError, match="frame says shape"):
        frames.decode_payload({**header, "shape": [2]}, body, public_key, "test")


def _channel_pair():
    left, right = socket.socketpair()
    return (transport.SocketChannel(wire.Connection(left, timeout=scaled(5)), "data", Stub()),
            transport.SocketChannel(wire.Connection(right, timeout=scaled(5)), "label", Stub()))


def _nothing(*_):
    return None


def test_a_frame_that_is_not_the_next_expected_message_is_refused():
    """Step, name, kind and sender must be what the protocol expects next: a well-formed frame
    carrying the wrong message is refused, and so is a declared width other than expected (both
    sides compute every declaration from public facts, so any difference is refused)."""
    data_side, label_side = _channel_pair()
    values = np.array([5, 6], dtype=object)
    data_side.send(4, "data", "label", "T", "masked", make=lambda _: values, take=_nothing,
                   mask_bits=140, value_bits=90)
    with pytest.raises(wire.TransportError, match="step 4 message 'T' .* where the protocol "
                                                  "expects step 1"):
        label_side.send(1, "data", "label", "X·W + ε_B", "revealed", make=_nothing,
                        take=_nothing, reason="z")
    # refused at its header, before its body is read: the connection then refuses everything
    with pytest.raises(wire.TransportError, match="already failed"):
        label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                        mask_bits=140, value_bits=90)
    data_side, label_side = _channel_pair()
    data_side.send(4, "data", "label", "T", "masked", make=lambda _: values, take=_nothing,
                   mask_bits=141, value_bits=90)
    with pytest.raises(wire.TransportError, match="widths 141/90\\) where the protocol "
                                                  "expects step 4 message 'T'"):
        label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                        mask_bits=140, value_bits=90)
    with pytest.raises(LeakageError, match="sender and receiver must be the two parties"):
        label_side.send(4, "data", "data", "T", "masked", make=_nothing, take=_nothing)


def _send_raw(channel, declaration, payload):
    """A peer that skips its own checks: the frame goes out exactly as given."""
    layout, body = frames.encode_payload(payload)
    full = {"reason": None, "mask_bits": None, "value_bits": None, "shape": None, **declaration}
    channel.connection.send_frame({"type": "message", "declaration": full, "layout": layout},
                                  body)


def test_the_receiver_runs_the_in_process_leakage_checks_on_what_the_sender_declared():
    """A peer that skips its own checks and declares a weak mask, passes an array off as public,
    sends floats as masked or a payload of another shape is stopped at the receiver by the same
    checks as in process."""
    data_side, label_side = _channel_pair()
    weak = {"step": "4", "sender": "data", "receiver": "label", "name": "T", "kind": "masked",
            "mask_bits": 60, "value_bits": 30}
    _send_raw(data_side, weak, np.array([1, 2], dtype=object))
    with pytest.raises(LeakageError, match="weak mask"):
        label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                        mask_bits=60, value_bits=30)

    data_side, label_side = _channel_pair()
    _send_raw(data_side, {"step": "0", "sender": "data", "receiver": "label", "name": "shapes",
                          "kind": "public"}, np.ones(3))
    with pytest.raises(LeakageError, match="undeclared plaintext"):
        label_side.send(0, "data", "label", "shapes", "public", make=_nothing, take=_nothing)

    masked = {"step": "4", "sender": "data", "receiver": "label", "name": "T", "kind": "masked",
              "mask_bits": 140, "value_bits": 90}
    _send_raw(data_side, masked, np.array([0.5, 1.5]))
    with pytest.raises(LeakageError, match="a masked payload must be an integer array"):
        label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                        mask_bits=140, value_bits=90)
    _send_raw(data_side, {**masked, "shape": [3]}, np.array([1, 2], dtype=object))
    with pytest.raises(wire.TransportError, match=r"the frame declares shape \[2\], the "
                                                  r"protocol expects \[3\]"):
        label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                        shape=(3,), mask_bits=140, value_bits=90)


def _declare_only(channel, declaration, layout, body_bytes):
    """A peer that declares a frame of ``body_bytes`` and sends its header, but not its body."""
    header = json.dumps({"type": "message", "declaration": declaration,
                         "layout": layout}).encode()
    channel.connection.sock.sendall(wire.PREFIX.pack(wire.MAGIC, 0, len(header), body_bytes)
                                    + header)


def test_a_frame_declaring_a_huge_shape_is_refused_before_its_body_is_read():
    """Parse nothing before its size is known to be right: the receiver checks the frame's
    declared shape and element count against the message due before it reads the body. The
    peer here declares 64 Mi integers in 200 MiB and never sends them: the refusal comes at
    once (a receiver that waited for the body would time out instead)."""
    masked = {"step": "4", "sender": "data", "receiver": "label", "name": "T", "kind": "masked",
              "reason": None, "mask_bits": 140, "value_bits": 90, "shape": [3]}
    for layout, words in [
            ({"dtype": "int", "width": 3, "shape": [8192, 8192]},
             r"declares shape \[8192, 8192\], the protocol expects \[3\]"),
            ({"dtype": "int", "width": 3, "shape": [1 << 40]}, r"is not a list of at most"),
            ({"dtype": "int", "width": 3, "shape": [1] * 65}, r"is not a list of at most 32")]:
        data_side, label_side = _channel_pair()
        _declare_only(data_side, masked, layout, 200 * 2 ** 20)
        with pytest.raises(wire.TransportError, match=words) as caught:
            label_side.send(4, "data", "label", "T", "masked", make=_nothing, take=_nothing,
                            shape=(3,), mask_bits=140, value_bits=90)
        # the words are the check's: a receiver that waited for the body would time out instead
        assert "\n" not in str(caught.value)
    # a list of integers the alignment expects: its length and width, before its body
    revealed = {"step": "align", "sender": "data", "receiver": "label", "name": "ids",
                "kind": "revealed", "reason": "r", "mask_bits": None, "value_bits": None,
                "shape": None}
    for layout, words in [({"dtype": "int-list", "width": 257, "shape": [1 << 20]},
                           r"shape \[1048576\], the protocol expects a list of 5 integers"),
                          ({"dtype": "int-list", "width": 4000, "shape": [5]},
                           r"integers of 4000 bytes, more than the 257"),
                          ({"dtype": "json", "shape": []}, r"a json payload of shape \[\]")]:
        data_side, label_side = _channel_pair()
        label_side.expect_integers("ids", count=5, max_width=257)
        _declare_only(data_side, revealed, layout, 200 * 2 ** 20)
        with pytest.raises(wire.TransportError, match=words):
            label_side.send("align", "data", "label", "ids", "revealed", make=_nothing,
                            take=_nothing, reason="r")


def test_a_silent_or_trickling_peer_times_out_with_a_clear_error():
    """--timeout bounds the wait for each whole frame: silence, or a few bytes then silence."""
    for prefix in (b"", b"ACML\0"):
        left, right = socket.socketpair()
        right.sendall(prefix)
        start = time.monotonic()
        with pytest.raises(wire.TransportError, match=r"the data party did not deliver step 1 .* within 0.3 s"):
            wire.Connection(left, timeout=0.3, peer="the data party").receive_frame(
                "step 1 message 'X·W + ε_B'")
        assert time.monotonic() - start < scaled(2)
        left.close(), right.close()


# ----------------------------------------------------------------------------------------------
# Authentication
# ----------------------------------------------------------------------------------------------
def _serve(listener, token, results, log):
    try:
        results.append(wire.accept_peer(listener, token, timeout=TIMEOUT, log=log.append))
    except Exception as error:
        results.append(error)


def test_a_wrong_token_is_refused_and_the_data_party_keeps_waiting_for_the_right_one():
    """Wrong token: the label party is told 'refused' and gets nothing else; the data party logs
    the refusal and still accepts the next, authentic connection."""
    listener = wire.listen("127.0.0.1", 0)
    port, results, log = listener.getsockname()[1], [], []
    thread = threading.Thread(target=_serve, args=(listener, TOKEN, results, log), daemon=True)
    thread.start()
    with pytest.raises(wire.AuthenticationError, match="refused this connection: wrong token"):
        wire.connect_peer("127.0.0.1", port, WRONG_TOKEN, timeout=scaled(5))
    # a raw client sees exactly: the hello, then the refusal, then the end of the connection
    # (a proof that is not even ASCII is just as wrong, and must not crash the data party)
    for proof in ("00" * 32, "é" * 64):
        raw = wire.Connection(socket.create_connection(("127.0.0.1", port)), timeout=scaled(5))
        hello, _ = raw.receive_frame()
        raw.send_frame({"type": "hello", "version": wire.VERSION, "role": "label",
                        "nonce": "00" * 32, "proof": proof})
        assert raw.receive_frame()[0] == {"type": "refused", "reason": "wrong token"}
        with pytest.raises(wire.TransportError, match="closed the connection"):
            raw.receive_frame()
        raw.close()
    good = wire.connect_peer("127.0.0.1", port, TOKEN, timeout=scaled(5))
    thread.join(TIMEOUT)
    listener.close()
    assert isinstance(results[0], wire.Connection)
    assert len(log) == 3 and all("wrong token" in line for line in log)
    results[0].close(), good.close()


@pytest.mark.parametrize("forge", ["garbage", "reflect"])
def test_the_label_party_refuses_a_data_party_that_cannot_prove_the_token(forge):
    """Both directions are authenticated: a server without the token cannot answer the label
    party's challenge, not even by reflecting the label party's own proof back at it."""
    listener = wire.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]

    def impostor():
        sock, _ = listener.accept()
        connection = wire.Connection(sock, timeout=scaled(5))
        connection.send_frame({"type": "hello", "version": wire.VERSION, "role": "data",
                               "nonce": os.urandom(32).hex()})
        hello, _ = connection.receive_frame()
        proof = hello["proof"] if forge == "reflect" else "ab" * 32
        connection.send_frame({"type": "welcome", "proof": proof})
        time.sleep(0.2)
        connection.close()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with pytest.raises(wire.AuthenticationError, match="did not prove the shared token"):
        wire.connect_peer("127.0.0.1", port, TOKEN, timeout=scaled(5))
    thread.join(TIMEOUT)
    listener.close()


def test_the_token_comes_from_a_file_or_the_environment_and_must_be_random(tmp_path):
    """--token-file wins (whitespace stripped), else ACML_TOKEN; missing or weak is an error."""
    path = tmp_path / "token"
    path.write_text("  " + TOKEN.decode() + "\n")
    assert wire.read_token(str(path), environ={"ACML_TOKEN": WRONG_TOKEN.decode()}) == TOKEN
    assert wire.read_token(None, environ={"ACML_TOKEN": WRONG_TOKEN.decode()}) == WRONG_TOKEN
    with pytest.raises(ValueError, match="--token-file PATH or set ACML_TOKEN"):
        wire.read_token(None, environ={})
    with pytest.raises(ValueError, match="not a made token"):
        wire.read_token(None, environ={"ACML_TOKEN": "short"})
    with pytest.raises(ValueError, match="cannot read"):
        wire.read_token(str(tmp_path / "missing"), environ={})


@pytest.mark.parametrize("weak", ["password-password-password-passw",
                                  "correct horse battery staple 2024",
                                  "Summer2024!Summer2024!Summer2024"])
def test_party_refuses_a_password_as_token_in_one_line_that_says_how_to_make_one(
        tmp_path, capsys, no_training, weak):
    """Passwords that once passed the token check: one recorded handshake lets anyone test
    guesses of them offline. Refused before any work, in one line naming the file, saying it is
    not a made token, and giving the command that makes one."""
    path = tmp_path / "token.txt"
    path.write_text(weak + "\n")
    line = one_line_error(capsys, ["party", "label", "--connect", "127.0.0.1:9",
                                   "--labels", "l.csv", "--id-column", "id", "--label-column",
                                   "y", "--token-file", str(path)])
    assert line.startswith(f"acml.py party label: error: the token file {path} is not a made "
                           "token")
    assert line.endswith("make one with: python acml.py token "
                                                      "--out token.txt")


def test_the_token_command_prints_or_writes_a_fresh_token_only_its_owner_can_read(tmp_path,
                                                                                  capsys):
    """`acml.py token`: 256 bits from secrets as acml- and 64 hex digits, fresh each time,
    accepted by the token check; --out creates the file with mode 0600 and never overwrites."""
    import acml
    assert acml.main(["token"]) == 0
    printed = capsys.readouterr().out.strip()
    assert re.fullmatch(r"acml-[0-9a-f]{64}", printed)
    out = tmp_path / "token.txt"
    assert acml.main(["token", "--out", str(out)]) == 0
    written = out.read_text().strip()
    assert re.fullmatch(r"acml-[0-9a-f]{64}", written) and written != printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert wire.read_token(str(out), environ={}) == written.encode()
    capsys.readouterr()
    line = one_line_error(capsys, ["token", "--out", str(out)])
    assert "already exists" in line and out.read_text().strip() == written


# ----------------------------------------------------------------------------------------------
# The command line: two processes
# ----------------------------------------------------------------------------------------------
def write_csvs(tmp_path, feature_ids, X, label_ids, y):
    features, labels = tmp_path / "features.csv", tmp_path / "labels.csv"
    with open(features, "w") as handle:
        handle.write("id," + ",".join(f"x{j}" for j in range(X.shape[1])) + "\n")
        for key, row in zip(feature_ids, X):
            handle.write(key + "," + ",".join(repr(float(v)) for v in row) + "\n")
    with open(labels, "w") as handle:
        handle.write("id,outcome\n")
        for key, label in zip(label_ids, y):
            handle.write(f"{key},{label}\n")
    token = tmp_path / "token"
    token.write_text(TOKEN.decode() + "\n")
    return str(features), str(labels), str(token)


def cli(*args):
    return [sys.executable, str(ROOT / "acml.py"), "party", *args]


def environment():
    env = {key: value for key, value in os.environ.items() if key != "ACML_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_data_party(features, token, *extra):
    process = subprocess.Popen(
        cli("data", "--listen", "127.0.0.1:0", "--features", features, "--id-column", "id",
            "--token-file", token, "--key-bits", str(KEY_BITS), "--insecure-small-key",
            "--timeout", str(TIMEOUT), "--quiet", *extra),
        cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    line = process.stdout.readline() if ready else ""
    if "listening on" not in line:
        process.kill()
        raise AssertionError(f"the data party did not start: {line!r} {process.stderr.read()}")
    return process, int(line.rsplit(":", 1)[1])


# config()'s activation and learning rate at the command line, whose defaults are nn.HEADLINE's
CLI_MODEL = ("--activation", "relu", "--lr", "0.1")


def label_args(labels, token, port, *extra):
    """The label party's command line; with the small test key, which each party must allow
    (the label party refuses the data party's 512-bit key without --insecure-small-key)."""
    return cli("label", "--connect", f"127.0.0.1:{port}", "--labels", labels, "--id-column", "id",
               "--label-column", "outcome", "--token-file", token, "--hidden", "3",
               "--batch-size", "16", "--epochs", "2", "--test-fraction", "0.25",
               "--insecure-small-key", "--timeout", str(TIMEOUT), "--quiet", *extra)


def test_cli_two_processes_refuse_a_wrong_token_then_train_like_the_in_process_run(
        tmp_path, keypair):
    """`acml.py party data` and `acml.py party label` in two processes: a label party with the
    wrong token exits 2 with one line and the data party carries on; the right one trains, and
    its --json report (losses, the fingerprint of its layers, test accuracy) equals the
    in-process run's, number for number."""
    feature_ids, X, label_ids, y, class_names = two_party_data()
    features, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    wrong = tmp_path / "wrong"
    wrong.write_text(WRONG_TOKEN.decode() + "\n")
    data_process, port = start_data_party(features, token, "--init-seed", "0")
    try:
        refused = subprocess.run(label_args(labels, str(wrong), port), cwd=ROOT,
                                 env=environment(), capture_output=True, text=True,
                                 timeout=TIMEOUT)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [  # errors name the role since the CLI
            "acml.py party label: error: the data party refused this connection: wrong token"]
        report, transcript = tmp_path / "report.json", tmp_path / "transcript.jsonl"
        label = subprocess.run(label_args(labels, token, port, *CLI_MODEL, "--json", str(report),
                                          "--transcript", str(transcript)),
                               cwd=ROOT, env=environment(), capture_output=True, text=True,
                               timeout=TIMEOUT)
        assert label.returncode == 0, label.stderr
        data_out, data_err = data_process.communicate(timeout=TIMEOUT)
    finally:
        data_process.kill()
    assert data_process.returncode == 0, data_err
    assert "refused a connection from 127.0.0.1" in data_err and "wrong token" in data_err
    assert "training plan: 3 units (relu) in the first layer" in data_out  # the label party's

    reference, _ = reference_run(keypair, feature_ids, X, label_ids, y, class_names, config(),
                                 0.25)
    metrics = json.loads(report.read_text())
    assert metrics["batch_losses"] == reference.losses
    assert metrics["label_model_sha256"] == transport.label_model_fingerprint(
        reference.label_party.model)
    assert metrics["test_accuracy"] == reference.metrics["test_accuracy"]
    assert metrics["n_common"] == 80 and metrics["key_bits"] == KEY_BITS
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert len(lines) == metrics["messages"]
    assert [line["name"] for line in lines if line["step"] == "align"] == [
        name for _, _, name, _ in PSI_ALIGNMENT]  # private set intersection by default
    assert "test accuracy" in label.stdout


def test_a_killed_data_party_ends_the_label_party_cleanly_mid_epoch(tmp_path):
    """SIGKILL the data party's process after the first batch: the label party stops at once
    with a one-line TransportError naming the step, not after a timeout and not with a hang."""
    feature_ids, X, label_ids, y, class_names = two_party_data()
    features, _, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    data_process, port = start_data_party(features, token)
    killed_at = []

    def kill_after_first_batch(done, total=None):
        if done == 1:
            data_process.kill()
            data_process.wait(TIMEOUT)
            killed_at.append(time.monotonic())

    try:
        connection = wire.connect_peer("127.0.0.1", port, TOKEN, timeout=TIMEOUT)
        with pytest.raises(wire.TransportError, match=r"the data party (closed|broke) the "
                                                           r"connection.* step 1") as info:
            transport.run_label_party(connection, label_ids, y, len(class_names), config(),
                                      progress=kill_after_first_batch)
    finally:
        data_process.kill()
        data_process.communicate(timeout=TIMEOUT)
    assert time.monotonic() - killed_at[0] < scaled(5)
    assert "\n" not in str(info.value)


def test_the_label_party_cli_exits_2_with_one_line_when_the_data_party_disconnects(tmp_path,
                                                                                   keypair):
    """The data party is interrupted mid-epoch (Ctrl-C): it tells the label party so before it
    closes, and `acml.py party label` exits with code 2 and that single line on stderr — no
    traceback, no hang. (A data party killed outright, which can say nothing: see
    test_a_killed_data_party_ends_the_label_party_cleanly_mid_epoch.)"""
    feature_ids, X, label_ids, y, _ = two_party_data()
    _, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    listener = wire.listen("127.0.0.1", 0)
    label_process = subprocess.Popen(label_args(labels, token, listener.getsockname()[1]),
                                     cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def stop_after_first_batch(done, total=None):
        raise KeyboardInterrupt("the data party goes away")

    try:
        connection = wire.accept_peer(listener, TOKEN, timeout=TIMEOUT)
        with pytest.raises(KeyboardInterrupt):
            transport.run_data_party(connection, feature_ids, X, keypair=keypair,
                                     progress=stop_after_first_batch)
        _, err = label_process.communicate(timeout=TIMEOUT)
    finally:
        label_process.kill()
        listener.close()
    assert label_process.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines == ["acml.py party label: error: the data party stopped: it was interrupted "
                     "(Ctrl-C)"]


def test_the_data_party_cli_refuses_strangers_and_exits_2_on_a_forged_frame(tmp_path):
    """Before the token is proven, garbage (even a huge declared frame) is refused and the data
    party keeps listening; after it, a frame without a valid tag (forged, or altered on the
    way) ends the data party with exit code 2 and one line naming the frame, never a
    traceback."""
    feature_ids, X, label_ids, y, _ = two_party_data()
    features, _, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    data_process, port = start_data_party(features, token)
    try:
        stranger = wire.Connection(socket.create_connection(("127.0.0.1", port)), timeout=scaled(5))
        assert stranger.receive_frame()[0]["type"] == "hello"
        stranger.sock.sendall(wire.PREFIX.pack(wire.MAGIC, 0, 2, 1 << 30) + b"{}")
        try:  # refused: closed (FIN, or RST over the unread bytes) without a word about the data
            assert stranger.sock.recv(4096) == b""
        except ConnectionResetError:
            pass
        stranger.close()
        connection = wire.connect_peer("127.0.0.1", port, TOKEN, timeout=TIMEOUT)
        # the label party's next frame is its number 1 (its hello was 0); the prefix is
        # right, the tag is not
        connection.sock.sendall(wire.PREFIX.pack(wire.MAGIC, 1, 9, 0) + b"\0" * wire.TAG_BYTES
                                + b"not json!")
        _, err = data_process.communicate(timeout=TIMEOUT)
        connection.close()
    finally:
        data_process.kill()
    assert data_process.returncode == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert "refused a connection from 127.0.0.1" in lines[0] and "exceed the caps" in lines[0]
    assert len(lines) == 2
    assert lines[1].startswith("acml.py party data: error: refused step align message ")
    assert "(label → data): the prefix tag of the label party's frame 1 does not verify" in lines[1]


# ----------------------------------------------------------------------------------------------
# TLS, and the handshake limit, at the command line
# ----------------------------------------------------------------------------------------------
def _certificates(folder):
    """A CA, the data party's certificate for 127.0.0.1 and the label party's (trustme)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    files = {}
    for role, name in (("data", "127.0.0.1"), ("label", "acml-label-party")):
        certificate = ca.issue_cert(name)
        certificate.cert_chain_pems[0].write_to_path(str(folder / f"{role}.crt"))
        certificate.private_key_pem.write_to_path(str(folder / f"{role}.key"))
        files[role] = ["--tls-cert", str(folder / f"{role}.crt"), "--tls-key",
                       str(folder / f"{role}.key"), "--tls-ca", str(folder / "ca.crt")]
    return files


def test_a_tls_session_of_a_real_training_over_the_cli_equals_the_in_process_run(tmp_path,
                                                                                   keypair):
    """Both parties with --tls-cert/--tls-key/--tls-ca (certificates from trustme): the session
    runs over TLS 1.3, says so, and trains exactly what the in-process run trains. An idle
    connection opened first is dropped after the data party's own --handshake-timeout, named
    as such (that it delays nobody is tests/network/test_wire.py's subject)."""
    feature_ids, X, label_ids, y, class_names = two_party_data(n_rows=60)
    features, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    tls = _certificates(tmp_path)
    data_process, port = start_data_party(features, token, "--init-seed", "0",
                                          "--handshake-timeout", "0.5", *tls["data"])
    try:
        idle = socket.create_connection(("127.0.0.1", port))  # never speaks
        time.sleep(1.0)  # past its handshake limit: refused, and logged
        report = tmp_path / "report.json"
        label = subprocess.run(label_args(labels, token, port, *CLI_MODEL, "--json", str(report),
                                          *tls["label"]),
                               cwd=ROOT, env=environment(), capture_output=True, text=True,
                               timeout=TIMEOUT)
        assert label.returncode == 0, label.stderr
        data_out, data_err = data_process.communicate(timeout=TIMEOUT)
        idle.close()
    finally:
        data_process.kill()
    assert data_process.returncode == 0, data_err
    assert "refused a connection from 127.0.0.1" in data_err
    assert "took longer than the handshake limit of 0.5 s (--handshake-timeout)" in data_err
    assert "every frame authenticated, encrypted by TLSv1.3" in data_out
    metrics = json.loads(report.read_text())
    assert metrics["wire"]["tls"] == "TLSv1.3"
    reference, _ = reference_run(keypair, feature_ids, X, label_ids, y, class_names, config(),
                                 0.25)
    assert metrics["batch_losses"] == reference.losses
    assert metrics["label_model_sha256"] == transport.label_model_fingerprint(
        reference.label_party.model)


@pytest.mark.parametrize("flags, words", [
    (["--tls-cert", "a.crt"], "--tls-cert given without --tls-key, --tls-ca"),
    (["--tls-key", "a.key", "--tls-ca", "ca.crt"], "--tls-key, --tls-ca given without "
                                                     "--tls-cert"),
    (["--tls-cert", "none.crt", "--tls-key", "none.key", "--tls-ca", "none-ca.crt"],
     "TLS certificate or key (none.crt, none.key): cannot load it"),
])
def test_tls_takes_all_three_files_or_none_in_one_line(tmp_path, flags, words):
    result = subprocess.run(cli("label", "--connect", "127.0.0.1:9", "--labels", "x.csv",
                                "--id-column", "id", "--label-column", "y", *flags),
                            cwd=tmp_path, env=environment(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_the_two_parties_must_choose_the_same_alignment(tmp_path):
    """--align public-ids at the label party, psi (the default) at the data party: the data
    party refuses before any id crosses, one line each side, exit 2; the label party's line
    is the data party's reason."""
    feature_ids, X, label_ids, y, _ = two_party_data(n_rows=30)
    features, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    data_process, port = start_data_party(features, token)
    try:
        label = subprocess.run(label_args(labels, token, port, "--align", "public-ids"),
                               cwd=ROOT, env=environment(), capture_output=True, text=True,
                               timeout=TIMEOUT)
        _, data_err = data_process.communicate(timeout=TIMEOUT)
    finally:
        data_process.kill()
    assert data_process.returncode == 2 and label.returncode == 2
    assert data_err.strip().splitlines() == [
        "acml.py party data: error: the label party aligns the ids by 'public-ids', this party by "
        "'psi': both must choose the same (--align)"]
    assert label.stderr.strip().splitlines() == [
        "acml.py party label: error: the data party stopped: the label party aligns the ids by "
        "'public-ids', this party by 'psi': both must choose the same (--align)"]


def test_a_label_party_without_allow_bottom_refuses_a_bottom_model_in_one_line_then_consents(
        tmp_path):
    """`party data --bottom 3` against `party label` on default options: the label party
    refuses at step 0 (exit 2, one line naming --allow-bottom and leak L4) and the data party
    ends with one line too; with --allow-bottom the same pair trains to the end."""
    feature_ids, X, label_ids, y, _ = two_party_data(n_rows=40)
    features, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    data_process, port = start_data_party(features, token, "--bottom", "3")
    try:
        label = subprocess.run(label_args(labels, token, port), cwd=ROOT, env=environment(),
                               capture_output=True, text=True, timeout=TIMEOUT)
        _, data_err = data_process.communicate(timeout=TIMEOUT)
    finally:
        data_process.kill()
    assert label.returncode == 2
    lines = label.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-bottom" in lines[0] and "L4" in lines[0], label.stderr
    assert lines[0].startswith("acml.py party label: error: refusing the data party's bottom")
    assert data_process.returncode == 2 and len(data_err.strip().splitlines()) == 1, data_err

    data_process, port = start_data_party(features, token, "--bottom", "3")
    try:
        label = subprocess.run(label_args(labels, token, port, "--allow-bottom", "--epochs", "1"),
                               cwd=ROOT, env=environment(), capture_output=True, text=True,
                               timeout=TIMEOUT)
        data_out, data_err = data_process.communicate(timeout=TIMEOUT)
    finally:
        data_process.kill()
    assert label.returncode == 0, label.stderr
    assert data_process.returncode == 0, data_err


def test_the_reason_sent_to_the_peer_leaves_out_this_partys_paths_and_columns(tmp_path):
    """Property: what a stopping party tells the other names no file of its own (a directory's
    name can hold a client's name) and no column of its own data, while the refusal itself
    (nothing to resume, already exists) still reads."""
    private = tmp_path / "alice-private-hospital" / "ckpt" / "data_party.npz"
    line = transport.reason_for_the_peer(ValueError(
        f"{private} already exists: resume it, or train into another directory"))
    assert "alice" not in line and str(tmp_path) not in line
    assert line == "<its own path> already exists: resume it, or train into another directory"
    assert transport.reason_for_the_peer(data.DataError(
        "features with 3 columns; the checkpoint's model takes 4 (age, income, ...)")) == (
        "a problem with its own data, which it reports on its side")
