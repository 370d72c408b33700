"""Resuming over TCP: each party saves and loads only its own checkpoint, in its own directory,
and a run interrupted after an epoch goes on to the very weights of an uninterrupted one.

Loopback only, small keys through the explicit insecure flag, every wait bounded.
"""

import shutil

import numpy as np
import pytest
from conftest import insecure_keypair

import acml
from jobs import checkpoint
from network import transport
from network import wire
import test_transport
from test_transport import KEY_BITS, TIMEOUT, two_party_data

EPOCHS = 3


def config(epochs):
    return acml.Config(hidden=(3,), activation="relu", epochs=epochs, batch_size=16, lr=0.1,
                       momentum=0.5, key_bits=KEY_BITS, allow_insecure=True, init_seed=0)


def run_pair(feature_ids, X, label_ids, y, class_names, cfg, *, data_options, label_options):
    """Both parties in two threads over a loopback socket; errors are returned, not raised."""
    return test_transport.run_pair(None, feature_ids, X, label_ids, y, len(class_names), cfg,
                                   data_options=dict(allow_insecure=True, **data_options),
                                   label_options=dict(class_names=class_names, **label_options))


def batches_per_epoch(session):
    return -(-session.n_train // session.public.training.batch_size)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """3 epochs straight; 2 epochs saved then resumed for a third (each party in its own
    directory); a 1-epoch run under the same key, and a copy of the label file after epoch 2."""
    keypair = insecure_keypair(KEY_BITS)
    parties = two_party_data("breast_cancer")
    fresh = dict(keypair=keypair, init_seed=0)
    straight = run_pair(*parties, config(EPOCHS), data_options=fresh, label_options={})
    data_dir, label_dir = tmp_path_factory.mktemp("data_dir"), tmp_path_factory.mktemp("label")
    first = run_pair(*parties, config(2), data_options=dict(fresh, checkpoint_dir=data_dir),
                     label_options=dict(checkpoint_dir=label_dir))
    label_after_two = tmp_path_factory.mktemp("label_after_two")
    shutil.copy(label_dir / "label_party.npz", label_after_two / "label_party.npz")
    resumed = run_pair(*parties, config(EPOCHS),
                       data_options=dict(checkpoint_dir=data_dir, resume=True),
                       label_options=dict(checkpoint_dir=label_dir, resume=True))
    data_after_one = tmp_path_factory.mktemp("data_after_one")
    run_pair(*parties, config(1), data_options=dict(fresh, checkpoint_dir=data_after_one),
             label_options=dict(checkpoint_dir=tmp_path_factory.mktemp("unused")))
    for out in (straight, first, resumed):
        assert "data_error" not in out and "label_error" not in out, out
    return dict(parties=parties, straight=straight, first=first, resumed=resumed,
                data_dir=data_dir, label_dir=label_dir, data_after_one=data_after_one,
                label_after_two=label_after_two)


def test_resumed_over_tcp_equals_an_uninterrupted_run_bit_for_bit(runs):
    """2 epochs over a socket, saved, then resumed over a socket for a third == 3 epochs straight:
    W_B + ε_acc integer for integer, every layer of the label party, the third epoch's losses,
    the test predictions, and each party's final checkpoint."""
    straight, resumed = runs["straight"], runs["resumed"]
    joint = lambda out: (out["label"].party.weight_share  # noqa: E731
                         + out["data"].party.noise_acc)
    assert joint(resumed).scale == joint(straight).scale
    assert np.array_equal(joint(resumed).values, joint(straight).values)
    for mine, theirs in zip(resumed["label"].party.model.layers,
                            straight["label"].party.model.layers):
        assert np.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert np.array_equal(mine.W, theirs.W)
    n_batches = batches_per_epoch(straight["label"])
    assert len(resumed["label"].party.losses) == n_batches
    assert resumed["label"].party.losses == straight["label"].party.losses[-n_batches:]
    assert runs["first"]["label"].party.losses == straight["label"].party.losses[:2 * n_batches]
    assert np.array_equal(resumed["label"].party.predictions, straight["label"].party.predictions)
    assert np.array_equal(resumed["label"].party.classes(), straight["label"].party.classes())
    assert resumed["label"].resumed_after_epoch == resumed["data"].resumed_after_epoch == 2
    assert resumed["label"].metrics()["resumed_after_epoch"] == 2
    step0 = [m.name for m in resumed["label"].channel.messages if m.step == "0"]
    # resumed: no new weight split, and the epochs completed travel in the training plan
    assert step0 == ["public key", "shapes", "training plan", "packing layout", "[[X]]"]
    assert resumed["label"].public.training.epochs_completed == 2


