"""The data party's preparation of its raw columns in two processes (`party data --categorical
--impute --drop`): fitted on its own training rows after the alignment and the split, the same
weights as one-process `train` with the same options, kept in its own checkpoint and applied by
`party data --predict`, and nothing of it in what the label party receives.

Loopback only, 512-bit keys through the explicit insecure flag, tiny data, every wait bounded.
"""

import io
import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import (insecure_keypair, one_line_error, run_pair, train_as_the_parties_split,
                      write_csv)

import acml
from jobs import checkpoint, data, preparation, run_directory
from network import wire
from test_parity import assert_same_weights, config, data_party_process, finish, run
from test_transport import TIMEOUT, TOKEN, cli

KEY_BITS = 512
TEST_FRACTION = 0.25
CITIES = ["Oslo", "Lima", "Pune"]
RULES = preparation.Rules(categorical=("home_city",), impute={"visits": ("mean", None)},
                          drop=("memo",))
RULE_OPTIONS = ["--categorical", "home_city", "--impute", "visits=mean", "--drop", "memo"]


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def raw_files(folder):
    """A raw features file as an organisation exports it — a category, a number with blank
    cells, a free-text memo, a number — in its own id order, with 3 ids the label file lacks;
    the label file holds 4 ids the features file lacks, in another order. 44 common ids."""
    rng = np.random.default_rng(11)
    feature_rows, label_rows = [], []
    for row in rng.permutation(47):
        city = CITIES[row % 3]
        visits = "" if row % 6 == 4 else str(int(rng.integers(0, 30)))
        feature_rows.append([f"c{row:03d}", city, visits, f"memo-{row}-text",
                             f"{rng.normal():.5f}"])
    for row in rng.permutation(range(3, 51)):
        label_rows.append([f"c{row:03d}", "yes" if (CITIES[row % 3] == "Oslo") ^ (row % 7 == 0)
                           else "no"])
    features = write_csv(folder / "features.csv", ["id", "home_city", "visits", "memo", "x"],
                         feature_rows)
    labels = write_csv(folder / "labels.csv", ["id", "outcome"], label_rows)
    token = folder / "token"
    token.write_text(TOKEN.decode() + "\n")
    return str(features), str(labels), str(token)


def one_process(keypair, features, labels, cfg, checkpoint_dir):
    """`train --keep-common-ids` with the same rules, as the command line prepares the files
    (preparation.load_prepared_pair, then data.prepare unstratified)."""
    dataset, prepared, _ = preparation.load_prepared_pair(
        features, labels, id_column="id", label_column="outcome", rules=RULES,
        keep_common_ids=True, test_fraction=TEST_FRACTION, seed=cfg.seed)
    return train_as_the_parties_split(dataset, cfg, keypair, test_fraction=TEST_FRACTION,
                                      checkpoint_dir=checkpoint_dir, preparation=prepared)


@pytest.fixture(scope="module")
def runs(keypair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    features, labels, token = raw_files(folder)
    cfg = config()
    reference, train_set = one_process(keypair, features, labels, cfg, folder / "one")
    raw = preparation.read_raw_features(features, "id")
    label_ids, y, class_names = data.load_labels_csv(labels, "id", "outcome")
    transcripts = {"data": io.StringIO(), "label": io.StringIO()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_pair(keypair, raw.ids, raw, label_ids, y, len(class_names), cfg,
                       test_fraction=TEST_FRACTION,
                       data_options=dict(rules=RULES, checkpoint_dir=folder / "data_own",
                                         transcript=transcripts["data"]),
                       label_options=dict(class_names=class_names,
                                          checkpoint_dir=folder / "label_own",
                                          transcript=transcripts["label"]))
    assert "data_error" not in out and "label_error" not in out, out
    return dict(folder=folder, features=features, labels=labels, token=token, raw=raw,
                reference=reference, train_set=train_set, data=out["data"], label=out["label"],
                transcripts=transcripts)


def test_two_processes_preparing_a_raw_file_train_the_one_process_weights_bit_for_bit(runs):
    """Property: with a categorical column, a blank imputed by its training mean and a dropped
    column, the data party fits its preparation on its own training rows after the alignment
    and the split, exactly as one-process `train --keep-common-ids` does with the same options:
    W_B + ε_acc, the label party's layers, losses and test scores are the same bit for bit."""
    assert runs["data"].n_common == len(runs["train_set"].y) + runs["data"].n_test == 44
    assert runs["data"].party.n_features == len(runs["train_set"].feature_names) == 5
    assert_same_weights(runs["data"].party, runs["label"].party, runs["reference"])
    assert ("prepared           4 columns -> 5 features; one-hot home_city (3); blanks filled "
            "in visits; dropped memo (on this side only)") in runs["data"].summary()
    assert "prepared" not in runs["label"].summary()


def test_the_data_partys_checkpoint_holds_the_preparation_fitted_on_its_training_rows(runs):
    """Property: the data party's own checkpoint keeps the categories and the fill value, the
    very ones one-process `train` keeps — the fill is the mean of the training rows' cells
    only, not of the file's."""
    state = checkpoint.DataPartyState.load(
        run_directory.party_path(runs["folder"] / "data_own", "data"), allow_insecure=True)
    one, _ = run_directory.load_pair(runs["folder"] / "one", allow_insecure=True)
    assert state.preparation == one.preparation is not None
    raw, train_ids = runs["raw"], set(runs["train_set"].ids)
    visits = [float(cell) for key, cell in zip(raw.ids, raw.column("visits"))
              if key in train_ids and cell]
    columns = {column["name"]: column for column in state.preparation["columns"]}
    assert columns["visits"]["fill"] == np.mean(visits)
    every = [float(cell) for cell in raw.column("visits") if cell]
    assert np.mean(every) != np.mean(visits)  # so the test can tell the two apart
    assert columns["home_city"]["categories"] == sorted(CITIES)
    assert state.preparation["dropped"] == ["memo"] and "memo" not in columns


def test_party_predict_on_a_raw_file_with_an_unseen_category_scores_as_one_process_predict(
        runs, tmp_path):
    """Property: `party data --predict` prepares a raw file (another column order, a blank, a
    category never seen in training, the dropped column absent) with its checkpoint's
    preparation; with `party label --predict` it writes the very bytes one-process `predict`
    writes from both checkpoints."""
    new = write_csv(tmp_path / "new.csv", ["x", "id", "visits", "home_city"],
                    [["0.25", "n1", "", "Rome"], ["-1.5", "n2", "33", "Oslo"],
                     ["0.5", "n3", "7", "Lima"]])
    both = tmp_path / "both"  # the two parties' files in one directory, for one process
    both.mkdir()
    for folder, role in (("data_own", "data"), ("label_own", "label")):
        shutil.copy(run_directory.party_path(runs["folder"] / folder, role),
                    run_directory.party_path(both, role))
    one_out, two_out = tmp_path / "one.csv", tmp_path / "two.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(both), "--features", str(new),
                      "--id-column", "id", "--insecure-small-key", "--out", str(one_out)]) == 0
    data_process, port = data_party_process(str(new), runs["token"], "--predict",
                                            "--checkpoint-dir", str(runs["folder"] / "data_own"))
    try:
        run(cli("label", "--connect", f"127.0.0.1:{port}", "--token-file", runs["token"],
                "--predict", "--checkpoint-dir", str(runs["folder"] / "label_own"), "--out",
                str(two_out), "--insecure-small-key", "--timeout", str(TIMEOUT), "--quiet"))
    finally:
        finish(data_process)
    assert two_out.read_bytes() == one_out.read_bytes()
    assert [line.split(",")[0] for line in two_out.read_text().splitlines()[1:]] == \
        ["n1", "n2", "n3"]


