"""The data party's input perturbation at the surfaces: --dp-epsilon/--dp-delta on `train`,
`party data` and `predict` (one line naming the flag for a bad value, --dp-delta alone
refused, a run that says it perturbed), and the estimator's dp_epsilon/dp_delta (trains,
clones, perturbs the rows it predicts)."""

import json

import numpy as np
import pytest
from sklearn.base import clone

import acml
from conftest import one_line_error
from test_cli_inputs import TINY, party_argv
from test_estimator import SMALL, tiny
from privacy.input_perturbation import DEFAULT_DELTA

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")

BAD_VALUES = [
    ("--dp-epsilon", "0", "--dp-epsilon: must be a number > 0"),
    ("--dp-epsilon", "-1", "--dp-epsilon: must be a number > 0"),
    ("--dp-epsilon", "nan", "--dp-epsilon: must be a number > 0"),
    ("--dp-epsilon", "lots", "--dp-epsilon: must be a number > 0"),
    ("--dp-delta", "0", "--dp-delta: must be a finite number in (0, 1)"),
    ("--dp-delta", "1", "--dp-delta: must be a finite number in (0, 1)"),
]


@pytest.mark.parametrize("flag, value, expected", BAD_VALUES)
@pytest.mark.parametrize("command", ["train", "party data", "predict"])
def test_bad_dp_values_are_one_line_naming_the_flag(capsys, tmp_path, no_training, command,
                                                     flag, value, expected):
    """Property: an out-of-range --dp-epsilon or --dp-delta stops each command that takes it
    with exit 2 and one line naming the flag, before any key or training."""
    extra = ["--dp-epsilon", "1", flag, value] if flag == "--dp-delta" else [flag, value]
    if command == "train":
        argv = ["train", *TINY, *extra]
    elif command == "party data":
        argv = party_argv("data", tmp_path, *extra)
    else:
        argv = ["predict", "--checkpoint-dir", str(tmp_path), "--features", "f.csv",
                "--id-column", "id", *extra]
    line = one_line_error(capsys, argv)
    assert expected in line, line


@pytest.mark.parametrize("command", ["train", "party data"])
def test_dp_delta_without_dp_epsilon_is_refused(capsys, tmp_path, no_training, command):
    """Property: --dp-delta alone would switch nothing on; it is refused in one line naming
    both flags, not silently ignored."""
    argv = (["train", *TINY, "--dp-delta", "1e-6"] if command == "train"
            else party_argv("data", tmp_path, "--dp-delta", "1e-6"))
    line = one_line_error(capsys, argv)
    assert "--dp-delta 1e-06 needs --dp-epsilon" in line, line


def test_train_with_dp_epsilon_reports_the_perturbation(capsys, tmp_path):
    """Property: `train --dp-epsilon 2` perturbs the data party's rows — the report and its
    JSON say ε, the default δ, C and σ — and the twin still matches the encrypted run."""
    out = tmp_path / "report.json"
    from tools import cli
    assert cli.main(["train", *TINY, "--dp-epsilon", "2", "--init-seed", "1",
                     "--json", str(out)]) == 0
    assert "input rows         perturbed by the data party: (2, 1e-05)-DP" in \
        capsys.readouterr().out
    facts = json.loads(out.read_text())["input_perturbation"]
    assert facts["epsilon"] == 2 and facts["delta"] == DEFAULT_DELTA and facts["sigma"] > 1
    assert json.loads(out.read_text())["max_abs_weight_diff"] < 1e-4


def test_train_without_dp_epsilon_is_off():
    """Property: off by default — no --dp-epsilon, no perturbation in the Config."""
    from tools import cli
    args = cli.build_parser().parse_args(["train", *TINY])
    config = cli.config_from_args(args)
    assert config.dp_epsilon is None and config.dp_delta is None


def test_estimator_with_dp_epsilon_trains_clones_and_perturbs_its_predictions():
    """Property: dp_epsilon/dp_delta are estimator parameters (get_params, set_params, clone),
    a fit with them trains on perturbed rows (its features are not X), and predicting the same
    rows twice draws fresh noise (the scores move) while the estimator without it repeats."""
    X, y = tiny()
    model = acml.VerticalMLPClassifier(**SMALL, dp_epsilon=8.0, dp_delta=1e-6)
    params = model.get_params()
    assert params["dp_epsilon"] == 8.0 and params["dp_delta"] == 1e-6
    copy = clone(model).set_params(dp_epsilon=4.0)
    assert copy.dp_epsilon == 4.0 and model.dp_epsilon == 8.0 and copy.dp_delta == 1e-6
    model.fit(X, y)
    held = model.result_.data_party.features.decode()
    assert np.max(np.abs(held - X)) > 1.0
    assert model.metrics_["input_perturbation"]["delta"] == 1e-6
    first, second = model.predict_scores(X[:8]), model.predict_scores(X[:8])
    assert not np.array_equal(first, second)
    plain = acml.VerticalMLPClassifier(**SMALL).fit(X, y)
    assert np.array_equal(plain.predict_scores(X[:8]), plain.predict_scores(X[:8]))


def test_estimator_refuses_a_bad_budget_in_one_line():
    """Property: a bad dp_epsilon or a dp_delta alone is refused at fit, naming it."""
    X, y = tiny()
    for params, message in (({"dp_epsilon": 0}, "^dp_epsilon: must be > 0"),
                            ({"dp_delta": 1e-5}, "^dp_delta 1e-05 needs dp_epsilon")):
        with pytest.raises(ValueError, match=message) as error:
            acml.VerticalMLPClassifier(**SMALL, **params).fit(X, y)
        assert "\n" not in str(error.value)
