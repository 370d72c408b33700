"""Parity: the one script (protocol.py) gives the same model in one process and in two.

Every test names the property it protects. The in-process reference is ``acml.train`` on the
rows the two parties align on (the common ids sorted as text, data.common_rows), split as they
split them (data.split_rows, unstratified) and standardised on the training rows
(``acml.prepare(..., stratified=False)``). Loopback only, 512-bit keys through the explicit
insecure flag, tiny data, every wait bounded.
"""

import io
import json
import shutil
import subprocess
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (assert_same_weights, insecure_keypair, over_loopback, run_pair,
                      train_as_the_parties_split)

import acml
from jobs import checkpoint
from jobs import run_directory
from jobs import data
import nn
from network import transport
from network import wire
from channel import DATA, LeakageError, leakage_lines
import protocol
from attacks.flaws import InsecureFlaws, InsecureFlawWarning
from fixed import Fixed
from test_transport import (ROOT, TIMEOUT, TOKEN, cli, environment, label_args,
                            start_data_party, two_party_data, write_csvs)

KEY_BITS = 512
TEST_FRACTION = 0.25
N_ROWS = 50  # 40 common ids: 30 training rows (2 batches of 16), 10 test rows


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


@pytest.fixture(scope="module")
def parties():
    return two_party_data("breast_cancer", n_rows=N_ROWS)


def config(**overrides):
    base = dict(hidden=(3,), activation="relu", epochs=2, batch_size=16, lr=0.1, momentum=0.5, key_bits=KEY_BITS,
                allow_insecure=True, seed=0, init_seed=0)
    base.update(overrides)
    return acml.Config(**base)


def in_process(keypair, parties, cfg, checkpoint_dir=None):
    """acml.train on the rows as the two parties align, split and standardise them."""
    feature_ids, X, label_ids, y, class_names = parties
    common, feature_rows = data.common_rows(feature_ids, label_ids)
    _, label_rows = data.common_rows(label_ids, feature_ids)
    names = [f"x{j}" for j in range(X.shape[1])]
    dataset = data.Dataset(X[feature_rows], y[label_rows], np.array(common, dtype=object), names,
                           class_names, "parity")
    return train_as_the_parties_split(dataset, cfg, keypair, test_fraction=TEST_FRACTION,
                                      checkpoint_dir=checkpoint_dir)[0]


def over_tcp(keypair, parties, cfg, *, data_options=(), label_options=()):
    feature_ids, X, label_ids, y, class_names = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), cfg,
                       test_fraction=TEST_FRACTION,
                       data_options=dict(feature_names=names, **dict(data_options)),
                       label_options=dict(class_names=class_names, **dict(label_options)))
    assert "data_error" not in out and "label_error" not in out, out
    return out["data"].party, out["label"].party


# ----------------------------------------------------------------------------------------------
# A bottom model over TCP, and prediction from each party's own checkpoint
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bottom_runs(keypair, parties, tmp_path_factory):
    cfg = config(bottom=3)
    reference_dir = tmp_path_factory.mktemp("reference")
    reference = in_process(keypair, parties, cfg, checkpoint_dir=reference_dir)
    data_dir, label_dir = tmp_path_factory.mktemp("data_own"), tmp_path_factory.mktemp("label_own")
    data_party, label_party = over_tcp(keypair, parties, cfg,
                                       data_options=dict(bottom=3, checkpoint_dir=data_dir),
                                       label_options=dict(checkpoint_dir=label_dir,
                                                          allow_bottom=True))
    return dict(reference=reference, reference_dir=reference_dir, data_party=data_party,
                label_party=label_party, data_dir=data_dir, label_dir=label_dir)


def test_bottom_model_over_tcp_equals_the_in_process_run_bit_for_bit(bottom_runs):
    """Property: with a bottom model (bottom=3, so step 4b runs over the wire), the two-process
    session trains the very weights of acml.train — W_B + ε_acc, the bottom model's W and b and
    the label party's layers — given the same rows, key pair, init_seed, seeds and batch plan."""
    assert bottom_runs["data_party"].bottom.width == 3
    assert_same_weights(bottom_runs["data_party"], bottom_runs["label_party"],
                        bottom_runs["reference"])
    steps = {m.step for m in bottom_runs["reference"].channel.messages}
    assert "4b" in steps