def test_nothing_of_the_preparation_is_in_what_the_label_party_receives(runs):
    """Property: the label party's record of every message (its transcript: each payload
    sent or received) holds no category, no fill value, no column name and no dropped cell;
    what it learns of the preparation is the width d in `input width`, and no message names
    the preparation."""
    record = runs["transcripts"]["label"].getvalue()
    assert record == runs["transcripts"]["data"].getvalue()  # the same messages, both sides
    fill = runs["data"].preparation.columns[1]["fill"]
    secrets_of_the_data_party = [*CITIES, repr(fill), str(fill), f"{fill:.6g}", "home_city",
                                 "visits", "memo", "memo-"]
    found = [text for text in secrets_of_the_data_party if text in record]
    assert not found, found
    widths = [json.loads(line)["payload"] for line in record.splitlines()
              if json.loads(line)["name"] == "input width"]
    assert widths == [{"n_inputs": 5}]
    assert runs["label"].party.layer_sizes[0] == 5


def test_a_raw_text_column_is_refused_in_one_line_listing_all_before_the_data_party_listens(
        capsys, tmp_path, monkeypatch, no_training):
    """Property: `party data` reads its file and checks its rules before listening: every text
    column no rule names is listed in one line with the options that fix it; no socket is
    opened, no key made."""
    features, _, token = raw_files(tmp_path)
    listened = []
    monkeypatch.setattr(wire, "listen", lambda *args: listened.append(args))
    line = one_line_error(capsys, ["party", "data", "--listen", "127.0.0.1:0", "--features",
                                   features, "--id-column", "id", "--token-file", token,
                                   "--key-bits", str(KEY_BITS), "--insecure-small-key",
                                   "--impute", "visits=mean"])
    for fragment in ("acml.py party data: error:", "columns 'home_city' (e.g.", "'memo' (e.g.",
                     "are text", "--categorical or --drop"):
        assert fragment in line, line
    assert listened == []
    assert "listening" not in capsys.readouterr().out


def test_party_data_predict_refuses_preparation_options_in_one_line(capsys, tmp_path,
                                                                    no_training):
    """Property: at prediction the rules are the checkpoint's; options that would change them
    are refused by name, before any network use."""
    features, _, token = raw_files(tmp_path)
    line = one_line_error(capsys, ["party", "data", "--listen", "127.0.0.1:0", "--features",
                                   features, "--id-column", "id", "--token-file", token,
                                   "--insecure-small-key", "--predict", "--checkpoint-dir",
                                   str(tmp_path / "ckpt"), "--categorical", "home_city"])
    assert "--categorical: --predict prepares the rows as the checkpoint's training did" in line


def test_the_input_width_crosses_after_the_alignment_so_a_fit_on_training_rows_can_set_it(
        runs):
    """Property: `input width` is the last message of the alignment (after both intersection
    fingerprints), since the data party knows its prepared width only once the split gives
    its training rows; it is declared public."""
    align = [(m.name, m.kind) for m in runs["label"].channel.messages if m.step == "align"]
    assert align[-1] == ("input width", "public")
    assert [name for name, _ in align].index("intersection fingerprint") < len(align) - 1
