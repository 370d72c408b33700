"""The protocol's own leaks: each attack succeeds on the unmitigated real protocol and fails with
its mitigation on (where there is one); keys that are not keys refused."""

import warnings
from dataclasses import replace

import numpy as np
import pytest

from attacks import audit
from attacks import own_leaks
from attacks import leaks
import paillier
import protocol
from channel import Channel, LeakageError
from parties import DataParty, LabelParty

KEY_BITS = 256


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return paillier.generate_keypair(KEY_BITS, allow_insecure=True)


def run(keypair, scenario, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return audit.simulate(scenario, keypair=keypair, **kwargs)


SMALL_GRAM = replace(own_leaks.GRAM, epochs=6, test_rows=0)


def test_l1_gram_attack_succeeds_unmitigated_and_is_underdetermined_early(keypair):
    result = run(keypair, SMALL_GRAM)
    early = own_leaks.attack_gram(result, 4)  # 48·8·3 = 1152 < 1176 unknowns
    assert not early["determined"] and early["relative_error"] is None
    full = own_leaks.attack_gram(result, 6)
    assert full["determined"] and full["relative_error"] < 1e-6
    assert full["r2_of_X"] > 0.999
    assert len(result.findings()) == 0  # invisible to every check


def test_l1_column_space_attack_reads_x_from_two_epochs_of_the_real_protocol(keypair):
    """Protects the L1 claim on what the protocol really reveals: from the label party's own
    diary (z, b per batch) after 2 epochs, d + 2 known rows give every other row of X with
    R² > 0.99, X·Xᵀ comes out without any known row, and one epoch is reported undetermined."""
    result = run(keypair, replace(SMALL_GRAM, epochs=2))
    one = own_leaks.attack_column_space(result, 1)
    assert not one["determined"] and one["gram_relative_error_without_known_rows"] is None
    two = own_leaks.attack_column_space(result, 2)
    assert two["determined"] and two["known_rows"] == result.data_party.n_features + 2
    assert two["r2_of_X"] > 0.99
    assert two["gram_relative_error_without_known_rows"] < 1e-6
    assert len(result.findings()) == 0


def test_l2_selecting_label_party_reads_x_exactly_unseen(keypair):
    scenario = replace(own_leaks.EXACT, epochs=2)
    honest = run(keypair, scenario)
    deviant = run(keypair, scenario, label_party_class=own_leaks.SelectingLabelParty)
    X = deviant.data_party.features.values
    exact = sum(v == int(X[k]) for k, v in deviant.label_party.read.items())
    assert exact / X.size > 0.45  # 2 epochs: 6 batches × 8 of 30 features
    assert np.array_equal(deviant.truth["W_final"], honest.truth["W_final"])
    assert len(deviant.findings()) == 0


def _l3(keypair, mask_range):
    result = run(keypair, replace(own_leaks.PREDICT, mask_range=mask_range),
                 data_party_class=own_leaks.MultiplierDataParty,
                 data={"multipliers": own_leaks.L3_CHAIN, "target_features": (0,)})
    result.data_party.set_rows_to_predict(np.zeros((1, result.data_party.n_features)))
    try:
        protocol.predict(result.channel, result.data_party.public)
    except OverflowError:
        pass  # the label party decodes garbage: too late, A already decrypted
    share = result.label_party.weight_share.values
    hits = [v == int(share[k]) for k, v in result.data_party.recovered.items()]
    return sum(hits) / len(hits)


def test_l3_multiplier_chain_reads_w_b_through_interval_masks(keypair):
    assert _l3(keypair, "interval") == 1.0


def test_l3_fails_with_masks_uniform_mod_n(keypair):
    assert _l3(keypair, "mod_n") == 0.0


def test_l4_labels_from_input_gradient(keypair):
    scenario = replace(audit.GRADIENTS, rows=128, epochs=1)
    result = run(keypair, scenario)
    view = leaks.DataPartyView(len(result.truth["y"]), [e["rows"] for e in result.diary["data"]],
                               [e["input_gradient"] for e in result.diary["data"]])
    assert leaks.separation_auc(result.truth["y"], leaks.label_attack(view)) > 0.9
    without = run(keypair, replace(scenario, bottom=None))
    assert not without.data_party.input_gradients_received  # mitigation: nothing to attack


def test_masks_mod_n_are_uniform_residues_and_training_stays_exact(keypair):
    result = run(keypair, replace(own_leaks.EXACT, rows=32, epochs=1))
    seen = [int(v) for m in result.channel.messages if m.name == "[[X·W_B + ε_B]]"
            for v in result.data_party.private_key.decrypt_residues(m.payload).ravel()]
    n = keypair[0].n
    middle = sum((n - 1) // 3 < v < n - (n - 1) // 3 for v in seen) / len(seen)
    assert 0.2 < middle < 0.47  # uniform mod n: about a third in the band no signed value uses
    honest = run(keypair, replace(own_leaks.EXACT, rows=32, epochs=1, mask_range="interval"))
    assert np.array_equal(result.truth["W_final"], honest.truth["W_final"])


class ExtraRowsDataParty(DataParty):
    def encrypt_rows_to_predict(self):
        encrypted = super().encrypt_rows_to_predict()
        return paillier.EncryptedArray(encrypted.public_key,
                                       np.concatenate([encrypted.ciphertexts] * 2),
                                       encrypted.scale)


def test_prediction_message_with_extra_rows_is_refused(keypair):
    result = run(keypair, replace(own_leaks.PREDICT, rows=32), data_party_class=ExtraRowsDataParty)
    result.data_party.set_rows_to_predict(np.zeros((3, result.data_party.n_features)))
    strict = Channel(data_party=result.data_party, label_party=result.label_party)
    with pytest.raises(LeakageError, match="shape"):
        protocol.predict(strict, result.data_party.public)
    with pytest.raises(ValueError, match="shape"):  # and the label party itself checks it
        result.label_party.expect_prediction(3)
        result.label_party.keep_batch_inputs(result.data_party.encrypt_rows_to_predict())


def test_label_party_refuses_keys_that_are_not_keys(keypair):
    y = np.array([0, 1, 0, 1])
    label = LabelParty(y, (2, 2, 1), allow_insecure=True)
    with pytest.raises(ValueError, match="below the hard floor of 128 bits"):
        label.accept_public_key(paillier.PublicKey(15), "new")  # n = 15 is no key at all
    with pytest.raises(ValueError, match="1024"):
        LabelParty(y, (2, 2, 1)).accept_public_key(keypair[0], "new")
    label.accept_public_key(keypair[0], "new")  # a test key, with the flag


def test_own_leaks_table_quick(keypair):
    auditor = own_leaks.OwnLeakAuditor(keypair, quick=True)
    rows = [auditor.multipliers(), auditor.labels()]
    text = own_leaks.format_own_leaks(rows)
    assert "L3" in text and "malicious" in text and "semi-honest" in text
    assert all(row.succeeds for row in rows)
    assert rows[0].mitigated_fails


def test_l5_prediction_gives_the_label_party_the_predicted_rows(keypair):
    """Protects the L5 claim: after a real run that trains 2 epochs and predicts, the label
    party's own z of the predicted rows gives X_new with R² > 0.99 from d + 2 known predicted
    rows, and from its training view alone (L1's X, then W) as well; the audit's row says so."""
    row = own_leaks.OwnLeakAuditor(keypair).prediction()
    assert row.leak == "L5" and row.party == "label" and row.model == own_leaks.SEMI_HONEST
    assert row.succeeds and row.value > 0.99
    assert row.details["known_predicted_rows"] == 10  # d + 2, d = 8
    assert row.details["r2_from_training_view"] > 0.99
    assert row.details["r2_from_exported_W"] > 0.99
    assert row.details["channel_findings"] == 0
    assert "L5" in own_leaks.format_own_leaks([row])
