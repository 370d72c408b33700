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
        def __call__(self, rows):
            if label_party is not None and label_party.losses:
                bar.set_postfix(loss=f"{label_party.losses[-1]:.4f}")
            bar.update(1)

        def close(self):
            bar.close()
    return Bar()


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
