"""Input perturbation wired into the one-process run (jobs/simulation.py) and its checkpoints:
the data party trains on the noisy rows, the twin on the very same rows (so the exactness
comparison holds), predicted rows are perturbed, and the checkpoint keeps the data party's
budget and seed (an older checkpoint without them loads as "off")."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import insecure_keypair

import acml
from channel import DATA
from jobs import checkpoint, data, run_directory
from jobs.export import export_model, load_model
from jobs.twin import joint_first_layer
from conftest import PREDICTION_SEED, fix_prediction_seed
from privacy.input_perturbation import InputPerturbation, derived_seed, perturb_rows

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")
KEY_BITS = 512
EPSILON = 8.0


def config(**overrides):
    base = dict(hidden=(3,), activation="tanh", epochs=2, batch_size=16, lr=0.1, seed=0,
                key_bits=KEY_BITS, allow_insecure=True, init_seed=0, dp_epsilon=EPSILON)
    base.update(overrides)
    return acml.Config(**base)


@pytest.fixture(scope="module")
def split():
    dataset = data.load_builtin("breast_cancer")
    dataset = data.take(dataset, np.arange(64), "")
    return acml.prepare(dataset, test_fraction=0.25, seed=0, return_standardizer=True)


@pytest.fixture(scope="module")
def run(split, tmp_path_factory):
    train_set, test_set, scaler = split
    directory = tmp_path_factory.mktemp("dp_run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = acml.train(train_set, test_set, config(), keypair=insecure_keypair(KEY_BITS),
                            standardizer=scaler, checkpoint_dir=directory)
    return result, directory


def expected_training_rows(train_set, test_set, plan, init_seed=0):
    """The rows the data party must train and test on: call 0 and call 1 of the training
    seed derived from init_seed, as the docstring of input_perturbation promises."""
    mechanism = InputPerturbation(EPSILON, 1e-5, seed=derived_seed(init_seed, "train"))
    return (perturb_rows(mechanism, train_set.X, plan),
            perturb_rows(mechanism, test_set.X, plan))


def test_the_data_party_and_the_twin_train_on_the_same_noisy_rows(split, run):
    """Property: with dp_epsilon the data party's features are the perturbed rows (not the
    standardised ones), the twin trains on those very rows, and the encrypted run still equals
    the twin within the fixed-point bound (max |W − W_plain| < 1e-5, tanh)."""
    train_set, test_set, _ = split
    result, _ = run
    noisy_train, _ = expected_training_rows(train_set, test_set, result.data_party.plan)
    held = result.data_party.features.decode()
    assert np.max(np.abs(held - noisy_train)) <= 2.0 ** -result.data_party.plan.x_frac_bits
    assert np.max(np.abs(held - train_set.X)) > 1.0  # σ ≈ 6.6: the rows really moved
    assert result.metrics["max_abs_weight_diff"] < 1e-5
    facts = result.metrics["input_perturbation"]
    assert facts["epsilon"] == EPSILON and facts["delta"] == 1e-5
    assert facts["clip"] == pytest.approx(np.sqrt(train_set.X.shape[1]))
    assert "input rows         perturbed by the data party" in result.summary()


def test_the_test_rows_the_run_predicts_are_perturbed(split, run):
    """Property: the label party's z for the test rows is the z of the perturbed test rows
    (call 1 of the training seed), not of the standardised rows the data party holds."""
    train_set, test_set, _ = split
    result, _ = run
    _, noisy_test = expected_training_rows(train_set, test_set, result.data_party.plan)
    label = result.label_party
    first = joint_first_layer(result.data_party, label)
    bias = label.model.layers[0].b
    z_seen = label.preactivation
    assert np.max(np.abs(z_seen - (noisy_test @ first + bias))) < 1e-4
    assert np.max(np.abs(z_seen - (test_set.X @ first + bias))) > 1e-2


def test_checkpoint_keeps_the_budget_and_the_seed(run):
    """Property: the data party's checkpoint round-trips its input perturbation — ε, δ, C and
    the training seed (the seed derived from init_seed 0) — and the label party's file holds
    none of it."""
    result, directory = run
    data_state, label_state = run_directory.load_pair(directory, allow_insecure=True)
    assert data_state.perturbation == {"epsilon": EPSILON, "delta": 1e-5,
                                       "clip": pytest.approx(np.sqrt(30))}
    assert data_state.perturbation_seed == derived_seed(0, "train")
    assert not hasattr(label_state, "perturbation")
    with np.load(run_directory.party_path(directory, "label"), allow_pickle=False) as archive:
        assert "perturbation" not in str(archive["meta"][()])


def rewrite_meta(path, change):
    """The checkpoint at ``path`` with its JSON meta changed by ``change(meta)``, its digest
    recomputed (as an older version of the code, or a careless editor, would have written it)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["meta"][()]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    arrays["sha256"] = np.array(checkpoint._content_digest(arrays))
    np.savez(path, **arrays)


