"""Randomness off the critical path, and workers on a real cluster: the weights never depend on
where the randomness was computed or where the arithmetic ran. Small keys; no timing is
asserted anywhere (bench.py measures speed)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import insecure_keypair, one_line_error

import acml
from jobs import data
from speed import kernels
from fixed import Fixed

KEY_BITS = 384
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def small_split(n_rows, seed=0):
    dataset = data.load_builtin("breast_cancer")
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset.y))[:n_rows])
    dataset = data.Dataset(dataset.X[keep], dataset.y[keep], dataset.ids[keep],
                           dataset.feature_names, dataset.class_names, "breast_cancer")
    return acml.prepare(dataset, test_fraction=0.25, seed=seed)[0]


def config(**overrides):
    base = dict(hidden=(4,), activation="relu", epochs=2, batch_size=16, lr=0.1,
                key_bits=KEY_BITS, allow_insecure=True, init_seed=0)
    base.update(overrides)
    return acml.Config(**base)


def weights(result):
    """Everything trained: the joint first layer W = W_B + ε_acc (integers), the layers above,
    and the bottom model's weights if any."""
    out = [(result.label_party.weight_share + result.data_party.noise_acc).values]
    out += [np.asarray(layer.W) for layer in result.label_party.model.layers[1:]]
    out += [np.asarray(layer.b) for layer in result.label_party.model.layers]
    if result.data_party.bottom is not None:
        out += [result.data_party.bottom.layer.W, result.data_party.bottom.layer.b]
    return out


