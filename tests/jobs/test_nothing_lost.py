"""Nothing lost: a crash between the two parties' checkpoint writes costs one epoch,
not the run; forged archives are refused from their headers; big integers of any length; stale
temporaries cleaned; pool workers die with their parent; no payloads kept; private files 0600.
Small keys through the explicit insecure flags, tiny data, every wait bounded."""

import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
from conftest import (TEST_TOKEN, assert_same_saved_model, insecure_keypair, run_pair,
                      saved_model, scaled)

import acml
import channel
import fixed
from jobs import checkpoint
from jobs import run_directory

KEY_BITS = 512
TIMEOUT = scaled(30.0)
TOKEN = TEST_TOKEN


def config(epochs, **overrides):
    return acml.Config(**{**dict(hidden=(3,), epochs=epochs, batch_size=16, lr=0.1,
                                 momentum=0.5, key_bits=KEY_BITS, allow_insecure=True,
                                 init_seed=0), **overrides})


def train(small_wine, directory, epochs, **options):
    train_set, scaler = small_wine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acml.train(train_set, None, config(epochs), checkpoint_dir=directory,
                          standardizer=scaler, **options)


def assert_same_model(a, b):
    assert_same_saved_model(saved_model(a), saved_model(b))


@pytest.fixture(scope="module")
def straight(small_wine, tmp_path_factory):
    directory = tmp_path_factory.mktemp("straight")
    train(small_wine, directory, 3, keypair=insecure_keypair(KEY_BITS))
    return directory


# ---- 1. checkpoint pairs, one process ----------------------------------------------------------
def test_each_party_keeps_its_latest_epoch_and_the_one_before(straight):
    assert sorted(os.listdir(straight)) == ["data_party.epoch-2.npz", "data_party.npz",
                                            "label_party.epoch-2.npz", "label_party.npz"]
    state = checkpoint.DataPartyState.load(straight / "data_party.epoch-2.npz",
                                           allow_insecure=True)
    assert state.epochs_completed == 2


