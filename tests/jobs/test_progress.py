"""Progress and the time estimate: step 0's [[X]] reports its chunks, the estimate counts the
operations the run really performs and lands within a factor of 3 of the measured time."""

import time
import warnings

import numpy as np
import pytest

import acml
from jobs import data
from jobs import estimate
from jobs import simulation
import paillier
import parties
from speed.engine import ENCRYPT_CHUNK_ROWS, FastEngine
from channel import Channel
import protocol
from plan import FixedPointPlan

pytestmark = pytest.mark.filterwarnings("ignore::paillier.InsecureKeyWarning")


def dataset(rows, columns=4, seed=0, name="progress"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, columns))
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    return data.Dataset(X, y, np.arange(rows), [f"f{j}" for j in range(columns)], ["0", "1"],
                        name=name)


def config(**changes):
    settings = dict(hidden=(3,), epochs=1, batch_size=32, key_bits=512, allow_insecure=True,
                    init_seed=1, plan=FixedPointPlan(), allow_insecure_sigma=True)
    settings.update(changes)
    return acml.Config(**settings)


def test_step0_encryption_reports_progress_in_chunks():
    train_set = dataset(600)
    cfg = config()
    keypair = paillier.generate_keypair(512, allow_insecure=True)
    data_party = parties.DataParty(train_set.X, plan=cfg.plan, keypair=keypair, init_seed=1,
                                   engine=FastEngine())  # the engine that reports in chunks
    label_party = parties.LabelParty(train_set.y, cfg.layer_sizes(4, 2), lr=cfg.lr,
                                     batch_size=32, epochs=1, plan=cfg.plan, allow_insecure=True,
                                     packing=False)
    calls = []
    data_party.on_progress = lambda done, total: calls.append((done, total))
    channel = Channel(data_party=data_party, label_party=label_party, sigma=cfg.plan.sigma)
    public = protocol.setup(channel)
    chunk = ENCRYPT_CHUNK_ROWS
    assert calls == [(chunk, 600), (2 * chunk, 600), (600, 600)]
    # the chunks make the same [[X]]: it decrypts to the features, row for row
    decrypted = keypair[1].decrypt(label_party.encrypted_features).values
    assert public.packing is None and np.array_equal(decrypted, data_party.features.values)


def test_operation_counts_are_the_operations_performed():
    train_set, test_set = dataset(100), dataset(30, seed=1, name="test")
    result = acml.train(train_set, test_set, config(), estimate=True)
    counted = result.metrics["estimate"]["counts"]
    performed = {}
    for ops in result.channel.step_ops.values():
        for op, count in ops.items():
            performed[op] = performed.get(op, 0) + count
    assert counted["encrypt"] + counted["mask"] == performed["encrypt"]
    assert counted["decrypt"] == performed["decrypt"]
    assert counted["product_w"] + counted["product_delta"] == performed["mul_const"]


def test_estimate_is_within_a_factor_of_3_of_the_measured_time(monkeypatch):
    """The estimate (operations the plan implies × each operation's cost, timed now) is within
    3× of what the run then takes. Both are read on this process's CPU clock for the test, so
    other jobs on a loaded machine slow neither side of the ratio."""
    monkeypatch.setattr(time, "perf_counter", time.process_time)
    train_set, test_set = dataset(160, columns=6), dataset(40, columns=6, seed=1, name="test")
    result = acml.train(train_set, test_set, config(key_bits=1024, hidden=(4,)), estimate=True)
    estimate = result.metrics["estimate"]
    ratio = estimate["measured_seconds"] / estimate["seconds"]
    assert 1 / 3 < ratio < 3, estimate


def test_train_prints_the_estimate_before_the_run_when_asked(capsys):
    acml.train(dataset(64), dataset(16, seed=1, name="test"), config(), progress=True,
               estimate=True)
    err = capsys.readouterr().err
    assert err.index("estimated: about") < err.index("step 0: encrypting [[X]]")
    assert "measured now; an estimate" in err and "encrypted prediction" in err


def test_without_estimate_the_first_paillier_work_in_train_is_the_runs_own(capsys, monkeypatch):
    """The estimate is optional: unless asked, train times nothing (even with bars), so the
    first ciphertext one meets stepping through train is step 0's [[X]]."""
    def refuse(*args, **kwargs):
        raise AssertionError("the estimate ran without being asked")
    monkeypatch.setattr(estimate, "measure_costs", refuse)
    result = acml.train(dataset(64), dataset(16, seed=1, name="test"), config(), progress=True)
    assert "estimated: about" not in capsys.readouterr().err
    assert "estimate" not in result.metrics


def test_cli_train_prints_the_estimate_unless_quiet(capsys):
    argv = ["train", "--dataset", "wine", "--hidden", "2", "--epochs", "1", "--key-bits", "512",
            "--insecure-small-key", "--init-seed", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert acml.main(argv) == 0
        assert "estimated: about" in capsys.readouterr().err
        assert acml.main([*argv, "--quiet"]) == 0
        assert "estimated: about" not in capsys.readouterr().err


def test_chunked_prediction_equals_one_call(monkeypatch):
    train_set, test_set = dataset(64), dataset(50, seed=1, name="test")
    whole = acml.train(train_set, test_set, config())
    monkeypatch.setattr(simulation, "PREDICTION_CHUNK_ROWS", 16)
    chunked = acml.train(train_set, test_set, config())
    assert chunked.metrics["test_report"] == whole.metrics["test_report"]
    assert chunked.metrics["prediction_agreement"] == whole.metrics["prediction_agreement"]