def assert_same_weights(first, second):
    for a, b in zip(weights(first), weights(second), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("overrides", [{}, {"packing": False}, {"bottom": 3}],
                         ids=["packed", "unpacked", "bottom"])
def test_weights_are_bit_identical_with_and_without_randomizer_pools(keypair, overrides):
    """The pools change where the randomness is computed, never a plaintext: the same W, the
    same layers above (and bottom model) with pools as without, packed, unpacked and with a
    bottom model (whose [[α]], [[ε_acc]] and step-4b re-randomisation draw from the pools)."""
    train_set = small_split(48)
    pooled = acml.train(train_set, None, config(**overrides), keypair=keypair)
    plain = acml.train(train_set, None, config(**overrides), keypair=keypair, precompute=False)
    assert pooled.label_party.engine.randomizer_pool is not None
    assert plain.label_party.engine.randomizer_pool is None
    assert_same_weights(pooled, plain)


@pytest.mark.parametrize("overrides", [{}, {"bottom": 3}], ids=["packed", "bottom"])
def test_pools_are_sized_from_the_public_plan_and_never_fall_short(keypair, overrides):
    """Each party counts its epoch's encryptions from the public plan: after two epochs every
    randomizer it precomputed has been used exactly once, and none was computed online."""
    result = acml.train(small_split(48), None, config(**overrides), keypair=keypair)
    for party in (result.data_party, result.label_party):
        pool = party.engine.randomizer_pool
        planned = sum(pool.need(epoch) for epoch in range(2))
        assert planned > 0
        assert pool.shortfall == 0 and len(pool) == 0
        assert pool.filled == planned + pool.step0_count  # step 0's [[X]] first, if any
    assert (result.data_party.engine.randomizer_pool.step0_count > 0) == (not overrides)


def test_step_seconds_report_the_pool_as_offline_work_apart_from_setup(keypair):
    """metrics["step_seconds"] holds a step "pool" (the parties' precomputation) and a step 0
    without the fill done during setup; without pools, no "pool" step."""
    train_set = small_split(48)
    result = acml.train(train_set, None, config(), keypair=keypair)
    steps, raw = result.metrics["step_seconds"], result.channel.step_seconds
    fills = sum(p.engine.randomizer_pool.offline_seconds - p.engine.randomizer_pool.step0_seconds
                for p in (result.data_party, result.label_party))
    in_setup = (result.data_party.engine.randomizer_pool.setup_seconds
                + result.label_party.engine.randomizer_pool.setup_seconds)
    assert steps["pool"] == pytest.approx(fills) and fills > 0
    assert steps["0"] == pytest.approx(max(raw["0"] - in_setup, 0.0))
    for step in ("1", "2", "3", "4"):
        assert steps[step] == raw[step]
    plain = acml.train(train_set, None, config(epochs=1), keypair=keypair, precompute=False)
    assert "pool" not in plain.metrics["step_seconds"]


def test_key_owner_pool_gives_the_crt_ciphertexts_for_the_same_randomness(keypair, monkeypatch):
    """A private key's pool holds textbook r^n computed by CRT (fixed-base for safe primes):
    encrypting from it gives bit for bit PrivateKey.encrypt's ciphertexts for the same drawn
    randomness (the same distribution, no DJN assumption); a public key's pool is refused by
    the key owner."""
    public_key, private_key = keypair
    assert private_key.subgroups, "the default key has safe primes: the fixed-base path"
    plain = Fixed.from_ints(np.arange(-6, 6, dtype=object).reshape(3, 4), 0)
    exponents = [private_key.random_subgroup_exponents() for _ in range(plain.values.size)]

    def replay():
        draws = iter(exponents)
        monkeypatch.setattr(type(private_key), "random_subgroup_exponents",
                            lambda self: next(draws))

    replay()
    expected = private_key.encrypt(plain)
    replay()
    pool = kernels.RandomizerPool(private_key).fill(plain.values.size)
    monkeypatch.undo()
    pooled = kernels.encrypt_array(private_key, plain, pool=pool)
    assert np.array_equal(pooled.ciphertexts, expected.ciphertexts)
    assert np.array_equal(private_key.decrypt(pooled).values, plain.values)
    assert len(pool) == 0
    with pytest.raises(ValueError, match="key owner"):
        kernels.encrypt_array(private_key, plain,
                              pool=kernels.RandomizerPool(public_key).fill(1))


def test_top_up_fills_only_the_missing_randomizers(keypair):
    pool = kernels.RandomizerPool(keypair[0]).fill(3)
    pool.top_up(5)
    assert len(pool) == 5 and pool.filled == 5
    pool.top_up(2)
    assert pool.filled == 5


# -- a real cluster: dask.distributed ---------------------------------------------------------
@pytest.fixture(scope="module")
def dask_cluster():
    """A two-worker dask.distributed LocalCluster in this process (threads: fast to start)."""
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


def test_dask_executor_is_sized_by_the_clusters_real_workers(dask_cluster):
    _, client = dask_cluster
    assert kernels.worker_count(kernels.dask_executor(client)) == 2


@pytest.mark.parametrize("overrides", [{}, {"bottom": 3}], ids=["packed", "bottom"])
def test_weights_on_a_dask_cluster_are_bit_identical_to_no_executor(keypair, dask_cluster,
                                                                     overrides):
    """Every kernel (matmul, CRT encryption and decryption, the pools' randomizers) on the
    cluster's workers: the same weights, bit for bit, as with no executor."""
    _, client = dask_cluster
    train_set = small_split(48)
    on_cluster = acml.train(train_set, None, config(**overrides), keypair=keypair,
                            executor=kernels.dask_executor(client))
    here = acml.train(train_set, None, config(**overrides), keypair=keypair)
    assert_same_weights(on_cluster, here)


# A cluster in a process of its own, started from an empty directory without PYTHONPATH: neither
# its scheduler nor its two worker processes can import this project unless the client ships it.
CLUSTER_SCRIPT = """
import sys
from distributed import LocalCluster
cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None)
print(cluster.scheduler_address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.close()
"""
TINY_RUN = ["train", "--dataset", "wine", "--hidden", "2", "--epochs", "1", "--quiet",
            "--key-bits", "512", "--insecure-small-key", "--init-seed", "0"]


@pytest.fixture(scope="module")
def separate_cluster(tmp_path_factory):
    pytest.importorskip("dask.distributed")
    folder = tmp_path_factory.mktemp("cluster")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen([sys.executable, "-c", CLUSTER_SCRIPT], cwd=folder,
                               env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("tcp://"), "the cluster did not start"
        yield address
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def refuse_upload(self, plugin, name=None):
    raise ModuleNotFoundError("No module named 'numpy'")  # as a worker without numpy says


def import_fails_in_a_task(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'speed'")  # as dask re-raises a worker's error


# These run before the upload test below, on the same cluster: none of them ships the code.
@pytest.mark.parametrize("where", ["workers", "upload", "task"])
def test_a_cluster_that_cannot_run_the_code_is_one_line(separate_cluster, where, capsys,
                                                        monkeypatch):
    """A cluster whose workers cannot import the code ends in one line naming the cluster and
    the missing module, exit 2, never a traceback: workers that never received it (the client
    skips the upload: the real failure of a real cluster), an upload that fails over there,
    and a task that fails to import mid-run."""
    from distributed import Client
    from speed import cluster
    from jobs import simulation
    if where == "workers":
        monkeypatch.setattr(cluster, "ship_code", lambda client: cluster.probe(client))
    elif where == "upload":
        monkeypatch.setattr(Client, "register_plugin", refuse_upload)
    else:
        monkeypatch.setattr(cluster, "ship_code", lambda client: None)
        monkeypatch.setattr(simulation, "train", import_fails_in_a_task)
    line = one_line_error(capsys, [*TINY_RUN, "--dask", separate_cluster])
    assert line.startswith(f"acml.py train: error: --dask {separate_cluster}: ")
    assert "No module named" in line and "Traceback" not in line
    if where == "workers":
        assert "cannot run the kernels: ModuleNotFoundError: No module named 'speed'" in line


def trained_weights(checkpoint_dir, tmp_path):
    """Every weight of the run saved in ``checkpoint_dir``, joined (export_model)."""
    arrays = acml.export_model(checkpoint_dir, tmp_path / f"{Path(checkpoint_dir).name}.npz",
                               i_understand_this_reveals_the_weights=True)
    return {name: value for name, value in arrays.items()
            if name.startswith(("layers.", "bottom."))}


def test_cli_train_on_a_cluster_in_other_processes_trains_like_the_run_without(
        separate_cluster, tmp_path):
    """`python acml.py train --dask ADDRESS` against a cluster whose scheduler and workers run
    in other processes, in another directory: the client ships the code they run, and the
    weights equal the run's without dask, bit for bit (W does not depend on the key or the
    masks, so the same --init-seed gives the same weights)."""
    done = subprocess.run([sys.executable, "acml.py", *TINY_RUN, "--dask", separate_cluster,
                           "--checkpoint-dir", str(tmp_path / "on_cluster")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert acml.main([*TINY_RUN, "--checkpoint-dir", str(tmp_path / "here")]) == 0
        on_cluster = trained_weights(tmp_path / "on_cluster", tmp_path)
        here = trained_weights(tmp_path / "here", tmp_path)
    assert sorted(on_cluster) == sorted(here) and "layers.0.W" in here
    for name, value in here.items():
        assert np.array_equal(on_cluster[name], value), name


def test_cli_dask_and_workers_are_alternatives(capsys):
    argv = ["train", "--dataset", "wine", "--quiet", "--key-bits", "512", "--insecure-small-key",
            "--workers", "2", "--dask", "tcp://127.0.0.1:1"]
    assert acml.main(argv) == 2
    assert "--dask and --workers are alternatives" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["data", "label"])
def test_each_party_role_takes_its_own_dask_cluster(role, capsys):
    acml.main(["party", role, "--help"])  # help exits 0 through main
    assert "--dask SCHEDULER_ADDRESS" in capsys.readouterr().out
