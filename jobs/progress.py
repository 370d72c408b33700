"""Progress on stderr: tqdm bars for step 0's [[X]], the batches, and the encrypted prediction.

tqdm is imported only when a bar is shown. Each context manager yields None when ``shown`` is
false, so a run without bars goes through the same lines."""

from __future__ import annotations

import sys
from contextlib import contextmanager

PREDICTION_CHUNK_ROWS = 1024  # rows per protocol.predict: a progress report after each


def phase_bar(total: int, description: str, unit: str):
    """A tqdm bar for one phase, called as ``bar(done, total)`` (DataParty.on_progress)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True)

    class Bar:
        def __call__(self, done, _total=None):
            bar.update(done - bar.n)

        def close(self):
            bar.close()
    return Bar()


def batch_bar(total: int, label_party=None):
    """A tqdm bar over the batches, as ``after_batch`` for protocol.train: it shows the label
    party's last loss where that party runs here."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc="encrypted training", unit="batch", file=sys.stderr,
               dynamic_ncols=True)

    class Bar:
        @property
        def total(self):
            return bar.total

        @total.setter
        def total(self, value):
            bar.total = value
            bar.refresh()

        def __call__(self, rows):
            if label_party is not None and label_party.losses:
                bar.set_postfix(loss=f"{label_party.losses[-1]:.4f}")
            bar.update(1)

        def close(self):
            bar.close()
    return Bar()


class PartyProgress:
    """A party's batch bar in a two-process run, called as ``progress(done, total=None)`` after
    each batch (transport's after_batch). The bar opens at the first call; ``total`` (the
    batches still to train: (epochs − epochs done) × batches per epoch, known once the
    training plan is agreed) is shown as soon as a call gives it, so the bar reads
    ``12/40 batch`` rather than ``12batch``."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if self.bar is None:
            self.bar = batch_bar(total)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar(None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def batches_to_train(training_plan, n_train: int) -> int:
    """The batches a party still trains: (epochs − epochs completed) × ⌈n_train / batch⌉, from
    the public training plan (plan.TrainingPlan) and the aligned training rows."""
    per_epoch = -(-int(n_train) // training_plan.batch_size)
    return (training_plan.epochs - training_plan.epochs_completed) * per_epoch


@contextmanager
def encrypting_rows(data_party, n_rows: int, shown: bool):
    """Step 0's bar: the data party reports each chunk of [[X]] it encrypts (on_progress)."""
    if not shown:
        yield None
        return
    bar = phase_bar(n_rows, "step 0: encrypting [[X]]", "row")
    data_party.on_progress = bar
    try:
        yield bar
    finally:
        data_party.on_progress = None
        bar.close()


@contextmanager
def batches(total: int, label_party, shown: bool):
    """The batches' bar, to pass as protocol.train's ``after_batch`` (None when not shown)."""
    if not shown:
        yield None
        return
    bar = batch_bar(total, label_party)
    try:
        yield bar
    finally:
        bar.close()
