"""The command line: ``python acml.py train | predict | export | party | token | audit | bench``.

Every bad input ends in one line on stderr and exit code 2; the library does the work (the
one-process run of jobs/simulation.py, the two-process sessions of network/transport.py). This
module builds on jobs/ and not on acml.py, whose ``main`` loads it: the imports form no circle.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import decimal
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from jobs import checkpoint
from jobs import data
from jobs import preparation
from jobs import run_directory
import nn
import paillier
from network import alignment
from network import transport
from network import wire
from jobs import simulation
from jobs.export import EXPORT_REVEALS, REVEAL_FLAG, export_model
from jobs.progress import PartyProgress
from jobs.settings import DEFAULT_KEY_BITS, KEY_BITS_NOTE, Config
from jobs.data import prepare
from speed import kernels
from channel import DATA, LeakageError
from attacks.flaws import InsecureFlawWarning
from parties import INIT_SEED_BITS
from privacy import input_perturbation
from plan import (MAX_BATCH_SIZE, MAX_BLOCK_ROWS, MAX_EPOCHS, MAX_HIDDEN, MAX_LR, MAX_PLAN_BITS,
                  MAX_STREAM_CHUNKS, MIN_SECURE_SIGMA, SEED_LIMIT, STREAM_CHUNKS, FixedPointPlan,
                  check_sigma)


class UsageError(ValueError):
    """Bad input at the command line: reported in one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line naming the flag, exit code 2:
    ``acml.py train: error: --lr: must be a finite number in (0, 16], got 'inf'``
    (``--help`` still prints the whole usage)."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # named by the sub-command that refuses them, not by the top parser
            words = ["acml.py", getattr(parsed, "command", None), getattr(parsed, "role", None)]
            prog = " ".join(word for word in words if word)
            self.exit(2, f"{prog}: error: {prog} does not take {' '.join(extras)} "
                         f"(`{prog} --help` lists its options)\n")
        return parsed

    def error(self, message):
        line = message.splitlines()[0] if message else "bad arguments"
        line = re.sub(r"^argument ([^:/\s]+)(?:/[^:\s]+)*: ", r"\1: ", line)
        self.exit(2, f"{self.prog}: error: {line}\n")


# Caps on what the command line accepts (the README's option tables say the same). Those of
# the training plan are the caps a data party accepts from its peer (plan.TrainingPlan).
MAX_KEY_BITS = 8192  # keys above take hours to generate here, and break int<->str conversions
MAX_TIMEOUT = 86400.0  # one day per message
MAX_FRAME_MB = 4096.0
MAX_WORKERS = 256
INIT_SEED_LIMIT = 1 << INIT_SEED_BITS


def _integer(low: int, high: int):
    """An argparse type: an integer in low..high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high:,}, got {text!r}")
        return value
    return parse


def _float(text: str) -> float:
    """float(text), NaN for what is no number, and an argparse error for a number too small
    for a float: float('1e-400') is 0.0 and float('1e-310') a subnormal that has lost digits,
    which a flag must not take silently (as '1e400', inf, is refused for being too large)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    if math.isfinite(value) and abs(value) < sys.float_info.min:
        try:
            zero = decimal.Decimal(text.strip().replace("_", "")) == 0
        except decimal.InvalidOperation:
            zero = False
        if not zero:
            raise argparse.ArgumentTypeError(
                f"{text!r} is too small for a float (it underflows to "
                f"{'0' if value == 0 else 'a subnormal'}); write 0 if 0 is meant, else a "
                f"number of magnitude at least {sys.float_info.min:.3g}")
    return value


