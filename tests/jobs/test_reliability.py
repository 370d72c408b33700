"""Reliability: bad input fails in one line and writes nothing half-way; each party
checkpoints only its own state; a resumed run is bit-identical to an uninterrupted one;
prediction from checkpoints equals plaintext prediction; export needs explicit consent.
Small keys (through the explicit insecure flags) and small datasets keep this file fast."""

import csv
import json
import re
import shutil
import warnings

import numpy as np
import pytest

import acml
from conftest import one_line_error, write_csv
from jobs import checkpoint
from jobs import run_directory
from jobs import data
import nn
import paillier
import parties
import protocol
from channel import CIPHERTEXT, DATA, LABEL, Channel, LeakageError
from fixed import Fixed
from paillier import EncryptedArray
from plan import FixedPointPlan

KEY_BITS = 384
CLI_SMALL_KEY = ["--key-bits", "256", "--insecure-small-key", "--quiet"]


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return paillier.generate_keypair(KEY_BITS, allow_insecure=True)


def wine_subset(n_rows=100, seed=0):
    """A raw (unstandardised) subset of wine: three classes, 13 features."""
    dataset = data.load_builtin("wine")
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset.y))[:n_rows])
    return data.Dataset(dataset.X[keep], dataset.y[keep], dataset.ids[keep],
                        dataset.feature_names, dataset.class_names, "wine")


def config(**overrides):
    base = dict(hidden=(3,), epochs=2, batch_size=32, lr=0.1, key_bits=KEY_BITS,
                allow_insecure=True, seed=0, init_seed=0)  # W0's seed: the data party's own
    base.update(overrides)
    return acml.Config(**base)


@pytest.fixture(scope="module")
def trained(keypair, tmp_path_factory):
    """Two epochs on a wine subset with momentum, checkpointed after each epoch."""
    raw = wine_subset()
    train_set, test_set, scaler = acml.prepare(raw, test_fraction=0.25, seed=0,
                                               return_standardizer=True)
    _, raw_test = data.train_test_split(raw, test_fraction=0.25, seed=0)
    directory = tmp_path_factory.mktemp("checkpoint")
    result = acml.train(train_set, test_set, config(momentum=0.9), keypair=keypair,
                        checkpoint_dir=directory, standardizer=scaler)
    return directory, result, train_set, test_set, raw_test



def copy_checkpoint(directory, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(directory, target)
    return target


def assert_same_layers_and_optimiser(label_a, label_b):
    """Two label-party checkpoints hold bit-identical layers and momentum (non-empty)."""
    assert label_a.parameters.keys() == label_b.parameters.keys()
    for name in label_a.parameters:
        assert np.array_equal(label_a.parameters[name], label_b.parameters[name]), name
    assert label_a.velocity.keys() == label_b.velocity.keys() and label_a.velocity
    for name in label_a.velocity:
        assert np.array_equal(label_a.velocity[name], label_b.velocity[name]), name


def label_forward(label_state, z):
    """The label party's layers from its checkpoint, run in plaintext from z: (model, scores)."""
    model = nn.MLP(label_state.layer_sizes, activation=label_state.training["activation"],
                   first_layer_weight=False)
    for name, value in label_state.parameters.items():
        _, index, attribute = name.split(".")
        setattr(model.layers[int(index)], attribute, value)
    return model, model.scores_from_logits(model.forward_top(z + model.layers[0].b))


# ---- 1. bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_features_names_row_and_column(keypair, bad):
    """A non-finite feature is refused before anything is encrypted, naming row and column."""
    X = np.zeros((4, 3))
    X[2, 1] = bad
    paillier.reset_op_counts()
    with pytest.raises(ValueError, match=r"^features, row 2, column 1: value .* is not finite$"):
        parties.DataParty(X, keypair=keypair)
    assert paillier.OP_COUNTS["encrypt"] == 0


def test_nan_in_a_features_csv_is_one_line_at_the_cli(tmp_path, capsys):
    """The CSV path reports the file, line and column of a 'nan' cell, exit code 2."""
    features = write_csv(tmp_path / "f.csv", ["id", "a", "b"],
                         [[i, i, "nan" if i == 3 else 1.0] for i in range(8)])
    labels = write_csv(tmp_path / "l.csv", ["id", "y"], [[i, i % 2] for i in range(8)])
    line = one_line_error(capsys, ["train", "--features", str(features), "--labels", str(labels),
                                   "--id-column", "id", "--label-column", "y", *CLI_SMALL_KEY])
    assert "f.csv" in line and "line 5" in line and "'b'" in line and "not finite" in line


@pytest.mark.parametrize("labels,needle", [
    (np.array([0.0, 1.0, np.nan, 1.0]), "label row 2: value nan is not an integer class id"),
    (np.array([0.0, 1.0, np.inf, 1.0]), "label row 2: value inf is not an integer class id"),
    (np.array([0.0, 0.5, 1.0, 1.0]), "label row 1: value 0.5 is not an integer class id"),
    (np.array([0, 1, 2, 1]), "label row 2: class 2 is outside 0..1"),
    (np.array([0, -1, 1, 1]), "label row 1: class -1 is outside 0..1"),
    (np.array([1, 1, 1, 1]), "single class"),
    (np.array([[0, 1], [1, 0]]), "1-D array"),
    (np.array(["a", "b", "a", "b"]), "integer class ids"),
])
def test_bad_labels_are_refused_by_the_label_party_in_one_line(labels, needle):
    """NaN/inf, fractional, out-of-range and single-class labels, and a 2-D y: one line each,
    before any training."""
    with pytest.raises(ValueError) as caught:
        parties.LabelParty(labels, (3, 2, 1), allow_insecure=True)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_single_class_labels_csv_is_one_line_at_the_cli(tmp_path, capsys):
    features = write_csv(tmp_path / "f.csv", ["id", "a"], [[i, i] for i in range(6)])
    labels = write_csv(tmp_path / "l.csv", ["id", "y"], [[i, "yes"] for i in range(6)])
    line = one_line_error(capsys, ["train", "--features", str(features), "--labels", str(labels),
                                   "--id-column", "id", "--label-column", "y", *CLI_SMALL_KEY])
    assert "single class" in line


def test_feature_overflow_names_the_column_and_the_bound(keypair):
    """|x| ≥ 2**x_int_bits is an OverflowError naming the column and the largest value allowed,
    never a wrap-around."""
    X = np.zeros((3, 4))
    X[1, 3] = 300.0
    with pytest.raises(OverflowError, match=r"^features, row 1, column 3: value 300 exceeds "
                                            r"the fixed-point bound 256 \(x_int_bits=8\)"):
        parties.DataParty(X, keypair=keypair)


def test_test_row_beyond_the_fixed_point_range_fails_before_any_encryption(keypair):
    """An out-of-range test row is reported up front, naming its id and column name — not
    after the whole encrypted training, when prediction would first encode it."""
    train_set, test_set = acml.prepare(wine_subset(60), test_fraction=0.25)
    test_set.X[2, 4] = 1e4
    paillier.reset_op_counts()
    with pytest.raises(OverflowError) as caught:
        acml.train(train_set, test_set, config(), keypair=keypair)
    message = str(caught.value)
    assert f"id '{test_set.ids[2]}'" in message and "column 'magnesium'" in message
    assert "exceeds the fixed-point bound 256" in message and "\n" not in message
    assert paillier.OP_COUNTS["encrypt"] == 0


@pytest.mark.parametrize("make,needle", [
    (lambda X, y: (X[:, 0], y), "non-empty 2-D array"),
    (lambda X, y: (X, y[:-1]), "aligned rows"),
    (lambda X, y: (X[:, :-1], y), "input width"),
])
def test_wrong_shapes_are_refused_in_one_line(keypair, make, needle):
    """1-D features, a row count that differs between the parties, a feature count that is
    not the network's input width."""
    X, y = np.zeros((6, 3)), np.array([0, 1] * 3)
    X, y = make(X, y)
    with pytest.raises(ValueError) as caught:
        data_party = parties.DataParty(X, keypair=keypair)
        label_party = parties.LabelParty(y, (3, 2, 1), batch_size=4, allow_insecure=True)
        protocol.setup(Channel(data_party=data_party, label_party=label_party))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("feature_ids,label_ids,needle", [
    ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4], "have no label"),
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], "have no features"),
    ([0, 1, 2, 2, 4, 5], [0, 1, 2, 3, 4, 5], "duplicate id '2'"),
    ([0, 1, 2, 3, 4, 5], [0, 1, 1, 3, 4, 5], "duplicate id '1'"),
])
def test_ids_missing_on_one_side_or_duplicated_are_one_line_at_the_cli(
        tmp_path, capsys, feature_ids, label_ids, needle):
    features = write_csv(tmp_path / "f.csv", ["id", "a"], [[i, i * 0.5] for i in feature_ids])
    labels = write_csv(tmp_path / "l.csv", ["id", "y"], [[i, i % 2] for i in label_ids])
    line = one_line_error(capsys, ["train", "--features", str(features), "--labels", str(labels),
                                   "--id-column", "id", "--label-column", "y", *CLI_SMALL_KEY])
    assert needle in line


