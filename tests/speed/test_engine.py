"""The two engines: the textbook one (paillier.TextbookEngine, what a student reads) and the fast
one (speed.engine.FastEngine, what acml.train runs) give the same protocol, bit for bit.

Same weights: the joint first layer W_B + ε_acc, the bias, every layer above, the bottom model,
the losses and the prediction scores, with and without a bottom model, packed and not.

Same transcripts (packing off, so that the messages have the same shapes): the same messages in
the same order with the same names, kinds, shapes and declared widths; and the same contents for
every message whose content is not a fresh random value. Which contents are deterministic:

* with the parties' own masks (from ``secrets``): the public messages (key, shapes, plans,
  layout, counts), and the plaintexts of the ciphertexts that carry no mask — [[X]], [[α]],
  [[X_new]] and [[δ·Wᵀ]], decrypted with the data party's key — and the z the label party
  derives each batch. Ciphertexts themselves never compare: each carries fresh Paillier
  randomness, which the two engines draw differently (pools, fixed-base tables, r^n).
* with both parties' masks from one seeded generator each (a test-only stand-in, which the
  channel flags as ``seeded_mask_rng`` and which therefore runs in report mode): every
  plaintext message, masked or revealed, and every ciphertext's plaintext, as well as each
  share (W_B and ε_acc) on its own.

Small insecure keys (512 bits), 24 training rows, two epochs.
"""

import random

import numpy as np
import pytest
from conftest import insecure_keypair, small_split

import paillier
import protocol
from attacks import flaws
from channel import CIPHERTEXT, PUBLIC, Channel, MaskSource
from parties import DataParty, LabelParty
from plan import FixedPointPlan
from speed.engine import FastEngine

KEY_BITS = 512
HIDDEN = 3
BATCH = 12
EPOCHS = 2
STREAM_CHUNKS = 3  # the fast engine's products cross in row blocks, masks drawn beforehand
UNMASKED_CIPHERTEXTS = {"[[X]]", "[[α]]", "[[X_new]]", "[[δ·Wᵀ]]"}


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def run(keypair, engine, *, packing=False, bottom=None, seeded=False):
    """Train on a small split with ``engine`` ("textbook" or "fast") at both parties, then
    predict the test rows; every payload kept, z noted after each batch."""
    train_set, test_set = small_split()
    sizes = (train_set.X.shape[1] if bottom is None else bottom, HIDDEN, 1)

    def new_engine():
        return paillier.TextbookEngine() if engine == "textbook" else FastEngine()

    def masks(seed):
        return MaskSource(random.Random(seed)) if seeded else None
    plan = FixedPointPlan()
    data_party = DataParty(train_set.X, plan=plan, keypair=keypair, init_seed=0, bottom=bottom,
                           engine=new_engine(), mask_source=masks(1))
    label_party = LabelParty(train_set.y, sizes, lr=0.1, batch_size=BATCH, epochs=EPOCHS,
                             seed=0, plan=plan, engine=new_engine(), packing=packing,
                             allow_insecure=True, mask_source=masks(2),
                             allow_bottom=bottom is not None)
    channel = Channel(data_party=data_party, label_party=label_party, keep_payloads=True,
                      mode="report" if seeded else "raise",
                      stream_chunks=STREAM_CHUNKS if engine == "fast" else 1)
    public = protocol.setup(channel)
    z = []
    protocol.train(channel, public,
                   after_batch=lambda rows: z.append(label_party.preactivation.copy()))
    data_party.set_rows_to_predict(test_set.X)
    protocol.predict(channel, public)
    return dict(data=data_party, label=label_party, channel=channel, z=z, public=public)


def assert_same_model(a, b, *, shares=False):
    """W_B + ε_acc integer for integer (and, with ``shares``, each share alone), the bias and
    every layer above, the bottom model, the losses and the prediction scores."""
    joint_a = a["label"].weight_share + a["data"].noise_acc
    joint_b = b["label"].weight_share + b["data"].noise_acc
    assert joint_a.scale == joint_b.scale and np.array_equal(joint_a.values, joint_b.values)
    if shares:
        assert np.array_equal(a["label"].weight_share.values, b["label"].weight_share.values)
        assert np.array_equal(a["data"].noise_acc.values, b["data"].noise_acc.values)
    for mine, theirs in zip(a["label"].model.layers, b["label"].model.layers, strict=True):
        assert np.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert np.array_equal(mine.W, theirs.W)
    if a["data"].bottom is not None:
        assert np.array_equal(a["data"].bottom.layer.W, b["data"].bottom.layer.W)
        assert np.array_equal(a["data"].bottom.layer.b, b["data"].bottom.layer.b)
    assert a["label"].losses == b["label"].losses
    assert np.array_equal(a["label"].predictions, b["label"].predictions)


def declarations(result):
    return [(m.step, m.sender, m.receiver, m.name, m.kind, m.shape, m.mask_bits, m.value_bits,
             m.reason) for m in result["channel"].messages]


def plaintext_of(message, keypair):
    """A message's content as a comparable value: a ciphertext's residues (its plaintext),
    an array's integers, a public value as it is."""
    payload = message.payload
    if message.kind == CIPHERTEXT:
        return keypair[1].decrypt_residues(payload).tolist()
    if isinstance(payload, np.ndarray):
        return payload.tolist()
    return payload