def _real(low: float, high: float, *, low_open: bool = True, high_open: bool = False,
          what: str = "a finite number"):
    """An argparse type: a finite float in the interval (or [) low, high ] (or ))."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text):
        value = _float(text)
        inside = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"must be {what} in {interval}, got {text!r}")
        return value
    return parse


def _learning_rate(text: str) -> float:
    lr = _real(0.0, MAX_LR)(text)
    plan = FixedPointPlan()
    try:
        plan.quantize_lr(lr)
    except ValueError:  # it rounds to 0 on the plan's grid
        raise argparse.ArgumentTypeError(
            f"{text!r} rounds to 0 at the fixed-point plan's {plan.lr_frac_bits} fractional "
            f"bits; give at least 2**-{plan.lr_frac_bits} = {2.0 ** -plan.lr_frac_bits:.3g}")
    return lr


def _key_bits(text: str) -> int:
    try:
        below = int(text) < paillier.MIN_KEY_BITS
    except ValueError:
        below = False
    if below:
        raise argparse.ArgumentTypeError(f"{text} is below the hard floor of "
                                         f"{paillier.MIN_KEY_BITS} bits, got {text!r}")
    bits = _integer(paillier.MIN_KEY_BITS, MAX_KEY_BITS)(text)
    if bits % 2:
        raise argparse.ArgumentTypeError(f"must be even (two primes of half the size), got {text!r}")
    return bits


def _parse_hidden(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes widths like 8 or 16,8, got {text!r}")
    if not sizes or not all(1 <= size <= MAX_HIDDEN for size in sizes):
        raise argparse.ArgumentTypeError(f"widths must be integers in 1..{MAX_HIDDEN}, "
                                         f"got {text!r}")
    return sizes


SIGMA = _integer(1, MAX_PLAN_BITS)
EPOCHS = _integer(1, MAX_EPOCHS)
BATCH_SIZE = _integer(1, MAX_BATCH_SIZE)
SEED = _integer(0, SEED_LIMIT - 1)
BLOCK_ROWS = _integer(0, MAX_BLOCK_ROWS)
INIT_SEED = _integer(0, INIT_SEED_LIMIT - 1)
WIDTH = _integer(1, MAX_HIDDEN)
WORKERS = _integer(1, MAX_WORKERS)
STREAM = _integer(1, MAX_STREAM_CHUNKS)
MOMENTUM = _real(0.0, 1.0, low_open=False, high_open=True)
DP_DELTA = _real(0.0, 1.0, high_open=True)


def _dp_epsilon(text: str) -> float:
    """--dp-epsilon: a number > 0, or inf (no perturbation)."""
    value = _float(text)
    if not value > 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number > 0 (or inf: no perturbation), "
                                         f"got {text!r}")
    return value
TIMEOUT = _real(0.0, MAX_TIMEOUT, what="a number of seconds")
FRAME_MB = _real(0.0, MAX_FRAME_MB, what="a number of MiB")
PSI_RATIO = _real(1.0, alignment.MAX_PSI_MAX_RATIO, low_open=False, what="a factor")


def check_sigma_flag(sigma: int, insecure: bool) -> None:
    """plan.check_sigma's policy (under 40 bits only with --insecure-sigma), checked before any
    work and said as the usage error it is."""
    try:
        check_sigma(sigma, insecure, "--sigma")
    except ValueError as error:
        raise UsageError(str(error)) from None


def check_block_rows(block_rows: int, batch_size: int) -> None:
    """A batch is batch_size / block_rows whole blocks; that the blocks fit the packed slots
    is checked at setup, where the key is known (plan.Public.derive_packing)."""
    if block_rows and batch_size % block_rows:
        raise UsageError(f"--block-rows {block_rows}: --batch-size {batch_size} must be a "
                         "multiple of it (or --block-rows 0, row batches)")


def check_output_file(flag: str, path) -> None:
    """An output file must land in an existing, writable directory, and not be a directory."""
    if not path:
        return
    target = Path(path)
    folder = target.absolute().parent
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the directory {folder} is not writable")


def check_plot_path(path) -> None:
    """--plot: a .png file (as any output file), or else a folder: an existing writable one,
    or one to make in an existing writable directory."""
    if not path:
        return
    if str(path).lower().endswith(".png"):
        check_output_file("--plot", path)
        return
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"--plot {path}: is a file but no .png; give PATH.png or a folder")
    folder = target if target.is_dir() else target.parent
    if not folder.is_dir():
        raise UsageError(f"--plot {path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--plot {path}: the directory {folder} is not writable")


def check_input_file(flag: str, path) -> None:
    """An input file must be a regular file: a named pipe (FIFO) would block its reader forever
    and a device or a directory is no input. Asked with os.stat, which opens nothing."""
    problem = path and data.not_a_regular_file(path)
    if problem:
        raise UsageError(f"{flag} {path}: {problem}")


INPUT_FILE_FLAGS = ("--features", "--labels", "--token-file", "--tls-cert", "--tls-key",
                    "--tls-ca")


def check_inputs(args) -> None:
    """Every input file of this command, before any work starts."""
    for flag in INPUT_FILE_FLAGS:
        check_input_file(flag, getattr(args, flag[2:].replace("-", "_"), None))


def check_checkpoint_dir(flag: str, path) -> None:
    """A checkpoint directory must be a writable directory, or one that can be created."""
    if not path:
        return
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so the directory cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable")


def free_bytes(path) -> int | None:
    """Bytes an unprivileged process may still write on the disk of ``path`` (its nearest
    existing folder), or None where the system cannot say (no os.statvfs: not POSIX)."""
    if not hasattr(os, "statvfs"):
        return None
    folder = Path(path).absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


# What an output needs at least, to refuse before the work a disk that cannot hold it: a report
# or a predictions file is small; a checkpoint directory is sized by run_directory's estimate.
MIN_OUTPUT_BYTES = 1 << 20


def check_free_space(flag: str, path, needed: int) -> None:
    """Refuse, before any work, an output whose disk has less than ``needed`` bytes free."""
    if not path:
        return
    free = free_bytes(path)
    if free is not None and free < needed:
        raise UsageError(f"{flag} {path}: only {free / 2 ** 20:.2f} MiB free on its disk, "
                         f"under the {needed / 2 ** 20:.2f} MiB it needs; free some space or "
                         "write elsewhere")


def check_outputs(args) -> None:
    """Every output path of this command, before any work starts: where it goes, and that its
    disk has room (a checkpoint directory's size is checked once the data is read)."""
    for flag in ("--json", "--transcript", "--out"):
        check_output_file(flag, getattr(args, flag[2:], None))
        check_free_space(flag, getattr(args, flag[2:], None), MIN_OUTPUT_BYTES)
    check_plot_path(getattr(args, "plot", None))
    if not getattr(args, "predict", False) and args.command in ("train", "party"):
        check_checkpoint_dir("--checkpoint-dir", getattr(args, "checkpoint_dir", None))
        check_free_space("--checkpoint-dir", getattr(args, "checkpoint_dir", None),
                         MIN_OUTPUT_BYTES)


def check_checkpoint_room(path, n_inputs: int, layer_sizes, key_bits: int) -> None:
    """The checkpoint directory's disk must hold what the run keeps there at once
    (run_directory.needed_bytes): said before the key is made, not at the first epoch."""
    check_free_space("--checkpoint-dir", path,
                     run_directory.needed_bytes(n_inputs, layer_sizes, key_bits))


def add_model_options(parser) -> None:
    """The label party's choices (in `train` and in `party label`): declared once."""
    model = parser.add_argument_group("training")
    model.add_argument("--hidden", type=_parse_hidden, default=Config.hidden,
                       help=f"hidden widths, comma-separated, each 1..{MAX_HIDDEN}; the first is "
                            "the interactive layer (default 16)")
    model.add_argument("--activation", default=Config.activation, choices=sorted(nn.ACTIVATIONS))
    model.add_argument("--epochs", type=EPOCHS, default=Config.epochs,
                       help=f"1..{MAX_EPOCHS:,} (default {Config.epochs})")
    model.add_argument("--batch-size", type=BATCH_SIZE, default=Config.batch_size,
                       help=f"1..{MAX_BATCH_SIZE:,} (default {Config.batch_size})")
    model.add_argument("--lr", type=_learning_rate, default=Config.lr,
                       help=f"learning rate in (0, {MAX_LR:g}] (default {Config.lr:g})")
    model.add_argument("--momentum", type=MOMENTUM, default=Config.momentum,
                       help="in [0, 1), for the layers above the first (the first is plain "
                            "SGD; default 0)")
    model.add_argument("--seed", type=SEED, default=Config.seed,
                       help="public seed: the split, the batch order and the layers above "
                            f"(default {Config.seed}, see nn.HEADLINE)")
    model.add_argument("--block-rows", type=BLOCK_ROWS, default=0, metavar="B",
                       help="batch whole fixed blocks of B rows (B divides --batch-size, at most "
                            "the rows one packed ciphertext holds: 19 at 2048 bits), so step 0 "
                            "encrypts each block once; 0: row batches (default)")


THRESHOLD = _real(0.0, 1.0, high_open=True, what="a probability")


def _class_weight(text: str):
    """--class-weight: "balanced", or CLASS=WEIGHT pairs (names checked once the classes are
    known, in class_options)."""
    if text == nn.BALANCED:
        return text
    pairs = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        value = _float(weight) if sep else math.nan
        if not name.strip() or not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"takes 'balanced' or CLASS=WEIGHT pairs like "
                                             f"yes=5,no=1 with weights > 0, got {text!r}")
        if name.strip() in pairs:
            raise argparse.ArgumentTypeError(f"class {name.strip()!r} is given twice in {text!r}")
        pairs[name.strip()] = value
    return pairs


def add_class_options(parser, *, predicting: bool = False) -> None:
    """The label party's handling of rare classes: its loss weights (training only), its
    decision threshold and the class its reports name."""
    group = parser.add_argument_group("rare classes (the label party's)")
    if not predicting:
        group.add_argument("--class-weight", type=_class_weight, default=None,
                           metavar="balanced|CLASS=W,...",
                           help="weigh each training row's loss by its class: 'balanced' (n / "
                                "(classes × rows of the class), from the label party's training "
                                "labels) or CLASS=WEIGHT pairs (others weigh 1). Default: none")
    group.add_argument("--threshold", type=THRESHOLD, default=None,
                       help="two classes: predict the positive class when its probability is at "
                            "least this, in (0, 1) (default: "
                            + ("the checkpoint's" if predicting else "P(second class) >= 0.5")
                            + ")")
    group.add_argument("--positive-class", metavar="CLASS", default=None,
                       help="two classes: the class the threshold, precision, recall, F1 and "
                            "PR-AUC are about (default: "
                            + ("the checkpoint's" if predicting
                               else "the minority class of the training labels") + ")")


def class_id(name: str, class_names, flag: str) -> int:
    """The id of class ``name`` among ``class_names``, or one line listing the classes."""
    names = [str(value) for value in class_names]
    if name not in names:
        raise UsageError(f"{flag}: no class {name!r}; the classes are {', '.join(names)}")
    return names.index(name)


