"""A run's checkpoint directory: each party's own files, its latest epoch and the one before,
the epoch both parties can resume from, the saver both modes call after every epoch, and the
locks that keep two runs of one party out of one directory (hold).

checkpoint.py says what ONE party's file holds; this module says which files a run keeps and
which of them a resumed run loads.

  data_party.npz             the data party's state after its latest epoch E (before the first
                             epoch: its start, epoch 0 — its key pair and init seed)
  data_party.epoch-<E-1>.npz its state after the epoch before (none before the first epoch)
  label_party.npz, label_party.epoch-<E-1>.npz   the same for the label party, from epoch 1 on
  data_party.lock, label_party.lock             while a run (or a reader) holds the party

Saving epoch E: the file of epoch E-1 is renamed to its epoch name, every older epoch file is
removed, then the new state is written atomically as the main file. A crash, a kill or a full
disk at any moment leaves each party with its latest epoch or the one before, so from epoch 2
on the two parties always share an epoch — in one process, where the data party's file is
written first, and in two, where each party saves on its own. Resuming takes the latest epoch
BOTH parties have (find_pair here; across the wire, transport.agree_epoch), from which the run
continues bit for bit as if it had never stopped.

The first epoch has no common epoch before it: a kill between the two parties' files of epoch
1 leaves one of them with nothing to pair. So the data party saves its start (epoch 0) before
the first epoch, before the label party can save anything, and a resume that finds no common
epoch while no file is past epoch 1 starts the run again from that start (can_restart): the
same key pair, init seed and noise seed, hence the same W0 and, epoch for epoch, the same
weights as a run that never stopped. Only the first epoch is trained again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # not POSIX (Windows): see hold()
    fcntl = None

from channel import DATA, LABEL
from jobs.checkpoint import (CHECKPOINT_FILES, DataPartyState, LabelPartyState, party_name,
                        check_checkpoint_pair)

_EPOCH_FILE = re.compile(r"(data|label)_party\.epoch-([0-9]{1,9})\.npz")
# write_atomically's temporary files: <file name>.<8 characters of tempfile>.tmp
_TEMPORARY = re.compile(r"(data|label)_party(\.epoch-[0-9]{1,9})?\.npz\.[a-z0-9_]{8}\.tmp")


def lock_path(checkpoint_dir, role: str) -> str:
    """A party's lock file: it exists while a process holds it, and holds the writer's pid."""
    stem = CHECKPOINT_FILES[role][:-len(".npz")]
    return os.path.join(os.fspath(checkpoint_dir), f"{stem}.lock")


class DirectoryInUse(ValueError):
    """Another process holds a party's lock in this checkpoint directory."""


def _holder(descriptor) -> str:
    """Who holds a lock we could not take: a writer's pid (it wrote it into the file), or the
    readers (predict, export), who write none."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        try:
            text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        return f"another run (pid {text})" if text.isdigit() else "another run"
    return "a reader (predict or export)"


def _take(path: str, shared: bool):
    """An open descriptor of ``path`` holding flock's shared or exclusive lock, or
    DirectoryInUse. The file is checked to be the one still at ``path`` after locking: a holder
    removes it when done, and a lock on a removed file guards nothing."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise DirectoryInUse(holder) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # removed by its last holder meanwhile: take the new one


def _release(path: str, descriptor) -> None:
    """Unlock; the last holder removes the file (it tries the exclusive lock without waiting:
    if another reader still holds it, the file stays for that reader to remove)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def hold(checkpoint_dir, roles=(DATA, LABEL), *, shared: bool = False):
    """Hold ``roles``' locks in ``checkpoint_dir`` for the ``with`` block: exclusive for a run
    (training, resuming: it writes the files), shared for a reader (predict, export: it reads
    them, never while a run may be renaming them). One lock per party, ``<party>.lock``, taken
    with flock before any work: two runs of one party on one directory cannot overlap, while
    the data party and the label party of one run may share a directory, in one process or in
    two. Refused in one line naming the holder (a run's pid, or the readers).

    flock belongs to the open file, so the kernel drops it when its holder dies, even by
    kill -9: a dead run's lock never blocks (its file, left behind with the dead pid, is taken
    over). The run directory is created if needed (a run's; a reader's must exist). A reader
    that cannot create the lock file (a read-only copy of a run) reads without it: no run of
    ours can be writing there. Without fcntl (not POSIX, e.g. Windows) nothing is locked and
    concurrent runs are not detected: there, give each run its own directory."""
    directory = os.fspath(checkpoint_dir)
    if fcntl is None:
        yield
        return
    made = not shared and not os.path.isdir(directory)
    if not shared:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise ValueError(f"checkpoint directory {directory}: cannot create it "
                             f"({error.strerror})") from None
    held = []
    try:
        for role in roles:
            path = lock_path(directory, role)
            mine = (os.path.realpath(path), role)
            if not shared and mine in _held_here.__dict__.setdefault("locks", set()):
                continue  # this thread's run holds it already (the CLI's, around the library's)
            try:
                descriptor = _take(path, shared)
            except DirectoryInUse as error:
                raise DirectoryInUse(
                    f"checkpoint directory {directory} is in use by {error} as "
                    f"{party_name(role)[:-2]}; wait for it to end, or use another "
                    "directory") from None
            except OSError as error:
                if shared and error.errno in (errno.ENOENT, errno.EACCES, errno.EROFS,
                                              errno.EPERM):
                    continue  # no directory (the load says so), or a read-only copy
                raise ValueError(f"{path}: cannot lock it ({error.strerror})") from None
            held.append((path, descriptor, mine))
            if not shared:
                _held_here.locks.add(mine)
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        for path, descriptor, mine in reversed(held):
            if not shared:
                _held_here.locks.discard(mine)
            _release(path, descriptor)
        if made and held:  # made for a run refused before it saved anything: not left behind
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if empty


# The exclusive locks this thread holds: a run's hold inside another of the same thread (the
# command line's, taken before the data is read, around the library's) takes nothing more.
# Any other holder — another thread, another process, a reader — is refused as usual.
_held_here = threading.local()


def party_path(checkpoint_dir, role: str) -> str:
    """A party's main file: its state after its latest epoch."""
    return os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_FILES[role])