def test_each_party_saves_only_its_own_file_in_its_own_directory(runs):
    """The data party's directory holds only its own files, data_party.npz (epoch 3) and
    data_party.epoch-2.npz (the epoch before, kept by run_directory.save_epoch), the label party's
    only label_party.npz and label_party.epoch-2.npz; the main files together are a consistent
    pair after epoch 3, under the data party's key."""
    data_dir, label_dir = runs["data_dir"], runs["label_dir"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["data_party.epoch-2.npz",
                                                          "data_party.npz"]
    assert sorted(p.name for p in label_dir.iterdir()) == ["label_party.epoch-2.npz",
                                                           "label_party.npz"]
    data_state = checkpoint.DataPartyState.load(data_dir / "data_party.npz", allow_insecure=True)
    label_state = checkpoint.LabelPartyState.load(label_dir / "label_party.npz",
                                                  allow_insecure=True)
    checkpoint.check_checkpoint_pair(data_state, label_state)
    assert data_state.epochs_completed == label_state.epochs_completed == EPOCHS
    resumed = runs["resumed"]
    assert np.array_equal(data_state.noise_acc.values, resumed["data"].party.noise_acc.values)
    assert np.array_equal(label_state.weight_share.values,
                          resumed["label"].party.weight_share.values)


def test_checkpoints_of_different_epochs_are_refused_in_one_line_on_both_sides(runs):
    """The label party's file after epoch 2 against the data party's after epoch 1 (same key):
    no epoch both saved, so in step "resume" (transport.agree_epoch) the label party, which
    sees the data party's epochs, refuses naming both, and the data party, told there is none,
    refuses naming its own: one line each, before step 0."""
    out = run_pair(*runs["parties"], config(EPOCHS),
                   data_options=dict(checkpoint_dir=runs["data_after_one"], resume=True),
                   label_options=dict(checkpoint_dir=runs["label_after_two"], resume=True))
    assert "data" not in out and "label" not in out
    data_line, label_line = str(out["data_error"]), str(out["label_error"])
    assert "\n" not in data_line and "\n" not in label_line
    assert label_line.startswith("nothing to resume: no epoch both parties saved")
    assert "this party has [2], the data party [0, 1]" in label_line
    assert data_line.startswith("nothing to resume: no epoch both parties saved")
    assert "this party has [0, 1], the label party none of them" in data_line
    # Nothing was trained, so nothing was saved: both files are still the ones they were.
    assert checkpoint.DataPartyState.load(runs["data_after_one"] / "data_party.npz",
                                          allow_insecure=True).epochs_completed == 1
    assert checkpoint.LabelPartyState.load(runs["label_after_two"] / "label_party.npz",
                                           allow_insecure=True).epochs_completed == 2


class RecordedConnection:
    """Stands in for a Connection that no message reaches: it records what this side would tell
    the peer before closing, and being closed."""

    closed = False
    told = None

    def stop(self, reason):
        self.told = reason
        self.close()

    def close(self):
        self.closed = True


def test_resuming_without_a_file_or_training_over_one_is_refused(runs, tmp_path):
    """The data party resuming with no file of its own is one line before any message, and
    closes the connection (ending the peer's session); a new run into a directory that holds a
    resumable file refuses to overwrite it. (A label party with no file waits for the data
    party's epochs: in the first epoch's window the run starts again.)"""
    connection = RecordedConnection()
    with pytest.raises(ValueError, match="nothing to resume"):
        transport.run_data_party(connection, [], np.zeros((0, 1)), checkpoint_dir=tmp_path,
                                 resume=True)
    assert connection.closed and connection.told.startswith("nothing to resume")
    connection = RecordedConnection()
    with pytest.raises(ValueError, match="already exists"):
        transport.run_data_party(connection, [], np.zeros((0, 1)),
                                 checkpoint_dir=runs["data_dir"])
    assert connection.closed and "already exists" in connection.told


@pytest.mark.parametrize("without_file", ["label", "data"])
def test_a_refused_resume_is_told_to_the_other_side_which_says_why_it_stopped(runs, tmp_path,
                                                                              without_file):
    """Resuming where this party has no file (and the other is past its first epoch, so this
    is no crash window): it refuses in one line, and the other side says why too — "the data
    party stopped: nothing to resume: …", or, where the data party decides from both parties'
    epochs, its own "nothing to resume" line naming them — never "closed the connection"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    # a data party past its first epoch: with no label file, that is no crash window
    data_dir = empty if without_file == "data" else runs["data_dir"]
    label_dir = empty if without_file == "label" else runs["label_after_two"]
    out = run_pair(*runs["parties"], config(EPOCHS),
                   data_options=dict(checkpoint_dir=data_dir, resume=True),
                   label_options=dict(checkpoint_dir=label_dir, resume=True))
    told = "data" if without_file == "label" else "label"
    refusal, heard = str(out[f"{without_file}_error"]), out[f"{told}_error"]
    assert refusal.startswith("nothing to resume") and "\n" not in refusal
    if isinstance(heard, wire.PeerStopped):
        assert str(heard) == f"the {without_file} party stopped: " + transport.without_paths(
            refusal)  # its own paths left out
    else:  # the data party decides from both lists of epochs, and says why in its own words
        assert str(heard).startswith("nothing to resume") and "the label party none" in str(heard)


def test_cli_parties_resume_from_their_own_directories_to_the_uninterrupted_weights(runs,
                                                                                    tmp_path):
    """`acml.py party data|label --checkpoint-dir DIR`, 2 epochs in two processes, then both
    again with `--resume` to 3: the label party's --json report (the third epoch's losses, the
    fingerprint of its layers) equals the uninterrupted 3-epoch run's; each directory holds only
    only its own party's files (its latest epoch and the one before)."""
    import json
    import subprocess

    from test_transport import (CLI_MODEL, ROOT, environment, label_args, start_data_party,
                                write_csvs)

    feature_ids, X, label_ids, y, _ = runs["parties"]
    features, labels, token = write_csvs(tmp_path, feature_ids, X, label_ids, y)
    data_dir, label_dir, report = tmp_path / "data_ckpt", tmp_path / "label_ckpt", tmp_path / "r"
    for epochs, extra, data_extra in ((2, (), ("--init-seed", "0")), (3, ("--resume",), ())):
        data_process, port = start_data_party(features, token, "--checkpoint-dir", str(data_dir),
                                              *extra, *data_extra)
        try:
            label = subprocess.run(
                label_args(labels, token, port, *CLI_MODEL, "--momentum", "0.5",
                           "--epochs", str(epochs), "--checkpoint-dir", str(label_dir),
                           "--json", str(report), *extra),
                cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
            assert label.returncode == 0, label.stderr
            data_out, data_err = data_process.communicate(timeout=TIMEOUT)
        finally:
            data_process.kill()
        assert data_process.returncode == 0, data_err
    assert "resumed            from the checkpoints after epoch 2" in data_out
    assert "after epoch 2" in label.stdout
    straight = runs["straight"]["label"]
    metrics = json.loads(report.read_text())
    assert metrics["resumed_after_epoch"] == 2 and metrics["training"]["epochs"] == 3
    assert metrics["batch_losses"] == straight.party.losses[-batches_per_epoch(straight):]
    assert metrics["label_model_sha256"] == transport.label_model_fingerprint(
        straight.party.model)
    assert sorted(p.name for p in data_dir.iterdir()) == ["data_party.epoch-2.npz",
                                                          "data_party.npz"]
    assert sorted(p.name for p in label_dir.iterdir()) == ["label_party.epoch-2.npz",
                                                           "label_party.npz"]


@pytest.mark.parametrize("role", ["data", "label"])
def test_cli_party_resume_without_a_directory_is_one_line(capsys, role):
    """`party ... --resume` without --checkpoint-dir: exit 2, one line, before any connection."""
    argv = (["party", "data", "--listen", "127.0.0.1:0", "--features", "f.csv"]
            if role == "data" else
            ["party", "label", "--connect", "127.0.0.1:1", "--labels", "l.csv",
             "--label-column", "y"])
    assert acml.main([*argv, "--id-column", "id", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"acml.py party {role}: error: --resume needs --checkpoint-dir, the "
                   "directory to resume from"]
