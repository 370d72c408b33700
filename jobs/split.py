"""The rows a run trains and tests on: a seeded split, then both parts standardised with the
mean and std of the training part (the data party's standardiser)."""

from __future__ import annotations

import numpy as np

import nn
from jobs import data


def load_split(name: str, *, test_fraction: float = 0.2, seed: int = nn.HEADLINE["seed"]):
    """A built-in dataset, split (stratified, seeded) and standardised on the training part."""
    return prepare(data.load_builtin(name), test_fraction=test_fraction, seed=seed)


def prepare(dataset: data.Dataset, *, test_fraction: float = 0.2,
            seed: int = nn.HEADLINE["seed"], return_standardizer: bool = False,
            stratified: bool = True):
    """Split, then standardise both parts with the mean and std of the training part.

    ``stratified`` — a built-in dataset is split per class (data.train_test_split); two party
    CSVs are split as two parties split them, from public facts only (``stratified=False``:
    data.split_rows on the rows in sorted-id order), so that ``train --features F --labels L``
    equals the two-process run on the same files. The standardiser belongs to the data party:
    ``return_standardizer=True`` returns it too, for ``train(..., standardizer=...)``.
    """
    if stratified:
        train_set, test_set = data.train_test_split(dataset, test_fraction=test_fraction,
                                                    seed=seed)
    else:
        # the two parties' row order first: the ids sorted as text (data.common_rows)
        keys = [str(value) for value in dataset.ids]
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        train_rows, test_rows = data.split_rows(len(dataset.y), test_fraction, seed)
        train_set, test_set = (data.take(dataset, order[rows], suffix)
                               for rows, suffix in ((train_rows, "[train]"), (test_rows, "[test]")))
    scaler = data.Standardizer().fit(train_set.X)
    train_set.X = scaler.transform(train_set.X)
    test_set.X = scaler.transform(test_set.X)
    if return_standardizer:
        return train_set, test_set, scaler
    return train_set, test_set
