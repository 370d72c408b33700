"""Step 4b (the data party's bottom model), and the six known flaws: each re-created behind an
insecure switch, caught by a check, and attacked — the attack succeeds on the flawed variant and
fails on the real protocol. Small keys (through the explicit insecure flag) keep it fast."""

import json
import random
import types
import warnings

import numpy as np
import pytest
from conftest import insecure_keypair

import acml
from attacks import audit
import nn
import protocol
from channel import Channel, LeakageError, MaskSource
from attacks.flaws import SECURE, InsecureFlaws, InsecureFlawWarning, party_classes
from parties import BottomModel, DataParty, LabelParty
from plan import wide_mask_bits

KEY_BITS = 256


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def rows_of(name, n_rows, seed=0):
    return audit.load_rows(audit.Scenario(name, rows=n_rows, hidden=(4,), batch_size=16,
                                          seed=seed))[:2]


def make_parties(X, y, keypair, *, hidden=4, batch_size=16, bottom=None, flaws=SECURE,
                 packing=True, **sources):
    out = 1 if y.max() == 1 else int(y.max()) + 1
    sizes = (X.shape[1] if bottom is None else bottom[0], hidden, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureFlawWarning)
        data_class, label_class = party_classes(flaws)
        data_party = data_class(X, keypair=keypair, init_seed=0, bottom=bottom,
                                mask_source=sources.get("data_source"))
        label_party = label_class(y, sizes, batch_size=batch_size, seed=0, packing=packing,
                                  mask_source=sources.get("label_source"), allow_insecure=True,
                                  allow_bottom=bottom is not None)
    return data_party, label_party


def parties(X, y, keypair, *, mode="raise", **options):
    """Both parties and the checked channel between them (every payload kept)."""
    data_party, label_party = make_parties(X, y, keypair, **options)
    channel = Channel(data_party=data_party, label_party=label_party, mode=mode,
                      keep_payloads=True)
    return data_party, label_party, channel


# ----------------------------------------------------------------------------------------------
# Part A — step 4b: an optional bottom model at the data party
# ----------------------------------------------------------------------------------------------
def test_step4b_input_gradient_is_exactly_delta_times_w_transpose(keypair):
    """4b gives the data party δ_int·W_intᵀ exactly (scale δ + W) for the W of the forward pass,
    i.e. the plaintext δ·Wᵀ within the quantisation of δ; [[α]] is encrypted afresh every batch."""
    X, y = rows_of("breast_cancer", 32)
    data_party, label_party, channel = parties(X, y, keypair, bottom=(6, "relu"))
    public = protocol.setup(channel)
    rows = np.arange(16)
    for _ in range(2):  # the same rows twice: α's ciphertexts must differ (fresh r, no cache)
        weight = label_party.weight_share + data_party.noise_acc  # diagnostic: nobody holds W
        protocol.step1_forward_interactive(channel, public, rows)
        protocol.step2_forward_rest(channel, rows)
        protocol.step3_backward_rest(channel)
        delta = label_party.delta  # δ at its fixed-point scale: the label party's own
        bottom_before = data_party.bottom.layer.W.copy()
        protocol.step4b_input_gradient(channel, public, len(rows))
        sent = channel.messages[-1]
        assert sent.name == "[[δ·Wᵀ]]"
        gradient = data_party.private_key.decrypt(sent.payload)  # what the data party reads
        assert gradient.scale == delta.scale + weight.scale
        assert np.array_equal(gradient.values, (delta @ weight.T).values)
        plain = delta.decode() @ weight.decode().T
        assert np.abs(gradient.decode() - plain).max() < 1e-12
        assert not np.array_equal(data_party.bottom.layer.W, bottom_before)  # it stepped
        # 4b leaves the shares of the forward pass untouched for step 4
        assert np.array_equal((label_party.weight_share + data_party.noise_acc).values,
                              weight.values)
        protocol.step4_backward_interactive(channel, public, rows)
    first, second = (m.payload for m in channel.view("label") if m.name == "[[α]]")
    assert not set(map(int, first.ciphertexts.ravel())) & set(map(int, second.ciphertexts.ravel()))
    assert not any(m.name == "[[X]]" for m in channel.messages)


