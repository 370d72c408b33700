"""Crash windows and shared directories: a kill at any write boundary of the first two epochs
resumes, with no manual step, to the weights of a run that never stopped (one process and two);
one run per party per checkpoint directory (flock, the holder's pid in the refusal), readers
never see a half-renamed state; outputs checked before training, and a late failure keeps the
trained model and says where. Small keys through the explicit insecure flags, tiny data, waits
scaled by conftest.scaled."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
from conftest import (TEST_TOKEN, assert_same_saved_model, insecure_keypair, one_line_error,
                      run_pair, saved_model, scaled)

import acml
from jobs import checkpoint
from jobs import run_directory
from jobs.export import export_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY_BITS = 512
EPOCHS = 2
TOKEN = TEST_TOKEN
CLI_SMALL = ["--dataset", "wine", "--hidden", "2", "--key-bits", "256", "--insecure-small-key",
             "--quiet"]

# The writes of a 2-epoch run, in order (one process): the data party's start (epoch 0), then
# per epoch each party's rename of its main file to its epoch name, the removal of the older
# epoch file, and its new main file.
ONE_PROCESS_WRITES = [
    ("data", "data_party.npz"),            # the start, epoch 0
    ("data", "data_party.epoch-0.npz"),    # epoch 1: rename
    ("data", "data_party.npz"),            #          new main
    ("label", "label_party.npz"),          #          the label party's first file
    ("data", "data_party.epoch-1.npz"),    # epoch 2: rename
    ("data", "data_party.epoch-0.npz"),    #          removal of the older epoch
    ("data", "data_party.npz"),            #          new main
    ("label", "label_party.epoch-1.npz"),  #          rename
    ("label", "label_party.npz"),          #          new main
]


def config(epochs=EPOCHS, **overrides):
    return acml.Config(**{**dict(hidden=(3,), epochs=epochs, batch_size=16, lr=0.1,
                                 momentum=0.5, key_bits=KEY_BITS, allow_insecure=True,
                                 init_seed=0), **overrides})


def train(small_wine, directory, **options):
    train_set, scaler = small_wine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acml.train(train_set, None, config(), checkpoint_dir=directory,
                          standardizer=scaler, **options)


class Killed(BaseException):
    """A kill -9 at a write boundary: raised (like a signal, not an error) so that nothing of
    the run after it happens; the files are as the kill would leave them."""


class WriteBoundaries:
    """Counts the checkpoint writes (os.replace onto, and os.unlink of, a party's .npz files)
    and kills the run of ``role`` (None: either) just before its ``kill_before``-th one."""

    def __init__(self, monkeypatch, kill_before=None, role=None, at_boundary=None):
        self.writes, self.kill_before, self.role = [], kill_before, role
        self.at_boundary = at_boundary
        self.lock = threading.Lock()
        replace, unlink = os.replace, os.unlink

        def counted_replace(source, target, **options):
            self.boundary(target)
            return replace(source, target, **options)

        def counted_unlink(path, **options):
            self.boundary(path)
            return unlink(path, **options)

        monkeypatch.setattr(os, "replace", counted_replace)
        monkeypatch.setattr(os, "unlink", counted_unlink)

    def boundary(self, path):
        name = os.path.basename(os.fspath(path))
        role = name.split("_party")[0]
        if not (name.endswith(".npz") and role in ("data", "label")):
            return
        with self.lock:
            if self.role in (None, role):
                self.writes.append((role, name))
                count = len(self.writes)
                if self.at_boundary is not None:
                    self.at_boundary(count)
                if count == self.kill_before:
                    raise Killed(f"before write {count}: {name}")


joint = saved_model


def assert_same_model(a, b):
    assert_same_saved_model(a, b)
    assert a[3] == EPOCHS and a[1].keys() == b[1].keys() and a[2].keys() == b[2].keys() and a[2]


@pytest.fixture(scope="module")
def straight(small_wine, tmp_path_factory):
    directory = tmp_path_factory.mktemp("straight")
    train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    return joint(directory)


# ---- the first epochs' crash windows, one process --------------------------------------------
def test_the_writes_of_two_epochs_are_the_documented_ones(small_wine, tmp_path, monkeypatch):
    """The kill points below are every one of these writes; none is left out."""
    boundaries = WriteBoundaries(monkeypatch)
    train(small_wine, tmp_path / "run", keypair=insecure_keypair(KEY_BITS))
    assert boundaries.writes == ONE_PROCESS_WRITES


@pytest.mark.parametrize("kill_before", range(2, len(ONE_PROCESS_WRITES) + 1))
def test_a_kill_at_any_write_of_the_first_two_epochs_resumes_to_the_same_weights(
        small_wine, straight, tmp_path, monkeypatch, kill_before):
    """Killed just before write k (so after every write before it: the data party's start,
    its epoch 1 without the label party's, ...), `train --resume` alone ends with the weights,
    layers and velocities of the run that never stopped — also in the first epoch's window,
    where no epoch is common and the run starts again from the data party's start."""
    directory = tmp_path / "run"
    boundaries = WriteBoundaries(monkeypatch, kill_before)
    with pytest.raises(Killed):
        train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    monkeypatch.undo()
    assert len(boundaries.writes) == kill_before
    result = train(small_wine, directory, resume=True)
    assert result.metrics["resumed_after_epoch"] == (0 if kill_before <= 4 else 1)
    assert_same_model(straight, joint(directory))
    assert sorted(name for name in os.listdir(directory)) == [
        "data_party.epoch-1.npz", "data_party.npz", "label_party.epoch-1.npz",
        "label_party.npz"]


def test_killed_before_its_first_file_the_run_has_nothing_to_resume_and_starts_afresh(
        small_wine, straight, tmp_path, monkeypatch):
    """Before the data party's start is written nothing of the run exists: resuming says so in
    one line, and a new run into the same directory is accepted (nothing blocks it)."""
    directory = tmp_path / "run"
    WriteBoundaries(monkeypatch, 1)
    with pytest.raises(Killed):
        train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no such checkpoint file"):
        train(small_wine, directory, resume=True)
    train(small_wine, directory)
    assert_same_model(straight, joint(directory))


def test_a_restart_from_the_start_removes_the_label_party_file_before_it_could_pair(
        small_wine, straight, tmp_path, monkeypatch):
    """The first epoch's window again, killed once more right after the restarted run's start:
    the label party's file of the first attempt is gone, so a later resume can never pair it
    with a file of the second attempt (same key, other ε_acc: a wrong W)."""
    directory = tmp_path / "run"
    WriteBoundaries(monkeypatch, 5)  # killed after both parties' epoch 1 ... and before epoch 2
    with pytest.raises(Killed):
        train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    monkeypatch.undo()
    os.replace(directory / "data_party.epoch-0.npz", directory / "data_party.npz")  # lost epoch 1
    before = set(os.listdir(directory))
    assert before == {"data_party.npz", "label_party.npz"}  # data at 0, label at 1: no pair
    WriteBoundaries(monkeypatch, 2)  # the restart writes its start, then is killed
    with pytest.raises(Killed):
        train(small_wine, directory, resume=True)
    monkeypatch.undo()
    assert sorted(os.listdir(directory)) == ["data_party.npz"]
    train(small_wine, directory, resume=True)
    assert_same_model(straight, joint(directory))


# ---- the first epochs' crash windows, two processes ------------------------------------------
def train_pair(train_set, directories, *, resume=False):
    """Both parties over a loopback socket in two threads, each with its own directory
    (conftest.run_pair): a fresh run from insecure_keypair, or resumed from the directories."""
    data_dir, label_dir = directories
    ids = [str(i) for i in train_set.ids]
    return run_pair(None if resume else insecure_keypair(KEY_BITS), ids, train_set.X, ids,
                    train_set.y, train_set.n_classes, config(), test_fraction=0.0,
                    data_options=dict(checkpoint_dir=data_dir, resume=resume,
                                      allow_insecure=True),
                    label_options=dict(checkpoint_dir=label_dir, resume=resume))


@pytest.fixture(scope="module")
def straight_pair(small_wine, tmp_path_factory):
    directories = (tmp_path_factory.mktemp("sd"), tmp_path_factory.mktemp("sl"))
    out = train_pair(small_wine[0], directories)
    assert "data_error" not in out and "label_error" not in out, out
    return joint(*directories)


TWO_PROCESS_KILLS = ([("data", k) for k in range(2, 7)] + [("label", k) for k in range(1, 4)])


@pytest.mark.parametrize("role, kill_before", TWO_PROCESS_KILLS)
def test_over_tcp_a_kill_at_any_write_of_the_first_two_epochs_resumes_to_the_same_weights(
        small_wine, straight_pair, tmp_path, monkeypatch, role, kill_before):
    """One party is killed just before its k-th write (the data party writes 6 in two epochs,
    the label party 3); the other stops when the connection drops, wherever it was. Both
    resumed with --resume alone end with the uninterrupted run's weights — in the first
    epoch's window by starting again from the data party's start (step "resume" answers 0)."""
    directories = (tmp_path / "d", tmp_path / "l")
    boundaries = WriteBoundaries(monkeypatch, kill_before, role)
    out = train_pair(small_wine[0], directories)
    assert isinstance(out.get(f"{role}_error"), Killed), out
    monkeypatch.undo()
    assert len(boundaries.writes) == kill_before
    out = train_pair(small_wine[0], directories, resume=True)
    assert "data_error" not in out and "label_error" not in out, out
    assert_same_model(straight_pair, joint(*directories))


def test_over_tcp_the_data_party_killed_before_its_start_has_nothing_to_resume(
        small_wine, tmp_path, monkeypatch):
    """Before the data party's start is written the label party has no file either (it saves
    only after the first epoch): the data party's resume refuses in one line, and new runs
    into the same directories are accepted."""
    directories = (tmp_path / "d", tmp_path / "l")
    WriteBoundaries(monkeypatch, 1, "data")
    out = train_pair(small_wine[0], directories)
    monkeypatch.undo()
    assert isinstance(out.get("data_error"), Killed)
    assert not list(directories[1].glob("*.npz")) if directories[1].exists() else True
    out = train_pair(small_wine[0], directories, resume=True)
    assert "nothing to resume" in str(out["data_error"])
    out = train_pair(small_wine[0], directories)
    assert "data_error" not in out and "label_error" not in out, out


# ---- one run per party per directory ---------------------------------------------------------
def hold_in_a_process(directory, roles=("data", "label")):
    """A process holding ``roles``' locks of ``directory`` as a run does, until killed."""
    script = ("import sys, time; from jobs import run_directory; "
              f"held = run_directory.hold({str(directory)!r}, {tuple(roles)!r}); "
              "held.__enter__(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder_pid(tmp_path, capsys,
                                                                           no_training):
    """`train` and `train --resume` into a directory another process's run holds: one line
    naming that pid, before any key is made (no_training: no key generation, no run)."""
    directory = tmp_path / "run"
    holder = hold_in_a_process(directory)
    try:
        for extra in ([], ["--resume"]):
            line = one_line_error(capsys, ["train", *CLI_SMALL, "--checkpoint-dir",
                                           str(directory), *extra])
            assert f"in use by another run (pid {holder.pid})" in line, line
            assert str(directory) in line
    finally:
        holder.kill()
        holder.wait(scaled(30))


def test_two_real_runs_started_together_the_second_is_refused_and_the_first_is_intact(
        tmp_path):
    """The measured case: `train --checkpoint-dir D` running (paused mid-run with SIGSTOP so
    that it surely holds D), a second `train --seed 4 --checkpoint-dir D` exits 2 naming the
    first's pid and writes nothing; the first, continued, ends 0 and D holds its run."""
    directory = tmp_path / "run"
    command = [sys.executable, "acml.py", "train", *CLI_SMALL, "--epochs", "8", "--init-seed",
               "7", "--checkpoint-dir", str(directory)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock = directory / "data_party.lock"
    deadline = time.monotonic() + scaled(60)
    while time.monotonic() < deadline and first.poll() is None:
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before it could be paused"
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command[:-2] + ["--seed", "4", "--checkpoint-dir",
                                                str(directory)],
                                cwd=ROOT, capture_output=True, text=True, timeout=scaled(120))
        exported = subprocess.run(
            [sys.executable, "acml.py", "export", "--checkpoint-dir", str(directory), "--out",
             str(tmp_path / "m.npz"), "--i-understand-this-reveals-the-weights"],
            cwd=ROOT, capture_output=True, text=True, timeout=scaled(120))
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"in use by another run (pid {first.pid})" in second.stderr
    assert exported.returncode == 2 and f"(pid {first.pid})" in exported.stderr
    assert first.wait(scaled(300)) == 0, first.stderr.read()
    state = checkpoint.DataPartyState.load(directory / "data_party.npz", allow_insecure=True)
    assert state.init_seed == 7 and state.epochs_completed == 8
    assert not list(directory.glob("*.lock"))  # released and removed at the end


def test_a_killed_holder_does_not_block_its_lock_dies_with_it(tmp_path, capsys):
    """kill -9 of the holder: the kernel drops flock with the process, the lock file stays
    with the dead pid in it, and the next run takes it over and finishes."""
    directory = tmp_path / "run"
    holder = hold_in_a_process(directory)
    holder.send_signal(signal.SIGKILL)
    holder.wait(scaled(30))
    assert (directory / "data_party.lock").read_text().strip() == str(holder.pid)
    assert acml.main(["train", *CLI_SMALL, "--epochs", "1", "--checkpoint-dir",
                      str(directory)]) == 0
    capsys.readouterr()
    assert (directory / "label_party.npz").exists() and not list(directory.glob("*.lock"))


def test_locks_are_per_party_two_roles_share_a_directory_two_of_one_role_do_not(tmp_path):
    """A data party and a label party (party mode) may share a directory; a second data
    party (another thread here: within one thread a run's hold inside its own is no second
    run) may not; readers share with readers and never with a run."""
    directory = tmp_path / "shared"
    refused = []

    def second_data_party():
        try:
            with run_directory.hold(directory, ("data",)):
                pass
        except run_directory.DirectoryInUse as error:
            refused.append(str(error))

    with run_directory.hold(directory, ("data",)), run_directory.hold(directory, ("label",)):
        thread = threading.Thread(target=second_data_party)
        thread.start()
        thread.join(scaled(30))
        assert len(refused) == 1 and f"pid {os.getpid()}) as the data party" in refused[0]
        with pytest.raises(run_directory.DirectoryInUse, match="in use by another run"):
            with run_directory.hold(directory, shared=True):
                pass
    assert not directory.exists()  # made for the locks, empty after them: removed
    directory.mkdir()  # readers read an existing directory (none: nothing to lock, or read)
    with run_directory.hold(directory, shared=True), run_directory.hold(directory, shared=True):
        with pytest.raises(run_directory.DirectoryInUse, match="a reader"):
            with run_directory.hold(directory, ("label",)):
                pass
    assert not list(directory.iterdir())


def test_party_data_on_a_directory_its_role_holds_is_refused_before_key_generation(
        tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setenv("ACML_TOKEN", TOKEN.decode())
    directory = tmp_path / "d"
    holder = hold_in_a_process(directory, ("data",))
    features = tmp_path / "f.csv"
    features.write_text("id,x\n1,0.5\n2,0.25\n")
    try:
        line = one_line_error(capsys, ["party", "data", "--listen", "127.0.0.1:0", "--features",
                                       str(features), "--id-column", "id", "--key-bits", "256",
                                       "--insecure-small-key", "--checkpoint-dir",
                                       str(directory)])
    finally:
        holder.kill()
        holder.wait(scaled(30))
    assert f"in use by another run (pid {holder.pid}) as the data party" in line


def test_a_reader_never_sees_the_files_between_a_rename_and_the_new_file(small_wine, tmp_path,
                                                                         monkeypatch):
    """export (and predict) during a run's save, where the data party's main file is renamed
    and its new one not yet written: refused in one line naming the run, never a read of the
    half-renamed state; after the run, export reads the finished pair."""
    directory = tmp_path / "run"
    seen = []

    def export_now(count):
        if count == 3:  # data_party.npz renamed to data_party.epoch-0.npz, new one not yet
            try:
                export_model(directory, tmp_path / "m.npz",
                             i_understand_this_reveals_the_weights=True)
            except ValueError as error:
                seen.append(str(error))

    WriteBoundaries(monkeypatch, at_boundary=export_now)
    train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    assert len(seen) == 1 and f"in use by another run (pid {os.getpid()})" in seen[0], seen
    monkeypatch.undo()
    export_model(directory, tmp_path / "m.npz", i_understand_this_reveals_the_weights=True)


# ---- checked before training; a late failure keeps the model ---------------------------------
def fake_free_space(monkeypatch, free_bytes):
    real = os.statvfs

    def statvfs(path):
        stats = real(path)
        return os.statvfs_result((stats.f_bsize, 1, stats.f_blocks, free_bytes, free_bytes,
                                  *stats[5:]))
    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.parametrize("flag", ["--json", "--transcript", "--checkpoint-dir"])
def test_an_output_whose_disk_is_full_is_refused_before_training(tmp_path, capsys, monkeypatch,
                                                                 no_training, flag):
    fake_free_space(monkeypatch, 4096)
    line = one_line_error(capsys, ["train", *CLI_SMALL, flag, str(tmp_path / "out")])
    assert f"{flag} {tmp_path / 'out'}: only 0.00 MiB free" in line


def test_the_checkpoint_estimate_covers_what_a_run_keeps(small_wine, tmp_path):
    """run_directory.needed_bytes, which the CLI checks before the key is made, is at least
    what two epochs' files of each party and one more being written take."""
    directory = tmp_path / "run"
    train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    sizes = {name: os.path.getsize(directory / name) for name in os.listdir(directory)}
    largest = max(sizes["data_party.npz"], sizes["data_party.epoch-1.npz"])
    largest += max(sizes["label_party.npz"], sizes["label_party.epoch-1.npz"])
    train_set, _ = small_wine
    assert run_directory.needed_bytes(train_set.X.shape[1], config().layer_sizes(
        train_set.X.shape[1], train_set.n_classes), KEY_BITS) >= 3 * largest


def fail_writing(monkeypatch, target, code=errno.ENOSPC):
    real = checkpoint.write_atomically

    def write_atomically(path, *args, **options):
        if os.fspath(path) == os.fspath(target):
            raise checkpoint.WriteFailed(OSError(code, os.strerror(code)), path)
        return real(path, *args, **options)
    monkeypatch.setattr(checkpoint, "write_atomically", write_atomically)


def test_a_full_disk_at_the_report_keeps_the_checkpoint_and_says_so(tmp_path, capsys,
                                                                     monkeypatch):
    report, directory = tmp_path / "report.json", tmp_path / "run"
    fail_writing(monkeypatch, report)
    line = one_line_error(capsys, ["train", *CLI_SMALL, "--epochs", "1", "--json", str(report),
                                   "--checkpoint-dir", str(directory)])
    assert f"writing {report}: no space left on device" in line
    assert f"the trained model is safe in {directory}" in line
    assert joint(directory)[3] == 1 and not report.exists()


def test_without_a_checkpoint_dir_a_failed_report_rescues_the_model_where_it_says(
        tmp_path, capsys, monkeypatch):
    report = tmp_path / "report.json"
    fail_writing(monkeypatch, report)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["train", *CLI_SMALL, "--epochs", "1", "--json",
                                   str(report)])
    rescue = tmp_path / f"acml-rescue-{os.getpid()}"
    assert f"writing {report}: no space left on device" in line
    assert f"saved to {rescue}" in line, line
    assert (rescue / "report.json").exists() and joint(rescue)[3] == 1
    assert acml.main(["export", "--checkpoint-dir", str(rescue), "--out",
                      str(tmp_path / "m.npz"), "--i-understand-this-reveals-the-weights"]) == 0


def test_a_full_disk_during_a_checkpoint_names_the_file(tmp_path, capsys, monkeypatch):
    directory = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.np, "savez_compressed", full)
    line = one_line_error(capsys, ["train", *CLI_SMALL, "--epochs", "1", "--checkpoint-dir",
                                   str(directory)])
    assert line.endswith(f"error: writing {directory / 'data_party.npz'}: no space left on "
                         "device"), line
    assert not directory.exists()  # no temporary file left, and the directory it made removed


def test_export_of_a_damaged_file_says_damaged_and_its_advice_works(small_wine, tmp_path, capsys):
    """A corrupted newest file of a finished run: export names the file as damaged (not an
    interrupted run to resume) and says what to do; doing it (train --resume: the epoch both
    still have, trained again) gives an exportable model again."""
    directory = tmp_path / "run"
    train(small_wine, directory, keypair=insecure_keypair(KEY_BITS))
    path = directory / "label_party.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    line = one_line_error(capsys, ["export", "--checkpoint-dir", str(directory), "--out",
                                   str(tmp_path / "m.npz"),
                                   "--i-understand-this-reveals-the-weights"])
    assert f"{path}: corrupted" in line and "that file is damaged" in line
    assert "restore it from a copy" in line and "interrupted" not in line
    train(small_wine, directory, resume=True)
    export_model(directory, tmp_path / "m.npz", i_understand_this_reveals_the_weights=True)
