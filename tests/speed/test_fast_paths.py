"""The fast paths change the cost, never the result: packing, multi-exponentiation, CRT
randomness and workers give the same integers as the simple paths, and every packed slot is
proven to fit before it is read."""

import io
import json
import math
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import acml
from conftest import small_split
import nn
from speed import kernels
import paillier
import plan as plan_module
import protocol
from channel import Channel, uniform_mask
from fixed import Fixed
from plan import Slots
from parties import DataParty, LabelParty
from plan import (PACKING_HEADROOM_BITS, FixedPointPlan, PackingLayout, packing_layout,
                  wide_mask_bits)

KEY_BITS = 384


def _keypair(bits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return paillier.generate_keypair(bits, allow_insecure=True)


@pytest.fixture(scope="module")
def keypair():
    return _keypair(KEY_BITS)


@pytest.fixture(scope="module")
def two_workers():
    with ProcessPoolExecutor(2) as executor:
        yield executor


def config(**overrides):
    base = dict(hidden=(4,), epochs=2, batch_size=16, lr=0.1, key_bits=KEY_BITS,
                allow_insecure=True, init_seed=0)  # W0's seed: the data party's own
    base.update(overrides)
    return acml.Config(**base)


def joint_weight(result):
    return (result.label_party.weight_share + result.data_party.noise_acc).values


def assert_same_model(first, second):
    assert np.array_equal(joint_weight(first), joint_weight(second))
    for mine, theirs in zip(first.label_party.model.layers, second.label_party.model.layers):
        assert np.array_equal(mine.b, theirs.b)
        if mine.W is not None:
            assert np.array_equal(mine.W, theirs.W)


# -- slots -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_slots_round_trip_signed_values_up_to_the_slot_bound(data):
    """pack then unpack returns every signed value with |v| < 2**(B−1), along either axis,
    full and short last groups alike (balanced digits with borrows)."""
    slot_bits = data.draw(st.integers(2, 80))
    slots = data.draw(st.integers(1, 6))
    count = data.draw(st.integers(1, 3 * slots + 1))
    width = data.draw(st.integers(1, 3))
    limit = (1 << (slot_bits - 1)) - 1
    values = np.array(data.draw(st.lists(st.lists(st.integers(-limit, limit), min_size=width,
                                                  max_size=width),
                                         min_size=count, max_size=count)), dtype=object)
    layout = Slots(slot_bits, slots)
    packed = layout.pack(values, axis=0)
    assert packed.shape == (layout.groups(count), width)
    assert np.array_equal(layout.unpack(packed, count, axis=0), values)
    assert all(abs(int(p)) < 1 << layout.packed_bits(slot_bits - 1) for p in packed.ravel())
    transposed = layout.pack(values.T, axis=1)
    assert np.array_equal(layout.unpack(transposed, count, axis=1), values.T)


def test_slots_refuse_what_would_not_unpack_instead_of_wrapping():
    """A value at 2**(B−1) is refused at packing; a digit at the declared bound, or bits left
    above the last used slot, raise OverflowError at unpacking — never a silent wrap."""
    layout = Slots(10, 3)
    with pytest.raises(OverflowError, match="does not fit a signed 10-bit slot"):
        layout.pack(np.array([[1], [512]], dtype=object))
    # 512 in slot 0 reads as −512 with a borrow: beyond the default bound 2**9.
    with pytest.raises(OverflowError, match="slot 0"):
        layout.unpack(np.array([[512]], dtype=object), 1)
    with pytest.raises(OverflowError, match="above its 2 slots"):
        layout.unpack(np.array([[5 << 20]], dtype=object), 2)
    with pytest.raises(OverflowError, match="proven bound 2\\^4"):
        layout.unpack(np.array([[20]], dtype=object), 1, value_bits=4)
    # An intermediate term may spill: only its sum with the others has to fit.
    spilled = layout.pack(np.array([[1 << 30], [3]], dtype=object), intermediate=True)
    correction = layout.pack(np.array([[-(1 << 30) + 7], [0]], dtype=object), intermediate=True)
    assert layout.unpack(spilled + correction, 2).tolist() == [[7], [3]]


def test_packed_ciphertexts_compute_every_slot_at_once_with_spilling_intermediates(keypair):
    """E(packed X)·W_B, decrypted, plus the packed X·ε_acc, unpacks to X·(W_B + ε_acc) exactly:
    the share product spills over its slots, only the final X·W has to fit them."""
    public_key, private_key = keypair
    rng = np.random.default_rng(3)
    X = rng.integers(-2 ** 10, 2 ** 10, size=(5, 4)).astype(object)
    W = rng.integers(-2 ** 8, 2 ** 8, size=(4, 3)).astype(object)
    noise = uniform_mask(W.shape, 100)
    layout = Slots(30, 3)
    encrypted = private_key.encrypt(Fixed(layout.pack(X, axis=0), 0))
    product = kernels.encrypted_matmul(encrypted, Fixed.from_ints(W - noise, 0))
    total = (private_key.decrypt_residues(product)
             + layout.pack(np.matmul(X, noise), axis=0, intermediate=True)) % public_key.n
    decoded = np.vectorize(public_key.decode_residue, otypes=[object])(total)
    assert np.array_equal(layout.unpack(decoded, 5, axis=0), np.matmul(X, W))


# -- multi-exponentiation, CRT randomness and workers -------------------------------------------
@pytest.mark.parametrize("window", [None, 1, 3, 6])
def test_multiexp_matmul_gives_the_very_ciphertexts_of_the_simple_path(backend, keypair,
                                                                     window):
    """Shared squarings and window tables change nothing: the same integers mod n² as one
    powmod per term, with negative, zero and differently long exponents."""
    public_key, private_key = keypair
    rng = np.random.default_rng(5)
    encrypted = private_key.encrypt(Fixed.from_ints(
        rng.integers(-1000, 1000, size=(3, 6)).astype(object), 4))
    weights = np.array([[int(v) for v in row] for row in rng.integers(-2 ** 40, 2 ** 40,
                                                                      size=(6, 4))], dtype=object)
    weights[0, 0], weights[1, :] = 0, 0
    weights[2, 1] = -(1 << 120) + 12345
    fixed = Fixed(weights, 7)
    simple = encrypted @ fixed
    for method in kernels.MULTIEXP_METHODS:  # w-NAF (the default) and fixed windows
        fast = kernels.encrypted_matmul(encrypted, fixed, window=window, method=method)
        assert fast.scale == simple.scale
        assert all(int(a) == int(b) for a, b in zip(fast.ciphertexts.ravel(),
                                                    simple.ciphertexts.ravel()))


def test_crt_parts_encrypt_exactly_like_the_textbook_with_the_matching_r(backend, keypair):
    """Drawing (s_p, s_q) instead of r is drawing r: for s_p = r^q mod p, s_q = r^p mod q the
    key owner's ciphertext is the textbook (1 + m·n)·r^n mod n²."""
    public_key, private_key = keypair
    constants = private_key.crt_constants()
    for m in (0, 1, public_key.n - 1, 123456789):
        r = int(public_key.random_r())
        parts = pow(r, private_key.q, private_key.p), pow(r, private_key.p, private_key.q)
        assert (int(private_key.crt_encrypt_parts(m, *parts, constants))
                == int(public_key.raw_encrypt(m, r)))
    ciphertext = private_key.raw_encrypt(77)
    assert private_key.raw_decrypt(ciphertext) == 77


def test_two_workers_compute_the_same_integers_as_this_process(keypair, two_workers,
                                                              monkeypatch):
    """With the randomness fixed, encryption (key owner, public key with textbook and DJN
    randomness), decryption and the matmul give identical integers in this process and on a
    2-process executor."""
    public_key, private_key = keypair
    rng = np.random.default_rng(7)
    values = Fixed.from_ints(rng.integers(-10 ** 6, 10 ** 6, size=(5, 3)).astype(object), 2)
    weights = Fixed.from_ints(rng.integers(-2 ** 50, 2 ** 50, size=(3, 4)).astype(object), 0)
    draws = {"parts": [private_key.random_crt_parts() for _ in range(15)],
             "exponents": [private_key.random_subgroup_exponents() for _ in range(15)],
             "r": [public_key.random_r() for _ in range(15)],
             "alpha": [public_key.random_djn_exponent() for _ in range(15)]}

    def replay(name):
        items = iter(draws[name])
        return lambda: next(items)

    results = []
    for executor in (None, two_workers):
        monkeypatch.setattr(private_key, "random_crt_parts", replay("parts"))
        monkeypatch.setattr(private_key, "random_subgroup_exponents", replay("exponents"))
        monkeypatch.setattr(public_key, "random_r", replay("r"))
        monkeypatch.setattr(public_key, "random_djn_exponent", replay("alpha"))
        owner = kernels.encrypt_array(private_key, values, executor=executor)
        textbook = kernels.encrypt_array(public_key, values, executor=executor,
                                         randomness="textbook")
        djn = kernels.encrypt_array(public_key, values, executor=executor, randomness="djn")
        product = kernels.encrypted_matmul(owner, weights, executor=executor)
        results.append([owner.ciphertexts, textbook.ciphertexts, djn.ciphertexts,
                        product.ciphertexts,
                        kernels.decrypt_residues(private_key, product, executor=executor)])
        for encrypted in (owner, textbook, djn):
            assert private_key.decrypt(encrypted) == values
    for serial, parallel in zip(*results):
        assert [int(v) for v in serial.ravel()] == [int(v) for v in parallel.ravel()]


# -- the protocol, packed --------------------------------------------------------------------
@pytest.fixture(scope="module")
def packed_and_unpacked(keypair):
    """A packed and an unpacked run, and the packed run's transcript (its payloads, as JSON)."""
    train_set, test_set = small_split(120)
    transcript = io.StringIO()
    packed = acml.train(train_set, test_set, config(packing=True), keypair=keypair,
                        transcript=transcript)
    unpacked = acml.train(train_set, test_set, config(packing=False), keypair=keypair)
    return packed, unpacked, [json.loads(line) for line in transcript.getvalue().splitlines()]


def test_training_with_and_without_packing_gives_bit_identical_weights(packed_and_unpacked):
    """The layout never touches the true W: W_B + ε_acc is the same integers, the layers above
    the same floats, the predictions the same, packed or not."""
    packed, unpacked, _ = packed_and_unpacked
    assert packed.label_party.public.packing is not None
    assert unpacked.label_party.public.packing is None
    assert_same_model(packed, unpacked)
    assert packed.metrics["test_accuracy"] == unpacked.metrics["test_accuracy"]


def test_packing_divides_the_exponentiations_of_steps_1_and_4_by_the_slot_count(
        packed_and_unpacked):
    """Step 4 needs n·⌈d/k⌉·h ciphertext powers instead of n·d·h, step 1 ⌈m/k⌉·d·h per batch
    instead of m·d·h; and far fewer values travel."""
    packed, unpacked, _ = packed_and_unpacked
    layout = packed.label_party.public.packing
    n, d = packed.data_party.n_samples, packed.data_party.n_features
    h, epochs = packed.label_party.layer_sizes[1], packed.metrics["epochs"]
    batches = [len(rows) for rows in nn.minibatches(n, 16, seed=0, epoch=0)]
    assert unpacked.channel.step_ops["4"]["mul_const"] == epochs * n * d * h
    assert packed.channel.step_ops["4"]["mul_const"] == (
        epochs * n * layout.backward.groups(d) * h)
    assert packed.channel.step_ops["1"]["mul_const"] == (
        epochs * sum(layout.forward.groups(m) for m in batches) * d * h)
    assert packed.metrics["bytes"] < unpacked.metrics["bytes"]


def test_packed_messages_declare_masks_over_what_the_receiver_can_read(packed_and_unpacked):
    """To the key owner, B's mask covers the WHOLE packed plaintext (k slots) with σ to spare;
    to B, A's ε_A hides each slot's gradient by σ bits; the layout itself is public."""
    packed, _, transcript = packed_and_unpacked
    channel, layout = packed.channel, packed.label_party.public.packing
    plan = packed.data_party.plan
    to_data = [m for m in channel.view("data") if m.kind == "ciphertext"]
    assert to_data
    for message in to_data:
        assert message.mask_bits >= message.value_bits + channel.sigma
    gradient = next(m for m in to_data if m.name == "[[Xᵀδ + ε_B']]")
    assert gradient.value_bits == layout.backward.packed_bits(plan.gradient_bits(16))
    doubly = next(m for m in channel.view("label") if m.name == "Xᵀδ + ε_B' + ε_A")
    assert doubly.mask_bits >= doubly.value_bits + channel.sigma
    assert layout.backward.slot_bits >= plan.gradient_mask_bits(16) + 2
    layout_message = next(m for m in channel.view("data") if m.name == "packing layout")
    assert layout_message.kind == "public"
    sent = next(line for line in transcript if line["name"] == "packing layout")
    assert sent["payload"] == layout.to_dict()
    assert packed.data_party.public.packing == layout  # the data party derived the same


@pytest.mark.parametrize("bits", [384, 512, 1024, 2048])
def test_layout_slots_fit_their_proven_bounds_and_the_key(bits):
    """Slot widths follow the bounds (z: x·W bits + log d + headroom + sign; step 4: gradient
    mask + 2); the slot counts keep the packed value below n/3 and under B's wide mask with σ
    bits to spare. 2048-bit keys pack 19 rows and 20 features per plaintext."""
    public_key = paillier.PublicKey(_fake_modulus(bits))
    plan, d, batch = FixedPointPlan(), 30, 64
    layout = packing_layout(plan, public_key, batch, d, 0.1)
    x_bits = plan.x_int_bits + plan.x_frac_bits
    assert layout.forward.slot_bits == (x_bits + 5 + plan.weight_bits
                                        + PACKING_HEADROOM_BITS + 1)
    assert layout.backward.slot_bits == plan.gradient_mask_bits(batch) + 2
    max_int_bits = public_key.max_int.bit_length()
    wide = wide_mask_bits(public_key)
    for slots, value_bits in ((layout.forward, None), (layout.backward, plan.gradient_bits(batch))):
        assert slots.packed_bits(slots.slot_bits - 1) < max_int_bits
        if value_bits is not None:
            assert slots.packed_bits(value_bits) + plan.sigma <= wide
    if bits == 2048:
        assert (layout.forward.slots, layout.backward.slots) == (19, 20)
    if bits == 1024:
        assert (layout.forward.slots, layout.backward.slots) == (9, 10)


def _fake_modulus(bits):
    """An odd number of exactly `bits` bits: the layout reads only n's size."""
    return (1 << (bits - 1)) | 1


def test_step_1_refuses_when_the_proven_weight_bound_outgrows_the_slots(keypair):
    """If B can no longer prove |z| fits a slot, step 1 raises OverflowError before computing
    anything, rather than let a slot wrap into its neighbour."""
    train_set, _ = small_split(32)
    data_party = DataParty(train_set.X, keypair=keypair, init_seed=0)
    label_party = LabelParty(train_set.y, (train_set.X.shape[1], 3, 1), batch_size=16, allow_insecure=True)
    channel = Channel(data_party=data_party, label_party=label_party)
    public = protocol.setup(channel)
    assert public.packing is not None
    rows = np.arange(16)
    protocol.step1_forward_interactive(channel, public, rows)  # fits
    label_party.weight_bound <<= PACKING_HEADROOM_BITS + 1
    sent = len(channel.messages)
    with pytest.raises(OverflowError, match="no longer fits"):
        protocol.step1_forward_interactive(channel, public, rows)
    # refused before anything was computed for the data party: no [[X·W_B + ε_B]] went out
    assert [m.name for m in channel.messages[sent:]] == ["[[X_batch]]"]


def test_label_party_weight_bound_grows_by_its_formula_and_bounds_w(keypair):
    """After every step 4, B's bound grows by η·2**(x bits)·max_j Σ_r |δ_rj| (what B alone can
    compute) and stays above the true |W_int| — here with |W| pushed beyond the plan's bound
    (unpacked, so that the slot check does not stop the run first)."""
    train_set, _ = small_split(48)
    plan = FixedPointPlan(weight_int_bits=1)  # |W0| < 2: W soon outgrows it
    data_party = DataParty(train_set.X, plan=plan, keypair=keypair, init_seed=0)
    label_party = LabelParty(train_set.y, (train_set.X.shape[1], 3, 1), lr=3.0,
                             batch_size=12, plan=plan, packing=False, allow_insecure=True)
    channel = Channel(data_party=data_party, label_party=label_party)
    public = protocol.setup(channel)
    assert public.packing is None
    bound = 1 << plan.weight_bits
    assert label_party.weight_bound == bound
    x_bits = plan.x_int_bits + plan.x_frac_bits
    for epoch in range(3):
        for rows in public.batches(epoch):
            protocol.step1_forward_interactive(channel, public, rows)
            protocol.step2_forward_rest(channel, rows)
            protocol.step3_backward_rest(channel)
            delta = label_party.delta  # δ at its fixed-point scale, which step 4 consumes
            protocol.step4_backward_interactive(channel, public, rows)
            bound += (label_party.lr_int << x_bits) * max(
                sum(abs(int(v)) for v in column) for column in delta.values.T)
            assert label_party.weight_bound == bound
            weight = (label_party.weight_share + data_party.noise_acc).values
            assert max(abs(int(v)) for v in weight.ravel()) <= bound
    assert max(abs(int(v)) for v in weight.ravel()) >= 1 << plan.weight_bits


def test_data_party_refuses_a_packing_layout_it_does_not_derive(keypair, monkeypatch):
    """The layout is public and checked: A re-derives it and refuses one that differs."""
    train_set, _ = small_split(32)
    real = plan_module.packing_layout
    calls = []

    def proposes_more_slots(*arguments):
        layout = real(*arguments)
        calls.append(layout)
        if len(calls) == 1:  # the label party's proposal
            return PackingLayout(Slots(layout.forward.slot_bits, layout.forward.slots + 1),
                                 layout.backward, layout.feature_bits)
        return layout

    monkeypatch.setattr(plan_module, "packing_layout", proposes_more_slots)
    data_party = DataParty(train_set.X, keypair=keypair, init_seed=0)
    label_party = LabelParty(train_set.y, (train_set.X.shape[1], 3, 1), batch_size=16, allow_insecure=True)
    with pytest.raises(ValueError, match="packing layout"):
        protocol.setup(Channel(data_party=data_party, label_party=label_party))
    assert len(calls) == 2  # the label party proposed, the data party derived and refused


def test_two_workers_train_exactly_like_one_process(keypair, two_workers):
    """A 2-process executor changes where the exponentiations run, nothing else: the same W,
    the same layers above, the same predictions."""
    train_set, test_set = small_split(64, "wine")
    runs = [acml.train(train_set, test_set, config(hidden=(3,), epochs=1), keypair=keypair,
                       executor=executor) for executor in (None, two_workers)]
    assert_same_model(*runs)
    assert runs[0].metrics["test_accuracy"] == runs[1].metrics["test_accuracy"]


def test_cli_no_packing_and_workers_options_train_the_same_model(tmp_path):
    """`--no-packing` and `--workers 2` are accepted and report the same test accuracy and
    weight gap as the default run (the same seed gives the same W)."""
    import json
    reports = []
    for extra in ([], ["--no-packing"], ["--workers", "2"]):
        path = tmp_path / f"report{len(reports)}.json"
        code = acml.main(["train", "--dataset", "wine", "--hidden", "3", "--epochs", "1",
                          "--key-bits", "384", "--insecure-small-key", "--quiet",
                          "--init-seed", "0", "--json", str(path), *extra])
        assert code == 0
        reports.append(json.loads(path.read_text()))
    for report in reports[1:]:
        assert report["test_accuracy"] == reports[0]["test_accuracy"]
        assert report["max_abs_weight_diff"] == reports[0]["max_abs_weight_diff"]
    assert math.isfinite(reports[0]["max_abs_weight_diff"])