def class_options(args, class_names) -> dict:
    """Config's class_weight, threshold and positive_class from the flags, once the class
    names are known: a threshold or positive class only for two classes."""
    names = [str(value) for value in class_names]
    if len(names) != 2:
        for flag in ("--threshold", "--positive-class"):
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise UsageError(f"{flag} is for two classes; the labels hold {len(names)}: "
                                 f"{', '.join(names)}")
    weight = args.class_weight
    if isinstance(weight, dict):
        ids = {class_id(name, names, "--class-weight"): value for name, value in weight.items()}
        weight = [ids.get(k, 1.0) for k in range(len(names))]
    positive = (None if args.positive_class is None
                else class_id(args.positive_class, names, "--positive-class"))
    return {"class_weight": weight, "threshold": args.threshold, "positive_class": positive}


def add_seed_and_bottom_options(parser) -> None:
    """The data party's choices (in `train` and in `party data`): declared once."""
    parser.add_argument("--init-seed", type=INIT_SEED, default=None,
                        help="the data party's own seed for W0, only to reproduce a run "
                             "(default: from secrets; the label party must never know W0)")
    parser.add_argument("--bottom", type=WIDTH, default=None, metavar="K",
                        help="give the data party a bottom model X → α (K wide, ReLU) under the "
                             "interactive layer; step 4b then reveals δ·Wᵀ to it (a label leak)")


def add_privacy_options(parser, *, predicting: bool = False) -> None:
    """The data party's input perturbation (privacy/input_perturbation.py): in `train`,
    `party data` and `predict`."""
    group = parser.add_argument_group("privacy of the data party's rows")
    group.add_argument("--dp-epsilon", type=_dp_epsilon, default=None, metavar="ε",
                       help=("perturb the rows to predict with (ε, δ)-DP per row instead of the "
                             "checkpoint's budget (default: the checkpoint's; inf: unperturbed)"
                             if predicting else
                             "clip each standardised row to L2 norm √d and add Gaussian noise "
                             "once, before step 0, for (ε, δ)-DP per row against the label party "
                             "(it also perturbs the rows to predict). Default: off — the label "
                             "party then learns X from two epochs of z"))
    group.add_argument("--dp-delta", type=DP_DELTA, default=None, metavar="δ",
                       help=f"δ of --dp-epsilon (default {input_perturbation.DEFAULT_DELTA:g}: "
                            "well under 1/n up to some 10⁴ rows; give about 1/n² for larger "
                            "tables)")


def check_privacy_flags(args) -> None:
    """--dp-delta alone switches nothing on: refused, in one line."""
    if args.dp_delta is not None and args.dp_epsilon is None:
        raise UsageError(f"--dp-delta {args.dp_delta:g} needs --dp-epsilon: δ alone switches "
                         "nothing on")


def add_preparation_options(parser) -> None:
    """The data party's rules for its raw columns (jobs/preparation.py), in `train` and `party
    data`: fitted on its training rows, kept in its checkpoint, applied again by `predict`."""
    group = parser.add_argument_group("the data party's preparation of its raw columns")
    group.add_argument("--categorical", action="append", metavar="COL[,COL]",
                       help="one-hot encode these columns (categories learned on the training "
                            "rows; an unseen category at prediction is all zeros); repeatable")
    group.add_argument("--impute", action="append", metavar="COL=STRATEGY",
                       help="fill this column's blank cells: mean, median, most_frequent "
                            "(learned on the training rows) or constant[:VALUE] (default 0, "
                            "or 'missing' for a categorical column); repeatable")
    group.add_argument("--drop", action="append", metavar="COL[,COL]",
                       help="leave these columns out (ids, dates, free text); repeatable")


def preparation_flags(args) -> list:
    """The preparation options given, by flag."""
    return [flag for flag, given in (("--categorical", args.categorical),
                                     ("--impute", args.impute), ("--drop", args.drop)) if given]


def rules_from_args(args) -> preparation.Rules:
    """The declared rules, or a one-line UsageError naming the option."""
    try:
        return preparation.rules_from_options(args.categorical, args.impute, args.drop)
    except ValueError as error:
        raise UsageError(str(error)) from None


def add_training_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default=None, choices=data.BUILTIN_DATASETS,
                        help="a built-in dataset (default: german_credit)")
    source.add_argument("--features", help="features CSV of the data party")
    source.add_argument("--labels", help="labels CSV of the label party")
    source.add_argument("--id-column", help="id column joining the two CSVs")
    source.add_argument("--label-column", help="label column of the labels CSV")
    source.add_argument("--test-fraction", type=_real(0.0, 1.0, high_open=True), default=0.2,
                        help="rows held out for the test report, in (0, 1) (default 0.2)")
    source.add_argument("--keep-common-ids", action="store_true",
                        help="train on the ids both files hold (as `party` does), printing the "
                             "counts; without it an id in one file only is refused")
    source.add_argument("--plaintext", action="store_true",
                        help="a rehearsal to choose settings: the same training (the plaintext "
                             "twin) with no encryption, in seconds; then the encrypted run with "
                             "the same options and the printed --init-seed gives the same "
                             "weights, within the fixed-point quantisation")
    add_preparation_options(parser)
    add_model_options(parser)
    add_class_options(parser)
    add_seed_and_bottom_options(parser)
    add_privacy_options(parser)
    crypto = parser.add_argument_group("encryption")
    crypto.add_argument("--key-bits", type=_key_bits, default=DEFAULT_KEY_BITS,
                        help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    crypto.add_argument("--insecure-small-key", action="store_true",
                        help="allow keys under 1024 bits (tests and demos only: NOT secure)")
    crypto.add_argument("--sigma", type=SIGMA, default=MIN_SECURE_SIGMA,
                        help="statistical hiding margin of every mask, in bits (default 40; "
                             "under 40 only with --insecure-sigma)")
    crypto.add_argument("--insecure-sigma", action="store_true",
                        help="allow --sigma under 40 (tests and demos only: NOT secure)")
    crypto.add_argument("--no-packing", dest="packing", action="store_false",
                        help="one value per ciphertext (the same weights, many times slower)")
    crypto.add_argument("--workers", type=WORKERS, default=1,
                        help="processes for the modular exponentiations (default 1: this one)")
    crypto.add_argument("--dask", metavar="SCHEDULER_ADDRESS", default=None,
                        help=DASK_HELP + " (both parties' work, in this one process)")


UNMATCHED_HINT = "; add --keep-common-ids to train on the ids both files hold"


def datasets_from_args(args):
    """(train set, test set, the data party's standardiser, its preparation or None)."""
    rules = rules_from_args(args)
    prepared = None
    if args.features or args.labels:
        missing = [flag for flag, value in (("--features", args.features),
                                            ("--labels", args.labels),
                                            ("--id-column", args.id_column),
                                            ("--label-column", args.label_column)) if not value]
        if missing:
            raise UsageError(f"CSV input needs {', '.join(missing)}")
        if args.dataset:
            raise UsageError("give either --dataset or --features/--labels, not both")
        if not 0.0 < args.test_fraction < 1.0:
            raise UsageError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
        dataset, prepared, counts = preparation.load_prepared_pair(
            args.features, args.labels, id_column=args.id_column, label_column=args.label_column,
            rules=rules, keep_common_ids=args.keep_common_ids, test_fraction=args.test_fraction,
            seed=args.seed, unmatched_hint=UNMATCHED_HINT)
        if args.keep_common_ids:
            print(common_ids_line(counts), file=sys.stderr)
        if not rules.empty:
            print(f"data party: {prepared.describe()}", file=sys.stderr)
    else:
        flags = preparation_flags(args) + (["--keep-common-ids"] if args.keep_common_ids
                                           else [])
        if flags:
            raise UsageError(f"{', '.join(flags)}: for --features/--labels files, not a built-in "
                             "--dataset")
        dataset = data.load_builtin(args.dataset or "german_credit")
    if not 0.0 < args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    # Two party CSVs split as the two parties would (unstratified): see split.prepare.
    train_set, test_set, scaler = prepare(dataset, test_fraction=args.test_fraction,
                                          seed=args.seed, return_standardizer=True,
                                          stratified=not args.features)
    # The report is computed on the test rows after the last epoch: an empty test split would
    # only fail then, losing the whole run, so it is refused here, before any key is made.
    if len(test_set.y) == 0:
        n_rows = len(train_set.y)
        raise UsageError(f"--test-fraction {args.test_fraction:g}: 0 of the {n_rows} rows would "
                         f"be test rows; the report needs at least one (give at least "
                         f"{1 / n_rows:.3g})")
    return train_set, test_set, scaler, prepared


def common_ids_line(counts: dict) -> str:
    """The id counts of --keep-common-ids, worded as `party` prints its alignment."""
    only_features = counts["n_features_ids"] - counts["n_common"]
    only_labels = counts["n_label_ids"] - counts["n_common"]
    return (f"kept the {counts['n_common']:,} ids shared by the features file's "
            f"{counts['n_features_ids']:,} and the labels file's {counts['n_label_ids']:,} "
            f"({only_features:,} only in the features file, {only_labels:,} only in the labels "
            f"file, left out)")


def check_key_bits(bits: int, insecure: bool) -> None:
    """The key-size policy at the command line: under 1024 bits only with the insecure flag."""
    if bits < paillier.INSECURE_KEY_BITS and not insecure:
        raise UsageError(f"--key-bits {bits} is under {paillier.INSECURE_KEY_BITS} bits and not "
                         "secure; add --insecure-small-key for tests and demos")


def config_from_args(args) -> Config:
    check_key_bits(args.key_bits, args.insecure_small_key)
    check_sigma_flag(args.sigma, args.insecure_sigma)
    check_block_rows(args.block_rows, args.batch_size)
    check_privacy_flags(args)
    return Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  key_bits=args.key_bits, seed=args.seed, allow_insecure=args.insecure_small_key,
                  plan=FixedPointPlan(sigma=args.sigma), bottom=args.bottom,
                  init_seed=args.init_seed, allow_insecure_sigma=args.insecure_sigma,
                  packing=args.packing, block_rows=args.block_rows,
                  dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta)