def test_a_crash_between_the_two_writes_resumes_bit_for_bit(small_wine, straight, tmp_path,
                                                            monkeypatch):
    """The label party's write of epoch 3 fails (disk full) after the data party's succeeded:
    resume takes epoch 2, which both have, trains epoch 3 again, and ends where an
    uninterrupted run ends."""
    directory = tmp_path / "crashed"
    save = checkpoint.LabelPartyState.save

    def full_disk(self, path):
        if self.epochs_completed == 3:
            raise OSError("No space left on device")
        save(self, path)

    monkeypatch.setattr(checkpoint.LabelPartyState, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        train(small_wine, directory, 3)
    monkeypatch.setattr(checkpoint.LabelPartyState, "save", save)
    assert checkpoint.DataPartyState.load(directory / "data_party.npz",
                                          allow_insecure=True).epochs_completed == 3
    result = train(small_wine, directory, 3, resume=True)
    assert result.metrics["resumed_after_epoch"] == 2
    assert any("after epoch 3) passed over" in note for note in result.metrics["checkpoint_notes"])
    assert_same_model(straight, directory)
    assert sorted(os.listdir(directory)) == sorted(os.listdir(straight))


@pytest.mark.parametrize("role", ["data", "label"])
def test_a_corrupted_newest_file_of_one_party_resumes_from_the_epoch_before(small_wine, straight,
                                                                            tmp_path, role):
    directory = tmp_path / "run"
    train(small_wine, directory, 2)
    path = directory / f"{role}_party.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):  # prediction never takes an older model
        run_directory.load_pair(directory, allow_insecure=True)
    result = train(small_wine, directory, 3, resume=True)
    assert result.metrics["resumed_after_epoch"] == 1
    assert_same_model(straight, directory)


def test_a_finished_run_says_exactly_what_to_run(small_wine, straight):
    with pytest.raises(ValueError) as caught:
        train(small_wine, straight, 3, resume=True)
    message = str(caught.value)
    assert "all 3 epochs" in message and "predict --checkpoint-dir" in message
    assert "--resume --epochs 4" in message and "\n" not in message


# ---- 1. checkpoint pairs, two processes ---------------------------------------------------------
def train_pair(train_set, directories, epochs, *, resume=False):
    """Both parties over a loopback socket in two threads, each with its own directory
    (conftest.run_pair): a fresh run from insecure_keypair, or resumed from the directories."""
    data_dir, label_dir = directories
    ids = [str(i) for i in train_set.ids]
    return run_pair(None if resume else insecure_keypair(KEY_BITS), ids, train_set.X, ids,
                    train_set.y, train_set.n_classes, config(epochs), test_fraction=0.0,
                    data_options=dict(checkpoint_dir=data_dir, resume=resume,
                                      allow_insecure=True),
                    label_options=dict(checkpoint_dir=label_dir, resume=resume))


def tcp_model(directories):
    return saved_model(*directories)[:2]


@pytest.mark.parametrize("ahead", ["data", "label"])
def test_over_tcp_the_parties_agree_on_the_latest_epoch_both_saved(small_wine, tmp_path, ahead):
    """Each party in its own directory; one party's epoch-3 file is lost (as if it died before
    writing it): in step "resume" they agree on epoch 2 and end bit for bit where an
    uninterrupted run ends."""
    train_set, _ = small_wine
    straight = (tmp_path / "sd", tmp_path / "sl")
    out = train_pair(train_set, straight, 3)
    assert "data_error" not in out and "label_error" not in out, out
    crashed = (tmp_path / "cd", tmp_path / "cl")
    assert "label_error" not in train_pair(train_set, crashed, 3)
    behind = crashed[1] if ahead == "data" else crashed[0]
    role = "label" if ahead == "data" else "data"
    os.replace(behind / f"{role}_party.epoch-2.npz", behind / f"{role}_party.npz")
    out = train_pair(train_set, crashed, 3, resume=True)
    assert "data_error" not in out and "label_error" not in out, out
    assert out["label"].resumed_after_epoch == 2
    # right after the id alignment (PSI by default: its messages are step "align"), before the
    # data party's input width (it may know it only then) and step 0
    steps = [(m.step, m.name) for m in out["label"].channel.messages]
    n_align = next(i for i, (step, _) in enumerate(steps) if step != "align")
    assert n_align > 0 and steps[n_align:n_align + 4] == [
        ("resume", "checkpointed epochs"), ("resume", "resume from epoch"),
        ("align", "input width"), ("0", "public key")]
    (w_a, p_a), (w_b, p_b) = tcp_model(straight), tcp_model(crashed)
    assert np.array_equal(w_a, w_b)
    assert all(np.array_equal(p_a[name], p_b[name]) for name in p_a)


# ---- 2. forged archives -------------------------------------------------------------------------
def test_an_entry_declaring_a_huge_shape_is_refused_from_its_header(straight, tmp_path):
    """A few bytes on disk declaring a 3 GiB array: refused before anything is decompressed."""
    path = tmp_path / "data_party.npz"
    path.write_bytes((straight / "data_party.npz").read_bytes())
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.npy", "w") as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f8", "fortran_order": False, "shape": (3 * 2 ** 27,)})
            member.write(b"\0" * 64)
    start = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        checkpoint.DataPartyState.load(path, allow_insecure=True)
    assert time.perf_counter() - start < scaled(5)  # headers only: milliseconds idle
    message = str(caught.value)
    assert "zeros" in message and "3.0 GiB" in message and "cap" in message, message


@pytest.mark.parametrize("descr, name, needle", [
    ("|O", "meta.npy", "not numbers or strings"),
    ("<f8", "../escape.npy", "an entry named"),
])
def test_bad_entry_names_and_dtypes_are_refused_from_the_headers(tmp_path, descr, name, needle):
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open(name, "w") as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": descr, "fortran_order": False, "shape": (1,)})
    with pytest.raises(ValueError, match=needle):
        checkpoint.check_archive(path)


