"""Two processes fill their randomizer pools while they wait for each other (idle_fill.py).

The properties: idle filling changes no result (two processes, with it and without, give the
in-process weights bit for bit); the pool never holds more than the rest of the epoch and the
next one take, and the session computes exactly the randomizers it uses; the two-process
report has the step "pool" and says how much of it was hidden; and a waiting party checks the
socket between every two slices, so a peer's frame is read after at most one slice (counted in
slices, not timed). Loopback, 512-bit keys through the explicit insecure flag, tiny data.
"""

import socket
from types import SimpleNamespace

import pytest
from conftest import insecure_keypair, run_pair

from network import idle_fill
from speed import kernels
from test_parity import (KEY_BITS, TEST_FRACTION, assert_same_weights, config,  # noqa: F401
                         in_process, keypair, parties)  # keypair, parties: the parity fixtures

EPOCHS = 3


def pair(keypair, parties, idle_fill, *, test_fraction=TEST_FRACTION):
    feature_ids, X, label_ids, y, class_names = parties
    options = dict(idle_fill=idle_fill)
    out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names),
                   config(epochs=EPOCHS), test_fraction=test_fraction,
                   data_options=options, label_options=dict(class_names=class_names, **options))
    assert "data_error" not in out and "label_error" not in out, out
    return out


@pytest.fixture(scope="module")
def runs(keypair, parties):
    return {idle: pair(keypair, parties, idle) for idle in (True, False)}


@pytest.mark.parametrize("idle_fill", [True, False])
def test_idle_filling_changes_no_weight_against_one_process(runs, keypair, parties, idle_fill):
    """Two processes give the in-process weights, losses and test scores bit for bit, with
    idle filling and without; and with it the parties did fill while waiting (else this test
    would prove nothing), without it they never did."""
    out = runs[idle_fill]
    assert_same_weights(out["data"].party, out["label"].party,
                        in_process(keypair, parties, config(epochs=EPOCHS)))
    filled = sum(out[role].channel.idle.randomizers for role in ("data", "label"))
    assert (filled > 0) == idle_fill


def test_the_pool_never_holds_more_than_the_rest_of_the_epoch_and_the_next(keypair, parties,
                                                                            monkeypatch):
    """After every fill, while the party is in epoch e, its pool holds at most need(e) +
    need(e + 1) (plus step 0's [[X]] before the first batch); every epoch ends with at most the
    next epoch's need ready; and the session computes exactly the randomizers the plan counts
    (no test rows: nothing is made on the spot), all of them used."""
    seen = []
    fill = kernels.RandomizerPool.fill

    def watched(pool, count):
        fill(pool, count)
        owner = getattr(pool, "owner", None)  # None: the first fill, at setup
        seen.append((pool, len(pool), 0 if owner is None else owner.epochs_completed))
        return pool

    epoch_pool = kernels.epoch_pool

    def owned(enabled, key, public, executor=None):
        pool = epoch_pool(enabled, key, public, executor)
        if pool is not None:
            pool.owner = SimpleNamespace(epochs_completed=public.training.epochs_completed)
        return pool

    monkeypatch.setattr(kernels.RandomizerPool, "fill", watched)
    monkeypatch.setattr(kernels, "epoch_pool", owned)
    ends = []
    prepare = kernels.prepare_pool

    def at_epoch_end(pool, epoch):
        assert pool is not None
        pool.owner.epochs_completed = epoch
        ends.append((pool, len(pool), pool.need(epoch)))
        prepare(pool, epoch)
    monkeypatch.setattr(kernels, "prepare_pool", at_epoch_end)
    out = pair(keypair, parties, True, test_fraction=0.0)
    pools = {role: out[role].party.engine.randomizer_pool for role in ("data", "label")}
    assert out["data"].channel.idle.randomizers > 0
    for pool, held, epoch in seen:
        assert held <= pool.step0_count + pool.need(epoch) + pool.need(epoch + 1)
    for pool, held, need in ends:
        assert held <= need
    for pool in pools.values():
        planned = pool.step0_count + sum(pool.need(epoch) for epoch in range(EPOCHS))
        assert pool.filled == planned and pool.shortfall == 0 and len(pool) == 0