def check_key_fits(plan: FixedPointPlan, key_bits: int, batch_size: int, n_inputs: int) -> None:
    """The key must carry the plan's values (plan.check_key), said before the key is made."""
    try:
        plan.check_key(key_bits, batch_size, n_inputs)
    except ValueError as error:
        raise UsageError(f"--key-bits {key_bits} with --sigma {plan.sigma} and --batch-size "
                         f"{batch_size}: {error}") from None


def with_transcript(path, run):
    """``run(transcript)`` with every message streamed to ``path`` as it crosses (a temporary
    file in the same directory, renamed into place only when the run is done), or with None."""
    if not path:
        return run(None)
    out = []
    checkpoint.write_atomically(path, lambda handle: out.append(run(handle)), mode="w")
    return out[0]


def key_bits_note(args) -> str | None:
    """The note on the default key's cost: a measurement on German credit, so said only when
    German credit is what this run trains on, with the default key."""
    german_credit = not args.features and (args.dataset or "german_credit") == "german_credit"
    return KEY_BITS_NOTE if german_credit and args.key_bits == DEFAULT_KEY_BITS else None


def command_train(args) -> int:
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    if args.resume and args.init_seed is not None:  # as `party data` says: it would be ignored
        raise UsageError(f"--init-seed {args.init_seed}: --resume takes W's mask from the "
                         "checkpoint; drop --init-seed")
    if args.plaintext:
        given = [flag for flag, value in (("--checkpoint-dir", args.checkpoint_dir),
                                          ("--resume", args.resume),
                                          ("--transcript", args.transcript)) if value]
        if given:
            raise UsageError(f"--plaintext rehearses without encryption: no parties, no "
                             f"messages, nothing to save; drop {', '.join(given)}")
    config = config_from_args(args)
    check_outputs(args)
    check_inputs(args)
    with contextlib.ExitStack() as held:
        if args.checkpoint_dir:  # both parties' locks, for the whole run, before any work
            held.enter_context(run_directory.hold(args.checkpoint_dir))
        return train_holding(args, config)


def train_holding(args, config) -> int:
    """`train`, once its checkpoint directory (if any) is held."""
    # The data party's key is made on another core while the data are read, checked and
    # standardised (seconds each at 2048 bits); resuming, the key is the checkpoint's.
    keypair = None if args.resume or args.plaintext else kernels.keypair_in_background(
        config.key_bits, allow_insecure=config.allow_insecure)
    try:
        train_set, test_set, scaler, prepared = datasets_from_args(args)
        config = dataclasses.replace(config, **class_options(args, train_set.class_names))
        n_inputs = train_set.X.shape[1] if config.bottom is None else config.bottom
        check_key_fits(config.plan, config.key_bits, config.batch_size, n_inputs)
        if args.plaintext:
            return rehearse(args, train_set, test_set, config)
        check_checkpoint_room(args.checkpoint_dir, train_set.X.shape[1],
                              config.layer_sizes(train_set.X.shape[1], train_set.n_classes),
                              config.key_bits)
    except BaseException:
        if keypair is not None:  # no run: stop the search instead of finishing a key
            keypair.cancel()
        raise
    note = key_bits_note(args)
    if note:
        print(f"note: {note}", file=sys.stderr)
    with warnings.catch_warnings(), workers(args.workers, args.dask) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        result = with_transcript(args.transcript, lambda transcript: simulation.train(
            train_set, test_set, config, progress=not args.quiet, estimate=not args.quiet,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, standardizer=scaler,
            executor=executor, transcript=transcript, preparation=prepared,
            keypair=keypair))
    if args.resume:
        for note in result.metrics["checkpoint_notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(f"resumed from {args.checkpoint_dir} after epoch "
              f"{result.metrics['resumed_after_epoch']}", file=sys.stderr)
    print(result.summary())
    if args.json:
        try:
            checkpoint.write_atomically(args.json, lambda handle: json.dump(
                result.metrics, handle, indent=2, allow_nan=False), mode="w")
        except OSError as error:  # checked before training, yet the disk filled meanwhile
            where = rescue_run(args, result, train_set, scaler, prepared)
            raise LateFailure(f"{describe_error(error)}; {where}") from None
    write_plots(args.plot, result)
    return 0


def write_plots(path, result) -> None:
    """--plot: the run's loss, ROC and precision–recall curves (jobs.report.plot_run), if asked."""
    if path:
        from jobs.report import plot_run  # matplotlib is loaded only when a plot is asked for
        for written in plot_run(result.metrics, path, result.test_labels, result.test_scores):
            print(f"wrote {written}", file=sys.stderr)


class LateFailure(ValueError):
    """An output that failed after the work was done: the line says where the work is."""