# ---- 3. big integers ----------------------------------------------------------------------------
def test_integers_of_20000_digits_round_trip_in_checkpoints_and_transcripts():
    big = 7 ** 23_666  # 20,001 decimal digits: over Python's 4,300-digit str/int limit
    values = np.array([[big, -big], [1, 0]], dtype=object)
    strings = checkpoint._decimal_strings(values)
    assert len(strings[0, 0]) > 20_000 and strings[0, 1].startswith("-")
    back = checkpoint._integers({"x": strings}, "x", (2, 2), "file")
    assert all(int(a) == int(b) for a, b in zip(back.ravel(), values.ravel()))
    text = json.dumps(channel.jsonable({"values": values}))
    assert [fixed.from_decimal(v) for v in json.loads(text)["values"]] == values.ravel().tolist()
    for value in (0, 9, 10 ** 4000, 10 ** 4000 - 1, 10 ** 8000 + 12345, -(10 ** 12000)):
        assert fixed.from_decimal(fixed.to_decimal(value)) == value
    old_limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        assert fixed.to_decimal(big) == str(big)  # the plain decimal numeral
    finally:
        sys.set_int_max_str_digits(old_limit)


# ---- 4. stale temporaries -----------------------------------------------------------------------
def test_stale_temporaries_of_a_killed_write_are_cleaned_on_the_next_run(small_wine, tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    stale = [directory / "data_party.npz.k2j4_9xq.tmp", directory / "label_party.npz.abcdefgh.tmp",
             directory / "data_party.epoch-3.npz.zzzzzzzz.tmp"]
    others = [directory / "notes.tmp", directory / "model.npz.abcdefgh.tmp"]
    for path in stale + others:
        path.write_bytes(b"")
        os.utime(path, (time.time() - 60, time.time() - 60))
    fresh = directory / "label_party.npz.fresh123.tmp"  # another writer's, right now
    fresh.write_bytes(b"")
    os.utime(fresh, (time.time() + 60, time.time() + 60))
    train(small_wine, directory, 1)
    left = set(os.listdir(directory))
    assert not {p.name for p in stale} & left
    assert {p.name for p in others} | {fresh.name} <= left


# ---- 5. orphaned workers ------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "\nState:\tZ" not in handle.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_their_parent_is_killed():
    script = textwrap.dedent("""
        import os, sys, time
        from tools import cli
        with cli.workers(2) as executor:
            list(executor.map(abs, range(4)))
            print(" ".join(str(pid) for pid in executor._processes), flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=pathlib.Path(__file__).resolve().parents[2])
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(TIMEOUT)
    deadline = time.monotonic() + scaled(10)
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "a worker outlived its parent"


# ---- 6. memory ----------------------------------------------------------------------------------
def test_a_run_keeps_no_payloads_by_default(small_wine, tmp_path):
    result = train(small_wine, tmp_path / "run", 2)
    messages = result.channel.messages
    assert {m.kind for m in messages} >= {channel.CIPHERTEXT, channel.MASKED}
    assert all(m.payload is None for m in messages)
    assert all(m.nbytes > 0 for m in messages if m.kind == channel.CIPHERTEXT)


# ---- 7. files written ---------------------------------------------------------------------------
def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_outputs_are_0600_and_public_ones_follow_the_umask(tmp_path, capsys):
    common = ["--dataset", "wine", "--hidden", "2", "--epochs", "1", "--key-bits", "256",
              "--insecure-small-key", "--quiet"]
    run = tmp_path / "run"
    assert acml.main(["train", *common, "--checkpoint-dir", str(run), "--json",
                      str(tmp_path / "report.json"), "--transcript",
                      str(tmp_path / "transcript.jsonl")]) == 0
    for path in [*run.iterdir(), tmp_path / "report.json", tmp_path / "transcript.jsonl"]:
        assert mode(path) == 0o600, path
    umask = os.umask(0o022)
    try:
        checkpoint.write_atomically(tmp_path / "bench.json", lambda h: h.write("{}"), mode="w",
                                    private=False)
    finally:
        os.umask(umask)
    assert mode(tmp_path / "bench.json") == 0o644
    capsys.readouterr()
