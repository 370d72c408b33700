"""`python acml.py bench --quick` runs end to end and writes the promised JSON. Structure only:
no test here asserts a timing."""

import contextlib
import io
import json

import pytest

import acml

OPERATIONS = ("keygen", "encrypt", "decrypt", "mul_const", "matmul_per_term")
WAYS = ("packed", "packed_workers", "packed_blocks", "unpacked", "plaintext", "phe")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The JSON and the printed table of one `bench --quick` run."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert acml.main(["bench", "--quick", "--workers", "2", "--json", str(path)]) == 0
    return json.loads(path.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def quick_report(quick_run):
    return quick_run[0]


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
    for way in ("packed", "packed_workers", "packed_blocks", "unpacked", "phe"):
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


def test_quick_bench_row_blocks_encrypt_nothing_in_the_epoch(quick_report):
    """The row-blocks epoch encrypts no batch input in step 1 (its blocks were encrypted in
    step 0), where the row-batches epoch does, with as many step-1 products or fewer."""
    epochs = quick_report["epochs"]
    assert epochs["packed"]["step_ops"]["1"].get("encrypt", 0) > 0
    blocks = epochs["packed_blocks"]["step_ops"]["1"]
    assert blocks.get("encrypt", 0) < epochs["packed"]["step_ops"]["1"]["encrypt"]
    assert epochs["packed_blocks"]["slots"]["forward"]["slots"] == 4


def test_quick_bench_reports_every_target_ratio_but_gives_no_verdict(quick_run):
    """Each target's measured ratio is in the JSON with its target and direction; a --quick
    smoke run judges none of them (met is null) and prints neither "met" nor "MISSED"."""
    report, printed = quick_run
    ratios = report["ratios"]
    for name in ("key_owner_encrypt_vs_phe", "matmul_vs_phe", "randomizer_djn_vs_textbook",
                 "packed_vs_unpacked", "epoch_vs_phe_per_sample_one_process",
                 "epoch_vs_phe_per_sample", "epoch_vs_floor", "workers_vs_one"):
        assert ratios[name]["reached"] > 0 and ratios[name]["target"] > 0
        assert ratios[name]["direction"] in ("min", "max")
        assert ratios[name]["met"] is None
    assert "MISSED" not in printed and " met" not in printed
    assert "no verdicts" in printed


def test_full_bench_verdicts_follow_each_targets_direction():
    """The benchmark's speed targets, each with its direction: "min" targets are met at reached ≥ target,
    the floor's "max" at reached ≤ target (no benchmark runs here)."""
    from tools import bench
    assert bench.TARGETS["epoch_vs_floor"][1:] == (1.5, "max")
    assert bench.TARGETS["epoch_vs_phe_per_sample_one_process"][1:] == (50.0, "min")
    assert bench.TARGETS["epoch_vs_phe_per_sample"][1:] == (100.0, "min")
    assert bench.TARGETS["randomizer_djn_vs_textbook"][1:] == (10.0, "min")


def test_quick_bench_reports_the_arithmetic_floor_and_online_offline_split(quick_report):
    """The floor comes from counted operations and the measured cost of one modular
    multiplication; every protocol epoch is online + offline (the pools' filling)."""
    floor = quick_report["floor"]
    assert floor["multiexp_mulmods"] > 0 and floor["decryptions"] > 0
    assert floor["seconds"] == pytest.approx(floor["multiexp_seconds"]
                                             + floor["decrypt_seconds"])
    assert floor["mulmod_seconds"]["nsquare"] > 0
    for way in ("packed", "packed_workers", "unpacked"):
        epoch = quick_report["epochs"][way]
        assert epoch["offline_seconds"] > 0
        assert epoch["seconds"] == pytest.approx(epoch["online_seconds"]
                                                 + epoch["offline_seconds"])
    profile = quick_report["profile"]
    assert 0 < profile["kernel_fraction"] <= 1
    assert {"multiexp", "crt_decrypt"} <= set(profile["kernel_seconds"]) <= {
        "multiexp", "crt_encrypt", "crt_fixed_base_encrypt", "randomizers", "crt_randomizers",
        "crt_decrypt"}
    assert "crt_fixed_base_encrypt" in profile["kernel_seconds"]  # safe primes: the new path


def test_quick_bench_compares_fixed_base_with_per_element_crt_and_both_key_generations(
        quick_report):
    """Every key size reports the key owner's fixed-base and per-element CRT encryption with
    their ratio (recorded, no target), and key generation with safe and with random primes,
    each draw's time."""
    for rows in quick_report["primitives"].values():
        encrypt, keygen = rows["encrypt"], rows["keygen"]
        assert encrypt["acml"] > 0 and encrypt["acml_crt_per_element"] > 0
        assert encrypt["fixed_base_vs_crt"] == pytest.approx(
            encrypt["acml_crt_per_element"] / encrypt["acml"])
        assert len(keygen["acml_draws"]) == len(keygen["acml_random_primes_draws"]) >= 1
        assert keygen["acml"] == pytest.approx(sum(keygen["acml_draws"])
                                               / len(keygen["acml_draws"]))
    ratio = quick_report["ratios"]["key_owner_fixed_base_vs_crt"]
    assert ratio["reached"] > 0 and "target" not in ratio


def test_quick_bench_json_compares_djn_and_textbook_randomizers(quick_report):
    """Every key size reports r^n and DJN randomizer times, their ratio, the table's build
    time, and a pool's offline and online seconds per encryption."""
    for rows in quick_report["primitives"].values():
        randomizer = rows["randomizer"]
        assert randomizer["textbook"] > 0 and randomizer["djn"] > 0
        assert randomizer["ratio"] == pytest.approx(randomizer["textbook"] / randomizer["djn"])
        assert randomizer["table_build"] > 0
        assert randomizer["pool_offline"] > 0 and randomizer["pool_online"] > 0