class StubParty:
    """A party with no state of its own: only the channel's checks are under test."""

    mask_source = None


def channel_under(public_key):
    """A channel between two stub parties, as after step 0 announced ``public_key``; and the
    list of payloads the receiver took."""
    channel = Channel(data_party=StubParty(), label_party=StubParty())
    channel.public_key = public_key
    return channel, []


def send_ciphertext(channel, payload, received):
    channel.send(0, DATA, LABEL, "[[X]]", CIPHERTEXT, make=lambda party: payload,
                 take=lambda party, value: received.append(value), shape=payload.shape)


@pytest.mark.parametrize("corrupt,needle", [
    (lambda c, pk: 0, "lies outside [1, n²)"),
    (lambda c, pk: pk.nsquare + 5, "lies outside [1, n²)"),
    (lambda c, pk: pk.n, "is not coprime to n"),
])
def test_channel_refuses_a_ciphertext_out_of_range_or_not_coprime_to_n(keypair, corrupt, needle):
    """A value that is no Paillier ciphertext never reaches a decryption: the channel names its
    index. The same checks guard deserialisation (EncryptedArray.from_bytes)."""
    public_key, _ = keypair
    encrypted = public_key.encrypt(Fixed.from_ints(np.array([[1, 2], [3, 4]], dtype=object), 0))
    ciphertexts = encrypted.ciphertexts.copy()
    ciphertexts[1, 0] = corrupt(ciphertexts[1, 0], public_key)
    bad = EncryptedArray(public_key, ciphertexts, 0)
    channel, received = channel_under(public_key)
    with pytest.raises(ValueError, match=re.escape(f"ciphertext at index (1, 0) {needle}")):
        send_ciphertext(channel, bad, received)
    assert channel.messages == [] and received == []
    payload = bytearray(encrypted.to_bytes())
    width = (public_key.nsquare.bit_length() + 7) // 8
    value = corrupt(0, public_key)
    if value < 256 ** width:
        payload[-width:] = value.to_bytes(width, "big")
        with pytest.raises(ValueError, match=r"ciphertext at index \(1, 1\)"):
            EncryptedArray.from_bytes(bytes(payload), public_key)


