"""Shared fixtures."""

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