def epoch_path(checkpoint_dir, role: str, epoch: int) -> str:
    """A party's file of an earlier epoch, kept so that the two parties always share one."""
    stem = CHECKPOINT_FILES[role][:-len(".npz")]
    return os.path.join(os.fspath(checkpoint_dir), f"{stem}.epoch-{int(epoch)}.npz")


def party_files(checkpoint_dir, role: str) -> list:
    """Every file of ``role`` in ``checkpoint_dir``: the main file first, then the epoch files,
    newest first (by the epoch in their name)."""
    directory = os.fspath(checkpoint_dir)
    epochs = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            match = _EPOCH_FILE.fullmatch(name)
            if match and match.group(1) == role:
                epochs.append(int(match.group(2)))
    main = party_path(directory, role)
    return ([main] if os.path.exists(main) else []) + [
        epoch_path(directory, role, epoch) for epoch in sorted(epochs, reverse=True)]


def _loader(role: str):
    return DataPartyState if role == DATA else LabelPartyState


@dataclass
class Saved:
    """What a party's files in a directory hold: ``states`` by epoch (each file loaded and
    validated) and ``skipped``, one line per file that could not be used, saying why."""

    role: str
    states: dict
    paths: dict
    skipped: list
    duplicated: bool = False
    main: object = None  # the main file's state, if it loads

    @property
    def epochs(self) -> list:
        return sorted(self.states, reverse=True)


def saved_states(checkpoint_dir, role: str, *, allow_insecure: bool = False) -> Saved:
    """Load every file of ``role`` in ``checkpoint_dir``. A file that does not load, or an epoch
    file whose content is of another epoch, is skipped (with its one-line reason); ``duplicated``
    says two files hold one epoch — the saver never leaves that, so the directory was edited."""
    states, paths, skipped, duplicated = {}, {}, [], False
    for path in party_files(checkpoint_dir, role):
        try:
            state = _loader(role).load(path, allow_insecure=allow_insecure)
        except ValueError as error:
            skipped.append(str(error))
            continue
        epoch = state.epochs_completed
        match = _EPOCH_FILE.fullmatch(os.path.basename(path))
        if match and int(match.group(2)) != epoch:
            skipped.append(f"{path}: holds the state after epoch {epoch}, not the epoch its name "
                           "says")
        elif epoch in states:
            duplicated = True
        else:
            states[epoch], paths[epoch] = state, path
    main = party_path(checkpoint_dir, role)
    return Saved(role, states, paths, skipped, duplicated,
                 next((state for epoch, state in states.items() if paths[epoch] == main), None))


def nothing_saved(checkpoint_dir, role: str, saved: Saved) -> str:
    """The one line for a party with no usable file in ``checkpoint_dir``."""
    if not saved.skipped:
        return f"{party_path(checkpoint_dir, role)}: no such checkpoint file"
    return saved.skipped[0] + (f" (and {len(saved.skipped) - 1} more file(s) of "
                               f"{party_name(role)} unusable)" if len(saved.skipped) > 1 else "")


def pick_epoch(data_epochs, label_epochs) -> int | None:
    """The latest epoch both parties saved, or None."""
    common = set(data_epochs) & set(label_epochs)
    return max(common) if common else None