@pytest.mark.parametrize("bottom", [None, 3], ids=["no bottom", "bottom"])
def test_textbook_and_fast_engines_send_the_same_transcript_and_train_the_same_model(keypair,
                                                                                       bottom):
    """Unpacked, secure masks: the same declarations message for message, the same public
    contents, the same plaintexts of the unmasked ciphertexts, the same z every batch, and the
    same model bit for bit."""
    textbook = run(keypair, "textbook", bottom=bottom)
    fast = run(keypair, "fast", bottom=bottom)
    assert isinstance(textbook["label"].engine, paillier.TextbookEngine)
    assert fast["label"].engine.randomizer_pool is not None  # the fast engine's pool served
    assert declarations(textbook) == declarations(fast)
    compared = 0
    for mine, theirs in zip(textbook["channel"].messages, fast["channel"].messages):
        if mine.kind == PUBLIC or mine.name in UNMASKED_CIPHERTEXTS:
            assert plaintext_of(mine, keypair) == plaintext_of(theirs, keypair), mine.where
            compared += 1
    assert compared >= 5 + (2 * EPOCHS * 2 if bottom else 0)
    assert len(textbook["z"]) == len(fast["z"]) == EPOCHS * 2
    for mine, theirs in zip(textbook["z"], fast["z"]):
        assert np.array_equal(mine, theirs)
    assert_same_model(textbook, fast)


def test_with_seeded_masks_every_plaintext_of_the_transcript_is_the_same(keypair):
    """With each party's masks from the same seeded generator in both runs, every message's
    content (a ciphertext's plaintext included) is the same under either engine, and so is
    each share on its own: the engines differ only in Paillier randomness. The channel flags
    the seeded generator, and nothing else."""
    textbook = run(keypair, "textbook", seeded=True)
    fast = run(keypair, "fast", seeded=True)
    assert declarations(textbook) == declarations(fast)
    for mine, theirs in zip(textbook["channel"].messages, fast["channel"].messages):
        assert plaintext_of(mine, keypair) == plaintext_of(theirs, keypair), mine.where
    for result in (textbook, fast):
        assert {name for f in result["channel"].findings for name in f.flaws} == {
            "seeded_mask_rng"}
    assert_same_model(textbook, fast, shares=True)


def test_the_fast_engine_packed_trains_the_textbook_model(keypair):
    """Packed (several values per ciphertext, other message shapes), the fast engine still
    trains the unpacked textbook run's model bit for bit — each share too, with seeded masks.
    (A bottom model never packs: plan.Public.packable.)"""
    textbook = run(keypair, "textbook", seeded=True)
    packed = run(keypair, "fast", packing=True, seeded=True)
    assert packed["public"].packing is not None
    assert_same_model(textbook, packed, shares=True)


def test_the_textbook_engine_uses_only_the_textbook_formulas(keypair, monkeypatch):
    """The textbook engine is the paper's Paillier and nothing faster: with the key owner's CRT
    path, its fixed-base tables and DJN randomness all made to fail, a whole run (training and
    prediction) still goes through, and trains the fast engine's model bit for bit."""
    def refuse(name):
        def refused(*args, **kwargs):
            raise AssertionError(f"{name} used by the textbook engine")
        return refused
    fast = run(keypair, "fast", seeded=True)
    for name in ("crt_constants", "crt_decrypt", "raw_encrypt", "encrypt", "decrypt_residues"):
        monkeypatch.setattr(paillier.PrivateKey, name, refuse(f"PrivateKey.{name}"))
    monkeypatch.setattr(paillier, "fixed_base_table", refuse("fixed_base_table"))
    monkeypatch.setattr(paillier.PublicKey, "djn_randomizer", refuse("DJN randomness"))
    textbook = run(keypair, "textbook", seeded=True)
    assert_same_model(textbook, fast, shares=True)


def test_parties_do_their_paillier_work_only_through_the_engine(keypair):
    """A party whose engine refuses everything fails at its first Paillier operation: no party
    method encrypts, decrypts or multiplies under encryption by itself."""
    class Refusing:
        def __getattr__(self, name):
            if name in ("start", "finish_epoch"):
                return lambda *args, **kwargs: None
            raise AssertionError(f"engine.{name} called")
    train_set, _ = small_split()
    data_party = DataParty(train_set.X, keypair=keypair, init_seed=0, engine=Refusing())
    label_party = LabelParty(train_set.y, (train_set.X.shape[1], HIDDEN, 1), batch_size=BATCH,
                             allow_insecure=True, packing=False)
    with pytest.raises(AssertionError, match="engine.encrypt called"):
        protocol.setup(Channel(data_party=data_party, label_party=label_party))


def test_each_flawed_party_overrides_one_method_of_the_real_one():
    """The broken variants live in attacks/flaws.py as subclasses, each deviating from the real
    party in one method; with no flaw, party_classes gives the real parties themselves."""
    assert flaws.party_classes(flaws.SECURE) == (DataParty, LabelParty)
    variants = {*flaws.DATA_PARTY_FLAWS.values(), *flaws.LABEL_PARTY_FLAWS.values(),
                flaws.IntervalMaskLabelParty}
    for variant in variants:
        real = DataParty if issubclass(variant, DataParty) else LabelParty
        overridden = [name for name, value in vars(variant).items()
                      if callable(value) and hasattr(real, name)]
        assert len(overridden) == 1, (variant.__name__, overridden)
    for party in (DataParty, LabelParty):
        assert party.flaws == ()


def test_a_peer_that_still_declares_update_noise_is_refused_in_one_line():
    """update_noise is gone: a data party (an older version) that declares its noise bound in
    step 0's shapes is refused, the line naming the field."""
    label_party = LabelParty(np.array([0, 1, 0, 1]), (2, 2, 1), allow_insecure=True)
    shapes = {"start": "new", "n_samples": 4, "n_inputs": 2, "bottom": False,
              "insecure_flaws": [], "update_noise_bits": 12}
    with pytest.raises(ValueError, match="unknown fields: update_noise_bits") as error:
        label_party.check_shapes(shapes, "new")
    assert "\n" not in str(error.value)
