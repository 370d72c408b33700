"""A run's checkpoint directory: each party's own files, its latest epoch and the one before,
the epoch both parties can resume from, and the saver both modes call after every epoch.

checkpoint.py says what ONE party's file holds; this module says which files a run keeps and
which of them a resumed run loads.

  data_party.npz             the data party's state after its latest epoch E
  data_party.epoch-<E-1>.npz its state after the epoch before (none after the first epoch)
  label_party.npz, label_party.epoch-<E-1>.npz   the same for the label party

Saving epoch E: the file of epoch E-1 is renamed to its epoch name, the new state is written
atomically as the main file, then every older epoch file is removed. A crash, a kill or a full
disk at any moment leaves each party with its latest epoch or the one before, so the two
parties always share an epoch — in one process, where the data party's file is written first,
and in two, where each party saves on its own. Resuming takes the latest epoch BOTH parties
have (find_pair here; across the wire, transport.agree_epoch), from which the run continues
bit for bit as if it had never stopped.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from channel import DATA, LABEL
from jobs.checkpoint import (CHECKPOINT_FILES, DataPartyState, LabelPartyState, party_name,
                        check_checkpoint_pair)

_EPOCH_FILE = re.compile(r"(data|label)_party\.epoch-([0-9]{1,9})\.npz")
# write_atomically's temporary files: <file name>.<8 characters of tempfile>.tmp
_TEMPORARY = re.compile(r"(data|label)_party(\.epoch-[0-9]{1,9})?\.npz\.[a-z0-9_]{8}\.tmp")


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


@dataclass
class Pair:
    """The two states of one epoch, and a line per file passed over (newer or unusable)."""

    data: DataPartyState
    label: LabelPartyState
    notes: list

    @property
    def epoch(self) -> int:
        return self.data.epochs_completed


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
    if saved[DATA].duplicated or saved[LABEL].duplicated or epoch is None:
        raise error
    if not resuming:
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


def save_epoch(state, checkpoint_dir, role: str) -> None:
    """Save ``state`` (after epoch E) as ``role``'s main file, keeping epoch E-1's file: the
    main file, if it holds epoch E-1, is renamed to its epoch name first; then every other
    epoch file is removed."""
    epoch = state.epochs_completed
    main = party_path(checkpoint_dir, role)
    if os.path.exists(main):
        try:
            before = _loader(role).load(main, allow_insecure=True).epochs_completed
        except ValueError:
            before = None  # unusable: overwritten below
        if before == epoch - 1:
            os.replace(main, epoch_path(checkpoint_dir, role, epoch - 1))
    state.save(main)
    for path in party_files(checkpoint_dir, role)[1:]:
        if path != epoch_path(checkpoint_dir, role, epoch - 1):
            os.unlink(path)


def saver(checkpoint_dir, *, data_party=None, label_party=None, feature_names=None,
          feature_mean=None, feature_std=None, class_names=None, started: float | None = None,
          input_perturbation=None, preparation=None):
    """``after_epoch`` for protocol.train: each party present in this process saves its own
    files in ``checkpoint_dir`` (save_epoch). (In one process the two writes are separate, as on
    two machines.) Temporary files a killed run left for these parties, older than ``started``
    (default: now), are removed first. ``preparation`` (jobs/preparation.py) is kept with the
    data party's state."""
    try:
        os.makedirs(checkpoint_dir, exist_ok=True)  # now, not after the first epoch's work
    except OSError as error:
        raise ValueError(f"checkpoint directory {checkpoint_dir}: cannot create it "
                         f"({error.strerror})") from None
    started = time.time() if started is None else started
    for role, party in ((DATA, data_party), (LABEL, label_party)):
        if party is not None:
            clean_temporaries(checkpoint_dir, role, started)

    def save(epochs_completed: int) -> None:
        if data_party is not None:
            save_epoch(DataPartyState.of(data_party, epochs_completed=epochs_completed,
                                         feature_names=feature_names, feature_mean=feature_mean,
                                         feature_std=feature_std,
                                         input_perturbation=input_perturbation,
                                         preparation=preparation),
                       checkpoint_dir, DATA)
        if label_party is not None:
            save_epoch(LabelPartyState.of(label_party, epochs_completed=epochs_completed,
                                          class_names=class_names), checkpoint_dir, LABEL)
    return save


def load_pair(checkpoint_dir, *, allow_insecure: bool = False):
    """(DataPartyState, LabelPartyState) from ``checkpoint_dir``: the latest epoch both parties
    saved (find_pair), each validated, and checked to belong together (same key, same epoch,
    same plans)."""
    pair = find_pair(checkpoint_dir, allow_insecure=allow_insecure)
    return pair.data, pair.label