def predict_over_tcp(data_dir, label_dir, ids, X, names, *, both=False, **data_options):
    """predict_as_data and predict_as_label, each from its own directory, over loopback: the
    label party's outcome, or with ``both`` (the data party's, the label party's).
    ``data_options`` go to predict_as_data (``dp_epsilon``, say)."""
    out = over_loopback(
        lambda connection: transport.predict_as_data(connection, ids, X, data_dir,
                                                     feature_names=names, allow_insecure=True,
                                                     **data_options),
        lambda connection: transport.predict_as_label(connection, label_dir,
                                                      allow_insecure=True),
        timeout=TIMEOUT, label_token=TOKEN, catch=Exception)
    assert "data_error" not in out and "label_error" not in out, out
    return (out["data"], out["label"]) if both else out["label"]


def test_two_process_prediction_declares_the_ids_to_predict_and_leak_l5(bottom_runs, parties):
    """The ids to predict cross in the clear: the message is declared with the reason (the
    label party writes predictions keyed by id, so it learns which ids were scored, and by L5
    their rows), and the label party's report lines name L5, what prediction gives it."""
    feature_ids, X, _, _, _ = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    session, _, _ = predict_over_tcp(bottom_runs["data_dir"], bottom_runs["label_dir"],
                                     feature_ids[:4], X[:4], names)
    declared = {row["name"]: row for row in session.channel.report()}
    ids_row = declared["ids to predict"]
    assert ids_row["kind"] == "public" and ids_row["learned"] == (
        "public: " + protocol.IDS_TO_PREDICT_REASON)
    assert "which ids are being scored" in ids_row["learned"] and "L5" in ids_row["learned"]
    assert "L5" in declared["X·W + ε_B"]["learned"]
    lines = leakage_lines(session.channel.report())
    assert any(line.startswith("  L5 label party (semi-honest): prediction") for line in lines)
    assert not any(m.step == "4b" for m in session.channel.messages)  # no consent needed


def test_a_prediction_session_says_it_predicted_with_a_saved_model_not_that_it_trained(
        bottom_runs, parties):
    """Property: the summary of a prediction session says how many rows it predicted and after
    which epoch the model was saved, and does not claim training rows or a resumed run."""
    feature_ids, X, _, _, _ = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    data_session, (label_session, _, _) = predict_over_tcp(
        bottom_runs["data_dir"], bottom_runs["label_dir"], feature_ids[:4], X[:4], names,
        both=True)
    for session in (data_session, label_session):
        head = session.summary().splitlines()[0]
        assert "predicted 4 rows with the model saved after epoch 2" in head, head
        assert "training" not in head
        assert "resumed" not in session.summary()


def test_two_process_prediction_equals_in_process_prediction_on_both_checkpoints(
        bottom_runs, parties, tmp_path):
    """Property: predicting new rows with each party holding only its own checkpoint
    (predict_as_data / predict_as_label) gives the scores of acml.predict on both checkpoints
    together, bit for bit, and of the in-process run's own checkpoints too; the label party
    learns the rows' ids in the data party's order."""
    feature_ids, X, _, _, class_names = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    new_ids, new_X = feature_ids[:12], X[:12]
    _, ids, prediction = predict_over_tcp(bottom_runs["data_dir"], bottom_runs["label_dir"],
                                          new_ids, new_X, names)
    assert ids == [str(key) for key in new_ids]
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(run_directory.party_path(bottom_runs["data_dir"], "data"), both)
    shutil.copy(run_directory.party_path(bottom_runs["label_dir"], "label"), both)
    for directory in (both, bottom_runs["reference_dir"]):
        expected = acml.predict(directory, new_X, feature_names=names, allow_insecure=True)
        assert prediction.scores.dtype == expected.scores.dtype
        assert np.array_equal(prediction.scores, expected.scores)
        assert np.array_equal(prediction.class_ids, expected.class_ids)
        assert list(prediction.class_names) == list(expected.class_names)
    assert prediction.classes == list(class_names)


