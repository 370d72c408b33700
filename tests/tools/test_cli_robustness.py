"""What a fault-injection review found at the command line, each refused or handled in one
line: nothing that can fail after training is left to fail there (it would lose the run),
no input blocks forever or ends in a traceback, the JSON report is valid JSON, and a signal
ends a run with the shell's exit code, one line and no temporary file left behind.

Small keys (through the explicit insecure flag) and tiny data: each run takes a second or two.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line_error, write_csv
from jobs import simulation
from network import transport
import paillier

ROOT = Path(__file__).resolve().parents[2]
SMALL_KEY = ["--key-bits", "512", "--insecure-small-key"]
TINY = ["--hidden", "2", "--epochs", "1", "--quiet", *SMALL_KEY]


@pytest.fixture
def no_training(monkeypatch):
    """Bad input must be refused before training and before any key: either fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started despite bad input")
    monkeypatch.setattr(simulation, "train", refuse)
    monkeypatch.setattr(simulation, "predict", refuse)
    monkeypatch.setattr(transport, "run_data_party", refuse)
    monkeypatch.setattr(transport, "run_label_party", refuse)
    monkeypatch.setattr(paillier, "generate_keypair", refuse)


def party_csvs(tmp_path, n=60, one_class_rows=()):
    """A features CSV and a labels CSV of n rows joined on 'id' (a learnable binary label)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(int)
    features = write_csv(tmp_path / "f.csv", ["id", "a", "b", "c"],
                         [[f"r{i}", *X[i]] for i in range(n)])
    labels = write_csv(tmp_path / "l.csv", ["id", "y"], [[f"r{i}", y[i]] for i in range(n)])
    return features, labels


def csv_argv(features, labels):
    return ["--features", str(features), "--labels", str(labels), "--id-column", "id",
            "--label-column", "y"]


# ---- 1. what would fail after training is refused before it -------------------------------

def test_a_test_fraction_leaving_no_test_row_is_refused_before_training(capsys, tmp_path,
                                                                         no_training):
    """60 CSV rows at --test-fraction 0.002 give 0 test rows: refused naming the flag, before
    any key is made (it used to train every epoch, then fail in the report)."""
    features, labels = party_csvs(tmp_path)
    line = one_line_error(capsys, ["train", *TINY, *csv_argv(features, labels),
                                   "--test-fraction", "0.002"])
    assert "--test-fraction 0.002" in line and "at least one" in line, line


# ---- 3. the JSON report is valid JSON -------------------------------------------------------

def strict_json(path):
    """json.load refusing NaN and ±Infinity, which Python writes by default but JSON lacks."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_a_single_class_test_split_writes_null_auc_with_the_reason(capsys, tmp_path):
    """One test row (one class): the AUC is undefined. --json holds null and a note saying
    why, never NaN; the text report says the same."""
    features, labels = party_csvs(tmp_path)
    report = tmp_path / "r.json"
    assert acml_main(["train", *TINY, *csv_argv(features, labels), "--test-fraction", "0.02",
                      "--json", str(report)]) == 0
    metrics = strict_json(report)
    assert metrics["n_test"] == 1
    assert metrics["test_auc"] is None and metrics["plaintext_test_auc"] is None
    assert metrics["test_auc_note"] == "one class in the test rows: AUC undefined"
    assert metrics["test_report"]["auc"] is None and "auc_note" in metrics["test_report"]
    assert "AUC undefined" in capsys.readouterr().out


def acml_main(argv):
    import acml
    return acml.main(argv)
