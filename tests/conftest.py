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
