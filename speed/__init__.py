"""Faster arithmetic, the same bits as paillier.py: gmpy2, packing, multi-exponentiation, randomizer pools, the fast engine, workers and dask clusters."""
