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

ROOT = Path(__file__).resolve().parents[2]
SMALL_KEY = ["--key-bits", "512", "--insecure-small-key"]
TINY = ["--hidden", "2", "--epochs", "1", "--quiet", *SMALL_KEY]




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


# ---- 2. no input blocks forever or ends in a traceback -------------------------------------

def run_cli(argv, tmp_path, timeout=60, env=None):
    """The command line in its own process, so that a read that blocks fails the test by
    timing out instead of hanging it."""
    return subprocess.run([sys.executable, str(ROOT / "acml.py"), *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path, env=env)


def assert_one_line_exit_2(done, *needles):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]


@pytest.mark.parametrize("command", ["train", "predict", "party data", "token file"])
def test_a_named_pipe_as_input_is_refused_in_one_line_not_read(tmp_path, command):
    """A FIFO blocks whoever opens it until a writer comes: refused, naming flag and path,
    before it is opened (it used to hang with no message)."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    features, labels = party_csvs(tmp_path)
    flag = "--token-file" if command == "token file" else "--features"
    argv = {"train": ["train", *TINY, *csv_argv(fifo, labels)],
            "predict": ["predict", "--checkpoint-dir", str(tmp_path), "--features", str(fifo),
                        "--id-column", "id"],
            "party data": ["party", "data", "--listen", "127.0.0.1:0", "--features", str(fifo),
                           "--id-column", "id", *SMALL_KEY],
            "token file": ["party", "data", "--listen", "127.0.0.1:0", "--features",
                           str(features), "--id-column", "id", *SMALL_KEY,
                           "--token-file", str(fifo)]}[command]
    assert_one_line_exit_2(run_cli(argv, tmp_path, timeout=30), flag, str(fifo), "named pipe")


def test_a_directory_as_features_is_refused_in_one_line(capsys, tmp_path, no_training):
    features, labels = party_csvs(tmp_path)
    line = one_line_error(capsys, ["train", *TINY, *csv_argv(tmp_path, labels)])
    assert "--features" in line and "is a directory" in line, line


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "corrupt"])
def test_a_damaged_gz_features_file_is_one_line_naming_it(capsys, tmp_path, no_training,
                                                          damage):
    """A cut .gz raised EOFError (a traceback); a corrupt one zlib.error: each is one line
    naming the file."""
    features, labels = party_csvs(tmp_path, n=400)
    whole = gzip.compress(Path(features).read_bytes())
    body = {"truncated": whole[: len(whole) // 2], "not gzip": b"plain text, not gzip\n",
            "corrupt": whole[:20] + bytes(b ^ 0x5A for b in whole[20:])}[damage]
    gz = tmp_path / "f.csv.gz"
    gz.write_bytes(body)
    line = one_line_error(capsys, ["train", *TINY, *csv_argv(gz, labels)])
    assert str(gz) in line, line


# ---- 4. signals: one line, the shell's exit code, no temporary file left -------------------

def start_long_train(tmp_path):
    """A train of many epochs streaming its transcript (private data) into a temporary file;
    returned once that file exists, i.e. once the run has started."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "acml.py"), "train", "--dataset", "wine", "--hidden", "2",
         "--epochs", "200", "--quiet", *SMALL_KEY, "--transcript", str(tmp_path / "t.jsonl"),
         "--json", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


def stop_with(process, *signals):
    try:
        for number in signals:
            process.send_signal(number)
            time.sleep(0.02)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("signals,code,word", [
    ((signal.SIGTERM,), 143, "terminated"),
    ((signal.SIGINT,), 130, "interrupted"),
    ((signal.SIGINT, signal.SIGINT), 130, "interrupted"),  # a second Ctrl-C during cleanup
    ((signal.SIGTERM, signal.SIGTERM), 143, "terminated")])
def test_a_signal_mid_run_is_one_line_its_exit_code_and_no_temporary_file(tmp_path, signals,
                                                                          code, word):
    """SIGTERM ended the run at -15 with no word and left OUT/t.jsonl.XXXXXXXX.tmp (private
    data); two Ctrl-C ended it at -2. Now: 143 or 130, one line, no file of the run left."""
    process = start_long_train(tmp_path)
    lines = stop_with(process, *signals)
    assert process.returncode == code, lines
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


# ---- 5. no flag is ignored or read as another value silently --------------------------------

def test_resume_with_init_seed_is_refused_in_one_line(capsys, tmp_path, no_training):
    """--resume takes W's mask from the checkpoint: --init-seed would be ignored silently
    (party data already refused it; train now does too)."""
    line = one_line_error(capsys, ["train", "--dataset", "wine", *TINY, "--resume",
                                   "--checkpoint-dir", str(tmp_path), "--init-seed", "99"])
    assert "--init-seed 99" in line and "--resume" in line, line


@pytest.mark.parametrize("flag,value", [
    ("--momentum", "1e-400"), ("--momentum", "1e-310"), ("--lr", "1e-400"),
    ("--test-fraction", "1e-400"), ("--dp-epsilon", "1e-400"), ("--dp-delta", "1e-320")])
def test_a_real_flag_that_underflows_is_refused_like_one_that_overflows(capsys, no_training,
                                                                       flag, value):
    """float('1e-400') is 0.0: --momentum took it as 0 silently. A value a float cannot hold
    (0 or a subnormal from a non-zero text) is refused naming the flag and the text."""
    line = one_line_error(capsys, ["train", "--dataset", "wine", *TINY, flag, value])
    assert line.startswith(f"acml.py train: error: {flag}: '{value}'") and "too small" in line


def test_a_party_test_fraction_that_underflows_is_refused(capsys, tmp_path, no_training):
    """party label takes --test-fraction 0 (no test rows): 1e-400 must not become that."""
    features, labels = party_csvs(tmp_path)
    line = one_line_error(capsys, ["party", "label", "--connect", "127.0.0.1:9", "--labels",
                                   str(labels), "--id-column", "id", "--label-column", "y",
                                   "--test-fraction", "1e-400"])
    assert "--test-fraction: '1e-400'" in line and "too small" in line, line


@pytest.mark.parametrize("zero", ["0", "0.0", "0e-400", "-0"])
def test_a_written_zero_is_still_zero(zero):
    from tools import cli
    assert cli.MOMENTUM(zero) == 0.0


def test_a_port_in_use_is_named_before_any_key_is_generated(tmp_path, capsys, no_training,
                                                            monkeypatch):
    """A --listen address that cannot be bound is one line naming --listen, and comes before
    the data party's key generation (no_training refuses any key): it used to come only after
    it, seconds later at 2048 bits, without naming the flag."""
    import secrets
    import socket
    from test_cli_inputs import party_argv
    monkeypatch.setenv("ACML_TOKEN", secrets.token_hex(32))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        argv = party_argv("data", tmp_path)
        argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
        line = one_line_error(capsys, argv)
    assert line.startswith(f"acml.py party data: error: --listen 127.0.0.1:{port}: "), line
    assert "cannot listen there" in line
