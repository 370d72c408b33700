"""Bad input at the command line and from the API: one line naming what is wrong, exit code 2,
before any work starts; and the report a user sees (classes, baselines, precision/recall/F1).

Small keys and tiny data throughout: every training here takes a second or two.
"""

import json
import os
import secrets
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import acml
from network import alignment
from jobs import simulation
from tools import cli
import nn
import parties
from network import transport
from network import wire
from channel import DATA, LABEL, PUBLIC
from conftest import insecure_keypair, one_line_error, scaled, write_csv
from plan import FixedPointPlan, TrainingPlan

ROOT = Path(__file__).resolve().parents[2]
SMALL_KEY = ["--key-bits", "512", "--insecure-small-key"]
TINY = ["--dataset", "wine", "--hidden", "2", "--epochs", "1", "--quiet", *SMALL_KEY]



def three_class_csvs(tmp_path, n=60):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 3))
    y = np.argmax(X, axis=1)  # a learnable 3-class label
    features = write_csv(tmp_path / "f.csv", ["id", "a", "b", "c"],
                         [[f"r{i}", *X[i]] for i in range(n)])
    labels = write_csv(tmp_path / "l.csv", ["id", "y"], [[f"r{i}", ["x", "y", "z"][y[i]]]
                                                        for i in range(n)])
    return features, labels




def party_argv(role, tmp_path, *extra):
    if role == "data":
        features = write_csv(tmp_path / "pf.csv", ["id", "a"], [[1, 0.5], [2, 1.5]])
        return ["party", "data", "--listen", "127.0.0.1:0", "--features", str(features),
                "--id-column", "id", *SMALL_KEY, *extra]
    labels = write_csv(tmp_path / "pl.csv", ["id", "y"], [[1, 0], [2, 1]])
    return ["party", "label", "--connect", "127.0.0.1:9", "--labels", str(labels),
            "--id-column", "id", "--label-column", "y", *extra]


def options_of(argv) -> set:
    """Every option string of the sub-command that ``argv`` names."""
    parser = cli.build_parser()
    for word in argv:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return {option for action in parser._actions for option in action.option_strings}


def assert_suggests_only_real_options(line, argv):
    """Options the message names beyond those the user typed must exist."""
    suggested = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)) - set(argv)
    assert suggested <= options_of(argv), (line, suggested - options_of(argv))


# ---- 1. σ ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "-60", "39", "8", "257", "4.5"])
@pytest.mark.parametrize("command", ["train", "data", "label"])
def test_sigma_under_the_minimum_is_one_line_naming_the_flag(capsys, tmp_path, no_training,
                                                             command, value):
    argv = (["train", *TINY] if command == "train" else party_argv(command, tmp_path))
    argv = [*argv, "--sigma", value]
    line = one_line_error(capsys, argv)
    assert "--sigma" in line and value in line and "Traceback" not in line
    if value in ("39", "8"):
        assert "--insecure-sigma" in line  # the way out, and an option that exists
    assert_suggests_only_real_options(line, argv)