def rescue_run(args, result, train_set, scaler, prepared=None) -> str:
    """Where a finished one-process run survives an output that failed at the end: its
    checkpoint directory if it has one, else a new directory of both parties' final states
    (the current directory's ``acml-rescue-<pid>``, else the temporary folder's), with the
    report beside them. Returns the words that say where, for the one line."""
    if args.checkpoint_dir:
        return (f"the trained model is safe in {args.checkpoint_dir} (predict or export from it) "
                "and the report is printed above")
    name = f"acml-rescue-{os.getpid()}"
    problems = []
    for folder in (os.getcwd(), tempfile.gettempdir()):
        target = os.path.join(folder, name)
        try:
            with run_directory.hold(target):
                run_directory.saver(
                    target, data_party=result.data_party, label_party=result.label_party,
                    feature_names=train_set.feature_names, feature_mean=scaler.mean,
                    feature_std=scaler.std, class_names=train_set.class_names,
                    input_perturbation=result.input_perturbation, preparation=prepared)(
                        result.label_party.epochs_completed)
            checkpoint.write_atomically(os.path.join(target, "report.json"), lambda handle: (
                json.dump(result.metrics, handle, indent=2, allow_nan=False)), mode="w")
            return (f"the trained model was saved to {target} instead (predict or export from "
                    "it; its report.json beside it)")
        except (OSError, ValueError) as error:
            problems.append(describe_error(error))
    return f"the trained model could not be saved either ({'; '.join(problems)})"


def rehearse(args, train_set, test_set, config: Config) -> int:
    """`train --plaintext`: the twin alone, said in the first line and in --json."""
    print("plaintext rehearsal: no encryption and no second party; the settings, not the "
          "privacy, are what this run tests", file=sys.stderr)
    result = simulation.rehearse(train_set, test_set, config)
    print(result.summary())
    if args.json:
        checkpoint.write_atomically(args.json, lambda handle: json.dump(
            result.metrics, handle, indent=2, allow_nan=False), mode="w")
    write_plots(args.plot, result)
    return 0


