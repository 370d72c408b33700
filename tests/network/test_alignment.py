"""The id alignment over the wire: private set intersection by default, public ids if both ask.

Loopback only, 512-bit Paillier keys through the explicit insecure flag, every wait bounded.
The privacy test reads every byte each party's connection received (prefixes, headers, bodies
and tags) in a real training session and looks for the ids the other party holds alone.
"""

import threading

import numpy as np
import pytest
from conftest import TEST_TOKEN, insecure_keypair, scaled

import acml
from jobs import data
from network import psi
from network import alignment
from network import transport
from network import wire
TOKEN = TEST_TOKEN
TIMEOUT = scaled(10.0)


def _connected():
    """(data party's connection, label party's connection), authenticated, on loopback."""
    listener = wire.listen("127.0.0.1", 0)
    box = {}

    def accept():
        box["data"] = wire.accept_peer(listener, TOKEN, timeout=TIMEOUT)
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    label = wire.connect_peer("127.0.0.1", listener.getsockname()[1], TOKEN, timeout=TIMEOUT)
    thread.join(TIMEOUT)
    listener.close()
    return box["data"], label


def align_pair(label_ids, data_ids, *, label_align="psi", data_align="psi", ratio=2.0):
    """Only the alignment, both parties in two threads over a real socket: {role: Alignment or
    the exception it ended with}."""
    data_connection, label_connection = _connected()
    out = {}

    def run(role, connection, make):
        try:
            id_list = make()
            channel = transport.SocketChannel(connection, role, id_list)
            alignment.align_ids(channel)
            alignment.declare_width(channel)  # after the alignment: the data party's width
            out[role] = id_list
        except Exception as error:  # handed to the test
            out[role] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, daemon=True, args=(
                   "data", data_connection,
                   lambda: alignment.Alignment(data_ids, align=data_align, n_inputs=3,
                                               psi_max_ratio=ratio))),
               threading.Thread(target=run, daemon=True, args=(
                   "label", label_connection,
                   lambda: alignment.Alignment(label_ids, align=label_align,
                                               test_fraction=0.25, seed=1,
                                               psi_max_ratio=ratio)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "an alignment did not end"
    return out


@pytest.mark.parametrize("label_ids, data_ids", [
    (["p3", "p1", "p7", "p2", "p9"], ["p9", "p4", "p1", "p3", "p5", "p6"]),  # some shared
    (["b", "a", "c"], ["c", "a", "b"]),  # the same ids, in other orders: all shared
    ([1, 2, 10], ["10", "2", "x"]),  # compared as text
])
def test_psi_over_the_wire_finds_the_intersection_in_the_same_order_on_both_sides(
        label_ids, data_ids):
    out = align_pair(label_ids, data_ids)
    label, data_side = out["label"], out["data"]
    expected = sorted({str(k) for k in label_ids} & {str(k) for k in data_ids})
    assert label.common == data_side.common == expected
    assert [str(label_ids[r]) for r in label.rows] == expected
    assert [str(data_ids[r]) for r in data_side.rows] == expected
    assert (label.n_other_ids, data_side.n_other_ids) == (len(data_ids), len(label_ids))
    assert label.side.fingerprint == data_side.side.fingerprint
    assert (data_side.test_fraction, data_side.seed, label.n_inputs) == (0.25, 1, 3)
    # the same rows as the public-id alignment finds, which each party could check alone
    public = align_pair(label_ids, data_ids, label_align="public-ids", data_align="public-ids")
    assert list(public["label"].rows) == list(label.rows)
    assert list(public["data"].rows) == list(data_side.rows)


def test_an_empty_intersection_is_refused_by_both_parties_after_the_exchange():
    out = align_pair(["a", "b"], ["c", "d", "e"])
    for role in ("label", "data"):
        assert isinstance(out[role], data.DataError), out[role]
        assert "no id is shared" in str(out[role])


@pytest.mark.parametrize("align", ["psi", "public-ids"])
@pytest.mark.parametrize("duplicated", ["label", "data"])
def test_a_duplicate_id_on_one_side_is_refused_before_anything_is_sent(duplicated, align):
    ids, twice = ["a", "b", "c"], ["a", "b", "a"]
    out = align_pair(twice if duplicated == "label" else ids,
                     twice if duplicated == "data" else ids, label_align=align,
                     data_align=align)
    assert isinstance(out[duplicated], data.DataError)
    assert str(out[duplicated]) == "duplicate id 'a'; each row needs its own id"
    other = out["data" if duplicated == "label" else "label"]
    assert isinstance(other, wire.TransportError) and "closed the connection" in str(other)


def test_the_data_party_refuses_another_alignment_than_its_own():
    out = align_pair(["a", "b"], ["a", "b"], label_align="public-ids", data_align="psi")
    assert isinstance(out["data"], ValueError)
    assert str(out["data"]) == ("the label party aligns the ids by 'public-ids', this party by "
                                "'psi': both must choose the same (--align)")
    assert isinstance(out["label"], wire.TransportError)  # it sent no id: the plan comes first
    with pytest.raises(ValueError, match="align must be one of psi, public-ids"):
        alignment.Alignment(["a"], align="clear")


def test_different_intersections_are_refused_by_their_fingerprints():
    id_list = alignment.Alignment(["a"])
    id_list.side = psi.LabelSide(["a"])
    id_list.side.fingerprint = "0" * 64
    id_list.take_fingerprint("0" * 64)
    with pytest.raises(ValueError, match="intersections differ"):
        id_list.take_fingerprint("1" * 64)


# ----------------------------------------------------------------------------------------------
# No id held by one party alone reaches the other: the captured bytes of a real session
# ----------------------------------------------------------------------------------------------
def _capture(monkeypatch):
    """Every byte each connection reads, keyed by the peer it reads from."""
    received = {}
    read = wire.Connection._read

    def recording(self, count, deadline, what, started=False):
        chunk = read(self, count, deadline, what, started)
        received.setdefault(self.peer, bytearray()).extend(chunk)
        return chunk
    monkeypatch.setattr(wire.Connection, "_read", recording)
    return received


def _traces(key):
    """How an id could show: its text, and its hash in the group (as the wire writes ints)."""
    element = psi.hash_to_group(key)
    return [key.encode(), element.to_bytes(psi.ELEMENT_BYTES + 1, "big")]


def _session(label_ids, y, data_ids, X, align):
    cfg = acml.Config(hidden=(2,), epochs=1, batch_size=16, key_bits=512, allow_insecure=True)
    data_connection, label_connection = _connected()
    out = {}

    def data_side():
        try:
            out["data"] = transport.run_data_party(data_connection, data_ids, X,
                                                   keypair=insecure_keypair(512), init_seed=0,
                                                   align=align)
        except Exception as error:
            out["data"] = error
    thread = threading.Thread(target=data_side, daemon=True)
    thread.start()
    out["label"] = transport.run_label_party(label_connection, label_ids, y, 2, cfg,
                                             test_fraction=0.25, align=align)
    thread.join(TIMEOUT)
    assert not isinstance(out["data"], Exception), out["data"]
    return out


def test_no_id_held_by_one_party_alone_appears_in_any_frame_the_other_receives(monkeypatch):
    dataset = data.load_builtin("breast_cancer")
    rows = np.random.default_rng(3).permutation(len(dataset.y))[:48]
    keys = [f"customer-{row:05d}" for row in rows]
    label_ids, data_ids = keys[:40], keys[8:]  # 8 ids only at the label party, 8 only at data
    only_label, only_data = set(label_ids) - set(data_ids), set(data_ids) - set(label_ids)
    y, X = dataset.y[rows[:40]], dataset.X[rows[8:]]

    received = _capture(monkeypatch)
    out = _session(label_ids, y, data_ids, X, "psi")
    assert out["label"].n_common == out["data"].n_common == 32
    by_data, by_label = bytes(received["the label party"]), bytes(received["the data party"])
    assert len(by_data) > 10_000 and len(by_label) > 10_000  # the whole session was recorded
    for key in only_label:
        assert not any(trace in by_data for trace in _traces(key)), key
    for key in only_data:
        assert not any(trace in by_label for trace in _traces(key)), key

    # the control: aligned on public ids, the same search finds every one of them
    received.clear()
    _session(label_ids, y, data_ids, X, "public-ids")
    by_data, by_label = bytes(received["the label party"]), bytes(received["the data party"])
    assert all(key.encode() in by_data for key in only_label)
    assert all(key.encode() in by_label for key in only_data)


def test_the_psi_cap_is_the_stated_factor_of_ones_own_set_and_can_be_raised_by_both():
    """The cap on the other's PSI set: ⌊ratio × own⌋ ids (2 by default), so a deviating party
    can test at most that many guessed ids; sets that truly differ more align once both
    parties raise the ratio, and a ratio under 1 or not finite is refused naming the flag."""
    assert alignment.psi_cap(40, 2.0) == 80 and alignment.psi_cap(7, 2.5) == 17
    assert alignment.psi_cap(10 ** 7, 1e6) == alignment.MAX_IDS
    out = align_pair([f"c{i}" for i in range(30)], [f"c{i}" for i in range(5)])
    assert "more than 2 × this party's 5" in str(out["data"])  # the label set, 30 > 10
    out = align_pair([f"c{i}" for i in range(30)], [f"c{i}" for i in range(5)], ratio=6)
    assert out["data"].common == out["label"].common == sorted(f"c{i}" for i in range(5))
    for bad in (0.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="--psi-max-ratio must be a number in"):
            alignment.Alignment(["a"], psi_max_ratio=bad)
