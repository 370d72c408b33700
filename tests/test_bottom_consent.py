"""Step 4b sends the data party δ·Wᵀ, which reveals the labels (leak L4): a bottom model at the
data party needs the label party's explicit consent (LabelParty(allow_bottom=True)), asked at
step 0 before anything else crosses, recorded in its checkpoint, and not needed to predict."""

import dataclasses
import warnings

import numpy as np
import pytest
from conftest import insecure_keypair, small_split

import acml
import protocol
from channel import Channel
from jobs import run_directory
from parties import DataParty, LabelParty

KEY_BITS = 256
WIDTH = 3


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def two_parties(keypair, *, bottom=WIDTH, **label_options):
    train_set, _ = small_split()
    n_inputs = train_set.X.shape[1] if bottom is None else bottom
    data_party = DataParty(train_set.X, keypair=keypair, init_seed=0, bottom=bottom)
    label_party = LabelParty(train_set.y, (n_inputs, 2, 1), batch_size=8, epochs=1, seed=0,
                             allow_insecure=True, **label_options)
    return data_party, label_party, Channel(data_party=data_party, label_party=label_party)


def test_a_bottom_model_without_the_label_partys_consent_is_refused_at_step_0_in_one_line(
        keypair):
    """A data party declaring bottom: true meets a label party on default options: setup stops
    at the shapes message with one line naming the option, and nothing after it crosses (no
    training plan, no weight share, no [[X]])."""
    _, _, channel = two_parties(keypair)
    with pytest.raises(ValueError) as refused:
        protocol.setup(channel)
    message = str(refused.value)
    assert "\n" not in message and "allow_bottom=True" in message and "--allow-bottom" in message
    assert "L4" in message
    assert [m.name for m in channel.messages] in (["public key"], ["public key", "shapes"])


def test_a_bottom_model_with_consent_trains_and_sends_the_input_gradient(keypair):
    """With allow_bottom=True the same pair trains, and step 4b runs."""
    data_party, label_party, channel = two_parties(keypair, allow_bottom=True)
    public = protocol.setup(channel)
    protocol.train_batch(channel, public, np.arange(8))
    assert data_party.input_gradients_received
    assert any(m.step == "4b" for m in channel.messages)


def test_no_bottom_model_needs_no_consent(keypair):
    """The default (no bottom model, no δ·Wᵀ) trains with the label party on default options."""
    _, label_party, channel = two_parties(keypair, bottom=None)
    public = protocol.setup(channel)
    protocol.train_batch(channel, public, np.arange(8))
    assert not label_party.allow_bottom


@pytest.fixture(scope="module")
def bottom_checkpoint(keypair, tmp_path_factory):
    """acml.train with Config(bottom=3): the one-process run gives consent itself (both
    parties are the user's own), and the label party's checkpoint records it."""
    train_set, test_set = small_split()
    directory = tmp_path_factory.mktemp("bottom_consent")
    config = acml.Config(hidden=(2,), epochs=1, batch_size=8, key_bits=KEY_BITS,
                         allow_insecure=True, init_seed=0, bottom=WIDTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = acml.train(train_set, test_set, config, keypair=keypair,
                            checkpoint_dir=directory)
    return directory, result, test_set


def test_the_one_process_run_with_a_bottom_model_consents_and_records_it(bottom_checkpoint):
    directory, result, _ = bottom_checkpoint
    assert result.label_party.allow_bottom
    assert any(m.step == "4b" for m in result.channel.messages)
    _, label_state = run_directory.load_pair(directory, allow_insecure=True)
    assert label_state.allow_bottom is True
    assert label_state.restore().allow_bottom  # a resume goes on without asking again


def test_a_checkpoint_without_consent_refuses_to_resume_with_a_bottom_model_unless_given(
        bottom_checkpoint):
    """A label checkpoint that records no consent (a file from before it was recorded) is
    refused at step 0 when the data party resumes with its bottom model; the flag given now
    (restore(allow_bottom=True), `party label --resume --allow-bottom`) consents."""
    directory, result, _ = bottom_checkpoint
    data_state, label_state = run_directory.load_pair(directory, allow_insecure=True)
    unconsented = dataclasses.replace(label_state, allow_bottom=False)
    train_set, _ = small_split()

    def resume(label_party):
        data_party = data_state.restore(train_set.X)
        channel = Channel(data_party=data_party, label_party=label_party)
        return protocol.setup(channel, start="resume")

    with pytest.raises(ValueError, match="--allow-bottom"):
        resume(unconsented.restore(train_set.y, epochs=2))
    assert resume(unconsented.restore(train_set.y, epochs=2, allow_bottom=True)).bottom


def test_prediction_with_a_bottom_model_needs_no_consent(bottom_checkpoint):
    """Prediction sends no input gradient: a label party restored without consent still
    predicts for a data party with a bottom model, with the very scores of the trained run."""
    directory, result, test_set = bottom_checkpoint
    data_state, label_state = run_directory.load_pair(directory, allow_insecure=True)
    label_party = dataclasses.replace(label_state, allow_bottom=False).restore()
    assert not label_party.allow_bottom
    data_party = data_state.restore(test_set.X, same_features=False)
    data_party.set_rows_to_predict(test_set.X)
    channel = Channel(data_party=data_party, label_party=label_party)
    protocol.predict(channel, protocol.setup(channel, start="predict"))
    assert not any(m.step == "4b" for m in channel.messages)
    assert len(label_party.predictions) == len(test_set.y)


def test_the_estimator_with_a_bottom_model_consents_for_its_user(keypair):
    """VerticalMLPClassifier(bottom=3): both parties are the user's own in one process, so fit
    trains through step 4b without being refused."""
    from tools.estimator import VerticalMLPClassifier
    train_set, _ = small_split()
    model = VerticalMLPClassifier(hidden=(2,), epochs=1, batch_size=8, key_bits=KEY_BITS,
                                  bottom=WIDTH, init_seed=0, allow_insecure=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train_set.X, train_set.y)
    assert model.result_.label_party.allow_bottom
    assert any(m.step == "4b" for m in model.result_.channel.messages)
