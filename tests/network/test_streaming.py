"""Streaming: steps 1's and 4's big ciphertext arrays cross in row blocks (plan.stream_slices),
the receiver working on one block while the sender computes the next.

Every test names the property it protects. Loopback sockets, 512-bit keys through the explicit
insecure flag, tiny data, every wait bounded; nothing is timed.
"""

import io
import json
import socket
import threading
import time
import warnings

import numpy as np
import pytest
from conftest import insecure_keypair, run_pair, scaled

from network import transport
from network import wire
from channel import DATA, LABEL, Channel, LeakageError, RowBlocks
from fixed import Fixed
from plan import stream_slices
from test_parity import TEST_FRACTION, assert_same_weights, config, in_process
from test_parity import keypair, parties  # noqa: F401  (module fixtures)
from test_transport import TOKEN

KEY_BITS = 512
NAME, SHAPE = "[[X·W_B + ε_B]]", (6, 2)
WIDTHS = dict(mask_bits=500, value_bits=100)


class Stub:
    mask_source = None


def _pair(public_key, data_chunks, label_chunks, timeout=scaled(5)):
    left, right = socket.socketpair()
    data_side = transport.SocketChannel(wire.Connection(left, timeout=timeout,
                                                        peer="the label party"), DATA, Stub(),
                                        stream_chunks=data_chunks)
    label_side = transport.SocketChannel(wire.Connection(right, timeout=timeout,
                                                         peer="the data party"), LABEL, Stub(),
                                         stream_chunks=label_chunks)
    data_side.public_key = label_side.public_key = public_key  # as after step 0's key message
    return data_side, label_side


def _ciphertexts(public_key, shape=SHAPE):
    values = np.arange(1, np.prod(shape) + 1, dtype=np.int64).reshape(shape).astype(object)
    return public_key.encrypt(Fixed.from_ints(values, 0))


def _send(channel, make=None, take=None):
    channel.send(1, LABEL, DATA, NAME, "ciphertext", make=make, take=take, shape=SHAPE,
                 stream=True, **WIDTHS)


def test_row_blocks_are_contiguous_near_equal_and_at_most_one_per_row():
    """Both parties cut a message alone: the cut covers every row once, in order, in
    min(rows, chunks) blocks whose sizes differ by at most one; a bad count is one line."""
    for rows, chunks in [(1, 4), (7, 3), (16, 4), (5, 1), (3, 9)]:
        slices = stream_slices(rows, chunks)
        assert len(slices) == min(rows, chunks)
        assert [i for s in slices for i in range(s.start, s.stop)] == list(range(rows))
        assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1
    for bad in (0, -1, 2.0, True, 10 ** 6):
        with pytest.raises(ValueError, match="chunk count must be an integer") as caught:
            stream_slices(4, bad)
        assert "\n" not in str(caught.value)


def test_one_process_joins_the_blocks_into_the_same_array(keypair):
    """In one process a streamed message reaches ``take`` as the one array, whatever the chunk
    count, and the record is one message of the whole array's size."""
    public_key = keypair[0]
    whole = _ciphertexts(public_key)
    seen = {}
    for chunks in (1, 4):
        channel = Channel(data_party=Stub(), label_party=Stub(), stream_chunks=chunks)
        channel.public_key = public_key
        computed = []

        def rows(block):
            computed.append((block.start, block.stop))
            return whole[block]
        _send(channel, make=lambda _: RowBlocks(SHAPE, rows),
              take=lambda _, got: seen.__setitem__(chunks, got))
        assert computed == [(s.start, s.stop) for s in stream_slices(SHAPE[0], chunks)]
        assert [m.name for m in channel.messages] == [NAME]
        assert channel.messages[0].nbytes == 12 * 128  # 12 ciphertexts mod a 1024-bit n²
    for got in seen.values():
        assert np.array_equal(got.ciphertexts, whole.ciphertexts)