# ----------------------------------------------------------------------------------------------
# Workers on each side
# ----------------------------------------------------------------------------------------------
def _warm(pool, n):
    """Start every worker before the parties' threads do (no fork while a thread computes)."""
    for future in [pool.submit(time.sleep, 0.2) for _ in range(n)]:
        future.result(timeout=TIMEOUT)


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_workers_over_tcp_equal_the_in_process_run_bit_for_bit(keypair, parties, pool):
    """Property: with a pool of 2 workers on each side (processes: the real thing; threads too),
    the modular exponentiations run elsewhere and the weights still equal the in-process run's
    (one process, no workers) bit for bit."""
    cfg = config()
    reference = in_process(keypair, parties, cfg)
    make = ProcessPoolExecutor if pool == "process" else ThreadPoolExecutor
    with make(2) as data_pool, make(2) as label_pool:
        if pool == "process":
            _warm(data_pool, 2), _warm(label_pool, 2)
        data_party, label_party = over_tcp(keypair, parties, cfg,
                                           data_options=dict(executor=data_pool),
                                           label_options=dict(executor=label_pool))
    assert data_party.engine.executor is data_pool and label_party.engine.executor is label_pool
    assert_same_weights(data_party, label_party, reference)


def test_row_blocks_over_tcp_equal_the_in_process_run_bit_for_bit(keypair, parties):
    """Property: with row blocks (step 0's [[X_blocks]], step 1 selecting blocks of it, no
    [[X_batch]]), two processes over TCP give the in-process run's weights, losses and test
    scores bit for bit; 30 training rows make 7 blocks of 4 and a short one of 2."""
    cfg = config(block_rows=4)
    reference = in_process(keypair, parties, cfg)
    data_party, label_party = over_tcp(keypair, parties, cfg)
    assert reference.label_party.public.encrypts_blocks() and label_party.public.encrypts_blocks()
    assert data_party.public.training.block_rows == 4
    assert_same_weights(data_party, label_party, reference)


# ----------------------------------------------------------------------------------------------
# The command line: `train` in one process, `party data` + `party label` in two
# ----------------------------------------------------------------------------------------------
def run(args, timeout=3 * TIMEOUT):
    done = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def data_party_process(features, token, *extra):
    return start_data_party(features, token, "--key-bits", str(KEY_BITS), *extra)


def finish(process):
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, err
    return out


def test_cli_train_and_the_two_process_cli_pair_train_and_predict_bit_identically(
        parties, tmp_path):
    """Property: `acml.py train --features F --labels L` (one process) and `acml.py party data`
    + `party label` (two processes) on the same CSVs and seeds train bit-identical weights
    (the data party's ε_acc + the label party's W_B, the label party's parameters, its model
    fingerprint and test accuracy), and `acml.py predict` on the first run's checkpoints writes
    the very bytes that `party data --predict` + `party label --predict` write."""
    feature_ids, X, label_ids, y, _ = parties
    # `train` refuses ids without a partner, so both files hold the common ids, each in its
    # own party's order
    shared = set(feature_ids) & set(label_ids)
    in_features = [row for row, key in enumerate(feature_ids) if key in shared]
    in_labels = [row for row, key in enumerate(label_ids) if key in shared]
    feature_ids = [feature_ids[row] for row in in_features]
    features, labels, token = write_csvs(tmp_path, feature_ids, X[in_features],
                                         [label_ids[row] for row in in_labels], y[in_labels])
    common = ("--hidden", "3", "--batch-size", "16", "--epochs", "2", "--momentum", "0.5",
              "--test-fraction", str(TEST_FRACTION), "--quiet", "--insecure-small-key")
    one_dir, one_report = tmp_path / "one", tmp_path / "one.json"
    run([str(arg) for arg in cli()[:2]] + [
        "train", "--features", features, "--labels", labels, "--id-column", "id",
        "--label-column", "outcome", "--init-seed", "0", "--key-bits", str(KEY_BITS),
        "--checkpoint-dir", str(one_dir), "--json", str(one_report), *common])

    data_dir, label_dir, report = tmp_path / "data_own", tmp_path / "label_own", tmp_path / "r"
    data_process, port = data_party_process(features, token, "--init-seed", "0",
                                            "--checkpoint-dir", str(data_dir))
    try:
        run(label_args(labels, token, port, *common, "--checkpoint-dir", str(label_dir),
                       "--json", str(report)))
    finally:
        finish(data_process)

    one_data, one_label = run_directory.load_pair(one_dir, allow_insecure=True)
    two_data = checkpoint.DataPartyState.load(run_directory.party_path(data_dir, "data"),
                                              allow_insecure=True)
    two_label = checkpoint.LabelPartyState.load(run_directory.party_path(label_dir, "label"),
                                                allow_insecure=True)
    one_w, two_w = (one_label.weight_share + one_data.noise_acc,
                    two_label.weight_share + two_data.noise_acc)
    assert one_w.scale == two_w.scale and np.array_equal(one_w.values, two_w.values)
    assert sorted(one_label.parameters) == sorted(two_label.parameters)
    for name, value in one_label.parameters.items():
        assert np.array_equal(value, two_label.parameters[name]), name
    assert np.array_equal(one_data.feature_mean, two_data.feature_mean)
    assert np.array_equal(one_data.feature_std, two_data.feature_std)
    one_metrics, two_metrics = json.loads(one_report.read_text()), json.loads(report.read_text())
    assert two_metrics["label_model_sha256"] == transport.label_model_fingerprint(
        one_label.restore().model)
    assert two_metrics["test_accuracy"] == one_metrics["test_accuracy"]
    assert two_metrics["n_train"] == one_metrics["n_train"]
    assert two_metrics["final_loss"] == one_metrics["final_loss"]

    one_out, two_out = tmp_path / "one.csv", tmp_path / "two.csv"
    run([str(arg) for arg in cli()[:2]] + [
        "predict", "--checkpoint-dir", str(one_dir), "--features", features, "--id-column", "id",
        "--out", str(one_out), "--insecure-small-key"])
    data_process, port = data_party_process(features, token, "--predict", "--checkpoint-dir",
                                            str(data_dir))
    try:
        run(cli("label", "--connect", f"127.0.0.1:{port}", "--token-file", token, "--predict",
                "--checkpoint-dir", str(label_dir), "--out", str(two_out),
                "--insecure-small-key", "--timeout", str(TIMEOUT), "--quiet"))
    finally:
        finish(data_process)
    assert one_out.read_bytes() == two_out.read_bytes()
    assert len(one_out.read_text().splitlines()) == len(feature_ids) + 1


