"""The report people read: --json carries the settings and every batch's loss, --plot draws
the run, the message table's columns fit their cells, the German-credit note only on German
credit, party-mode bars show their total, and predict says the decision rule it applied."""

import csv
import json

import pytest
from conftest import write_csv

import acml
from channel import leakage_lines
from jobs import progress
from tools import cli

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")
SMALL = ["--key-bits", "384", "--insecure-small-key", "--epochs", "2", "--hidden", "4",
         "--quiet"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI run on breast cancer with class weights and a threshold: its JSON, its plot
    (one file), its checkpoints."""
    folder = tmp_path_factory.mktemp("run")
    argv = ["train", "--dataset", "breast_cancer", *SMALL, "--class-weight", "balanced",
            "--threshold", "0.4", "--json", str(folder / "run.json"),
            "--plot", str(folder / "run.png"), "--checkpoint-dir", str(folder / "ckpt")]
    assert acml.main(argv) == 0
    return folder, json.loads((folder / "run.json").read_text())


def test_json_carries_the_settings_and_every_batchs_loss(trained):
    _, report = trained
    settings = report["settings"]
    assert {"seed": 1, "activation": "tanh", "momentum": 0.0, "lr": 0.3, "epochs": 2,
            "batch_size": 64, "hidden": [4], "threshold": 0.4,
            "class_weight": "balanced"}.items() <= settings.items()
    history = report["loss_history"]
    batches = -(-report["n_train"] // 64)
    assert history["batches_per_epoch"] == batches
    assert len(history["encrypted"]) == len(history["plaintext"]) == 2 * batches
    assert all(isinstance(loss, float) for loss in history["encrypted"])
    assert report["positive_class"] == 0  # malignant, the minority of breast cancer
    assert len(report["class_weights"]) == 2 and report["class_weights"][0] > 1
    assert {"test_balanced_accuracy", "test_average_precision"} <= set(report)


def test_plot_is_written_as_one_png_and_as_a_folder(trained, tmp_path):
    folder, report = trained
    assert (folder / "run.png").read_bytes()[:8] == PNG
    from jobs.report import PLOT_FILES, plot_run
    written = plot_run(report, tmp_path / "plots")  # no test scores: the loss curve only
    assert written == [str(tmp_path / "plots" / "loss.png")]
    import numpy as np
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    written = plot_run(report, tmp_path / "all", labels, rng.random(40))
    assert [path.rsplit("/", 1)[1] for path in written] == list(PLOT_FILES)
    assert all(open(path, "rb").read(8) == PNG for path in written)


def test_plot_path_refused_in_one_line_before_any_work(tmp_path, capsys):
    from conftest import one_line_error
    (tmp_path / "taken").write_text("x")
    line = one_line_error(capsys, ["train", "--dataset", "wine", *SMALL,
                                   "--plot", str(tmp_path / "taken")])
    assert "--plot" in line and "no .png" in line
    line = one_line_error(capsys, ["train", "--dataset", "wine", *SMALL,
                                   "--plot", str(tmp_path / "missing" / "deeper" / "x.png")])
    assert "--plot" in line and "does not exist" in line


def test_predict_applies_the_checkpoints_threshold_or_a_new_one_and_keeps_its_columns(
        trained, tmp_path, capsys):
    """predict writes id, predicted_class, p_<class>... as before; stderr says the rule, the
    checkpoint's threshold by default, --threshold's when given, and the classes follow it."""
    folder, _ = trained
    from jobs import data as data_module
    dataset = data_module.load_builtin("breast_cancer")
    rows = [[i, *(repr(float(value)) for value in dataset.X[i])] for i in range(30)]
    features = write_csv(tmp_path / "new.csv", ["id", *dataset.feature_names], rows)
    capsys.readouterr()
    outputs = {}
    for threshold in (None, "0.9"):
        out = tmp_path / f"p{threshold}.csv"
        argv = ["predict", "--checkpoint-dir", str(folder / "ckpt"), "--features",
                str(features), "--id-column", "id", "--out", str(out), "--insecure-small-key"]
        assert acml.main(argv + ([] if threshold is None else ["--threshold", threshold])) == 0
        err = capsys.readouterr().err
        expected = "0.4" if threshold is None else "0.9"
        assert f"predicted_class: 'malignant' where P(malignant) >= {expected}" in err
        with open(out) as handle:
            table = list(csv.reader(handle))
        assert table[0] == ["id", "predicted_class", "p_malignant", "p_benign"]
        for row in table[1:]:
            assert (row[1] == "malignant") == (float(row[2]) >= float(expected))
        outputs[threshold] = table
    assert [row[2:] for row in outputs[None]] == [row[2:] for row in outputs["0.9"]]


def test_message_table_columns_fit_their_longest_cell():
    """A message name longer than the old fixed column (24 characters) no longer runs into its
    kind: every column starts at the same place on every line, two spaces after the widest."""
    rows = [dict(step="psi", sender="data", receiver="label", name="label ids, blinded twice",
                 kind="revealed", count=1, learned="the intersection"),
            dict(step=0, sender="label", receiver="data", name="shapes", kind="public",
                 count=123456, learned="public information")]
    lines = leakage_lines(rows, cumulative=False)
    assert "blinded twice  revealed" in lines[1]
    kind_column = lines[0].index("kind")
    assert all(line[kind_column - 2:kind_column] == "  " for line in lines)
    assert lines[1].index("revealed") == lines[2].index("public") == kind_column
    learns = lines[0].index("learns")
    assert lines[1].index("the intersection") == lines[2].index("public information") == learns


@pytest.mark.parametrize("argv, note", [
    ([], True), (["--dataset", "german_credit"], True), (["--dataset", "wine"], False),
    (["--key-bits", "1024"], False),
    (["--features", "f.csv", "--labels", "l.csv", "--id-column", "id", "--label-column", "y"],
     False)])
def test_german_credit_note_only_on_german_credit_with_the_default_key(argv, note):
    args = cli.build_parser().parse_args(["train", *argv])
    assert (cli.key_bits_note(args) is not None) == note


def test_party_progress_bar_shows_its_total(capsys):
    bar = progress.PartyProgress()
    bar(1)
    bar(2, 10)
    bar(3, 10)
    bar.close()
    assert "3/10" in capsys.readouterr().err

    class Plan:
        batch_size, epochs, epochs_completed = 64, 5, 2
    assert progress.batches_to_train(Plan, 130) == 3 * 3