def test_the_receiver_works_on_a_block_while_the_sender_computes_the_next(keypair):
    """The overlap itself: the sender computes block i+1 only after the receiver has taken
    block i (each waits for the other, bounded). A channel that sent the array whole, or
    handed it over only once complete, would never release the sender: its wait would time
    out and the test fail. The receiver ends with the very array the sender computed."""
    public_key = keypair[0]
    whole = _ciphertexts(public_key)
    data_side, label_side = _pair(public_key, 3, 3)
    taken = [threading.Event() for _ in range(3)]
    errors, got = [], {}

    def rows(block):
        index = block.start // 2
        if index and not taken[index - 1].wait(5):
            raise AssertionError(f"block {index} computed before block {index - 1} was taken")
        return whole[block]

    def sender():
        try:
            _send(label_side, make=lambda _: RowBlocks(SHAPE, rows))
        except Exception as error:  # reported below
            errors.append(error)

    def take(_, blocks):
        parts = []
        for index, block in enumerate(blocks):
            parts.append(block)
            taken[index].set()
        got["parts"] = parts

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    _send(data_side, take=take)
    thread.join(scaled(10))
    assert not errors and not thread.is_alive()
    assert [part.shape for part in got["parts"]] == [(2, 2)] * 3
    joined = np.concatenate([part.ciphertexts for part in got["parts"]])
    assert np.array_equal(joined, whole.ciphertexts)
    assert [m.nbytes for m in data_side.messages] == [m.nbytes for m in label_side.messages]


def _declare_only(channel, message, block, layout, body_bytes):
    """A peer that declares a frame of ``body_bytes`` and sends its header, but not its body."""
    header = json.dumps({"type": "message", "declaration": message, "layout": layout,
                         "block": block}).encode()
    channel.connection.sock.sendall(wire.PREFIX.pack(wire.MAGIC, 0, len(header), body_bytes)
                                    + header)


def test_a_block_of_another_count_or_shape_is_refused_before_its_body_is_read(keypair):
    """The receiver cuts the message itself and checks each frame's row block (index, count,
    rows) and its layout's shape against its own cut before it reads the body: a peer that
    cuts otherwise (another --stream-chunks) or declares a block of another shape is refused
    at once, in one line, while its 100 MiB body is never sent."""
    public_key = keypair[0]
    declaration = {"step": "1", "sender": LABEL, "receiver": DATA, "name": NAME,
                   "kind": "ciphertext", "reason": None, "shape": list(SHAPE), **WIDTHS}
    cases = [({"index": 0, "of": 3, "rows": [0, 2]}, [2, 2],
              r"row block 1 of 3 \(rows \[0, 2\]\); this side expects row block 1 of 2 "
              r"\(rows \[0, 3\]\) \(both parties must stream alike"),
             ({"index": 0, "of": 2, "rows": [0, 3]}, [5, 2],
              r"row block 1 of 2: the frame declares shape \[5, 2\], the protocol expects "
              r"\[3, 2\]"),
             (None, list(SHAPE), r"sent no row block; this side expects row block 1 of 2")]
    for block, shape, words in cases:
        data_side, label_side = _pair(public_key, 2, 2)
        _declare_only(label_side, declaration, block,
                      {"dtype": "paillier-ciphertext", "shape": shape}, 100 * 2 ** 20)
        # the words are the check's: a receiver that waited for the body would time out instead
        with pytest.raises(wire.TransportError, match=words) as caught:
            _send(data_side, take=lambda _, blocks: list(blocks))
        assert "\n" not in str(caught.value)


def test_parties_that_cut_differently_stop_at_the_first_block_in_one_line(keypair):
    """Two real channels with different chunk counts: the receiver refuses the first block."""
    public_key = keypair[0]
    data_side, label_side = _pair(public_key, 2, 3)
    whole = _ciphertexts(public_key)
    _send(label_side, make=lambda _: whole)
    with pytest.raises(wire.TransportError, match="this side expects row block 1 of 2") as caught:
        _send(data_side, take=lambda _, blocks: list(blocks))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("how", ["closes", "falls silent"])