def test_two_process_reports_give_the_pool_as_a_step_and_what_idle_time_hid(runs):
    """Each party's step_seconds has a step "pool" (setup's, between epochs' and idle-time
    filling); the idle-time part is taken out of the steps it was waited in, so the steps
    still add up to the party's time; the summary names the pool and what was hidden."""
    for idle_fill, out in runs.items():
        for role in ("data", "label"):
            session = out[role]
            m = session.metrics()
            raw, steps, pool = session.channel.step_seconds, m["step_seconds"], m["pool"]
            assert steps["pool"] == pytest.approx(pool["seconds"]) and pool["seconds"] > 0
            assert pool["hidden_seconds"] == m["idle_fill"]["seconds"]
            assert (pool["hidden_seconds"] > 0) == idle_fill
            between = pool["seconds"] - pool["setup_seconds"] - pool["hidden_seconds"]
            assert sum(steps.values()) == pytest.approx(sum(raw.values()) + between)
            for step, hidden in m["idle_fill"]["step_seconds"].items():
                setup = pool["setup_seconds"] if step == "0" else 0.0
                assert steps[step] == pytest.approx(max(raw[step] - setup, 0.0) - hidden)
            assert len(m["epoch_seconds"]) == EPOCHS
            assert "randomizer pool" in session.summary()


class _Party:
    """A party as IdleFill sees it: an epoch pool of `need` per epoch, epoch 0 under way."""

    def __init__(self, need, epochs=3):
        public_key = insecure_keypair(KEY_BITS)[0]
        self.engine = SimpleNamespace(randomizer_pool=kernels.EpochPool(
            public_key, lambda epoch: need if epoch < epochs else 0))
        self.epochs_completed = 0
        self.public = SimpleNamespace(training=SimpleNamespace(epochs_completed=0))


def test_a_waiting_party_checks_the_socket_before_every_slice():
    """The peer's frame arrives after 3 slices: the party stops after exactly 3 slices of
    SLICE randomizers, having asked before each and once more (so a frame is read after at
    most the slice under way, however slow the peer)."""
    party, calls = _Party(need=100), []

    def ready():
        calls.append(len(party.engine.randomizer_pool))
        return len(calls) > 3
    filler = idle_fill.IdleFill()
    filler.wait(party, ready, "1")
    assert filler.slices == 3 and len(calls) == 4
    assert calls == [0, idle_fill.SLICE, 2 * idle_fill.SLICE, 3 * idle_fill.SLICE]
    assert len(party.engine.randomizer_pool) == filler.randomizers == 3 * idle_fill.SLICE
    assert set(filler.step_seconds) == {"1"}


def test_a_silent_peer_gets_no_more_than_the_cap_and_a_ready_one_no_slice():
    """Never ready: the party fills up to the rest of this epoch and the next (200 here) and
    stops; a frame already waiting in the socket: no slice at all; filling off: nothing."""
    party = _Party(need=100)
    filler = idle_fill.IdleFill()
    filler.wait(party, lambda: False, "1")
    assert len(party.engine.randomizer_pool) == 200 and filler.slices == -(-200 // idle_fill.SLICE)
    filler.wait(party, lambda: False, "1")
    assert len(party.engine.randomizer_pool) == 200  # full: a second wait adds nothing
    here, there = socket.socketpair()
    try:
        assert not idle_fill.peer_ready(here)
        there.sendall(b"ACML")
        assert idle_fill.peer_ready(here)
        fresh, waiting = _Party(need=100), idle_fill.IdleFill()
        waiting.wait(fresh, lambda: idle_fill.peer_ready(here), "4")
        assert waiting.slices == 0 and len(fresh.engine.randomizer_pool) == 0
    finally:
        here.close()
        there.close()
    off = idle_fill.IdleFill(enabled=False)
    off.wait(_Party(need=100), lambda: False, "1")
    assert off.slices == 0