# ----------------------------------------------------------------------------------------------
# An INSECURE flaw over two processes: the channel catches it
# ----------------------------------------------------------------------------------------------
class SilencedDataSide(transport.SocketChannel):
    """A data party that runs its checks in reporting mode — a peer that skips them, as far as
    the label party can tell: its violations are recorded in ``findings`` and sent anyway."""

    def __init__(self, connection, role, party, **options):
        super().__init__(connection, role, party, **options)
        if role == DATA:
            self.mode = "report"


def flawed_pair(keypair, parties, flaws, label_options=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureFlawWarning)
        feature_ids, X, label_ids, y, class_names = parties
        return run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), config(),
                        test_fraction=TEST_FRACTION,
                        data_options=dict(insecure_flaws=flaws), label_options=label_options)


def test_zero_initial_noise_over_two_processes_is_refused_by_the_data_partys_channel(
        keypair, parties):
    """Property: the flaw zero_initial_noise (ε_acc = 0, so W0 − ε_acc is W0 itself) is caught
    at step 0 by the sender's channel, which measures the mask it drew, before the label party
    sees W0: the data party ends with the LeakageError naming the flaw, and tells the label
    party, which ends with that line as the data party's reason — and nothing was trained."""
    out = flawed_pair(keypair, parties, InsecureFlaws(zero_initial_noise=True))
    assert "data" not in out and "label" not in out
    assert isinstance(out["data_error"], LeakageError)
    assert "zero_initial_noise" in str(out["data_error"])
    assert "step 0 message 'W0 − ε_acc'" in str(out["data_error"])
    label_line = str(out["label_error"])
    assert isinstance(out["label_error"], wire.TransportError)
    assert label_line == f"the data party stopped: {out['data_error']}"
    assert "\n" not in label_line