def data_file(directory):
    return Path(run_directory.party_path(directory, DATA))


def test_an_old_checkpoint_without_perturbation_loads_as_off(run, tmp_path):
    """Property: a data party's checkpoint written before input perturbation existed (no
    input_perturbation entries) loads, as "off"."""
    _, directory = run
    path = tmp_path / "old.npz"
    path.write_bytes(data_file(directory).read_bytes())

    def drop(meta):
        meta.pop("input_perturbation")
        meta.pop("input_perturbation_seed")
    rewrite_meta(path, drop)
    state = checkpoint.DataPartyState.load(path, allow_insecure=True)
    assert state.perturbation is None and state.perturbation_seed is None
    assert state.input_perturbation(purpose="train") is None


@pytest.mark.parametrize("change, message", [
    (lambda meta: meta["input_perturbation"].update(epsilon=-1.0), "epsilon -1.0"),
    (lambda meta: meta["input_perturbation"].update(delta=1.5), "delta 1.5"),
    (lambda meta: meta["input_perturbation"].update(clip="big"), "clip 'big'"),
    (lambda meta: meta.update(input_perturbation_seed=None), "needs its seed"),
    (lambda meta: meta.update(input_perturbation=None), "seed without its settings"),
])
def test_a_corrupted_perturbation_entry_is_one_line(run, tmp_path, change, message):
    """Property: a checkpoint whose input perturbation entries are out of range or half
    missing is refused with one line naming the entry."""
    _, directory = run
    path = tmp_path / "bad.npz"
    path.write_bytes(data_file(directory).read_bytes())
    rewrite_meta(path, change)
    with pytest.raises(ValueError, match=message) as error:
        checkpoint.DataPartyState.load(path, allow_insecure=True)
    assert "\n" not in str(error.value)




def test_predict_from_checkpoint_perturbs_the_rows_by_default(split, run, monkeypatch):
    """Property: acml.predict from a DP checkpoint scores the rows perturbed with the
    checkpoint's budget (with a fresh prediction seed, fixed here by the test), not the rows as
    they are; ``dp_epsilon=inf`` asks for them unperturbed."""
    fix_prediction_seed(monkeypatch)
    _, test_set, scaler = split
    result, directory = run
    raw = scaler.mean + test_set.X * scaler.std
    plain = load_model(export_path(directory))
    data_state, _ = run_directory.load_pair(directory, allow_insecure=True)
    mechanism = InputPerturbation(EPSILON, 1e-5, clip=np.sqrt(30),
                                  seed=PREDICTION_SEED)
    noisy = perturb_rows(mechanism, data_state.standardize(raw), data_state.plan)
    perturbed = acml.predict(directory, raw, allow_insecure=True)
    assert np.max(np.abs(perturbed.scores - plain.mlp.predict_scores(noisy))) < 1e-4
    assert np.max(np.abs(perturbed.scores - plain.predict_scores(raw))) > 1e-3
    as_they_are = acml.predict(directory, raw, allow_insecure=True, dp_epsilon=float("inf"))
    assert np.max(np.abs(as_they_are.scores - plain.predict_scores(raw))) < 1e-4