def test_a_payload_under_another_public_key_is_refused(keypair):
    """Ciphertexts under another key: the channel refuses them, deserialisation refuses them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other_public, _ = paillier.generate_keypair(256, allow_insecure=True)
    foreign = other_public.encrypt(Fixed.from_ints(np.array([1, 2], dtype=object), 0))
    channel, received = channel_under(keypair[0])
    with pytest.raises(LeakageError, match="not under the data party's public key"):
        send_ciphertext(channel, foreign, received)
    assert channel.messages == [] and received == []
    with pytest.raises(ValueError, match="different public key"):
        EncryptedArray.from_bytes(foreign.to_bytes(), keypair[0])


@pytest.mark.parametrize("argv,needle", [
    (["--key-bits", "128", "--insecure-small-key"], "128-bit key is too small for this "
                                                    "fixed-point plan"),
    (["--key-bits", "64", "--insecure-small-key"], "below the hard floor"),
])
def test_a_key_shorter_than_allowed_is_one_line_at_the_cli(capsys, argv, needle):
    """A key too short for the fixed-point plan (values would wrap mod n), or below the floor."""
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--hidden", "2", "--epochs", "1",
                                   "--quiet", *argv])
    assert needle in line


# ---- atomic writes --------------------------------------------------------------------------
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """write_atomically: an error mid-write keeps the previous content and leaves no stray file."""
    path = tmp_path / "out.txt"
    checkpoint.write_atomically(path, lambda handle: handle.write("old\n"), mode="w")

    def fail_half_way(handle):
        handle.write("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_atomically(path, fail_half_way, mode="w")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_cli_transcript_is_written_whole_or_not_at_all(tmp_path, capsys):
    """`train --transcript` streams into a temporary file renamed at the end: a run that fails
    leaves no transcript and no temporary (here step 0 fails at the training plan, after the
    public key and the shapes were streamed); a run that succeeds leaves one JSON line per
    message, the public key first."""
    common = ["train", "--dataset", "wine", "--hidden", "2", "--epochs", "1", "--quiet"]
    failed = tmp_path / "failed.jsonl"
    line = one_line_error(capsys, [*common, "--key-bits", "128", "--insecure-small-key",
                                   "--transcript", str(failed)])
    assert "too small" in line
    assert list(tmp_path.iterdir()) == []
    done = tmp_path / "done.jsonl"
    assert acml.main([*common, *CLI_SMALL_KEY, "--transcript", str(done)]) == 0
    capsys.readouterr()
    assert [p.name for p in tmp_path.iterdir()] == ["done.jsonl"]
    records = [json.loads(text) for text in done.read_text().splitlines()]
    assert records[0]["name"] == "public key" and records[0]["step"] == "0"
    assert all({"step", "sender", "receiver", "name", "kind", "payload"} <= set(r)
               for r in records)
    assert {r["kind"] for r in records} >= {"public", "ciphertext", "masked", "revealed"}


# ---- 2. checkpoints -------------------------------------------------------------------------
def test_each_party_file_holds_its_own_state_in_the_documented_entries(trained):
    """data_party.npz and label_party.npz load with allow_pickle=False; big integers are
    decimal strings; every entry is the documented one (nothing else slips in)."""
    directory, result, train_set, *_ = trained
    with np.load(directory / "data_party.npz", allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert set(entries) == {"meta", "sha256", "public_key.n", "private_key.p", "private_key.q",
                            "noise_acc", "standardizer.mean", "standardizer.std"}
    assert entries["noise_acc"].dtype.kind == "U" and entries["noise_acc"].shape == (13, 3)
    noise = np.array([int(v) for v in entries["noise_acc"].ravel()], dtype=object)
    assert np.array_equal(noise, result.data_party.noise_acc.values.ravel())
    meta = json.loads(str(entries["meta"]))
    assert meta["role"] == "data" and meta["epochs_completed"] == 2
    assert meta["feature_names"] == train_set.feature_names
    with np.load(directory / "label_party.npz", allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert set(entries) == {"meta", "sha256", "public_key.n", "weight_share", "layers.0.b",
                            "layers.1.W", "layers.1.b", "optimizer.velocity.layers.0.b",
                            "optimizer.velocity.layers.1.W", "optimizer.velocity.layers.1.b"}
    share = np.array([int(v) for v in entries["weight_share"].ravel()], dtype=object)
    assert np.array_equal(share, result.label_party.weight_share.values.ravel())
    assert np.array_equal(entries["optimizer.velocity.layers.1.W"],
                          result.label_party.optimizer.velocity["layers.1.W"])
    assert json.loads(str(entries["meta"]))["class_names"] == train_set.class_names


def test_label_party_file_cannot_reproduce_w(trained):
    """The label party's file holds no private key, no noise_acc, no features; its weight share
    differs from W in every entry by ε_acc, a mask σ bits wider than any W."""
    directory, result, train_set, *_ = trained
    with np.load(directory / "label_party.npz", allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert not any(name.startswith(("private_key", "noise_acc", "standardizer", "features"))
                   for name in entries)
    meta_text = str(entries["meta"])
    assert not any(name in meta_text for name in train_set.feature_names)
    plan = result.data_party.plan
    share = np.array([int(v) for v in entries["weight_share"].ravel()], dtype=object)
    weight = (result.label_party.weight_share + result.data_party.noise_acc).values.ravel()
    gap_bits = [abs(int(s) - int(w)).bit_length() for s, w in zip(share, weight)]
    assert min(gap_bits) > plan.weight_bits  # the mask dwarfs every possible |W|
    assert max(gap_bits) > plan.noise_acc_bits() - 8


def test_data_party_file_holds_no_labels_no_share_no_top_layers(trained):
    """The data party's file: its key pair, ε_acc, plans, standardisation — no labels, no class
    names, no weight share, no layer parameters, no optimiser state."""
    directory, _, train_set, *_ = trained
    with np.load(directory / "data_party.npz", allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert not any(name.startswith(("weight_share", "layers", "optimizer", "labels"))
                   for name in entries)
    meta = json.loads(str(entries["meta"]))
    assert not {"class_names", "labels_sha256"} & set(meta)
    meta_text = str(entries["meta"])
    assert not any(name in meta_text for name in train_set.class_names)
    for array in entries.values():  # no array is shaped like y
        assert array.shape != train_set.y.shape


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one_at_the_cli(tmp_path, capsys):
    """3 epochs == 2 epochs resumed for a third, with momentum: W_B + ε_acc integer for integer,
    every top-layer array and optimiser velocity bit for bit, and the exported models equal.
    (The keys, the shares and the masks all differ between the two runs.)"""
    common = ["--dataset", "wine", "--hidden", "3", "--momentum", "0.9", *CLI_SMALL_KEY]
    seed = ["--init-seed", "0"]  # the resumed run takes W's mask from its checkpoint
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert acml.main(["train", *common, *seed, "--epochs", "3",
                      "--checkpoint-dir", str(straight)]) == 0
    assert acml.main(["train", *common, *seed, "--epochs", "2",
                      "--checkpoint-dir", str(resumed)]) == 0
    assert acml.main(["train", *common, "--epochs", "3", "--checkpoint-dir", str(resumed),
                      "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    states = [run_directory.load_pair(d, allow_insecure=True) for d in (straight, resumed)]
    (data_a, label_a), (data_b, label_b) = states
    assert data_a.public_key != data_b.public_key
    assert not np.array_equal(label_a.weight_share.values, label_b.weight_share.values)
    assert np.array_equal((label_a.weight_share + data_a.noise_acc).values,
                          (label_b.weight_share + data_b.noise_acc).values)
    assert_same_layers_and_optimiser(label_a, label_b)
    assert label_a.epochs_completed == label_b.epochs_completed == 3
    exports = []
    for directory in (straight, resumed):
        out = directory / "model.npz"
        assert acml.main(["export", "--checkpoint-dir", str(directory), "--out", str(out),
                          acml.REVEAL_FLAG]) == 0
        with np.load(out, allow_pickle=False) as archive:
            exports.append({name: archive[name] for name in archive.files})
    assert exports[0].keys() == exports[1].keys()
    for name in exports[0]:
        assert np.array_equal(exports[0][name], exports[1][name]), name


def test_resume_refuses_other_settings_other_data_and_a_finished_run(trained):
    """Resuming with another lr, other rows, no epoch left, or a key pair of its own is one
    clear line; a fresh run does not overwrite an existing checkpoint."""
    directory, _, train_set, *_ = trained
    cases = [
        (dict(config=config(momentum=0.9, lr=0.2, epochs=3)), "lr = 0.1"),
        (dict(config=config(momentum=0.9, epochs=2)), "nothing to resume"),
        (dict(config=config(momentum=0.9, epochs=3), keypair="any"), "pass no keypair"),
    ]
    for options, needle in cases:
        cfg = options.pop("config")
        with pytest.raises(ValueError, match=needle):
            acml.train(train_set, None, cfg, checkpoint_dir=directory, resume=True, **options)
    other = data.Dataset(train_set.X[::-1].copy(), train_set.y[::-1].copy(),
                         train_set.ids[::-1].copy(), train_set.feature_names,
                         train_set.class_names, "reversed")
    with pytest.raises(ValueError, match="not the features the data party's checkpoint"):
        acml.train(other, None, config(momentum=0.9, epochs=3), checkpoint_dir=directory,
                   resume=True)
    with pytest.raises(ValueError, match="already exists"):
        acml.train(train_set, None, config(epochs=1), checkpoint_dir=directory)


def test_corrupted_checkpoint_files_are_one_line_errors(trained, tmp_path):
    """A flipped byte, a truncated file, an edited value (sha256 mismatch), a newer format
    version, and the wrong party's file each give a one-line error naming the file."""
    directory, *_ = trained

    def fails(prepare, needle, name="data_party.npz", loader=checkpoint.DataPartyState):
        copy = copy_checkpoint(directory, tmp_path, f"case{len(list(tmp_path.iterdir()))}")
        prepare(copy / name)
        with pytest.raises(ValueError) as caught:
            loader.load(copy / name, allow_insecure=True)
        message = str(caught.value)
        assert needle in message and name in message and "\n" not in message, message

    def flip_byte(path):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))

    def truncate(path):
        path.write_bytes(path.read_bytes()[:100])

    def rewrite(path, change):
        with np.load(path, allow_pickle=False) as archive:
            entries = {name: archive[name] for name in archive.files}
        change(entries)
        np.savez(path, **entries)

    def edit_noise(entries):
        noise = entries["noise_acc"].copy()
        noise[0, 0] = str(int(noise[0, 0]) + 1)
        entries["noise_acc"] = noise

    def bump_version(entries):
        meta = json.loads(str(entries["meta"]))
        meta["version"] = 99
        entries["meta"] = np.array(json.dumps(meta))

    fails(flip_byte, "corrupted")
    fails(truncate, "corrupted")
    fails(lambda path: rewrite(path, edit_noise), "does not match the sha256")
    fails(lambda path: rewrite(path, bump_version), "version 99")
    fails(lambda path: shutil.copy(path.parent / "label_party.npz", path),
          "is the label party's checkpoint, expected the data party's")
    fails(lambda path: rewrite(path, lambda e: e.pop("meta")), "not an ACML checkpoint")

    def drop_lr_and_rehash(entries):  # a well-formed file with a field missing
        meta = json.loads(str(entries["meta"]))
        del meta["training"]["lr"]
        entries["meta"] = np.array(json.dumps(meta))
        entries["sha256"] = np.array(checkpoint._content_digest(entries))

    fails(lambda path: rewrite(path, drop_lr_and_rehash), "lacks ['lr']")
    fails(lambda path: rewrite(path, drop_lr_and_rehash), "lacks ['lr']",
          name="label_party.npz", loader=checkpoint.LabelPartyState)
    fails(flip_byte, "corrupted", name="label_party.npz", loader=checkpoint.LabelPartyState)