def can_restart(data_epochs, label_epochs) -> bool:
    """No epoch in common, and nothing past the first epoch: a kill in the first epoch's
    window (the module's docstring). Then the run starts again from the data party's start —
    which requires that the data party has a file (it saves its start before the label party
    can save anything, so only a run killed before any file has none: nothing to resume)."""
    return (bool(data_epochs) and pick_epoch(data_epochs, label_epochs) is None
            and max([*data_epochs, *label_epochs]) <= 1)


@dataclass
class Pair:
    """The two states of one epoch, and a line per file passed over (newer or unusable).
    ``label`` None: no common epoch, the run starts again from ``data``'s start
    (can_restart): its key pair, init seed and noise seed."""

    data: DataPartyState
    label: LabelPartyState | None
    notes: list

    @property
    def epoch(self) -> int:
        return 0 if self.label is None else self.data.epochs_completed


def find_pair(checkpoint_dir, *, allow_insecure: bool = False, resuming: bool = False) -> Pair:
    """Both parties' states of one epoch in ``checkpoint_dir``, checked to belong together
    (check_checkpoint_pair).

    The main files, when they pair, are taken as they are. Otherwise, ``resuming``: the latest
    epoch both parties have a usable file of (after a crash between the two parties' writes the
    data party's latest file is one epoch ahead of the label party's; training it again gives
    the same state bit for bit). Not resuming (prediction, export: they would silently use an
    older model), and whenever a party has two files of one epoch (an edited directory), the
    main files' own error is raised — with a hint to resume when that would mend it."""
    saved = {role: saved_states(checkpoint_dir, role, allow_insecure=allow_insecure)
             for role in (DATA, LABEL)}
    mains = (saved[DATA].main, saved[LABEL].main)
    error = None
    if None not in mains:
        try:
            check_checkpoint_pair(*mains)
            return Pair(*mains, saved[DATA].skipped + saved[LABEL].skipped)
        except ValueError as mismatch:
            error = mismatch
    else:
        role = DATA if mains[0] is None else LABEL
        error = ValueError(nothing_saved(checkpoint_dir, role, Saved(
            role, {}, {}, [line for line in saved[role].skipped
                           if line.startswith(party_path(checkpoint_dir, role))], False, None)))
    epoch = pick_epoch(saved[DATA].states, saved[LABEL].states)
    restart = can_restart(saved[DATA].states, saved[LABEL].states)
    if resuming and restart and not (saved[DATA].duplicated or saved[LABEL].duplicated):
        start = saved[DATA].states[saved[DATA].epochs[0]]
        return Pair(start, None, saved[DATA].skipped + saved[LABEL].skipped + [
            f"{checkpoint_dir}: no epoch that both parties saved (data party "
            f"{sorted(saved[DATA].states)}, label party {sorted(saved[LABEL].states) or 'none'})"
            ": the run starts again from the data party's start, with its key pair and seeds"])
    if saved[DATA].duplicated or saved[LABEL].duplicated or epoch is None:
        raise error
    if not resuming:
        damaged = [line for role in (DATA, LABEL) for line in saved[role].skipped
                   if line.startswith(party_path(checkpoint_dir, role) + ":")]
        if damaged:  # a file that does not load: no resume advice can make it load
            raise ValueError(f"{damaged[0]} — that file is damaged and the model cannot be read "
                             f"without it; restore it from a copy, or retrain epoch "
                             f"{epoch + 1} from epoch {epoch}, which both parties still have "
                             "(train --resume, or both `party ... --resume`, with the run's "
                             "settings)")
        raise ValueError(f"{error} — the run was interrupted after epoch {epoch}: resume it "
                         "(train --resume) to bring both parties to one epoch")
    pair = Pair(saved[DATA].states[epoch], saved[LABEL].states[epoch],
                saved[DATA].skipped + saved[LABEL].skipped)
    check_checkpoint_pair(pair.data, pair.label)
    for role in (DATA, LABEL):
        pair.notes += [f"{saved[role].paths[newer]} (after epoch {newer}) passed over: the other "
                       "party has no file of that epoch" for newer in saved[role].epochs
                       if newer > epoch]
    return pair


def clean_temporaries(checkpoint_dir, role: str, before: float) -> list:
    """Remove ``role``'s temporary files that a kill left in ``checkpoint_dir`` mid-write:
    only names of write_atomically's pattern for this party's files, only if last modified
    before ``before`` (the start of this run). Returns the paths removed."""
    removed = []
    directory = os.fspath(checkpoint_dir)
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        match = _TEMPORARY.fullmatch(name)
        path = os.path.join(directory, name)
        if not match or match.group(1) != role or not os.path.isfile(path):
            continue
        try:
            if os.path.getmtime(path) < before:
                os.unlink(path)
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def refuse_to_overwrite(checkpoint_dir, roles=(DATA, LABEL)) -> None:
    """A new run never overwrites a run that could still be resumed."""
    for role in roles:
        files = party_files(checkpoint_dir, role)
        if files:
            raise ValueError(f"{files[0]} already exists: resume it, or train into another "
                             "directory")