def test_a_peer_that_stops_mid_stream_ends_with_one_line(keypair, how):
    """A sender that stops after its first block (it closes the connection, or stays silent):
    the receiver has taken block 1, and the wait for block 2 ends with the usual one-line
    closed / timeout error naming the message and the block."""
    public_key = keypair[0]
    data_side, label_side = _pair(public_key, 3, 3, timeout=scaled(0.5))
    whole = _ciphertexts(public_key)

    def rows(block):
        if block.start:
            raise RuntimeError("the label party stops here")
        return whole[block]
    with pytest.raises(RuntimeError, match="stops here"):
        _send(label_side, make=lambda _: RowBlocks(SHAPE, rows))
    if how == "closes":
        label_side.connection.close()
    taken = []
    words = ("closed the connection" if how == "closes" else "did not deliver") + \
        r" .*step 1 message '\[\[X·W_B \+ ε_B\]\]' \(label → data\), row block 2 of 3"
    with pytest.raises(wire.TransportError, match=words) as caught:
        _send(data_side, take=lambda _, blocks: taken.extend(blocks))
    assert len(taken) == 1 and "\n" not in str(caught.value)


def test_a_receiver_that_leaves_blocks_untaken_is_refused(keypair):
    """Every block must reach ``take``: one that stops early would leave frames unread."""
    public_key = keypair[0]
    data_side, label_side = _pair(public_key, 3, 3)
    _send(label_side, make=lambda _: _ciphertexts(public_key))
    with pytest.raises(LeakageError, match="took 1 of the 3 row blocks"):
        _send(data_side, take=lambda _, blocks: next(iter(blocks)))


def test_streamed_training_gives_bit_identical_weights_on_off_and_in_one_process(
        keypair, parties):
    """Streaming changes the order of the work, never a result: two processes with 1 block
    (off) and with 3 per message (on) both give the in-process run's weights, losses and test
    scores bit for bit; the run on crossed more frames, and the leakage report (one row per
    message, its count and bytes) is the same."""
    cfg = config(epochs=1)
    reference = in_process(keypair, parties, cfg)
    feature_ids, X, label_ids, y, class_names = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    runs, transcripts = {}, {}
    for chunks in (1, 3):
        transcripts[chunks] = io.StringIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), cfg,
                           test_fraction=TEST_FRACTION,
                           data_options=dict(feature_names=names, stream_chunks=chunks),
                           label_options=dict(class_names=class_names, stream_chunks=chunks,
                                              transcript=transcripts[chunks]))
        assert "data_error" not in out and "label_error" not in out, out
        assert_same_weights(out["data"].party, out["label"].party, reference)
        runs[chunks] = out
    lines = {chunks: [json.loads(line) for line in text.getvalue().splitlines()]
             for chunks, text in transcripts.items()}
    assert [(r["step"], r["name"]) for r in lines[1]] == [(r["step"], r["name"]) for r in lines[3]]
    for line in lines[3]:  # a streamed message is one line holding the whole array
        if line["name"] == NAME:
            assert len(line["payload"]["ciphertexts"]) == np.prod(line["shape"])
    off, on = runs[1], runs[3]
    assert on["data"].channel.connection.frames_received > \
        off["data"].channel.connection.frames_received
    protocol_rows = [[row for row in run["label"].channel.report() if row["step"] != "align"]
                     for run in (off, on)]  # the alignment's sizes vary with its random group
    assert protocol_rows[0] == protocol_rows[1]  # elements; the protocol's do not


def test_frames_over_tcp_are_not_held_back_by_nagle():
    """A streamed message is several frames in one direction, each several small writes:
    with Nagle's algorithm each write waits for the peer's (delayed) ACK, ~40 ms a frame.
    Every TCP connection the wire makes sets TCP_NODELAY, at both ends."""
    import socket as sockets
    listener = wire.listen("127.0.0.1", 0)
    port, accepted = listener.getsockname()[1], []
    thread = threading.Thread(target=lambda: accepted.append(
        wire.accept_peer(listener, TOKEN, timeout=scaled(10))),
        daemon=True)
    thread.start()
    connected = wire.connect_peer("127.0.0.1", port, TOKEN,
                                  timeout=scaled(10))
    thread.join(scaled(10))
    listener.close()
    for connection in (connected, accepted[0]):
        assert connection.sock.getsockopt(sockets.IPPROTO_TCP, sockets.TCP_NODELAY)
        connection.close()
