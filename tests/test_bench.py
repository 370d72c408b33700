"""`python acml.py bench --quick` runs end to end and writes the promised JSON. Structure only:
no test here asserts a timing."""

import json

import pytest

import acml

OPERATIONS = ("keygen", "encrypt", "decrypt", "mul_const", "matmul_per_term")
WAYS = ("packed", "packed_workers", "unpacked", "plaintext", "phe")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert acml.main(["bench", "--quick", "--workers", "2", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_quick_bench_json_has_primitives_for_every_key_size_ours_and_phe(quick_report):
    """Every primitive at every key size carries our time, phe's time and their ratio."""
    assert set(quick_report["primitives"]) == {str(b) for b in quick_report["config"]["key_bits"]}
    for rows in quick_report["primitives"].values():
        for operation in OPERATIONS:
            row = rows[operation]
            assert row["acml"] > 0 and row["phe"] > 0
            assert row["ratio"] == pytest.approx(row["phe"] / row["acml"])
        assert rows["matmul_per_term"]["acml_simple"] > 0
        assert rows["matmul_per_term"]["acml_workers"] > 0


def test_quick_bench_json_has_one_epoch_four_ways_with_steps_and_operations(quick_report):
    """Packed (also on workers), unpacked, plaintext and the phe peer, each with rows, seconds
    and seconds per sample; the protocol runs with time and operation counts per step."""
    epochs = quick_report["epochs"]
    assert set(epochs) == set(WAYS)
    for way in WAYS:
        assert epochs[way]["rows"] > 0 and epochs[way]["seconds"] >= 0
        assert epochs[way]["per_sample"] == pytest.approx(epochs[way]["seconds"]
                                                          / epochs[way]["rows"])
    for way in ("packed", "packed_workers", "unpacked", "phe"):
        assert {"1", "2", "3", "4"} <= set(epochs[way]["step_seconds"])
        assert epochs[way]["step_ops"]["1"]["mul_const"] > 0
        assert epochs[way]["step_ops"]["4"]["mul_const"] > 0


def test_quick_bench_operation_counts_show_packing_and_a_faithful_peer(quick_report):
    """Packed epochs need fewer exponentiations than unpacked ones, and the phe peer does per
    sample exactly the products of the unpacked protocol (d·h per row in steps 1 and 4)."""
    epochs = quick_report["epochs"]
    for step in ("1", "4"):
        packed = epochs["packed"]["step_ops"][step]["mul_const"]
        unpacked = epochs["unpacked"]["step_ops"][step]["mul_const"]
        assert packed < unpacked
        assert epochs["packed_workers"]["step_ops"][step] == epochs["packed"]["step_ops"][step]
        assert (epochs["phe"]["step_ops"][step]["mul_const"] / epochs["phe"]["rows"]
                == unpacked / epochs["unpacked"]["rows"])


def test_quick_bench_json_reports_ratios_against_targets_and_the_kernel_profile(quick_report):
    """Each target ratio is reported with its target and whether this run met it; the profile
    gives the kernels' share of the packed run."""
    ratios = quick_report["ratios"]
    for name in ("key_owner_encrypt_vs_phe", "matmul_vs_phe", "packed_vs_unpacked",
                 "epoch_vs_phe_per_sample", "workers_vs_one"):
        assert ratios[name]["reached"] > 0
        assert ratios[name]["met"] == (ratios[name]["reached"] >= ratios[name]["target"])
    profile = quick_report["profile"]
    assert 0 < profile["kernel_fraction"] <= 1
    assert set(profile["kernel_seconds"]) == {"multiexp", "crt_encrypt", "randomizers",
                                              "crt_decrypt"}


def test_quick_bench_json_compares_djn_and_textbook_randomizers(quick_report):
    """Every key size reports r^n and DJN randomizer times, their ratio, the table's build
    time, and a pool's offline and online seconds per encryption."""
    for rows in quick_report["primitives"].values():
        randomizer = rows["randomizer"]
        assert randomizer["textbook"] > 0 and randomizer["djn"] > 0
        assert randomizer["ratio"] == pytest.approx(randomizer["textbook"] / randomizer["djn"])
        assert randomizer["table_build"] > 0
        assert randomizer["pool_offline"] > 0 and randomizer["pool_online"] > 0
