"""The exactness gap max |W − W_plain| (fixed point vs float64), as the README documents it:
acml.fixed_point_gap measures the encrypted run's own gap, more fractional bits shrink it, and
on a fixed dataset it grows sublinearly with the number of steps."""

import numpy as np
import pytest

import acml
from jobs import data
from plan import FixedPointPlan

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")
OLD = FixedPointPlan(x_frac_bits=16, delta_frac_bits=24)  # the defaults
FINE = FixedPointPlan(x_frac_bits=24, delta_frac_bits=32)  # 8 more bits each (README)


def synthetic(rows=400, columns=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, columns))
    y = (X @ rng.standard_normal(columns) + 0.5 * rng.standard_normal(rows) > 0).astype(np.int64)
    return X, y


def gaps(plan, epochs=4, **changes):
    X, y = synthetic()
    cfg = acml.Config(hidden=(8,), epochs=epochs, batch_size=32, plan=plan, seed=0, **changes)
    return [gap for _, _, gap in acml.fixed_point_gap(X, y, cfg, n_classes=2)]


def test_the_measured_gap_is_the_encrypted_runs_gap():
    X, y = synthetic(96, 4)
    dataset = data.Dataset(X, y, np.arange(len(y)), [f"f{j}" for j in range(4)], ["0", "1"])
    cfg = acml.Config(hidden=(3,), epochs=2, batch_size=32, key_bits=512, allow_insecure=True,
                      seed=5, init_seed=5, allow_insecure_sigma=True, plan=OLD)
    encrypted = acml.train(dataset, None, cfg).metrics["max_abs_weight_diff"]
    *_, (_, _, measured) = acml.fixed_point_gap(X, y, cfg, n_classes=2)
    assert measured == pytest.approx(encrypted, rel=1e-6)


def test_more_fractional_bits_shrink_the_gap():
    assert FixedPointPlan() == OLD  # the README's table names these as the defaults
    old, new = gaps(OLD)[-1], gaps(FINE)[-1]
    assert new < old / 30  # measured: about 1/200 (README, "The exactness gap")


def test_the_gap_grows_sublinearly_with_steps():
    per_epoch = gaps(OLD, epochs=8)
    assert per_epoch[-1] > per_epoch[0]  # it grows ...
    assert per_epoch[-1] < 8 * per_epoch[0] / 2  # ... but far slower than the step count