def test_insecure_sigma_flag_trains_with_a_small_sigma(capsys, tmp_path):
    out = tmp_path / "report.json"
    assert acml.main(["train", *TINY, "--sigma", "32", "--insecure-sigma", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    learned = [row["learned"] for row in metrics["leakage"] if row["kind"] == "masked"]
    assert learned and all("32 bits of statistical margin" in line for line in learned[:1])


@pytest.mark.parametrize("field,value", [("sigma", 0), ("sigma", -60), ("sigma", True),
                                         ("x_frac_bits", 0), ("delta_int_bits", 2.0),
                                         ("lr_frac_bits", 300), ("weight_int_bits", "8")])
def test_fixed_point_plan_refuses_a_field_out_of_range(field, value):
    with pytest.raises(ValueError, match=field) as caught:
        FixedPointPlan(**{field: value})
    assert "\n" not in str(caught.value)


def test_parties_and_train_apply_the_40_bit_policy_unless_allowed():
    keypair = insecure_keypair(512)
    weak = FixedPointPlan(sigma=8)
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="under the secure minimum of 40"):
        parties.DataParty(X, plan=weak, keypair=keypair)
    with pytest.raises(ValueError, match="under the secure minimum of 40"):
        parties.LabelParty(y, (2, 2, 1), plan=weak)
    parties.DataParty(X, plan=weak, keypair=keypair, allow_insecure_sigma=True)
    parties.LabelParty(y, (2, 2, 1), plan=weak, allow_insecure_sigma=True)
    train, test = acml.load_split("wine")
    with pytest.raises(ValueError, match="Config.plan.sigma 8 is under"):
        acml.train(train, test, acml.Config(plan=weak, key_bits=512, allow_insecure=True))


# ---- 2 and 5. what the user sees ----------------------------------------------------------
def test_train_report_names_the_classes_and_shows_baseline_and_metrics(capsys, tmp_path):
    out = tmp_path / "report.json"
    argv = ["train", "--dataset", "german_credit", "--hidden", "2", "--epochs", "1", "--quiet",
            "--json", str(out), *SMALL_KEY]
    assert acml.main(argv) == 0
    report = capsys.readouterr().out
    assert "2 classes: bad, good — one sigmoid output, P(good)" in report
    assert "1 epoch of batches" in report and "1 epochs" not in report
    assert "majority baseline  0.7000" in report
    assert "test ROC AUC" in report and "precision/recall/F1" in report
    assert "confusion matrix" in report and "predictions differ on" in report
    metrics = json.loads(out.read_text())
    for key in ("test_report", "plaintext_test_report"):
        part = metrics[key]
        assert {"precision", "recall", "f1", "confusion", "majority_baseline", "auc"} <= set(part)
        assert np.sum(part["confusion"]) == metrics["n_test"]
    assert metrics["test_report"]["majority_baseline"] == pytest.approx(0.7)
    assert metrics["classes"].startswith("2 classes: bad, good")


def test_three_class_labels_say_softmax(capsys, tmp_path):
    features, labels = three_class_csvs(tmp_path)
    assert acml.main(["train", "--features", str(features), "--labels", str(labels),
                      "--id-column", "id", "--label-column", "y", "--hidden", "2",
                      "--epochs", "1", "--quiet", *SMALL_KEY]) == 0
    report = capsys.readouterr().out
    assert "3 classes: x, y, z — training softmax over 3 outputs" in report
    assert "macro average over 3 classes" in report


def test_headline_defaults_are_the_config_and_cli_defaults():
    config = acml.Config()
    for key, value in nn.HEADLINE.items():
        assert getattr(config, key) == value, key
    for argv in (["train"], ["party", "label", "--connect", "h:1"]):
        args = cli.build_parser().parse_args(argv)
        for key, value in nn.HEADLINE.items():
            assert getattr(args, key) == value, (argv, key)


def two_party_run(tmp_path, n=40, classes=("no", "yes")):
    """Both sessions over a real socket pair, each in its own thread."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(np.int64) if len(classes) == 2 else np.argmax(X, axis=1)
    ids = [f"r{i}" for i in range(n)]
    left, right = socket.socketpair()
    a, b = wire.Connection(left, timeout=60), wire.Connection(right, timeout=60)
    results = {}

    def data_side():
        try:
            results["data"] = transport.run_data_party(
                a, ids, X, keypair=insecure_keypair(512), init_seed=1)
        except BaseException as error:  # noqa: BLE001 - reported below
            results["data"] = error
    thread = threading.Thread(target=data_side)
    thread.start()
    config = acml.Config(hidden=(2,), epochs=1, batch_size=16, lr=0.3, allow_insecure=True)
    session = transport.run_label_party(b, ids, y, len(classes), config, test_fraction=0.25,
                                        class_names=list(classes))
    thread.join()
    assert not isinstance(results["data"], BaseException), results["data"]
    return session


def test_label_party_report_has_classes_auc_baseline_and_metrics(tmp_path):
    session = two_party_run(tmp_path)
    metrics, summary = session.metrics(), session.summary()
    assert metrics["classes"] == "2 classes: no, yes — one sigmoid output, P(yes)"
    assert "2 classes: no, yes" in summary and "1 epoch," in summary
    assert "majority baseline" in summary and "test ROC AUC" in summary
    assert "precision/recall/F1" in summary and "confusion matrix" in summary
    assert 0.0 <= metrics["test_auc"] <= 1.0 and metrics["test_report"]["n"] == 10
    assert metrics["majority_class_rate"] == metrics["test_report"]["majority_baseline"]
    json.dumps(metrics)  # --json writes exactly this


def test_label_party_report_says_softmax_for_three_classes(tmp_path):
    summary = two_party_run(tmp_path, n=45, classes=("a", "b", "c")).summary()
    assert "3 classes: a, b, c — training softmax over 3 outputs" in summary


# ---- 3. output paths, before any work ------------------------------------------------------
@pytest.mark.parametrize("flag,where", [("--json", "missing/report.json"),
                                        ("--transcript", "missing/t.jsonl"),
                                        ("--json", "."),
                                        ("--checkpoint-dir", "a_file")])
def test_train_output_paths_are_checked_before_training(capsys, tmp_path, no_training,
                                                        flag, where):
    (tmp_path / "a_file").write_text("not a directory")
    path = str(tmp_path / where)
    line = one_line_error(capsys, ["train", *TINY, flag, path])
    assert flag in line and path in line


@pytest.mark.parametrize("role,flag,extra", [
    ("data", "--json", []), ("data", "--transcript", []), ("label", "--json", []),
    ("label", "--out", ["--predict", "--checkpoint-dir", "."]),
    ("label", "--checkpoint-dir", [])])
def test_party_output_paths_are_checked_before_connecting(capsys, tmp_path, no_training,
                                                          monkeypatch, role, flag, extra):
    monkeypatch.setenv("ACML_TOKEN", "x" * 32)
    monkeypatch.setattr(wire, "listen", lambda *a, **k: pytest.fail("listened"))
    monkeypatch.setattr(wire, "connect_peer", lambda *a, **k: pytest.fail("connected"))
    (tmp_path / "a_file").write_text("")
    path = str(tmp_path / ("a_file/sub" if flag == "--checkpoint-dir" else "gone/out.json"))
    line = one_line_error(capsys, party_argv(role, tmp_path, *extra, flag, path))
    assert flag in line and path in line


def test_predict_and_export_out_into_a_missing_directory(capsys, tmp_path):
    path = str(tmp_path / "gone" / "p.csv")
    line = one_line_error(capsys, ["predict", "--checkpoint-dir", str(tmp_path), "--features",
                                   str(tmp_path / "f.csv"), "--id-column", "id", "--out", path])
    assert "--out" in line and path in line
    line = one_line_error(capsys, ["export", "--checkpoint-dir", str(tmp_path), "--out", path,
                                   acml.REVEAL_FLAG])
    assert "--out" in line and path in line


# ---- 4. every parser error is one line naming the flag -------------------------------------
BAD_TRAIN = [
    ("--timeout", "3"),  # train has no --timeout: one line, not 14
    ("--seed", "-1"), ("--seed", "x"), ("--init-seed", "-1"), ("--lr", "inf"),
    ("--lr", "1e6"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "1e-9"), ("--momentum", "1"),
    ("--momentum", "-0.1"), ("--test-fraction", "0"), ("--test-fraction", "1"),
    ("--key-bits", "1000001"), ("--key-bits", "64"), ("--key-bits", "1023"),
    ("--hidden", "0"), ("--hidden", "1000000"), ("--hidden", "a,b"), ("--batch-size", "0"),
    ("--batch-size", "2.5"), ("--epochs", "0"), ("--epochs", "1e9"), ("--workers", "0"),
    ("--bottom", "0"), ("--activation", "sigmoidal"), ("--dataset", "nope"),
]


@pytest.mark.parametrize("flag,value", BAD_TRAIN)
def test_train_parser_errors_are_one_line_naming_the_flag(capsys, no_training, flag, value):
    argv = ["train", *TINY, flag, value]
    line = one_line_error(capsys, argv)
    assert flag in line and line.startswith("acml.py train: error:")
    assert_suggests_only_real_options(line, argv)


@pytest.mark.parametrize("role,flag,value", [
    ("data", "--timeout", "inf"), ("data", "--timeout", "-1"), ("label", "--timeout", "nan"),
    ("data", "--max-frame-mb", "0"), ("label", "--max-frame-mb", "1e12"),
    ("data", "--init-seed", "-5"), ("label", "--seed", "-1"), ("label", "--lr", "inf"),
    ("label", "--test-fraction", "1.5"), ("label", "--momentum", "2"),
    ("data", "--key-bits", "abc"), ("label", "--epochs", "-3"),
    ("data", "--stream-chunks", "0"), ("label", "--stream-chunks", "1025")])
def test_party_parser_errors_are_one_line_naming_the_flag(capsys, tmp_path, no_training,
                                                          role, flag, value):
    argv = party_argv(role, tmp_path, flag, value)
    line = one_line_error(capsys, argv)
    assert line.startswith(f"acml.py party {role}: error: {flag}:"), line
    assert_suggests_only_real_options(line, argv)


def test_the_lr_message_is_the_documented_one(capsys):
    assert one_line_error(capsys, ["train", "--lr", "inf"]) == (
        "acml.py train: error: --lr: must be a finite number in (0, 16], got 'inf'")


def test_help_still_exits_0(capsys):
    assert acml.main(["train", "--help"]) == 0
    assert "--insecure-sigma" in capsys.readouterr().out


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_file(capsys, tmp_path, monkeypatch):
    def interrupted(*args, transcript=None, **kwargs):
        transcript.write('{"half": ')  # mid-way through a streamed transcript
        raise KeyboardInterrupt
    monkeypatch.setattr(simulation, "train", interrupted)
    line = one_line_error(capsys, ["train", *TINY, "--transcript", str(tmp_path / "t.jsonl"),
                                   "--json", str(tmp_path / "r.json")], code=130)
    assert line.startswith("acml.py train: interrupted") and "Traceback" not in line
    assert os.listdir(tmp_path) == []


def test_sigint_to_a_waiting_party_ends_in_one_line_exit_130(tmp_path):
    features = write_csv(tmp_path / "f.csv", ["id", "a"], [[1, 0.5], [2, 1.5]])
    env = dict(os.environ, ACML_TOKEN=secrets.token_hex(32))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "acml.py"), "party", "data", "--listen", "127.0.0.1:0",
         "--features", str(features), "--id-column", "id", *SMALL_KEY,
         "--transcript", str(tmp_path / "t.jsonl"), "--json", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert "listening on" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=scaled(30))
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert sorted(os.listdir(tmp_path)) == ["f.csv"]


# ---- 6. public messages from an authenticated peer ----------------------------------------
def socket_channels():
    """A SocketChannel pair over a real socket pair: the label side and the data side."""
    left, right = socket.socketpair()
    data_side = transport.SocketChannel(wire.Connection(left, timeout=10), DATA,
                                        alignment.Alignment(["1"], n_inputs=1))
    label_side = transport.SocketChannel(wire.Connection(right, timeout=10), LABEL,
                                         alignment.Alignment(["1"], test_fraction=0.2, seed=0))
    return data_side, label_side


def good_plan() -> dict:
    return TrainingPlan(2, "tanh", 0.3, 64, 3, 0, FixedPointPlan()).to_dict()


@pytest.mark.parametrize("payload,needle", [
    ([1, 2, 3], "must be a JSON object, got list"),
    ({k: v for k, v in good_plan().items() if k != "lr"}, "lacks ['lr']"),
    ({**good_plan(), "n_hidden": 10 ** 6}, "n_hidden must be an integer in 1..4096"),
    ({**good_plan(), "fixed_point": {**FixedPointPlan().to_dict(), "sigma": 0}}, "sigma"),
])
def test_a_bad_training_plan_through_a_socket_channel_is_one_line(payload, needle):
    data_side, label_side = socket_channels()
    label_side.send("0", LABEL, DATA, "training plan", PUBLIC, make=lambda _: payload, take=None)
    with pytest.raises(ValueError) as caught:
        data_side.send("0", LABEL, DATA, "training plan", PUBLIC, make=None,
                       take=lambda _, plan_: TrainingPlan.from_dict(plan_))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def shapes(**change):
    return {"start": "new", "n_samples": 4, "n_inputs": 2, "bottom": False,
            "insecure_flaws": [], **change}


@pytest.mark.parametrize("message,needle", [
    ([1], "malformed"), (shapes(n_samples=10 ** 8), "1..10,000,000"),
    (shapes(n_inputs=10 ** 6), "1..100,000"), (shapes(n_inputs=True), "n_inputs"),
    (shapes(bottom="yes"), "bottom must be true or false"),
    (shapes(insecure_flaws=["x"] * 10 ** 4), "insecure_flaws"),
    (shapes(insecure_flaws=[{"a": 1}]), "insecure_flaws")])
def test_the_shapes_message_is_validated_with_caps(message, needle):
    label_party = parties.LabelParty(np.array([0, 1, 0, 1]), (2, 2, 1))
    with pytest.raises(ValueError) as caught:
        label_party.check_shapes(message, "new")
    assert needle in str(caught.value) and len(str(caught.value)) < 400


# The alignment's messages (alignment.Alignment): the label party's plan (the way to align, the
# split), the data party's input width, and with --align public-ids each party's id list.
@pytest.mark.parametrize("take,message,needle", [
    ("take_plan", [1], "needs exactly align, test_fraction and seed"),
    ("take_plan", {"align": "psi", "test_fraction": 0.2}, "needs exactly align"),
    ("take_plan", {"align": "psi", "test_fraction": 0.2, "seed": 2 ** 64}, "2**63"),
    ("take_public_ids", "abc", "not a list"),
    ("take_public_ids", ["a", 3], "entry 1"),
    ("take_public_ids", ["a" * 2000], "1024 characters"),
    ("take_width", {"n_inputs": 10 ** 6}, "1..100,000"),
    ("take_width", {"n_inputs": True}, "1..100,000"),
    ("take_width", {"ids": ["a"], "n_inputs": 1}, "needs exactly n_inputs"),
    ("take_width", [1], "needs exactly n_inputs")])
def test_alignment_messages_are_validated_with_caps(take, message, needle):
    with pytest.raises((ValueError, wire.TransportError)) as caught:
        getattr(alignment.Alignment(["a"]), take)(message)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_more_ids_than_the_cap_are_refused(monkeypatch):
    """In the clear (--align public-ids): the list itself is refused."""
    monkeypatch.setattr(alignment, "MAX_IDS", 3)
    with pytest.raises(wire.TransportError, match="4 ids, more than the cap of 3"):
        alignment.Alignment(["a"], align="public-ids").take_public_ids(["a", "b", "c", "d"])


def test_more_blinded_ids_than_the_cap_are_refused_before_the_body_is_read(monkeypatch):
    """By PSI (the default): the data party refuses the label party's blinded ids from the
    frame's declared length, before reading them."""
    monkeypatch.setattr(alignment, "MAX_IDS", 3)
    data_side, label_side = socket_channels()
    label_side.local[LABEL] = alignment.Alignment(["a", "b", "c", "d"], test_fraction=0.2,
                                                  seed=0)
    # a ratio high enough that MAX_IDS binds first
    data_side.local[DATA] = alignment.Alignment(["1"], n_inputs=1, psi_max_ratio=10)
    failures = {}

    def label_runs():
        try:
            alignment.align_ids(label_side)
        except Exception as error:  # the data party hangs up after refusing
            failures["label"] = error

    thread = threading.Thread(target=label_runs, daemon=True)
    thread.start()
    try:
        with pytest.raises(wire.TransportError, match="4 ids, more than the cap of 3"):
            alignment.align_ids(data_side)
    finally:
        data_side.connection.close()
        thread.join(20)
    assert not thread.is_alive()
    assert isinstance(failures.get("label"), wire.TransportError), failures
