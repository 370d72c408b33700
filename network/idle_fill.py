"""Two processes: a party fills its randomizer pool while it waits for its peer's next frame.

When the parties run as two processes, each batch is a ping-pong: the data party sits idle while
the label party computes the step-1 and step-4 multi-exponentiations, and the label party sits
idle while the data party decrypts. Each party's pool (kernels.EpochPool: the data party's
textbook r^n by CRT, the label party's DJN masks) is otherwise filled at setup and between
epochs, with nothing else to do; on two cores that filling costs wall-clock time. Here the
waiting party fills it instead, cooperatively, in its own process (no thread):

    while the peer's frame has not begun to arrive and the pool has room:
        compute one slice (a few randomizers: SLICE DJN or KEY_OWNER_SLICE CRT per worker)

The socket is checked (``select`` with timeout 0, and TLS's own buffer) between every two
slices, so a frame that arrives is read after at most the slice under way: the peer is never
delayed by more than one slice per frame. The randomizers are the pool's own (``pool.fill``:
the secrets from ``secrets``, exactly as at setup), so nothing a party computes changes and
the weights stay bit-identical; which randomizer serves which ciphertext never matters, each
serves once.

The cap (memory): the pool never holds more than the rest of the current epoch and the whole
next epoch take, counted from the public plan (``pool.need``), so at the end of an epoch it
holds at most the next epoch's need and the fill between epochs has only the rest to do.
During the last epoch it holds nothing beyond it. Caveat: while the pool has room, the wire's
``--timeout`` for a silent peer starts only when the filling stops (at the cap, at most one
epoch's fill later).

The time spent so is offline work like the pools' other filling (the report's step "pool"),
taken out of the step in which the party waited, and reported apart as hidden in idle time.
The in-process Channel never waits, and has none of this.
"""

from __future__ import annotations

import select
import time

from speed import kernels
SLICE = 4  # DJN randomizers (a public key's pool) per slice and per worker: ~2 ms at 2048 bits
# The key owner's textbook r^n by CRT costs about 10x a DJN one: one per slice and per worker,
# so that a frame that arrives mid-slice waits for one randomizer at most.
KEY_OWNER_SLICE = 1


def peer_ready(sock) -> bool:
    """True once bytes of the peer's next frame can be read without waiting: buffered by TLS,
    or in the socket (select with timeout 0)."""
    pending = getattr(sock, "pending", None)
    if callable(pending) and pending() > 0:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class IdleFill:
    """One party's filling of its pool while it waits; ``enabled`` False makes it a no-op.

    ``seconds``: the time spent filling while waiting (all of it offline work, hidden in idle
    time but for the last slice of each wait); ``step_seconds``: the same per protocol step in
    which the party waited; ``slices`` and ``randomizers``: how many slices and randomizers."""

    def __init__(self, enabled: bool = True, *, slice_size: int = SLICE,
                 key_owner_slice: int = KEY_OWNER_SLICE):
        if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
            raise ValueError(f"slice_size must be a positive integer, got {slice_size!r}")
        self.enabled, self.slice_size = bool(enabled), slice_size
        self.key_owner_slice = max(1, min(int(key_owner_slice), slice_size))
        self.seconds, self.step_seconds = 0.0, {}
        self.slices = self.randomizers = 0
        self._through = {}  # epoch -> randomizers the session takes up to its end

    def room(self, party) -> int:
        """How many more randomizers ``party``'s pool may hold now: what the session takes up
        to the end of the next epoch, less what the pool has already made or made on the spot
        (pool.filled + pool.shortfall). 0 without a pool."""
        pool = getattr(getattr(party, "engine", None), "randomizer_pool", None)  # a FastEngine's
        if pool is None or not hasattr(pool, "need"):
            return 0
        next_epoch = party.epochs_completed + 1
        if next_epoch not in self._through:
            first = party.public.training.epochs_completed  # the session's first epoch
            self._through[next_epoch] = pool.step0_count + sum(
                pool.need(epoch) for epoch in range(first, next_epoch + 1))
        return self._through[next_epoch] - pool.filled - pool.shortfall

    def wait(self, party, ready, step: str) -> None:
        """Fill ``party``'s pool, a slice at a time, until ``ready()`` (the peer's frame has
        begun to arrive) or the pool is full; ``ready`` is called before every slice."""
        if not self.enabled:
            return
        start = None
        while True:
            room = self.room(party)
            if room <= 0 or ready():
                break
            start = time.perf_counter() if start is None else start
            pool = party.engine.randomizer_pool
            per_worker = self.slice_size if pool.key is pool.public_key else \
                self.key_owner_slice
            count = min(room, per_worker * kernels.worker_count(pool.executor, pool.workers))
            pool.fill(count)
            self.slices += 1
            self.randomizers += count
        if start is not None:
            spent = time.perf_counter() - start
            self.seconds += spent
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + spent

    def split(self, step_seconds: dict) -> dict:
        """Steps as kernels.split_offline gives them (the pool's filling already in "pool"),
        with the time filled while waiting taken out of the step it was waited in."""
        steps = dict(step_seconds)
        for step, seconds in self.step_seconds.items():
            if step in steps:
                steps[step] = max(steps[step] - seconds, 0.0)
        return steps

    def report(self) -> dict:
        return {"enabled": self.enabled, "seconds": self.seconds, "slices": self.slices,
                "randomizers": self.randomizers, "slice_size": self.slice_size,
                "step_seconds": dict(self.step_seconds)}