def test_mismatched_checkpoint_pair_is_refused(trained, keypair, tmp_path):
    """Files from two runs (different keys) or from two epochs of one run do not make a W:
    loading the pair says they do not belong together."""
    directory, _, train_set, *_ = trained
    other = tmp_path / "other"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        acml.train(train_set, None, config(epochs=1), checkpoint_dir=other)  # its own key
    mixed = copy_checkpoint(directory, tmp_path, "mixed")
    shutil.copy(other / "label_party.npz", mixed / "label_party.npz")
    with pytest.raises(ValueError, match="do not belong together: the data party's key"):
        run_directory.load_pair(mixed, allow_insecure=True)
    early = tmp_path / "early"
    acml.train(train_set, None, config(epochs=1), keypair=keypair, checkpoint_dir=early)
    skewed = copy_checkpoint(directory, tmp_path, "skewed")
    shutil.copy(early / "label_party.npz", skewed / "label_party.npz")
    with pytest.raises(ValueError, match="after epoch 2, the label party's after epoch 1"):
        run_directory.load_pair(skewed, allow_insecure=True)


def test_a_checkpoint_key_shorter_than_allowed_needs_the_insecure_flag(trained, tmp_path,
                                                                       capsys):
    """Loading a checkpoint whose key is under 1024 bits is refused unless insecure keys are
    explicitly allowed; prediction at the CLI says which flag."""
    directory, *_ = trained
    with pytest.raises(ValueError, match="384-bit key is under 1024 bits"):
        run_directory.load_pair(directory)
    features = write_csv(tmp_path / "new.csv", ["id", "x"], [[0, 1.0]])
    line = one_line_error(capsys, ["predict", "--checkpoint-dir", str(directory),
                                   "--features", str(features), "--id-column", "id"])
    assert "--insecure-small-key" in line


