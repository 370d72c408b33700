"""Key generation off the critical path: the key made on another thread is a key like any other
(safe primes of the asked size, from `secrets`), its errors reach the caller, and a run that
makes its key that way trains the same weights."""

import threading

import numpy as np
import pytest
from conftest import insecure_keypair, small_split

import acml
from speed import backend
from speed import kernels
import paillier

KEY_BITS = 256


def test_background_key_is_a_safe_prime_key_of_the_asked_size(monkeypatch):
    """.result() gives (PublicKey, PrivateKey) with n of exactly n_length bits, p and q safe
    primes, made on a daemon thread other than the caller's."""
    seen = {}
    real = paillier.generate_keypair

    def spy(*args, **kwargs):
        seen["thread"] = threading.current_thread()
        return real(*args, **kwargs)

    monkeypatch.setattr(paillier, "generate_keypair", spy)
    public_key, private_key = kernels.keypair_in_background(
        KEY_BITS, allow_insecure=True).result(timeout=300)
    assert seen["thread"] is not threading.current_thread() and seen["thread"].daemon
    assert public_key.n.bit_length() == KEY_BITS
    assert backend.is_safe_prime(private_key.p) and backend.is_safe_prime(private_key.q)


def test_background_key_generation_errors_reach_the_caller_in_one_line():
    """A refused size is the same one-line ValueError as generate_keypair's, raised by .result()."""
    future = kernels.keypair_in_background(255, allow_insecure=True)
    with pytest.raises(ValueError, match="must be even"):
        future.result(timeout=60)


def test_the_fermat_filter_agrees_with_pow_on_both_backends(arithmetic):
    """The safe-prime search's base-2 Fermat test, run through powmod_list (GIL released on
    gmpy2), says exactly what pow(2, c - 1, c) == 1 says, primes and pseudoprimes alike."""
    powmod_list = backend.current_backend().powmod_list
    for candidate in (341, 561, 1_000_003, 2 ** 61 - 1, 2 ** 61 + 1, 3 * 2 ** 89 + 5):
        powers = powmod_list([2, 3], candidate - 1, candidate)
        assert [int(v) for v in powers] == [pow(2, candidate - 1, candidate),
                                            pow(3, candidate - 1, candidate)]


def test_a_run_that_makes_its_own_key_trains_the_weights_of_a_run_given_one():
    """simulation.train without a key pair makes one on another thread while it checks the
    inputs; the joint weights are the very integers of the run given a key (they never depend
    on the key)."""
    train_set, test_set = small_split(60)
    config = acml.Config(hidden=(3,), epochs=1, batch_size=16, key_bits=KEY_BITS,
                         allow_insecure=True, init_seed=0)
    made = acml.train(train_set, test_set, config)
    given = acml.train(train_set, test_set, config, keypair=insecure_keypair(KEY_BITS))
    assert made.data_party.public_key.n.bit_length() == KEY_BITS
    assert made.data_party.public_key.n != given.data_party.public_key.n

    def joint_weight(result):
        return (result.label_party.weight_share + result.data_party.noise_acc).values
    assert np.array_equal(joint_weight(made), joint_weight(given))


def test_a_cancelled_background_key_stops_its_search():
    """cancel() ends the prime search at its next candidate: result() raises
    GenerationCancelled instead of a key arriving seconds later."""
    background = kernels.keypair_in_background(2048)
    background.cancel()
    with pytest.raises(backend.GenerationCancelled):
        background.result(timeout=120)


def test_a_train_command_refused_after_its_key_started_cancels_the_key(monkeypatch, capsys):
    """`train` starts the key while it reads the data; a refused input (one line, exit 2)
    cancels that key's search rather than leaving it running."""
    started = []

    class Recording:
        def __init__(self, *args, **kwargs):
            self.cancelled = False
            started.append(self)

        def cancel(self):
            self.cancelled = True

        def result(self, timeout=None):
            raise AssertionError("a refused run must not wait for its key")

    monkeypatch.setattr(kernels, "keypair_in_background", Recording)
    assert acml.main(["train", "--features", "x.csv", "--quiet"]) == 2
    assert "CSV input needs" in capsys.readouterr().err
    assert len(started) == 1 and started[0].cancelled
