"""Faster arithmetic: the same results as paillier.py, sooner (gmpy2, packing, multi-exponentiation, randomizer pools, workers)."""