def test_cli_checkpoint_misuse_is_one_line(tmp_path, capsys):
    """--resume without a directory, and predict/export from a directory with no checkpoint."""
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--resume", *CLI_SMALL_KEY])
    assert "--resume needs --checkpoint-dir" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    features = write_csv(tmp_path / "new.csv", ["id", "x"], [[0, 1.0]])
    line = one_line_error(capsys, ["predict", "--checkpoint-dir", str(empty), "--features",
                                   str(features), "--id-column", "id", "--insecure-small-key"])
    assert "data_party.npz: no such checkpoint file" in line
    line = one_line_error(capsys, ["export", "--checkpoint-dir", str(empty), "--out",
                                   str(tmp_path / "m.npz"), acml.REVEAL_FLAG])
    assert "no such checkpoint file" in line


# ---- 3. prediction --------------------------------------------------------------------------
def test_prediction_from_checkpoints_equals_plaintext_prediction(trained):
    """Encrypted prediction from the two files, on raw new rows, equals the same fixed-point
    forward pass in plaintext bit for bit (W_B + ε_acc combined here, in the test only), and
    gives the same classes as the float64 exported model."""
    directory, _, _, test_set, raw_test = trained
    prediction = acml.predict(directory, raw_test.X, allow_insecure=True)
    data_state, label_state = run_directory.load_pair(directory, allow_insecure=True)
    weight = label_state.weight_share + data_state.noise_acc
    plan = data_state.plan
    z = (Fixed.encode(test_set.X, plan.x_frac_bits) @ weight).decode()
    model, expected = label_forward(label_state, z)
    assert np.array_equal(prediction.scores, expected)
    assert np.array_equal(prediction.class_ids, model.classes_from_scores(expected))
    assert prediction.class_names == [label_state.class_names[k] for k in prediction.class_ids]
    confidence = expected[np.arange(len(expected)), prediction.class_ids]
    assert np.array_equal(prediction.confidence, confidence)


def read_predictions(path):
    """(header, rows) of a prediction CSV."""
    with open(path, newline="") as handle:
        written = list(csv.reader(handle))
    return written[0], written[1:]


def probabilities_of(rows):
    """The p_<class> columns of prediction rows, as floats (m, k)."""
    return np.array([[float(value) for value in row[2:]] for row in rows])


def test_cli_predict_writes_id_class_and_probabilities_and_matches_the_api(trained, tmp_path):
    """`acml.py predict` reads raw rows by column name (any order), applies the data party's
    standardisation, and writes id, predicted class name and the probability of every class
    (round-trip floats): the predicted class's is the API's confidence."""
    directory, _, _, _, raw_test = trained
    names = list(raw_test.feature_names)
    order = names[::-1]
    rows = [[f"row{i}"] + [repr(float(raw_test.X[i, names.index(n)])) for n in order]
            for i in range(len(raw_test.y))]
    features = write_csv(tmp_path / "new.csv", ["key", *order], rows)
    out = tmp_path / "predictions.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(directory), "--features", str(features),
                      "--id-column", "key", "--out", str(out), "--insecure-small-key"]) == 0
    header, written = read_predictions(out)
    expected = acml.predict(directory, raw_test.X, allow_insecure=True)
    assert header == ["key", "predicted_class", *(f"p_{name}" for name in expected.classes)]
    assert [row[0] for row in written] == [f"row{i}" for i in range(len(raw_test.y))]
    assert [row[1] for row in written] == expected.class_names
    probabilities = probabilities_of(written)
    assert np.array_equal(probabilities, expected.scores)  # three classes: the softmax itself
    assert np.array_equal(probabilities[np.arange(len(written)), expected.class_ids],
                          expected.confidence)


def assert_one_probability_per_class(header, rows, id_column, class_names):
    """A prediction CSV: id, predicted_class, then p_<name> for every class in class-id order;
    each row's probabilities lie in [0, 1], sum to 1, and the predicted class is the likeliest."""
    assert header == [id_column, "predicted_class", *(f"p_{name}" for name in class_names)]
    assert rows and all(len(row) == len(header) for row in rows)
    probabilities = probabilities_of(rows)
    assert probabilities.shape == (len(rows), len(class_names))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    likeliest = [class_names[k] for k in probabilities.argmax(axis=1)]
    assert [row[1] for row in rows] == likeliest
    return probabilities


def test_cli_predict_writes_one_named_probability_per_class_summing_to_one(trained, tmp_path):
    """Three classes: one p_<class name> column each, in class order; every row sums to 1."""
    directory, _, train_set, _, raw_test = trained
    names = list(raw_test.feature_names)
    features = write_csv(tmp_path / "new.csv", ["id", *names],
                         [[f"r{i}", *map(repr, raw_test.X[i].tolist())]
                          for i in range(len(raw_test.y))])
    out = tmp_path / "predictions.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(directory), "--features",
                      str(features), "--id-column", "id", "--out", str(out),
                      "--insecure-small-key"]) == 0
    header, rows = read_predictions(out)
    assert len(train_set.class_names) == 3
    assert_one_probability_per_class(header, rows, "id", train_set.class_names)