def test_zero_initial_noise_in_reporting_mode_runs_over_two_processes_and_is_recorded(
        keypair, parties, monkeypatch):
    """Property: with the data party's channel in reporting mode, the flawed run goes on to the
    end over TCP, the finding names zero_initial_noise once (step 0), and the leak is real: the
    label party's first share was W0 itself (ε_acc started at 0, and only step 4 moved it)."""
    monkeypatch.setattr(transport, "SocketChannel", SilencedDataSide)
    received = io.StringIO()
    out = flawed_pair(keypair, parties, InsecureFlaws(zero_initial_noise=True),
                      label_options=dict(transcript=received))
    assert "data_error" not in out and "label_error" not in out, out
    findings = out["data"].channel.findings
    assert [(f.flaws, f.step, f.name) for f in findings] == [
        (("zero_initial_noise",), "0", "W0 − ε_acc")]
    assert out["label"].channel.findings == [] and out["label"].channel.mode == "raise"
    assert out["label"].public.data_flaws == ("zero_initial_noise",)
    public = out["label"].public
    w0 = nn.init_layer((public.n_inputs, public.n_hidden), 0, "relu", 0).W
    share = next(json.loads(line) for line in received.getvalue().splitlines()
                 if json.loads(line)["name"] == "W0 − ε_acc")
    assert [int(v) for v in share["payload"]] == [
        int(v) for v in Fixed.encode(w0, public.plan.w_frac_bits).values.ravel()]


def test_a_data_party_that_skips_its_checks_is_caught_by_the_label_partys_channel(
        keypair, parties, monkeypatch):
    """Property: the receiver's checks do not rely on the sender's. The flaw
    no_paillier_randomness (c = 1 + m·n, no r^n) from a data party whose own channel only
    reports is refused by the label party's channel at the first ciphertext ([[X]], step 0)
    with the LeakageError naming the flaw; the data party learns the session ended."""
    monkeypatch.setattr(transport, "SocketChannel", SilencedDataSide)
    out = flawed_pair(keypair, parties, InsecureFlaws(no_paillier_randomness=True))
    assert "label" not in out
    error = out["label_error"]
    assert isinstance(error, LeakageError), out
    assert "no_paillier_randomness" in str(error) and "step 0 message '[[X]]'" in str(error)
    assert "\n" not in str(error)
    assert isinstance(out.get("data_error"), wire.TransportError), out


def test_class_weights_and_threshold_over_tcp_equal_the_in_process_run_bit_for_bit(keypair,
                                                                                  parties):
    """Property: the label party's rare-class options (balanced class weights, a decision
    threshold) reach it in two processes as in one: the same weights, losses and test
    predictions bit for bit, and weights that differ from an unweighted run (so the option was
    not dropped on the way)."""
    cfg = config(class_weight="balanced", threshold=0.3)
    reference = in_process(keypair, parties, cfg)
    data_party, label_party = over_tcp(keypair, parties, cfg)
    assert_same_weights(data_party, label_party, reference)
    assert label_party.model.threshold == 0.3
    assert label_party.model.positive_class == reference.label_party.model.positive_class
    unweighted = in_process(keypair, parties, config())
    assert unweighted.label_party.losses != reference.losses


def test_each_partys_bar_is_given_the_batches_it_will_train_as_its_total(keypair, parties):
    """Property: in two processes each party's progress callback gets the total number of
    batches it will train (epochs × batches per epoch), so its bar reads done/total, and the
    last call's count reaches that total."""
    calls = {"data": [], "label": []}
    feature_ids, X, label_ids, y, class_names = parties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_pair(keypair, feature_ids, X, label_ids, y, len(class_names), config(),
                       test_fraction=TEST_FRACTION,
                       data_progress=lambda *a: calls["data"].append(a),
                       label_progress=lambda *a: calls["label"].append(a))
    assert "data_error" not in out and "label_error" not in out, out
    for role in ("data", "label"):
        totals = {total for _, total in calls[role]}
        assert totals == {4}, (role, totals)  # 2 epochs × 2 batches of 16 over 30 rows
        assert calls[role][-1][0] == 4


def test_a_balanced_weight_on_a_class_the_shared_rows_lack_tells_the_data_party_nothing(
        keypair, parties):
    """Property: the class weights are the label party's alone. Asked to balance three classes
    when the shared training rows hold two, it refuses on its side, and the data party hears
    only that the label party had a problem with its own data: not the option, not a class."""
    feature_ids, X, label_ids, y, class_names = parties
    out = run_pair(keypair, feature_ids, X, label_ids, y, 3, config(class_weight="balanced"),
                   test_fraction=TEST_FRACTION)
    assert "no training row" in str(out["label_error"])
    heard = str(out["data_error"])
    assert "own data" in heard and "class" not in heard and "balanced" not in heard