def export_path(directory):
    out = directory.parent / "model.npz"
    if not out.exists():
        export_model(directory, out, i_understand_this_reveals_the_weights=True)
    return out


def test_predict_with_dp_on_a_run_trained_without_it(split, tmp_path):
    """Property: predict --dp-epsilon on a run trained without perturbation perturbs only the
    rows to predict (their scores move), and a bad budget there is one line naming the flag."""
    train_set, test_set, scaler = split
    directory = tmp_path / "plain_run"
    acml.train(train_set, None, config(dp_epsilon=None, epochs=1),
               keypair=insecure_keypair(KEY_BITS), standardizer=scaler, checkpoint_dir=directory)
    raw = scaler.mean + test_set.X * scaler.std
    plain = acml.predict(directory, raw, allow_insecure=True)
    noisy = acml.predict(directory, raw, allow_insecure=True, dp_epsilon=1.0)
    assert np.max(np.abs(plain.scores - noisy.scores)) > 1e-3
    with pytest.raises(ValueError, match="^--dp-delta: must be in") as error:
        acml.predict(directory, raw, allow_insecure=True, dp_epsilon=1.0, dp_delta=2.0)
    assert "\n" not in str(error.value)


def test_resume_perturbs_the_same_rows_and_refuses_another_budget(split, tmp_path):
    """Property: a run resumed from its checkpoint, with no init_seed (a secret noise seed),
    perturbs the very same rows again — restore() accepts them only if the features' sha256 is
    the checkpoint's — and the twin, rebuilt from the start on those rows, still equals the two
    parties; resuming with another ε is refused in one line."""
    train_set, _, scaler = split
    first = tmp_path / "first"
    acml.train(train_set, None, config(init_seed=None, epochs=1),
               keypair=insecure_keypair(KEY_BITS), standardizer=scaler, checkpoint_dir=first)
    with pytest.raises(ValueError, match="input perturbation ε = 8, δ = 1e-05, this run asks "
                                         "for ε = 4") as error:
        acml.train(train_set, None, config(init_seed=None, dp_epsilon=4.0),
                   standardizer=scaler, checkpoint_dir=first, resume=True)
    assert "\n" not in str(error.value)
    resumed = acml.train(train_set, None, config(init_seed=None), standardizer=scaler,
                         checkpoint_dir=first, resume=True)
    assert resumed.label_party.epochs_completed == 2
    assert resumed.metrics["max_abs_weight_diff"] < 1e-5


def test_config_round_trips_the_dp_settings():
    """Property: Config carries dp_epsilon and dp_delta (off by default), and a bad value is
    refused by the run in one line naming the setting."""
    assert acml.Config().dp_epsilon is None and acml.Config().dp_delta is None
    cfg = acml.Config(dp_epsilon=2.0, dp_delta=1e-6)
    assert (cfg.dp_epsilon, cfg.dp_delta) == (2.0, 1e-6)
    assert acml.Config(**{**cfg.__dict__}) == cfg


@pytest.mark.parametrize("epsilon, delta, message", [
    (0.0, None, "^Config.dp_epsilon: must be > 0"),
    (1.0, 1.0, "^Config.dp_delta: must be in"),
    (None, 1e-5, "^Config.dp_delta 1e-05 needs Config.dp_epsilon"),
])
def test_bad_dp_config_is_one_line_naming_the_setting(split, epsilon, delta, message):
    """Property: a bad budget in Config stops the run before any key is made, naming it."""
    train_set, _, _ = split
    with pytest.raises(ValueError, match=message) as error:
        acml.train(train_set, None, config(dp_epsilon=epsilon, dp_delta=delta),
                   keypair=insecure_keypair(KEY_BITS))
    assert "\n" not in str(error.value)
