"""Shared fixtures."""

import functools
import os
import threading
import warnings

import numpy
import pytest

import paillier


def each_backend(request):
    """Switch paillier to the backend ``request.param`` for one test (skip gmpy2 if absent)."""
    try:
        switch = paillier.use_backend(request.param)
    except ValueError as error:
        pytest.skip(str(error))
    with switch:
        yield request.param


@pytest.fixture(params=["python", "gmpy2"])
def backend(request):
    """Run the test once per paillier arithmetic backend (gmpy2 is skipped if not installed)."""
    yield from each_backend(request)


@pytest.fixture(params=["python", "gmpy2"])
def arithmetic(request):
    """The same, for tests that import the module `backend` (named apart from it)."""
    yield from each_backend(request)


@functools.lru_cache(maxsize=None)
def insecure_keypair(bits):
    """A small key pair for fast tests, made once per size (through the explicit insecure flag)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        return paillier.generate_keypair(bits, allow_insecure=True)


# Every test wait and every bound on wall time is scaled by this one factor: set
# ACML_TEST_TIME_SCALE (say 3) on a slow machine; unset, it is the machine's load per core at
# the start (os.getloadavg()[0] / cores), at least 1, so a loaded machine gets more room by
# itself. A bound a test asserts must still fail against the bug it guards at any scale.
def _time_scale() -> float:
    text = os.environ.get("ACML_TEST_TIME_SCALE", "").strip()
    if not text:
        try:
            return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        except OSError:  # no load average on this system
            return 1.0
    scale = float(text)
    if not scale > 0:
        raise ValueError(f"ACML_TEST_TIME_SCALE must be a positive number, got {text!r}")
    return scale


TIME_SCALE = _time_scale()


def scaled(seconds: float) -> float:
    """``seconds`` times ACML_TEST_TIME_SCALE: a test's timeout or wall-time bound."""
    return seconds * TIME_SCALE


def one_line_error(capsys, argv, code=2):
    """Run the CLI; demand ``code`` and exactly one line on stderr; return that line."""
    import acml
    assert acml.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def write_csv(path, header, rows):
    """A small CSV file, for the tests of the CLI and the loaders."""
    import csv
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_split(n_rows=32, name="breast_cancer"):
    """A seeded subset of a built-in dataset, split 3:1 and standardised on the training part."""
    import acml
    from jobs import data
    import numpy as np
    dataset = data.load_builtin(name)
    keep = np.sort(np.random.default_rng(0).permutation(len(dataset.y))[:n_rows])
    dataset = data.Dataset(dataset.X[keep], dataset.y[keep], dataset.ids[keep],
                           dataset.feature_names, dataset.class_names, name)
    return acml.prepare(dataset, test_fraction=0.25, seed=0)


PREDICTION_SEED = 0x5EED  # the tests fix the OS's answer; a real prediction's seed is fresh


def fix_prediction_seed(monkeypatch):
    """Make the data party's fresh prediction seed this known value, so the test can rebuild the
    noisy rows it sent (secrets.randbits, as input_perturbation calls it, answers the seed)."""
    import types
    from privacy import input_perturbation
    monkeypatch.setattr(input_perturbation, "secrets",
                        types.SimpleNamespace(randbits=lambda bits: PREDICTION_SEED))


@pytest.fixture
def no_training(monkeypatch):
    """Bad input must be refused before any work: training, prediction, either party's session
    or a key generation here fails the test."""
    from jobs import simulation
    from network import transport

    def refuse(*args, **kwargs):
        raise AssertionError("work started despite bad input")
    monkeypatch.setattr(simulation, "train", refuse)
    monkeypatch.setattr(simulation, "predict", refuse)
    monkeypatch.setattr(simulation, "predict_file", refuse)
    monkeypatch.setattr(simulation, "rehearse", refuse)
    monkeypatch.setattr(transport, "run_data_party", refuse)
    monkeypatch.setattr(transport, "run_label_party", refuse)
    monkeypatch.setattr(paillier, "generate_keypair", refuse)


# The shared token of the loopback tests: of the form `python acml.py token` makes (the token
# check refuses anything else), and public, so these tests prove nothing about secrecy.
TEST_TOKEN = b"acml-ecfb029d3968d9fc9519cdbd04346305548670a806204533e69f02e8e9d63506"


@pytest.fixture(scope="module")
def small_wine():
    """(training set, its standardiser): 45 training rows of wine (60 drawn, a quarter held
    out), small enough for runs that are killed and resumed many times."""
    import numpy as np

    import acml
    from jobs import data
    raw = data.load_builtin("wine")
    keep = np.sort(np.random.default_rng(0).permutation(len(raw.y))[:60])
    subset = data.Dataset(raw.X[keep], raw.y[keep], raw.ids[keep], raw.feature_names,
                          raw.class_names, "wine")
    train_set, _, scaler = acml.prepare(subset, test_fraction=0.25, return_standardizer=True)
    return train_set, scaler