def test_cli_predict_binary_writes_both_named_probabilities(tmp_path, capsys):
    """Two classes named in the labels CSV (one output unit): still one column per class,
    p_<no> = 1 − p_<yes>, each row summing to 1, and the API's scores are P(second class)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")
    features = write_csv(tmp_path / "f.csv", ["id", "a", "b", "c"],
                         [[f"k{i}", *map(repr, X[i].tolist())] for i in range(len(X))])
    labels = write_csv(tmp_path / "l.csv", ["id", "outcome"],
                       [[f"k{i}", y[i]] for i in range(len(X))])
    directory = tmp_path / "run"
    assert acml.main(["train", "--features", str(features), "--labels", str(labels),
                      "--id-column", "id", "--label-column", "outcome", "--hidden", "2",
                      "--epochs", "1", "--batch-size", "16", "--init-seed", "0",
                      "--checkpoint-dir", str(directory), *CLI_SMALL_KEY]) == 0
    capsys.readouterr()
    _, label_state = run_directory.load_pair(directory, allow_insecure=True)
    assert label_state.class_names == ["no", "yes"] and label_state.layer_sizes[-1] == 1
    out = tmp_path / "predictions.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(directory), "--features",
                      str(features), "--id-column", "id", "--out", str(out),
                      "--insecure-small-key"]) == 0
    header, rows = read_predictions(out)
    probabilities = assert_one_probability_per_class(header, rows, "id", ["no", "yes"])
    assert [row[0] for row in rows] == [f"k{i}" for i in range(len(X))]
    expected = acml.predict(directory, X, feature_names=["a", "b", "c"], allow_insecure=True)
    assert expected.scores.ndim == 1
    assert np.array_equal(probabilities[:, 1], expected.scores)
    assert np.array_equal(probabilities[:, 0], 1.0 - expected.scores)
    assert [row[1] for row in rows] == expected.class_names


def test_cli_predict_bad_rows_are_one_line_and_write_nothing(trained, tmp_path, capsys):
    """A value beyond the fixed-point range names the id, the column and the raw range the
    column accepts; a missing column and a duplicated id are one line too; --out stays absent."""
    directory, _, _, _, raw_test = trained
    names = list(raw_test.feature_names)
    out = tmp_path / "predictions.csv"
    base = ["predict", "--checkpoint-dir", str(directory), "--id-column", "id",
            "--out", str(out), "--insecure-small-key"]
    rows = [[i, *raw_test.X[i]] for i in range(3)]
    rows[1][1 + names.index("proline")] = 1e9
    huge = write_csv(tmp_path / "huge.csv", ["id", *names], rows)
    line = one_line_error(capsys, [*base, "--features", str(huge)])
    assert "id '1'" in line and "column 'proline'" in line and "strictly between" in line
    missing = write_csv(tmp_path / "missing.csv", ["id", *names[:-1]],
                        [[i, *raw_test.X[i, :-1]] for i in range(3)])
    assert "missing ['proline']" in one_line_error(capsys, [*base, "--features", str(missing)])
    duplicated = write_csv(tmp_path / "dup.csv", ["id", *names],
                           [[7, *raw_test.X[0]], [7, *raw_test.X[1]]])
    assert "duplicate id '7'" in one_line_error(capsys, [*base, "--features", str(duplicated)])
    assert not out.exists()


# ---- 4. joint export ------------------------------------------------------------------------
def test_export_without_consent_is_refused_in_one_line(trained, tmp_path, capsys):
    """Without the flag that says it reveals the weights: exit 2, one line, no file."""
    directory, *_ = trained
    out = tmp_path / "model.npz"
    line = one_line_error(capsys, ["export", "--checkpoint-dir", str(directory), "--out",
                                   str(out)])
    assert acml.REVEAL_FLAG in line and "private" in line
    with pytest.raises(ValueError, match="stop being private"):
        acml.export_model(directory, out)
    assert not out.exists()


def test_exported_model_is_the_plaintext_model_and_loads_without_pickle(trained, tmp_path):
    """The export holds layers.i.W/b as float64 (W = W_B + ε_acc), the standardisation and the
    architecture as JSON; load_model rebuilds an nn.MLP that predicts the encrypted classes."""
    directory, result, _, _, raw_test = trained
    out = tmp_path / "model.npz"
    acml.export_model(directory, out, i_understand_this_reveals_the_weights=True)
    with np.load(out, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert set(entries) == {"layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b",
                            "standardizer.mean", "standardizer.std", "architecture"}
    architecture = json.loads(str(entries["architecture"]))
    assert architecture["layer_sizes"] == [13, 3, 3] and architecture["activation"] == acml.Config().activation
    assert np.array_equal(entries["layers.0.W"], acml.joint_first_layer(result.data_party,
                                                                        result.label_party))
    model = acml.load_model(out)
    encrypted = acml.predict(directory, raw_test.X, allow_insecure=True)
    plain = model.predict_scores(raw_test.X)
    assert np.array_equal(model.mlp.classes_from_scores(plain), encrypted.class_ids)
    # The encrypted pass rounds X to 2**-17 (x_frac_bits = 16): on the same rounded rows the
    # float model agrees to float64 rounding; on raw rows, to that quantisation.
    standardized = (raw_test.X - model.feature_mean) / model.feature_std
    rounded = Fixed.encode(standardized, FixedPointPlan().x_frac_bits).decode()
    assert np.allclose(model.mlp.predict_scores(rounded), encrypted.scores, rtol=0, atol=1e-12)
    assert np.allclose(plain, encrypted.scores, rtol=0, atol=1e-4)


# ---- 5. a data party with a bottom model ----------------------------------------------------
BOTTOM_WIDTH = 4


def read_entries(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def bottom_runs(keypair, tmp_path_factory):
    """With Config(bottom=4) and momentum: 3 epochs straight, and 2 epochs then resumed for a
    third, each checkpointed; plus the raw test rows for prediction."""
    raw = wine_subset()
    train_set, test_set, scaler = acml.prepare(raw, test_fraction=0.25, seed=0,
                                               return_standardizer=True)
    _, raw_test = data.train_test_split(raw, test_fraction=0.25, seed=0)
    straight = tmp_path_factory.mktemp("bottom_straight")
    resumed = tmp_path_factory.mktemp("bottom_resumed")

    def run(epochs, directory, **options):
        return acml.train(train_set, test_set, config(bottom=BOTTOM_WIDTH, momentum=0.9,
                                                      epochs=epochs),
                          checkpoint_dir=directory, standardizer=scaler, **options)

    straight_result = run(3, straight, keypair=keypair)
    run(2, resumed, keypair=keypair)
    resumed_result = run(3, resumed, resume=True)
    return straight, resumed, straight_result, resumed_result, train_set, raw_test


def test_bottom_model_resumed_run_is_bit_identical_to_an_uninterrupted_one(bottom_runs,
                                                                           tmp_path):
    """With a bottom model, 3 epochs == 2 epochs resumed for a third: W_B + ε_acc integer for
    integer, the bottom model's W and b, every top-layer array and velocity bit for bit, and
    the exported models equal. The resumed setup sends no [[X]]: step 1 sends [[α]] instead."""
    straight, resumed, straight_result, resumed_result, *_ = bottom_runs
    (data_a, label_a), (data_b, label_b) = [run_directory.load_pair(d, allow_insecure=True)
                                            for d in (straight, resumed)]
    assert label_a.epochs_completed == label_b.epochs_completed == 3
    assert not np.array_equal(label_a.weight_share.values, label_b.weight_share.values)
    assert data_a.noise_acc.shape == (BOTTOM_WIDTH, 3)
    assert np.array_equal((label_a.weight_share + data_a.noise_acc).values,
                          (label_b.weight_share + data_b.noise_acc).values)
    for state in (data_a, data_b):
        assert state.bottom.width == BOTTOM_WIDTH and state.bottom.activation_name == "relu"
    assert np.array_equal(data_a.bottom.layer.W, data_b.bottom.layer.W)
    assert np.array_equal(data_a.bottom.layer.b, data_b.bottom.layer.b)
    assert np.array_equal(data_b.bottom.layer.W, resumed_result.data_party.bottom.layer.W)
    assert not np.array_equal(data_a.bottom.layer.b, np.zeros(BOTTOM_WIDTH))  # it did train
    assert_same_layers_and_optimiser(label_a, label_b)
    step0 = [m.name for m in resumed_result.channel.messages if m.step == "0"]
    # The epochs completed travel in the training plan, which the data party checks against
    # its own checkpoint; no new weight split, no [[X]].
    assert step0 == ["public key", "shapes", "training plan", "packing layout"]
    assert resumed_result.metrics["resumed_after_epoch"] == 2
    assert "[[α]]" in {m.name for m in resumed_result.channel.messages}
    exports = []
    for index, directory in enumerate((straight, resumed)):
        out = tmp_path / f"model{index}.npz"
        acml.export_model(directory, out, i_understand_this_reveals_the_weights=True)
        exports.append(read_entries(out))
    assert exports[0].keys() == exports[1].keys()
    assert {"bottom.W", "bottom.b"} <= set(exports[0])
    for name in exports[0]:
        assert np.array_equal(exports[0][name], exports[1][name]), name


def test_bottom_model_is_in_the_data_party_file_as_documented(bottom_runs):
    """data_party.npz gains bottom.W (d, k) and bottom.b (k,) as float64, equal to the party's
    own bit for bit, and its width and activation in the meta; ε_acc is shaped (k, n_hidden).
    The snapshot is a copy: training on does not change it."""
    straight, _, result, _, train_set, _ = bottom_runs
    entries = read_entries(straight / "data_party.npz")
    assert set(entries) == {"meta", "sha256", "public_key.n", "private_key.p", "private_key.q",
                            "noise_acc", "standardizer.mean", "standardizer.std", "bottom.W",
                            "bottom.b"}
    bottom = result.data_party.bottom
    assert entries["bottom.W"].dtype == np.float64 and entries["bottom.W"].shape == (13, 4)
    assert np.array_equal(entries["bottom.W"], bottom.layer.W)
    assert np.array_equal(entries["bottom.b"], bottom.layer.b)
    assert entries["noise_acc"].shape == (BOTTOM_WIDTH, 3)
    meta = json.loads(str(entries["meta"]))
    assert meta["bottom_model"] == {"activation": "relu", "width": 4, "n_features": 13}
    state = checkpoint.DataPartyState.of(result.data_party, epochs_completed=3)
    saved_weight = state.bottom.layer.W.copy()
    bottom.layer.W += 1.0
    try:
        assert np.array_equal(state.bottom.layer.W, saved_weight)
    finally:
        bottom.layer.W -= 1.0


def test_label_party_file_holds_nothing_of_the_bottom_model(bottom_runs):
    """label_party.npz with a bottom model: the same entries as without one, no 'bottom' in its
    meta, and none of its float arrays shaped like or holding a value of the bottom's W or b."""
    straight, _, result, *_ = bottom_runs
    entries = read_entries(straight / "label_party.npz")
    assert set(entries) == {"meta", "sha256", "public_key.n", "weight_share", "layers.0.b",
                            "layers.1.W", "layers.1.b", "optimizer.velocity.layers.0.b",
                            "optimizer.velocity.layers.1.W", "optimizer.velocity.layers.1.b"}
    assert "bottom" not in str(entries["meta"])
    bottom = result.data_party.bottom.layer
    secrets_of_bottom = np.concatenate([bottom.W.ravel(), bottom.b[bottom.b != 0]])
    for name, array in entries.items():
        assert array.shape not in (bottom.W.shape, bottom.b.shape), name
        if array.dtype == np.float64:
            assert not np.isin(array, secrets_of_bottom).any(), name


