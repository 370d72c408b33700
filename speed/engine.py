"""The fast engine: the arithmetic of paillier.TextbookEngine, with everything speed/kernels.py
does to make it fast — multi-exponentiation, CRT and fixed-base encryption, randomizers
precomputed a whole epoch ahead, workers on an executor, and products computed row block by row
block as the channel streams them.

The parties call the same methods whichever engine they hold; the plaintexts, and so every
weight, are the same bit for bit (tests/speed/test_engine.py). Packing is no engine's business: the
slots are a public layout (plan.PackingLayout) the parties pack and unpack themselves.

Caveat: with an ``executor``, the key owner's CRT kernels receive p and q (speed/kernels.py);
give it only executors on machines the key owner trusts.
"""

from __future__ import annotations

import numpy as np

from channel import RowBlocks
from fixed import object_array
from paillier import EncryptedArray
from speed import kernels

ENCRYPT_CHUNK_ROWS = 256  # rows per progress report of a long encryption ([[X]] in step 0)


class FastEngine:
    """paillier.TextbookEngine's methods, fast.

    ``executor`` (any concurrent.futures.Executor) runs the modular exponentiations;
    ``precompute`` fills, at the end of step 0 and between epochs, a pool of the randomizers an
    epoch needs (kernels.EpochPool, ``randomizer_pool``), so that online an encryption or a
    re-randomisation is one multiplication. One engine per party: the pool is its own.
    """

    def __init__(self, *, executor=None, precompute: bool = True):
        self.executor, self.precompute = executor, precompute
        self.randomizer_pool = None

    def start(self, key, public, *, training):
        """The end of step 0: this party's pool for the epochs (its PrivateKey's for the data
        party, its PublicKey's for the label party), when precomputing and training."""
        self.randomizer_pool = kernels.epoch_pool(self.precompute and training, key, public,
                                                  self.executor)

    def finish_epoch(self, epochs_completed):
        """Between epochs, offline: top the pool up for the next one."""
        kernels.prepare_pool(self.randomizer_pool, epochs_completed)

    def encrypt(self, private_key, fixed, *, progress=None):
        """[[fixed]] by the key owner's CRT kernels, randomizers from the pool; with
        ``progress(done, total)``, in chunks of ENCRYPT_CHUNK_ROWS rows (the same ciphertexts)."""
        if progress is None:
            return kernels.encrypt_array(private_key, fixed, executor=self.executor,
                                         pool=self.randomizer_pool)
        chunks, total = [], fixed.shape[0]
        for start in range(0, total, ENCRYPT_CHUNK_ROWS):
            stop = min(start + ENCRYPT_CHUNK_ROWS, total)
            chunks.append(kernels.encrypt_array(private_key, fixed[start:stop],
                                                executor=self.executor,
                                                pool=self.randomizer_pool).ciphertexts)
            progress(stop, total)
        return EncryptedArray(private_key.public_key, np.concatenate(chunks, axis=0),
                              fixed.scale)

    def decrypt(self, private_key, encrypted):
        """The residues, by CRT on the executor; a streamed message's row blocks each as it
        arrives, while the sender computes the next."""
        return kernels.decrypt_rows(private_key, encrypted, executor=self.executor)

    def matmul(self, encrypted, weights):
        """[[A]]·W by Straus multi-exponentiation (kernels.encrypted_matmul)."""
        return kernels.encrypted_matmul(encrypted, weights, executor=self.executor)

    def add_mask(self, encrypted, mask):
        """[[v]] · ρ · (1 + (ε mod n)·n) mod n²: ρ a fresh encryption of 0 from the pool."""
        public_key = encrypted.public_key
        n, nsquare = public_key.n, public_key.nsquare
        flat = np.asarray(mask, dtype=object).ravel().tolist()
        fresh = kernels.encryptions_of_zero(public_key, len(flat), executor=self.executor,
                                            pool=self.randomizer_pool)
        masked = [c * rho * (1 + int(m) % n * n) % nsquare for c, rho, m in zip(
            encrypted.ciphertexts.ravel().tolist(), fresh, flat)]
        return EncryptedArray(public_key, object_array(masked, encrypted.shape),
                              encrypted.scale)

    def masked_matmul(self, encrypted, weights, mask):
        """[[A·W + ε]] as channel.RowBlocks: each block of rows multiplied and masked (with its
        rows of the mask drawn in full beforehand) only when the channel sends it. Every output
        element is its own multi-exponentiation, so a block is just those outputs."""
        def rows(block: slice) -> EncryptedArray:
            return self.add_mask(self.matmul(encrypted[block], weights), mask[block])
        return RowBlocks((encrypted.shape[0], weights.shape[1]), rows)

    def rerandomize(self, encrypted):
        """Each ciphertext times a fresh ρ from the pool (kernels.rerandomize)."""
        return kernels.rerandomize(encrypted, executor=self.executor, pool=self.randomizer_pool)