def test_bottom_model_run_matches_a_plaintext_composite_within_quantisation(keypair):
    """A run with a bottom model equals, within fixed-point quantisation, the plain MLP
    d → k → h → 1 (nn's own backprop) started from the same weights and fed the same batches;
    acml.train's composite twin agrees too, and every test prediction is the same."""
    train_set, test_set = acml.prepare(_subset("breast_cancer", 96), test_fraction=0.25)
    cfg = acml.Config(hidden=(4,), activation="relu", lr=0.1, epochs=2, batch_size=16,
                      key_bits=KEY_BITS, allow_insecure=True, bottom=(5, "relu"), seed=0,
                      init_seed=0)
    result = acml.train(train_set, test_set, cfg, keypair=keypair)
    assert result.metrics["max_abs_weight_diff"] < 1e-6
    assert result.metrics["prediction_agreement"] == 1.0
    assert result.metrics["bottom_width"] == 5

    reference = nn.MLP((train_set.X.shape[1], 5, 4, 1), seed=0)
    bottom0 = BottomModel(train_set.X.shape[1], 5, "relu", seed=0)
    top0 = nn.MLP((5, 4, 1), seed=0)
    reference.layers[0].W[...], reference.layers[0].b[...] = bottom0.layer.W, bottom0.layer.b
    for mine, theirs in zip(reference.layers[1:], top0.layers):
        mine.W[...], mine.b[...] = theirs.W, theirs.b
    nn.train_plaintext(reference, train_set.X, train_set.y, epochs=2, batch_size=16,
                       lr=cfg.plan.snap_lr(cfg.lr), seed=0)
    bottom = result.data_party.bottom.layer
    joint = acml.joint_first_layer(result.data_party, result.label_party)
    pairs = [(bottom.W, reference.layers[0].W), (bottom.b, reference.layers[0].b),
             (joint, reference.layers[1].W)]
    for mine, theirs in zip(result.label_party.model.layers, reference.layers[1:]):
        pairs.append((mine.b, theirs.b))
        if mine.W is not None:
            pairs.append((mine.W, theirs.W))
    assert max(np.abs(a - b).max() for a, b in pairs) < 1e-6


def test_step4b_declares_the_label_leak_and_is_not_flagged(keypair):
    """The 4b reply is a ciphertext to the key owner declared revealed with a reason that names
    the label leak, so the channel report shows it; the real run with a bottom model passes
    every check (strict channel, transcript audit) with no finding."""
    X, y = rows_of("breast_cancer", 32)
    data_party, label_party, channel = parties(X, y, keypair, bottom=(4, "tanh"))
    protocol.train_epoch(channel, protocol.setup(channel), 0)
    row = next(r for r in channel.report() if r["name"] == "[[δ·Wᵀ]]")
    assert (row["kind"], row["sender"], row["receiver"], row["count"]) == (
        "ciphertext", "label", "data", 2)
    assert "LABEL" in row["learned"] and "revealed by design" in row["learned"]
    assert audit.audit_transcript(channel.messages, keypair[0],
                                  private_key=data_party.private_key) == []


def test_bottom_model_can_be_given_as_an_nn_layer(keypair):
    """bottom= also takes an nn.Dense (identity activation) or (nn.Dense, activation), used as
    it is; a layer of the wrong input width is a clear error."""
    X, _ = rows_of("wine", 16)
    layer = nn.Dense(X.shape[1], 3, rng=np.random.default_rng(7))
    data_party = DataParty(X, keypair=keypair, bottom=(layer, "tanh"))
    assert data_party.bottom.layer is layer and data_party.n_inputs == 3
    assert np.allclose(data_party.bottom.forward(X), np.tanh(X @ layer.W + layer.b))
    identity = DataParty(X, keypair=keypair, bottom=layer).bottom
    assert identity.activation_name == "identity"
    with pytest.raises(ValueError, match="takes 5 features"):
        DataParty(X, keypair=keypair, bottom=nn.Dense(5, 3, rng=np.random.default_rng()))