def command_predict(args) -> int:
    check_privacy_flags(args)
    check_outputs(args)
    check_inputs(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        ids, prediction = simulation.predict_file(
            args.checkpoint_dir, args.features, args.id_column,
            allow_insecure=args.insecure_small_key, dp_epsilon=args.dp_epsilon,
            dp_delta=args.dp_delta, threshold=args.threshold,
            positive_class=args.positive_class)
    if prediction.rule:
        print(f"predicted_class: {prediction.rule}", file=sys.stderr)

    write_predictions(args.out, args.id_column, ids, prediction)
    return 0


def command_export(args) -> int:
    if not args.i_understand_this_reveals_the_weights:
        raise UsageError("export combines both parties' shares into the plaintext weights, which "
                         f"then stop being private; add {REVEAL_FLAG} to consent")
    check_output_file("--out", args.out)
    arrays = export_model(args.checkpoint_dir, args.out, i_understand_this_reveals_the_weights=True)
    names = [name for name in arrays if name.startswith(("bottom.", "layers."))]
    print(f"wrote {args.out}: {', '.join(names)} — {EXPORT_REVEALS}", file=sys.stderr)
    return 0


def write_predictions(out, id_column: str, ids, prediction) -> None:
    """id, predicted_class and P(class) of every class, named, as CSV (to ``out`` or stdout)."""
    scores = prediction.scores

    def write(handle):
        writer = csv.writer(handle)
        classes = prediction.classes
        writer.writerow([id_column, "predicted_class", *(f"p_{name}" for name in classes)])
        for row, (row_id, name) in enumerate(zip(ids, prediction.class_names)):
            probabilities = ([1.0 - scores[row], scores[row]] if scores.ndim == 1
                             else list(scores[row]))
            writer.writerow([row_id, name, *(repr(float(p)) for p in probabilities)])

    if out:
        checkpoint.write_atomically(out, write, mode="w", newline="")
        print(f"wrote {len(ids)} predictions to {out}", file=sys.stderr)
    else:
        write(sys.stdout)


def command_party(args) -> int:
    """One party of a two-process run over TCP (transport.py): training, or with --predict,
    prediction from each party's own checkpoint."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    if args.predict and (args.resume or not args.checkpoint_dir):
        raise UsageError("--predict needs --checkpoint-dir (this party's own checkpoint) and no "
                         "--resume")
    if getattr(args, "out", None) and not args.predict:
        raise UsageError("--out is for party label --predict; the report goes to --json")
    check_sigma_flag(args.sigma, args.insecure_sigma)
    if args.role == "data":
        check_privacy_flags(args)
    if args.role == "data" and not args.predict:
        check_key_bits(args.key_bits, args.insecure_small_key)
    if args.role == "label":
        check_block_rows(args.block_rows, args.batch_size)
    check_outputs(args)
    check_inputs(args)
    tls_files = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key,
                 "--tls-ca": args.tls_ca}
    given = [flag for flag, path in tls_files.items() if path]
    if given and len(given) < len(tls_files):
        missing = [flag for flag in tls_files if flag not in given]
        raise UsageError(f"TLS needs --tls-cert, --tls-key and --tls-ca together; "
                         f"{', '.join(given)} given without {', '.join(missing)}")
    # loaded now, so that a bad file is one line before any network use
    tls = None if not given else wire.tls_context(
        wire.TLSConfig(args.tls_cert, args.tls_key, args.tls_ca), server=args.role == "data")
    token = wire.read_token(args.token_file)
    frame_cap = int(args.max_frame_mb * 2 ** 20)
    progress = PartyProgress()  # its total: as soon as the session gives it
    # This party's lock on its directory, before any work (the key generation included):
    # exclusive for a run, shared for --predict (run_directory.hold)
    lock = contextlib.nullcontext() if not args.checkpoint_dir else run_directory.hold(
        args.checkpoint_dir, (args.role,), shared=args.predict)
    with lock, warnings.catch_warnings(), workers(args.workers, args.dask) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        if args.role == "data":
            run = with_transcript(args.transcript, lambda transcript: _data_party(
                args, token, tls, frame_cap, executor, None if args.quiet else progress,
                transcript))
        else:
            run = with_transcript(args.transcript, lambda transcript: _label_party(
                args, token, tls, frame_cap, executor, None if args.quiet else progress,
                transcript))
    progress.close()
    if args.predict and args.role == "label":
        session, ids, prediction = run
        write_predictions(args.out, "id", ids, prediction)
        print(session.summary(), file=sys.stderr)
        return 0
    print(run.summary())
    if getattr(args, "json", None):  # only `party label` writes the report
        metrics = run.metrics()
        try:
            checkpoint.write_atomically(args.json, lambda handle: json.dump(
                metrics, handle, indent=2, allow_nan=False), mode="w")
        except OSError as error:
            where = (f"this party's trained state is safe in {args.checkpoint_dir}"
                     if args.checkpoint_dir else "no --checkpoint-dir: this party's trained "
                     "state was not saved")
            raise LateFailure(f"{describe_error(error)}; {where}; the report is printed above"
                              ) from None
    return 0


def _listen(host: str, port: int, address: str):
    """The listening socket, or a one-line UsageError naming --listen (a port in use, an
    address this machine does not have)."""
    try:
        return wire.listen(host, port)
    except OSError as error:
        raise UsageError(f"--listen {address}: cannot listen there: "
                         f"{error.strerror or error}") from None


def _data_party(args, token, tls, frame_cap, executor, progress, transcript):
    # The file is read and checked against the rules before listening (every undeclared text
    # column in one line); the rules are fitted only once the alignment gives the training rows.
    rules = rules_from_args(args)
    if args.predict:
        if not rules.empty:
            raise UsageError(f"{', '.join(preparation_flags(args))}: --predict prepares the rows "
                             "as the checkpoint's training did; drop them")
        saved = checkpoint.DataPartyState.load(
            run_directory.party_path(args.checkpoint_dir, DATA),
            allow_insecure=args.insecure_small_key)
        ids, X, feature_names = preparation.load_features_as_trained(args.features,
                                                                     args.id_column,
                                                                     saved.prepared())
    else:
        raw = preparation.read_raw_features(args.features, args.id_column)
        preparation.check_rules(raw, rules)
    host, port = wire.parse_address(args.listen, "--listen")
    # The address is tried before the key generation (seconds at 2048 bits), so that a port in
    # use is said at once; the socket is opened again after it, when the wait can begin.
    _listen(host, port, args.listen).close()
    if args.predict:
        keypair = None
    else:
        check_key_bits(args.key_bits, args.insecure_small_key)
        if args.resume and args.init_seed is not None:
            raise UsageError("--resume takes W's mask from the checkpoint; drop --init-seed")
        # Resuming, the key pair is the checkpoint's: no new one. Otherwise it is made on
        # another core while this party waits for the label party to connect.
        keypair = None if args.resume else kernels.keypair_in_background(
            args.key_bits, allow_insecure=args.insecure_small_key)
    with _listen(host, port, args.listen) as listener:
        print(f"data party: listening on {wire.address_of(listener)}", flush=True)
        connection = wire.accept_peer(
            listener, token, timeout=args.timeout, handshake_timeout=args.handshake_timeout,
            max_frame_bytes=frame_cap, tls=tls,
            log=lambda line: print(f"data party: {line}", file=sys.stderr, flush=True))
    if args.predict:
        return transport.predict_as_data(connection, ids, X, args.checkpoint_dir,
                                         feature_names=feature_names, source=args.features,
                                         executor=executor,
                                         allow_insecure=args.insecure_small_key,
                                         transcript=transcript, stream_chunks=args.stream_chunks,
                                         dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta,
                                         state=saved)
    return transport.run_data_party(connection, raw.ids, raw, rules=rules,
                                    keypair=None if keypair is None else keypair.result(),
                                    plan=FixedPointPlan(sigma=args.sigma),
                                    init_seed=args.init_seed, bottom=args.bottom,
                                    executor=executor, progress=progress,
                                    checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                                    allow_insecure=args.insecure_small_key, transcript=transcript,
                                    allow_insecure_sigma=args.insecure_sigma,
                                    align=args.align, stream_chunks=args.stream_chunks,
                                    dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta,
                                    psi_max_ratio=args.psi_max_ratio)


def _label_party(args, token, tls, frame_cap, executor, progress, transcript):
    host, port = wire.parse_address(args.connect, "--connect")
    if args.predict:
        if args.class_weight is not None:
            raise UsageError("--class-weight is for training; --predict uses the checkpoint's "
                             "model (--threshold and --positive-class may change its decision)")
        connection = wire.connect_peer(host, port, token, timeout=args.timeout,
                                       max_frame_bytes=frame_cap, tls=tls)
        return transport.predict_as_label(connection, args.checkpoint_dir, executor=executor,
                                          allow_insecure=args.insecure_small_key,
                                          transcript=transcript, stream_chunks=args.stream_chunks,
                                          threshold=args.threshold,
                                          positive_class=args.positive_class)
    if not (args.labels and args.label_column and args.id_column):
        raise UsageError("party label needs --labels, --id-column and --label-column "
                         "(or --predict with --checkpoint-dir)")
    ids, y, class_names = data.load_labels_csv(args.labels, args.id_column, args.label_column)
    config = Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                    seed=args.seed, plan=FixedPointPlan(sigma=args.sigma),
                    allow_insecure=args.insecure_small_key, packing=args.packing,
                    allow_insecure_sigma=args.insecure_sigma, block_rows=args.block_rows,
                    **class_options(args, class_names))
    connection = wire.connect_peer(host, port, token, timeout=args.timeout,
                                   max_frame_bytes=frame_cap, tls=tls)
    return transport.run_label_party(connection, ids, y, len(class_names), config,
                                     test_fraction=args.test_fraction, executor=executor,
                                     progress=progress, checkpoint_dir=args.checkpoint_dir,
                                     resume=args.resume, class_names=class_names,
                                     transcript=transcript, align=args.align,
                                     stream_chunks=args.stream_chunks,
                                     allow_bottom=args.allow_bottom,
                                     psi_max_ratio=args.psi_max_ratio)


def add_party_parser(commands) -> None:
    """`party data` listens with the features and the key pair; `party label` connects with the
    labels, chooses the network and the training plan, and writes the report. With --predict,
    each predicts new rows from its own checkpoint."""
    party = commands.add_parser("party", help="one of two parties training together over TCP")
    roles = party.add_subparsers(dest="role", required=True)
    data_role = roles.add_parser("data", help="the data party: features and the key pair; listens")
    data_role.add_argument("--listen", required=True, metavar="HOST:PORT",
                           help="address to listen on (port 0: any free port, printed)")
    data_role.add_argument("--features", required=True, help="this party's features CSV")
    data_role.add_argument("--id-column", required=True, help="id column of the features CSV")
    data_role.add_argument("--key-bits", type=_key_bits, default=DEFAULT_KEY_BITS,
                           help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    add_seed_and_bottom_options(data_role)
    add_privacy_options(data_role)
    add_preparation_options(data_role)
    data_role.add_argument("--handshake-timeout", type=TIMEOUT,
                           default=wire.HANDSHAKE_SECONDS,
                           help="seconds each incoming connection has to prove the token (and "
                                "finish TLS); connections are authenticated in parallel, so a "
                                f"slow or idle one delays no other (default "
                                f"{wire.HANDSHAKE_SECONDS:g})")
    label_role = roles.add_parser("label", help="the label party: labels and the network; "
                                                "connects, and writes the report")
    label_role.add_argument("--connect", required=True, metavar="HOST:PORT",
                            help="the data party's address")
    label_role.add_argument("--labels", help="this party's labels CSV")
    label_role.add_argument("--id-column", help="id column of the labels CSV")
    label_role.add_argument("--label-column", help="label column of the labels CSV")
    add_class_options(label_role)
    add_model_options(label_role)
    label_role.add_argument("--test-fraction", type=_real(0.0, 1.0, low_open=False,
                                                          high_open=True), default=0.2,
                            help="rows held out for prediction: a seeded split, not stratified "
                                 "(the data party has no labels); 0 for none")
    label_role.add_argument("--no-packing", dest="packing", action="store_false",
                            help="one value per ciphertext (the same weights, many times slower)")
    label_role.add_argument("--allow-bottom", action="store_true",
                            help="consent to a data party with a bottom model (--bottom): step 4b "
                                 "then sends it δ·Wᵀ, which gives away label information (leak "
                                 "L4: separation AUC 0.97-1.000 measured); without it such a "
                                 "data party is refused at step 0. Recorded in the checkpoint; "
                                 "prediction needs no consent")
    label_role.add_argument("--out", help="with --predict: write id, predicted_class and the "
                                          "probability of each class here (CSV; default stdout)")
    for role in (data_role, label_role):
        role.add_argument("--insecure-small-key", action="store_true",
                          help="allow keys under 1024 bits, also from a checkpoint (tests and "
                               "demos only: NOT secure)")
        role.add_argument("--sigma", type=SIGMA, default=MIN_SECURE_SIGMA,
                          help="statistical hiding margin of every mask, in bits (default 40; "
                               "under 40 only with --insecure-sigma); both parties must agree")
        role.add_argument("--insecure-sigma", action="store_true",
                          help="allow --sigma under 40 (tests and demos only: NOT secure)")
        role.add_argument("--workers", type=WORKERS, default=1,
                          help="processes for this party's modular exponentiations (default 1)")
        role.add_argument("--dask", metavar="SCHEDULER_ADDRESS", default=None,
                          help=DASK_HELP + " (this party's own cluster; the data party's "
                               "workers receive its private key factors p and q)")
        role.add_argument("--transcript", help="write every message this party sends or "
                                               "receives as JSON lines")
        role.add_argument("--json", help="write this party's report as JSON to this path")
        role.add_argument("--token-file", help="file holding the shared secret token (default: "
                                               "the ACML_TOKEN environment variable)")
        role.add_argument("--timeout", type=TIMEOUT, default=wire.DEFAULT_TIMEOUT,
                          help="seconds to wait for the peer: to connect, and for each message, "
                               f"in (0, {MAX_TIMEOUT:g}] (default {wire.DEFAULT_TIMEOUT:g})")
        role.add_argument("--stream-chunks", type=STREAM, default=STREAM_CHUNKS,
                          help="send the ciphertexts of steps 1 and 4 in up to this many row "
                               "blocks, decrypted as they arrive; both parties alike (default "
                               f"{STREAM_CHUNKS}; 1: whole)")
        role.add_argument("--max-frame-mb", type=FRAME_MB, default=256,
                          help=f"refuse larger messages, in (0, {MAX_FRAME_MB:g}] (default 256)")
        role.add_argument("--align", choices=alignment.ALIGNMENTS, default=alignment.PSI,
                          help="how the parties find their common ids: psi (private set "
                               "intersection: each learns the intersection and the other's "
                               "number of ids, nothing else; default) or public-ids (each "
                               "sends its whole id list in the clear); both must agree")
        role.add_argument(alignment.PSI_MAX_RATIO_FLAG, type=PSI_RATIO,
                          default=alignment.PSI_MAX_RATIO, metavar="R",
                          help="with --align psi, refuse the other party's id set if it holds "
                               "more than R times this party's number of ids: a deviating "
                               "party can test each id it puts in its set, so this caps what "
                               "it can enumerate (default "
                               f"{alignment.PSI_MAX_RATIO:g}; at least 1)")
        tls = role.add_argument_group("TLS (all three, or none)")
        tls.add_argument("--tls-cert", metavar="PEM", help="this party's certificate")
        tls.add_argument("--tls-key", metavar="PEM", help="this party's private key")
        tls.add_argument("--tls-ca", metavar="PEM",
                         help="the CA that signed the other party's certificate (mutual TLS "
                              "1.3; the label party also checks the data party's host name)")
        role.add_argument("--quiet", action="store_true", help="no progress bar")
        role.add_argument("--checkpoint-dir", metavar="DIR",
                          help="after every epoch, save this party's own file here (and only "
                               "its own: each party keeps its own directory)")
        role.add_argument("--resume", action="store_true",
                          help="continue from this party's file in --checkpoint-dir up to the "
                               "label party's --epochs; both parties must resume, from the "
                               "same epoch")
        role.add_argument("--predict", action="store_true",
                          help="predict new rows (data party: --features holds them) with this "
                               "party's own checkpoint in --checkpoint-dir")
        role.set_defaults(handler=command_party)


def command_token(args) -> int:
    """A fresh shared token (wire.make_token: ``acml-`` and 64 hex digits from ``secrets``):
    printed, or written to a new file --out that only its owner may read (mode 0600)."""
    token = wire.make_token()
    if not args.out:
        print(token)
        return 0
    check_output_file("--out", args.out)
    try:  # created 0600 at once, never widened; an existing file is not overwritten
        descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out {args.out}: already exists; a token file is never "
                         "overwritten (remove it first)") from None
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot create it "
                         f"({error.strerror or type(error).__name__})") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    print(f"wrote a fresh token (256 bits from secrets) to {args.out}, readable by its owner "
          "only; give the other party a copy over a channel you trust", file=sys.stderr)
    return 0


def command_audit(args) -> int:
    from attacks import audit  # the audits pull in every flaw's machinery: only load them when asked
    from attacks import own_leaks
    check_output_file("--json", args.json)
    key_bits = audit.DEFAULT_KEY_BITS if args.key_bits is None else args.key_bits
    if args.key_bits is not None:  # the audit's default small key needs no flag
        check_key_bits(key_bits, args.insecure_small_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        warnings.simplefilter("ignore", InsecureFlawWarning)
        audits = audit.run_audit(key_bits=key_bits)
        own = own_leaks.run_own_leaks(key_bits=key_bits)
    print(audit.format_table(audits, key_bits))
    print()
    print(own_leaks.format_own_leaks(own))
    if args.json:  # the audit's tables: nothing private in them (README, "Files written")
        report = {"flaws": [row.to_json() for row in audits],
                  "own_leaks": [row.to_json() for row in own]}
        checkpoint.write_atomically(args.json, lambda handle: json.dump(
            report, handle, indent=2, default=str), mode="w", private=False)
    expected = all(row.caught and row.succeeds_on_flawed and row.fails_on_real for row in audits)
    expected &= all(row.succeeds and row.mitigated_fails is not False for row in own)
    return 0 if expected else 1


def command_bench(args) -> int:
    from tools import bench  # benchmarks are not the library: loaded only for this command

    check_output_file("--json", args.json)
    if args.credit_card is not None:
        check_input_file("--credit-card", args.credit_card)
        bench.credit_card_epoch(args.credit_card or None, workers=args.workers,
                                quick=args.quick, json_path=args.json)
    else:
        bench.run(quick=args.quick, workers=args.workers, json_path=args.json)
    return 0


def _prepare_worker(parent_pid: int) -> None:
    """In each pool worker: Ctrl-C is the parent's to handle (one line, not more tracebacks),
    and the worker exits when its parent dies (exit_with_parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)


DASK_HELP = ("run the modular exponentiations on the dask.distributed cluster whose scheduler "
             "is at this address (tcp://host:port), cut into as many tasks as it has worker "
             "threads")


@contextmanager
def dask_cluster(address: str):
    """An executor on the dask.distributed cluster at ``address`` (kernels.dask_executor: sized
    by the cluster's real worker threads), whose workers first receive the code they run
    (cluster.ship_code); a worker that cannot run it is one line, not a traceback. The client is
    closed on the way out. Only this process's own party uses it."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'dask[distributed]'") from None
    from speed import cluster
    from speed import kernels
    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as error:
        raise UsageError(f"--dask: no dask scheduler at {address}: {error}") from None
    try:
        cluster.ship_code(client)
        yield kernels.dask_executor(client)
    except cluster.WorkerCodeError as error:
        raise UsageError(f"--dask {address}: {error}") from None
    except ImportError as error:  # a worker that joined without the code, or lost it
        raise UsageError(f"--dask {address}: a task failed to import: "
                         f"{cluster.describe(error)}") from None
    finally:
        client.close()


@contextmanager
def workers(count: int, dask_address: str | None = None):
    """A process pool of ``count`` workers for the modular exponentiations (None for 1), or
    with ``dask_address`` the executor of that dask cluster (then --workers must stay 1).
    Each worker exits when this process dies, even by kill -9 (exit_with_parent)."""
    if dask_address is not None:
        if count > 1:
            raise UsageError("--dask and --workers are alternatives: give one")
        with dask_cluster(dask_address) as executor:
            yield executor
        return
    if count <= 1:
        yield None
        return
    executor = ProcessPoolExecutor(count, initializer=_prepare_worker, initargs=(os.getpid(),))
    try:
        yield executor
    except BaseException:  # an error or Ctrl-C: do not wait for the queued work
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


PARENT_POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int) -> None:
    """In a pool worker: exit as soon as ``parent_pid`` is no longer this process's parent
    (when the parent dies the worker is re-parented, so os.getppid() changes). A daemon thread
    polls every PARENT_POLL_SECONDS; it works on every POSIX system, unlike Linux's prctl."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # no cleanup to run: the work belonged to the dead parent
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="acml.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train encrypted and plaintext, compare")
    add_training_options(train_parser)
    train_parser.add_argument("--json", help="write the report as JSON to this path: the "
                                             "metrics, the settings and the loss of every batch")
    train_parser.add_argument("--plot", metavar="PATH",
                              help="draw the loss per batch and (two classes) the test ROC and "
                                   "precision–recall curves: into PATH.png as one figure, or "
                                   "into the folder PATH as loss.png, roc.png and "
                                   "precision_recall.png")
    train_parser.add_argument("--transcript", help="write every message as JSON lines")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train_parser.add_argument("--checkpoint-dir", metavar="DIR",
                              help="after every epoch each party saves its own file in DIR")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run saved in --checkpoint-dir up to --epochs")
    train_parser.set_defaults(handler=command_train)
    predict_parser = commands.add_parser(
        "predict", help="encrypted prediction on new rows, with both parties' checkpoints")
    predict_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    predict_parser.add_argument("--features", required=True, help="features CSV of the new rows")
    predict_parser.add_argument("--id-column", required=True, help="id column of that CSV")
    predict_parser.add_argument("--out", help="write id, predicted_class and the probability of "
                                              "each class here (CSV); default: stdout")
    predict_parser.add_argument("--insecure-small-key", action="store_true",
                                help="accept a checkpoint key under 1024 bits (NOT secure)")
    add_class_options(predict_parser, predicting=True)
    add_privacy_options(predict_parser, predicting=True)
    predict_parser.set_defaults(handler=command_predict)
    export_parser = commands.add_parser(
        "export", help="combine both shares into a plaintext model: reveals the weights")
    export_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    export_parser.add_argument("--out", required=True, help="the model file (.npz)")
    export_parser.add_argument(REVEAL_FLAG, action="store_true",
                               help="both parties consent to revealing the weights, the data "
                                    "party's feature means and stds, and (leak L5) the rows of "
                                    "every prediction the label party made with them")
    export_parser.set_defaults(handler=command_export)
    add_party_parser(commands)
    token_parser = commands.add_parser(
        "token", help="make a fresh shared token for `party` (256 random bits)")
    token_parser.add_argument("--out", help="write it to this new file, mode 0600 (default: "
                                            "print it)")
    token_parser.set_defaults(handler=command_token)
    audit_parser = commands.add_parser("audit", help="re-create the six known flaws of production "
                                       "implementations; catch and attack each")
    audit_parser.add_argument("--json", help="write the table as a JSON list to this path")
    audit_parser.add_argument("--key-bits", type=_key_bits, default=None,
                              help="Paillier modulus size (default: a small demo key)")
    audit_parser.add_argument("--insecure-small-key", action="store_true",
                              help="allow an explicit --key-bits under 1024")
    audit_parser.set_defaults(handler=command_audit)
    bench_parser = commands.add_parser("bench", help="benchmark against python-paillier")
    bench_parser.add_argument("--quick", action="store_true",
                              help="tiny sizes and small keys: a smoke test of the benchmark")
    bench_parser.add_argument("--workers", type=WORKERS, default=2,
                              help="processes for the runs on workers (default 2)")
    bench_parser.add_argument("--json", help="write the results as JSON to this path")
    bench_parser.add_argument("--credit-card", nargs="?", const="", metavar="CSV",
                              help="only one epoch of UCI's credit-card default data (its CSV, "
                                   "or without one a table of its shape: 30,000 rows x 23) "
                                   "with the headline network, on the workers")
    bench_parser.set_defaults(handler=command_bench)
    return parser


INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)
TERMINATED = 143  # and by SIGTERM (128 + 15)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, like KeyboardInterrupt for SIGINT: the stack
    unwinds, so every atomic write removes its temporary file (a transcript's holds private
    data) before main says so in one line."""


class StopSignals:
    """SIGINT and SIGTERM while a command runs. The first raises (KeyboardInterrupt or
    Terminated) and the command unwinds, cleaning up. A second one during that cleanup does not
    wait for it: it removes the open temporary files itself, says the one line if it was not
    said yet, and exits at once with the first signal's code (130 or 143), never killed by the
    signal (-2). Installed only in the main thread; the previous handlers come back after."""

    CODES = {signal.SIGINT: (INTERRUPTED, "interrupted (Ctrl-C)"),
             signal.SIGTERM: (TERMINATED, "terminated (SIGTERM)")}

    def __init__(self, name: str):
        self.name = name
        self.first = None
        self.said = False
        self.signalled = False
        self.previous = {}

    def line(self) -> str:
        return f"{self.name}: {self.CODES[self.first][1]}; no output file was left half-written"

    def say(self) -> int:
        """The one line on stderr (once) and the exit code of the first signal."""
        if not self.said:
            self.said = True
            print(self.line(), file=sys.stderr, flush=True)
        return self.CODES[self.first][0]

    def handle(self, number, frame):
        if self.first is not None:  # a second signal: no more waiting for the cleanup
            checkpoint.remove_open_temporaries()
            os._exit(self.say())
        self.first = number
        self.signalled = True
        raise KeyboardInterrupt if number == signal.SIGINT else Terminated

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.CODES:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            # after a signal the process is on its way out with its code: one more Ctrl-C
            # must not turn it into a traceback or a death by the signal
            signal.signal(number, signal.SIG_IGN if self.signalled else handler)
        return False


def main(argv=None) -> int:
    """Run one command: 0 on success, 2 on bad input (one line), 130 on Ctrl-C and 143 on
    SIGTERM (one line; every output file is written atomically, so it is complete or absent,
    and no temporary file stays behind)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a usage error already printed in one line (2)
        return done.code
    name = " ".join(["acml.py", args.command] + ([args.role] if args.command == "party" else []))
    with StopSignals(name) as stop:
        try:
            return args.handler(args)
        except (KeyboardInterrupt, Terminated):
            if stop.first is None:  # raised without a signal (a test, or Python's own SIGINT)
                stop.first = signal.SIGINT
            return stop.say()
        except (ValueError, OverflowError, OSError, LeakageError) as error:
            message = describe_error(error)
            print(f"{name}: error: {message}", file=sys.stderr)
            return 2


def describe_error(error: BaseException) -> str:
    """The one line of an error: its first line; an OSError as ``PATH: reason`` (the path
    first, its errno's words after: ``writing out.json: no space left on device``)."""
    if isinstance(error, OSError) and error.strerror and not isinstance(
            error, checkpoint.WriteFailed):
        reason = error.strerror[:1].lower() + error.strerror[1:]
        paths = [os.fspath(p) for p in (error.filename, error.filename2) if p is not None]
        return f"{' -> '.join(paths)}: {reason}" if paths else reason
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