def needed_bytes(n_features: int, layer_sizes, key_bits: int) -> int:
    """An upper estimate of what a run keeps in its checkpoint directory at once: per party
    its two epochs' files and one being written. Each big integer (ε_acc, the weight share, the
    key) as the unicode digits the file stores (4 bytes a digit, before compression: σ and the
    plan's bits give ε_acc some 40 digits), each float 8 bytes, twice over for the velocities,
    and 64 KiB per file of names and headers."""
    sizes = [int(size) for size in layer_sizes]
    first = sizes[0] * sizes[1]
    floats = sum(a * b + b for a, b in zip(sizes[1:], sizes[2:])) + sizes[1] + 2 * n_features
    data_file = 4 * (50 * first + 3 * (key_bits // 3 + 1)) + 8 * 2 * n_features + (64 << 10)
    label_file = 4 * (key_bits // 3 + 1 + 50 * first) + 16 * floats + (64 << 10)
    return 3 * (data_file + label_file)


def save_epoch(state, checkpoint_dir, role: str) -> None:
    """Save ``state`` (after epoch E) as ``role``'s main file, keeping epoch E-1's file: the
    main file, if it holds epoch E-1, is renamed to its epoch name first; every other epoch file
    is removed BEFORE the new main file is written, so that a kill at any point leaves at most
    one file per epoch (epoch E-1's, then E's too)."""
    epoch = state.epochs_completed
    main = party_path(checkpoint_dir, role)
    keep = epoch_path(checkpoint_dir, role, epoch - 1)
    if os.path.exists(main):
        try:
            before = _loader(role).load(main, allow_insecure=True).epochs_completed
        except ValueError:
            before = None  # unusable: overwritten below
        if before == epoch - 1:
            os.replace(main, keep)
    for path in party_files(checkpoint_dir, role):
        if path not in (main, keep):
            os.unlink(path)
    state.save(main)


def remove_party_files(checkpoint_dir, role: str) -> None:
    """Remove ``role``'s files: a run restarted from the data party's start drops what the
    interrupted first attempt left of this party (at most its epoch 1), before its own
    first epoch could save anything to pair it with."""
    for path in party_files(checkpoint_dir, role):
        os.unlink(path)


def saver(checkpoint_dir, *, data_party=None, label_party=None, feature_names=None,
          feature_mean=None, feature_std=None, class_names=None, started: float | None = None,
          input_perturbation=None, preparation=None):
    """``after_epoch`` for protocol.train: each party present in this process saves its own
    files in ``checkpoint_dir`` (save_epoch). (In one process the two writes are separate, as on
    two machines.) Temporary files a killed run left for these parties, older than ``started``
    (default: now), are removed first. ``preparation`` (jobs/preparation.py) is kept with the
    data party's state.

    Called after step 0 and before the first epoch. A party at epoch 0 (a new run, or one
    started again, can_restart) then prepares its directory: the label party removes any file
    an interrupted first attempt left; the data party saves its start as epoch 0 — before it
    takes part in the first epoch, so before the label party can have saved anything."""
    try:
        os.makedirs(checkpoint_dir, exist_ok=True)  # now, not after the first epoch's work
    except OSError as error:
        raise ValueError(f"checkpoint directory {checkpoint_dir}: cannot create it "
                         f"({error.strerror})") from None
    started = time.time() if started is None else started
    for role, party in ((DATA, data_party), (LABEL, label_party)):
        if party is not None:
            clean_temporaries(checkpoint_dir, role, started)

    def data_state(epochs_completed: int) -> DataPartyState:
        return DataPartyState.of(data_party, epochs_completed=epochs_completed,
                                 feature_names=feature_names, feature_mean=feature_mean,
                                 feature_std=feature_std, input_perturbation=input_perturbation,
                                 preparation=preparation)

    def save(epochs_completed: int) -> None:
        if data_party is not None:
            save_epoch(data_state(epochs_completed), checkpoint_dir, DATA)
        if label_party is not None:
            save_epoch(LabelPartyState.of(label_party, epochs_completed=epochs_completed,
                                          class_names=class_names), checkpoint_dir, LABEL)

    if label_party is not None and label_party.epochs_completed == 0:
        remove_party_files(checkpoint_dir, LABEL)
    if data_party is not None and data_party.epochs_completed == 0:
        save_epoch(data_state(0), checkpoint_dir, DATA)
    return save


def load_pair(checkpoint_dir, *, allow_insecure: bool = False):
    """(DataPartyState, LabelPartyState) from ``checkpoint_dir``: the latest epoch both parties
    saved (find_pair), each validated, and checked to belong together (same key, same epoch,
    same plans)."""
    pair = find_pair(checkpoint_dir, allow_insecure=allow_insecure)
    return pair.data, pair.label