def test_cli_train_with_bottom_option(tmp_path):
    """`acml.py train --bottom K` runs steps 1–4b and matches its plaintext composite."""
    report = tmp_path / "report.json"
    code = acml.main(["train", "--dataset", "wine", "--hidden", "3", "--bottom", "4",
                      "--epochs", "1", "--batch-size", "64", "--key-bits", str(KEY_BITS),
                      "--insecure-small-key", "--quiet", "--json", str(report)])
    assert code == 0
    metrics = json.loads(report.read_text())
    assert metrics["bottom_width"] == 4 and metrics["layer_sizes"][0] == 4
    assert metrics["max_abs_weight_diff"] < 1e-5
    assert any(row["name"] == "[[δ·Wᵀ]]" for row in metrics["leakage"])


def _subset(name, n_rows):
    from jobs import data
    dataset = data.load_builtin(name)
    keep = np.sort(np.random.default_rng(0).permutation(len(dataset.y))[:n_rows])
    return data.Dataset(dataset.X[keep], dataset.y[keep], dataset.ids[keep],
                        dataset.feature_names, dataset.class_names, name)


# ----------------------------------------------------------------------------------------------
# Part B — the switches, the checks, the attacks
# ----------------------------------------------------------------------------------------------
def test_flaw_switches_are_off_by_default_and_loud_when_on(keypair):
    """No flaw by default, masks from secrets; each switch warns with InsecureFlawWarning, and
    a bad switch value is a clear error."""
    assert InsecureFlaws().enabled() == ()
    X, y = rows_of("wine", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = DataParty(X, keypair=keypair)
    assert default.flaws == ()
    assert isinstance(default.mask_source.generator, random.SystemRandom)
    for name in audit.FLAW_NAMES:
        flaws = InsecureFlaws(**{name: "normal" if name == "weak_masks" else True})
        assert flaws.enabled() == (name,)
        with pytest.warns(InsecureFlawWarning, match=f"INSECURE.*{name}"):
            party_classes(flaws)[1](y, (X.shape[1], 2, 3), allow_insecure=True)
    with pytest.raises(ValueError, match="weak_masks"):
        InsecureFlaws(weak_masks="tiny")
    with pytest.raises(TypeError, match="zero_initial_noise"):
        InsecureFlaws(zero_initial_noise="yes")


def test_every_mask_goes_through_the_party_mask_source(keypair):
    """The mask hook: a party built with its own MaskSource draws ε_acc, ε_A (data) and ε_B,
    ε_B' (label) from it, each as wide as the plan asks."""
    class CountingSource(MaskSource):
        def __init__(self):
            super().__init__()
            self.requests = []

        def _draw(self, shape, bits, scale):
            self.requests.append((tuple(shape), bits))
            return super()._draw(shape, bits, scale)

        def residues(self, shape, n, bits, scale=0):
            self.requests.append((tuple(shape), bits))
            return super().residues(shape, n, bits, scale)

    X, y = rows_of("wine", 16)
    data_source, label_source = CountingSource(), CountingSource()
    data_party = DataParty(X, keypair=keypair, init_seed=0, mask_source=data_source)
    label_party = LabelParty(y, (X.shape[1], 3, 3), batch_size=16, seed=0,
                             mask_source=label_source, packing=False, allow_insecure=True)  # one mask per value
    channel = Channel(data_party=data_party, label_party=label_party)
    public = protocol.setup(channel)
    assert public.packing is None
    protocol.train_batch(channel, public, np.arange(16))
    plan, wide = data_party.plan, wide_mask_bits(keypair[0])
    assert data_source.requests == [((13, 3), plan.noise_acc_bits()),
                                    ((13, 3), plan.gradient_mask_bits(16))]
    assert label_source.requests == [((16, 3), wide), ((13, 3), wide)]


@pytest.mark.parametrize("flaw,switch", [
    ("no_paillier_randomness", True), ("zero_initial_noise", True), ("weak_masks", "uniform1024"),
    ("public_exponents", True), ("seeded_mask_rng", True)])
def test_strict_channel_refuses_each_flawed_variant(keypair, flaw, switch):
    """In its default mode the channel stops a flawed run — as it opens (a party's mask source)
    or at setup — with a LeakageError that names the flaw (flaw 6 has its own test, below)."""
    X, y = rows_of("wine", 16)
    data_party, label_party = make_parties(X, y, keypair, flaws=InsecureFlaws(**{flaw: switch}))
    with pytest.raises(LeakageError, match=f"flaw: {flaw}"):
        protocol.setup(Channel(data_party=data_party, label_party=label_party))


def test_strict_channel_refuses_an_undeclared_input_gradient(keypair):
    """Flaw 6: the 4b reply sent with nothing declared is refused by the default channel."""
    X, y = rows_of("wine", 16)
    data_party, label_party, channel = parties(
        X, y, keypair, bottom=(3, "relu"), flaws=InsecureFlaws(plaintext_input_gradient=True))
    public = protocol.setup(channel)
    with pytest.raises(LeakageError, match="flaw: plaintext_input_gradient"):
        protocol.train_batch(channel, public, np.arange(16))


def test_reporting_channel_records_findings_and_delivers():
    """mode="report" collects each violation once (with a count) instead of raising, and still
    delivers the message to the receiver."""
    stubs = {party: types.SimpleNamespace(mask_source=MaskSource()) for party in ("data", "label")}
    channel = Channel(data_party=stubs["data"], label_party=stubs["label"], mode="report")
    delivered = []
    for _ in range(3):
        channel.send(1, "label", "data", "gradient", "revealed", make=lambda party: np.ones(2),
                     take=lambda party, value: delivered.append((party, value)), reason="test")
    assert len(delivered) == 3
    assert all(party is stubs["data"] and np.array_equal(value, np.ones(2))
               for party, value in delivered)
    assert len(channel.findings) == 1 and channel.findings[0].count == 3
    assert channel.findings[0].flaws == ("plaintext_input_gradient",)
    with pytest.raises(ValueError, match="mode"):
        Channel(data_party=stubs["data"], mode="quiet")


@pytest.fixture(scope="module")
def auditor(keypair):
    return audit.Auditor(keypair)


@pytest.fixture(scope="module")
def audits(auditor):
    return {name: getattr(auditor, name)() for name in audit.FLAW_NAMES}


def test_real_protocol_passes_every_check_with_zero_findings(auditor, audits):
    """Every real run of the audit (all scenarios, with and without a bottom model) goes through
    the channel's run-time checks and the transcript audit (with the data party's key) with no
    finding at all."""
    assert len(auditor._real) == 4
    for scenario, run in auditor._real.items():
        assert run.channel.findings == [], scenario
        assert run.findings() == [], scenario


@pytest.mark.parametrize("flaw", audit.FLAW_NAMES)
def test_each_flaw_is_caught_by_a_check_that_names_it(audits, flaw):
    """6/6 caught: a finding names the flaw, and the channel's run-time findings on the flawed
    run point at that flaw and no other."""
    row = audits[flaw]
    assert row.caught
    assert f"flaw: {flaw}" in row.check_message
    channel_flaws = {name for finding in row.flawed_run.channel.findings for name in finding.flaws}
    assert channel_flaws == {flaw}


@pytest.mark.parametrize("flaw", audit.FLAW_NAMES)
def test_each_attack_succeeds_on_its_flaw_and_fails_on_the_real_protocol(audits, flaw):
    """The attack clears its stated threshold on the flawed variant and does no better than a
    guess that never saw the view on the real protocol."""
    row = audits[flaw]
    assert row.succeeds_on_flawed, (row.flawed.value, row.threshold)
    assert row.fails_on_real, (row.real.value, row.threshold)


def test_flaw1_reads_x_exactly_and_exposes_digit_pictures(audits):
    """No randomness: X comes back at its fixed-point grid (error ≤ 2**−17), and the rows map
    back to 8×8 digit images beside their originals; on the real run the attacker has only 0."""
    row = audits["no_paillier_randomness"]
    assert row.flawed.details["max_abs_error"] <= 2.0 ** -17
    pictures = row.flawed_run.to_pixels(row.flawed.estimate).reshape(-1, 8, 8)
    originals = row.flawed_run.to_pixels(row.flawed.truth).reshape(-1, 8, 8)
    assert pictures.shape == (32, 8, 8) and np.abs(pictures - originals).max() < 1e-3
    assert np.all(row.real.estimate == 0.0)


def test_flaw2_recovers_the_first_batch_rows_only_when_h_covers_d(audits):
    """Zero ε_acc: z and the share W_B = W give back the first batch's rows of X (h = d = 64)."""
    row = audits["zero_initial_noise"]
    assert row.flawed.estimate.shape == (16, 64)
    assert row.flawed.details["max_abs_error"] < 1e-5
    assert row.real.value < 0.05


def test_flaw3_normal_masks_leak_too(audits):
    """Weak masks of either kind: N(0, 1) masks in z's units still let the data party regress
    X·W with R² > 0.9."""
    assert audits["weak_masks"].flawed.details["r2_with_normal_masks"] > 0.9


def test_flaw5_finds_the_label_party_seed(audits):
    """The seeded generator: the data party finds B's 16-bit seed and replays every mask."""
    row = audits["seeded_mask_rng"]
    assert row.flawed.details["seed_found"] == row.flawed.details["true_seed"]
    assert row.flawed.details["r2_of_W"] > 0.999999
    assert row.real.details["seed_found"] is None


def test_flaw6_declared_leak_is_measured_and_reported(audits):
    """The real protocol WITH a bottom model leaks the labels the same way (step 4b, declared):
    the audit measures it instead of hiding it."""
    row = audits["plaintext_input_gradient"]
    assert row.declared_leak is not None and row.declared_leak.value > 0.9
    assert "attack_on_real_with_bottom_model" in row.to_json()


def test_audit_cli_prints_the_table_and_writes_json(audits, monkeypatch, tmp_path, capsys):
    """`acml.py audit --json PATH`: one table row per flaw, the small-key note, and JSON with the
    flaws' rows (the promised keys) beside the protocol's own leaks (tests/attacks/test_own_leaks.py
    checks those rows); exit code 0 when every expectation holds."""
    from attacks import own_leaks
    rows = list(audits.values())
    monkeypatch.setattr(audit, "run_audit", lambda keypair=None, key_bits=0: rows)
    monkeypatch.setattr(own_leaks, "run_own_leaks", lambda keypair=None, key_bits=0, **_: [])
    path = tmp_path / "audit.json"
    assert acml.main(["audit", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "teaching demo" in out and "NOT secure" in out
    for name in audit.FLAW_NAMES:
        assert name in out
    report = json.loads(path.read_text())
    assert set(report) == {"flaws", "own_leaks"} and report["own_leaks"] == []
    records = report["flaws"]
    assert [r["flaw"] for r in records] == list(audit.FLAW_NAMES)
    for record in records:
        assert {"flaw", "caught", "attack_on_flawed", "attack_on_real",
                "attack_succeeds_on_flawed", "attack_fails_on_real"} <= set(record)
        assert record["caught"] and record["attack_succeeds_on_flawed"]
        assert record["attack_fails_on_real"]


def test_audit_cli_refuses_an_explicit_small_key_without_the_flag(capsys):
    """Bad input: an explicit --key-bits under 1024 needs --insecure-small-key; one line, exit 2."""
    assert acml.main(["audit", "--key-bits", "512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--insecure-small-key" in err[0]