def train_as_the_parties_split(dataset, cfg, keypair, *, test_fraction, **train_options):
    """acml.train on ``dataset`` split and standardised as two parties do it (unstratified,
    from the ids in sorted order: what run_label_party does), returning its result."""
    import acml
    train_set, test_set, scaler = acml.prepare(dataset, test_fraction=test_fraction,
                                               seed=cfg.seed, return_standardizer=True,
                                               stratified=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acml.train(train_set, test_set, cfg, keypair=keypair, standardizer=scaler,
                          **train_options), train_set


def over_loopback(data_work, label_work, *, timeout, label_token=TEST_TOKEN, refusals=None,
                  catch=BaseException):
    """``data_work(connection)`` in a thread that accepts on a real loopback socket, and
    ``label_work(connection)`` here, connected to it: {"data": …, "label": …}, or a side's
    error as "data_error" / "label_error" (errors of type ``catch`` are returned, not raised;
    BaseException by default: a test's simulated kill ends a party as a real one would)."""
    from network import wire
    listener = wire.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    out = {}

    def data_side():
        try:
            connection = wire.accept_peer(listener, TEST_TOKEN, timeout=timeout,
                                          log=None if refusals is None else refusals.append)
            out["data"] = data_work(connection)
        except catch as error:  # reported to the test below
            out["data_error"] = error
        finally:
            listener.close()

    thread = threading.Thread(target=data_side, daemon=True)
    thread.start()
    try:
        out["label"] = label_work(wire.connect_peer("127.0.0.1", port, label_token,
                                                    timeout=timeout))
    except catch as error:
        out["label_error"] = error
    thread.join(3 * timeout)
    assert not thread.is_alive(), "the data party's thread did not end"
    return out


def run_pair(keypair, feature_ids, X, label_ids, y, n_classes, cfg, *, test_fraction=0.25,
             label_token=TEST_TOKEN, data_progress=None, label_progress=None, refusals=None,
             data_options=(), label_options=(), timeout=None):
    """Both parties in two threads of this process, over a real loopback socket
    (over_loopback; errors returned in the result). ``timeout``: each wait, default
    scaled(20). ``keypair`` None: the data party brings its own (from a checkpoint, say);
    ``data_options``/``label_options`` go to run_data_party/run_label_party."""
    from network import transport
    timeout = scaled(20.0) if timeout is None else timeout
    data_options = dict(data_options)
    if keypair is not None:
        init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
        data_options = dict(keypair=keypair, init_seed=init_seed, **data_options)
    return over_loopback(
        lambda connection: transport.run_data_party(connection, feature_ids, X, **{
            "plan": cfg.plan, "progress": data_progress, **data_options}),
        lambda connection: transport.run_label_party(
            connection, label_ids, y, n_classes, cfg, test_fraction=test_fraction,
            progress=label_progress, **dict(label_options)),
        timeout=timeout, label_token=label_token, refusals=refusals)


def assert_same_weights(data_party, label_party, reference):
    """W_B + ε_acc integer for integer, the bottom model's W and b, every layer of the label
    party, its losses and its test scores: all bit for bit."""
    joint = label_party.weight_share + data_party.noise_acc
    expected = reference.label_party.weight_share + reference.data_party.noise_acc
    assert joint.scale == expected.scale and numpy.array_equal(joint.values, expected.values)
    assert (data_party.bottom is None) == (reference.data_party.bottom is None)
    if data_party.bottom is not None:
        assert numpy.array_equal(data_party.bottom.layer.W, reference.data_party.bottom.layer.W)
        assert numpy.array_equal(data_party.bottom.layer.b, reference.data_party.bottom.layer.b)
    assert len(label_party.model.layers) == len(reference.label_party.model.layers)
    for mine, theirs in zip(label_party.model.layers, reference.label_party.model.layers):
        assert numpy.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert numpy.array_equal(mine.W, theirs.W)
    assert label_party.losses == reference.losses
    assert numpy.array_equal(label_party.predictions, reference.label_party.predictions)


def saved_model(directory, label_directory=None):
    """(W = W_B + ε_acc, the label party's layers, its velocities, its epochs) from the main
    checkpoint files (each party's own directory in two processes), the pair checked to belong
    together."""
    from jobs import checkpoint
    label_directory = label_directory or directory
    data_state = checkpoint.DataPartyState.load(os.path.join(directory, "data_party.npz"),
                                                allow_insecure=True)
    label_state = checkpoint.LabelPartyState.load(
        os.path.join(label_directory, "label_party.npz"), allow_insecure=True)
    checkpoint.check_checkpoint_pair(data_state, label_state)
    return ((label_state.weight_share + data_state.noise_acc).values, label_state.parameters,
            label_state.velocity, label_state.epochs_completed)


def assert_same_saved_model(a, b):
    """Two saved_model results: the same epoch, W and every layer and velocity, bit for bit."""
    wa, pa, va, ea = a
    wb, pb, vb, eb = b
    assert ea == eb and numpy.array_equal(wa, wb)
    for name in pa:
        assert numpy.array_equal(pa[name], pb[name]), name
    for name in va:
        assert numpy.array_equal(va[name], vb[name]), name