def test_bottom_model_prediction_from_checkpoints_equals_the_plaintext_forward_pass(bottom_runs,
                                                                                    tmp_path):
    """Prediction from checkpoints applies the bottom model at the data party: its scores equal
    the fixed-point forward pass (α = bottom(X) rounded, W = W_B + ε_acc combined in the test
    only) bit for bit, and the exported model's float forward pass within quantisation, with
    identical classes."""
    straight, _, _, _, _, raw_test = bottom_runs
    prediction = acml.predict(straight, raw_test.X, allow_insecure=True)
    data_state, label_state = run_directory.load_pair(straight, allow_insecure=True)
    plan = data_state.plan
    alpha = data_state.bottom.forward(data_state.standardize(raw_test.X))
    z = (Fixed.encode(alpha, plan.x_frac_bits) @ (label_state.weight_share
                                                  + data_state.noise_acc)).decode()
    _, expected = label_forward(label_state, z)
    assert np.array_equal(prediction.scores, expected)
    out = tmp_path / "model.npz"
    acml.export_model(straight, out, i_understand_this_reveals_the_weights=True)
    model = acml.load_model(out)
    assert model.bottom is not None and model.mlp.layer_sizes[0] == BOTTOM_WIDTH
    architecture = json.loads(str(read_entries(out)["architecture"]))
    assert architecture["bottom"] == {"n_features": 13, "width": 4, "activation": "relu"}
    assert architecture["layer_sizes"] == [4, 3, 3]
    plain = model.predict_scores(raw_test.X)
    assert np.array_equal(model.mlp.classes_from_scores(plain), prediction.class_ids)
    assert np.allclose(plain, prediction.scores, rtol=0, atol=1e-4)
    rounded = Fixed.encode(model.inputs(raw_test.X), plan.x_frac_bits).decode()
    assert np.allclose(model.mlp.predict_scores(rounded), prediction.scores, rtol=0, atol=1e-12)


