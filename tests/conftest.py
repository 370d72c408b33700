"""Shared fixtures."""

import functools
import warnings

import pytest

import paillier


@pytest.fixture(params=["python", "gmpy2"])
def backend(request):
    """Run the test once per paillier arithmetic backend (gmpy2 is skipped if not installed)."""
    try:
        switch = paillier.use_backend(request.param)
    except ValueError as error:
        pytest.skip(str(error))
    with switch:
        yield request.param


@functools.lru_cache(maxsize=None)
def insecure_keypair(bits):
    """A small key pair for fast tests, made once per size (through the explicit insecure flag)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        return paillier.generate_keypair(bits, allow_insecure=True)
