"""Parity under input perturbation: one process and two processes train on the very same noisy
rows (the noise seed derived from the data party's init seed), so their weights and scores are
bit-identical; prediction from each party's own checkpoint perturbs the rows the same way as
prediction from both. Loopback only, 512-bit keys through the explicit insecure flag."""

import shutil

import numpy as np
import pytest

import acml
from jobs import run_directory
from jobs.twin import joint_first_layer
from privacy.input_perturbation import InputPerturbation, perturb_rows
from conftest import PREDICTION_SEED, fix_prediction_seed
from test_parity import (assert_same_weights, config, in_process,  # noqa: F401
                         keypair, over_tcp, parties, predict_over_tcp)  # fixtures too

EPSILON = 4.0


@pytest.fixture(scope="module")
def dp_runs(keypair, parties, tmp_path_factory):
    cfg = config(dp_epsilon=EPSILON)
    reference_dir = tmp_path_factory.mktemp("dp_reference")
    reference = in_process(keypair, parties, cfg, checkpoint_dir=reference_dir)
    data_dir, label_dir = tmp_path_factory.mktemp("dp_data"), tmp_path_factory.mktemp("dp_label")
    data_party, label_party = over_tcp(
        keypair, parties, cfg,
        data_options=dict(dp_epsilon=EPSILON, checkpoint_dir=data_dir),
        label_options=dict(checkpoint_dir=label_dir))
    return dict(reference=reference, reference_dir=reference_dir, data_party=data_party,
                label_party=label_party, data_dir=data_dir, label_dir=label_dir)


def test_one_and_two_processes_train_on_the_same_noisy_rows_bit_for_bit(dp_runs):
    """Property: with dp_epsilon and the same init_seed, the two-process session perturbs its
    rows exactly as acml.train does (the same features, integer for integer), and so trains
    the very same weights, losses and test scores; the rows really are perturbed."""
    reference = dp_runs["reference"]
    ours = dp_runs["data_party"].features
    theirs = reference.data_party.features
    assert np.array_equal(ours.values, theirs.values)
    assert reference.metrics["input_perturbation"]["sigma"] > 1.0
    assert_same_weights(dp_runs["data_party"], dp_runs["label_party"], reference)


def test_without_perturbation_the_rows_differ(dp_runs, keypair, parties):
    """Property (the test above can fail): the same run without dp_epsilon holds other rows,
    so bit-identity above is not an accident of unperturbed rows."""
    plain = in_process(keypair, parties, config(epochs=1))
    assert not np.array_equal(plain.data_party.features.values,
                              dp_runs["reference"].data_party.features.values)


def test_two_process_prediction_perturbs_the_rows_as_one_process_does(dp_runs, parties,
                                                                      tmp_path, monkeypatch):
    """Property: predicting new rows from each party's own DP checkpoint, the label party's z
    is the z of the perturbed rows (the checkpoint's ε, δ and C; a fresh prediction seed, which
    the test fixes), not of the rows as they are; and its scores equal acml.predict's on both
    checkpoints with the same seed, bit for bit."""
    fix_prediction_seed(monkeypatch)
    feature_ids, X, _, _, _ = parties
    names = [f"x{j}" for j in range(X.shape[1])]
    new_ids, new_X = feature_ids[:12], X[:12]
    _, (label_session, _, prediction) = predict_over_tcp(
        dp_runs["data_dir"], dp_runs["label_dir"], new_ids, new_X, names, both=True)
    data_state, _ = run_directory.load_pair(dp_runs["reference_dir"],
                                                      allow_insecure=True)
    standardized = data_state.standardize(new_X)
    mechanism = InputPerturbation(EPSILON, 1e-5, clip=data_state.perturbation["clip"],
                                  seed=PREDICTION_SEED)
    noisy = perturb_rows(mechanism, standardized, data_state.plan)
    reference = dp_runs["reference"]
    first = joint_first_layer(reference.data_party, reference.label_party)
    bias = reference.label_party.model.layers[0].b  # the same weights, bit for bit (above)
    z_seen = label_session.party.preactivation
    assert np.max(np.abs(z_seen - (noisy @ first + bias))) < 1e-4
    assert np.max(np.abs(z_seen - (standardized @ first + bias))) > 1e-2
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(run_directory.party_path(dp_runs["data_dir"], "data"), both)
    shutil.copy(run_directory.party_path(dp_runs["label_dir"], "label"), both)
    expected = acml.predict(both, new_X, feature_names=names, allow_insecure=True)
    assert np.array_equal(prediction.scores, expected.scores)