def test_corrupted_bottom_model_arrays_are_one_line_errors(bottom_runs, tmp_path, capsys):
    """An edited bottom.W (sha256 mismatch), and — re-hashed, as a writer with a bug would —
    a NaN in it, a wrong shape, a wrong dtype, a missing bottom.b, or meta that denies the
    bottom model: each one line naming the file; prediction at the CLI exits 2 in one line."""
    straight = bottom_runs[0]

    def rewrite(change, rehash=True):
        copy = copy_checkpoint(straight, tmp_path, f"case{len(list(tmp_path.iterdir()))}")
        path = copy / "data_party.npz"
        entries = read_entries(path)
        change(entries)
        if rehash:
            entries["sha256"] = np.array(checkpoint._content_digest(entries))
        np.savez(path, **entries)
        return copy, path

    def fails(change, needle, rehash=True):
        _, path = rewrite(change, rehash)
        with pytest.raises(ValueError) as caught:
            checkpoint.DataPartyState.load(path, allow_insecure=True)
        message = str(caught.value)
        assert needle in message and "data_party.npz" in message and "\n" not in message, message

    def set_value(value, name="bottom.W"):
        def change(entries):
            array = entries[name].copy()
            array.flat[0] = value
            entries[name] = array
        return change

    def deny_bottom(entries):
        meta = json.loads(str(entries["meta"]))
        meta["bottom_model"] = None
        entries["meta"] = np.array(json.dumps(meta))

    fails(set_value(0.5), "does not match the sha256", rehash=False)
    fails(set_value(np.nan), "'bottom.W' holds a value that is not finite")
    fails(set_value(np.inf, "bottom.b"), "'bottom.b' holds a value that is not finite")
    fails(lambda e: e.update({"bottom.W": e["bottom.W"][:, :3]}),
          "'bottom.W' should be float64 of shape (13, 4)")
    fails(lambda e: e.update({"bottom.W": e["bottom.W"].astype(np.float32)}),
          "'bottom.W' should be float64")
    fails(lambda e: e.pop("bottom.b"), "missing ['bottom.b']")
    fails(deny_bottom, "unexpected ['bottom.W', 'bottom.b']")
    copy, _ = rewrite(set_value(np.nan))
    features = write_csv(tmp_path / "new.csv", ["id", *bottom_runs[5].feature_names],
                         [[0, *bottom_runs[5].X[0]]])
    line = one_line_error(capsys, ["predict", "--checkpoint-dir", str(copy), "--features",
                                   str(features), "--id-column", "id", "--insecure-small-key"])
    assert "bottom.W" in line and "not finite" in line


def test_resume_with_another_bottom_model_is_refused_in_one_line(bottom_runs):
    """A checkpoint with a bottom model resumed without one, or with another width, and a
    checkpoint without one resumed with one: one clear line each, before any encryption."""
    straight, _, _, _, train_set, _ = bottom_runs
    for bottom, needle in ((None, "asks for none"), (5, "asks for 5 wide (relu)"),
                           ((4, "tanh"), "asks for 4 wide (tanh)")):
        with pytest.raises(ValueError, match=re.escape(needle)) as caught:
            acml.train(train_set, None, config(bottom=bottom, momentum=0.9, epochs=4),
                       checkpoint_dir=straight, resume=True)
        assert "bottom model 4 wide (relu)" in str(caught.value)


def test_resume_without_a_bottom_model_refuses_one_in_one_line(trained):
    directory, _, train_set, *_ = trained
    with pytest.raises(ValueError, match=r"bottom model none, this run asks for 4 wide \(relu\)"):
        acml.train(train_set, None, config(bottom=4, momentum=0.9, epochs=3),
                   checkpoint_dir=directory, resume=True)


def test_exported_bottom_model_is_checked_when_loaded(bottom_runs, tmp_path):
    """load_model refuses an export whose bottom arrays are missing or misshapen, in one line."""
    out = tmp_path / "model.npz"
    acml.export_model(bottom_runs[0], out, i_understand_this_reveals_the_weights=True)
    entries = read_entries(out)
    for change, needle in ((lambda e: e.pop("bottom.b"), "no array 'bottom.b'"),
                           (lambda e: e.update({"bottom.W": e["bottom.W"].T.copy()}),
                            "the architecture says float64 of (13, 4)")):
        broken = dict(entries)
        change(broken)
        np.savez(tmp_path / "broken.npz", **broken)
        with pytest.raises(ValueError, match=re.escape(needle)) as caught:
            acml.load_model(tmp_path / "broken.npz")
        assert "\n" not in str(caught.value)


def test_cli_trains_resumes_predicts_and_exports_with_a_bottom_model(tmp_path, capsys):
    """`train --bottom K --checkpoint-dir`, then `--resume`, `predict` and `export`, all exit 0;
    the prediction CSV is the API's, and the export holds the bottom layer."""
    directory = tmp_path / "run"
    common = ["--dataset", "wine", "--hidden", "3", "--bottom", "4", *CLI_SMALL_KEY,
              "--checkpoint-dir", str(directory)]
    assert acml.main(["train", *common, "--epochs", "1"]) == 0
    assert acml.main(["train", *common, "--epochs", "2", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    data_state, _ = run_directory.load_pair(directory, allow_insecure=True)
    assert data_state.epochs_completed == 2 and data_state.bottom.width == 4
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--hidden", "3",
                                   *CLI_SMALL_KEY, "--checkpoint-dir", str(directory),
                                   "--epochs", "3", "--resume"])
    assert "bottom model 4 wide (relu), this run asks for none" in line
    wine = data.load_builtin("wine")
    rows = [[f"r{i}", *map(repr, wine.X[i].tolist())] for i in range(0, len(wine.y), 20)]
    features = write_csv(tmp_path / "new.csv", ["id", *wine.feature_names], rows)
    out = tmp_path / "predictions.csv"
    assert acml.main(["predict", "--checkpoint-dir", str(directory), "--features",
                      str(features), "--id-column", "id", "--out", str(out),
                      "--insecure-small-key"]) == 0
    header, written = read_predictions(out)
    expected = acml.predict(directory, wine.X[::20], allow_insecure=True)
    assert header == ["id", "predicted_class", *(f"p_{name}" for name in wine.class_names)]
    assert [row[1] for row in written] == expected.class_names
    probabilities = probabilities_of(written)
    assert np.array_equal(probabilities, expected.scores)
    assert np.array_equal(probabilities[np.arange(len(written)), expected.class_ids],
                          expected.confidence)
    model_path = tmp_path / "model.npz"
    assert acml.main(["export", "--checkpoint-dir", str(directory), "--out", str(model_path),
                      acml.REVEAL_FLAG]) == 0
    assert "bottom.W, bottom.b, layers.0.W" in capsys.readouterr().err
    model = acml.load_model(model_path)
    assert np.array_equal(model.bottom.layer.W, data_state.bottom.layer.W)
